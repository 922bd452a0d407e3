/**
 * storage: LogStorage, raft's read-only view of durable state, and MemoryStorage, its in-memory
 * implementation for tests and the simulator.
 *
 * Raft never writes through this interface: the application persists what Ready hands it and
 * raft reads it back here. Errors are ChardErrors with documented codes:
 *  - COMPACTED: the requested index is at or below the snapshot (firstIndex - 1 is still
 *    answerable by term()).
 *  - LOG_UNAVAILABLE: the requested index is above lastIndex().
 *  - SNAPSHOT_OUT_OF_DATE: snapshotChunk() asked for a snapshot that has been replaced.
 */

import { assert } from '../assert.js';
import { bootstrapConfState, bootstrapEntry } from './confchange.js';
import { ChardError, ErrorCode } from '../errors.js';
import {
  type ConfState,
  type Entry,
  type HardState,
  type SnapshotMetadata,
  sameSnapshot,
  emptyConfState,
  emptyHardState,
  entryBytes,
} from './types.js';

export interface InitialState {
  hardState: HardState;
  confState: ConfState;
}

export interface PendingSnapshot {
  metadata: SnapshotMetadata;
  bytesReceived: number;
}

export interface LogStorage {
  /** initialState: the durable hard state and the configuration as of the last applied snapshot or log. */
  initialState(): InitialState;
  /** entries: [lo, hi), at least one entry if lo < hi, then at most `maxBytes` in total. */
  entries(lo: number, hi: number, maxBytes: number): Entry[];
  /** term: the term of the entry at `index`; valid for firstIndex()-1 ..= lastIndex(). */
  term(index: number): number;
  /**
   * firstIndex: the index of the first entry still in the log. The log may be compacted behind
   * the application's durable state rather than behind a snapshot, so this may exceed snapshot
   * index + 1 (raft then asks for a snapshot with Ready.snapshotWanted before sending one).
   */
  firstIndex(): number;
  /** lastIndex: the index of the last durable entry (snapshot index if the log is empty). */
  lastIndex(): number;
  /** snapshot: metadata of the latest durable snapshot (index 0 when there is none; it may be older than firstIndex() - 1). */
  snapshot(): SnapshotMetadata;
  /** snapshotChunk: bytes of snapshot `index` from `offset`, at most `maxBytes`. */
  snapshotChunk(index: number, offset: number, maxBytes: number): Uint8Array;
  /** pendingSnapshot: a snapshot being received (staged bytes), or undefined. */
  pendingSnapshot(): PendingSnapshot | undefined;
}

export function compactedError(index: number): ChardError {
  return new ChardError(ErrorCode.Compacted, `log index ${index} is compacted`);
}
export function unavailableError(index: number): ChardError {
  return new ChardError(ErrorCode.LogUnavailable, `log index ${index} is not available`);
}
export function isStorageError(error: unknown, code: ErrorCode): boolean {
  return error instanceof ChardError && error.code === code;
}

function emptySnapshotMetadata(): SnapshotMetadata {
  return { index: 0, term: 0, confState: emptyConfState(), sizeBytes: 0 };
}

/**
 * MemoryStorage: LogStorage in memory. `entries[0]` is a dummy entry at the snapshot index that
 * carries the snapshot term, as in etcd's MemoryStorage.
 */
export class MemoryStorage implements LogStorage {
  hardState: HardState = { ...emptyHardState };
  private log: Entry[] = [{ term: 0, index: 0, type: 0, data: new Uint8Array(0) }];
  private snapshotMetadata: SnapshotMetadata = emptySnapshotMetadata();
  private snapshotData: Uint8Array = new Uint8Array(0);
  private pending: { metadata: SnapshotMetadata; chunks: Uint8Array[]; bytesReceived: number } | undefined;
  /** confState of the latest applied configuration; the application keeps it current. */
  confState: ConfState = emptyConfState();

  /** bootstrap: a storage holding the committed bootstrap entry of a new cluster (confchange.ts). */
  static bootstrap(voters: number[], learners: number[] = []): MemoryStorage {
    const storage = new MemoryStorage();
    storage.append([bootstrapEntry(voters, learners)]);
    storage.hardState = { term: 0, vote: 0, commit: 1 };
    storage.confState = bootstrapConfState(voters, learners);
    return storage;
  }

  /** withVoters: same as bootstrap(voters). */
  static withVoters(voters: number[]): MemoryStorage {
    return MemoryStorage.bootstrap(voters);
  }

  initialState(): InitialState {
    return { hardState: { ...this.hardState }, confState: structuredClone(this.confState) };
  }

  firstIndex(): number {
    return this.log[0]!.index + 1;
  }

  lastIndex(): number {
    return this.log[0]!.index + this.log.length - 1;
  }

  term(index: number): number {
    const offset = this.log[0]!.index;
    if (index < offset) throw compactedError(index);
    if (index - offset >= this.log.length) throw unavailableError(index);
    return this.log[index - offset]!.term;
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    const offset = this.log[0]!.index;
    if (lo <= offset) throw compactedError(lo);
    if (hi > this.lastIndex() + 1) throw unavailableError(hi - 1);
    const result: Entry[] = [];
    let bytes = 0;
    for (let index = lo; index < hi; index++) {
      const entry = this.log[index - offset]!;
      bytes += entryBytes(entry);
      if (result.length > 0 && bytes > maxBytes) break;
      result.push(entry);
    }
    return result;
  }

  snapshot(): SnapshotMetadata {
    return this.snapshotMetadata;
  }

  snapshotChunk(index: number, offset: number, maxBytes: number): Uint8Array {
    if (index !== this.snapshotMetadata.index) {
      throw new ChardError(ErrorCode.SnapshotOutOfDate, `snapshot ${index} replaced by ${this.snapshotMetadata.index}`);
    }
    assert(offset >= 0 && offset <= this.snapshotData.length, 'snapshot chunk offset in range');
    return this.snapshotData.subarray(offset, Math.min(this.snapshotData.length, offset + maxBytes));
  }

  snapshotBytes(): Uint8Array {
    return this.snapshotData;
  }

  pendingSnapshot(): PendingSnapshot | undefined {
    if (this.pending === undefined) return undefined;
    return { metadata: this.pending.metadata, bytesReceived: this.pending.bytesReceived };
  }

  // ---- writes, done by the application (or the simulator) while handling Ready ----

  setHardState(hardState: HardState): void {
    this.hardState = { ...hardState };
  }

  /** append: stores entries, truncating any conflicting suffix first. */
  append(entries: Entry[]): void {
    if (entries.length === 0) return;
    const first = this.firstIndex();
    const last = entries[0]!.index + entries.length - 1;
    if (last < first) return; // all already compacted
    if (first > entries[0]!.index) entries = entries.slice(first - entries[0]!.index);
    const offset = entries[0]!.index - this.log[0]!.index;
    assert(offset <= this.log.length, `append leaves no gap (offset ${offset}, length ${this.log.length})`);
    this.log.length = offset;
    for (const entry of entries) this.log.push(entry);
  }

  /** stageSnapshotChunk: keeps a received chunk; a chunk of another snapshot restarts staging. */
  stageSnapshotChunk(metadata: SnapshotMetadata, offset: number, data: Uint8Array): void {
    if (this.pending === undefined || !sameSnapshot(this.pending.metadata, metadata)) {
      this.pending = { metadata, chunks: [], bytesReceived: 0 };
    }
    if (offset !== this.pending.bytesReceived) return; // out of order: the ack will tell the leader where we are
    this.pending.chunks.push(data.slice());
    this.pending.bytesReceived += data.length;
  }

  /** takeStagedSnapshot: the assembled data of the staged snapshot with this metadata. */
  takeStagedSnapshot(metadata: SnapshotMetadata): Uint8Array {
    const pending = this.pending;
    assert(pending !== undefined && pending.metadata.index === metadata.index, 'staged snapshot present');
    assert(pending.bytesReceived === metadata.sizeBytes, 'staged snapshot complete');
    const data = new Uint8Array(pending.bytesReceived);
    let at = 0;
    for (const chunk of pending.chunks) {
      data.set(chunk, at);
      at += chunk.length;
    }
    this.pending = undefined;
    return data;
  }

  /** applySnapshot: replaces the log with a snapshot (installed on a follower). */
  applySnapshot(metadata: SnapshotMetadata, data: Uint8Array): void {
    if (metadata.index <= this.snapshotMetadata.index) return;
    this.snapshotMetadata = metadata;
    this.snapshotData = data;
    this.confState = structuredClone(metadata.confState);
    // keep entries after the snapshot if they match its term (etcd discards the whole log; we can keep a matching suffix)
    let keep: Entry[] = [];
    if (metadata.index <= this.lastIndex() && metadata.index >= this.firstIndex() && this.term(metadata.index) === metadata.term) {
      keep = this.log.slice(metadata.index - this.log[0]!.index + 1);
    }
    this.log = [{ term: metadata.term, index: metadata.index, type: 0, data: new Uint8Array(0) }, ...keep];
  }

  /** createSnapshot: records a snapshot of the application state at applied index `index`. */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): SnapshotMetadata {
    assert(index <= this.lastIndex(), 'snapshot index within log');
    if (index <= this.snapshotMetadata.index) return this.snapshotMetadata;
    this.snapshotMetadata = { index, term: this.term(index), confState: structuredClone(confState), sizeBytes: data.length };
    this.snapshotData = data;
    return this.snapshotMetadata;
  }

  /**
   * compact: drops the entries up to `compactIndex` (it stays as the dummy that carries its term).
   * Only behind durable state: the snapshot, or `stateDurableIndex` — the index up to which the
   * application's state machine is durable, for an application that compacts behind its own
   * state and makes snapshots on demand (Ready.snapshotWanted).
   */
  compact(compactIndex: number, stateDurableIndex = 0): void {
    const offset = this.log[0]!.index;
    if (compactIndex <= offset) return;
    assert(compactIndex <= Math.max(this.snapshotMetadata.index, stateDurableIndex), 'compaction only behind a snapshot or durable state');
    assert(compactIndex <= this.lastIndex(), 'compact within log');
    this.log = this.log.slice(compactIndex - offset);
  }

  /** clone: a deep-enough copy for the simulator's "what was fsynced" model. */
  clone(): MemoryStorage {
    const copy = new MemoryStorage();
    copy.hardState = { ...this.hardState };
    copy.log = this.log.slice();
    copy.snapshotMetadata = this.snapshotMetadata;
    copy.snapshotData = this.snapshotData;
    copy.confState = structuredClone(this.confState);
    copy.pending = this.pending === undefined ? undefined : { ...this.pending, chunks: this.pending.chunks.slice() };
    return copy;
  }
}
