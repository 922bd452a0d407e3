/**
 * memory-store: MemoryReplicaStore, an in-memory ReplicaStore (src/node/replica.ts) for the seeded
 * simulator, with a crash model.
 *
 * What is durable: the log (a MemoryStorage: entries, hard state, snapshot, staged snapshot
 * chunks) holds exactly what `persist` made durable; the state machine is applied in memory and
 * its durable image (`machineDurable`) is saved after an apply batch only when the seed says so
 * (`syncMachine`), so it may lag the applied index — as state.db's NORMAL sync may — and a
 * restarted node replays the log from there. `crashImage()` is what a restarted process finds:
 * the durable log, and the durable state machine (or the newer snapshot in the log).
 *
 * Two kinds of persist, as the ReplicaStore contract allows (src/blockstore/replica-store.ts):
 *
 * - Synchronous (no `persistAsync` hook; SQLite's fsynced transaction that blocks the event loop):
 *   a crash can strike (a) between two scheduler callbacks — after a leader's messagesEarly went
 *   out and before its persist ran, which Replica splits into two turns exactly so the fsyncs
 *   overlap — or (b) during the fsync itself: `beforePersist` throwing SimCrash. Nothing of that
 *   Ready becomes durable and nothing after the persist (messages that promise durability — a
 *   follower's ack, a vote — the apply) ever runs. The write is atomic (one transaction).
 * - Asynchronous (`persistAsync` set; a log whose fsync runs off the event loop): persist returns
 *   a promise, and the write becomes durable — enters the log — only when the simulator calls
 *   `complete` from an I/O callback of the node, after a seeded delay; the promise resolves then.
 *   Until that moment the write is in flight: a crash of the node (any crash: its pending events
 *   die with it) loses it, and the simulator may also crash the node at the completion itself
 *   (`complete` is never called) after `tear` made a prefix of the Ready's entries durable (a
 *   torn write of the log: the contract allows a prefix of the entries without the hard state).
 *   `complete(error)` rejects the promise instead (an fsync that failed).
 *
 * The state machine is the simulator's register machine: a map of keys deduplicated by a
 * SessionTable, driven by JSON commands carried as entry data.
 */

import { CorruptError, ErrorCode } from '../../src/errors.js';
import type { ApplyOutcome, MemberAddresses, ReplicaStore } from '../../src/node/replica.js';
// The one import of the session table in test/sim (it may move to another layer).
import { SessionTable, SessionVerdict } from '../../src/blockstore/sessions.js';
import { type CompactionHolds, compactionPoint } from '../../src/blockstore/replica-store.js';

export { SessionVerdict };
import { MemoryStorage } from '../../src/raft/storage.js';
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  type NodeId,
  type Ready,
  type SnapshotMetadata,
  emptyConfState,
} from '../../src/raft/types.js';
import { decodeConfChange } from '../../src/raft/confchange.js';
import { hashString } from './checkers.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Command: one client write of the register machine (the entry data). */
export interface Command {
  sessionId: string;
  sequence: number;
  key: string;
  value: string;
}

export function encodeCommand(command: Command): Uint8Array {
  return encoder.encode(JSON.stringify(command));
}

interface MachineImage {
  applied: number;
  kv: Array<[string, string]>;
  sessions: Array<{ sessionId: string; ackedBelow: number; results: Array<{ sequence: number }>; lastSequence: number; lastIndex: number }>;
  evicted: string[];
  confState: ConfState;
  members: Array<[NodeId, MemberAddresses]>;
}

/** KvMachine: the replicated state machine — a map of registers, deduplicated by a SessionTable. */
export class KvMachine {
  applied = 0;
  kv = new Map<string, string>();
  sessions = new SessionTable({ sessionsMax: 16, resultsPerSessionMax: 8 });
  confState: ConfState = emptyConfState();
  members = new Map<NodeId, MemberAddresses>();

  image(): MachineImage {
    return {
      applied: this.applied,
      kv: [...this.kv.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)),
      sessions: this.sessions.entries().map((r) => ({
        sessionId: r.sessionId,
        ackedBelow: r.ackedBelow,
        results: r.results.map((x) => ({ sequence: x.sequence })),
        lastSequence: r.lastSequence,
        lastIndex: r.lastIndex,
      })),
      evicted: this.sessions.evictedIds(),
      confState: this.confState,
      members: [...this.members.entries()].sort((a, b) => a[0] - b[0]),
    };
  }

  serialize(): Uint8Array {
    return encoder.encode(JSON.stringify(this.image()));
  }

  /**
   * stateHash: hash of everything but the applied index (the checker keys by index) and the
   * address book (a member that joined later never saw the founders' addresses in a ConfChange).
   */
  stateHash(): number {
    const image = this.image();
    return hashString(JSON.stringify([image.kv, image.sessions, image.evicted, image.confState]));
  }

  /** lastSequence: the highest sequence of `sessionId` applied (0 if none). */
  lastSequence(sessionId: string): number {
    return this.sessions.entries().find((s) => s.sessionId === sessionId)?.lastSequence ?? 0;
  }

  static restore(data: Uint8Array): KvMachine {
    const image = JSON.parse(decoder.decode(data)) as MachineImage;
    const machine = new KvMachine();
    machine.applied = image.applied;
    machine.kv = new Map(image.kv);
    machine.sessions.restore(
      image.sessions.map((s) => ({
        sessionId: s.sessionId,
        ackedBelow: s.ackedBelow,
        results: s.results.map((x) => ({ sequence: x.sequence, result: new Uint8Array(0) })),
        lastSequence: s.lastSequence,
        lastResult: new Uint8Array(0),
        lastIndex: s.lastIndex,
      })),
      image.evicted,
    );
    machine.confState = image.confState;
    machine.members = new Map(image.members);
    return machine;
  }
}

/** StoreHooks: how the simulator watches and steers one store (all optional). */
export interface StoreHooks {
  /** beforePersist: called before a Ready's writes; may throw SimCrash (the fsync never finished) or block the node (fsync time). */
  beforePersist?(ready: Ready): void;
  /**
   * persistAsync: when set, persist is asynchronous (see the file comment): the hook arranges for
   * `complete` to be called once the write is durable (or with an error: it failed), and may call
   * `tear(n)` first to make only the first n entries durable before it crashes the node.
   */
  persistAsync?(ready: Ready, complete: (error?: Error) => void, tear: (entries: number) => void): void;
  /** persisted: `entry` is durable; prevTerm is the term at index - 1 in the durable log (-1 if unknown). */
  persisted?(entry: Entry, prevTerm: number): void;
  /** applied: `entry` was applied; the machine shows the state after it. */
  applied?(entry: Entry, machine: KvMachine, verdict: SessionVerdict | undefined, command: Command | undefined): void;
  /** installed: a received snapshot replaced the state machine. */
  installed?(metadata: SnapshotMetadata, machine: KvMachine): void;
  /** snapshotted: the node took its own snapshot at `index` and compacted to `compactIndex`. */
  snapshotted?(index: number, compactIndex: number): void;
  /** compacted: the node compacted its log behind its durable state (compactLog) to `compactIndex`. */
  compacted?(compactIndex: number): void;
  /** syncMachine: after an apply batch, whether the state machine's image becomes durable now. */
  syncMachine?(): boolean;
  /** retainEntriesMax: compactLog's budget for lagging followers (BlockStoreLimits.logRetainBytesMax, in entries); 0 by default. */
  retainEntriesMax?(): number;
  /** compactionLag: entries kept behind a new snapshot when compacting. */
  compactionLag?(): number;
}

/** MemoryReplicaStore: see the file comment. */
export class MemoryReplicaStore implements ReplicaStore {
  readonly logStorage: MemoryStorage;
  machine: KvMachine;
  /** machineDurable: the state machine as last made durable. */
  private machineDurable: Uint8Array;
  hooks: StoreHooks = {};

  constructor(logStorage: MemoryStorage, machine: KvMachine, machineDurable?: Uint8Array) {
    this.logStorage = logStorage;
    this.machine = machine;
    this.machineDurable = machineDurable ?? machine.serialize();
    logStorage.confState = structuredClone(machine.confState);
  }

  /** bootstrap: the store of a founding member (the committed bootstrap entry at index 1). */
  static bootstrap(voters: NodeId[], learners: NodeId[], members: Map<NodeId, MemberAddresses>): MemoryReplicaStore {
    const storage = MemoryStorage.bootstrap(voters, learners);
    const machine = new KvMachine();
    machine.applied = 1;
    machine.confState = structuredClone(storage.confState);
    machine.members = new Map(members);
    return new MemoryReplicaStore(storage, machine);
  }

  /** empty: the store of a brand-new machine that joins later. */
  static empty(): MemoryReplicaStore {
    return new MemoryReplicaStore(new MemoryStorage(), new KvMachine());
  }

  /** crashImage: what a restarted process finds — the durable log and the durable state machine (or the newer snapshot). */
  crashImage(): MemoryReplicaStore {
    const storage = this.logStorage.clone();
    let machine = KvMachine.restore(this.machineDurable);
    const snapshot = storage.snapshot();
    if (snapshot.index > machine.applied) machine = KvMachine.restore(storage.snapshotBytes());
    // As BlockStore's recover: the state machine may be ahead of the durable commit index (Replica
    // applies entries that were durable here before the hard state committing them is, and a
    // commit-only hard state is not fsynced); it only ever applies committed entries, so the
    // commit index is raised to the applied one.
    if (machine.applied > storage.lastIndex()) throw new CorruptError(`state applied ${machine.applied} but the log ends at ${storage.lastIndex()}`);
    // As BlockStore's recover: a log compacted beyond the durable state (compactLog's order broken) cannot be replayed.
    if (machine.applied < storage.firstIndex() - 1) throw new CorruptError(`state applied ${machine.applied} but the log starts at ${storage.firstIndex()}`);
    if (machine.applied > storage.hardState.commit) storage.setHardState({ ...storage.hardState, commit: machine.applied });
    return new MemoryReplicaStore(storage, machine, machine.serialize());
  }

  persist(ready: Ready): void | Promise<void> {
    const writes = ready.entries.length > 0 || ready.hardState !== undefined || ready.snapshot !== undefined || ready.snapshotChunks.length > 0;
    if (!writes) return;
    this.hooks.beforePersist?.(ready);
    const persistAsync = this.hooks.persistAsync;
    if (persistAsync === undefined) {
      this.write(ready);
      return;
    }
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const complete = (error?: Error) => {
        if (settled) return;
        settled = true;
        if (error !== undefined) {
          reject(error);
          return;
        }
        this.write(ready);
        resolve();
      };
      const tear = (entries: number) => {
        if (settled || entries <= 0) return;
        settled = true;
        this.write({ ...ready, hardState: undefined, entries: ready.entries.slice(0, entries) });
      };
      persistAsync(ready, complete, tear);
    });
  }

  /** write: the Ready's writes enter the durable log (one atomic transaction). */
  private write(ready: Ready): void {
    const storage = this.logStorage;
    for (const chunk of ready.snapshotChunks) storage.stageSnapshotChunk(chunk.metadata, chunk.offset, chunk.data);
    if (ready.snapshot !== undefined) storage.applySnapshot(ready.snapshot, storage.takeStagedSnapshot(ready.snapshot));
    if (ready.entries.length > 0) {
      storage.append(ready.entries);
      for (const entry of ready.entries) this.hooks.persisted?.(entry, termOr(storage, entry.index - 1));
    }
    if (ready.hardState !== undefined) storage.setHardState(ready.hardState);
  }

  installSnapshot(metadata: SnapshotMetadata): void {
    if (this.machine.applied >= metadata.index) return;
    const machine = KvMachine.restore(this.logStorage.snapshotBytes());
    if (machine.applied !== metadata.index) throw new CorruptError(`snapshot ${metadata.index} holds a state applied to ${machine.applied}`);
    machine.confState = structuredClone(metadata.confState);
    this.machine = machine;
    this.machineDurable = machine.serialize();
    this.logStorage.confState = structuredClone(machine.confState);
    this.hooks.installed?.(metadata, machine);
  }

  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome> {
    const outcomes = new Map<number, ApplyOutcome>();
    const machine = this.machine;
    for (const entry of entries) {
      if (entry.index <= machine.applied) continue; // replay below a restored state
      if (entry.index !== machine.applied + 1) throw new CorruptError(`apply of ${entry.index} after ${machine.applied}`);
      let verdict: SessionVerdict | undefined;
      let command: Command | undefined;
      if (entry.type === EntryType.ConfChange) {
        machine.confState = structuredClone(onConfChange(decodeConfChange(entry.data), entry.index));
        this.logStorage.confState = structuredClone(machine.confState);
      } else if (entry.data.length > 0) {
        command = JSON.parse(decoder.decode(entry.data)) as Command;
        verdict = machine.sessions.check(command.sessionId, command.sequence);
        if (verdict === SessionVerdict.Apply) {
          machine.kv.set(command.key, command.value);
          machine.sessions.record(command.sessionId, command.sequence, entry.index, new Uint8Array(0));
        }
        outcomes.set(
          entry.index,
          verdict === SessionVerdict.Apply || verdict === SessionVerdict.Duplicate
            ? { ok: true, value: encoder.encode(verdict) }
            : { ok: false, code: ErrorCode.SessionExpired, message: `session ${command.sessionId} request ${command.sequence}: ${verdict}` },
        );
      }
      machine.applied = entry.index;
      this.hooks.applied?.(entry, machine, verdict, command);
    }
    if (this.hooks.syncMachine?.() ?? true) this.machineDurable = machine.serialize();
    return outcomes;
  }

  appliedIndex(): number {
    return this.machine.applied;
  }

  createSnapshot(): SnapshotMetadata | undefined {
    const storage = this.logStorage;
    const applied = this.machine.applied;
    if (applied <= storage.snapshot().index || applied > storage.lastIndex()) return undefined;
    const metadata = storage.createSnapshot(applied, this.machine.confState, this.machine.serialize());
    // As BlockStore's adoptSnapshot: compact behind the snapshot unless the log already starts later.
    const compactIndex = applied - (this.hooks.compactionLag?.() ?? 0);
    if (compactIndex >= storage.firstIndex()) storage.compact(compactIndex);
    this.hooks.snapshotted?.(applied, Math.max(compactIndex, storage.firstIndex() - 1));
    return metadata;
  }

  /**
   * compactLog: BlockStore.compactLog's model — the state machine's image is made durable (its
   * fdatasync), then the log is compacted behind it, keeping compactionLag entries, with no
   * snapshot: a follower that needs the dropped entries gets a snapshot made on demand.
   */
  compactLog(holds: () => CompactionHolds): Promise<number | undefined> {
    const storage = this.logStorage;
    const applied = this.machine.applied;
    // BlockStore's rule, with the retention budget counted in entries.
    const compactIndex = Math.min(
      compactionPoint(holds(), applied, this.hooks.compactionLag?.() ?? 0, storage.firstIndex(), (i) => storage.lastIndex() - i + 1, this.hooks.retainEntriesMax?.() ?? 0),
      storage.lastIndex(),
    );
    if (compactIndex < storage.firstIndex()) return Promise.resolve(undefined);
    this.machineDurable = this.machine.serialize();
    storage.compact(compactIndex, applied);
    this.hooks.compacted?.(compactIndex);
    return Promise.resolve(compactIndex);
  }

  members(): Map<NodeId, MemberAddresses> {
    return new Map(this.machine.members);
  }

  setMember(id: NodeId, addresses: MemberAddresses | undefined): void {
    if (addresses === undefined) this.machine.members.delete(id);
    else this.machine.members.set(id, addresses);
  }
}

function termOr(storage: MemoryStorage, index: number): number {
  try {
    return storage.term(index);
  } catch {
    return -1;
  }
}
