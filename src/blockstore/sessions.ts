/**
 * sessions: at-most-once application of client requests (Raft thesis §6.3), part of the block
 * state machine (raft never calls it).
 *
 * Every proposal that a client may retry carries (sessionId, sequence, ackedBelow). The state
 * machine keeps, per session, the results of applied sequences the client has not yet
 * acknowledged; a retried request with such a sequence is not applied again and gets the
 * remembered result, and one below the watermark is refused as stale.
 *
 * A session ends in one of two ways, both replicated and deterministic: a closeSession command
 * (the client disconnected), or eviction (least recently used by log index) once `sessionsMax`
 * is exceeded. Its id is then RETIRED: a late retry of one of its requests is Expired, never
 * applied again. The retired ids are a FIFO of at most `retiredSessionsMax`; one that falls out
 * of it is forgotten. A request of an unknown session whose `ackedBelow` is above 1 is Expired
 * too: such a session had answered requests, so it existed and ended — only a request from the
 * first window of a session (issued before any answer) of a forgotten id could still apply.
 *
 * Pure: no I/O; the block store persists it, incrementally (takeChanges()).
 */

import { assert } from '../assert.js';

export const SessionVerdict = {
  /** Apply: a new request; apply it and call record(). */
  Apply: 'apply',
  /** Duplicate: already applied; answer with the remembered result, do not apply. */
  Duplicate: 'duplicate',
  /** Stale: older than the last applied request of the session (its reply was already consumed). */
  Stale: 'stale',
  /** Expired: the session was evicted; the client must open a new session. */
  Expired: 'expired',
} as const;
export type SessionVerdict = (typeof SessionVerdict)[keyof typeof SessionVerdict];

export interface SessionRecord {
  sessionId: string;
  /** ackedBelow: the client has its answers for every sequence below this; they are Stale. */
  ackedBelow: number;
  /** results: applied sequences at or above ackedBelow, with their results (ascending). */
  results: Array<{ sequence: number; result: Uint8Array }>;
  /** lastSequence / lastResult: the highest applied sequence (kept for simple callers). */
  lastSequence: number;
  lastResult: Uint8Array;
  lastIndex: number;
}

export interface SessionTableLimits {
  /** sessionsMax: live sessions; one more evicts the least recently used. */
  sessionsMax: number;
  sessionIdBytesMax: number;
  /** resultsPerSessionMax: applied-but-unacknowledged results remembered per session (its window). */
  resultsPerSessionMax: number;
  /** retiredSessionsMax: ids of closed or evicted sessions remembered (FIFO), so their late retries are Expired. */
  retiredSessionsMax: number;
}

export const defaultSessionLimits: SessionTableLimits = { sessionsMax: 4096, sessionIdBytesMax: 64, resultsPerSessionMax: 1024, retiredSessionsMax: 16_384 };

/** SessionChanges: retired ids added and forgotten since the last takeChanges() (for persistence). */
export interface SessionChanges {
  retired: string[];
  forgotten: string[];
}

/**
 * SessionTable: the replicated session state. Every replica must feed it the same calls in log
 * order. A session may have many requests in flight (an NBD connection pipelines); each request
 * carries its sequence and the client's watermark `ackedBelow` (every sequence below it has been
 * answered), so the table keeps only the window of results the client may still retry.
 */
export class SessionTable {
  private readonly sessions = new Map<string, SessionRecord>();
  /** evicted: retired ids (closed or evicted), oldest first; a request on them is Expired rather than re-applied. */
  private readonly evicted = new Set<string>();
  private changes: SessionChanges = { retired: [], forgotten: [] };
  readonly limits: SessionTableLimits;

  constructor(limits: Partial<SessionTableLimits> = {}) {
    this.limits = { ...defaultSessionLimits, ...limits };
  }

  /**
   * check: what to do with request (sessionId, sequence, ackedBelow). Sequence numbers start at 1.
   * `ackedBelow` (default 0: unknown) lets an unknown session that had answered requests be Expired.
   */
  check(sessionId: string, sequence: number, ackedBelow = 0): SessionVerdict {
    assert(sequence >= 1 && Number.isInteger(sequence), 'sequence is a positive integer');
    const record = this.sessions.get(sessionId);
    if (record === undefined) return this.evicted.has(sessionId) || ackedBelow > 1 ? SessionVerdict.Expired : SessionVerdict.Apply;
    if (sequence < record.ackedBelow) return SessionVerdict.Stale;
    if (record.results.some((r) => r.sequence === sequence)) return SessionVerdict.Duplicate;
    return SessionVerdict.Apply;
  }

  /** result: the remembered result of (sessionId, sequence), or of its latest request when sequence is omitted. */
  result(sessionId: string, sequence?: number): Uint8Array | undefined {
    const record = this.sessions.get(sessionId);
    if (record === undefined) return undefined;
    if (sequence === undefined) return record.lastResult;
    return record.results.find((r) => r.sequence === sequence)?.result;
  }

  /**
   * record: notes that (sessionId, sequence) was applied at log `index` with `result`.
   * `ackedBelow` defaults to `sequence` (one request at a time: everything older is answered).
   */
  record(sessionId: string, sequence: number, index: number, result: Uint8Array, ackedBelow: number = sequence): void {
    const existing = this.sessions.get(sessionId);
    assert(this.check(sessionId, sequence) === SessionVerdict.Apply || existing === undefined, 'record only what check allowed');
    assert(!this.evicted.has(sessionId), 'a retired session records nothing');
    const record: SessionRecord = existing ?? {
      sessionId,
      ackedBelow: 0,
      results: [],
      lastSequence: 0,
      lastResult: new Uint8Array(0),
      lastIndex: 0,
    };
    record.ackedBelow = Math.max(record.ackedBelow, Math.min(ackedBelow, sequence));
    record.results = record.results.filter((r) => r.sequence >= record.ackedBelow);
    let at = record.results.length;
    while (at > 0 && record.results[at - 1]!.sequence > sequence) at--;
    record.results.splice(at, 0, { sequence, result });
    while (record.results.length > this.limits.resultsPerSessionMax) {
      const dropped = record.results.shift()!;
      record.ackedBelow = dropped.sequence + 1; // forgotten: a retry of it is Stale, never re-applied
    }
    if (sequence >= record.lastSequence) {
      record.lastSequence = sequence;
      record.lastResult = result;
    }
    record.lastIndex = index;
    this.sessions.delete(sessionId); // re-insert to keep Map order = recency
    this.sessions.set(sessionId, record);
    while (this.sessions.size > this.limits.sessionsMax) this.retire(this.sessions.keys().next().value as string);
  }

  /** close: the client ended session `sessionId` (replicated); its id is retired. Unknown ids: nothing. */
  close(sessionId: string): void {
    if (this.sessions.has(sessionId)) this.retire(sessionId);
  }

  private retire(sessionId: string): void {
    this.sessions.delete(sessionId);
    this.evicted.add(sessionId);
    this.changes.retired.push(sessionId);
    while (this.evicted.size > this.limits.retiredSessionsMax) {
      const oldest = this.evicted.values().next().value as string;
      this.evicted.delete(oldest);
      this.changes.forgotten.push(oldest);
    }
  }

  /** takeChanges: retired ids added and forgotten since the last call (the store persists them). */
  takeChanges(): SessionChanges {
    const changes = this.changes;
    this.changes = { retired: [], forgotten: [] };
    return changes;
  }

  size(): number {
    return this.sessions.size;
  }

  /** get: the live record of `sessionId`, if any. */
  get(sessionId: string): SessionRecord | undefined {
    return this.sessions.get(sessionId);
  }

  /** entries: all records, least recently used first (for snapshots and persistence). */
  entries(): SessionRecord[] {
    return [...this.sessions.values()];
  }

  evictedIds(): string[] {
    return [...this.evicted];
  }

  /** restore: replaces the table's content (from a snapshot), keeping order (`evicted` oldest first). */
  restore(records: SessionRecord[], evicted: string[] = []): void {
    this.sessions.clear();
    this.evicted.clear();
    this.changes = { retired: [], forgotten: [] };
    for (const record of records) {
      const results = record.results ?? [{ sequence: record.lastSequence, result: record.lastResult }];
      this.sessions.set(record.sessionId, { ...record, ackedBelow: record.ackedBelow ?? record.lastSequence, results: results.map((r) => ({ ...r })) });
    }
    for (const id of evicted) this.evicted.add(id);
  }
}
