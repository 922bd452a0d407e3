/**
 * replica-failure: an error thrown by the state machine's apply (defect g of issue 11, the replica
 * side) must not escape the Ready loop: it would crash the process, and the restart would apply
 * the same entry again (a crash loop). The replica halts instead: it stops applying, serving,
 * ticking and campaigning, fails its waiters with a retryable error, hands leadership over when it
 * leads, and reports `stateCorrupt` in status() and the details in `failed`.
 *
 * An exception escaping a callback of the hand-driven world fails the test (it propagates out of
 * world.step()), as it would exit a real process.
 */

import test from 'ava';
import { CorruptError, ErrorCode, RemoteError } from '../../src/errors.js';
import { cluster, leaderOf, track, write } from './replica-fixture.js';

async function elected(seed: number) {
  const c = cluster(3, { seed });
  if (!(await c.world.runUntil(() => leaderOf(c) !== undefined && leaderOf(c)!.status().commit >= 2, 5000))) throw new Error('no leader');
  const leader = leaderOf(c)!;
  const first = track(leader.propose(write('x', '1')));
  if (!(await c.world.runUntil(() => first.done && [...c.stores.values()].every((s) => s.kv.get('x') === '1'), 5000))) throw new Error('first write');
  return { c, leader };
}

test('a follower whose apply throws halts and reports stateCorrupt; the others keep committing', async (t) => {
  const { c, leader } = await elected(31);
  const follower = [...c.replicas.values()].find((r) => r.id !== leader.id)!;
  c.stores.get(follower.id)!.failApply = new CorruptError('block 7 of volume v: checksum mismatch');
  const writes = [1, 2, 3].map((i) => track(leader.propose(write(`y${i}`, 'ok'))));
  t.true(await c.world.runUntil(() => writes.every((w) => w.done), 5000), 'the two healthy nodes commit');
  for (const w of writes) t.is(w.error, undefined);
  await c.world.run(1000);
  t.truthy(follower.failed);
  t.is(follower.failed!.code, ErrorCode.Corrupt);
  const status = follower.status();
  t.true(status.stateCorrupt);
  t.is(status.applied, c.stores.get(follower.id)!.appliedIndex(), 'status reports what the store holds');
  const read = await t.throwsAsync(follower.readBarrier());
  t.true(read instanceof RemoteError && read.code === ErrorCode.Unavailable, 'reads at the halted node are refused, retryably');
  t.is(leaderOf(c)?.id, leader.id, 'the leader is not disturbed');
  for (const r of c.replicas.values()) await r.close();
});

test('a leader whose apply throws hands over; its waiters fail retryably; a new leader serves', async (t) => {
  const { c, leader } = await elected(32);
  c.stores.get(leader.id)!.failApply = new CorruptError('block 9: checksum mismatch');
  const failedAt = c.world.time;
  const doomed = track(leader.propose(write('z', '1')));
  t.true(await c.world.runUntil(() => doomed.done, 5000));
  t.true(doomed.error instanceof RemoteError, `retryable (got ${String(doomed.error)})`);
  t.true(leader.status().stateCorrupt);
  t.false(leader.isLeader());
  t.true(await c.world.runUntil(() => leaderOf(c) !== undefined && leaderOf(c)!.id !== leader.id, 5000), 'another node leads');
  const next = leaderOf(c)!;
  t.log(`new leader ${next.id} after ${c.world.time - failedAt} ms`);
  t.true(c.world.time - failedAt < 300, 'handed over (TimeoutNow), faster than an election timeout');
  const w = track(next.propose(write('z', '2')));
  t.true(await c.world.runUntil(() => w.done, 5000));
  t.is(w.error, undefined);
  await t.throwsAsync(leader.propose(write('q', '1')), { instanceOf: RemoteError });
  for (const r of c.replicas.values()) await r.close();
});
