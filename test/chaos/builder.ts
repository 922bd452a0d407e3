// builder: a tiny DSL for hand-written histories in the chaos tests (not a test file itself).
import type { HistoryEvent, OpEvent, RegisterValue } from '../../src/chaos/history.js';

/** Outcome of a built op: 'ok', 'fail', 'info' (completion recorded at `ret`) or 'open' (never completed). */
export type Outcome = 'ok' | 'fail' | 'info' | 'open';

/**
 * HistoryBuilder collects ops as intervals and emits the events sorted by time (invokes before
 * completions at equal times), which is the order a real recorder produces.
 */
export class HistoryBuilder {
  private readonly events: { e: HistoryEvent; seq: number }[] = [];
  private nextOpId = 1;
  private seq = 0;

  private push(e: HistoryEvent): void {
    this.events.push({ e, seq: this.seq++ });
  }

  op(process: number | string, f: 'read' | 'write' | 'flush', key: string, value: RegisterValue, call: number, ret: number, outcome: Outcome = 'ok'): this {
    const opId = this.nextOpId++;
    const base = { process, opId, f, key };
    this.push({ ...base, type: 'invoke', value: f === 'write' ? value : null, time: call } satisfies OpEvent);
    if (outcome !== 'open') {
      this.push({ ...base, type: outcome, value: f === 'read' && outcome === 'ok' ? value : f === 'write' ? value : null, time: ret } satisfies OpEvent);
    }
    return this;
  }

  write(process: number | string, key: string, value: RegisterValue, call: number, ret: number, outcome: Outcome = 'ok'): this {
    return this.op(process, 'write', key, value, call, ret, outcome);
  }

  read(process: number | string, key: string, value: RegisterValue, call: number, ret: number, outcome: Outcome = 'ok'): this {
    return this.op(process, 'read', key, value, call, ret, outcome);
  }

  fault(fault: string, start: number, stop: number | null, detail?: string): this {
    this.push(detail === undefined ? { type: 'fault', fault, phase: 'start', time: start } : { type: 'fault', fault, phase: 'start', time: start, detail });
    if (stop !== null) this.push({ type: 'fault', fault, phase: 'stop', time: stop });
    return this;
  }

  leader(node: number, term: number, time: number): this {
    this.push({ type: 'leader', node, term, time });
    return this;
  }

  build(): HistoryEvent[] {
    const rank = (e: HistoryEvent): number => (e.type === 'invoke' ? 0 : 1);
    return [...this.events].sort((a, b) => a.e.time - b.e.time || rank(a.e) - rank(b.e) || a.seq - b.seq).map((x) => x.e);
  }
}

/** xorshift32: a seeded generator for synthetic histories (tests must replay). */
export function xorshift32(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 0x100000000;
  };
}
