/**
 * sessions: exactly-once application of client requests (Raft thesis §6.3).
 *
 * Every proposal that a client may retry carries (sessionId, sequence). The state machine keeps,
 * per session, the highest sequence applied and its result; a retried request with a sequence
 * already applied is not applied again, and gets the remembered result. Sessions are evicted
 * deterministically (least recently used by log index) once `sessionsMax` is exceeded, so every
 * replica evicts the same ones at the same index. Pure: no I/O; the block store persists it.
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
  lastSequence: number;
  lastResult: Uint8Array;
  lastIndex: number;
}

export interface SessionTableLimits {
  sessionsMax: number;
  sessionIdBytesMax: number;
}

export const defaultSessionLimits: SessionTableLimits = { sessionsMax: 4096, sessionIdBytesMax: 64 };

/** SessionTable: the replicated session state. Every replica must feed it the same calls in log order. */
export class SessionTable {
  private readonly sessions = new Map<string, SessionRecord>();
  /** evicted: ids dropped for space; a request on them is Expired rather than silently re-applied. */
  private readonly evicted = new Set<string>();
  readonly limits: SessionTableLimits;

  constructor(limits: Partial<SessionTableLimits> = {}) {
    this.limits = { ...defaultSessionLimits, ...limits };
  }

  /** check: what to do with request (sessionId, sequence). Sequence numbers start at 1. */
  check(sessionId: string, sequence: number): SessionVerdict {
    assert(sequence >= 1 && Number.isInteger(sequence), 'sequence is a positive integer');
    const record = this.sessions.get(sessionId);
    if (record === undefined) return this.evicted.has(sessionId) ? SessionVerdict.Expired : SessionVerdict.Apply;
    if (sequence > record.lastSequence) return SessionVerdict.Apply;
    if (sequence === record.lastSequence) return SessionVerdict.Duplicate;
    return SessionVerdict.Stale;
  }

  /** result: the remembered result of the last applied request of a session. */
  result(sessionId: string): Uint8Array | undefined {
    return this.sessions.get(sessionId)?.lastResult;
  }

  /** record: notes that (sessionId, sequence) was applied at log `index` with `result`. */
  record(sessionId: string, sequence: number, index: number, result: Uint8Array): void {
    const existing = this.sessions.get(sessionId);
    assert(existing === undefined || sequence > existing.lastSequence, 'session sequence increases');
    this.sessions.delete(sessionId); // re-insert to keep Map order = recency
    this.sessions.set(sessionId, { sessionId, lastSequence: sequence, lastResult: result, lastIndex: index });
    while (this.sessions.size > this.limits.sessionsMax) {
      const oldest = this.sessions.keys().next().value as string;
      this.sessions.delete(oldest);
      this.evicted.add(oldest);
    }
  }

  size(): number {
    return this.sessions.size;
  }

  /** entries: all records, least recently used first (for snapshots and persistence). */
  entries(): SessionRecord[] {
    return [...this.sessions.values()];
  }

  evictedIds(): string[] {
    return [...this.evicted];
  }

  /** restore: replaces the table's content (from a snapshot), keeping order. */
  restore(records: SessionRecord[], evicted: string[] = []): void {
    this.sessions.clear();
    this.evicted.clear();
    for (const record of records) this.sessions.set(record.sessionId, { ...record });
    for (const id of evicted) this.evicted.add(id);
  }
}
