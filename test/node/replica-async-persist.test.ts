/**
 * replica-async-persist: the Ready loop over a store whose persist returns a promise (issue 12's
 * pipelined engine: the log fsyncs off the event loop). A hand-driven store holds each persist
 * until the test resolves or rejects it, and the tests check the rules of the contract
 * (src/blockstore/replica-store.ts): nothing that promises durability leaves before the write is
 * durable — a follower's append response, the leader's own count towards a commit, a client's
 * answer — while the leader's appends leave at once; what arrives during the fsync goes into ONE
 * next persist (group commit across turns); a rejected persist halts the replica for good.
 */

import test from 'ava';
import { ChardError, ErrorCode, RemoteError } from '../../src/errors.js';
import { Counters } from '../../src/node/metrics.js';
import { Replica, type ReplicaTestingKnobs } from '../../src/node/replica.js';
import { SeededRandom } from '../../src/raft/random.js';
import { type Message, MessageType, type NodeId, type Ready } from '../../src/raft/types.js';
import { type Cluster, MemReplicaStore, World, leaderOf, track, write } from './replica-fixture.js';

/** HandStore: persist is asynchronous; in `manual` mode each one waits for the test's resolve/reject. */
class HandStore extends MemReplicaStore {
  manual = false;
  persists = 0;
  readonly pending: { ready: Ready; resolve: () => void; reject: (error: Error) => void }[] = [];

  override persist(ready: Ready): Promise<void> {
    this.persists++;
    if (!this.manual) {
      super.persist(ready);
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      this.pending.push({
        ready,
        resolve: () => {
          super.persist(ready);
          resolve();
        },
        reject,
      });
    });
  }
}

interface HandCluster extends Cluster {
  stores: Map<NodeId, HandStore>;
  /** sent: every message each node handed to its transport, in order. */
  sent: Map<NodeId, Message[]>;
  counters: Map<NodeId, Counters>;
}

function handCluster(size: number, seed: number, testing: ReplicaTestingKnobs = {}): HandCluster {
  const world = new World();
  const ids = Array.from({ length: size }, (_, i) => i + 1);
  const replicas = new Map<NodeId, Replica>();
  const stores = new Map<NodeId, HandStore>();
  const sent = new Map<NodeId, Message[]>();
  const counters = new Map<NodeId, Counters>();
  for (const id of ids) {
    const store = new HandStore(ids);
    stores.set(id, store);
    const transport = world.transport(id);
    const log: Message[] = [];
    sent.set(id, log);
    const send = transport.send.bind(transport);
    transport.send = (messages: Message[]) => {
      log.push(...messages);
      send(messages);
    };
    const c = new Counters();
    counters.set(id, c);
    replicas.set(id, new Replica({ id, store, transport, scheduler: world.scheduler(id), random: new SeededRandom(seed * 1000 + id), counters: c, testing }));
  }
  for (const r of replicas.values()) r.start();
  return { world, replicas, stores, sent, counters };
}

async function elected(seed: number, testing: ReplicaTestingKnobs = {}) {
  const c = handCluster(3, seed, testing);
  if (!(await c.world.runUntil(() => leaderOf(c) !== undefined && leaderOf(c)!.status().commit >= 2, 5000))) throw new Error('no leader');
  const leader = leaderOf(c)!;
  const first = track(leader.propose(write('x', '1')));
  if (!(await c.world.runUntil(() => first.done && [...c.stores.values()].every((s) => s.kv.get('x') === '1'), 5000))) throw new Error('first write');
  return { c, leader };
}

function holdsIndex(store: HandStore, index: number): boolean {
  return store.pending.some((p) => p.ready.entries.some((e) => e.index === index));
}

test('a follower sends its append response only once the entries are durable', async (t) => {
  const { c, leader } = await elected(41);
  const follower = [...c.replicas.values()].find((r) => r.id !== leader.id)!;
  const store = c.stores.get(follower.id)!;
  store.manual = true;
  const sent = c.sent.get(follower.id)!;
  const index = leader.status().lastIndex + 1;
  const w = track(leader.propose(write('a', '1')));
  t.true(await c.world.runUntil(() => holdsIndex(store, index), 1000), 'the follower persists the entry');
  const acks = () => sent.filter((m) => m.type === MessageType.AppResp && !m.reject && m.index >= index);
  await c.world.run(100);
  t.deepEqual(acks(), [], 'no acknowledgement while the write is in flight');
  t.is(store.pending.length, 1, 'one Ready in flight, no second persist meanwhile');
  t.true(await c.world.runUntil(() => w.done, 1000), 'the leader and the other follower commit without it');
  store.pending.shift()!.resolve();
  t.true(await c.world.runUntil(() => acks().length > 0, 1000), 'acknowledged once durable');
  for (const r of c.replicas.values()) await r.close();
});

test('a follower with a persist pending still answers heartbeats, so a slow fsync does not depose its leader', async (t) => {
  for (const mute of [false, true]) {
    const { c, leader } = await elected(43, mute ? { muteWhileInFlight: true } : {});
    const followers = [...c.replicas.values()].filter((r) => r.id !== leader.id);
    const term = leader.status().term;
    // Both followers' fsyncs hang (a disk stalled for seconds): with no quorum of heartbeat
    // responses the leader's CheckQuorum would step it down after an election timeout.
    for (const f of followers) c.stores.get(f.id)!.manual = true;
    const w = track(leader.propose(write('slow', '1')));
    t.true(await c.world.runUntil(() => followers.every((f) => c.stores.get(f.id)!.pending.length > 0), 1000), 'both followers persist');
    const sent = followers.map((f) => c.sent.get(f.id)!.length);
    await c.world.run(2000); // 2 s: several election timeouts
    const heartbeatResps = followers.map((f, i) => c.sent.get(f.id)!.slice(sent[i]).filter((m) => m.type === MessageType.HeartbeatResp).length);
    const acks = followers.map((f, i) => c.sent.get(f.id)!.slice(sent[i]).filter((m) => m.type === MessageType.AppResp).length);
    if (mute) {
      t.true(leader.status().term > term || !leader.isLeader(), 'muted followers: the leader stepped down');
    } else {
      t.true(heartbeatResps.every((n) => n > 0), `heartbeat responses while the persist is pending: ${heartbeatResps}`);
      t.deepEqual(acks, [0, 0], 'no append response before the entries are durable');
      t.true(leader.isLeader() && leader.status().term === term, 'the leader keeps its term');
      t.false(w.done, 'the write waits for a durable quorum');
      for (const f of followers) for (const p of c.stores.get(f.id)!.pending.splice(0)) p.resolve();
      for (const f of followers) c.stores.get(f.id)!.manual = false;
      t.true(await c.world.runUntil(() => w.done, 2000), 'committed once durable');
    }
    for (const f of followers) for (const p of c.stores.get(f.id)!.pending.splice(0)) p.resolve();
    for (const r of c.replicas.values()) await r.close();
  }
});

test('the leader counts itself only once durable; proposals during the fsync go into one next persist', async (t) => {
  const { c, leader } = await elected(42);
  const [follower, other] = [...c.replicas.values()].filter((r) => r.id !== leader.id);
  // Without the other follower, a commit needs the leader's own durable copy.
  c.world.cut(leader.id, other!.id);
  const store = c.stores.get(leader.id)!;
  store.manual = true;
  const sent = c.sent.get(leader.id)!;
  const counters = c.counters.get(leader.id)!;
  const fsyncsBefore = counters.snapshot().counts['store.fsync'] ?? 0;
  const i1 = leader.status().lastIndex + 1;
  const p1 = track(leader.propose(write('p', '1')));
  t.true(await c.world.runUntil(() => holdsIndex(store, i1), 1000));
  t.true(
    sent.some((m) => m.type === MessageType.App && m.to === follower!.id && m.entries.some((e) => e.index === i1)),
    "the leader's append left before its own write is durable (messagesEarly)",
  );
  t.true(await c.world.runUntil(() => c.stores.get(follower!.id)!.logStorage.lastIndex() >= i1, 1000), 'the follower has it durable');
  await c.world.run(50);
  t.false(p1.done, 'not answered: only one of three copies is durable');
  t.true(leader.status().commit < i1, 'not committed before the leader counts itself');
  const later = [2, 3, 4].map((n) => track(leader.propose(write(`p${n}`, 'x'))));
  await c.world.run(50);
  t.is(store.pending.length, 1, 'no second persist while one is in flight');
  store.pending.shift()!.resolve();
  t.true(await c.world.runUntil(() => store.pending.length > 0, 1000), 'the next persist starts');
  t.deepEqual(
    store.pending[0]!.ready.entries.map((e) => e.index),
    [i1 + 1, i1 + 2, i1 + 3],
    'the three proposals of the fsync window are one batch',
  );
  t.true(await c.world.runUntil(() => p1.done, 1000), 'the first write is answered while the batch after it is in flight');
  t.is(p1.error, undefined);
  t.false(later.some((w) => w.done), 'the batch is not answered before it is durable');
  store.pending.shift()!.resolve();
  t.true(await c.world.runUntil(() => later.every((w) => w.done), 1000));
  for (const w of later) t.is(w.error, undefined);
  const snapshot = counters.snapshot();
  t.is((snapshot.counts['store.fsync'] ?? 0) - fsyncsBefore, 2, 'two fsyncs for four writes');
  t.true((snapshot.quantiles['store.persist_ms']?.count ?? 0) > 0, 'persist latency observed');
  for (const r of c.replicas.values()) await r.close();
});

test('a rejected persist halts the replica: its waiters fail retryably, it sends and writes nothing more', async (t) => {
  const { c, leader } = await elected(43);
  const store = c.stores.get(leader.id)!;
  store.manual = true;
  const sent = c.sent.get(leader.id)!;
  const index = leader.status().lastIndex + 1;
  const w = track(leader.propose(write('d', '1')));
  t.true(await c.world.runUntil(() => holdsIndex(store, index), 1000));
  store.pending.shift()!.reject(new ChardError(ErrorCode.Internal, 'fdatasync: EIO'));
  t.true(await c.world.runUntil(() => w.done, 1000));
  t.true(w.error instanceof RemoteError && (w.error as RemoteError).code === ErrorCode.Unavailable, `retryable (got ${String(w.error)})`);
  const status = leader.status();
  t.true(status.halted);
  t.false(status.stateCorrupt, 'a failed write is not a corrupt state');
  t.is(leader.failed?.stage, 'persist');
  t.is(leader.failed?.lastIndex, index);
  t.false(leader.isLeader());
  const sentAtHalt = sent.length;
  const persistsAtHalt = store.persists;
  await c.world.run(1000);
  t.is(sent.length, sentAtHalt, 'no message after the halt');
  t.is(store.persists, persistsAtHalt, 'no persist after the halt (never retried)');
  await t.throwsAsync(leader.propose(write('d', '2')), { instanceOf: RemoteError });
  t.true(await c.world.runUntil(() => leaderOf(c) !== undefined && leaderOf(c)!.id !== leader.id, 5000), 'another node leads');
  for (const r of c.replicas.values()) await r.close();
});
