/**
 * slow-leader: the attach agent against fake nodes (in-process gRPC servers answering Status,
 * VolumeList and Write as a chard node does), so that how long a node takes is the test's choice.
 *
 * Proves: (1) a leader that answers its status polls but takes longer than the agent's
 * callTimeoutMs to answer a write (it answers after its 9th poll) is waited for — the write is sent once and acknowledged — where
 * an agent that abandoned each attempt at callTimeoutMs re-sent it to the back of the same queue
 * and acknowledged nothing (the stall leader-transfer.test.ts found under load); (2) a leader that
 * stops answering anything (paused, cut off from the agent) while no majority names another is
 * left after callTimeoutMs of silence for the next node, which serves the write.
 */

import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { AttachAgent } from '../../src/attach/agent.js';
import { Command } from '../../src/nbd/protocol.js';
import { buildChardServer, listen } from '../../src/transport/grpc-server.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

const volumeBytes = 1024 * 1024;

interface FakeNode {
  address: string;
  id: number;
  /**
   * holdWritesForPolls: a Write is answered only once the node has answered this many status
   * polls after it arrived — a busy leader that is plainly alive, for as long as the test wants.
   */
  holdWritesForPolls: number;
  polls: number;
  /** silent: the node answers nothing (a paused process): calls hang until their deadline. */
  silent: boolean;
  writes: number;
  /** answeredAt: when the last Write was answered. */
  answeredAt: number;
  server: grpc.Server;
}

/** fakeNode: node `id` that says node `leader` leads term 1. */
async function fakeNode(id: number, leader: number): Promise<FakeNode> {
  const node = { id, holdWritesForPolls: 0, polls: 0, silent: false, writes: 0 } as FakeNode;
  const hang = () => new Promise<never>(() => undefined);
  const polled: Array<() => void> = [];
  node.server = buildChardServer({
    Admin: {
      Status: () => {
        if (node.silent) return hang();
        node.polls++;
        for (const wake of polled.splice(0)) wake();
        return { node_id: id, role: id === leader ? 'leader' : 'follower', term: 1, leader_id: leader };
      },
      VolumeList: () => (node.silent ? hang() : { volumes: [{ name: 'v', size_bytes: volumeBytes }] }),
    },
    Block: {
      Write: async () => {
        if (node.silent) return hang();
        node.writes++;
        const until = node.polls + node.holdWritesForPolls;
        while (node.polls < until) await new Promise<void>((resolve) => polled.push(resolve));
        node.answeredAt = performance.now();
        return { applied_index: 0 };
      },
    },
  });
  node.address = await listen(node.server, '127.0.0.1:0');
  return node;
}

async function writeOnce(agent: AttachAgent): Promise<{ errno: number; ms: number; ackedAt: number }> {
  const client = await RawClient.connect('port' in agent.address ? agent.address.port : 0);
  try {
    await client.go('v', { structured: false });
    const started = performance.now();
    client.request({ type: Command.write, handle: 1, offset: 0, payload: Buffer.alloc(4096, 7) });
    const reply = await client.read(16, 60_000);
    const ackedAt = performance.now();
    return { errno: reply.readUInt32BE(4), ms: ackedAt - started, ackedAt };
  } finally {
    client.stream.destroy();
  }
}

test('a leader slower than callTimeoutMs that answers its polls is waited for: the write is sent once', async (t) => {
  const leader = await fakeNode(1, 1);
  t.teardown(() => leader.server.forceShutdown());
  // The 9th poll comes at least leaderCheckAfterMs (300) + 8 x leaderPollMs (150) = 1.5 s after
  // the write: 5x the call timeout.
  leader.holdWritesForPolls = 9;
  const agent = await AttachAgent.start({
    cluster: [{ id: 1, admin: leader.address }],
    volume: 'v',
    listen: { host: '127.0.0.1', port: 0 },
    limits: { callTimeoutMs: 300, unavailableTimeoutMs: 10_000 },
  });
  t.teardown(() => agent.close());
  const { errno, ms, ackedAt } = await writeOnce(agent);
  const status = agent.status();
  t.log(`write answered (errno ${errno}) after ${ms.toFixed(0)} ms (the leader answers after 9 status polls, call timeout 300 ms), ${leader.writes} Write call(s), counters ${JSON.stringify(status.counters)}`);
  t.is(errno, 0, 'acknowledged, not EIO');
  t.is(leader.writes, 1, 'sent once: no attempt abandoned and re-sent');
  t.true(ms >= 1400 && ackedAt >= leader.answeredAt, `answered when the leader answered (${ms.toFixed(0)} ms)`);
});

test('a leader that answers nothing while no majority names another is left after callTimeoutMs for the next node', async (t) => {
  const n1 = await fakeNode(1, 1);
  const n2 = await fakeNode(2, 1);
  const n3 = await fakeNode(3, 1);
  t.teardown(() => {
    for (const n of [n1, n2, n3]) n.server.forceShutdown();
  });
  const agent = await AttachAgent.start({
    cluster: [n1, n2, n3].map((n) => ({ id: n.id, admin: n.address })),
    volume: 'v',
    listen: { host: '127.0.0.1', port: 0 },
    limits: { callTimeoutMs: 500, unavailableTimeoutMs: 20_000 },
  });
  t.teardown(() => agent.close());
  // n2 and n3 still name n1 (their lease has not run out): the watch cannot redirect by majority.
  n1.silent = true;
  const { errno, ms } = await writeOnce(agent);
  const status = agent.status();
  t.log(`write answered (errno ${errno}) after ${ms.toFixed(0)} ms via ${n2.writes > 0 ? 'n2' : 'n3'}, counters ${JSON.stringify(status.counters)}`);
  t.is(errno, 0, 'acknowledged, not EIO');
  t.is(n2.writes + n3.writes, 1, 'served by a node that answers');
  t.true((status.counters['agent.leader_silent'] ?? 0) >= 1, 'left because n1 answered no poll');
  // The silence bound (500 ms) plus a poll round, not the leader call deadline (20 s here).
  t.true(ms < 15_000, `moved on after ${ms.toFixed(0)} ms`);
});
