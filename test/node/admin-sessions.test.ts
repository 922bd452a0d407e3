/**
 * admin-sessions (issue 11 i, the admin half): a volume create / resize / delete carries the
 * client's session stamp, so a retry after a lost answer returns the first attempt's result: a
 * create that succeeded is answered "created" again, not ALREADY_EXISTS; a delete "deleted", not
 * NOT_FOUND. A new operation (a new stamp) still gets the real refusal. Before the fix admin
 * commands had no session, and the retry failed. The real NodeAdmin over the fake leader
 * (test/node/fake-leader.ts) and a real SQLite state machine.
 */

import test from 'ava';
import { ErrorCode } from '../../src/errors.js';
import { NodeAdmin } from '../../src/node/admin.js';
import { systemClock } from '../../src/node/clock.js';
import type { Replica } from '../../src/node/replica.js';
import { startFakeNode } from './fake-leader.js';

test('a retried volume create / resize / delete returns its first result; a new one is refused', async (t) => {
  const node = await startFakeNode();
  try {
    const state = node.leader.state;
    const store = {
      listVolumes: () => state.listVolumes().map((v) => ({ name: v.name, sizeBytes: v.sizeBytes })),
      members: () => state.members(),
      stateHash: () => state.stateHash(),
      state,
    };
    const admin = new NodeAdmin(node.leader as unknown as Replica, store, systemClock);
    const stamp = (sequence: number) => ({ id: 'cli-1', sequence, ackedBelow: sequence });
    t.deepEqual(await admin.volumeCreate('x', 1 << 20, stamp(1)), { name: 'x', sizeBytes: 1 << 20 });
    t.deepEqual(await admin.volumeCreate('x', 1 << 20, stamp(1)), { name: 'x', sizeBytes: 1 << 20 }, 'the retry of a create that succeeded succeeds');
    await t.throwsAsync(admin.volumeCreate('x', 1 << 20, stamp(2)), { code: ErrorCode.AlreadyExists }, 'a new create is refused');
    await admin.volumeResize('x', 2 << 20, stamp(3));
    await admin.volumeResize('x', 2 << 20, stamp(3));
    await admin.volumeDelete('x', stamp(4));
    await t.notThrowsAsync(admin.volumeDelete('x', stamp(4)), 'the retry of a delete that succeeded succeeds');
    await t.throwsAsync(admin.volumeDelete('x', stamp(5)), { code: ErrorCode.NotFound }, 'a new delete is refused');
    t.false(state.listVolumes().some((v) => v.name === 'x'));
    // Without a stamp (an older client) the existence checks answer at once, as before.
    await t.throwsAsync(admin.volumeDelete('x'), { code: ErrorCode.NotFound });
    // A refused request proposes nothing, stamp or not: bad input changes nothing.
    const before = state.stateHash().hash;
    await t.throwsAsync(admin.volumeDelete('x', stamp(6)), { code: ErrorCode.NotFound });
    await t.throwsAsync(admin.volumeResize('x', 4096, stamp(7)), { code: ErrorCode.NotFound });
    t.is(state.stateHash().hash, before);
    await admin.volumeCreate('y', 1 << 20, stamp(8));
    t.deepEqual(await admin.volumeCreate('y', 1 << 20, stamp(8)), { name: 'y', sizeBytes: 1 << 20 });
  } finally {
    await node.close();
  }
});
