/**
 * log: RaftLog, the node's view of its log — durable entries (LogStorage) followed by the
 * unstable tail that raft has appended but the application has not yet persisted, plus an
 * unstable snapshot waiting to be installed.
 *
 * Invariants (asserted): applied <= committed <= lastIndex; the unstable tail starts right after
 * the durable part (or after the unstable snapshot).
 */

import { assert } from '../assert.js';
import { ErrorCode } from '../errors.js';
import { type LogStorage, compactedError, isStorageError } from './storage.js';
import { type Entry, type SnapshotMetadata, entryBytes } from './types.js';

export class RaftLog {
  readonly storage: LogStorage;
  /** unstableOffset: index of unstableEntries[0]. */
  unstableOffset: number;
  unstableEntries: Entry[] = [];
  /** unstableSnapshot: a received snapshot to install (its chunks are already staged). */
  unstableSnapshot: SnapshotMetadata | undefined;
  committed: number;
  /** applied: the highest index the application has applied (acknowledged by advance()). */
  applied: number;
  /** applying: the highest index handed out for application (applied <= applying <= committed). */
  applying: number;

  constructor(storage: LogStorage, applied: number) {
    this.storage = storage;
    const first = storage.firstIndex();
    const last = storage.lastIndex();
    this.unstableOffset = last + 1;
    const hard = storage.initialState().hardState;
    this.committed = Math.max(hard.commit, first - 1);
    assert(this.committed <= last, `committed ${this.committed} beyond durable last index ${last}`);
    const appliedFloor = Math.max(applied, first - 1);
    assert(appliedFloor <= this.committed, `applied ${appliedFloor} beyond committed ${this.committed}`);
    this.applied = appliedFloor;
    this.applying = appliedFloor;
  }

  firstIndex(): number {
    if (this.unstableSnapshot !== undefined) return this.unstableSnapshot.index + 1;
    return this.storage.firstIndex();
  }

  lastIndex(): number {
    if (this.unstableEntries.length > 0) return this.unstableOffset + this.unstableEntries.length - 1;
    if (this.unstableSnapshot !== undefined) return this.unstableSnapshot.index;
    return this.storage.lastIndex();
  }

  /** stableLastIndex: the last index that is durable (not counting the unstable tail). */
  stableLastIndex(): number {
    if (this.unstableSnapshot !== undefined) return this.unstableSnapshot.index;
    return Math.min(this.storage.lastIndex(), this.unstableOffset - 1);
  }

  /** term: the term of entry `index`; throws COMPACTED / LOG_UNAVAILABLE like LogStorage. */
  term(index: number): number {
    if (this.unstableSnapshot !== undefined && index === this.unstableSnapshot.index) return this.unstableSnapshot.term;
    if (index >= this.unstableOffset) {
      const entry = this.unstableEntries[index - this.unstableOffset];
      if (entry !== undefined) return entry.term;
    }
    if (this.unstableSnapshot !== undefined && index < this.unstableSnapshot.index) {
      throw compactedError(index);
    }
    return this.storage.term(index);
  }

  /** termOr: term(index), or `fallback` when the index is compacted or unavailable. */
  termOr(index: number, fallback: number): number {
    // Beyond the log: answered without the exception term() would throw (findConflict asks this
    // for every new entry of every append a follower receives).
    if (index > this.lastIndex()) return fallback;
    try {
      return this.term(index);
    } catch (error) {
      if (isStorageError(error, ErrorCode.Compacted) || isStorageError(error, ErrorCode.LogUnavailable)) return fallback;
      throw error;
    }
  }

  lastTerm(): number {
    return this.term(this.lastIndex());
  }

  matchTerm(index: number, term: number): boolean {
    return this.termOr(index, -1) === term;
  }

  /** isUpToDate: whether a log ending at (lastIndex, lastTerm) is at least as up to date as ours (§5.4.1). */
  isUpToDate(lastIndex: number, lastTerm: number): boolean {
    const ourTerm = this.lastTerm();
    return lastTerm > ourTerm || (lastTerm === ourTerm && lastIndex >= this.lastIndex());
  }

  /** findConflict: index of the first entry whose term differs from ours, or 0 if all match. */
  findConflict(entries: Entry[]): number {
    for (const entry of entries) {
      if (!this.matchTerm(entry.index, entry.term)) return entry.index;
    }
    return 0;
  }

  /**
   * findConflictByTerm: the largest index <= `index` whose term is <= `term` (fast backtracking,
   * thesis §5.3 / etcd). Returns [index, termAtIndex]; term 0 when unknown (compacted).
   */
  findConflictByTerm(index: number, term: number): [number, number] {
    for (let at = index; at >= 0; at--) {
      const atTerm = this.termOr(at, -1);
      if (atTerm === -1) return [at, 0];
      if (atTerm <= term) return [at, atTerm];
    }
    return [0, 0];
  }

  /**
   * maybeAppend: the follower's AppendEntries rule. Returns the index of the last new entry, or
   * undefined when (prevIndex, prevTerm) does not match.
   */
  maybeAppend(prevIndex: number, prevTerm: number, leaderCommit: number, entries: Entry[]): number | undefined {
    if (!this.matchTerm(prevIndex, prevTerm)) return undefined;
    const lastNew = prevIndex + entries.length;
    const conflict = this.findConflict(entries);
    if (conflict !== 0) {
      assert(conflict > this.committed, `conflict at ${conflict} with committed entry (committed ${this.committed})`);
      this.append(entries.slice(conflict - (prevIndex + 1)));
    }
    this.commitTo(Math.min(leaderCommit, lastNew));
    return lastNew;
  }

  /** append: adds entries to the unstable tail, truncating a conflicting suffix. Returns lastIndex. */
  append(entries: Entry[]): number {
    if (entries.length === 0) return this.lastIndex();
    const first = entries[0]!.index;
    assert(first - 1 >= this.committed, `append at ${first} would overwrite committed ${this.committed}`);
    if (first === this.unstableOffset + this.unstableEntries.length) {
      for (const entry of entries) this.unstableEntries.push(entry);
    } else if (first <= this.unstableOffset) {
      // Replace the whole unstable tail; the application truncates durable entries >= first.
      this.unstableOffset = first;
      this.unstableEntries = entries.slice();
    } else {
      this.unstableEntries = this.unstableEntries.slice(0, first - this.unstableOffset);
      for (const entry of entries) this.unstableEntries.push(entry);
    }
    return this.lastIndex();
  }

  /** slice: entries [lo, hi) at most maxBytes (at least one), from storage and the unstable tail. */
  slice(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo >= hi) return [];
    assert(lo >= this.firstIndex(), 'slice above compaction');
    assert(hi <= this.lastIndex() + 1, 'slice within log');
    const result: Entry[] = [];
    let bytes = 0;
    if (lo < this.unstableOffset) {
      const stored = this.storage.entries(lo, Math.min(hi, this.unstableOffset), maxBytes);
      for (const entry of stored) {
        bytes += entryBytes(entry);
        result.push(entry);
      }
      if (result.length < Math.min(hi, this.unstableOffset) - lo) return result; // byte limit reached
    }
    for (let index = Math.max(lo, this.unstableOffset); index < hi; index++) {
      const entry = this.unstableEntries[index - this.unstableOffset]!;
      bytes += entryBytes(entry);
      if (result.length > 0 && bytes > maxBytes) break;
      result.push(entry);
    }
    return result;
  }

  /** entriesFrom: entries starting at `index` up to maxBytes; throws COMPACTED below firstIndex. */
  entriesFrom(index: number, maxBytes: number): Entry[] {
    const last = this.lastIndex();
    if (index > last) return [];
    if (index < this.firstIndex()) throw compactedError(index);
    return this.slice(index, last + 1, maxBytes);
  }

  commitTo(index: number): void {
    if (index > this.committed) {
      assert(index <= this.lastIndex(), `commit ${index} beyond last index ${this.lastIndex()}`);
      this.committed = index;
    }
  }

  /** hasNextCommittedEntries: committed entries wait to be handed out. */
  hasNextCommittedEntries(): boolean {
    if (this.unstableSnapshot !== undefined) return false;
    return this.committed > this.applying;
  }

  nextCommittedEntries(maxBytes: number): Entry[] {
    if (!this.hasNextCommittedEntries()) return [];
    const lo = Math.max(this.applying + 1, this.firstIndex());
    return this.slice(lo, this.committed + 1, maxBytes);
  }

  /** stableTo: entries up to (index, term) are durable. */
  stableTo(index: number, term: number): void {
    if (index < this.unstableOffset) return;
    const entry = this.unstableEntries[index - this.unstableOffset];
    if (entry === undefined || entry.term !== term) return; // replaced since; ignore
    this.unstableEntries = this.unstableEntries.slice(index + 1 - this.unstableOffset);
    this.unstableOffset = index + 1;
  }

  /** restore: install a received snapshot (thesis §5.1 / InstallSnapshot); everything before it is gone. */
  restore(snapshot: SnapshotMetadata): void {
    this.committed = snapshot.index;
    this.unstableOffset = snapshot.index + 1;
    this.unstableEntries = [];
    this.unstableSnapshot = snapshot;
  }

  stableSnapshotTo(index: number): void {
    if (this.unstableSnapshot !== undefined && this.unstableSnapshot.index === index) this.unstableSnapshot = undefined;
  }

  appliedTo(index: number): void {
    if (index <= this.applied) return;
    assert(index <= this.committed, `applied ${index} beyond committed ${this.committed}`);
    this.applied = index;
    if (this.applying < index) this.applying = index;
  }
}
