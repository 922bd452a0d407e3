/**
 * replica-snapshot: when Replica snapshots and compacts (defect k of issue 11). Entry count alone
 * let a node with 1 MiB writes keep ~20 GiB of log; `compactEveryLogBytes` bounds the log by the
 * bytes of the entries applied since the last snapshot, whichever limit is reached first.
 */

import test from 'ava';
import { cluster, leaderOf, track } from './replica-fixture.js';

const kib = 1024;

async function writeBig(limits: { compactEveryEntries: number; compactEveryLogBytes: number }, writes: number, bytes: number) {
  const c = cluster(3, { seed: 11, limits });
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

test('a snapshot is taken once the applied entries reach compactEveryLogBytes, long before the entry count', async (t) => {
  const c = await writeBig({ compactEveryEntries: 1_000_000, compactEveryLogBytes: 256 * kib }, 40, 32 * kib);
  for (const [id, store] of c.stores) {
    // 40 × 32 KiB = 1280 KiB of data: one snapshot per 256 KiB, so about five.
    t.true(store.snapshotsCreated >= 4 && store.snapshotsCreated <= 6, `node ${id}: ${store.snapshotsCreated} snapshots`);
    t.true(store.logStorage.firstIndex() > 30, `node ${id}: log compacted to ${store.logStorage.firstIndex()}`);
  }
});

test('the entry count still triggers snapshots of small writes', async (t) => {
  const c = await writeBig({ compactEveryEntries: 10, compactEveryLogBytes: 1024 * 1024 * 1024 }, 35, 10);
  for (const [id, store] of c.stores) t.true(store.snapshotsCreated >= 3, `node ${id}: ${store.snapshotsCreated} snapshots`);
});

test('below both limits, no snapshot', async (t) => {
  const c = await writeBig({ compactEveryEntries: 1000, compactEveryLogBytes: 1024 * 1024 }, 20, 32 * kib);
  for (const store of c.stores.values()) t.is(store.snapshotsCreated, 0);
});
