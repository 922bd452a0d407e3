/**
 * replica-propose: how Replica.propose refuses (defects i and c of issue 11).
 *  - A proposal refused for lack of a waiter slot is refused BEFORE its entry is appended: an entry
 *    in the log may commit, so the client's retry would make it land twice.
 *  - The core's "not now" refusals (BUSY: uncommitted tail full; PROPOSAL_DROPPED: leadership
 *    transfer) reach the caller as RemoteErrors, which callers retry, never as plain ChardErrors.
 */

import test from 'ava';
import { ErrorCode, RemoteError } from '../../src/errors.js';
import { cluster, leaderOf, track, write } from './replica-fixture.js';

async function elected(options: Parameters<typeof cluster>[1] = {}) {
  const c = cluster(3, { seed: 5, ...options });
  if (!(await c.world.runUntil(() => leaderOf(c) !== undefined && leaderOf(c)!.status().commit >= 2, 5000))) throw new Error('no leader');
  return { c, leader: leaderOf(c)! };
}

test('a proposal past proposalsInflightMax is refused with BUSY before its entry is appended', async (t) => {
  const { c, leader } = await elected({ limits: { proposalsInflightMax: 2 } });
  const before = leader.status().lastIndex;
  const pending = [leader.propose(write('a', '1')), leader.propose(write('b', '1'))];
  const refused = await t.throwsAsync(leader.propose(write('c', '1')));
  t.true(refused instanceof RemoteError, 'retryable');
  t.is((refused as RemoteError).code, ErrorCode.Busy);
  t.is(leader.status().lastIndex, before + 2, 'the refused entry is not in the log');
  await c.world.runUntil(() => c.stores.get(leader.id)!.kv.has('b'), 5000);
  await Promise.all(pending);
  t.false(c.stores.get(leader.id)!.kv.has('c'), 'the refused write never applies');
  for (const r of c.replicas.values()) await r.close();
});

test("the core's BUSY (uncommitted tail full) reaches the caller as a retryable RemoteError", async (t) => {
  const { c, leader } = await elected();
  for (const id of c.replicas.keys()) if (id !== leader.id) c.world.cut(leader.id, id);
  const mib = new Uint8Array(1024 * 1024).fill(7);
  let refused: unknown;
  let accepted = 0;
  for (let i = 0; i < 200 && refused === undefined; i++) {
    const state = track(leader.propose(mib));
    await new Promise((resolve) => setImmediate(resolve));
    if (state.done) refused = state.error;
    else accepted++;
  }
  t.log(`${accepted} MiB accepted uncommitted, then refused`);
  t.true(refused instanceof RemoteError, `refusal is a RemoteError (got ${String(refused)})`);
  t.is((refused as RemoteError).code, ErrorCode.Busy);
  for (const r of c.replicas.values()) await r.close();
});

test('a proposal during a leadership transfer is refused with a retryable PROPOSAL_DROPPED', async (t) => {
  const { c, leader } = await elected();
  const target = [...c.replicas.keys()].find((id) => id !== leader.id)!;
  c.world.cut(leader.id, target);
  leader.transferLeadership(target);
  const refused = await t.throwsAsync(leader.propose(write('x', '1')));
  t.true(refused instanceof RemoteError, `retryable (got ${refused?.constructor.name})`);
  t.is((refused as RemoteError).code, ErrorCode.ProposalDropped);
  for (const r of c.replicas.values()) await r.close();
});
