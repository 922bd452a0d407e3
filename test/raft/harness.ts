/**
 * harness: a deterministic in-memory cluster of RawNodes for paper tests and scripted
 * interaction tests. Messages sit in a queue until delivered; links can be cut one way or both;
 * every Ready is handled exactly as the contract on `Ready` says (persist, send, apply, advance).
 */

import { decodeConfChange } from '../../src/raft/confchange.js';
import type { RaftConfigInput } from '../../src/raft/config.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  type Message,
  type NodeId,
  type ReadState,
} from '../../src/raft/types.js';

const decoder = new TextDecoder();
const encoder = new TextEncoder();

export interface TestNode {
  id: NodeId;
  raw: RawNode;
  storage: MemoryStorage;
  applied: Entry[];
  appliedIndex: number;
  confState: ConfState;
  readStates: ReadState[];
  /** state machine: concatenation of applied normal entry payloads, for snapshots. */
  data: string[];
  /** snapshotsWanted: Readys that carried snapshotWanted. */
  snapshotsWanted: number;
}

export type NodeOptions = Partial<Omit<RaftConfigInput, 'id' | 'storage' | 'random'>>;

export class Cluster {
  readonly nodes = new Map<NodeId, TestNode>();
  queue: Message[] = [];
  private readonly cut = new Set<string>();
  readonly log: string[] = [];
  private seed: number;
  nodeOptions: NodeOptions;
  /** snapshotsOnDemand: a node whose Ready wants a snapshot makes one at its applied index (as the Replica does). */
  snapshotsOnDemand = false;

  constructor(options: { seed?: number; nodeOptions?: NodeOptions } = {}) {
    this.seed = options.seed ?? 1;
    this.nodeOptions = options.nodeOptions ?? {};
  }

  /** addNodes: create nodes with the given ids; voters is the initial configuration (bootstrap). */
  addNodes(ids: NodeId[], voters: NodeId[], learners: NodeId[] = [], options: NodeOptions = {}): void {
    // Initial members start with the bootstrap entry applied: their state already holds that config.
    for (const id of ids) this.startNode(id, MemoryStorage.bootstrap(voters, learners), 1, options);
  }

  /** addEmptyNode: a node that knows no configuration (it joins through the leader's messages). */
  addEmptyNode(id: NodeId, options: NodeOptions = {}): void {
    this.startNode(id, new MemoryStorage(), 0, options);
  }

  startNode(id: NodeId, storage: MemoryStorage, applied: number, options: NodeOptions = {}): TestNode {
    const raw = new RawNode({
      id,
      storage,
      random: new SeededRandom(this.seed * 1000 + id),
      electionTimeoutTicks: 10,
      heartbeatIntervalTicks: 1,
      applied,
      ...this.nodeOptions,
      ...options,
    });
    const node: TestNode = {
      id,
      raw,
      storage,
      applied: [],
      appliedIndex: applied,
      confState: storage.initialState().confState,
      readStates: [],
      data: [],
      snapshotsWanted: 0,
    };
    this.nodes.set(id, node);
    return node;
  }

  /** restart: crash and restart a node from its durable storage (everything persisted survives). */
  restart(id: NodeId, options: NodeOptions = {}): TestNode {
    const node = this.node(id);
    this.queue = this.queue.filter((m) => m.to !== id);
    const restarted = this.startNode(id, node.storage, node.appliedIndex, options);
    restarted.applied = node.applied;
    restarted.data = node.data;
    restarted.confState = node.confState;
    return restarted;
  }

  node(id: NodeId): TestNode {
    const node = this.nodes.get(id);
    if (node === undefined) throw new Error(`no node ${id}`);
    return node;
  }

  leader(): TestNode | undefined {
    let best: TestNode | undefined;
    for (const node of this.nodes.values()) {
      const status = node.raw.status();
      if (status.role === 'leader' && (best === undefined || status.term > best.raw.status().term)) best = node;
    }
    return best;
  }

  // ---------------------------------------------------------------- network

  cutLink(from: NodeId, to: NodeId): void {
    this.cut.add(`${from}>${to}`);
  }

  /** isolate: cut every link to and from `id`. */
  isolate(id: NodeId): void {
    for (const other of this.nodes.keys()) {
      if (other === id) continue;
      this.cutLink(id, other);
      this.cutLink(other, id);
    }
  }

  /** partition: cut every link between the groups. */
  partition(groups: NodeId[][]): void {
    for (const a of groups) for (const b of groups) if (a !== b) for (const x of a) for (const y of b) this.cutLink(x, y);
  }

  heal(): void {
    this.cut.clear();
  }

  private blocked(m: Message): boolean {
    return this.cut.has(`${m.from}>${m.to}`);
  }

  // ---------------------------------------------------------------- driving

  /** handleReady: process one Ready of a node if it has one. Returns whether it did anything. */
  handleReady(id: NodeId): boolean {
    const node = this.node(id);
    if (!node.raw.hasReady()) return false;
    const rd = node.raw.ready();
    if (rd.softState !== undefined) this.log.push(`${id}: ${rd.softState.role} (leader ${rd.softState.leader})`);
    for (const m of rd.messagesEarly) this.queue.push(m);
    for (const chunk of rd.snapshotChunks) node.storage.stageSnapshotChunk(chunk.metadata, chunk.offset, chunk.data);
    if (rd.snapshot !== undefined) {
      const data = node.storage.takeStagedSnapshot(rd.snapshot);
      node.storage.applySnapshot(rd.snapshot, data);
      node.data = JSON.parse(decoder.decode(data)) as string[];
      node.appliedIndex = rd.snapshot.index;
      node.confState = structuredClone(rd.snapshot.confState);
      this.log.push(`${id}: installed snapshot ${rd.snapshot.index}`);
    }
    node.storage.append(rd.entries);
    if (rd.hardState !== undefined) node.storage.setHardState(rd.hardState);
    for (const m of rd.messages) this.queue.push(m);
    for (const entry of rd.committedEntries) {
      if (entry.type === EntryType.ConfChange) {
        node.confState = node.raw.applyConfChange(decodeConfChange(entry.data));
        node.storage.confState = structuredClone(node.confState);
      } else if (entry.data.length > 0) {
        node.data.push(decoder.decode(entry.data));
      }
      node.applied.push(entry);
      node.appliedIndex = entry.index;
    }
    for (const rs of rd.readStates) node.readStates.push(rs);
    if (rd.snapshotWanted === true) {
      node.snapshotsWanted += 1;
      if (this.snapshotsOnDemand) node.storage.createSnapshot(node.appliedIndex, node.confState, encoder.encode(JSON.stringify(node.data)));
    }
    node.raw.advance();
    return true;
  }

  /** deliver: deliver queued messages (optionally only those to/from a node); returns the count. */
  deliver(filter?: (m: Message) => boolean): number {
    const pending = this.queue;
    this.queue = [];
    let delivered = 0;
    for (const m of pending) {
      if (filter !== undefined && !filter(m)) {
        this.queue.push(m);
        continue;
      }
      if (this.blocked(m)) continue; // dropped
      const target = this.nodes.get(m.to);
      if (target === undefined) continue;
      target.raw.step(m);
      delivered++;
    }
    return delivered;
  }

  /** stabilize: handle Readys and deliver messages until nothing moves. */
  stabilize(rounds = 1000): void {
    for (let i = 0; i < rounds; i++) {
      let moved = false;
      for (const id of [...this.nodes.keys()].sort((a, b) => a - b)) while (this.handleReady(id)) moved = true;
      if (this.deliver() > 0) moved = true;
      if (this.queue.length > 0) moved = true;
      if (!moved) return;
    }
    throw new Error('cluster did not stabilize');
  }

  tick(id: NodeId, count = 1): void {
    for (let i = 0; i < count; i++) this.node(id).raw.tick();
  }

  /** tickAll: tick every node once and stabilize, `count` times. */
  tickAll(count = 1): void {
    for (let i = 0; i < count; i++) {
      for (const node of this.nodes.values()) node.raw.tick();
      this.stabilize();
    }
  }

  /** tickElection: tick a node past any randomized election timeout. */
  tickElection(id: NodeId): void {
    const timeout = this.node(id).raw.raft.config.electionTimeoutTicks;
    this.tick(id, 2 * timeout);
  }

  campaign(id: NodeId): void {
    this.node(id).raw.campaign();
    this.stabilize();
  }

  propose(id: NodeId, text: string): number {
    const index = this.node(id).raw.propose(encoder.encode(text));
    this.stabilize();
    return index;
  }

  proposeConfChange(id: NodeId, cc: ConfChange): number {
    const index = this.node(id).raw.proposeConfChange(cc);
    this.stabilize();
    return index;
  }

  /** compact: node snapshots its state at its applied index and compacts its log behind it. */
  compact(id: NodeId, index?: number): void {
    const node = this.node(id);
    const at = index ?? node.appliedIndex;
    const upto = node.applied.filter((e) => e.index <= at);
    void upto;
    node.storage.createSnapshot(at, node.confState, encoder.encode(JSON.stringify(node.data)));
    node.storage.compact(at);
  }

  /**
   * compactLog: the node drops its log up to `index` (default: its applied index) WITHOUT a
   * snapshot, as a node that compacts behind its durable state machine and makes snapshots on
   * demand does (the harness's state machine is in memory and survives a restart).
   */
  compactLog(id: NodeId, index?: number): void {
    const node = this.node(id);
    node.storage.compact(index ?? node.appliedIndex, node.appliedIndex);
  }

  /** appliedData: what a node's state machine holds. */
  appliedData(id: NodeId): string[] {
    return this.node(id).data;
  }
}

export function text(data: Uint8Array): string {
  return decoder.decode(data);
}
export function bytes(value: string): Uint8Array {
  return encoder.encode(value);
}

// ---------------------------------------------------------------- helpers of the paper tests

/** cluster: `size` voters with ids 1..size. */
export function cluster(size: number, options: NodeOptions = {}): Cluster {
  const ids = Array.from({ length: size }, (_, i) => i + 1);
  const c = new Cluster({ nodeOptions: options });
  c.addNodes(ids, ids);
  return c;
}

/** outbox: handle every Ready of `id` and take the messages it sent out of the queue. */
export function outbox(c: Cluster, id: NodeId): Message[] {
  while (c.handleReady(id)) {}
  const mine = c.queue.filter((m) => m.from === id);
  c.queue = c.queue.filter((m) => m.from !== id);
  return mine;
}

/** run: like stabilize, but every message is shown to `allow` and dropped when it says false. */
export function run(c: Cluster, allow: (m: Message) => boolean = () => true): void {
  for (let round = 0; round < 1000; round++) {
    let moved = false;
    for (const id of [...c.nodes.keys()].sort((a, b) => a - b)) while (c.handleReady(id)) moved = true;
    c.queue = c.queue.filter(allow);
    if (c.deliver() > 0) moved = true;
    if (!moved) return;
  }
  throw new Error('run did not settle');
}

/** tickRun: tick every node once then run, `count` times. */
export function tickRun(c: Cluster, count: number, allow?: (m: Message) => boolean): void {
  for (let i = 0; i < count; i++) {
    for (const node of c.nodes.values()) node.raw.tick();
    run(c, allow);
  }
}
