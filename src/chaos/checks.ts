/**
 * checks: the safety and liveness checks of a chaos run besides per-key linearizability.
 *
 *  (a) checkNoAckedWriteLost — after the cluster is healed, the runner reads every touched key
 *      once more; those final reads are recorded in the history as read ops of the process
 *      `finalReadProcess`, invoked after every workload op completed, and the keys they read are
 *      checked for linearizability. A lost acknowledged write shows up as a stale final read (its
 *      explanation names the write and the read). The check needs nothing but the history, so
 *      history.jsonl alone re-checks it (recheck.ts).
 *  (b) checkLeaders — at most one leader per term (Raft's Election Safety, §5.2).
 *  (c) failoverStalls — per fault start: time to the first op completed ok after it, and the
 *      longest window without any ok completion until the next fault starts (or the history ends).
 *  (d) checkConvergence — replicas at equal applied index have equal state-machine hashes.
 */

import { assert } from '../assert.js';
import {
  finalReadProcess,
  historyTimeRange,
  pairOperations,
  type FaultEvent,
  type HistoryEvent,
  type LeaderEvent,
  type OpEvent,
  type RegisterValue,
} from './history.js';
import { checkOperations, type CheckOptions, type LinearizabilityResult } from './linearizability.js';

export interface FinalRead {
  key: string;
  value: RegisterValue;
}

export { finalReadProcess };

/**
 * appendFinalReads returns the events plus, for each final read, an invoke/ok pair of process
 * `finalReadProcess` at times after every event (1 ms apart), so each final read is ordered after
 * every completed op: a history as the runner records it, for hand-made inputs.
 */
export function appendFinalReads(events: readonly HistoryEvent[], finalReads: readonly FinalRead[]): HistoryEvent[] {
  const [, end] = historyTimeRange(events);
  const out: HistoryEvent[] = [...events];
  finalReads.forEach((read, n) => {
    const time = end + 1 + 2 * n;
    const base = { process: finalReadProcess, opId: `final-${n}`, f: 'read' as const, key: read.key };
    out.push({ ...base, type: 'invoke', value: null, time } satisfies OpEvent);
    out.push({ ...base, type: 'ok', value: read.value, time: time + 1 } satisfies OpEvent);
  });
  return out;
}

export interface AckedWriteCheck {
  ok: boolean;
  /** untouchedKeys: keys written in the history that have no final read (the runner missed them). */
  unreadKeys: string[];
  result: LinearizabilityResult;
}

/**
 * checkNoAckedWriteLost checks the keys that a final read (an ok read of process
 * `finalReadProcess`) read. `ok` requires a linearizable verdict for those keys and a final read
 * of every key that any write touched.
 */
export function checkNoAckedWriteLost(events: readonly HistoryEvent[], options: CheckOptions = {}): AckedWriteCheck {
  const readKeys = new Set<string>();
  for (const e of events) if (e.type === 'ok' && e.process === finalReadProcess && e.f === 'read') readKeys.add(e.key);
  const ops = pairOperations(events).filter((op) => readKeys.has(op.key));
  const written = new Set<string>();
  for (const e of events) if (e.type === 'invoke' && e.f === 'write' && e.process !== finalReadProcess) written.add(e.key);
  const unreadKeys = [...written].filter((k) => !readKeys.has(k)).sort();
  const result = checkOperations(ops, options);
  return { ok: result.verdict === 'ok' && unreadKeys.length === 0, unreadKeys, result };
}

export interface LeaderConflict {
  term: number;
  nodes: (number | string)[];
  events: LeaderEvent[];
}

export interface LeaderCheck {
  ok: boolean;
  termCount: number;
  conflicts: LeaderConflict[];
}

/** checkLeaders reports every term for which two or more distinct nodes announced leadership. */
export function checkLeaders(events: readonly HistoryEvent[]): LeaderCheck {
  const byTerm = new Map<number, LeaderEvent[]>();
  for (const e of events) {
    if (e.type !== 'leader') continue;
    let list = byTerm.get(e.term);
    if (!list) byTerm.set(e.term, (list = []));
    list.push(e);
  }
  const conflicts: LeaderConflict[] = [];
  for (const [term, list] of [...byTerm].sort((a, b) => a[0] - b[0])) {
    const nodes = [...new Set(list.map((e) => e.node))];
    if (nodes.length > 1) conflicts.push({ term, nodes, events: list });
  }
  return { ok: conflicts.length === 0, termCount: byTerm.size, conflicts };
}

export interface FaultStall {
  fault: string;
  detail?: string;
  startTime: number;
  /** stopTime: the matching stop event (same fault name), or null if the fault never stopped. */
  stopTime: number | null;
  /** windowEndTime: the next fault start, or the end of the history. */
  windowEndTime: number;
  /** firstOkAfterMs: from the fault start to the first ok completion after it; null if none. */
  firstOkAfterMs: number | null;
  /** longestGapMs: the longest interval in [start, windowEnd] with no ok completion. */
  longestGapMs: number;
  longestGapStartTime: number;
  okCount: number;
  failCount: number;
  infoCount: number;
}

/**
 * failoverStalls measures, for each fault start, how long the system went without completing any
 * op. Completions counted as progress are `ok` only (a fail or timeout is not progress). A fault
 * start's window runs to the next fault start (of any fault) or the end of the history.
 */
export function failoverStalls(events: readonly HistoryEvent[]): FaultStall[] {
  const okTimes: number[] = [];
  const failTimes: number[] = [];
  const infoTimes: number[] = [];
  const faults: FaultEvent[] = [];
  for (const e of events) {
    if (e.type === 'ok') okTimes.push(e.time);
    else if (e.type === 'fail') failTimes.push(e.time);
    else if (e.type === 'info') infoTimes.push(e.time);
    else if (e.type === 'fault') faults.push(e);
  }
  okTimes.sort((a, b) => a - b);
  const [, end] = historyTimeRange(events);
  faults.sort((a, b) => a.time - b.time);
  const starts = faults.filter((f) => f.phase === 'start');
  // A stop closes the oldest open start of the same fault name (as in the report).
  const stopOf = new Map<FaultEvent, FaultEvent>();
  const open = new Map<string, FaultEvent[]>();
  for (const f of faults) {
    const list = open.get(f.fault) ?? [];
    open.set(f.fault, list);
    if (f.phase === 'start') list.push(f);
    else {
      const start = list.shift();
      if (start) stopOf.set(start, f);
    }
  }
  const countIn = (times: number[], from: number, to: number): number => times.filter((t) => t >= from && t <= to).length;
  return starts.map((start, n) => {
    const stop = stopOf.get(start) ?? null;
    const windowEndTime = n + 1 < starts.length ? starts[n + 1]!.time : end;
    assert(windowEndTime >= start.time, 'fault starts are sorted');
    let previous = start.time;
    let longestGapMs = 0;
    let longestGapStartTime = start.time;
    let firstOkAfterMs: number | null = null;
    let okCount = 0;
    for (const t of okTimes) {
      if (t < start.time) continue;
      if (firstOkAfterMs === null) firstOkAfterMs = t - start.time;
      if (t > windowEndTime) break;
      okCount++;
      if (t - previous > longestGapMs) {
        longestGapMs = t - previous;
        longestGapStartTime = previous;
      }
      previous = t;
    }
    if (windowEndTime - previous > longestGapMs) {
      longestGapMs = windowEndTime - previous;
      longestGapStartTime = previous;
    }
    const stall: FaultStall = {
      fault: start.fault,
      startTime: start.time,
      stopTime: stop ? stop.time : null,
      windowEndTime,
      firstOkAfterMs,
      longestGapMs,
      longestGapStartTime,
      okCount,
      failCount: countIn(failTimes, start.time, windowEndTime),
      infoCount: countIn(infoTimes, start.time, windowEndTime),
    };
    if (start.detail !== undefined) stall.detail = start.detail;
    return stall;
  });
}

export interface ReplicaState {
  node: number | string;
  appliedIndex: number;
  hash: string;
}

export interface ConvergenceGroup {
  appliedIndex: number;
  nodes: (number | string)[];
  hashes: string[];
  ok: boolean;
}

export interface ConvergenceCheck {
  /** ok: replicas at equal applied index have equal hashes. */
  ok: boolean;
  /** converged: ok and every replica is at the same applied index (expected after a heal). */
  converged: boolean;
  groups: ConvergenceGroup[];
}

/** checkConvergence groups replicas by applied index and compares their state-machine hashes. */
export function checkConvergence(replicas: readonly ReplicaState[]): ConvergenceCheck {
  const byIndex = new Map<number, ReplicaState[]>();
  for (const r of replicas) {
    assert(Number.isSafeInteger(r.appliedIndex) && r.appliedIndex >= 0, 'appliedIndex is an index');
    let list = byIndex.get(r.appliedIndex);
    if (!list) byIndex.set(r.appliedIndex, (list = []));
    list.push(r);
  }
  const groups = [...byIndex]
    .sort((a, b) => a[0] - b[0])
    .map(([appliedIndex, list]) => {
      const hashes = [...new Set(list.map((r) => r.hash))];
      return { appliedIndex, nodes: list.map((r) => r.node), hashes, ok: hashes.length === 1 };
    });
  const ok = groups.every((g) => g.ok);
  return { ok, converged: ok && groups.length <= 1, groups };
}
