/**
 * large-requests (issue 11 e, issue 12 item 4): whatever a server advertises, it serves. Every
 * node's NBD server and the attach agent advertise a 64 MiB maximum block size (nbdkit's
 * maximum) with NBD_INFO_BLOCK_SIZE, and serve 8 MiB and 64 MiB READs and WRITEs, split inside
 * into commands and Read RPCs the layers below accept. Before the fix the agent advertised
 * 32 MiB and refused any read above 4 MiB (EINVAL), and a node served at most 32 MiB.
 * A real 3-node cluster (the CLI), a plain NBD client directly on the leader and on a follower,
 * and through an agent.
 */

import test from 'ava';
import { AttachAgent } from '../../src/attach/agent.js';
import { Command, InfoType, Option, OptionReply, encodeInfoRequest } from '../../src/nbd/protocol.js';
import { LocalCluster } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

const MiB = 1024 * 1024;

function pattern(seed: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let k = 0; k < bytes; k += 512) b.writeUInt32BE((seed * 2654435761 + k) >>> 0, k);
  return b;
}

function port(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** advertised: the maximum block size the server sends in NBD_INFO_BLOCK_SIZE (and the session). */
async function open(portNumber: number): Promise<{ c: RawClient; maxBlock: number }> {
  const c = await RawClient.connect(portNumber);
  await c.greet();
  c.option(Option.go, encodeInfoRequest('default', [InfoType.blockSize]));
  const replies = await c.optionReplies();
  if (replies[replies.length - 1]!.replyType !== OptionReply.ack) throw new Error('GO refused');
  const info = replies.find((r) => r.replyType === OptionReply.info && r.data.readUInt16BE(0) === InfoType.blockSize)!;
  return { c, maxBlock: info.data.readUInt32BE(10) };
}

/** reply: one simple reply and its data, waiting as long as a replicated 64 MiB write may take. */
async function reply(c: RawClient, dataBytes: number): Promise<{ errno: number; data: Buffer }> {
  const h = await c.read(16, 120_000);
  const errno = h.readUInt32BE(4);
  return { errno, data: errno === 0 && dataBytes > 0 ? await c.read(dataBytes, 120_000) : Buffer.alloc(0) };
}

async function writeRead(c: RawClient, offset: number, bytes: number, seed: number): Promise<{ write: number; read: number; equal: boolean }> {
  const data = pattern(seed, bytes);
  c.request({ type: Command.write, handle: 1, offset, payload: data });
  const w = await reply(c, 0);
  c.request({ type: Command.read, handle: 2, offset, lengthBytes: bytes });
  const r = await reply(c, bytes);
  return { write: w.errno, read: r.errno, equal: r.errno === 0 && r.data.equals(data) };
}

test('8 MiB and 64 MiB reads and writes on the leader, a follower and through the agent', async (t) => {
  const cluster = await LocalCluster.start({ volumeSize: '512MiB' });
  let agent: AttachAgent | undefined;
  try {
    const leader = await cluster.leader();
    const follower = cluster.file.nodes.find((n) => n.id !== leader)!.id;
    agent = await AttachAgent.start({
      cluster: cluster.file.nodes.map((n) => ({ id: n.id, admin: n.admin })),
      volume: 'default',
      listen: { host: '127.0.0.1', port: 0 },
    });
    const agentPort = 'port' in agent.address ? agent.address.port : 0;
    const servers = [
      { name: `leader ${leader}`, port: port(cluster.node(leader).nbd), base: 0 },
      { name: `follower ${follower}`, port: port(cluster.node(follower).nbd), base: 128 * MiB },
      { name: 'agent', port: agentPort, base: 256 * MiB },
    ];
    for (const [i, server] of servers.entries()) {
      const { c, maxBlock } = await open(server.port);
      t.is(maxBlock, 64 * MiB, `${server.name} advertises 64 MiB`);
      for (const bytes of [8 * MiB, 64 * MiB]) {
        const started = performance.now();
        const result = await writeRead(c, server.base + (bytes === 8 * MiB ? 0 : 64 * MiB), bytes, i * 10 + bytes / MiB).catch((error: unknown) => {
          t.log(`${server.name}: ${String(error)}; node warnings:\n${cluster.warnings()}`);
          for (const n of cluster.file.nodes) {
            void cluster.api(n.id).metrics().then((m) => t.log(`node ${n.id}: ${JSON.stringify(Object.fromEntries(Object.entries(m.counts).filter(([k]) => k.startsWith('volume.'))))}`), () => undefined);
          }
          throw error;
        });
        t.log(`${server.name}: ${bytes / MiB} MiB write + read in ${Math.round(performance.now() - started)} ms`);
        t.deepEqual(result, { write: 0, read: 0, equal: true }, `${server.name}: ${bytes / MiB} MiB`);
      }
      c.close();
    }
  } finally {
    await agent?.close();
    await cluster.stop();
  }
});
