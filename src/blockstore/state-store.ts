/**
 * state-store: BlockStateMachine, the replicated block state of one node in `<dir>/state.db`:
 * volumes, sparse 4 KiB blocks with a CRC-32 each, the client session table, cluster member
 * addresses, the applied index and the configuration as of that index.
 *
 * Determinism: every replica feeds the same committed entries in the same order, and apply() is a
 * pure function of (state, entry): no clock, no randomness, no dependence on physical layout. A
 * command that is wrong (unknown volume, range beyond the end, duplicate name, bad size, a
 * malformed encoding) is a deterministic per-entry result that changes nothing, never an exception.
 *
 * Durability: state.db uses WAL with synchronous=NORMAL. A crash may lose its latest applied
 * batches; that is safe because the raft log (log.db, fsynced) is the source of truth: the node
 * restarts raft with `applied` = this store's applied index and re-applies the entries after it.
 * The applied index is written in the same transaction as the effects of the entries it covers.
 *
 * Integrity: every block row carries zlib.crc32(data), verified on EVERY read (including the
 * read-modify-write of a partial write); a mismatch raises CorruptError and the bytes are never
 * served. An all-zero block is never stored (it is a hole), so the logical state has one form.
 */

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import Database from 'better-sqlite3';
import { assert } from '../assert.js';
import { CorruptError, ErrorCode, InternalError, UsageError } from '../errors.js';
import type { ApplyOutcome, MemberAddresses } from './replica-store.js';
import { decodeConfChange } from '../raft/confchange.js';
import { Checkpointer } from './checkpointer.js';
import { type SessionRecord, SessionTable, type SessionTableLimits, SessionVerdict, defaultSessionLimits } from './sessions.js';
import { type ConfChange, type ConfState, type Entry, EntryType, type NodeId, emptyConfState } from '../raft/types.js';
import { type Command, decodeCommand } from '../volume/command.js';
import { ChunkRuns, type Extent, ExtentRuns, type ReadChunk, blockPieces } from '../volume/ranges.js';
import { blockBytes, rangeProblem, reapBlocksPerEntry, requestLimits, volumeNameProblem, volumeSizeProblem } from '../volume/rules.js';

export { blockBytes };

export interface StateStoreLimits {
  /** volumesMax: volumes a cluster may hold (createVolume beyond it fails with FAILED_PRECONDITION). */
  volumesMax: number;
  /** readBytesMax: largest read() (the NBD layer's blockSizeMax). */
  readBytesMax: number;
  /** blockStatusBlocksMax: allocated blocks one blockStatus() looks at; the answer is a prefix beyond it. */
  blockStatusBlocksMax: number;
  /** sessions: the session table's limits. MUST be equal on every replica (eviction is replicated). */
  sessions: SessionTableLimits;
  /**
   * commitDelayMs / commitEntriesMax / commitRowsMax: with a timer (StateTimer), the applies of
   * several Readys share one SQLite transaction, committed `commitDelayMs` after it began or once
   * it holds `commitEntriesMax` entries or `commitRowsMax` stored block rows (1,024 rows: 4 MiB, within the 8 MiB page cache, so the open transaction does not spill pages it writes again), whichever comes
   * first (see apply()). Without a timer every apply() commits.
   */
  commitDelayMs: number;
  commitEntriesMax: number;
  commitRowsMax: number;
  /**
   * checkpointWalBytes / checkpointIdleMs / checkpointPollMs: with a timer, SQLite's automatic
   * checkpoint (inside a COMMIT, on the event loop) is off and a worker thread checkpoints the WAL
   * once it holds `checkpointWalBytes` not yet copied into state.db, or once it has not grown for
   * `checkpointIdleMs`; it looks every `checkpointPollMs` (checkpointer.ts: why by size).
   */
  checkpointWalBytes: number;
  checkpointIdleMs: number;
  checkpointPollMs: number;
}

/** StateTimer: how the state machine delays a commit (node: its Scheduler; tests: none, so every apply commits). */
export interface StateTimer {
  after(ms: number, fn: () => void): { cancel(): void };
}

export const defaultStateStoreLimits: StateStoreLimits = {
  volumesMax: 1024,
  readBytesMax: requestLimits.requestBytesMax,
  blockStatusBlocksMax: 65_536,
  sessions: defaultSessionLimits,
  commitDelayMs: 50,
  commitEntriesMax: 4096,
  commitRowsMax: 1024,
  checkpointWalBytes: 64 * 1024 * 1024,
  checkpointIdleMs: 1000,
  checkpointPollMs: 100,
};

export interface VolumeRecord {
  name: string;
  sizeBytes: number;
  /** createdIndex: the log index of the createVolume entry (also the volume's internal id). */
  createdIndex: number;
}

/** ApplyCounts: block rows one apply() transaction stored (inserted or replaced) and deleted. */
export interface ApplyCounts {
  blocksStored: number;
  blocksDeleted: number;
}

/**
 * STATE_FORMAT: 2 added `blocks.seg` / `blocks.off` (a block kept as a pointer into the log). A
 * format-1 file is upgraded on open (two ALTER TABLEs; its rows all hold their data). An older
 * binary refuses a format-2 file by its format number instead of misreading a pointer row.
 */
const STATE_FORMAT = 2;

/**
 * BlockLocator: the node's raft log as the home of block data (BlockStore passes its WAL). A block
 * that is a whole, aligned 4 KiB piece of an applied write is stored as a pointer (segment, file
 * offset) to its bytes inside the entry's durable log record instead of a copy: written once,
 * not three times (docs/blockstore.md, "Blocks in the log"). Before the log drops a segment,
 * BlockStore.compactLog moves the blocks still pointing into it into their rows (relocate()).
 */
export interface BlockLocator {
  /** locate: the segment and file offset of entry `index`'s data, if it is in the log and durable there. */
  locate(index: number): { segment: number; dataOffset: number; length: number } | undefined;
  /** read: `length` bytes of segment `segment` at file offset `offset`; CorruptError if they are gone. */
  read(segment: number, offset: number, length: number): Buffer;
}

/** BlockRef: where a pointer row's bytes are (segment sequence, file offset). */
interface BlockRef {
  segment: number;
  offset: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  format INTEGER NOT NULL,
  applied_index INTEGER NOT NULL,
  conf_state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS volumes (
  name TEXT PRIMARY KEY,
  size_bytes INTEGER NOT NULL,
  created_index INTEGER NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS blocks (
  volume_id INTEGER NOT NULL,
  block INTEGER NOT NULL,
  data BLOB NOT NULL,
  crc INTEGER NOT NULL,
  seg INTEGER,
  off INTEGER,
  PRIMARY KEY (volume_id, block)
);
CREATE TABLE IF NOT EXISTS sessions (
  session_id TEXT PRIMARY KEY,
  last_index INTEGER NOT NULL,
  record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS evicted_sessions (
  session_id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS retired_sessions (
  seq INTEGER PRIMARY KEY,
  session_id TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS reap_ranges (
  volume_id INTEGER PRIMARY KEY,
  from_block INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
  node_id INTEGER PRIMARY KEY,
  addresses TEXT NOT NULL
);
`;

const zeroBlock = new Uint8Array(blockBytes);
const emptyBytes = new Uint8Array(0);

function isZero(data: Uint8Array): boolean {
  return Buffer.compare(data, zeroBlock) === 0;
}

function crc32(data: Uint8Array): number {
  return zlib.crc32(data);
}

/** encodeOutcome / decodeOutcome: an ApplyOutcome as the bytes a session remembers. */
export function encodeOutcome(outcome: ApplyOutcome): Uint8Array {
  if (outcome.ok) {
    assert(outcome.value.length === 0, 'block commands answer with an empty value');
    return emptyBytes;
  }
  return Buffer.from(JSON.stringify({ code: outcome.code, message: outcome.message }), 'utf8');
}
export function decodeOutcome(bytes: Uint8Array): ApplyOutcome {
  if (bytes.length === 0) return { ok: true, value: emptyBytes };
  const parsed = JSON.parse(Buffer.from(bytes).toString('utf8')) as { code: ErrorCode; message: string };
  return { ok: false, code: parsed.code, message: parsed.message };
}

const ok: ApplyOutcome = Object.freeze({ ok: true, value: emptyBytes }) as ApplyOutcome;
function fail(code: ErrorCode, message: string): ApplyOutcome {
  return { ok: false, code, message };
}

/** StoredBlock: a block row; `seg` / `off` not null: a pointer row, its bytes are in the log (data is empty). */
interface StoredBlock {
  data: Buffer;
  crc: number;
  seg: number | null;
  off: number | null;
}

interface BlockRow extends StoredBlock {
  block: number;
}

interface SerializedSession {
  ackedBelow: number;
  lastSequence: number;
  lastResult: string;
  lastIndex: number;
  results: Array<[number, string]>;
}

function serializeSession(r: SessionRecord): string {
  const value: SerializedSession = {
    ackedBelow: r.ackedBelow,
    lastSequence: r.lastSequence,
    lastResult: Buffer.from(r.lastResult).toString('base64'),
    lastIndex: r.lastIndex,
    results: r.results.map((x) => [x.sequence, Buffer.from(x.result).toString('base64')]),
  };
  return JSON.stringify(value);
}

function deserializeSession(sessionId: string, text: string): SessionRecord {
  const v = JSON.parse(text) as SerializedSession;
  return {
    sessionId,
    ackedBelow: v.ackedBelow,
    lastSequence: v.lastSequence,
    lastResult: new Uint8Array(Buffer.from(v.lastResult, 'base64')),
    lastIndex: v.lastIndex,
    results: v.results.map(([sequence, result]) => ({ sequence, result: new Uint8Array(Buffer.from(result, 'base64')) })),
  };
}

/**
 * statePageBytes: the page size of a NEW state.db (an existing file keeps its own). 512: most block
 * rows are pointers into the log (~30 bytes), and a commit writes every page it changed into the
 * WAL — with 4096-byte pages a random 4 KiB write rewrote a 4 KiB leaf for a 30-byte row, ~1x the
 * payload again; with 512 it is ~0.13x (measured, docs/blockstore.md). A block kept in its row
 * (a partial write, a relocated or received block) spans a leaf cell and 8 overflow pages.
 */
export const statePageBytes = 512;

function openDatabase(file: string): Database.Database {
  const db = new Database(file);
  db.pragma(`page_size = ${statePageBytes}`); // only takes effect on a file without pages
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('cache_size = -8192'); // page cache 8 MiB (better-sqlite3's build default is 16 MiB, full and resident after any large workload); interior pages of a 1 GiB volume fit
  db.exec(SCHEMA);
  // A format-1 file: the pointer columns (load() then records format 2).
  const columns = new Set((db.pragma('table_info(blocks)') as Array<{ name: string }>).map((c) => c.name));
  if (!columns.has('seg')) db.exec('ALTER TABLE blocks ADD COLUMN seg INTEGER; ALTER TABLE blocks ADD COLUMN off INTEGER;');
  return db;
}

function prepare(db: Database.Database) {
  return {
    meta: db.prepare<[], { format: number; applied_index: number; conf_state: string }>('SELECT format, applied_index, conf_state FROM meta WHERE id = 1'),
    setMeta: db.prepare('INSERT OR REPLACE INTO meta (id, format, applied_index, conf_state) VALUES (1, ?, ?, ?)'),
    volume: db.prepare<[string], { name: string; size_bytes: number; created_index: number }>('SELECT name, size_bytes, created_index FROM volumes WHERE name = ?'),
    volumes: db.prepare<[], { name: string; size_bytes: number; created_index: number }>('SELECT name, size_bytes, created_index FROM volumes ORDER BY name'),
    volumeCount: db.prepare<[], { c: number }>('SELECT COUNT(*) AS c FROM volumes'),
    insertVolume: db.prepare('INSERT INTO volumes (name, size_bytes, created_index) VALUES (?, ?, ?)'),
    resizeVolume: db.prepare('UPDATE volumes SET size_bytes = ? WHERE name = ?'),
    deleteVolume: db.prepare('DELETE FROM volumes WHERE name = ?'),
    block: db.prepare<[number, number], StoredBlock>('SELECT data, crc, seg, off FROM blocks WHERE volume_id = ? AND block = ?'),
    blockRange: db.prepare<[number, number, number], BlockRow>(
      'SELECT block, data, crc, seg, off FROM blocks WHERE volume_id = ? AND block >= ? AND block <= ? ORDER BY block',
    ),
    allocatedRange: db.prepare<[number, number, number, number], { block: number }>(
      'SELECT block FROM blocks WHERE volume_id = ? AND block >= ? AND block <= ? ORDER BY block LIMIT ?',
    ),
    // An upsert, not INSERT OR REPLACE: an overwrite keeps the row's rowid, so the primary-key
    // index is not written again (REPLACE deletes the row and inserts it under a new rowid).
    putBlock: db.prepare(
      'INSERT INTO blocks (volume_id, block, data, crc, seg, off) VALUES (?, ?, ?, ?, NULL, NULL) ON CONFLICT (volume_id, block) DO UPDATE SET data = excluded.data, crc = excluded.crc, seg = NULL, off = NULL',
    ),
    putRef: db.prepare(
      "INSERT INTO blocks (volume_id, block, data, crc, seg, off) VALUES (?, ?, X'', ?, ?, ?) ON CONFLICT (volume_id, block) DO UPDATE SET data = X'', crc = excluded.crc, seg = excluded.seg, off = excluded.off",
    ),
    deleteBlock: db.prepare('DELETE FROM blocks WHERE volume_id = ? AND block = ?'),
    deleteBlocks: db.prepare('DELETE FROM blocks WHERE volume_id = ? AND block >= ? AND block <= ?'),
    deleteBlocksFrom: db.prepare('DELETE FROM blocks WHERE volume_id = ? AND block >= ?'),
    // reap_ranges: block rows no volume can read any more (a deleted volume's, a shrunk one's tail),
    // deleted at most reapBlocksPerEntry per applied entry (see reap()).
    reapRange: db.prepare<[number], { from_block: number }>('SELECT from_block FROM reap_ranges WHERE volume_id = ?'),
    firstReapRange: db.prepare<[], { volume_id: number; from_block: number }>('SELECT volume_id, from_block FROM reap_ranges ORDER BY volume_id LIMIT 1'),
    putReapRange: db.prepare('INSERT OR REPLACE INTO reap_ranges (volume_id, from_block) VALUES (?, ?)'),
    deleteReapRange: db.prepare('DELETE FROM reap_ranges WHERE volume_id = ?'),
    reapBlocks: db.prepare(
      'DELETE FROM blocks WHERE rowid IN (SELECT rowid FROM blocks WHERE volume_id = ? AND block >= ? ORDER BY block LIMIT ?)',
    ),
    hashBlocks: db.prepare<[], BlockRow & { name: string }>(
      'SELECT v.name AS name, b.block AS block, b.data AS data, b.crc AS crc, b.seg AS seg, b.off AS off FROM blocks b JOIN volumes v ON v.created_index = b.volume_id ORDER BY v.name, b.block',
    ),
    refCount: db.prepare<[], { c: number }>('SELECT COUNT(*) AS c FROM blocks WHERE seg IS NOT NULL'),
    orphanBlocks: db.prepare<[], { c: number }>(
      'SELECT COUNT(*) AS c FROM blocks WHERE volume_id NOT IN (SELECT created_index FROM volumes) AND volume_id NOT IN (SELECT volume_id FROM reap_ranges)',
    ),
    sessions: db.prepare<[], { session_id: string; record: string }>('SELECT session_id, record FROM sessions ORDER BY last_index'),
    putSession: db.prepare('INSERT OR REPLACE INTO sessions (session_id, last_index, record) VALUES (?, ?, ?)'),
    deleteSession: db.prepare('DELETE FROM sessions WHERE session_id = ?'),
    // retired_sessions: closed or evicted ids, oldest first (an INTEGER PRIMARY KEY survives VACUUM).
    evicted: db.prepare<[], { session_id: string }>('SELECT session_id FROM retired_sessions ORDER BY seq'),
    putEvicted: db.prepare('INSERT OR IGNORE INTO retired_sessions (session_id) VALUES (?)'),
    deleteEvicted: db.prepare('DELETE FROM retired_sessions WHERE session_id = ?'),
    legacyEvicted: db.prepare<[], { session_id: string }>('SELECT session_id FROM evicted_sessions ORDER BY session_id'),
    dropLegacyEvicted: db.prepare('DELETE FROM evicted_sessions'),
    members: db.prepare<[], { node_id: number; addresses: string }>('SELECT node_id, addresses FROM members ORDER BY node_id'),
    putMember: db.prepare('INSERT OR REPLACE INTO members (node_id, addresses) VALUES (?, ?)'),
    deleteMember: db.prepare('DELETE FROM members WHERE node_id = ?'),
  };
}

/**
 * BlockStateMachine: the block state of one replica. Writes happen only through apply() (and
 * setMember / bootstrapConfState / restoreFrom, which the node calls at defined points).
 */
export class BlockStateMachine {
  readonly file: string;
  readonly limits: StateStoreLimits;
  private db: Database.Database;
  private s: ReturnType<typeof prepare>;
  /**
   * applyTransaction: applyBatch wrapped once per connection (better-sqlite3 builds four wrapper
   * functions per transaction() call: made per apply, that was a seventh of a one-block apply).
   */
  private applyTransaction: (entries: Entry[], outcomes: Map<number, ApplyOutcome>, touched: Set<string>, onConfChange: (cc: ConfChange, index: number) => ConfState) => ConfState;
  private applied = 0;
  private conf: ConfState = emptyConfState();
  private sessionTable: SessionTable;
  private memberMap = new Map<NodeId, MemberAddresses>();
  /** inApply: true while apply() runs its transaction (setMember joins it). */
  private inApply = false;
  /** counts: the block rows the current (or last) apply() stored and deleted. */
  private counts: ApplyCounts = { blocksStored: 0, blocksDeleted: 0 };
  /**
   * volumes: the volume rows read so far, by name (every read and write looks its volume up; at most
   * volumesMax entries, only names that exist). Cleared whenever a volume row changes or the state
   * is reloaded (a rolled-back batch, a restore).
   */
  private readonly volumeCache = new Map<string, VolumeRecord>();
  /** reapPending: reap_ranges has a row (kept in memory: every apply checks it). */
  private reapPending = false;
  /** timer: delays commits (StateTimer); undefined: every apply() commits. */
  private readonly timer: StateTimer | undefined;
  /** shared: the transaction that applies share until commit() (undefined: none open). */
  private shared: { entries: number; rows: number; timer: { cancel(): void } } | undefined;
  /** commitFailure: a delayed COMMIT failed; memory is ahead of the file, so nothing is applied or served again. */
  private commitFailure: Error | undefined;
  /** checkpointer: checkpoints the WAL off the event loop (with a timer only; see checkpointer.ts). */
  readonly checkpointer: Checkpointer | undefined;
  /** locator: the log that holds pointer rows' bytes (setLocator); undefined: every block is stored in its row. */
  private locator: BlockLocator | undefined;
  /** refStats: blocks stored as pointers into the log, and pointer rows moved into their rows (relocate). */
  readonly refStats = { refsStored: 0, relocated: 0 };

  private constructor(file: string, limits: StateStoreLimits, timer: StateTimer | undefined) {
    this.file = file;
    this.limits = limits;
    this.timer = timer;
    this.db = openDatabase(file);
    this.s = prepare(this.db);
    this.applyTransaction = this.db.transaction(this.applyBatch);
    if (timer !== undefined) {
      const checkpointLimits = { walBytes: limits.checkpointWalBytes, idleMs: limits.checkpointIdleMs, pollMs: limits.checkpointPollMs };
      this.checkpointer = new Checkpointer(file, checkpointLimits, () => {
        if (this.db.open) this.db.pragma('wal_autocheckpoint = 1000'); // the worker died: checkpoint in commits again
      });
      this.startCheckpointer();
    }
    this.sessionTable = new SessionTable(limits.sessions);
    this.load();
  }

  /** open: opens (creating if needed) the state database at `file`. */
  static open(file: string, limits: Partial<StateStoreLimits> = {}, options: { timer?: StateTimer } = {}): BlockStateMachine {
    return new BlockStateMachine(file, { ...defaultStateStoreLimits, ...limits }, options.timer);
  }

  /**
   * commit: ends the transaction the latest applies share (a no-op when none is open). Called by
   * its timer, when it is full, and before anything reads state.db through another connection
   * (a snapshot copy) or replaces or closes it.
   */
  commit(): void {
    const shared = this.shared;
    if (shared === undefined) return;
    this.shared = undefined;
    shared.timer.cancel();
    if (!this.db.open || !this.db.inTransaction) return;
    try {
      this.db.exec('COMMIT');
    } catch (error) {
      this.commitFailure = new InternalError(ErrorCode.Internal, `state.db: commit of ${shared.entries} applied entries failed: ${String(error)}`, { cause: error });
      throw this.commitFailure;
    }
  }

  /** startCheckpointer: the connection stops checkpointing in its commits; the worker does it. */
  private startCheckpointer(): void {
    if (this.checkpointer === undefined) return;
    this.db.pragma('wal_autocheckpoint = 0');
    // A reset WAL is cut back to this size (it grows to about checkpointWalBytes between checkpoints).
    this.db.pragma(`journal_size_limit = ${Math.max(64 * 1024 * 1024, this.limits.checkpointWalBytes)}`);
    this.checkpointer.start();
  }

  /** uncommitted: entries applied into the open transaction (0 when every apply is committed). */
  uncommitted(): number {
    return this.shared?.entries ?? 0;
  }

  /** checkCommitted: throws the kept failure of a delayed COMMIT (memory ahead of the file), if any. */
  checkCommitted(): void {
    if (this.commitFailure !== undefined) throw this.commitFailure;
  }

  private load(): void {
    this.volumeCache.clear();
    const meta = this.s.meta.get();
    if (meta === undefined) {
      this.s.setMeta.run(STATE_FORMAT, 0, JSON.stringify(emptyConfState()));
      this.applied = 0;
      this.conf = emptyConfState();
    } else {
      if (meta.format === 1) this.s.setMeta.run(STATE_FORMAT, meta.applied_index, meta.conf_state); // openDatabase added the columns
      else if (meta.format !== STATE_FORMAT) throw new CorruptError(`state.db format ${meta.format}, expected ${STATE_FORMAT}`);
      this.applied = meta.applied_index;
      this.conf = JSON.parse(meta.conf_state) as ConfState;
    }
    this.migrateEvicted();
    this.sessionTable = new SessionTable(this.limits.sessions);
    this.sessionTable.restore(
      this.s.sessions.all().map((row) => deserializeSession(row.session_id, row.record)),
      this.s.evicted.all().map((row) => row.session_id),
    );
    this.memberMap = new Map(this.s.members.all().map((row) => [row.node_id, JSON.parse(row.addresses) as MemberAddresses]));
    this.reapPending = this.s.firstReapRange.get() !== undefined;
  }

  /**
   * migrateEvicted: format-1 files kept evicted ids unordered in evicted_sessions; they move to
   * retired_sessions in id order (the same on every replica; stateHash sorts them anyway).
   */
  private migrateEvicted(): void {
    const legacy = this.s.legacyEvicted.all();
    if (legacy.length === 0) return;
    this.db.transaction(() => {
      for (const row of legacy) this.s.putEvicted.run(row.session_id);
      this.s.dropLegacyEvicted.run();
    })();
  }

  appliedIndex(): number {
    return this.applied;
  }

  /**
   * setLocator: the log whose durable records hold pointer rows' bytes. With one, apply() stores a
   * whole aligned block of a write as a pointer into the entry's record; without one (tests,
   * tools) every block is a copy in its row, and a pointer row met on read is CorruptError.
   */
  setLocator(locator: BlockLocator | undefined): void {
    this.locator = locator;
  }

  /** pointerRows: how many block rows point into the log now (status, tests). */
  pointerRows(): number {
    return this.s.refCount.get()!.c;
  }

  confState(): ConfState {
    return structuredClone(this.conf);
  }

  /** sessions: the replicated session table (read-only use: tests, status). */
  sessions(): SessionTable {
    return this.sessionTable;
  }

  /**
   * bootstrapConfState: records the configuration of a brand-new cluster before anything is
   * applied (as MemoryStorage.bootstrap does); re-applying the bootstrap entry leaves it unchanged.
   */
  bootstrapConfState(confState: ConfState): void {
    assert(this.applied === 0, 'bootstrap only a fresh state');
    this.s.setMeta.run(STATE_FORMAT, 0, JSON.stringify(confState));
    this.conf = structuredClone(confState);
  }

  // ------------------------------------------------------------------ members

  members(): Map<NodeId, MemberAddresses> {
    return new Map(this.memberMap);
  }

  /** setMember: records (or with `undefined` removes) a member's addresses; inside apply() it joins the batch's transaction. */
  setMember(id: NodeId, addresses: MemberAddresses | undefined): void {
    assert(Number.isInteger(id) && id > 0, 'member id is a positive integer');
    if (addresses === undefined) {
      this.s.deleteMember.run(id);
      this.memberMap.delete(id);
    } else {
      this.s.putMember.run(id, JSON.stringify({ raft: addresses.raft, admin: addresses.admin, nbd: addresses.nbd }));
      this.memberMap.set(id, { raft: addresses.raft, admin: addresses.admin, nbd: addresses.nbd });
    }
  }

  // ------------------------------------------------------------------ apply

  /**
   * apply: applies committed entries (contiguous, starting at appliedIndex()+1) in ONE transaction
   * that also records the new applied index, and returns each entry's outcome. ConfChange entries
   * call `onConfChange` (which calls RawNode.applyConfChange) and the returned configuration is
   * stored with the applied index. An exception (a bug, or CorruptError from a rotten block that a
   * partial write needs) rolls the whole batch back and leaves the state as it was.
   */
  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome> {
    const outcomes = new Map<number, ApplyOutcome>();
    this.checkCommitted();
    if (entries.length === 0) return outcomes;
    assert(entries[0]!.index === this.applied + 1, `apply continues at ${this.applied + 1}, got ${entries[0]!.index}`);
    if (this.timer !== undefined && this.shared === undefined) {
      // One transaction for the applies of the next commitDelayMs (each apply a savepoint in it,
      // rolled back alone if it throws): the meta, session and interior pages are written once per
      // commit instead of once per Ready. A crash loses at most the open transaction, which raft
      // re-applies from the log (the applied index is committed with the effects it covers).
      this.db.exec('BEGIN');
      this.shared = { entries: 0, rows: 0, timer: this.timer.after(this.limits.commitDelayMs, () => this.commitFromTimer()) };
    }
    const touchedSessions = new Set<string>();
    this.counts = { blocksStored: 0, blocksDeleted: 0 };
    let conf: ConfState;
    this.inApply = true;
    try {
      conf = this.applyTransaction(entries, outcomes, touchedSessions, onConfChange);
    } catch (error) {
      // Memory follows the rolled-back transaction: reload what the batch may have changed.
      this.load();
      throw error;
    } finally {
      this.inApply = false;
    }
    this.applied = entries[entries.length - 1]!.index;
    if (conf !== this.conf) this.conf = structuredClone(conf); // changed only by a ConfChange entry
    if (this.shared !== undefined) {
      this.shared.entries += entries.length;
      this.shared.rows += this.counts.blocksStored + this.counts.blocksDeleted;
      if (this.shared.entries >= this.limits.commitEntriesMax || this.shared.rows >= this.limits.commitRowsMax) this.commit();
    }
    return outcomes;
  }

  /** applyBatch: the body of apply()'s transaction (see applyTransaction); returns the configuration after it. */
  private readonly applyBatch = (entries: Entry[], outcomes: Map<number, ApplyOutcome>, touchedSessions: Set<string>, onConfChange: (cc: ConfChange, index: number) => ConfState): ConfState => {
    let conf = this.conf;
    for (let i = 0; i < entries.length; i++) {
      const entry = entries[i]!;
      assert(entry.index === this.applied + 1 + i, 'committed entries are contiguous');
      if (entry.type === EntryType.ConfChange) {
        conf = onConfChange(decodeConfChange(entry.data), entry.index);
        outcomes.set(entry.index, ok);
      } else {
        try {
          outcomes.set(entry.index, this.applyNormal(entry, touchedSessions));
        } catch (error) {
          if (error instanceof CorruptError) Object.assign(error, { index: entry.index }); // BlockStore's corruption marker names the entry
          throw error;
        }
      }
      // An empty entry (a leader's no-op; the node proposes them while rows wait: reapDriver in
      // node.ts) reaps at most reapBlocksPerEntry rows: the same rows on every replica, so the
      // state stays equal at each index, and a cost the replica's apply budget can see
      // (volume/command.ts applyRows) — never hidden inside a write's apply.
      if (this.reapPending && entry.type === EntryType.Normal && entry.data.length === 0) this.reap(reapBlocksPerEntry);
    }
    const last = entries[entries.length - 1]!.index;
    this.s.setMeta.run(STATE_FORMAT, last, JSON.stringify(conf));
    this.persistSessions(touchedSessions);
    return conf;
  };

  /** commitFromTimer: a failure is kept (commitFailure) and surfaces at the next apply or read, never as an uncaught exception. */
  private commitFromTimer(): void {
    try {
      this.commit();
    } catch {
      // kept in commitFailure
    }
  }

  /**
   * lastApplyCounts: the block rows the last apply() stored and deleted — the work of one apply
   * transaction, which the volume layer bounds for zeroing (requestLimits.zeroPieceBytes).
   */
  lastApplyCounts(): ApplyCounts {
    return { ...this.counts };
  }

  /** persistSessions: the rows of the sessions this batch touched and the retired-id changes (never the whole table). */
  private persistSessions(touched: Set<string>): void {
    const table = this.sessionTable;
    for (const id of touched) {
      const record = table.get(id);
      if (record === undefined) this.s.deleteSession.run(id);
      else this.s.putSession.run(id, record.lastIndex, serializeSession(record));
    }
    const changes = table.takeChanges();
    for (const id of changes.retired) {
      this.s.deleteSession.run(id);
      this.s.putEvicted.run(id);
    }
    for (const id of changes.forgotten) this.s.deleteEvicted.run(id);
  }

  private applyNormal(entry: Entry, touchedSessions: Set<string>): ApplyOutcome {
    let command: Command;
    try {
      command = decodeCommand(entry.data);
    } catch (error) {
      if (error instanceof UsageError) return fail(error.code, error.message);
      throw error;
    }
    const session = command.session;
    if (session === undefined) return this.execute(command, entry);
    if (command.kind === 'closeSession') {
      this.sessionTable.close(session.id);
      touchedSessions.add(session.id);
      return ok;
    }
    const verdict = this.sessionTable.check(session.id, session.sequence, session.ackedBelow);
    switch (verdict) {
      case SessionVerdict.Duplicate:
        return decodeOutcome(this.sessionTable.result(session.id, session.sequence)!);
      case SessionVerdict.Stale:
        return fail(ErrorCode.FailedPrecondition, `session ${session.id}: sequence ${session.sequence} is stale (already answered)`);
      case SessionVerdict.Expired:
        return fail(ErrorCode.SessionExpired, `session ${session.id} expired; open a new session`);
      case SessionVerdict.Apply: {
        const outcome = this.execute(command, entry);
        this.sessionTable.record(session.id, session.sequence, entry.index, encodeOutcome(outcome), session.ackedBelow);
        touchedSessions.add(session.id);
        return outcome;
      }
    }
  }

  /** checkVolumeSize: the volume size rule of src/volume/rules.ts, the one the admin checks too. */
  private checkVolumeSize(sizeBytes: number): ApplyOutcome | undefined {
    const problem = volumeSizeProblem(sizeBytes);
    return problem === undefined ? undefined : fail(ErrorCode.InvalidArgument, problem);
  }

  /** targetRange: the volume of a data command, or the deterministic error why the range is wrong. */
  private targetRange(name: string, offset: number, length: number): VolumeRecord | ApplyOutcome {
    const volume = this.volume(name);
    if (volume === undefined) return fail(ErrorCode.NotFound, `no volume named "${name}"`);
    const problem = rangeProblem(offset, length, volume.sizeBytes);
    return problem === undefined ? volume : fail(problem.code, `${name}: ${problem.message}`);
  }

  private execute(command: Command, entry: Entry): ApplyOutcome {
    const index = entry.index;
    switch (command.kind) {
      case 'noop':
      case 'closeSession':
        return ok;
      case 'write': {
        const volume = this.targetRange(command.volume, command.offset, command.data.length);
        if (!('createdIndex' in volume)) return volume;
        this.writeRange(volume.createdIndex, command.offset, command.data, this.dataRef(entry, command.data.length));
        return ok;
      }
      case 'trim':
      case 'writeZeroes': {
        const volume = this.targetRange(command.volume, command.offset, command.length);
        if (!('createdIndex' in volume)) return volume;
        this.zeroRange(volume.createdIndex, command.offset, command.length);
        return ok;
      }
      case 'createVolume': {
        const badName = volumeNameProblem(command.name);
        if (badName !== undefined) return fail(ErrorCode.InvalidArgument, badName);
        const bad = this.checkVolumeSize(command.sizeBytes);
        if (bad !== undefined) return bad;
        if (this.volume(command.name) !== undefined) return fail(ErrorCode.AlreadyExists, `volume "${command.name}" already exists`);
        if (this.s.volumeCount.get()!.c >= this.limits.volumesMax) return fail(ErrorCode.FailedPrecondition, `volumesMax (${this.limits.volumesMax}) reached`);
        this.s.insertVolume.run(command.name, command.sizeBytes, index);
        this.volumeCache.clear();
        return ok;
      }
      case 'resizeVolume': {
        const volume = this.volume(command.name);
        if (volume === undefined) return fail(ErrorCode.NotFound, `no volume named "${command.name}"`);
        const bad = this.checkVolumeSize(command.sizeBytes);
        if (bad !== undefined) return bad;
        if (command.sizeBytes < volume.sizeBytes) {
          // Shrink: the cut-off bytes must read as zeros if the volume grows again. The partial
          // block at the new end is zeroed now; the whole blocks beyond it are reaped, bounded per
          // entry (a shrink from 4 GiB is a million rows: seconds of stall on every replica at once).
          const firstCut = Math.ceil(command.sizeBytes / blockBytes);
          this.zeroRange(volume.createdIndex, command.sizeBytes, Math.min(volume.sizeBytes, firstCut * blockBytes) - command.sizeBytes);
          this.addReapRange(volume.createdIndex, firstCut);
        } else if (command.sizeBytes > volume.sizeBytes) {
          // Grow: rows still waiting to be reaped would reappear; finish that volume's reaping now
          // (only a grow soon after a shrink of a large volume finds any).
          this.finishReap(volume.createdIndex, Math.ceil(command.sizeBytes / blockBytes));
        }
        this.s.resizeVolume.run(command.sizeBytes, command.name);
        this.volumeCache.clear();
        return ok;
      }
      case 'deleteVolume': {
        const volume = this.volume(command.name);
        if (volume === undefined) return fail(ErrorCode.NotFound, `no volume named "${command.name}"`);
        // The rows are reaped, bounded per entry (a full 4 GiB volume is a million rows); no volume
        // can read them meanwhile (a re-created one has another created index).
        this.addReapRange(volume.createdIndex, 0);
        this.s.deleteVolume.run(command.name);
        this.volumeCache.clear();
        return ok;
      }
    }
  }

  /**
   * dataRef: where the data of write `entry` (its last `dataBytes` bytes: the codec puts the data
   * last, commands.ts) lies in the log, or undefined when it is not in a durable record there (no
   * locator, an entry no longer or not yet durable in the log).
   */
  private dataRef(entry: Entry, dataBytes: number): BlockRef | undefined {
    if (this.locator === undefined || dataBytes === 0) return undefined;
    const at = this.locator.locate(entry.index);
    if (at === undefined || at.length !== entry.data.length) return undefined;
    assert(dataBytes <= at.length, 'a write carries its data inside its entry');
    return { segment: at.segment, offset: at.dataOffset + at.length - dataBytes };
  }

  /** blockData: the verified bytes of a stored row — its own, or for a pointer row those in the log. */
  private blockData(row: StoredBlock, block: number, volumeOffset: number): Uint8Array {
    if (row.seg === null) return verified(row.data, row.crc, block, volumeOffset);
    if (this.locator === undefined) throw corruptBlock(`block ${block} points into the log (segment ${row.seg}) but no log is attached; not served`, volumeOffset);
    let data: Buffer;
    try {
      data = this.locator.read(row.seg, row.off!, blockBytes);
    } catch (error) {
      if (error instanceof CorruptError) Object.assign(error, { offset: volumeOffset });
      throw error;
    }
    return verified(data, row.crc, block, volumeOffset);
  }

  /** loadBlock: the verified data of one block, or undefined for a hole. */
  private loadBlock(volumeId: number, block: number, volumeOffset: number): Uint8Array | undefined {
    const row = this.s.block.get(volumeId, block);
    if (row === undefined) return undefined;
    return this.blockData(row, block, volumeOffset);
  }

  /** storeBlock: a zero block is deleted; else stored as a pointer to `ref` (its bytes in the log) or in its row. */
  private storeBlock(volumeId: number, block: number, data: Uint8Array, ref?: BlockRef): void {
    if (isZero(data)) this.counts.blocksDeleted += this.s.deleteBlock.run(volumeId, block).changes;
    else {
      if (ref === undefined) this.s.putBlock.run(volumeId, block, data, crc32(data));
      else {
        this.s.putRef.run(volumeId, block, crc32(data), ref.segment, ref.offset);
        this.refStats.refsStored++;
      }
      this.counts.blocksStored++;
    }
  }

  /**
   * writeRange: read-modify-write of every block [offset, offset+data.length) touches. With `at`
   * (where `data` lies in the log), a whole block becomes a pointer to its bytes there.
   */
  private writeRange(volumeId: number, offset: number, data: Uint8Array, at?: BlockRef): void {
    for (const p of blockPieces(offset, data.length, blockBytes)) {
      let next: Uint8Array;
      if (p.to - p.from === blockBytes) {
        next = data.subarray(p.from - offset, p.to - offset);
        if (at !== undefined) {
          this.storeBlock(volumeId, p.block, next, { segment: at.segment, offset: at.offset + (p.from - offset) });
          continue;
        }
      } else {
        next = new Uint8Array(blockBytes);
        const old = this.loadBlock(volumeId, p.block, p.blockStart);
        if (old !== undefined) next.set(old);
        next.set(data.subarray(p.from - offset, p.to - offset), p.from - p.blockStart);
      }
      this.storeBlock(volumeId, p.block, next);
    }
  }

  /**
   * relocate: the pointer rows that still point into the records of `entries` (a stretch of the
   * log about to be compacted away; BlockStore.compactLog) get their bytes back into their rows,
   * in one transaction of their own, committed on return (durable only once state.db's WAL is
   * synced: the caller does that before the log drops a segment). Returns the rows moved. A row
   * written again since (another pointer, or a block in its row) is left alone, and so are the
   * rows of a volume deleted since (nothing can read them; they wait to be reaped).
   */
  relocate(entries: Entry[]): number {
    assert(!this.inApply, 'no relocation during apply');
    this.checkCommitted();
    if (this.locator === undefined || entries.length === 0) return 0;
    this.commit();
    let moved = 0;
    this.db.transaction(() => {
      for (const entry of entries) {
        if (entry.type !== EntryType.Normal || entry.data.length === 0 || entry.index > this.applied) continue;
        let command: Command;
        try {
          command = decodeCommand(entry.data);
        } catch {
          continue; // applied as INVALID_ARGUMENT: it stored nothing
        }
        if (command.kind !== 'write' || command.data.length === 0) continue;
        const volume = this.volume(command.volume);
        if (volume === undefined || volume.createdIndex >= entry.index) continue;
        const ref = this.dataRef(entry, command.data.length);
        if (ref === undefined) continue;
        for (const p of blockPieces(command.offset, command.data.length, blockBytes)) {
          if (p.to - p.from !== blockBytes) continue;
          const row = this.s.block.get(volume.createdIndex, p.block);
          if (row === undefined || row.seg !== ref.segment || row.off !== ref.offset + (p.from - command.offset)) continue;
          const data = command.data.subarray(p.from - command.offset, p.to - command.offset);
          if (crc32(data) !== row.crc) {
            throw Object.assign(corruptBlock(`block ${p.block}: its bytes in log entry ${entry.index} fail the row's checksum; not relocated`, p.blockStart), { index: entry.index });
          }
          this.s.putBlock.run(volume.createdIndex, p.block, data, row.crc);
          moved++;
        }
      }
    })();
    this.refStats.relocated += moved;
    return moved;
  }

  /** addReapRange: rows of `volumeId` at `fromBlock` and beyond are to be reaped (merged with a pending range). */
  private addReapRange(volumeId: number, fromBlock: number): void {
    const pending = this.s.reapRange.get(volumeId);
    this.s.putReapRange.run(volumeId, pending === undefined ? fromBlock : Math.min(pending.from_block, fromBlock));
    this.reapPending = true;
  }

  /**
   * finishReap: a volume grows to `blocks` blocks: rows of its pending reap range below that must
   * go now (beyond it they stay invisible and are reaped as usual).
   */
  private finishReap(volumeId: number, blocks: number): void {
    const pending = this.s.reapRange.get(volumeId);
    if (pending === undefined || pending.from_block >= blocks) return;
    this.counts.blocksDeleted += this.s.deleteBlocks.run(volumeId, pending.from_block, blocks - 1).changes;
    this.s.putReapRange.run(volumeId, blocks);
  }

  /**
   * reap: delete at most `budget` rows of the pending reap ranges, oldest volume first; a range
   * with nothing left is dropped. Deterministic: the same rows on every replica for the same entry.
   */
  private reap(budget: number): void {
    while (budget > 0) {
      const range = this.s.firstReapRange.get();
      if (range === undefined) {
        this.reapPending = false;
        return;
      }
      const deleted = this.s.reapBlocks.run(range.volume_id, range.from_block, budget).changes;
      this.counts.blocksDeleted += deleted;
      budget -= deleted;
      if (budget > 0) this.s.deleteReapRange.run(range.volume_id);
    }
  }

  /** reaping: whether rows of deleted volumes or shrunk tails still wait to be reaped (entries reap them). */
  reaping(): boolean {
    return this.reapPending;
  }

  /** zeroRange: whole blocks are deleted with one range delete; partial end blocks are read-modify-written. */
  private zeroRange(volumeId: number, offset: number, length: number): void {
    if (length === 0) return;
    const end = offset + length;
    const firstFull = Math.ceil(offset / blockBytes);
    const endFull = Math.floor(end / blockBytes); // exclusive
    const zeroPart = (block: number, from: number, to: number) => {
      const old = this.loadBlock(volumeId, block, block * blockBytes);
      if (old === undefined) return;
      const next = new Uint8Array(old);
      next.fill(0, from, to);
      this.storeBlock(volumeId, block, next);
    };
    if (firstFull >= endFull) {
      // No whole block inside: one or two partial blocks.
      const a = Math.floor(offset / blockBytes);
      const b = Math.floor((end - 1) / blockBytes);
      if (a === b) zeroPart(a, offset - a * blockBytes, end - a * blockBytes);
      else {
        zeroPart(a, offset - a * blockBytes, blockBytes);
        zeroPart(b, 0, end - b * blockBytes);
      }
      return;
    }
    if (offset % blockBytes !== 0) zeroPart(firstFull - 1, offset - (firstFull - 1) * blockBytes, blockBytes);
    this.counts.blocksDeleted += this.s.deleteBlocks.run(volumeId, firstFull, endFull - 1).changes;
    if (end % blockBytes !== 0) zeroPart(endFull, 0, end - endFull * blockBytes);
  }

  // ------------------------------------------------------------------ reads

  volume(name: string): VolumeRecord | undefined {
    const cached = this.volumeCache.get(name);
    if (cached !== undefined) return { ...cached };
    const row = this.s.volume.get(name);
    if (row === undefined) return undefined;
    const volume = { name: row.name, sizeBytes: row.size_bytes, createdIndex: row.created_index };
    this.volumeCache.set(name, volume);
    return { ...volume };
  }

  listVolumes(): VolumeRecord[] {
    return this.s.volumes.all().map((row) => ({ name: row.name, sizeBytes: row.size_bytes, createdIndex: row.created_index }));
  }

  private readTarget(name: string, offset: number, length: number, maxBytes: number): VolumeRecord {
    const volume = this.volume(name);
    if (volume === undefined) throw new UsageError(ErrorCode.NotFound, `no volume named "${name}"`);
    const problem = rangeProblem(offset, length, volume.sizeBytes);
    if (problem !== undefined) throw new UsageError(problem.code, `${name}: ${problem.message}`);
    if (length > maxBytes) throw new UsageError(ErrorCode.TooLarge, `read of ${length} bytes exceeds ${maxBytes}`);
    return volume;
  }

  /**
   * read: the bytes of [offset, offset+length) as chunks in order, without gaps; a chunk without
   * `data` is a hole (zeros). Every stored block is checksum-verified; a mismatch throws
   * CorruptError (with the volume `offset` of the bad block) and nothing is returned.
   */
  read(name: string, offset: number, length: number): ReadChunk[] {
    this.checkCommitted();
    const volume = this.readTarget(name, offset, length, this.limits.readBytesMax);
    if (length === 0) return [];
    const end = offset + length;
    const runs = new ChunkRuns(offset);
    const first = Math.floor(offset / blockBytes);
    const last = Math.floor((end - 1) / blockBytes);
    // get() / all(), not iterate(): better-sqlite3's iterator costs ~3 us more per read (a 4 KiB
    // read spent ~13 us in it); all() holds at most readBytesMax of rows, which the reply holds anyway.
    let rows: BlockRow[];
    if (first === last) {
      const row = this.s.block.get(volume.createdIndex, first);
      rows = row === undefined ? [] : [{ block: first, ...row }];
    } else rows = this.s.blockRange.all(volume.createdIndex, first, last);
    for (const row of rows) {
      const blockStart = row.block * blockBytes;
      runs.hole(blockStart);
      const data = this.blockData(row, row.block, Math.max(offset, blockStart));
      const from = Math.max(offset, blockStart);
      const to = Math.min(end, blockStart + blockBytes);
      runs.data(data.subarray(from - blockStart, to - blockStart));
    }
    return runs.finish(end);
  }

  /**
   * blockStatus: allocation extents covering a non-empty prefix of [offset, offset+length): holes
   * are {hole: true, zero: true}, stored blocks {hole: false, zero: false}. At most
   * `blockStatusBlocksMax` stored blocks are examined; beyond them the answer stops (a prefix).
   */
  blockStatus(name: string, offset: number, length: number): Extent[] {
    this.checkCommitted();
    const volume = this.readTarget(name, offset, length, Number.MAX_SAFE_INTEGER);
    if (length === 0) return [];
    const end = offset + length;
    const max = this.limits.blockStatusBlocksMax;
    const runs = new ExtentRuns(offset);
    const rows = this.s.allocatedRange.all(volume.createdIndex, Math.floor(offset / blockBytes), Math.floor((end - 1) / blockBytes), max);
    for (const row of rows) {
      const blockStart = row.block * blockBytes;
      runs.push(blockStart, true);
      runs.push(Math.min(end, blockStart + blockBytes), false);
    }
    if (rows.length < max) runs.push(end, true);
    return runs.extents();
  }

  /**
   * stateHash: SHA-256 of the logical state — volumes (name, size, created index), every stored
   * block (volume name, block number, data), sessions (by id) and evicted session ids — in a
   * canonical order, so it depends only on content, never on physical layout or history.
   * Members and the configuration are not included (they are raft's, checked by raft).
   */
  stateHash(): { appliedIndex: number; hash: string } {
    const hash = createHash('sha256');
    const u64 = (n: number) => {
      const b = Buffer.alloc(8);
      b.writeBigUInt64BE(BigInt(n));
      hash.update(b);
    };
    const str = (text: string) => {
      const b = Buffer.from(text, 'utf8');
      u64(b.length);
      hash.update(b);
    };
    hash.update('volumes\0');
    for (const v of this.listVolumes()) {
      str(v.name);
      u64(v.sizeBytes);
      u64(v.createdIndex);
    }
    hash.update('blocks\0');
    for (const row of this.s.hashBlocks.iterate()) {
      str(row.name);
      u64(row.block);
      hash.update(this.blockData(row, row.block, row.block * blockBytes));
    }
    hash.update('sessions\0');
    const sessions = this.sessionTable.entries().slice().sort((a, b) => (a.sessionId < b.sessionId ? -1 : a.sessionId > b.sessionId ? 1 : 0));
    for (const r of sessions) {
      str(r.sessionId);
      str(serializeSession(r));
    }
    hash.update('evicted\0');
    for (const id of this.sessionTable.evictedIds().sort()) str(id);
    return { appliedIndex: this.applied, hash: hash.digest('hex') };
  }

  /** checkIntegrity: counts blocks whose checksum fails and blocks of no volume (both must be 0). */
  checkIntegrity(): { blocks: number; corrupt: number; orphans: number } {
    let blocks = 0;
    let corrupt = 0;
    for (const row of this.s.hashBlocks.iterate()) {
      blocks++;
      try {
        this.blockData(row, row.block, row.block * blockBytes);
      } catch (error) {
        if (!(error instanceof CorruptError)) throw error;
        corrupt++;
      }
    }
    return { blocks, corrupt, orphans: this.s.orphanBlocks.get()!.c };
  }

  // ------------------------------------------------------------------ snapshots

  /**
   * restoreFrom: replaces state.db with a copy of the snapshot database `source`, atomically:
   * copy to `<file>.incoming` and fsync it, close the database (checkpointing its WAL) and delete
   * the WAL and shared-memory files (a stale WAL must never be replayed into the new file),
   * rename over state.db, fsync the directory, reopen. A crash at any point leaves either the old
   * or the new state.db, whole. The replaced file is unlinked off the event loop (see below).
   *
   * `prepared`: the caller already wrote a byte-identical, fsynced copy of `source` to
   * `incomingPath()` (BlockStore's mirror of the staged snapshot), so the copy is skipped and the
   * swap is a rename; only the sizes are compared here (the applied index is checked by the caller).
   */
  restoreFrom(source: string, fsyncDirectory: (dir: string) => void, options: { prepared?: boolean } = {}): void {
    assert(!this.inApply, 'no restore during apply');
    this.commit(); // what is replaced is committed first: a failed restore leaves the state as applied
    const incoming = this.incomingPath();
    if (options.prepared === true) {
      if (fs.statSync(incoming).size !== fs.statSync(source).size) throw new CorruptError(`prepared ${incoming} differs in size from ${source}`);
    } else {
      fs.rmSync(incoming, { force: true });
      fs.copyFileSync(source, incoming, fs.constants.COPYFILE_FICLONE);
      const fd = fs.openSync(incoming, 'r+');
      try {
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
    }
    this.checkpointer?.stop(); // its connection must be gone before the WAL is deleted
    this.db.close();
    fs.rmSync(`${this.file}-wal`, { force: true });
    fs.rmSync(`${this.file}-shm`, { force: true });
    // The old state.db is freed off the event loop: a second link keeps its blocks alive through the
    // rename (which then frees nothing), and the link is unlinked on the thread pool. Freeing a few
    // hundred MiB synchronously was measured at 200-340 ms. A crash leaves `<file>.old`, which
    // BlockStore's constructor deletes; the rename's atomicity is unchanged.
    const old = `${this.file}.old`;
    fs.rmSync(old, { force: true });
    fs.linkSync(this.file, old);
    fs.renameSync(incoming, this.file);
    fsyncDirectory(path.dirname(this.file));
    void fs.promises.unlink(old).catch(() => undefined);
    this.db = openDatabase(this.file);
    this.s = prepare(this.db);
    this.applyTransaction = this.db.transaction(this.applyBatch);
    this.load();
    this.startCheckpointer();
  }

  /** incomingPath: where restoreFrom stages the new state.db (deleted by BlockStore on open). */
  incomingPath(): string {
    return `${this.file}.incoming`;
  }

  close(): void {
    if (this.db.open) {
      try {
        this.commit();
      } finally {
        this.checkpointer?.stop();
        this.db.close();
      }
    }
  }

  /** database: the underlying connection (tests use it to damage rows on purpose). */
  database(): Database.Database {
    return this.db;
  }
}

/** corruptBlock: a CorruptError about the block at `volumeOffset` (BlockStore's corruption record and the read path name it). */
function corruptBlock(message: string, volumeOffset: number): CorruptError {
  return Object.assign(new CorruptError(message), { offset: volumeOffset });
}

function verified(data: Buffer, crc: number, block: number, volumeOffset: number): Uint8Array {
  if (data.length !== blockBytes || crc32(data) !== crc) throw corruptBlock(`block ${block} failed its checksum (stored crc ${crc >>> 0}); not served`, volumeOffset);
  return new Uint8Array(data.buffer, data.byteOffset, data.length);
}
