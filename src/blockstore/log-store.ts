/**
 * log-store: SqliteLogStorage, the durable raft log of one node in `<dir>/log.db` (better-sqlite3,
 * WAL, synchronous=FULL: every committed transaction is fsynced before commit returns).
 *
 * Besides the log it keeps the hard state, the metadata of the latest durable snapshot (whose
 * bytes live in a file under `<dir>/snapshots/`), the snapshot being received (metadata + bytes
 * counted in the table; the bytes in `<dir>/snapshots/staging.bin`) and a conf state.
 *
 * Write path: `persist(ready)` makes one Ready durable with ONE SQLite transaction (group commit,
 * one fsync); staged snapshot bytes are written and fsynced to the staging file BEFORE that
 * transaction counts them, so the table never claims bytes that are not on disk.
 *
 * Read path (raft's hot path: term(), entries()): served from a bounded in-memory cache of the log
 * tail (`cacheEntriesMax`, `cacheBytesMax`); older entries are read from SQLite.
 */

import fs from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { assert } from '../assert.js';
import { ChardError, CorruptError, ErrorCode } from '../errors.js';
import { compactedError, type InitialState, type LogStorage, type PendingSnapshot, unavailableError } from '../raft/storage.js';
import {
  type ConfState,
  type Entry,
  type EntryType,
  type HardState,
  type Ready,
  type SnapshotChunk,
  type SnapshotMetadata,
  emptyConfState,
  emptyHardState,
  entryBytes,
  sameSnapshot,
} from '../raft/types.js';

export interface LogStoreLimits {
  /** cacheEntriesMax: entries of the log tail kept in memory for term()/entries(). */
  cacheEntriesMax: number;
  /** cacheBytesMax: entry bytes (entryBytes) of the log tail kept in memory. */
  cacheBytesMax: number;
}

export const defaultLogStoreLimits: LogStoreLimits = {
  cacheEntriesMax: 16_384,
  cacheBytesMax: 64 * 1024 * 1024,
};

/** PersistStats: counters of the write path; one transaction is one fsync of log.db. */
export interface PersistStats {
  /** transactions: fsynced transactions of log.db (one per persist() with durable content). */
  transactions: number;
  /** relaxedTransactions: commit-index-only batches written without their own fsync. */
  relaxedTransactions: number;
  entries: number;
  bytes: number;
}

/** PersistBatch: the parts of a Ready that persist() writes. */
export type PersistBatch = Partial<Pick<Ready, 'snapshotChunks' | 'snapshot' | 'entries' | 'hardState' | 'mustSync'>>;

export const LOG_DB_FILE = 'log.db';
export const SNAPSHOT_DIR = 'snapshots';
export const STAGING_FILE = 'staging.bin';

const SCHEMA = `
CREATE TABLE IF NOT EXISTS entries (
  idx  INTEGER PRIMARY KEY,
  term INTEGER NOT NULL,
  type INTEGER NOT NULL,
  data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS hard_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  term INTEGER NOT NULL, vote INTEGER NOT NULL, commit_index INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_offset (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  idx INTEGER NOT NULL, term INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  idx INTEGER NOT NULL, term INTEGER NOT NULL, conf_state TEXT NOT NULL, size_bytes INTEGER NOT NULL, file TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS staged_snapshot (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  idx INTEGER NOT NULL, term INTEGER NOT NULL, conf_state TEXT NOT NULL, size_bytes INTEGER NOT NULL,
  bytes_received INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS conf_state (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  conf_state TEXT NOT NULL
);
`;

interface SnapshotRow {
  metadata: SnapshotMetadata;
  /** file: name inside the snapshots directory ('' when there is no snapshot). */
  file: string;
}

/** fsyncDirectory: makes renames and unlinks inside `dir` durable. */
export function fsyncDirectory(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

function emptySnapshotMetadata(): SnapshotMetadata {
  return { index: 0, term: 0, confState: emptyConfState(), sizeBytes: 0 };
}


export interface SqliteLogStorageOptions {
  limits?: Partial<LogStoreLimits>;
  /**
   * confStateSource: where initialState() takes the configuration from. The block store passes
   * the state machine's conf state, which is consistent with its applied index (the index raft
   * is restarted with). Without it, the conf state stored here (setConfState / snapshots) is used.
   */
  confStateSource?: () => ConfState;
}

/**
 * SqliteLogStorage: LogStorage over log.db. Raft reads through the LogStorage methods; the
 * application writes with persist(), recordSnapshotFile()/createSnapshot(), compact().
 * Not safe for concurrent use by two processes (one node owns its directory).
 */
export class SqliteLogStorage implements LogStorage {
  readonly dir: string;
  readonly snapshotDir: string;
  readonly limits: LogStoreLimits;
  readonly persistStats: PersistStats = { transactions: 0, relaxedTransactions: 0, entries: 0, bytes: 0 };
  private readonly db: Database.Database;
  private readonly confStateSource: (() => ConfState) | undefined;

  private hard: HardState = { ...emptyHardState };
  /** hardStored: log.db has a hard_state row (hasLogRows). */
  private hardStored = false;
  private offsetIndex = 0;
  private offsetTerm = 0;
  private last = 0;
  private snap: SnapshotRow = { metadata: emptySnapshotMetadata(), file: '' };
  private snapFd: number | undefined;
  private staged: PendingSnapshot | undefined;
  private stagingFd: number | undefined;
  /** stagingResets: how often staging.bin was truncated to 0 for a new snapshot (stagingGeneration). */
  private stagingResets = 0;
  private storedConfState: ConfState = emptyConfState();

  /** cache: the log tail [cacheFirst, last], contiguous; empty when cacheFirst > last. */
  private cache: Entry[] = [];
  private cacheFirst = 1;
  private cacheBytes = 0;

  private readonly statements;

  private constructor(dir: string, options: SqliteLogStorageOptions) {
    this.dir = dir;
    this.snapshotDir = path.join(dir, SNAPSHOT_DIR);
    this.limits = { ...defaultLogStoreLimits, ...options.limits };
    assert(this.limits.cacheEntriesMax > 0 && this.limits.cacheBytesMax > 0, 'cache limits positive');
    this.confStateSource = options.confStateSource;
    fs.mkdirSync(this.snapshotDir, { recursive: true });
    this.db = new Database(path.join(dir, LOG_DB_FILE));
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.exec(SCHEMA);
    const db = this.db;
    this.statements = {
      entry: db.prepare<[number], { term: number; type: number; data: Buffer }>('SELECT term, type, data FROM entries WHERE idx = ?'),
      term: db.prepare<[number], { term: number }>('SELECT term FROM entries WHERE idx = ?'),
      range: db.prepare<[number, number], { idx: number; term: number; type: number; data: Buffer }>(
        'SELECT idx, term, type, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx',
      ),
      insert: db.prepare('INSERT INTO entries (idx, term, type, data) VALUES (?, ?, ?, ?)'),
      deleteFrom: db.prepare('DELETE FROM entries WHERE idx >= ?'),
      deleteUpTo: db.prepare('DELETE FROM entries WHERE idx <= ?'),
      deleteAll: db.prepare('DELETE FROM entries'),
      setHard: db.prepare('INSERT OR REPLACE INTO hard_state (id, term, vote, commit_index) VALUES (1, ?, ?, ?)'),
      setOffset: db.prepare('INSERT OR REPLACE INTO log_offset (id, idx, term) VALUES (1, ?, ?)'),
      setSnapshot: db.prepare('INSERT OR REPLACE INTO snapshot (id, idx, term, conf_state, size_bytes, file) VALUES (1, ?, ?, ?, ?, ?)'),
      setStaged: db.prepare(
        'INSERT OR REPLACE INTO staged_snapshot (id, idx, term, conf_state, size_bytes, bytes_received) VALUES (1, ?, ?, ?, ?, ?)',
      ),
      clearStaged: db.prepare('DELETE FROM staged_snapshot'),
      setConf: db.prepare('INSERT OR REPLACE INTO conf_state (id, conf_state) VALUES (1, ?)'),
    };
    this.load();
  }

  /** open: opens (creating if needed) the log in `dir`, recovering the staging file and dropping orphan snapshot files. */
  static open(dir: string, options: SqliteLogStorageOptions = {}): SqliteLogStorage {
    fs.mkdirSync(dir, { recursive: true });
    return new SqliteLogStorage(dir, options);
  }

  private load(): void {
    const db = this.db;
    const hard = db.prepare('SELECT term, vote, commit_index FROM hard_state WHERE id = 1').get() as
      | { term: number; vote: number; commit_index: number }
      | undefined;
    if (hard !== undefined) this.hard = { term: hard.term, vote: hard.vote, commit: hard.commit_index };
    this.hardStored = hard !== undefined;
    const offset = db.prepare('SELECT idx, term FROM log_offset WHERE id = 1').get() as { idx: number; term: number } | undefined;
    if (offset !== undefined) {
      this.offsetIndex = offset.idx;
      this.offsetTerm = offset.term;
    }
    const max = db.prepare('SELECT MAX(idx) AS m FROM entries').get() as { m: number | null };
    this.last = max.m ?? this.offsetIndex;
    const count = db.prepare('SELECT COUNT(*) AS c FROM entries').get() as { c: number };
    if (count.c !== this.last - this.offsetIndex) throw new CorruptError(`log.db has a gap: ${count.c} entries in (${this.offsetIndex}, ${this.last}]`);
    const snap = db.prepare('SELECT idx, term, conf_state, size_bytes, file FROM snapshot WHERE id = 1').get() as
      | { idx: number; term: number; conf_state: string; size_bytes: number; file: string }
      | undefined;
    if (snap !== undefined) {
      this.snap = {
        metadata: { index: snap.idx, term: snap.term, confState: JSON.parse(snap.conf_state) as ConfState, sizeBytes: snap.size_bytes },
        file: snap.file,
      };
      const snapPath = path.join(this.snapshotDir, snap.file);
      if (!fs.existsSync(snapPath)) throw new CorruptError(`snapshot file ${snap.file} recorded in log.db is missing`);
      const size = fs.statSync(snapPath).size;
      if (size !== snap.size_bytes) throw new CorruptError(`snapshot file ${snap.file} has ${size} bytes, expected ${snap.size_bytes}`);
    }
    const conf = db.prepare('SELECT conf_state FROM conf_state WHERE id = 1').get() as { conf_state: string } | undefined;
    if (conf !== undefined) this.storedConfState = JSON.parse(conf.conf_state) as ConfState;
    // Staging: the table is the truth; drop file bytes it does not count (written, not acknowledged).
    const staged = db.prepare('SELECT idx, term, conf_state, size_bytes, bytes_received FROM staged_snapshot WHERE id = 1').get() as
      | { idx: number; term: number; conf_state: string; size_bytes: number; bytes_received: number }
      | undefined;
    const stagingPath = path.join(this.snapshotDir, STAGING_FILE);
    if (staged !== undefined) {
      const fileBytes = fs.existsSync(stagingPath) ? fs.statSync(stagingPath).size : 0;
      const bytesReceived = Math.min(fileBytes, staged.bytes_received);
      this.staged = {
        metadata: { index: staged.idx, term: staged.term, confState: JSON.parse(staged.conf_state) as ConfState, sizeBytes: staged.size_bytes },
        bytesReceived,
      };
      this.stagingFd = fs.openSync(stagingPath, fs.existsSync(stagingPath) ? 'r+' : 'w+');
      fs.ftruncateSync(this.stagingFd, bytesReceived);
      fs.fsyncSync(this.stagingFd);
      if (bytesReceived !== staged.bytes_received) this.statements.setStaged.run(staged.idx, staged.term, staged.conf_state, staged.size_bytes, bytesReceived);
    } else if (fs.existsSync(stagingPath)) {
      fs.unlinkSync(stagingPath);
    }
    // Orphans: snapshot files a crash left behind (created or received but never recorded).
    for (const name of fs.readdirSync(this.snapshotDir)) {
      if (name !== STAGING_FILE && name !== this.snap.file) fs.rmSync(path.join(this.snapshotDir, name), { force: true });
    }
    fsyncDirectory(this.snapshotDir);
    this.reloadCache();
  }

  private reloadCache(): void {
    this.cache = [];
    this.cacheBytes = 0;
    this.cacheFirst = this.last + 1;
    const rows = this.db
      .prepare<[number, number], { idx: number; term: number; type: number; data: Buffer }>(
        'SELECT idx, term, type, data FROM entries WHERE idx > ? ORDER BY idx DESC LIMIT ?',
      )
      .all(this.offsetIndex, this.limits.cacheEntriesMax);
    for (const row of rows) {
      const entry: Entry = { index: row.idx, term: row.term, type: row.type as EntryType, data: row.data };
      if (this.cacheBytes + entryBytes(entry) > this.limits.cacheBytesMax && this.cache.length > 0) break;
      this.cache.push(entry);
      this.cacheBytes += entryBytes(entry);
    }
    this.cache.reverse();
    if (this.cache.length > 0) this.cacheFirst = this.cache[0]!.index;
  }

  // ------------------------------------------------------------------ LogStorage (raft's view)

  initialState(): InitialState {
    const confState = this.confStateSource !== undefined ? this.confStateSource() : this.storedConfState;
    return { hardState: { ...this.hard }, confState: structuredClone(confState) };
  }

  firstIndex(): number {
    return this.offsetIndex + 1;
  }

  lastIndex(): number {
    return this.last;
  }

  term(index: number): number {
    if (index < this.offsetIndex) throw compactedError(index);
    if (index > this.last) throw unavailableError(index);
    if (index === this.offsetIndex) return this.offsetTerm;
    if (index >= this.cacheFirst) return this.cache[index - this.cacheFirst]!.term;
    const row = this.statements.term.get(index);
    if (row === undefined) throw new CorruptError(`log entry ${index} missing from log.db`);
    return row.term;
  }

  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    if (lo <= this.offsetIndex) throw compactedError(lo);
    if (hi > this.last + 1) throw unavailableError(hi - 1);
    const result: Entry[] = [];
    let bytes = 0;
    const take = (entry: Entry): boolean => {
      bytes += entryBytes(entry);
      if (result.length > 0 && bytes > maxBytes) return false;
      result.push(entry);
      return true;
    };
    const storedHi = Math.min(hi, this.cacheFirst);
    if (lo < storedHi) {
      for (const row of this.statements.range.iterate(lo, storedHi)) {
        if (!take({ index: row.idx, term: row.term, type: row.type as EntryType, data: row.data })) return result;
      }
      if (result.length !== storedHi - lo) throw new CorruptError(`log.db misses entries in [${lo}, ${storedHi})`);
    }
    for (let index = Math.max(lo, this.cacheFirst); index < hi; index++) {
      if (!take(this.cache[index - this.cacheFirst]!)) return result;
    }
    return result;
  }

  snapshot(): SnapshotMetadata {
    return this.snap.metadata;
  }

  snapshotChunk(index: number, offset: number, maxBytes: number): Uint8Array {
    const metadata = this.snap.metadata;
    if (index !== metadata.index || metadata.index === 0) {
      throw new ChardError(ErrorCode.SnapshotOutOfDate, `snapshot ${index} replaced by ${metadata.index}`);
    }
    assert(offset >= 0 && offset <= metadata.sizeBytes, 'snapshot chunk offset in range');
    assert(maxBytes > 0, 'snapshot chunk maxBytes positive');
    const length = Math.min(maxBytes, metadata.sizeBytes - offset);
    if (this.snapFd === undefined) this.snapFd = fs.openSync(path.join(this.snapshotDir, this.snap.file), 'r');
    const data = Buffer.allocUnsafe(length);
    let at = 0;
    while (at < length) {
      const n = fs.readSync(this.snapFd, data, at, length - at, offset + at);
      if (n === 0) throw new CorruptError(`snapshot file ${this.snap.file} is shorter than recorded`);
      at += n;
    }
    return new Uint8Array(data.buffer, data.byteOffset, length);
  }

  pendingSnapshot(): PendingSnapshot | undefined {
    return this.staged === undefined ? undefined : { metadata: this.staged.metadata, bytesReceived: this.staged.bytesReceived };
  }

  /**
   * stagingGeneration: changes whenever staging.bin restarts from 0 (a chunk of another snapshot).
   * While it is unchanged, staging.bin only grows and bytes below pendingSnapshot().bytesReceived
   * never change — also across the rename into the snapshot file by persist(Ready.snapshot). The
   * block store relies on this to mirror the staged bytes (BlockStore.persist).
   */
  stagingGeneration(): number {
    return this.stagingResets;
  }

  /** stagingFilePath: the file receiving the staged snapshot's bytes. */
  stagingFilePath(): string {
    return path.join(this.snapshotDir, STAGING_FILE);
  }

  // ------------------------------------------------------------------ the application's writes

  hardState(): HardState {
    return { ...this.hard };
  }

  /** snapshotFilePath: the file holding the current snapshot's bytes (undefined without one). */
  snapshotFilePath(): string | undefined {
    return this.snap.file === '' ? undefined : path.join(this.snapshotDir, this.snap.file);
  }

  /**
   * persist: makes one Ready durable, in the order Ready documents: snapshot chunks (staging file,
   * fsynced), snapshot install bookkeeping, entries (truncating a conflicting suffix first), hard
   * state — all table changes in ONE transaction, i.e. one fsync (group commit).
   * Snapshot chunks that do not continue the staged bytes are ignored (raft re-sends them).
   */
  persist(batch: PersistBatch): void {
    const chunks = batch.snapshotChunks ?? [];
    const entries = batch.entries ?? [];
    const snapshot = batch.snapshot;
    const hardState = batch.hardState;
    if (chunks.length === 0 && entries.length === 0 && snapshot === undefined && hardState === undefined) return;

    // 1. Snapshot chunks: bytes to the staging file and fsync, before the table counts them.
    const stagedBefore = this.staged;
    let staged = this.staged === undefined ? undefined : { ...this.staged };
    let stagingReset = false;
    let chunkBytes = 0;
    for (const chunk of chunks) {
      const result = this.stageChunk(staged, chunk);
      if (result.reset) stagingReset = true;
      staged = result.staged;
      chunkBytes += result.written;
    }
    if (chunks.length > 0 && this.stagingFd !== undefined) fs.fsyncSync(this.stagingFd);
    if (stagingReset) fsyncDirectory(this.snapshotDir); // a newly created staging file must survive too

    // 2. Snapshot install: move the complete staged file into place (durably) before recording it.
    let installed: SnapshotRow | undefined;
    if (snapshot !== undefined) {
      assert(staged !== undefined && sameSnapshot(staged.metadata, snapshot), 'installed snapshot was staged');
      assert(staged.bytesReceived === snapshot.sizeBytes, 'installed snapshot is complete');
      assert(snapshot.index > this.snap.metadata.index, 'installed snapshot is newer');
      fs.closeSync(this.stagingFd!);
      this.stagingFd = undefined;
      const file = `snap-${snapshot.index}-${snapshot.term}.db`;
      fs.renameSync(path.join(this.snapshotDir, STAGING_FILE), path.join(this.snapshotDir, file));
      fsyncDirectory(this.snapshotDir);
      installed = { metadata: structuredClone(snapshot), file };
      staged = undefined;
    }

    // 3. One transaction for the tables.
    let offsetIndex = this.offsetIndex;
    let offsetTerm = this.offsetTerm;
    let last = this.last;
    let keepFrom = Infinity; // cache: entries >= keepFrom survive
    let appended: Entry[] = [];
    const run = this.db.transaction(() => {
      const s = this.statements;
      if (chunks.length > 0 || installed !== undefined || stagingReset) {
        if (staged === undefined) s.clearStaged.run();
        else s.setStaged.run(staged.metadata.index, staged.metadata.term, JSON.stringify(staged.metadata.confState), staged.metadata.sizeBytes, staged.bytesReceived);
      }
      if (installed !== undefined) {
        const m = installed.metadata;
        s.setSnapshot.run(m.index, m.term, JSON.stringify(m.confState), m.sizeBytes, installed.file);
        s.setConf.run(JSON.stringify(m.confState));
        // Keep a suffix that agrees with the snapshot (as MemoryStorage.applySnapshot); else drop all.
        const matches = m.index >= this.offsetIndex && m.index <= this.last && this.term(m.index) === m.term;
        if (matches) {
          s.deleteUpTo.run(m.index);
          keepFrom = m.index + 1;
        } else {
          s.deleteAll.run();
          last = m.index;
          keepFrom = Infinity;
        }
        offsetIndex = m.index;
        offsetTerm = m.term;
        s.setOffset.run(offsetIndex, offsetTerm);
      }
      if (entries.length > 0) {
        let toAppend = entries;
        const first = offsetIndex + 1;
        if (toAppend[0]!.index < first) toAppend = toAppend.slice(first - toAppend[0]!.index);
        if (toAppend.length > 0) {
          const start = toAppend[0]!.index;
          assert(start <= last + 1, `append leaves no gap (start ${start}, last ${last})`);
          if (start <= last) s.deleteFrom.run(start);
          for (let i = 0; i < toAppend.length; i++) {
            const entry = toAppend[i]!;
            assert(entry.index === start + i, 'appended entries are contiguous');
            s.insert.run(entry.index, entry.term, entry.type, entry.data);
          }
          last = start + toAppend.length - 1;
          appended = toAppend;
        }
      }
      if (hardState !== undefined) s.setHard.run(hardState.term, hardState.vote, hardState.commit);
    });
    if (hardState !== undefined) this.hardStored = true;
    // A batch that only advances the commit index (mustSync false: etcd's rule) need not be
    // fsynced on its own: losing it in a crash only makes the commit index go back, which raft
    // re-learns. Under WAL the next synchronous commit fsyncs it anyway.
    const relaxed = batch.mustSync === false && chunks.length === 0 && entries.length === 0 && snapshot === undefined;
    if (relaxed) this.db.pragma('synchronous = NORMAL');
    try {
      run();
    } catch (error) {
      this.staged = stagedBefore;
      throw error;
    } finally {
      if (relaxed) this.db.pragma('synchronous = FULL');
    }
    if (relaxed) this.persistStats.relaxedTransactions += 1;
    else this.persistStats.transactions += 1;
    this.persistStats.entries += appended.length;
    this.persistStats.bytes += chunkBytes + appended.reduce((sum, e) => sum + e.data.length, 0);

    // 4. Memory follows the committed transaction.
    this.staged = staged;
    if (hardState !== undefined) this.hard = { ...hardState };
    if (installed !== undefined) {
      const old = this.snap.file;
      this.closeSnapshotFd();
      this.snap = installed;
      this.storedConfState = structuredClone(installed.metadata.confState);
      this.offsetIndex = offsetIndex;
      this.offsetTerm = offsetTerm;
      if (keepFrom === Infinity) this.last = last;
      this.trimCacheFront(Math.min(keepFrom, this.last + 1));
      if (keepFrom === Infinity) {
        this.cache = [];
        this.cacheBytes = 0;
        this.cacheFirst = this.last + 1;
      }
      if (old !== '') this.removeSnapshotFile(old);
    }
    if (appended.length > 0) this.cacheAppend(appended);
    this.last = last;
  }

  /** stageChunk: writes one chunk to the staging file if it continues the staged bytes. */
  private stageChunk(staged: PendingSnapshot | undefined, chunk: SnapshotChunk): { staged: PendingSnapshot; written: number; reset: boolean } {
    let reset = false;
    const stagingPath = path.join(this.snapshotDir, STAGING_FILE);
    if (staged === undefined || !sameSnapshot(staged.metadata, chunk.metadata)) {
      staged = { metadata: structuredClone(chunk.metadata), bytesReceived: 0 };
      if (this.stagingFd === undefined) this.stagingFd = fs.openSync(stagingPath, 'w+');
      fs.ftruncateSync(this.stagingFd, 0);
      reset = true;
      this.stagingResets += 1;
    }
    if (chunk.offset !== staged.bytesReceived || staged.bytesReceived + chunk.data.length > staged.metadata.sizeBytes) {
      return { staged, written: 0, reset };
    }
    assert(this.stagingFd !== undefined, 'staging file open');
    let at = 0;
    while (at < chunk.data.length) {
      at += fs.writeSync(this.stagingFd, chunk.data, at, chunk.data.length - at, chunk.offset + at);
    }
    staged.bytesReceived += chunk.data.length;
    return { staged, written: chunk.data.length, reset };
  }

  private cacheAppend(entries: Entry[]): void {
    const start = entries[0]!.index;
    if (this.cache.length === 0 || start < this.cacheFirst) {
      this.cache = [];
      this.cacheBytes = 0;
      this.cacheFirst = start;
    } else if (start <= this.cacheFirst + this.cache.length - 1) {
      for (const dropped of this.cache.splice(start - this.cacheFirst)) this.cacheBytes -= entryBytes(dropped);
    }
    assert(this.cacheFirst + this.cache.length === start, 'cache stays contiguous');
    for (const entry of entries) {
      this.cache.push(entry);
      this.cacheBytes += entryBytes(entry);
    }
    this.evictCache();
  }

  private evictCache(): void {
    let drop = 0;
    while (
      this.cache.length - drop > 1 &&
      (this.cache.length - drop > this.limits.cacheEntriesMax || this.cacheBytes > this.limits.cacheBytesMax)
    ) {
      this.cacheBytes -= entryBytes(this.cache[drop]!);
      drop++;
    }
    if (drop > 0) {
      this.cache = this.cache.slice(drop);
      this.cacheFirst += drop;
    }
  }

  /** trimCacheFront: drops cached entries below `index`. */
  private trimCacheFront(index: number): void {
    if (index <= this.cacheFirst) return;
    const drop = Math.min(this.cache.length, index - this.cacheFirst);
    for (let i = 0; i < drop; i++) this.cacheBytes -= entryBytes(this.cache[i]!);
    this.cache = this.cache.slice(drop);
    this.cacheFirst = index;
    if (this.cache.length === 0) this.cacheFirst = Math.max(index, this.last + 1);
  }

  /** setConfState: records a configuration for initialState() (standalone use; MemoryStorage.confState). */
  setConfState(confState: ConfState): void {
    this.statements.setConf.run(JSON.stringify(confState));
    this.storedConfState = structuredClone(confState);
  }

  /** snapshotTempPath: where the application writes a new snapshot file before recordSnapshotFile(). */
  snapshotTempPath(index: number): string {
    return path.join(this.snapshotDir, `snap-${index}.tmp`);
  }

  /**
   * recordSnapshotFile: adopts the complete file at `tempPath` (written by the application at its
   * applied `index`) as the latest snapshot: fsync it, rename it into place, fsync the directory,
   * then record the metadata (one transaction). The previous snapshot file is deleted afterwards.
   */
  recordSnapshotFile(index: number, confState: ConfState, tempPath: string, logTerm?: number): SnapshotMetadata {
    assert(index > this.snap.metadata.index, 'new snapshot is newer');
    // logTerm: the term of entry `index` in a log kept elsewhere (the block store's WAL), which checked the index.
    if (logTerm === undefined) assert(index <= this.last && index >= this.offsetIndex, 'snapshot index within the log');
    const term = logTerm ?? this.term(index);
    const fd = fs.openSync(tempPath, 'r+');
    let sizeBytes: number;
    try {
      fs.fsyncSync(fd);
      sizeBytes = fs.fstatSync(fd).size;
    } finally {
      fs.closeSync(fd);
    }
    const file = `snap-${index}-${term}.db`;
    fs.renameSync(tempPath, path.join(this.snapshotDir, file));
    fsyncDirectory(this.snapshotDir);
    const metadata: SnapshotMetadata = { index, term, confState: structuredClone(confState), sizeBytes };
    this.statements.setSnapshot.run(index, term, JSON.stringify(confState), sizeBytes, file);
    this.persistStats.transactions += 1;
    const old = this.snap.file;
    this.closeSnapshotFd();
    this.snap = { metadata, file };
    if (old !== '' && old !== file) this.removeSnapshotFile(old);
    return metadata;
  }

  /** createSnapshot: MemoryStorage-compatible form: writes `data` as the snapshot at `index`. */
  createSnapshot(index: number, confState: ConfState, data: Uint8Array): SnapshotMetadata {
    if (index <= this.snap.metadata.index) return this.snap.metadata;
    const tempPath = this.snapshotTempPath(index);
    fs.writeFileSync(tempPath, data);
    return this.recordSnapshotFile(index, confState, tempPath);
  }

  /**
   * hasLogRows: log.db holds raft entries or a hard state — a store written before the block
   * store kept its log in the WAL, or a migration that a crash interrupted before dropLog().
   */
  hasLogRows(): boolean {
    return this.hardStored || this.last > this.offsetIndex;
  }

  /**
   * dropLog: the last step of the migration to the WAL: deletes every entry and the hard state
   * (one fsynced transaction). The offset is set to the latest snapshot, so that log.db alone
   * still describes a consistent (empty) log; the snapshot, staging and conf state stay.
   */
  dropLog(): void {
    const index = this.snap.metadata.index;
    const term = this.snap.metadata.term;
    this.db.transaction(() => {
      this.statements.deleteAll.run();
      this.db.prepare('DELETE FROM hard_state').run();
      this.statements.setOffset.run(index, term);
    })();
    this.persistStats.transactions += 1;
    this.hard = { ...emptyHardState };
    this.hardStored = false;
    this.offsetIndex = index;
    this.offsetTerm = term;
    this.last = index;
    this.cache = [];
    this.cacheBytes = 0;
    this.cacheFirst = index + 1;
  }

  /** compact: drops entries up to `compactIndex` (kept as the log's offset); only behind a durable snapshot. */
  compact(compactIndex: number): void {
    if (compactIndex <= this.offsetIndex) return;
    assert(compactIndex <= this.snap.metadata.index, 'compaction only behind a durable snapshot');
    assert(compactIndex <= this.last, 'compact within the log');
    const term = this.term(compactIndex);
    this.db.transaction(() => {
      this.statements.deleteUpTo.run(compactIndex);
      this.statements.setOffset.run(compactIndex, term);
    })();
    this.persistStats.transactions += 1;
    this.offsetIndex = compactIndex;
    this.offsetTerm = term;
    this.trimCacheFront(compactIndex + 1);
  }

  private closeSnapshotFd(): void {
    if (this.snapFd !== undefined) fs.closeSync(this.snapFd);
    this.snapFd = undefined;
  }

  /**
   * removeSnapshotFile: deletes a superseded snapshot file without blocking the event loop.
   * Unlinking a few hundred MiB frees its extents (with online discard) and was measured at
   * 220-340 ms for 271 MiB — a stall close to the election timeout. So the file is renamed to
   * `<file>.deleted` here (cheap: no blocks are freed while the target name is new) and unlinked
   * on the libuv thread pool. Its fd is already closed (closeSnapshotFd), so nothing else holds
   * it. A failed or crash-interrupted unlink leaves an unrecorded file, which the orphan sweep in
   * open() deletes; the recorded snapshot never has that name, so it is never touched.
   */
  private removeSnapshotFile(file: string): void {
    const trash = path.join(this.snapshotDir, `${file}.deleted`);
    try {
      fs.renameSync(path.join(this.snapshotDir, file), trash);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    void fs.promises.unlink(trash).catch(() => undefined);
  }

  /** cachedEntryCount: entries currently served from memory (for tests and metrics). */
  cachedEntryCount(): number {
    return this.cache.length;
  }

  close(): void {
    this.closeSnapshotFd();
    if (this.stagingFd !== undefined) fs.closeSync(this.stagingFd);
    this.stagingFd = undefined;
    if (this.db.open) this.db.close();
  }
}
