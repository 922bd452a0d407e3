/**
 * read-from-peer: a block that fails its checksum on the node serving a read is read from a peer
 * instead (LocalVolumeService.read; docs/blockstore.md "Corruption"), so the client gets the data,
 * not EIO, while another replica holds it.
 *  - with fakes: the leader is asked first, then the others; `local` never asks a peer; other
 *    errors are not retried elsewhere; when every peer fails the client gets the local CORRUPT;
 *  - with real processes: a block rotted on a follower (its bytes in the log segment changed, its crc
 *    not) is refused by a `local` read there (the checker: that is what a client got before), is
 *    served intact through the follower's NBD export, and is healed by the next write.
 */

import fs from 'node:fs';
import Database from 'better-sqlite3';
import path from 'node:path';
import test from 'ava';
import { CorruptError, ErrorCode, RemoteError, UsageError } from '../../src/errors.js';
import { segmentName } from '../../src/blockstore/wal.js';
import { Command } from '../../src/nbd/protocol.js';
import type { NodeId } from '../../src/raft/types.js';
import { systemClock } from '../../src/node/clock.js';
import { Counters } from '../../src/node/metrics.js';
import type { Replica } from '../../src/node/replica.js';
import { LocalVolumeService, type VolumeStateView } from '../../src/node/volume-service.js';
import { encodeBlockCommand } from '../../src/node/rpc.js';
import { LocalCluster } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

function service(read: VolumeStateView['read'], readFrom: (peer: NodeId, volume: string, offset: number, length: number, timeoutMs: number) => Promise<Uint8Array>) {
  const replica = { id: 1, readBarrier: () => Promise.resolve(), leaderId: () => 3, peerIds: () => [2, 3], closing: false };
  const view: VolumeStateView = { read, blockStatus: () => [], listVolumes: () => [] };
  const counters = new Counters();
  const warnings: object[] = [];
  const forwarder = { submit: () => Promise.reject(new Error('no writes here')), readFrom };
  const volumes = new LocalVolumeService(replica as unknown as Replica, view, encodeBlockCommand, forwarder, systemClock, 'v', { readTimeoutMs: 5_000 }, counters, { warn: (o) => warnings.push(o) });
  return { volumes, counters, warnings };
}

const rotten = () => {
  throw new CorruptError('block 7 failed its checksum (stored crc 1); not served');
};

test('a rotten block is read from the leader first, then the other peers; the client gets the data', async (t) => {
  const asked: NodeId[] = [];
  const { volumes, counters, warnings } = service(rotten, async (peer, _volume, _offset, length) => {
    asked.push(peer);
    if (peer === 3) throw new RemoteError(ErrorCode.Unavailable, 'node 3 is down');
    return Buffer.alloc(length, 0xab);
  });
  const chunks = await volumes.read('v', 7 * 4096, 8192);
  t.deepEqual(asked, [3, 2], 'the leader (3) first, then node 2');
  t.deepEqual(chunks.map((c) => [c.offset, c.length]), [[7 * 4096, 8192]]);
  t.deepEqual(Buffer.from(chunks[0]!.data!), Buffer.alloc(8192, 0xab));
  t.is(counters.snapshot().counts['volume.read_from_peer.served'], 1);
  t.is(warnings.length, 1);
});

test('a large read: only the rotten piece is read from a peer, in pieces a Block.Read serves; a peer usage error is the answer', async (t) => {
  const MiB = 1024 * 1024;
  const asked: { peer: NodeId; offset: number; length: number; timeoutMs: number }[] = [];
  const rottenAt = 5 * MiB + 7 * 4096;
  const { volumes, counters, warnings } = service(
    (_volume, offset, length) => {
      if (offset <= rottenAt && rottenAt < offset + length) rotten();
      return [{ offset, length, data: new Uint8Array(length).fill(1) }];
    },
    async (peer, _volume, offset, length, timeoutMs) => {
      asked.push({ peer, offset, length, timeoutMs });
      return Buffer.alloc(length, 2);
    },
  );
  const chunks = await volumes.read('v', 0, 10 * MiB);
  t.deepEqual(asked, [{ peer: 3, offset: 4 * MiB, length: 4 * MiB, timeoutMs: 5_000 }], 'one peer read, of the 4 MiB piece that holds the rotten block');
  t.deepEqual(chunks.map((c) => [c.offset, c.length, c.data![0]]), [[0, 4 * MiB, 1], [4 * MiB, 4 * MiB, 2], [8 * MiB, 2 * MiB, 1]]);
  t.is(counters.snapshot().counts['volume.read_from_peer.served'], 1);
  await volumes.read('v', 0, 10 * MiB);
  t.is(warnings.length, 1, 'one warn line per peerReadLogEveryMs, the rest counted');

  const deleted = service(rotten, async () => {
    throw new UsageError(ErrorCode.NotFound, 'no volume v');
  });
  await t.throwsAsync(deleted.volumes.read('v', 0, 4096), { instanceOf: UsageError, message: /no volume v/ }, "the peer's linearizable answer: the volume is gone");
});

test('a local read, another error, or peers that all fail: nothing is served from elsewhere', async (t) => {
  let asked = 0;
  const { volumes, counters } = service(rotten, async (_peer, _volume, _offset, length) => {
    asked++;
    return Buffer.alloc(length - 1); // a short answer is a failure too
  });
  await t.throwsAsync(volumes.read('v', 7 * 4096, 4096, { local: true }), { instanceOf: CorruptError });
  t.is(asked, 0, 'local: no peer asked');
  const failed = await t.throwsAsync(volumes.read('v', 7 * 4096, 4096), { instanceOf: CorruptError });
  t.regex(failed.message, /block 7 failed its checksum/, 'the client gets the local CORRUPT error');
  t.is(asked, 2, 'both peers were asked');
  t.is(counters.snapshot().counts['volume.read_from_peer.failed'], 1);

  const other = service(() => {
    throw new UsageError(ErrorCode.OutOfRange, 'beyond the volume');
  }, async () => {
    asked++;
    return Buffer.alloc(0);
  });
  await t.throwsAsync(other.volumes.read('v', 0, 4096), { instanceOf: UsageError });
  t.is(asked, 2, 'a usage error is not a reason to ask a peer');
});

test('a block rotted on a follower (its bytes in the log) is served intact through that follower, and a write heals it', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3, volumeSize: '16MiB' });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leader();
  const follower = cluster.file.nodes.find((n) => n.id !== leader)!;
  const blocks = [0x11, 0x22, 0x33, 0x44].map((fill) => Buffer.alloc(4096, fill));
  const port = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));

  const writer = await RawClient.connect(port(cluster.node(leader).nbd));
  await writer.go('default', { structured: false });
  const write = async (index: number, data: Buffer) => {
    writer.request({ type: Command.write, handle: index + 1, offset: index * 4096, payload: data });
    t.is((await writer.simpleReply()).errno, 0);
  };
  for (const [i, data] of blocks.entries()) await write(i, data);
  // A local read on the follower is linearizable: it has applied the writes once it answers.
  t.deepEqual(await cluster.api(follower.id).read('default', 0, 4 * 4096, { local: true }), Buffer.concat(blocks));

  // Rot block 2 on the follower: other bytes under the same crc. Its row points into the log (a
  // whole block of a durable write: docs/blockstore.md, Blocks in the log), so the bytes rot in
  // the log segment the row names. The node's connection may hold its shared transaction open
  // for a moment (another connection sees only committed rows): BEGIN IMMEDIATE waits for its lock,
  // so the row is committed when it is read.
  const db = new Database(path.join(follower.data, 'state.db'));
  let row: { seg: number | null; off: number | null };
  try {
    db.pragma('busy_timeout = 30000');
    db.exec('BEGIN IMMEDIATE');
    row = db.prepare('SELECT seg, off FROM blocks WHERE block = 2').get() as typeof row;
    db.exec('ROLLBACK');
  } finally {
    db.close();
  }
  t.not(row, undefined, 'block 2 has a committed row');
  t.not(row.seg, null, 'the block is kept in the log');
  const segment = path.join(follower.data, 'wal', segmentName(row.seg!));
  const fd = fs.openSync(segment, 'r+');
  try {
    t.is(fs.writeSync(fd, Buffer.alloc(4096, 0xee), 0, 4096, row.off!), 4096);
  } finally {
    fs.closeSync(fd);
  }
  const local = await t.throwsAsync(cluster.api(follower.id).read('default', 2 * 4096, 4096, { local: true }));
  t.regex(String(local?.message), /failed its checksum/, 'the follower itself refuses the rotten block (what a client got before)');

  const reader = await RawClient.connect(port(follower.nbd));
  try {
    await reader.go('default', { structured: false });
    reader.request({ type: Command.read, handle: 1, offset: 0, lengthBytes: 4 * 4096 });
    const reply = await reader.simpleReply(4 * 4096);
    t.is(reply.errno, 0, 'no EIO');
    t.deepEqual(reply.data, Buffer.concat(blocks), 'the intact blocks, from a peer');
    // A read larger than one Block.Read (4 MiB) across the rotten block: only its piece comes from a peer.
    const big = 8 * 1024 * 1024;
    reader.request({ type: Command.read, handle: 2, offset: 0, lengthBytes: big });
    const bigReply = await reader.simpleReply(big);
    t.is(bigReply.errno, 0, 'no EIO for 8 MiB either');
    t.deepEqual(bigReply.data.subarray(0, 4 * 4096), Buffer.concat(blocks));
    t.true(bigReply.data.subarray(4 * 4096).every((b) => b === 0), 'the rest reads as zeros');
    const counts = (await cluster.api(follower.id).metrics()).counts;
    t.true((counts['volume.read_from_peer.served'] ?? 0) >= 1, 'counted');

    // The next write of the block replaces the rotten row: the follower serves it from its own state again.
    await write(2, Buffer.alloc(4096, 0x55));
    t.deepEqual(await cluster.api(follower.id).read('default', 2 * 4096, 4096, { local: true }), Buffer.alloc(4096, 0x55));
  } finally {
    reader.close();
    writer.close();
  }
});
