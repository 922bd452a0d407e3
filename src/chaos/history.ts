/**
 * history: the record of a chaos run, one JSON object per line (`history.jsonl`).
 *
 * Three kinds of events, all with a `time` in milliseconds from a monotonic clock (never wall time:
 * the checkers compare times for real-time order, so a clock step would invent violations):
 *  - operation events on registers (a register is one block of one volume, named by `key`):
 *      `{ process, opId, type: 'invoke'|'ok'|'fail'|'info', f: 'read'|'write'|'flush', key, value, time }`
 *    An operation is one `invoke` followed later by exactly one completion with the same
 *    (process, opId): `ok` (it happened; a read carries the value it read), `fail` (it definitely
 *    did not take effect), or `info` (unknown: timed out, connection lost; it may take effect at
 *    any time after its invocation, so it is treated as completing at +infinity). An invoke with
 *    no completion by the end of the history is treated as `info`.
 *    A write's `invoke` carries the value written. Values are opaque strings (tags); writers write
 *    unique values per key so a read names the write it saw. `null` is the initial value (an
 *    unwritten block reads as zeros).
 *  - fault events `{ type: 'fault', fault, phase: 'start'|'stop', time, detail }`;
 *  - leader events `{ type: 'leader', node, term, time }` (node became leader for term);
 *  - a truncation marker `{ type: 'truncated', time, eventsMax, dropped }`: the recorder reached its
 *    cap of `eventsMax` events at `time` and left `dropped` later events out. A history holding it
 *    is a prefix of what happened: a violation found in it is real, a pass proves nothing.
 *
 * The final reads of the lost-write check are ordinary read ops of the process named
 * `finalReadProcess` ('final'), recorded with their real times after the heal (checks.ts).
 *
 * parseHistory validates every line (the file is input from another process: bad input is a
 * UsageError naming the line, never an assertion); pairOperations validates the pairing and the
 * uniqueness of written values and turns events into Operations with call/return times.
 */

import { ErrorCode, UsageError } from '../errors.js';
import { assert } from '../assert.js';

export const EventType = {
  Invoke: 'invoke',
  Ok: 'ok',
  Fail: 'fail',
  Info: 'info',
  Fault: 'fault',
  Leader: 'leader',
  Truncated: 'truncated',
} as const;
export type EventType = (typeof EventType)[keyof typeof EventType];

export const OpFunction = { Read: 'read', Write: 'write', Flush: 'flush' } as const;
export type OpFunction = (typeof OpFunction)[keyof typeof OpFunction];

export const FaultPhase = { Start: 'start', Stop: 'stop' } as const;
export type FaultPhase = (typeof FaultPhase)[keyof typeof FaultPhase];

/** finalReadProcess: the process of the final reads (after the heal) of the lost-write check. */
export const finalReadProcess = 'final';

/** RegisterValue: an opaque tag, or null for the initial value (zeros). */
export type RegisterValue = string | null;

/** ProcessId / OpId: a number or a string, compared exactly (1 and '1' are distinct). */
export type ProcessId = number | string;
export type OpId = number | string;

export interface OpEvent {
  type: 'invoke' | 'ok' | 'fail' | 'info';
  process: ProcessId;
  opId: OpId;
  f: OpFunction;
  key: string;
  value: RegisterValue;
  time: number;
}

export interface FaultEvent {
  type: 'fault';
  fault: string;
  phase: FaultPhase;
  time: number;
  detail?: string;
}

export interface LeaderEvent {
  type: 'leader';
  node: number | string;
  term: number;
  time: number;
}

export interface TruncatedEvent {
  type: 'truncated';
  /** eventsMax: the recorder's cap; dropped: events offered after the cap and not recorded. */
  eventsMax: number;
  dropped: number;
  time: number;
}

export type HistoryEvent = OpEvent | FaultEvent | LeaderEvent | TruncatedEvent;

/** historyLineBytesMax: a longer line is rejected before JSON.parse allocates for it. */
export const historyLineBytesMax = 64 * 1024;
/** keyBytesMax / valueBytesMax / labelBytesMax: bounds on the strings a line may carry. */
export const keyBytesMax = 1024;
export const valueBytesMax = 4096;
export const labelBytesMax = 4096;

function invalid(where: string, message: string): UsageError {
  return new UsageError(ErrorCode.InvalidArgument, `history ${where}: ${message}`);
}

function isId(v: unknown): v is number | string {
  return (typeof v === 'number' && Number.isSafeInteger(v)) || (typeof v === 'string' && v.length > 0 && v.length <= labelBytesMax);
}

/**
 * parseEvent validates one decoded JSON value as a HistoryEvent and returns a normalized copy
 * (unknown fields dropped, a missing value becomes null). `where` names the line in errors.
 */
export function parseEvent(raw: unknown, where = 'event'): HistoryEvent {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid(where, 'not a JSON object');
  const o = raw as Record<string, unknown>;
  const time = o.time;
  if (typeof time !== 'number' || !Number.isFinite(time) || time < 0) throw invalid(where, 'time must be a finite number >= 0 (ms)');
  switch (o.type) {
    case 'invoke':
    case 'ok':
    case 'fail':
    case 'info': {
      if (!isId(o.process)) throw invalid(where, 'process must be an integer or a non-empty string');
      if (!isId(o.opId)) throw invalid(where, 'opId must be an integer or a non-empty string');
      if (o.f !== 'read' && o.f !== 'write' && o.f !== 'flush') throw invalid(where, "f must be 'read', 'write' or 'flush'");
      let key = o.key;
      if (key === undefined && o.f === 'flush') key = '';
      if (typeof key !== 'string' || key.length > keyBytesMax) throw invalid(where, `key must be a string of at most ${keyBytesMax} chars`);
      if (key === '' && o.f !== 'flush') throw invalid(where, 'key must not be empty for read/write');
      const value = o.value === undefined ? null : o.value;
      if (value !== null && (typeof value !== 'string' || value.length > valueBytesMax)) {
        throw invalid(where, `value must be null or a string of at most ${valueBytesMax} chars`);
      }
      return { type: o.type, process: o.process, opId: o.opId, f: o.f, key, value, time };
    }
    case 'fault': {
      if (typeof o.fault !== 'string' || o.fault.length === 0 || o.fault.length > labelBytesMax) throw invalid(where, 'fault must be a non-empty string');
      if (o.phase !== 'start' && o.phase !== 'stop') throw invalid(where, "phase must be 'start' or 'stop'");
      const event: FaultEvent = { type: 'fault', fault: o.fault, phase: o.phase, time };
      if (o.detail !== undefined) {
        if (typeof o.detail !== 'string' || o.detail.length > labelBytesMax) throw invalid(where, 'detail must be a string');
        event.detail = o.detail;
      }
      return event;
    }
    case 'leader': {
      if (!isId(o.node)) throw invalid(where, 'node must be an integer or a non-empty string');
      if (typeof o.term !== 'number' || !Number.isSafeInteger(o.term) || o.term < 0) throw invalid(where, 'term must be an integer >= 0');
      return { type: 'leader', node: o.node, term: o.term, time };
    }
    case 'truncated': {
      for (const field of ['eventsMax', 'dropped'] as const) {
        const n = o[field];
        if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) throw invalid(where, `${field} must be an integer >= 0`);
      }
      return { type: 'truncated', eventsMax: o.eventsMax as number, dropped: o.dropped as number, time };
    }
    default:
      throw invalid(where, `unknown type ${JSON.stringify(o.type)}`);
  }
}

/** parseHistory parses history.jsonl text; blank lines are skipped; errors name the line (1-based). */
export function parseHistory(text: string): HistoryEvent[] {
  const events: HistoryEvent[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!.trim();
    if (line === '') continue;
    const where = `line ${i + 1}`;
    if (line.length > historyLineBytesMax) throw invalid(where, `longer than ${historyLineBytesMax} chars`);
    let raw: unknown;
    try {
      raw = JSON.parse(line);
    } catch (error) {
      throw invalid(where, `not JSON (${(error as Error).message})`);
    }
    events.push(parseEvent(raw, where));
  }
  return events;
}

/** serializeEvent renders one event as a single JSON line (no newline); parseEvent inverts it. */
export function serializeEvent(event: HistoryEvent): string {
  const checked = parseEvent(event, 'serialize');
  return JSON.stringify(checked);
}

/** serializeHistory renders events as JSONL (one line each, trailing newline); parseHistory inverts it. */
export function serializeHistory(events: readonly HistoryEvent[]): string {
  return events.map((e) => serializeEvent(e) + '\n').join('');
}

export const OpStatus = { Ok: 'ok', Fail: 'fail', Info: 'info' } as const;
export type OpStatus = (typeof OpStatus)[keyof typeof OpStatus];

/**
 * Operation: one invoke paired with its completion. `callTime` <= `returnTime`; `returnTime` is
 * +Infinity for status 'info' (unknown outcome). `input` is the value written (writes), `output`
 * the value read (ok reads; null otherwise). `index` is the position in pairOperations' result.
 */
export interface Operation {
  index: number;
  process: ProcessId;
  opId: OpId;
  f: OpFunction;
  key: string;
  status: OpStatus;
  input: RegisterValue;
  output: RegisterValue;
  callTime: number;
  returnTime: number;
  /** completionTime: when the completion event was recorded (also for info); null if never. */
  completionTime: number | null;
}

/**
 * pairOperations pairs invokes with completions, in invoke order. Guarantees: every (process,
 * opId) is invoked once; a completion matches an open invoke with the same f and key and is not
 * earlier than it; non-null written values are unique per key. An invoke never completed becomes
 * status 'info'. Violations are UsageErrors (the history file is untrusted input).
 */
export function pairOperations(events: readonly HistoryEvent[]): Operation[] {
  const ops: Operation[] = [];
  // Open and seen ops by process, then opId (nested maps: no string keys to build per event).
  const open = new Map<ProcessId, Map<OpId, Operation>>();
  const seen = new Map<ProcessId, Set<OpId>>();
  const written = new Map<string, Set<string>>();
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    if (e.type === 'fault' || e.type === 'leader' || e.type === 'truncated') continue;
    let openOfProcess = open.get(e.process);
    if (!openOfProcess) open.set(e.process, (openOfProcess = new Map()));
    const where = (): string => `event ${i + 1} (process ${String(e.process)}, opId ${String(e.opId)})`;
    if (e.type === 'invoke') {
      let seenOfProcess = seen.get(e.process);
      if (!seenOfProcess) seen.set(e.process, (seenOfProcess = new Set()));
      if (seenOfProcess.has(e.opId)) throw invalid(where(), 'opId invoked twice by the same process');
      seenOfProcess.add(e.opId);
      if (e.f === 'write' && e.value !== null) {
        let values = written.get(e.key);
        if (!values) written.set(e.key, (values = new Set()));
        if (values.has(e.value)) throw invalid(where(), `value ${JSON.stringify(e.value)} written twice to key ${JSON.stringify(e.key)}; written values must be unique`);
        values.add(e.value);
      }
      const op: Operation = {
        index: ops.length,
        process: e.process,
        opId: e.opId,
        f: e.f,
        key: e.key,
        status: 'info',
        input: e.f === 'write' ? e.value : null,
        output: null,
        callTime: e.time,
        returnTime: Infinity,
        completionTime: null,
      };
      ops.push(op);
      openOfProcess.set(e.opId, op);
      continue;
    }
    const op = openOfProcess.get(e.opId);
    if (!op) throw invalid(where(), `${e.type} without an open invoke`);
    if (op.f !== e.f || op.key !== e.key) throw invalid(where(), `${e.type} does not match its invoke (f/key differ)`);
    if (e.time < op.callTime) throw invalid(where(), `${e.type} at ${e.time} is before its invoke at ${op.callTime}`);
    openOfProcess.delete(e.opId);
    op.status = e.type;
    op.completionTime = e.time;
    if (e.type === 'ok') {
      op.returnTime = e.time;
      if (op.f === 'read') op.output = e.value;
    } else if (e.type === 'fail') {
      op.returnTime = e.time;
    }
  }
  for (const op of ops) assert(op.status !== 'info' || op.returnTime === Infinity, 'info ops return at +infinity');
  return ops;
}

/** truncationOf: the truncation marker of a history, or undefined when it is complete. */
export function truncationOf(events: readonly HistoryEvent[]): TruncatedEvent | undefined {
  return events.find((e): e is TruncatedEvent => e.type === 'truncated');
}

/** historyTimeRange returns [min, max] over all finite event times ([0, 0] when empty). */
export function historyTimeRange(events: readonly HistoryEvent[]): [number, number] {
  let min = Infinity;
  let max = -Infinity;
  for (const e of events) {
    if (e.time < min) min = e.time;
    if (e.time > max) max = e.time;
  }
  return min === Infinity ? [0, 0] : [min, max];
}
