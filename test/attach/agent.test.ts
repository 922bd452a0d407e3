/**
 * agent: the attach agent in front of a real 3-node cluster, driven by a plain NBD client.
 *
 * Proves: (1) a writer connected to the agent sees no error while the leader is killed (kill -9)
 * five times — every write is answered, every answered write reads back at the end from every
 * replica, and replicas verify equal; the stall of each failover (longest gap between completed
 * writes) is printed. (2) With the whole cluster down for 10 s, requests wait and then complete
 * once it is back (no error), and the stall is printed. (3) With a short unavailable timeout and
 * no cluster, a request fails with EIO instead of hanging or being dropped. (4) A leader paused
 * (SIGSTOP) three times: the agent's leader watch moves the in-flight writes to the new leader
 * while the old one is still stopped (counted as agent.leader_moved), no error, nothing lost.
 */

import test, { type ExecutionContext } from 'ava';
import { type AgentLimits, AttachAgent } from '../../src/attach/agent.js';
import { Command } from '../../src/nbd/protocol.js';
import { LocalCluster, quantile, retrying } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

const blockBytes = 4096;

function tagged(tag: number): Buffer {
  const b = Buffer.alloc(blockBytes);
  for (let i = 0; i < blockBytes; i += 8) b.writeDoubleBE(tag, i);
  return b;
}

/** simpleReply: one simple reply (no structured replies negotiated), waiting up to `timeoutMs`. */
async function simpleReply(client: RawClient, timeoutMs: number): Promise<{ errno: number; handle: bigint }> {
  const h = await client.read(16, timeoutMs);
  if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`expected a simple reply, magic ${h.readUInt32BE(0).toString(16)}`);
  return { errno: h.readUInt32BE(4), handle: h.readBigUInt64BE(8) };
}

/** Writer: sequential 4 KiB writes over one NBD connection, recording completion times. */
class Writer {
  readonly completions: number[] = [];
  readonly acked = new Map<number, number>();
  errors: string[] = [];
  private stopped = false;
  private handle = 0;
  constructor(private readonly client: RawClient) {}

  async run(blocks: number): Promise<void> {
    for (let n = 1; !this.stopped; n++) {
      const block = n % blocks;
      this.client.request({ type: Command.write, handle: ++this.handle, offset: block * blockBytes, payload: tagged(n) });
      const reply = await simpleReply(this.client, 180_000);
      if (reply.errno !== 0) {
        this.errors.push(`write ${n}: errno ${reply.errno}`);
        return;
      }
      this.acked.set(block, n);
      this.completions.push(performance.now());
    }
  }

  stop(): void {
    this.stopped = true;
  }

  /** stallAround: the longest gap between completions within [from, from + windowMs]. */
  stallAround(from: number, windowMs: number): number {
    let last = this.completions.filter((t) => t <= from).pop() ?? from;
    let longest = 0;
    for (const t of this.completions) {
      if (t <= from) continue;
      if (t > from + windowMs) break;
      longest = Math.max(longest, t - last);
      last = t;
    }
    return longest;
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** checkReplicas: every acknowledged write reads back from every replica, and verify is equal. */
async function checkReplicas(t: ExecutionContext, cluster: LocalCluster, writer: Writer): Promise<void> {
  for (const n of cluster.file.nodes) {
    for (const [block, tag] of writer.acked) {
      const got = await retrying(() => cluster.api(n.id).read('default', block * blockBytes, blockBytes));
      if (!got.equals(tagged(tag))) {
        t.fail(`node ${n.id} block ${block}: expected write ${tag}, got ${got.readDoubleBE(0)}`);
        return;
      }
    }
  }
  const verify = await cluster.verify();
  t.is(verify.code, 0, verify.stderr + verify.stdout);
}

/** startAgent: an agent on a loopback port in front of `cluster`, stopped at teardown. */
async function startAgent(t: ExecutionContext, cluster: LocalCluster, limits?: Partial<AgentLimits>): Promise<AttachAgent> {
  const agent = await AttachAgent.start({
    cluster: cluster.file.nodes.map((n) => ({ id: n.id, admin: n.admin })),
    volume: 'default',
    listen: { host: '127.0.0.1', port: 0 },
    ...(limits !== undefined ? { limits } : {}),
  });
  t.teardown(() => agent.close());
  return agent;
}

test('a writer through the agent sees no error across 5 leader kills and a 10 s full outage', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3, volumeSize: '64MiB' });
  t.teardown(() => cluster.stop());
  const agent = await startAgent(t, cluster);
  const port = 'port' in agent.address ? agent.address.port : 0;
  const client = await RawClient.connect(port);
  const { flags } = await client.go('default', { structured: false });
  t.true((flags & (1 << 8)) !== 0, 'the agent advertises CAN_MULTI_CONN');
  const writer = new Writer(client);
  const running = writer.run(512);
  try {
    const stalls: number[] = [];
    for (let kill = 0; kill < 5; kill++) {
      await sleep(600);
      const leader = await cluster.leader();
      const at = performance.now();
      cluster.kill(leader);
      await cluster.waitDead(leader);
      const before = writer.completions.length;
      while (writer.completions.length < before + 20 && writer.errors.length === 0 && performance.now() - at < 15_000) await sleep(20);
      stalls.push(writer.stallAround(at, performance.now() - at));
      await cluster.restart(leader);
      await cluster.waitRejoined(leader); // the next kill is a single failure again
    }
    t.log(`leader kill stalls through the agent (ms): ${stalls.map((s) => s.toFixed(0)).join(' ')}; p50 ${quantile(stalls, 0.5).toFixed(0)}, max ${Math.max(...stalls).toFixed(0)}`);

    // The whole cluster down for 10 s.
    await sleep(500);
    const outageAt = performance.now();
    for (const n of cluster.file.nodes) cluster.kill(n.id);
    for (const n of cluster.file.nodes) await cluster.waitDead(n.id);
    await sleep(10_000);
    const backAt = performance.now();
    for (const n of cluster.file.nodes) await cluster.restart(n.id);
    const listeningMs = performance.now() - backAt;
    const before = writer.completions.length;
    while (writer.completions.length < before + 20 && writer.errors.length === 0 && performance.now() - backAt < 30_000) await sleep(20);
    const outageStall = writer.stallAround(outageAt, performance.now() - outageAt);
    t.log(`full outage of 10 s: writer stalled ${outageStall.toFixed(0)} ms; first write ${(outageAt + outageStall - backAt).toFixed(0)} ms after the restart began (all three nodes serving after ${listeningMs.toFixed(0)} ms)`);
    t.log(`agent: ${JSON.stringify({ ...agent.status(), counters: undefined })}`);

    writer.stop();
    await running;
    t.deepEqual(writer.errors, [], 'the writer saw no error');
    t.true(writer.completions.length > before, 'writes resumed after the outage');
    await checkReplicas(t, cluster, writer);
  } catch (error) {
    t.log(cluster.logs());
    throw error;
  } finally {
    writer.stop();
    client.stream.destroy();
  }
});

test('a paused leader: the agent finds the new leader by asking the nodes, not by its 2 s call timeout', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3, volumeSize: '64MiB' });
  t.teardown(() => cluster.stop());
  // A call timeout no wait below reaches: only the leader watch can move a write while the leader
  // is stopped. (With the default 2 s one, on a loaded machine where the election and the poll took
  // longer, the call timeout moved the writes first and leader_moved missed a round.)
  const callTimeoutMs = 120_000;
  const agent = await startAgent(t, cluster, { callTimeoutMs });
  const client = await RawClient.connect('port' in agent.address ? agent.address.port : 0);
  await client.go('default', { structured: false });
  const writer = new Writer(client);
  const running = writer.run(256);
  // The leader stays stopped for at least pauseMs, and on until the writes resumed (they had to
  // within pauseMs - 500 ms: an election plus 20 writes on a loaded machine could take longer).
  const pauseMs = 6000;
  const resumeWaitMsMax = 60_000;
  const paused: number[] = [];
  try {
    const stalls: number[] = [];
    for (let round = 0; round < 3; round++) {
      await sleep(800);
      const leader = await cluster.leader();
      const at = performance.now();
      cluster.kill(leader, 'SIGSTOP');
      paused.push(leader);
      const before = writer.completions.length;
      while (writer.completions.length < before + 20 && writer.errors.length === 0 && performance.now() - at < resumeWaitMsMax) await sleep(20);
      const stall = writer.stallAround(at, performance.now() - at);
      t.true(writer.completions.length >= before + 20, `round ${round}: writes resumed while n${leader} was still stopped`);
      stalls.push(stall);
      await sleep(Math.max(0, pauseMs - (performance.now() - at)));
      cluster.kill(leader, 'SIGCONT');
      paused.pop();
    }
    const moved = agent.status().counters['agent.leader_moved'] ?? 0;
    t.log(`paused-leader stalls through the agent (ms): ${stalls.map((s) => s.toFixed(0)).join(' ')}; leader_moved ${moved}, polls ${agent.status().counters['agent.leader_polls'] ?? 0}`);
    t.true(moved >= 3, 'each time the leader watch, not the call timeout, moved the writes to the new leader');
    writer.stop();
    await running;
    t.deepEqual(writer.errors, [], 'the writer saw no error');
    await checkReplicas(t, cluster, writer);
  } finally {
    for (const id of paused) cluster.kill(id, 'SIGCONT');
    writer.stop();
    client.stream.destroy();
  }
});

test('with the cluster unreachable past the timeout, a request fails with EIO (not a hang)', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 1, volumeSize: '16MiB' });
  t.teardown(() => cluster.stop());
  const agent = await AttachAgent.start({
    cluster: cluster.file.nodes.map((n) => ({ id: n.id, admin: n.admin })),
    volume: 'default',
    listen: { host: '127.0.0.1', port: 0 },
    limits: { unavailableTimeoutMs: 2000, callTimeoutMs: 500 },
  });
  t.teardown(() => agent.close());
  const client = await RawClient.connect('port' in agent.address ? agent.address.port : 0);
  await client.go('default', { structured: false });
  client.request({ type: Command.write, handle: 1, offset: 0, payload: tagged(1) });
  t.is((await simpleReply(client, 10_000)).errno, 0);
  cluster.kill(1);
  await cluster.waitDead(1);
  const started = performance.now();
  client.request({ type: Command.write, handle: 2, offset: 0, payload: tagged(2) });
  const reply = await simpleReply(client, 30_000);
  const waited = performance.now() - started;
  t.is(reply.errno, 5, 'EIO');
  // The upper bound tells a timeout (2 s here) from a hang or the 120 s default; 25 s leaves a
  // loaded machine room (it was 10 s).
  t.true(waited >= 1500 && waited < 25_000, `failed after ${waited.toFixed(0)} ms`);
  t.log(`request failed with EIO after ${waited.toFixed(0)} ms (timeout 2000 ms)`);
  client.stream.destroy();
});
