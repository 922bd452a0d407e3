/**
 * volume-backpressure (issue 11 c): what an NBD client of a node sees when the raft core says
 * "not now". The core's BUSY (past its uncommitted-bytes limit) and PROPOSAL_DROPPED (a
 * leadership transfer, the SIGTERM hand-over) are plain ChardErrors; the volume service must
 * retry them (same session stamp, backoff) and bound what a node has in flight, so that one
 * connection at QD64 x 1 MiB waits instead of failing. Before the fix both cases answered EIO.
 * In-process: the real LocalVolumeService / VolumeBackend / NbdServer over a fake leader that
 * refuses exactly as the core does (test/node/fake-leader.ts).
 */

import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import type { NodeAdmin } from '../../src/node/admin.js';
import { NodeApi, defaultClientLimits } from '../../src/node/api-client.js';
import { startNodeRpcServer } from '../../src/node/rpc.js';
import { Command } from '../../src/nbd/protocol.js';
import type { RawClient } from '../helpers/nbd-raw-client.js';
import { InflightGate } from '../../src/node/volume-service.js';
import { until } from '../helpers/until.js';
import { startFakeNode } from './fake-leader.js';

const MiB = 1024 * 1024;

function pattern(i: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let k = 0; k < bytes; k += 4096) b.writeUInt32BE(i * 7919 + k, k);
  return b;
}

/** writeAll: `count` writes of `bytes` all in flight at once; the errno of each reply. */
async function writeAll(c: RawClient, count: number, bytes: number, base = 0): Promise<number[]> {
  for (let i = 0; i < count; i++) c.request({ type: Command.write, handle: i + 1, offset: base + i * bytes, payload: pattern(i, bytes) });
  const errnos: number[] = [];
  for (let i = 0; i < count; i++) errnos.push((await c.reply()).errno);
  return errnos;
}

async function readBack(c: RawClient, offset: number, bytes: number): Promise<Buffer> {
  c.request({ type: Command.read, handle: 999, offset, lengthBytes: bytes });
  const parts: Buffer[] = [];
  for (const r of await c.structuredReply()) if (r.errno === 0 && r.payload.length > 8) parts.push(r.payload.subarray(8));
  return Buffer.concat(parts);
}

test('two connections at QD64 x 1 MiB wait at the node instead of failing with EIO', async (t) => {
  const node = await startFakeNode();
  try {
    node.leader.commitDelayMs = 20;
    const c = await node.connect();
    await c.go('v', { structured: false });
    const d = await node.connect();
    await d.go('v', { structured: false });
    const [errnos, others] = await Promise.all([writeAll(c, 64, MiB), writeAll(d, 64, MiB, 128 * MiB)]);
    t.log(`most uncommitted at once: ${(node.leader.maxUncommittedBytes / MiB).toFixed(1)} MiB`);
    t.deepEqual(errnos, new Array(64).fill(0), 'every write succeeded');
    t.deepEqual(others, new Array(64).fill(0), 'every write of the second connection succeeded');
    d.close();
    t.is(node.leader.refusals.busy, 0, 'the gate kept the leader below its uncommitted limit');
    t.true(node.leader.maxUncommittedBytes <= 32 * MiB + 64 * 1024, `at most the gate's budget was uncommitted (${node.leader.maxUncommittedBytes})`);
    c.request({ type: Command.read, handle: 500, offset: 63 * MiB, lengthBytes: MiB });
    const r = await c.simpleReply(MiB);
    t.is(r.errno, 0);
    t.true(r.data.equals(pattern(63, MiB)));
    c.close();
  } finally {
    await node.close();
  }
});

test('BUSY from the core is retried with backoff, never an EIO', async (t) => {
  // A gate as large as the core's limit: the core refuses, the service must retry.
  const node = await startFakeNode({ service: { inflightBytesMax: 256 * MiB } });
  try {
    node.leader.uncommittedBytesMax = 16 * MiB;
    node.leader.holdCommitsUntilBusy();
    const c = await node.connect();
    await c.go('v', { structured: false });
    const errnos = await writeAll(c, 64, MiB);
    t.deepEqual(errnos, new Array(64).fill(0));
    t.true(node.leader.refusals.busy > 0, `the core did refuse (${node.leader.refusals.busy} times)`);
    c.close();
  } finally {
    await node.close();
  }
});

test('a leadership transfer (PROPOSAL_DROPPED) during writes is a pause, never an EIO', async (t) => {
  const node = await startFakeNode();
  try {
    const c = await node.connect();
    await c.go('v', { structured: false });
    t.deepEqual(await writeAll(c, 32, 64 * 1024), new Array(32).fill(0));
    node.leader.dropNext = 40;
    const errnos = await writeAll(c, 64, 64 * 1024, 4 * MiB);
    t.deepEqual(errnos, new Array(64).fill(0), 'every write during the transfer succeeded');
    t.true(node.leader.refusals.dropped > 0, 'proposals were dropped while the transfer lasted');
    c.request({ type: Command.read, handle: 501, offset: 4 * MiB + 10 * 64 * 1024, lengthBytes: 64 * 1024 });
    const r = await c.simpleReply(64 * 1024);
    t.true(r.data.equals(pattern(10, 64 * 1024)));
    c.close();
  } finally {
    await node.close();
  }
});

export { readBack };

test('a request whose call ended leaves the in-flight queue: it is never granted, the next one is', async (t) => {
  const gate = new InflightGate(4 * MiB, 1024, 16);
  const first = await gate.acquire(4 * MiB);
  const gone = new AbortController();
  const granted: string[] = [];
  const abandoned = gate.acquire(4 * MiB, gone.signal).then(
    (release) => {
      granted.push('abandoned');
      release();
    },
    (error: unknown) => error,
  );
  const next = gate.acquire(MiB).then((release) => {
    granted.push('next');
    return release;
  });
  t.is(gate.inflight().waiting, 2);
  gone.abort();
  const error = await abandoned;
  t.is((error as { code?: string }).code, 'CANCELLED');
  t.is(gate.inflight().waiting, 1);
  t.is(gate.abandoned, 1);
  first();
  (await next)();
  t.deepEqual(granted, ['next'], 'the abandoned request never held the budget');
  t.deepEqual(gate.inflight(), { bytes: 0, commands: 0, waiting: 0 });
  // An already-ended call does not queue at all.
  await t.throwsAsync(gate.acquire(MiB, gone.signal), { message: /request ended/ });
});

test('the head of the queue leaving lets smaller requests behind it in', async (t) => {
  const gate = new InflightGate(4 * MiB, 1024, 16);
  const held = await gate.acquire(2 * MiB);
  const gone = new AbortController();
  const big = gate.acquire(4 * MiB, gone.signal).catch((error: unknown) => error);
  let smallIn = false;
  const small = gate.acquire(MiB).then((release) => {
    smallIn = true;
    return release;
  });
  await Promise.resolve();
  t.false(smallIn, 'FIFO: the small request waits behind the big one');
  gone.abort();
  (await small)();
  t.true(smallIn);
  t.is(((await big) as { code?: string }).code, 'CANCELLED');
  held();
});

test('a Write RPC whose deadline passes while it waits for the budget is never proposed', async (t) => {
  const node = await startFakeNode({ service: { inflightCommandsMax: 1 } });
  t.teardown(() => node.close());
  const rpc = await startNodeRpcServer({ listen: '127.0.0.1:0', clusterId: 'c', admin: {} as NodeAdmin, volumes: node.service });
  t.teardown(() => rpc.close());
  const api = new NodeApi(rpc.address, grpc.credentials.createInsecure(), defaultClientLimits);
  t.teardown(() => api.close());
  const leader = node.leader as unknown as { nextIndex: number; releaseCommits?: () => void };
  node.leader.holdCommitsUntilBusy();
  const proposedBefore = leader.nextIndex;
  const write = (sequence: number, timeoutMs: number) =>
    api.submit({ kind: 'write', volume: 'v', offset: sequence * 4096, data: pattern(sequence, 4096), session: { id: 's', sequence, ackedBelow: 1 } }, timeoutMs);
  // The first holds the one command slot (its commit is held); the second waits for it.
  const first = write(1, 60_000);
  await until(t, 'the first write to be proposed', () => leader.nextIndex === proposedBefore + 1);
  const second = write(2, 300);
  const error = await second.catch((e: unknown) => e);
  t.is((error as { code?: string }).code, 'TIMEOUT', 'the client gave up');
  await until(t, 'the abandoned write to leave the queue', () => node.service.gate.inflight().waiting === 0);
  t.is(node.service.gate.abandoned, 1, 'it left the queue');
  leader.releaseCommits?.();
  await first;
  // Give an (erroneous) grant of the abandoned write every chance to propose it.
  await new Promise((resolve) => setImmediate(resolve));
  t.is(leader.nextIndex, proposedBefore + 1, 'only the first write was proposed');
  t.deepEqual(node.service.gate.inflight(), { bytes: 0, commands: 0, waiting: 0 });
});

