/**
 * replica-apply: the apply work of one event-loop turn is bounded (defect h of issue 11, the
 * replica side). A backlog of committed entries is applied in slices of at most
 * applyEntriesPerTurnMax entries / applyBytesPerTurnMax bytes per scheduler callback, and the
 * replica yields between slices, so the messages, reads and ticks queued meanwhile run in between.
 */

import test from 'ava';
import { UsageError } from '../../src/errors.js';
import type { Entry } from '../../src/raft/types.js';
import { cluster, leaderOf, track } from './replica-fixture.js';

const encoder = new TextEncoder();

/** perTurn: the entries and bytes applied by each scheduler callback of one store. */
function perTurn(calls: { turn: number; entries: number; bytes: number }[]): { entries: number; bytes: number }[] {
  const byTurn = new Map<number, { entries: number; bytes: number }>();
  for (const call of calls) {
    const t = byTurn.get(call.turn) ?? { entries: 0, bytes: 0 };
    t.entries += call.entries;
    t.bytes += call.bytes;
    byTurn.set(call.turn, t);
  }
  return [...byTurn.values()];
}

async function backlog(
  limits: { applyEntriesPerTurnMax: number; applyBytesPerTurnMax: number; applyRowsPerTurnMax?: number },
  writes: number,
  valueBytes: number,
  applyCost?: (entry: Entry) => number,
) {
  const c = cluster(3, { seed: 21, limits, ...(applyCost !== undefined ? { applyCost } : {}) });
  if (!(await c.world.runUntil(() => leaderOf(c) !== undefined && leaderOf(c)!.status().commit >= 2, 5000))) throw new Error('no leader');
  const leader = leaderOf(c)!;
  // A follower cut off while the others commit a backlog, then healed: it gets the whole backlog
  // committed at once. The leader gets its own backlog from proposals made in one turn.
  const lagging = [...c.replicas.keys()].find((id) => id !== leader.id)!;
  c.world.cut(lagging, leader.id);
  for (const id of c.replicas.keys()) if (id !== lagging) c.world.cut(lagging, id);
  const done: ReturnType<typeof track>[] = [];
  for (let i = 0; i < writes; i++) done.push(track(leader.propose(encoder.encode(`k${i}=${'v'.repeat(valueBytes)}`))));
  if (!(await c.world.runUntil(() => done.every((d) => d.done), 10_000))) throw new Error('backlog not committed');
  c.world.heal();
  if (!(await c.world.runUntil(() => c.stores.get(lagging)!.kv.size === writes, 10_000))) throw new Error('lagging follower did not catch up');
  for (const r of c.replicas.values()) await r.close();
  return { c, leader: leader.id, lagging };
}

test('a backlog of small entries is applied at most applyEntriesPerTurnMax per turn', async (t) => {
  const { c, leader, lagging } = await backlog({ applyEntriesPerTurnMax: 8, applyBytesPerTurnMax: 1024 * 1024 }, 200, 10);
  for (const id of [leader, lagging]) {
    const turns = perTurn(c.stores.get(id)!.applyCalls);
    const most = Math.max(...turns.map((x) => x.entries));
    t.log(`node ${id}: ${turns.length} apply turns, at most ${most} entries`);
    t.true(most <= 8, `node ${id} applied ${most} entries in one turn`);
    t.true(turns.length >= 200 / 8, `node ${id}: the backlog took several turns`);
  }
});

test('a backlog of large entries is applied at most applyBytesPerTurnMax per turn', async (t) => {
  const { c, leader, lagging } = await backlog({ applyEntriesPerTurnMax: 1024, applyBytesPerTurnMax: 100 * 1024 }, 40, 32 * 1024);
  for (const id of [leader, lagging]) {
    const turns = perTurn(c.stores.get(id)!.applyCalls);
    const most = Math.max(...turns.map((x) => x.bytes));
    t.log(`node ${id}: ${turns.length} apply turns, at most ${most} bytes`);
    t.true(most <= 100 * 1024, `node ${id} applied ${most} bytes in one turn`);
  }
  t.is(c.stores.get(lagging)!.kv.size, 40);
});

test('a backlog of cheap-looking but costly entries (zero pieces) is applied at most applyRowsPerTurnMax rows per turn', async (t) => {
  // Each entry is 12 bytes but "deletes" 4,096 rows, like a 16 MiB zero piece: bytes and entry
  // counts alone would hand a lagging follower the whole backlog (80 x 4,096 rows) in one turn.
  const rows = 4096;
  const { c, leader, lagging } = await backlog({ applyEntriesPerTurnMax: 1024, applyBytesPerTurnMax: 8 * 1024 * 1024, applyRowsPerTurnMax: 3 * rows }, 80, 8, (e) =>
    e.data.length > 0 && e.type === 0 ? rows : 1,
  );
  for (const id of [leader, lagging]) {
    const turns = perTurn(c.stores.get(id)!.applyCalls);
    const most = Math.max(...turns.map((x) => x.entries));
    t.log(`node ${id}: ${turns.length} apply turns, at most ${most} costly entries`);
    t.true(most <= 3, `node ${id} applied ${most} entries of ${rows} rows in one turn (budget ${3 * rows} rows)`);
    t.true(turns.length >= 80 / 3, `node ${id}: the backlog took several turns`);
  }
  t.is(c.stores.get(lagging)!.kv.size, 80);
});

test('a zero or fractional limit is refused at construction', (t) => {
  t.throws(() => cluster(1, { limits: { applyEntriesPerTurnMax: 0 } }), { instanceOf: UsageError });
  t.throws(() => cluster(1, { limits: { applyBytesPerTurnMax: 1.5 } }), { instanceOf: UsageError });
});
