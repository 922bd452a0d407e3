/**
 * waiters: the bridge between asynchronous clients and the synchronous Ready loop.
 *
 * ProposalWaiters maps a proposed log index to the client waiting for it. When the entry at that
 * index is applied, the waiter is resolved with the state machine's result if the applied entry
 * has the term it was proposed in, and rejected with a retryable UNAVAILABLE otherwise (another
 * leader's entry replaced it). When this node stops leading, every waiter is rejected with
 * UNAVAILABLE: its entry may still commit, so the client must retry with the same session
 * sequence, and the session table makes that retry return the original result instead of
 * applying twice. Every waiter also has a deadline (TIMEOUT, equally retryable).
 *
 * ReadWaiters batches linearizable reads: all reads queued while no ReadIndex is in flight share
 * the next one; once its read state arrives, they run as soon as appliedIndex reaches its index.
 */
import { assert } from '../assert.js';
import { ChardError, ErrorCode, RemoteError } from '../errors.js';

interface Pending<T> {
  resolve(value: T): void;
  reject(error: Error): void;
  deadline: number;
}

export class ProposalWaiters<R> {
  private readonly byIndex = new Map<number, Pending<R> & { term: number }>();
  constructor(readonly waitersMax: number) {}

  size(): number {
    return this.byIndex.size;
  }

  /**
   * refusal: the retryable BUSY to answer when no waiter can be added, or undefined. Checked BEFORE
   * the entry is appended to the log: refusing after the append would have the client retry an
   * entry that may still commit, so it would land twice.
   */
  refusal(): RemoteError | undefined {
    if (this.byIndex.size < this.waitersMax) return undefined;
    return new RemoteError(ErrorCode.Busy, `too many proposals in flight (${this.waitersMax})`);
  }

  /** add: wait for the entry at `index` (the caller checked refusal() before appending it). */
  add(index: number, term: number, deadline: number): Promise<R> {
    assert(this.byIndex.size < this.waitersMax, 'proposal waiter added past waitersMax (refusal() not checked)');
    // An older waiter at this index had its entry replaced (a leader change between two Readys).
    this.byIndex.get(index)?.reject(new RemoteError(ErrorCode.Unavailable, `entry ${index} was replaced by another leader; retry`));
    return new Promise<R>((resolve, reject) => {
      this.byIndex.set(index, { resolve, reject, term, deadline });
    });
  }

  /** applied: the entry (index, term) was applied with `result`. */
  applied(index: number, term: number, result: () => R | ChardError): void {
    const waiter = this.byIndex.get(index);
    if (waiter === undefined) return;
    this.byIndex.delete(index);
    if (waiter.term !== term) {
      waiter.reject(new RemoteError(ErrorCode.Unavailable, `entry ${index} was replaced by another leader; retry`));
      return;
    }
    const value = result();
    if (value instanceof ChardError) waiter.reject(value);
    else waiter.resolve(value);
  }

  /** failAll: reject every waiter (leadership lost, shutdown). */
  failAll(error: () => ChardError): void {
    for (const waiter of this.byIndex.values()) waiter.reject(error());
    this.byIndex.clear();
  }

  /** expire: reject waiters whose deadline passed. */
  expire(now: number): void {
    for (const [index, waiter] of this.byIndex) {
      if (waiter.deadline <= now) {
        this.byIndex.delete(index);
        waiter.reject(new RemoteError(ErrorCode.Timeout, `proposal at index ${index} not applied in time; retry`));
      }
    }
  }
}

export class ReadWaiters {
  private queued: Pending<void>[] = [];
  private inFlight: { context: string; reads: Pending<void>[]; sentAt: number } | undefined;
  private ready: { index: number; reads: Pending<void>[] }[] = [];
  private sequence = 0;
  constructor(readonly readsMax: number) {}

  size(): number {
    return this.queued.length + (this.inFlight?.reads.length ?? 0) + this.ready.reduce((n, r) => n + r.reads.length, 0);
  }

  /** wait: resolves once a linearizable read may be served from the local state machine. */
  wait(deadline: number): Promise<void> {
    if (this.size() >= this.readsMax) return Promise.reject(new RemoteError(ErrorCode.Busy, `too many reads in flight (${this.readsMax})`));
    return new Promise<void>((resolve, reject) => this.queued.push({ resolve, reject, deadline }));
  }

  /** nextRequest: the context of a ReadIndex to issue now, or undefined (none queued, or one in flight). */
  nextRequest(now: number, prefix: string): Uint8Array | undefined {
    if (this.inFlight !== undefined || this.queued.length === 0) return undefined;
    const context = `${prefix}:${++this.sequence}`;
    this.inFlight = { context, reads: this.queued, sentAt: now };
    this.queued = [];
    return new TextEncoder().encode(context);
  }

  /** readState: the ReadIndex with `context` was confirmed at `index`. */
  readState(context: Uint8Array, index: number): void {
    const key = new TextDecoder().decode(context);
    if (this.inFlight === undefined || this.inFlight.context !== key) return;
    this.ready.push({ index, reads: this.inFlight.reads });
    this.inFlight = undefined;
  }

  /** applied: release every read whose index is now applied. */
  applied(appliedIndex: number): void {
    if (this.ready.length === 0) return;
    const still: { index: number; reads: Pending<void>[] }[] = [];
    for (const batch of this.ready) {
      if (batch.index <= appliedIndex) for (const r of batch.reads) r.resolve();
      else still.push(batch);
    }
    this.ready = still;
  }

  /** retryInFlight: the ReadIndex got no answer (leader change, lost message): queue its reads again. */
  retryInFlight(now: number, afterMs: number): void {
    if (this.inFlight !== undefined && now - this.inFlight.sentAt >= afterMs) {
      this.queued = [...this.inFlight.reads, ...this.queued];
      this.inFlight = undefined;
    }
  }

  expire(now: number): void {
    const timeout = () => new RemoteError(ErrorCode.Timeout, 'read not confirmed in time; retry');
    const keep = (list: Pending<void>[]) => list.filter((r) => (r.deadline <= now ? (r.reject(timeout()), false) : true));
    this.queued = keep(this.queued);
    if (this.inFlight !== undefined) this.inFlight.reads = keep(this.inFlight.reads);
    for (const batch of this.ready) batch.reads = keep(batch.reads);
  }

  failAll(error: () => ChardError): void {
    for (const r of this.queued) r.reject(error());
    for (const r of this.inFlight?.reads ?? []) r.reject(error());
    for (const batch of this.ready) for (const r of batch.reads) r.reject(error());
    this.queued = [];
    this.inFlight = undefined;
    this.ready = [];
  }
}
