// generate: synthetic register histories drawn from a real sequential register (not a test file).
// Each op gets a linearization point; its interval is stretched around that point, so the
// history is linearizable by construction. Writes that "did not take effect" are never applied.
import type { HistoryEvent, OpEvent, RegisterValue } from '../../src/chaos/history.js';

export interface GenOp {
  process: number;
  key: string;
  f: 'read' | 'write';
  /** outcome: ok; info-applied / info-lost (unknown, did / did not take effect); fail (not applied). */
  outcome: 'ok' | 'info-applied' | 'info-lost' | 'fail';
  value: RegisterValue;
  call: number;
  ret: number;
}

export interface GenSpec {
  /** point: linearization time of op n (strictly increasing). */
  keys: string[];
  steps: { key: number; write: boolean; outcome: GenOp['outcome']; before: number; after: number; process: number }[];
  pointGapMs: number;
}

/** generate replays `spec` against a sequential register per key and returns the ops. */
export function generate(spec: GenSpec): GenOp[] {
  const state = new Map<string, RegisterValue>();
  const ops: GenOp[] = [];
  spec.steps.forEach((s, n) => {
    const key = spec.keys[s.key % spec.keys.length]!;
    const point = (n + 1) * spec.pointGapMs;
    const call = Math.max(0, point - s.before);
    const ret = point + s.after;
    if (s.write) {
      const value = `w${n}`;
      const applied = s.outcome === 'ok' || s.outcome === 'info-applied';
      if (applied) state.set(key, value);
      ops.push({ process: s.process, key, f: 'write', outcome: s.outcome, value, call, ret });
    } else {
      // Reads that time out or fail carry no value; an ok read returns the register at its point.
      const outcome = s.outcome === 'ok' ? 'ok' : s.outcome === 'fail' ? 'fail' : 'info-lost';
      ops.push({ process: s.process, key, f: 'read', outcome, value: state.get(key) ?? null, call, ret });
    }
  });
  return ops;
}

/** toEvents renders ops as a time-ordered event list (invokes first at equal times). */
export function toEvents(ops: readonly GenOp[]): HistoryEvent[] {
  const events: { e: OpEvent; order: number }[] = [];
  ops.forEach((op, opId) => {
    const base = { process: op.process, opId, f: op.f, key: op.key };
    events.push({ e: { ...base, type: 'invoke', value: op.f === 'write' ? op.value : null, time: op.call }, order: 2 * opId });
    const type = op.outcome === 'ok' ? 'ok' : op.outcome === 'fail' ? 'fail' : 'info';
    events.push({ e: { ...base, type, value: op.f === 'read' && type === 'ok' ? op.value : null, time: op.ret }, order: 2 * opId + 1 });
  });
  return events
    .sort((a, b) => a.e.time - b.e.time || (a.e.type === 'invoke' ? 0 : 1) - (b.e.type === 'invoke' ? 0 : 1) || a.order - b.order)
    .map((x) => x.e);
}
