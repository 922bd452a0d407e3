/**
 * volume-sessions (issue 11 d): an NBD connection's session ends with it (a replicated
 * closeSession), so thousands of connect/disconnect cycles leave the session table small; an idle
 * connection survives any number of other sessions; and one whose session WAS evicted (more live
 * connections than sessionsMax) keeps working in a new session, without ever applying a retried
 * write twice. Before the fix: sessions were never closed (the table filled, evicted ids grew
 * forever) and an evicted connection's next write failed SESSION_EXPIRED -> EINVAL.
 * In-process: the real volume service, backend and NBD server over test/node/fake-leader.ts.
 */

import test from 'ava';
import { Command } from '../../src/nbd/protocol.js';
import type { RawClient } from '../helpers/nbd-raw-client.js';
import { startFakeNode } from './fake-leader.js';

async function write(c: RawClient, handle: number, offset: number, byte: number): Promise<number> {
  c.request({ type: Command.write, handle, offset, payload: Buffer.alloc(4096, byte) });
  return (await c.reply()).errno;
}

async function readByte(c: RawClient, offset: number): Promise<number> {
  c.request({ type: Command.read, handle: 77, offset, lengthBytes: 4096 });
  const r = await c.simpleReply(4096);
  if (r.errno !== 0) throw new Error(`read errno ${r.errno}`);
  return r.data[0]!;
}

async function until(condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('an idle connection survives 4,200 other connect/write/disconnect sessions; the table stays small', async (t) => {
  const node = await startFakeNode({ sizeBytes: 64 * 1024 * 1024 });
  try {
    const idle = await node.connect();
    await idle.go('v', { structured: false });
    t.is(await write(idle, 1, 0, 0xaa), 0);
    const others = 4200;
    const parallel = 8;
    let next = 0;
    const worker = async () => {
      while (next < others) {
        const i = next++;
        const c = await node.connect();
        await c.go('v', { structured: false });
        if ((await write(c, 1, 4096 * (1 + (i % 1000)), i & 255)) !== 0) throw new Error(`write of session ${i} failed`);
        c.disconnect();
        await c.closed;
      }
    };
    await Promise.all(Array.from({ length: parallel }, worker));
    const table = () => node.leader.state.sessions();
    await until(() => table().size() <= 1);
    t.log(`after ${others} sessions: live ${table().size()}, retired ${table().evictedIds().length}`);
    t.is(table().size(), 1, 'only the idle connection has a session');
    t.is(await write(idle, 2, 0, 0xbb), 0, 'the idle connection still writes');
    t.is(await readByte(idle, 0), 0xbb);
    idle.close();
    await until(() => table().size() === 0);
    t.pass();
  } finally {
    await node.close();
  }
});

test('a live connection whose session was evicted continues in a new session, never EINVAL', async (t) => {
  const sessions = { sessionsMax: 4, sessionIdBytesMax: 64, resultsPerSessionMax: 64, retiredSessionsMax: 64 };
  const node = await startFakeNode({ sizeBytes: 16 * 1024 * 1024, stateLimits: { sessions } });
  try {
    const first = await node.connect();
    await first.go('v', { structured: false });
    t.is(await write(first, 1, 0, 1), 0);
    // Five more live connections: the first one's session is the least recently used and goes.
    const live: RawClient[] = [];
    for (let i = 0; i < 5; i++) {
      const c = await node.connect();
      await c.go('v', { structured: false });
      t.is(await write(c, 1, 4096 * (i + 1), 2), 0);
      live.push(c);
    }
    t.is(node.leader.state.sessions().evictedIds().length, 2, 'two sessions were evicted (the first among them)');
    t.is(await write(first, 2, 0, 3), 0, 'the evicted connection writes again');
    t.is(await readByte(first, 0), 3);
    for (const c of live) c.close();
    first.close();
  } finally {
    await node.close();
  }
});
