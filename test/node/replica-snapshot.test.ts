/**
 * replica-snapshot: when Replica compacts its log (defect k of issue 11, issue 12's compaction that
 * costs what changed). Entry count alone let a node with 1 MiB writes keep ~20 GiB of log;
 * `compactEveryLogBytes` bounds the log by the bytes of the entries applied since the last
 * compaction, whichever limit is reached first. The log is compacted behind the store's durable
 * state (ReplicaStore.compactLog), with no snapshot; a store without compactLog takes a snapshot.
 */

import test from 'ava';
import { type Cluster, cluster, leaderOf, track } from './replica-fixture.js';

const kib = 1024;

async function writeBig(limits: { compactEveryEntries: number; compactEveryLogBytes: number }, writes: number, bytes: number, prepare: (c: Cluster) => void = () => {}) {
  const c = cluster(3, { seed: 11, limits });
  prepare(c);
  if (!(await c.world.runUntil(() => leaderOf(c) !== undefined, 5000))) throw new Error('no leader');
  const leader = leaderOf(c)!;
  for (let i = 0; i < writes; i++) {
    const value = 'v'.repeat(bytes);
    const w = track(leader.propose(new TextEncoder().encode(`k${i}=${value}`)));
    if (!(await c.world.runUntil(() => w.done, 5000)) || w.error !== undefined) throw new Error(`write ${i} failed: ${String(w.error)}`);
  }
  await c.world.runUntil(() => [...c.stores.values()].every((s) => s.kv.size === writes), 5000);
  for (const r of c.replicas.values()) await r.close();
  return c;
}

test('the log is compacted once the applied entries reach compactEveryLogBytes, long before the entry count, with no snapshot', async (t) => {
  const c = await writeBig({ compactEveryEntries: 1_000_000, compactEveryLogBytes: 256 * kib }, 40, 32 * kib);
  for (const [id, store] of c.stores) {
    // 40 × 32 KiB = 1280 KiB of data: one compaction per 256 KiB, so about five.
    t.true(store.compactions >= 4 && store.compactions <= 6, `node ${id}: ${store.compactions} compactions`);
    t.true(store.logStorage.firstIndex() > 30, `node ${id}: log compacted to ${store.logStorage.firstIndex()}`);
    t.is(store.snapshotsCreated, 0, `node ${id}: no snapshot (none was needed)`);
  }
});

test('the entry count still triggers compactions of small writes', async (t) => {
  const c = await writeBig({ compactEveryEntries: 10, compactEveryLogBytes: 1024 * 1024 * 1024 }, 35, 10);
  for (const [id, store] of c.stores) t.true(store.compactions >= 3, `node ${id}: ${store.compactions} compactions`);
});

test('below both limits, no compaction', async (t) => {
  const c = await writeBig({ compactEveryEntries: 1000, compactEveryLogBytes: 1024 * 1024 }, 20, 32 * kib);
  for (const store of c.stores.values()) t.is(store.compactions + store.snapshotsCreated, 0);
});

test('a store without compactLog takes a snapshot at each trigger instead', async (t) => {
  const c = await writeBig({ compactEveryEntries: 10, compactEveryLogBytes: 1024 * 1024 * 1024 }, 35, 10, (c) => {
    for (const store of c.stores.values()) delete store.compactLog;
  });
  for (const [id, store] of c.stores) {
    t.true(store.snapshotsCreated >= 3, `node ${id}: ${store.snapshotsCreated} snapshots`);
    t.is(store.compactions, 0);
  }
});

async function lagging(retain: boolean) {
  const c = cluster(3, { seed: 11, limits: { compactEveryEntries: 10 } });
  for (const store of c.stores.values()) store.retain = retain;
  if (!(await c.world.runUntil(() => leaderOf(c) !== undefined, 5000))) throw new Error('no leader');
  const leader = leaderOf(c)!;
  const away = [...c.replicas.keys()].find((id) => id !== leader.id)!;
  for (const id of c.replicas.keys()) if (id !== away) c.world.cut(id, away);
  for (let i = 0; i < 60; i++) {
    const w = track(leader.propose(new TextEncoder().encode(`k${i}=v${i}`)));
    if (!(await c.world.runUntil(() => w.done, 5000)) || w.error !== undefined) throw new Error(`write ${i} failed: ${String(w.error)}`);
  }
  c.world.heal();
  return { c, leader, away };
}

test('a leader keeps the log for a follower that lags (retainFor): it catches up from the log, with no snapshot', async (t) => {
  const { c, leader, away } = await lagging(true);
  const leaderStore = c.stores.get(leader.id)!;
  t.true(leaderStore.retainRequests.length >= 3 && leaderStore.retainRequests.every((r) => r.length === 1), 'every compaction named the lagging follower');
  t.true(leaderStore.logStorage.firstIndex() <= 3, `the log is kept for it (first index ${leaderStore.logStorage.firstIndex()})`);
  // (this store cannot receive a snapshot: it asserts, so catching up proves the log sufficed)
  t.true(await c.world.runUntil(() => c.stores.get(away)!.kv.size === 60, 5000), 'the follower caught up');
  t.is(leaderStore.snapshotsCreated, 0);
  for (const r of c.replicas.values()) await r.close();
});

test('without retention the lagging follower needs a snapshot: raft asks for one (Ready.snapshotWanted)', async (t) => {
  const { c, leader, away } = await lagging(false);
  const leaderStore = c.stores.get(leader.id)!;
  t.true(leaderStore.logStorage.firstIndex() > 20, `the log was compacted past the follower (first index ${leaderStore.logStorage.firstIndex()})`);
  t.true(await c.world.runUntil(() => leaderStore.snapshotsCreated > 0, 5000), 'the leader made a snapshot on demand');
  t.is(c.stores.get(away)!.kv.size, 0);
  for (const r of c.replicas.values()) await r.close();
});
