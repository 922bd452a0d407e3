/**
 * blockstore: BlockStore, the durable storage of one chard node in a data directory —
 * `log.db` (the raft log, SqliteLogStorage, fsynced per batch), `state.db` (the block state
 * machine, BlockStateMachine) and `snapshots/` (the latest snapshot file and a staging file for
 * one being received). It implements the node's ReplicaStore (src/node/replica.ts).
 *
 * Crash recovery on open(): the state machine's applied index is the one raft restarts from
 * (RawNode `applied`); entries after it are re-applied through raft's normal path. If the state
 * is older than the latest durable snapshot (a crash between recording a received snapshot and
 * swapping state.db, or a lost state.db tail behind a compacted log), state.db is first restored
 * from the snapshot file. See docs/blockstore.md for the durability argument.
 */

import fs from 'node:fs';
import path from 'node:path';
import { assert } from '../assert.js';
import { CorruptError } from '../errors.js';
import type { Extent, ReadChunk } from '../nbd/backend.js';
import type { ApplyOutcome, MemberAddresses, ReplicaStore } from '../node/replica.js';
import { bootstrapConfState, bootstrapEntry } from '../raft/confchange.js';
import type { ConfChange, ConfState, Entry, NodeId, Ready, SnapshotMetadata } from '../raft/types.js';
import { type LogStoreLimits, SqliteLogStorage, defaultLogStoreLimits, fsyncDirectory } from './log-store.js';
import { BlockStateMachine, type StateStoreLimits, type VolumeRecord, defaultStateStoreLimits } from './state-store.js';

export { SqliteLogStorage } from './log-store.js';
export { BlockStateMachine, blockBytes } from './state-store.js';
export * from './commands.js';

export interface BlockStoreLimits extends LogStoreLimits, StateStoreLimits {
  /** compactionTrailingEntries: entries kept in the log behind a new snapshot (slow followers catch up from them). */
  compactionTrailingEntries: number;
}

export const defaultBlockStoreLimits: BlockStoreLimits = {
  ...defaultLogStoreLimits,
  ...defaultStateStoreLimits,
  compactionTrailingEntries: 1024,
};

export const STATE_DB_FILE = 'state.db';

/** BlockStore: log + state machine + snapshots of one node; the node's ReplicaStore. */
export class BlockStore implements ReplicaStore {
  readonly dir: string;
  readonly limits: BlockStoreLimits;
  readonly logStorage: SqliteLogStorage;
  readonly state: BlockStateMachine;
  private closed = false;

  private constructor(dir: string, limits: BlockStoreLimits) {
    this.dir = dir;
    this.limits = limits;
    assert(Number.isInteger(limits.compactionTrailingEntries) && limits.compactionTrailingEntries >= 0, 'compactionTrailingEntries >= 0');
    // A copy a crash interrupted before its rename is garbage (restoreFrom makes a new one).
    fs.rmSync(path.join(dir, `${STATE_DB_FILE}.incoming`), { force: true });
    this.state = BlockStateMachine.open(path.join(dir, STATE_DB_FILE), limits);
    try {
      this.logStorage = SqliteLogStorage.open(dir, { limits, confStateSource: () => this.state.confState() });
    } catch (error) {
      this.state.close();
      throw error;
    }
    this.recover();
  }

  /** open: opens (creating if needed) the store in `dir` and recovers from a crash. */
  static open(dir: string, options: { limits?: Partial<BlockStoreLimits> } = {}): BlockStore {
    fs.mkdirSync(dir, { recursive: true });
    return new BlockStore(dir, { ...defaultBlockStoreLimits, ...options.limits });
  }

  private recover(): void {
    const snapshot = this.logStorage.snapshot();
    if (snapshot.index > this.state.appliedIndex()) {
      const file = this.logStorage.snapshotFilePath();
      assert(file !== undefined, 'a recorded snapshot has a file');
      this.state.restoreFrom(file, fsyncDirectory);
      if (this.state.appliedIndex() !== snapshot.index) {
        throw new CorruptError(`snapshot ${snapshot.index} holds a state applied to ${this.state.appliedIndex()}`);
      }
    }
    const applied = this.state.appliedIndex();
    if (applied > this.logStorage.lastIndex()) {
      throw new CorruptError(`state.db applied ${applied} but log.db ends at ${this.logStorage.lastIndex()}`);
    }
    if (applied < this.logStorage.firstIndex() - 1) {
      throw new CorruptError(`state.db applied ${applied} but log.db starts at ${this.logStorage.firstIndex()} with no snapshot to cover it`);
    }
  }

  /**
   * bootstrap: makes a fresh store the initial member of a new cluster — the committed bootstrap
   * entry (index 1, confchange.ts) in the log, and its configuration — like MemoryStorage.bootstrap.
   * `members` are the initial members' addresses. Does nothing to a store that has a log.
   */
  bootstrap(voters: NodeId[], learners: NodeId[] = [], members: Map<NodeId, MemberAddresses> = new Map()): void {
    if (this.logStorage.lastIndex() > 0) return;
    assert(this.state.appliedIndex() === 0, 'fresh state');
    this.logStorage.persist({ entries: [bootstrapEntry(voters, learners)], hardState: { term: 0, vote: 0, commit: 1 }, mustSync: true });
    this.state.bootstrapConfState(bootstrapConfState(voters, learners));
    for (const [id, addresses] of members) this.state.setMember(id, addresses);
  }

  // ------------------------------------------------------------------ ReplicaStore

  /** persist: snapshot chunks, snapshot bookkeeping, entries and hard state in one fsynced transaction. */
  persist(ready: Ready): void {
    this.logStorage.persist(ready);
  }

  /**
   * installSnapshot: after persist() recorded a received snapshot (the log now starts behind it),
   * swap state.db for a copy of the snapshot file. Idempotent with crash recovery in open().
   */
  installSnapshot(metadata: SnapshotMetadata): void {
    const current = this.logStorage.snapshot();
    assert(current.index === metadata.index && current.term === metadata.term, 'installSnapshot after persist recorded it');
    if (this.state.appliedIndex() >= metadata.index) return;
    const file = this.logStorage.snapshotFilePath();
    assert(file !== undefined, 'snapshot file present');
    this.state.restoreFrom(file, fsyncDirectory);
    if (this.state.appliedIndex() !== metadata.index) {
      throw new CorruptError(`snapshot ${metadata.index} holds a state applied to ${this.state.appliedIndex()}`);
    }
  }

  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome> {
    return this.state.apply(entries, onConfChange);
  }

  appliedIndex(): number {
    return this.state.appliedIndex();
  }

  /**
   * createSnapshot: snapshot the state at the applied index (VACUUM INTO a temp file, fsync,
   * rename, record in log.db), then compact the log up to `compactionTrailingEntries` behind it.
   * Returns undefined when nothing was applied since the latest snapshot.
   */
  createSnapshot(): SnapshotMetadata | undefined {
    const applied = this.state.appliedIndex();
    if (applied <= this.logStorage.snapshot().index) return undefined;
    const temp = this.logStorage.snapshotTempPath(applied);
    const index = this.state.snapshotInto(temp);
    assert(index === applied, 'snapshot at the applied index');
    const metadata = this.logStorage.recordSnapshotFile(index, this.state.confState(), temp);
    const compactIndex = index - this.limits.compactionTrailingEntries;
    if (compactIndex >= this.logStorage.firstIndex()) this.logStorage.compact(compactIndex);
    return metadata;
  }

  members(): Map<NodeId, MemberAddresses> {
    return this.state.members();
  }

  setMember(id: NodeId, addresses: MemberAddresses | undefined): void {
    this.state.setMember(id, addresses);
  }

  // ------------------------------------------------------------------ reads for the node

  read(volume: string, offset: number, length: number): ReadChunk[] {
    return this.state.read(volume, offset, length);
  }

  blockStatus(volume: string, offset: number, length: number): Extent[] {
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
    this.logStorage.close();
    this.state.close();
  }
}
