/**
 * blockstore: BlockStore, the durable storage of one chard node in a data directory —
 * `wal/` (raft entries and hard state: SegmentedLog, written off the event loop) and `log.db`
 * (snapshot bookkeeping), both behind WalLogStorage (wal-storage.ts, which also migrates a store
 * whose log was in log.db); `state.db` (the block state machine, BlockStateMachine) and
 * `snapshots/` (the latest snapshot file and a staging file for one being received). It
 * implements the node's ReplicaStore (replica-store.ts); persist() returns a promise that
 * resolves when the Ready is durable.
 *
 * Crash recovery on open(): the state machine's applied index is the one raft restarts from
 * (RawNode `applied`); entries after it are re-applied through raft's normal path. If the state
 * is older than the latest durable snapshot (a crash between recording a received snapshot and
 * swapping state.db, or a lost state.db tail behind a compacted log), state.db is first restored
 * from the snapshot file; a stored commit index below the applied index (a power loss took the
 * commit-only batch that advanced it) is raised to the applied index. See docs/blockstore.md for
 * the durability argument.
 *
 * Corruption: rotten state met by apply() is recorded in `state.corrupt` and answered with
 * StateCorruptError; the next open() rebuilds the state from the latest verified snapshot (or the
 * empty state) for raft to replay the log over, or refuses to start with the operator's remedy
 * (repair(); docs/blockstore.md, "Corruption").
 */

import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { assert } from '../assert.js';
import { CorruptError, ErrorCode, InternalError } from '../errors.js';
import type { Extent, ReadChunk } from '../volume/ranges.js';
import { applyRows, decodeCommand } from './commands.js';
import { type ApplyOutcome, type CompactionHolds, type CorruptionRecord, type MemberAddresses, type ReplicaStore, StateCorruptError, compactionPoint } from './replica-store.js';
import { bootstrapConfState, bootstrapEntry } from '../raft/confchange.js';
import { type ConfChange, type ConfState, type Entry, EntryType, type NodeId, type Ready, type SnapshotMetadata } from '../raft/types.js';
import { type LogStoreLimits, SNAPSHOT_DIR, defaultLogStoreLimits, fsyncDirectory } from './log-store.js';
import { WAL_DIR, WalLogStorage } from './wal-storage.js';
import { type WalLimits, defaultWalLimits } from './wal.js';
import { type SnapshotCopy, copyStateSnapshot } from './snapshot-copy.js';
import type { SnapshotWorkerData, SnapshotWorkerMessage, SnapshotWorkerResult } from './snapshot-worker.js';
import { BlockStateMachine, type StateStoreLimits, type StateTimer, type VolumeRecord, blockBytes, defaultStateStoreLimits } from './state-store.js';

export { SqliteLogStorage } from './log-store.js';
export { WAL_DIR, WalLogStorage } from './wal-storage.js';
export { BlockStateMachine, blockBytes } from './state-store.js';
export * from './commands.js';

/**
 * BlockStoreLimits: the log's (WalLimits for the WAL; LogStoreLimits for log.db, which holds no
 * entries once migrated — cacheBytesMax is the WAL's entry cache), the state machine's, and these.
 */
export interface BlockStoreLimits extends LogStoreLimits, WalLimits, StateStoreLimits {
  /** compactionTrailingEntries: entries kept in the log behind a compaction point (slow followers catch up from them). */
  compactionTrailingEntries: number;
  /**
   * logRetainBytesMax: how much log (segment bytes) a leader's compactLog keeps for a follower
   * that lags (restarting, slow): within it, the follower catches up from the log; beyond it,
   * the log is compacted anyway and the follower needs a snapshot (a full copy of the state).
   */
  logRetainBytesMax: number;
  /**
   * relocateBytesPerTurn: block data compactLog moves per event-loop turn out of the log stretch it
   * is about to drop into state.db rows (blocks that still point into it; "Blocks in the log" in
   * docs/blockstore.md). 4 MiB: the size of one full apply commit (commitRowsMax rows).
   */
  relocateBytesPerTurn: number;
}

export const defaultBlockStoreLimits: BlockStoreLimits = {
  ...defaultLogStoreLimits,
  ...defaultWalLimits,
  ...defaultStateStoreLimits,
  compactionTrailingEntries: 1024,
  logRetainBytesMax: 1024 * 1024 * 1024,
  relocateBytesPerTurn: 4 * 1024 * 1024,
};

export const STATE_DB_FILE = 'state.db';
/** CORRUPTION_MARKER_FILE: written (fsynced) when apply() meets rotten state; its presence makes open() repair. */
export const CORRUPTION_MARKER_FILE = 'state.corrupt';
/** REBUILD_FILE: the empty state.db that repair() builds when there is no snapshot to start from. */
const REBUILD_FILE = `${STATE_DB_FILE}.rebuild`;

/** mirrorCopyBytesMax: buffer size of one read+write while extending the incoming mirror. */
const mirrorCopyBytesMax = 4 * 1024 * 1024;

/** IncomingMirror: state.db.incoming holding the first `bytes` bytes of a staged snapshot (fsynced). */
interface IncomingMirror {
  metadata: SnapshotMetadata;
  /** generation: SqliteLogStorage.stagingGeneration() when the mirror started. */
  generation: number;
  bytes: number;
  fd: number;
}

/** BlockStore: log + state machine + snapshots of one node; the node's ReplicaStore. */
export class BlockStore implements ReplicaStore {
  readonly dir: string;
  readonly limits: BlockStoreLimits;
  readonly logStorage: WalLogStorage;
  readonly state: BlockStateMachine;
  private closed = false;
  /** snapshotInFlight: the running createSnapshotAsync() (at most one), undefined when none. */
  private snapshotInFlight: Promise<SnapshotMetadata | undefined> | undefined;
  /** snapshotSequence: numbers the temp files of async snapshots (unique within this process's store). */
  private snapshotSequence = 0;
  /** timer: the node's scheduler (compactLog yields the event loop through it between relocation turns); undefined in tests and tools. */
  private readonly timer: StateTimer | undefined;
  /** compacting: a compactLog is running (at most one at a time). */
  private compacting = false;
  /** mirror: state.db.incoming being filled with the staged snapshot's bytes (advanceMirror). */
  private mirror: IncomingMirror | undefined;
  /** stateGeneration: counts the replacements of state.db (restoreState); a copy that overlapped one is discarded. */
  private stateGeneration = 0;
  /** installStats: how installSnapshot() swapped state.db — by renaming the mirror, or by a copy. */
  readonly installStats = { renamed: 0, copied: 0 };
  /** corruption: what apply() found rotten (also on disk as CORRUPTION_MARKER_FILE); the store then refuses to apply, read and snapshot. */
  private corruption: CorruptionRecord | undefined;
  /** repaired: what open() rebuilt the state from after a corruption marker (undefined: no repair). */
  repaired: { from: 'snapshot' | 'empty'; snapshotIndex: number; record: CorruptionRecord } | undefined;

  private constructor(dir: string, limits: BlockStoreLimits, timer: StateTimer | undefined) {
    this.dir = dir;
    this.limits = limits;
    assert(Number.isInteger(limits.compactionTrailingEntries) && limits.compactionTrailingEntries >= 0, 'compactionTrailingEntries >= 0');
    // A copy a crash interrupted before its rename is garbage (restoreFrom makes a new one).
    fs.rmSync(path.join(dir, `${STATE_DB_FILE}.incoming`), { force: true });
    // Likewise the extra link restoreFrom keeps to a replaced state.db while it is unlinked in the background,
    // and an empty state a crash interrupted while repair() built it.
    fs.rmSync(path.join(dir, `${STATE_DB_FILE}.old`), { force: true });
    removeDatabaseFiles(path.join(dir, REBUILD_FILE));
    this.state = BlockStateMachine.open(path.join(dir, STATE_DB_FILE), limits, timer === undefined ? {} : { timer });
    try {
      this.logStorage = WalLogStorage.open(dir, { limits, confStateSource: () => this.state.confState() });
    } catch (error) {
      this.state.close();
      throw error;
    }
    this.timer = timer;
    // Blocks of applied writes point into the log's durable records (BlockLocator).
    const wal = this.logStorage.wal;
    this.state.setLocator({ locate: (index) => wal.locate(index), read: (segment, offset, length) => wal.readAt(segment, offset, length) });
    try {
      this.corruption = readCorruptionMarker(dir);
      if (this.corruption !== undefined) this.repair(this.corruption);
      this.recover();
    } catch (error) {
      this.logStorage.close();
      this.state.close();
      throw error;
    }
  }

  /**
   * open: opens (creating if needed) the store in `dir` and recovers from a crash. `timer` lets
   * the applies of several Readys share one state.db transaction (StateStoreLimits.commitDelayMs;
   * a node passes its scheduler); without it every apply commits.
   */
  static open(dir: string, options: { limits?: Partial<BlockStoreLimits>; timer?: StateTimer } = {}): BlockStore {
    fs.mkdirSync(dir, { recursive: true });
    return new BlockStore(dir, { ...defaultBlockStoreLimits, ...options.limits }, options.timer);
  }

  private recover(): void {
    const snapshot = this.logStorage.snapshot();
    if (snapshot.index > this.state.appliedIndex()) {
      const file = this.logStorage.snapshotFilePath();
      assert(file !== undefined, 'a recorded snapshot has a file');
      this.restoreState(file);
      if (this.state.appliedIndex() !== snapshot.index) {
        throw new CorruptError(`snapshot ${snapshot.index} holds a state applied to ${this.state.appliedIndex()}`);
      }
    }
    const applied = this.state.appliedIndex();
    if (applied > this.logStorage.lastIndex()) {
      throw new CorruptError(`state.db applied ${applied} but the log ends at ${this.logStorage.lastIndex()}`);
    }
    if (applied < this.logStorage.firstIndex() - 1) {
      throw new CorruptError(`state.db applied ${applied} but the log starts at ${this.logStorage.firstIndex()} with no snapshot to cover it`);
    }
    // A power loss may leave the applied index above the stored commit index: a batch that only
    // advances the commit index is appended to the WAL without waiting for its fdatasync
    // (mustSync false), and state.db runs with synchronous=NORMAL too, so the two files lose their
    // latest writes independently. Raising the commit index to the applied index is safe: the
    // state machine only ever applies committed entries, so applied <= the true commit index;
    // every entry up to it is in the log (checked above: applied <= lastIndex); and a commit index
    // is a fact of the cluster, never revoked. Appended here (visible at once, durable with the
    // WAL's next fdatasync or at close; if lost, the next open raises it again), so RaftLog (which
    // asserts applied <= committed) and every later reader see one consistent pair.
    const hard = this.logStorage.hardState();
    if (applied > hard.commit) void this.logStorage.persist({ hardState: { ...hard, commit: applied }, mustSync: true })?.catch(() => undefined);
  }

  /**
   * repair: open() found the corruption marker — apply() met rotten state in the last process. The
   * state machine is discarded and rebuilt from local data only: the latest snapshot (or, without
   * one, the empty initial state) with its every block verified; raft then re-applies the log
   * after it through its normal path, exactly as after a crash (the applied index is the
   * snapshot's). Requires the log to reach back to that snapshot. Without a snapshot the member
   * addresses are carried over from the discarded state: the bootstrap members are in no log
   * entry, and every later change of a member is in the log and re-applied over them (the last
   * change per member wins, as the first time). If the state cannot be rebuilt, throws a
   * CorruptError that names the operator's remedy, and keeps the marker: every start refuses the
   * same way, never serves the rotten state and never applies into it again.
   */
  private repair(record: CorruptionRecord): void {
    const log = this.logStorage;
    const snapshot = log.snapshot();
    const refuse = (why: string): never => {
      throw new CorruptError(
        `${path.join(this.dir, STATE_DB_FILE)} was found corrupt (${describeRecord(record)}) and cannot be rebuilt from local data: ${why}. ` +
          'Remedy: remove this node from the cluster (chard member remove ID), delete its data directory, start it empty ("join": true) ' +
          'and add it again (chard member add ID --raft HOST:PORT --learner --wait, then chard member promote ID): the leader streams it a snapshot.',
      );
    };
    if (log.firstIndex() > snapshot.index + 1) refuse(`the log starts at ${log.firstIndex()}, after the latest snapshot (${snapshot.index})`);
    let from: 'snapshot' | 'empty';
    if (snapshot.index > 0) {
      const file = log.snapshotFilePath();
      assert(file !== undefined, 'a recorded snapshot has a file');
      this.restoreState(file);
      if (this.state.appliedIndex() !== snapshot.index) refuse(`snapshot ${snapshot.index} holds a state applied to ${this.state.appliedIndex()}`);
      from = 'snapshot';
    } else {
      const rebuild = path.join(this.dir, REBUILD_FILE);
      const empty = BlockStateMachine.open(rebuild, this.limits);
      try {
        for (const [id, addresses] of this.state.members()) empty.setMember(id, addresses);
      } finally {
        empty.close();
      }
      try {
        this.restoreState(rebuild);
      } finally {
        removeDatabaseFiles(rebuild);
      }
      from = 'empty';
    }
    const integrity = this.state.checkIntegrity();
    if (integrity.corrupt > 0 || integrity.orphans > 0) {
      refuse(`the ${from === 'snapshot' ? `latest snapshot (${snapshot.index})` : 'empty state'} holds ${integrity.corrupt} blocks that fail their checksum and ${integrity.orphans} blocks of no volume`);
    }
    clearCorruptionMarker(this.dir);
    this.corruption = undefined;
    this.repaired = { from, snapshotIndex: snapshot.index, record: { ...record } };
  }

  /**
   * bootstrap: makes a fresh store the initial member of a new cluster — the committed bootstrap
   * entry (index 1, confchange.ts) in the log, and its configuration — like MemoryStorage.bootstrap.
   * `members` are the initial members' addresses. Does nothing to a store that has a log.
   */
  bootstrap(voters: NodeId[], learners: NodeId[] = [], members: Map<NodeId, MemberAddresses> = new Map()): void {
    if (this.logStorage.lastIndex() > 0) return;
    assert(this.state.appliedIndex() === 0, 'fresh state');
    // Durable with the WAL's next fdatasync (or close): a crash before it leaves a fresh store, bootstrapped again on start.
    void this.logStorage.persist({ entries: [bootstrapEntry(voters, learners)], hardState: { term: 0, vote: 0, commit: 1 }, mustSync: true })?.catch(() => undefined);
    this.state.bootstrapConfState(bootstrapConfState(voters, learners));
    for (const [id, addresses] of members) this.state.setMember(id, addresses);
  }

  // ------------------------------------------------------------------ ReplicaStore

  /**
   * persist: WalLogStorage.persist — snapshot chunks and snapshot bookkeeping durable on return
   * (log.db, snapshot files), then entries and hard state appended to the WAL; if the Ready carried
   * snapshot chunks or a snapshot, the newly durable staged bytes are appended to the incoming
   * mirror (advanceMirror). The entries are visible to raft at once. Returns a promise that
   * resolves when the Ready's entries, hard state and snapshot are durable (rejects if the WAL
   * failed: the replica must halt), or undefined when nothing of it waits for the disk (no
   * entries, no snapshot, and no hard state with mustSync).
   */
  persist(ready: Ready): Promise<void> | undefined {
    const durable = this.logStorage.persist(ready);
    if (ready.snapshotChunks.length > 0 || ready.snapshot !== undefined) this.advanceMirror(ready.snapshot);
    return durable;
  }

  /**
   * advanceMirror: keeps `state.db.incoming` a byte-identical, fsynced prefix of the staged
   * snapshot, so that installSnapshot() is a rename instead of a copy of the whole file on the
   * event loop. Each Ready appends only the bytes its chunks added (read back from staging.bin, or
   * from the snapshot file once persist renamed staging into it), so the copy is spread over the
   * transfer. The mirror is an optimization, never trusted across processes: open() deletes it,
   * a staging restart (stagingGeneration) or any mismatch drops it, and installSnapshot then
   * falls back to the copy. Its own errors (e.g. ENOSPC) drop it too instead of failing persist.
   */
  private advanceMirror(installed: SnapshotMetadata | undefined): void {
    const log = this.logStorage;
    const pending = log.pendingSnapshot();
    const target =
      installed !== undefined
        ? { metadata: installed, bytes: installed.sizeBytes, file: log.snapshotFilePath() }
        : pending !== undefined
          ? { metadata: pending.metadata, bytes: pending.bytesReceived, file: log.stagingFilePath() }
          : undefined;
    const generation = log.stagingGeneration();
    let mirror = this.mirror;
    if (
      mirror !== undefined &&
      (target === undefined ||
        mirror.generation !== generation ||
        mirror.metadata.index !== target.metadata.index ||
        mirror.metadata.term !== target.metadata.term ||
        mirror.metadata.sizeBytes !== target.metadata.sizeBytes ||
        mirror.bytes > target.bytes)
    ) {
      this.dropMirror();
      mirror = undefined;
    }
    // A snapshot completed in the Ready that started it has no mirror: install copies (it is small or rare).
    if (target === undefined || target.file === undefined || (mirror === undefined && installed !== undefined)) return;
    let source: number | undefined;
    try {
      if (mirror === undefined) {
        const incoming = this.state.incomingPath();
        mirror = { metadata: structuredClone(target.metadata), generation, bytes: 0, fd: fs.openSync(incoming, 'w+') };
        this.mirror = mirror;
      }
      if (target.bytes > mirror.bytes) {
        source = fs.openSync(target.file, 'r');
        const buffer = Buffer.allocUnsafe(Math.min(mirrorCopyBytesMax, target.bytes - mirror.bytes));
        while (mirror.bytes < target.bytes) {
          const n = fs.readSync(source, buffer, 0, Math.min(buffer.length, target.bytes - mirror.bytes), mirror.bytes);
          if (n === 0) throw new InternalError(ErrorCode.Internal, `${target.file} ends before ${target.bytes} bytes`);
          let at = 0;
          while (at < n) at += fs.writeSync(mirror.fd, buffer, at, n - at, mirror.bytes + at);
          mirror.bytes += n;
        }
        fs.fsyncSync(mirror.fd);
      }
    } catch {
      this.dropMirror();
    } finally {
      if (source !== undefined) fs.closeSync(source);
    }
  }

  /** dropMirror: closes and deletes the incoming mirror (if any). */
  private dropMirror(): void {
    if (this.mirror === undefined) return;
    fs.closeSync(this.mirror.fd);
    this.mirror = undefined;
    fs.rmSync(this.state.incomingPath(), { force: true });
  }

  /**
   * installSnapshot: after persist() recorded a received snapshot (the log now starts behind it),
   * swap state.db for the snapshot's state. With a complete mirror of it (advanceMirror) the swap
   * is a rename (`installStats.renamed`); otherwise the snapshot file is copied first
   * (`installStats.copied`). Idempotent with crash recovery in open().
   */
  installSnapshot(metadata: SnapshotMetadata): void {
    const current = this.logStorage.snapshot();
    assert(current.index === metadata.index && current.term === metadata.term, 'installSnapshot after persist recorded it');
    const mirror = this.mirror;
    const prepared =
      mirror !== undefined &&
      mirror.metadata.index === metadata.index &&
      mirror.metadata.term === metadata.term &&
      mirror.bytes === metadata.sizeBytes &&
      mirror.generation === this.logStorage.stagingGeneration();
    if (mirror !== undefined) {
      fs.closeSync(mirror.fd);
      this.mirror = undefined;
      if (!prepared) fs.rmSync(this.state.incomingPath(), { force: true });
    }
    if (this.state.appliedIndex() >= metadata.index) {
      fs.rmSync(this.state.incomingPath(), { force: true });
      return;
    }
    const file = this.logStorage.snapshotFilePath();
    assert(file !== undefined, 'snapshot file present');
    this.restoreState(file, prepared);
    if (prepared) this.installStats.renamed += 1;
    else this.installStats.copied += 1;
    if (this.state.appliedIndex() !== metadata.index) {
      throw new CorruptError(`snapshot ${metadata.index} holds a state applied to ${this.state.appliedIndex()}`);
    }
    // A rotten state replaced by a snapshot from the leader is repaired, once the new one verifies.
    if (this.corruption !== undefined) {
      const integrity = this.state.checkIntegrity();
      if (integrity.corrupt === 0 && integrity.orphans === 0) {
        clearCorruptionMarker(this.dir);
        this.corruption = undefined;
      }
    }
  }

  /** restoreState: state.db becomes a copy of the snapshot file `file` (BlockStateMachine.restoreFrom). */
  private restoreState(file: string, prepared = false): void {
    this.stateGeneration += 1;
    this.state.restoreFrom(file, fsyncDirectory, { prepared });
  }

  /**
   * apply: BlockStateMachine.apply — one transaction for the batch. A CorruptError from it (rotten
   * state, e.g. the read-modify-write of a partial write over a block whose checksum fails; the
   * batch is rolled back) never leaves as such: the store records where (CORRUPTION_MARKER_FILE,
   * fsynced), stops applying, serving reads and snapshotting, and throws StateCorruptError, now and
   * on every later call. The next open() repairs the state or refuses to start (repair()). Any
   * other exception is a bug and propagates unchanged.
   */
  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome> {
    if (this.corruption !== undefined) throw new StateCorruptError(this.corruption);
    try {
      return this.state.apply(entries, onConfChange);
    } catch (error) {
      if (!(error instanceof CorruptError)) throw error;
      const record = corruptionRecord(error, entries);
      this.corruption = record;
      try {
        writeCorruptionMarker(this.dir, record);
      } catch (writeError) {
        // Still refused in this process; a restart re-applies the entry and finds the rot again.
        record.message += `; the marker could not be written (${String(writeError)})`;
      }
      throw new StateCorruptError(record);
    }
  }

  /** corruptionFound: what apply() found rotten in this process, or undefined (the node's status shows it). */
  corruptionFound(): CorruptionRecord | undefined {
    return this.corruption === undefined ? undefined : { ...this.corruption };
  }

  appliedIndex(): number {
    return this.state.appliedIndex();
  }

  /** applyCost: the block rows applying `entry` may touch (ReplicaStore.applyCost); 1 for anything else. */
  applyCost(entry: Entry): number {
    if (entry.type !== EntryType.Normal) return 1;
    try {
      return applyRows(decodeCommand(entry.data));
    } catch {
      return 1; // a malformed command is answered with an error: no rows
    }
  }

  /**
   * createSnapshot: snapshot the state at the applied index on the calling thread (copy with
   * copyStateSnapshot — VACUUM INTO a temp file, fsync — then adoptSnapshot: rename, record in
   * log.db, compact the log up to `compactionTrailingEntries` behind it). Blocks the event loop
   * for the whole copy (seconds for a few hundred MiB): a node uses createSnapshotAsync().
   * Returns undefined when nothing was applied since the latest snapshot.
   */
  createSnapshot(): SnapshotMetadata | undefined {
    assert(!this.closed, 'store open');
    if (this.corruption !== undefined) return undefined; // never snapshot a state known to be rotten
    const applied = this.state.appliedIndex();
    if (applied <= this.logStorage.snapshot().index) return undefined;
    this.state.commit(); // the copy reads state.db through its own connection: committed state only
    const temp = this.logStorage.snapshotTempPath(applied);
    const copy = copyStateSnapshot(this.state.file, temp, undefined, this.walDir());
    assert(copy.index === applied, 'a synchronous copy is at the applied index');
    const metadata = this.adoptSnapshot(temp, copy);
    if (metadata !== undefined) this.compactBehindSnapshotSync(metadata.index - this.limits.compactionTrailingEntries);
    return metadata;
  }

  /**
   * compactBehindSnapshotSync: createSnapshot's compaction, all on the calling thread (tests and
   * tools): the blocks that still point into [first, compactIndex] move into their rows, state.db's
   * WAL is fdatasynced (so no durable row points into a dropped segment), then the log is compacted.
   */
  private compactBehindSnapshotSync(compactIndex: number): void {
    const log = this.logStorage;
    if (compactIndex < log.firstIndex()) return;
    for (let through = log.firstIndex() - 1; through < compactIndex; ) through = this.relocateTurn(through, compactIndex);
    this.state.commit();
    const fd = fs.openSync(`${this.state.file}-wal`, 'r');
    try {
      fs.fdatasyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    void log.compact(compactIndex);
  }

  /**
   * relocateTurn: one turn of relocation — the entries after `through` up to `target`, at most
   * relocateBytesPerTurn of them (at least one) — moved out of the log (BlockStateMachine.relocate);
   * returns the last index relocated.
   */
  private relocateTurn(through: number, target: number): number {
    const entries = this.logStorage.entries(through + 1, target + 1, this.limits.relocateBytesPerTurn);
    this.state.relocate(entries);
    return through + entries.length;
  }

  /** walDir: the log's segment directory (a snapshot copy reads pointer rows' bytes there). */
  private walDir(): string {
    return path.join(this.dir, WAL_DIR);
  }

  /**
   * createSnapshotAsync: createSnapshot with the copy made in a worker thread (snapshot-worker.js,
   * one per snapshot) that opens its own read-only connection to state.db; the main thread keeps
   * applying meanwhile (WAL), and the snapshot's index and configuration are the ones INSIDE the
   * copy. Only adoptSnapshot (fsync of an already-synced file, rename, one log.db transaction,
   * compaction) runs on the event loop.
   *
   * At most one is in flight: a call while one runs returns the SAME promise. Resolves undefined
   * when nothing was applied since the latest snapshot, when the store was closed before the copy
   * finished, when state.db was replaced while copying (installSnapshot: the worker's connection
   * may have seen the old file, the new one, or a mix of the old file and the new WAL, so the copy
   * is discarded whatever it holds or however it ended), or when a newer snapshot (a
   * received one not yet installed, or a createSnapshot() meanwhile) was recorded while copying (the copy is then obsolete and
   * deleted). Rejects on any other error; its temp file is deleted first (a crash instead leaves
   * it to log-store's orphan sweep on open).
   *
   * `onCopyStarted` (tests: the moment to race against) runs on this thread when the worker has
   * opened its connection to state.db and starts VACUUM INTO; the copy is adopted only in the
   * worker's later 'exit' event, so whatever the hook does lands while the snapshot is in flight.
   * Only the call that starts a copy registers its hook. If the hook throws, the promise rejects.
   */
  createSnapshotAsync(options: { onCopyStarted?: () => void } = {}): Promise<SnapshotMetadata | undefined> {
    if (this.snapshotInFlight !== undefined) return this.snapshotInFlight;
    if (this.closed || this.corruption !== undefined || this.state.appliedIndex() <= this.logStorage.snapshot().index) return Promise.resolve(undefined);
    this.state.commit(); // the worker reads state.db through its own connection: committed state only
    this.snapshotSequence += 1;
    const temp = path.join(this.dir, SNAPSHOT_DIR, `snap-async-${this.snapshotSequence}.tmp`);
    const workerData: SnapshotWorkerData = { source: this.state.file, target: temp, walDir: this.walDir() };
    const generation = this.stateGeneration;
    const running = new Promise<SnapshotMetadata | undefined>((resolve, reject) => {
      let result: SnapshotWorkerResult | undefined;
      let failure: unknown;
      let hookFailure: { error: unknown } | undefined;
      const worker = new Worker(new URL('./snapshot-worker.js', import.meta.url), { workerData });
      worker.on('message', (message: SnapshotWorkerMessage) => {
        if (message.kind === 'result') {
          result = message;
          return;
        }
        try {
          options.onCopyStarted?.();
        } catch (error) {
          hookFailure = { error };
        }
      });
      worker.on('error', (error) => {
        failure = error;
      });
      // Settle on exit, so the thread (and its connection to state.db) is gone when the promise settles.
      worker.on('exit', (exitCode) => {
        try {
          if (hookFailure !== undefined) throw hookFailure.error;
          if (this.closed || generation !== this.stateGeneration || this.corruption !== undefined) {
            resolve(undefined);
            return;
          }
          if (result === undefined || !result.ok) {
            const why = result !== undefined && !result.ok ? result.message : failure !== undefined ? String(failure) : `worker exited with code ${exitCode}`;
            throw new InternalError(ErrorCode.Internal, `snapshot copy failed: ${why}`, { cause: failure });
          }
          resolve(this.adoptSnapshot(temp, result.copy));
        } catch (error) {
          reject(error);
        } finally {
          // adoptSnapshot renamed it on success; anything else must not leave a stray file.
          fs.rmSync(temp, { force: true });
        }
      });
    }).finally(() => {
      this.snapshotInFlight = undefined;
    });
    this.snapshotInFlight = running;
    return running;
  }

  /**
   * compactLog: compacts the log behind the state machine's own durable state, with no snapshot
   * (ReplicaStore.compactLog). The cost is what changed since the last compaction, never a copy
   * of the volume; a snapshot is made only when a follower needs one (createSnapshotAsync on
   * Ready.snapshotWanted).
   *
   * 1. The open state.db transaction is committed (BlockStateMachine.commit; a delayed COMMIT
   *    that failed earlier makes it throw): the applied index A is now in state.db's WAL with
   *    exactly its effects, not necessarily on disk (synchronous=NORMAL). Then the blocks that
   *    still point into the log stretch to be dropped, [first, point], get their bytes into their
   *    rows (BlockStateMachine.relocate), relocateBytesPerTurn of entries per event-loop turn, each
   *    turn its own committed transaction; applies go on in between (they point only at newer
   *    entries). A turn that finds the store closed, corrupt, replaced or snapshotting stops it all.
   * 2. state.db's WAL file is fdatasynced on the thread pool. Then every transaction committed
   *    before it is durable: its frames are either still in the WAL (now on disk) or a checkpoint
   *    already copied them into state.db, and a checkpoint fsyncs state.db before the WAL may be
   *    restarted over those frames (SQLite, synchronous=NORMAL: "the WAL is synced before each
   *    checkpoint and the database after each completed one"; the checkpoint worker runs NORMAL).
   * 3. The log is compacted to compactionPoint (replica-store.ts) of the holds asked again now
   *    (never beyond what step 1 relocated): min(upTo, A - compactionTrailingEntries), or lower for a lagging follower whose catch-up
   *    keeps at most logRetainBytesMax of log (4x that for an active one), with A as the durable
   *    state index (WalLogStorage.compact). Recovery then always finds applied >= first index - 1.
   *
   * Does nothing (undefined) while a snapshot copy is in flight (its index must stay inside the
   * log), when state.db was replaced during the fdatasync (a received snapshot: its own index is
   * durable), after close or corruption, or when the point would not move. A failed fdatasync
   * rejects and compacts nothing.
   */
  async compactLog(holds: () => CompactionHolds): Promise<number | undefined> {
    if (this.closed || this.corruption !== undefined || this.snapshotInFlight !== undefined || this.compacting) return undefined;
    this.compacting = true;
    try {
      return await this.compactLogOnce(holds);
    } finally {
      this.compacting = false;
    }
  }

  private async compactLogOnce(holds: () => CompactionHolds): Promise<number | undefined> {
    this.state.commit();
    this.state.checkCommitted(); // a delayed COMMIT that failed: memory is ahead of the file
    const applied = this.state.appliedIndex();
    const log = this.logStorage;
    const point = () => compactionPoint(holds(), applied, this.limits.compactionTrailingEntries, log.firstIndex(), (i) => log.wal.bytesFrom(i), this.limits.logRetainBytesMax);
    const target = Math.min(point(), log.lastIndex());
    if (target < log.firstIndex()) return undefined;
    const generation = this.stateGeneration;
    const stale = () => this.closed || this.corruption !== undefined || this.snapshotInFlight !== undefined || generation !== this.stateGeneration;
    // 1. Blocks that point into [first, target] get their bytes into their rows, a turn at a time.
    let relocatedThrough = log.firstIndex() - 1;
    while (relocatedThrough < target) {
      relocatedThrough = this.relocateTurn(relocatedThrough, target);
      if (relocatedThrough < target && this.timer !== undefined) {
        await new Promise<void>((resolve) => this.timer!.after(0, resolve));
        if (stale()) return undefined;
      }
    }
    this.state.commit();
    // 2. state.db's WAL is fdatasynced: the applied index, and every relocation, are durable.
    const wal = await fs.promises.open(`${this.state.file}-wal`, 'r');
    try {
      await wal.datasync();
    } finally {
      await wal.close();
    }
    if (stale()) return undefined;
    // 3. The holds again (a snapshot transfer may have begun meanwhile), never past what was relocated.
    const compactIndex = Math.min(point(), log.lastIndex(), relocatedThrough);
    if (compactIndex < log.firstIndex()) return undefined;
    void log.compact(compactIndex, applied);
    return compactIndex;
  }

  /**
   * adoptSnapshot: makes the complete, fsynced copy at `temp` (holding `copy.index`) the latest
   * snapshot and compacts the log behind it. An obsolete copy — not newer than the recorded
   * snapshot, or outside the log (a received snapshot replaced it meanwhile) — is deleted and
   * undefined returned. Cheap: no data is copied.
   */
  private adoptSnapshot(temp: string, copy: SnapshotCopy): SnapshotMetadata | undefined {
    try {
      const log = this.logStorage;
      if (copy.index <= log.snapshot().index || copy.index > log.lastIndex() || copy.index < log.firstIndex() - 1) {
        fs.rmSync(temp, { force: true });
        return undefined;
      }
      const metadata = log.recordSnapshotFile(copy.index, copy.confState, temp);
      assert(metadata.sizeBytes === copy.sizeBytes, 'the recorded file is the copy');
      // No compaction here: blocks may still point into the log behind the snapshot, and moving
      // them out is work for compactLog's turns, not for this one (createSnapshot does it inline).
      return metadata;
    } catch (error) {
      fs.rmSync(temp, { force: true });
      throw error;
    }
  }

  members(): Map<NodeId, MemberAddresses> {
    return this.state.members();
  }

  setMember(id: NodeId, addresses: MemberAddresses | undefined): void {
    this.state.setMember(id, addresses);
  }

  // ------------------------------------------------------------------ reads for the node

  /** read: BlockStateMachine.read; refused (StateCorruptError) once apply() found the state rotten. */
  read(volume: string, offset: number, length: number): ReadChunk[] {
    if (this.corruption !== undefined) throw new StateCorruptError(this.corruption);
    return this.state.read(volume, offset, length);
  }

  /** blockStatus: BlockStateMachine.blockStatus; refused like read(). */
  blockStatus(volume: string, offset: number, length: number): Extent[] {
    if (this.corruption !== undefined) throw new StateCorruptError(this.corruption);
    return this.state.blockStatus(volume, offset, length);
  }

  listVolumes(): VolumeRecord[] {
    return this.state.listVolumes();
  }

  stateHash(): { appliedIndex: number; hash: string } {
    return this.state.stateHash();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.dropMirror();
    this.logStorage.close();
    this.state.close();
  }
}

/** corruptionRecord: where `error` (from apply of `entries`) found rotten state; the entry index is annotated by BlockStateMachine.apply. */
function corruptionRecord(error: CorruptError, entries: Entry[]): CorruptionRecord {
  const annotated = error as CorruptError & { index?: unknown; offset?: unknown };
  const first = entries[0]!.index;
  const index = typeof annotated.index === 'number' ? annotated.index : first;
  const entry = entries[index - first];
  let volume: string | undefined;
  if (entry !== undefined && entry.type === EntryType.Normal) {
    try {
      const command = decodeCommand(entry.data);
      volume = 'volume' in command ? command.volume : 'name' in command ? command.name : undefined;
    } catch {
      volume = undefined;
    }
  }
  const block = typeof annotated.offset === 'number' ? Math.floor(annotated.offset / blockBytes) : undefined;
  return { index, volume, block, message: error.message };
}

function describeRecord(record: CorruptionRecord): string {
  const volume = record.volume === undefined ? 'unknown volume' : `volume "${record.volume}"`;
  const block = record.block === undefined ? '' : ` block ${record.block}`;
  return `${volume}${block}, applying entry ${record.index}: ${record.message}`;
}

/** writeCorruptionMarker: the record as `<dir>/state.corrupt`, whole or not at all (temp file, fsync, rename, fsync dir). */
function writeCorruptionMarker(dir: string, record: CorruptionRecord): void {
  const file = path.join(dir, CORRUPTION_MARKER_FILE);
  const temp = `${file}.tmp`;
  const fd = fs.openSync(temp, 'w');
  try {
    fs.writeSync(fd, `${JSON.stringify({ format: 1, ...record })}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, file);
  fsyncDirectory(dir);
}

/**
 * readCorruptionMarker: the record in `<dir>/state.corrupt`, or undefined without one. A marker
 * that does not parse still means "corrupt" (it is only ever written whole, so this is rot too).
 */
function readCorruptionMarker(dir: string): CorruptionRecord | undefined {
  const file = path.join(dir, CORRUPTION_MARKER_FILE);
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
  try {
    const value = JSON.parse(text) as Partial<CorruptionRecord>;
    if (!Number.isSafeInteger(value.index) || typeof value.message !== 'string') throw new Error('wrong shape');
    return {
      index: value.index!,
      volume: typeof value.volume === 'string' ? value.volume : undefined,
      block: Number.isSafeInteger(value.block) ? value.block : undefined,
      message: value.message,
    };
  } catch {
    return { index: 0, volume: undefined, block: undefined, message: `unreadable corruption marker ${file}` };
  }
}

function clearCorruptionMarker(dir: string): void {
  fs.rmSync(path.join(dir, CORRUPTION_MARKER_FILE), { force: true });
  fsyncDirectory(dir);
}

/** removeDatabaseFiles: a SQLite database file and its WAL and shared-memory files. */
function removeDatabaseFiles(file: string): void {
  for (const suffix of ['', '-wal', '-shm']) fs.rmSync(`${file}${suffix}`, { force: true });
}
