/**
 * replica-fixture: real Replicas on a hand-driven world, for unit tests of the Replica runtime.
 *
 * - World: one virtual monotonic clock (milliseconds). `step()` advances it by 1 ms and, for every
 *   node that is not paused, fires its due timers, then drains its queued I/O callbacks and its
 *   `soon` callbacks. A paused node (SIGSTOP) runs nothing; its clock keeps going (as
 *   performance.now() does) and peer messages and client calls queue up for it. `resume()` runs
 *   what Node runs first after SIGCONT: the queued I/O callbacks and their immediates, BEFORE any
 *   timer (the timers fire on the next step).
 * - WorldTransport: the peer transport; a message is queued as an I/O callback of its target at
 *   the next step; `cut(a, b)` drops messages both ways.
 * - MemReplicaStore: a ReplicaStore over MemoryStorage with a key=value state machine.
 *
 * Nothing here uses a global timer, so a test is deterministic for a given seed.
 */

import { assert } from '../../src/assert.js';
import { type CompactionHolds, compactionPoint } from '../../src/blockstore/replica-store.js';
import { type MemberAddresses, Replica, type ReplicaLimits, type ReplicaStore, type ReplicaTestingKnobs, type ApplyOutcome } from '../../src/node/replica.js';
import type { Scheduler, Timer } from '../../src/node/clock.js';
import { decodeConfChange } from '../../src/raft/confchange.js';
import { SeededRandom } from '../../src/raft/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { type ConfChange, type ConfState, type Entry, EntryType, type Message, type NodeId, type Ready, type SnapshotMetadata } from '../../src/raft/types.js';
import type { Transport } from '../../src/transport/transport.js';

const encoder = new TextEncoder();

/** microtasks: let every promise reaction queued by a callback run, as Node does after each callback. */
function microtasks(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
const decoder = new TextDecoder();

interface WorldTimer {
  at: number;
  every: number | undefined;
  fn: () => void;
  cancelled: boolean;
}

/** NodeScheduler: the Scheduler of one node of a World. */
export class NodeScheduler implements Scheduler {
  paused = false;
  /** callbacks: how many callbacks (timers, I/O, immediates) ran so far: the index of the current turn. */
  callbacks = 0;
  readonly io: (() => void)[] = [];
  private immediates: (() => void)[] = [];
  private timers: WorldTimer[] = [];
  constructor(private readonly world: World) {}

  now(): number {
    return this.world.time;
  }
  soon(fn: () => void): void {
    this.immediates.push(fn);
  }
  after(ms: number, fn: () => void): Timer {
    const timer: WorldTimer = { at: this.world.time + Math.max(1, ms), every: undefined, fn, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }
  every(ms: number, fn: () => void): Timer {
    const timer: WorldTimer = { at: this.world.time + Math.max(1, ms), every: Math.max(1, ms), fn, cancelled: false };
    this.timers.push(timer);
    return { cancel: () => (timer.cancelled = true) };
  }

  /** runTimers: fire the due timers (a repeating one once, however late: as setInterval does). */
  async runTimers(): Promise<void> {
    const now = this.world.time;
    const due = this.timers.filter((t) => !t.cancelled && t.at <= now);
    for (const timer of due) {
      if (timer.cancelled) continue;
      if (timer.every !== undefined) timer.at = now + timer.every;
      else timer.cancelled = true;
      this.callbacks++;
      timer.fn();
      await microtasks();
    }
    this.timers = this.timers.filter((t) => !t.cancelled);
  }

  /** drain: I/O callbacks, then immediates, until both are empty (bounded). */
  async drain(): Promise<void> {
    for (let round = 0; round < 10_000; round++) {
      if (this.io.length === 0 && this.immediates.length === 0) return;
      const io = this.io.splice(0);
      for (const fn of io) {
        this.callbacks++;
        fn();
        await microtasks();
      }
      const immediates = this.immediates;
      this.immediates = [];
      for (const fn of immediates) {
        this.callbacks++;
        fn();
        await microtasks();
      }
    }
    assert(false, 'node scheduler: drain did not settle');
  }
}

/** World: the virtual time and network of a set of nodes. */
export class World {
  time = 1000;
  readonly schedulers = new Map<NodeId, NodeScheduler>();
  readonly transports = new Map<NodeId, WorldTransport>();
  private readonly inflight: { to: NodeId; m: Message }[] = [];
  private readonly cuts = new Set<string>();

  scheduler(id: NodeId): NodeScheduler {
    let s = this.schedulers.get(id);
    if (s === undefined) {
      s = new NodeScheduler(this);
      this.schedulers.set(id, s);
    }
    return s;
  }

  transport(id: NodeId): WorldTransport {
    const t = new WorldTransport(this, id);
    this.transports.set(id, t);
    return t;
  }

  cut(a: NodeId, b: NodeId): void {
    this.cuts.add(`${a}-${b}`);
    this.cuts.add(`${b}-${a}`);
  }
  heal(): void {
    this.cuts.clear();
  }

  send(m: Message): void {
    if (this.cuts.has(`${m.from}-${m.to}`)) return;
    this.inflight.push({ to: m.to, m });
  }

  /** step: advance 1 ms; deliver messages sent before; run every unpaused node. */
  async step(): Promise<void> {
    this.time += 1;
    for (const { to, m } of this.inflight.splice(0)) {
      const target = this.transports.get(to);
      if (target === undefined) continue;
      this.scheduler(to).io.push(() => target.deliver(m));
    }
    for (const s of this.schedulers.values()) {
      if (s.paused) continue;
      await s.runTimers();
      await s.drain();
    }
  }

  async run(ms: number): Promise<void> {
    for (let i = 0; i < ms; i++) await this.step();
  }

  /** runUntil: step until `condition()` holds; false if it did not within `ms`. */
  async runUntil(condition: () => boolean, ms: number): Promise<boolean> {
    for (let i = 0; i < ms; i++) {
      if (condition()) return true;
      await this.step();
    }
    return condition();
  }

  pause(id: NodeId): void {
    this.scheduler(id).paused = true;
  }

  /** resume: SIGCONT — the queued I/O and its immediates run now, the timers at the next step. */
  async resume(id: NodeId): Promise<void> {
    const s = this.scheduler(id);
    s.paused = false;
    await s.drain();
  }
}

export class WorldTransport implements Transport {
  private handler: (m: Message) => void = () => {};
  private readonly peers = new Set<NodeId>();
  constructor(
    private readonly world: World,
    readonly id: NodeId,
  ) {}
  deliver(m: Message): void {
    this.handler(m);
  }
  async start(): Promise<void> {}
  send(messages: Message[]): void {
    for (const m of messages) if (this.peers.has(m.to)) this.world.send(m);
  }
  onMessage(handler: (m: Message) => void): void {
    this.handler = handler;
  }
  onUnreachable(): void {}
  addPeer(id: NodeId): void {
    if (id !== this.id) this.peers.add(id);
  }
  removePeer(id: NodeId): void {
    this.peers.delete(id);
  }
  address(): string {
    return `world:${this.id}`;
  }
  async close(): Promise<void> {}
}

/** MemReplicaStore: ReplicaStore in memory; the state machine is a map of "key=value" writes. */
export class MemReplicaStore implements ReplicaStore {
  readonly logStorage: MemoryStorage;
  readonly kv = new Map<string, string>();
  private applied: number;
  private readonly memberMap: Map<NodeId, MemberAddresses>;
  snapshotsCreated = 0;
  /** compactions: compactLog calls that compacted (behind the applied state: this store's state is always "durable"). */
  compactions = 0;
  /** compactLog: ReplicaStore.compactLog; a test deletes it to see the replica's fallback (a periodic snapshot). */
  /** retain: whether compactLog keeps the log for lagging followers (retainFor; an unlimited budget here). */
  retain = true;
  /** retainRequests: the holds compactLog was given. */
  readonly retainRequests: CompactionHolds['retainFor'][] = [];
  compactLog?: (holds: () => CompactionHolds) => Promise<number | undefined> = (holds) => {
    const h = holds();
    this.retainRequests.push(h.retainFor);
    const index = compactionPoint(h, this.applied, 0, this.logStorage.firstIndex(), () => 1, this.retain ? Infinity : 0);
    if (index < this.logStorage.firstIndex()) return Promise.resolve(undefined);
    this.logStorage.compact(index, this.applied);
    this.compactions++;
    return Promise.resolve(index);
  };
  /** applyCalls: each apply() call, with the scheduler callback it ran in (tests of per-turn bounds). */
  readonly applyCalls: { turn: number; entries: number; bytes: number }[] = [];
  /** turn: the current scheduler callback (set by cluster()). */
  turn: () => number = () => 0;
  /** failApply: when set, apply() throws it (tests of a corrupt state). */
  failApply: Error | undefined;
  /** applyCost: the store's measure of apply work per entry (ReplicaStore.applyCost), when a test sets one. */
  applyCost?: (entry: Entry) => number;

  constructor(voters: NodeId[]) {
    this.logStorage = MemoryStorage.bootstrap(voters);
    this.applied = 1;
    this.memberMap = new Map(voters.map((id) => [id, { raft: `world:${id}`, admin: `admin:${id}`, nbd: `nbd:${id}` }]));
  }

  persist(ready: Ready): void {
    assert(ready.snapshotChunks.length === 0 && ready.snapshot === undefined, 'MemReplicaStore does not receive snapshots');
    this.logStorage.append(ready.entries);
    if (ready.hardState !== undefined) this.logStorage.setHardState(ready.hardState);
  }

  installSnapshot(_metadata: SnapshotMetadata): void {
    assert(false, 'MemReplicaStore does not receive snapshots');
  }

  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome> {
    if (this.failApply !== undefined) throw this.failApply;
    this.applyCalls.push({ turn: this.turn(), entries: entries.length, bytes: entries.reduce((n, e) => n + e.data.length, 0) });
    const outcomes = new Map<number, ApplyOutcome>();
    for (const entry of entries) {
      assert(entry.index === this.applied + 1, `apply ${entry.index} after ${this.applied}`);
      this.applied = entry.index;
      if (entry.type === EntryType.ConfChange) {
        this.logStorage.confState = onConfChange(decodeConfChange(entry.data), entry.index);
        continue;
      }
      if (entry.data.length === 0) continue;
      const text = decoder.decode(entry.data);
      const eq = text.indexOf('=');
      this.kv.set(text.slice(0, eq), text.slice(eq + 1));
      outcomes.set(entry.index, { ok: true, value: encoder.encode(`applied ${entry.index}`) });
    }
    return outcomes;
  }

  appliedIndex(): number {
    return this.applied;
  }

  createSnapshot(): SnapshotMetadata | undefined {
    this.snapshotsCreated++;
    const data = encoder.encode(JSON.stringify([...this.kv]));
    const metadata = this.logStorage.createSnapshot(this.applied, this.logStorage.confState, data);
    this.logStorage.compact(this.applied);
    return metadata;
  }

  members(): Map<NodeId, MemberAddresses> {
    return this.memberMap;
  }
  setMember(id: NodeId, addresses: MemberAddresses | undefined): void {
    if (addresses === undefined) this.memberMap.delete(id);
    else this.memberMap.set(id, addresses);
  }
}

export interface Cluster {
  world: World;
  replicas: Map<NodeId, Replica>;
  stores: Map<NodeId, MemReplicaStore>;
}

/** cluster: `size` started Replicas on one World. */
export function cluster(
  size: number,
  options: { seed?: number; limits?: Partial<ReplicaLimits>; testing?: ReplicaTestingKnobs; applyCost?: (entry: Entry) => number } = {},
): Cluster {
  const world = new World();
  const ids = Array.from({ length: size }, (_, i) => i + 1);
  const replicas = new Map<NodeId, Replica>();
  const stores = new Map<NodeId, MemReplicaStore>();
  for (const id of ids) {
    const store = new MemReplicaStore(ids);
    const scheduler = world.scheduler(id);
    store.turn = () => scheduler.callbacks;
    if (options.applyCost !== undefined) store.applyCost = options.applyCost;
    stores.set(id, store);
    const replica = new Replica({
      id,
      store,
      transport: world.transport(id),
      scheduler: world.scheduler(id),
      random: new SeededRandom((options.seed ?? 1) * 1000 + id),
      limits: options.limits ?? {},
      ...(options.testing !== undefined ? { testing: options.testing } : {}),
    });
    replicas.set(id, replica);
  }
  for (const r of replicas.values()) r.start();
  return { world, replicas, stores };
}

/** leaderOf: the one replica that is leader (with the highest term), if any. */
export function leaderOf(c: Cluster): Replica | undefined {
  let best: Replica | undefined;
  for (const r of c.replicas.values()) {
    if (r.isLeader() && (best === undefined || r.status().term > best.status().term)) best = r;
  }
  return best;
}

/** track: a promise's outcome, observable once the world has run. */
export function track<T>(promise: Promise<T>): { done: boolean; value?: T; error?: unknown } {
  const state: { done: boolean; value?: T; error?: unknown } = { done: false };
  promise.then(
    (value) => {
      state.done = true;
      state.value = value;
    },
    (error: unknown) => {
      state.done = true;
      state.error = error;
    },
  );
  return state;
}

export function write(key: string, value: string): Uint8Array {
  return encoder.encode(`${key}=${value}`);
}
