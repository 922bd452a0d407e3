/**
 * wal-storage: WalLogStorage, the raft log of one node as the block store keeps it — raft entries
 * and the hard state in a SegmentedLog (`<dir>/wal/`, wal.ts), and the rare rest in log.db
 * (SqliteLogStorage, log-store.ts): the latest snapshot's metadata, the snapshot being received
 * (staging) and a conf state. log.db holds no entries once the store is migrated.
 *
 * Reads (LogStorage, raft's view) come from the SegmentedLog's index: an appended entry is visible
 * at once, before it is durable, as in etcd's MemoryStorage on its storage goroutine. Durability is
 * what `persist()` returns: a promise that resolves when the batch's entries and hard state are on
 * disk (see persist for when it returns undefined instead).
 *
 * Upgrade: a directory without `wal/` was written by the code that kept the log in log.db. open()
 * copies its entries and hard state into a new log in `wal.migrating/` (written and fsynced on
 * this thread), renames that to `wal/` (fsynced directory), and only then deletes them from log.db.
 * A crash before the rename leaves log.db as it was (the next open starts over); a crash after it
 * leaves rows in log.db that the WAL already holds, and the next open deletes them.
 */

import fs from 'node:fs';
import path from 'node:path';
import { assert } from '../assert.js';
import { compactedError, type InitialState, type LogStorage, type PendingSnapshot, unavailableError } from '../raft/storage.js';
import type { ConfState, Entry, HardState, SnapshotMetadata } from '../raft/types.js';
import { type LogStoreLimits, type PersistBatch, SqliteLogStorage, fsyncDirectory } from './log-store.js';
import { SegmentedLog, type WalLimits, type WalRecord, WalRecordType, writeLogSync } from './wal.js';

export const WAL_DIR = 'wal';
const MIGRATING_DIR = 'wal.migrating';

/** migrationRecordBytesMax: entry bytes per ENTRIES record written by the migration. */
const migrationRecordBytesMax = 4 * 1024 * 1024;

export interface WalStorageOptions {
  limits?: Partial<LogStoreLimits & WalLimits>;
  /** confStateSource: as SqliteLogStorageOptions.confStateSource. */
  confStateSource?: () => ConfState;
}

/** WalPersistStats: counters of the write path (appends to the WAL; the WAL's own stats count fdatasyncs). */
export interface WalPersistStats {
  /** appends: persist() calls that appended to the WAL. */
  appends: number;
  /** awaitedAppends: of those, the ones whose promise was returned (mustSync content). */
  awaitedAppends: number;
  entries: number;
  bytes: number;
}

/** WalLogStorage: see the file comment. */
export class WalLogStorage implements LogStorage {
  readonly dir: string;
  readonly walDir: string;
  /** meta: log.db — snapshot metadata, staging, conf state (no entries after migration). */
  readonly meta: SqliteLogStorage;
  readonly wal: SegmentedLog;
  readonly persistStats: WalPersistStats = { appends: 0, awaitedAppends: 0, entries: 0, bytes: 0 };
  /** migrated: open() moved a log kept in log.db into the WAL (entries copied). */
  readonly migrated: { entries: number } | undefined;
  private readonly confStateSource: (() => ConfState) | undefined;

  private constructor(dir: string, meta: SqliteLogStorage, wal: SegmentedLog, migrated: { entries: number } | undefined, options: WalStorageOptions) {
    this.dir = dir;
    this.walDir = path.join(dir, WAL_DIR);
    this.meta = meta;
    this.wal = wal;
    this.migrated = migrated;
    this.confStateSource = options.confStateSource;
  }

  /** open: opens (creating or migrating, see the file comment) the log of the store in `dir`. */
  static open(dir: string, options: WalStorageOptions = {}): WalLogStorage {
    fs.mkdirSync(dir, { recursive: true });
    const meta = SqliteLogStorage.open(dir, options);
    try {
      const walDir = path.join(dir, WAL_DIR);
      let migrated: { entries: number } | undefined;
      if (!fs.existsSync(walDir)) migrated = migrate(dir, meta, options.limits ?? {});
      // The WAL is the truth once it exists; rows left in log.db are a migration's unfinished tail.
      if (meta.hasLogRows()) meta.dropLog();
      const wal = SegmentedLog.open(walDir, options.limits);
      const storage = new WalLogStorage(dir, meta, wal, migrated, options);
      storage.reconcileSnapshot();
      return storage;
    } catch (error) {
      meta.close();
      throw error;
    }
  }

  /**
   * reconcileSnapshot: persist() records a received snapshot in log.db before the WAL's reset to it
   * is durable; a crash in between leaves a WAL that does not reach or disagrees with the snapshot.
   * The reset is then done again here (in memory at once; lost again only with another crash).
   */
  private reconcileSnapshot(): void {
    const snap = this.meta.snapshot();
    if (snap.index === 0) return;
    const wal = this.wal;
    const agrees = snap.index >= wal.firstIndex() - 1 && snap.index <= wal.lastIndex() && wal.term(snap.index) === snap.term;
    if (agrees || snap.index < wal.firstIndex() - 1) return;
    void wal.append([{ type: WalRecordType.Compact, firstIndex: snap.index + 1, termBefore: snap.term }]).catch(() => undefined);
  }

  // ------------------------------------------------------------------ LogStorage (raft's view)

  initialState(): InitialState {
    const confState = this.confStateSource !== undefined ? this.confStateSource() : this.meta.initialState().confState;
    return { hardState: this.wal.hardState(), confState: structuredClone(confState) };
  }

  firstIndex(): number {
    return this.wal.firstIndex();
  }

  /** lastIndex: the last entry appended — durable, or in flight (its persist promise pending). */
  lastIndex(): number {
    return this.wal.lastIndex();
  }

  /** durableIndex: every entry up to here is on disk (SegmentedLog.durableIndex). */
  durableIndex(): number {
    return this.wal.durableIndex();
  }

  term(index: number): number {
    if (index < this.wal.firstIndex() - 1) throw compactedError(index);
    if (index > this.wal.lastIndex()) throw unavailableError(index);
    return this.wal.term(index);
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo < this.wal.firstIndex()) throw compactedError(lo);
    if (hi > this.wal.lastIndex() + 1) throw unavailableError(hi - 1);
    return this.wal.entries(lo, hi, maxBytes);
  }

  snapshot(): SnapshotMetadata {
    return this.meta.snapshot();
  }

  snapshotChunk(index: number, offset: number, maxBytes: number): Uint8Array {
    return this.meta.snapshotChunk(index, offset, maxBytes);
  }

  pendingSnapshot(): PendingSnapshot | undefined {
    return this.meta.pendingSnapshot();
  }

  // ------------------------------------------------------------------ the application's writes

  hardState(): HardState {
    return this.wal.hardState();
  }

  stagingGeneration(): number {
    return this.meta.stagingGeneration();
  }

  stagingFilePath(): string {
    return this.meta.stagingFilePath();
  }

  snapshotFilePath(): string | undefined {
    return this.meta.snapshotFilePath();
  }

  snapshotTempPath(index: number): string {
    return this.meta.snapshotTempPath(index);
  }

  setConfState(confState: ConfState): void {
    this.meta.setConfState(confState);
  }

  /**
   * persist: one Ready, in the order Ready documents. Snapshot chunks and a snapshot install are
   * made durable on this thread first, in log.db and the snapshot files (SqliteLogStorage.persist:
   * staging fsync, rename, one transaction) — they are rare. Then ONE WAL append carries, in this
   * order: the reset to an installed snapshot (a COMPACT record at snapshot index + 1 that also
   * discards a log disagreeing with it), the entries (a conflicting suffix is replaced), the hard
   * state. One append is one contiguous write, and recovery keeps only a prefix of the log's
   * records, so a hard state is never durable without the entries before it.
   *
   * Returns the append's promise (resolves when it is durable; rejects if the WAL failed) when the
   * batch has entries, a snapshot, or a hard state with mustSync. Returns undefined when nothing
   * waits for the disk: an empty batch, snapshot chunks only (durable on return), or a hard state
   * that only advances the commit index (mustSync false, etcd's rule: losing it only makes the
   * commit index go back, which raft re-learns and recovery raises to the applied index) — that
   * append is still written, in order, and made durable by the next fdatasync.
   */
  persist(batch: PersistBatch): Promise<void> | undefined {
    const chunks = batch.snapshotChunks ?? [];
    const snapshot = batch.snapshot;
    const entries = batch.entries ?? [];
    const hardState = batch.hardState;
    if (chunks.length > 0 || snapshot !== undefined) this.meta.persist({ snapshotChunks: chunks, snapshot, mustSync: true });
    const records: WalRecord[] = [];
    if (snapshot !== undefined) records.push({ type: WalRecordType.Compact, firstIndex: snapshot.index + 1, termBefore: snapshot.term });
    if (entries.length > 0) records.push({ type: WalRecordType.Entries, entries });
    if (hardState !== undefined) records.push({ type: WalRecordType.HardState, hardState: { ...hardState } });
    if (records.length === 0) return undefined;
    const awaited = entries.length > 0 || snapshot !== undefined || (hardState !== undefined && batch.mustSync !== false);
    // Not awaited: written in order but without an fdatasync of its own (SegmentedLog.append).
    const done = this.wal.append(records, { sync: awaited });
    this.persistStats.appends += 1;
    this.persistStats.entries += entries.length;
    this.persistStats.bytes += entries.reduce((n, e) => n + e.data.length, 0);
    if (!awaited) {
      done.catch(() => undefined); // a failed WAL rejects every later append too: the next awaited one reports it
      return undefined;
    }
    this.persistStats.awaitedAppends += 1;
    return done;
  }

  /** recordSnapshotFile: SqliteLogStorage.recordSnapshotFile with the term from the WAL (durable in log.db on return). */
  recordSnapshotFile(index: number, confState: ConfState, tempPath: string): SnapshotMetadata {
    assert(index >= this.wal.firstIndex() - 1 && index <= this.wal.lastIndex(), 'snapshot index within the log');
    return this.meta.recordSnapshotFile(index, confState, tempPath, this.wal.term(index));
  }

  /** createSnapshot: MemoryStorage-compatible form: writes `data` as the snapshot at `index`. */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): SnapshotMetadata {
    if (index <= this.meta.snapshot().index) return this.meta.snapshot();
    const tempPath = this.meta.snapshotTempPath(index);
    fs.writeFileSync(tempPath, data);
    return this.recordSnapshotFile(index, confState, tempPath);
  }

  /**
   * compact: entries up to `compactIndex` may go: a durable snapshot covers them, or the state
   * machine is durable up to `stateDurableIndex` (the store compacts behind its own state and
   * makes a snapshot only when a follower needs one). The log's first index moves at once;
   * SegmentedLog.compact then appends the compaction point and deletes the segments behind it
   * once that is durable. Returns that promise (callers need not wait: a lost compaction record
   * only keeps old segments until the next one).
   */
  compact(compactIndex: number, stateDurableIndex = 0): Promise<void> {
    assert(compactIndex <= Math.max(this.meta.snapshot().index, stateDurableIndex), 'compaction only behind a durable snapshot or durable state');
    assert(compactIndex <= this.wal.lastIndex(), 'compact within the log');
    if (compactIndex + 1 <= this.wal.firstIndex()) return Promise.resolve();
    const done = this.wal.compact(compactIndex + 1);
    done.catch(() => undefined);
    return done;
  }

  /** close: flushes the WAL on this thread (SegmentedLog.closeSync) and closes log.db. */
  close(): void {
    this.wal.closeSync();
    this.meta.close();
  }
}

/**
 * migrate: the directory has no WAL yet. Writes one holding log.db's log (offset, entries, hard
 * state) into `wal.migrating/`, then renames it to `wal/` (the commit point) and fsyncs the
 * directory. The caller then drops the rows from log.db. Returns what was copied (undefined
 * for a new store: an empty WAL).
 */
function migrate(dir: string, meta: SqliteLogStorage, limits: Partial<WalLimits>): { entries: number } | undefined {
  const temp = path.join(dir, MIGRATING_DIR);
  fs.rmSync(temp, { recursive: true, force: true });
  const records: WalRecord[] = [];
  const first = meta.firstIndex();
  const last = meta.lastIndex();
  if (first > 1) records.push({ type: WalRecordType.Compact, firstIndex: first, termBefore: meta.term(first - 1) });
  for (let lo = first; lo <= last; ) {
    const entries = meta.entries(lo, last + 1, migrationRecordBytesMax);
    records.push({ type: WalRecordType.Entries, entries });
    lo += entries.length;
  }
  if (meta.hasLogRows()) records.push({ type: WalRecordType.HardState, hardState: meta.hardState() });
  writeLogSync(temp, records, limits);
  fs.renameSync(temp, path.join(dir, WAL_DIR));
  fsyncDirectory(dir);
  return records.length === 0 ? undefined : { entries: Math.max(0, last - first + 1) };
}
