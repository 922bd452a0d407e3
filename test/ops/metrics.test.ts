/**
 * metrics: Prometheus text from real node processes (`chard cluster up` gives each a `metrics`
 * listener, listed in cluster.json) and from the attach agent. Scrapes are parsed strictly
 * (test/ops/prom-text.ts); the test checks names, types and labels, that exactly one node reports
 * itself leader, and that the values move after NBD writes (to the leader and to a follower, so
 * the forwarded count moves too).
 */

import test from 'ava';
import { AttachAgent } from '../../src/attach/agent.js';
import { Command } from '../../src/nbd/protocol.js';
import { LocalCluster } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';
import { type Family, scrape, value } from './prom-text.js';
import { until } from '../helpers/until.js';

const expectedTypes: Record<string, Family['type']> = {
  chard_raft_term: 'gauge',
  chard_raft_role: 'gauge',
  chard_raft_commit_index: 'gauge',
  chard_raft_applied_index: 'gauge',
  chard_raft_leader_changes_total: 'counter',
  chard_raft_proposal_duration_seconds: 'histogram',
  chard_raft_fsync_duration_seconds: 'histogram',
  chard_raft_entries_per_fsync: 'histogram',
  chard_nbd_requests_total: 'counter',
  chard_nbd_request_duration_seconds: 'histogram',
  chard_nbd_bytes_total: 'counter',
  chard_nbd_inflight_requests: 'gauge',
  chard_snapshot_index: 'gauge',
  chard_snapshot_bytes: 'gauge',
  chard_snapshots_total: 'counter',
  chard_log_compactions_total: 'counter',
  chard_state_checkpoints_total: 'counter',
  chard_state_blocks_placed_total: 'counter',
  chard_reads_from_peer_total: 'counter',
  chard_state_wal_pending_bytes: 'gauge',
  chard_log_compact_duration_seconds: 'histogram',
  chard_forwarded_requests_total: 'counter',
  chard_raft_follower_lag_entries: 'gauge',
};

/** writeBlocks: `count` 4 KiB NBD writes on one connection, each answered before the next. */
async function writeBlocks(nbd: string, count: number, tag: number): Promise<void> {
  const port = Number(nbd.slice(nbd.lastIndexOf(':') + 1));
  const client = await RawClient.connect(port);
  try {
    await client.go('default', { structured: false });
    for (let i = 0; i < count; i++) {
      client.request({ type: Command.write, handle: i + 1, offset: i * 4096, payload: Buffer.alloc(4096, tag) });
      const reply = await client.simpleReply();
      if (reply.errno !== 0) throw new Error(`write ${i}: errno ${reply.errno}`);
    }
  } finally {
    client.close();
  }
}

test('every node serves Prometheus metrics that move after writes', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3 });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leader();
  const follower = cluster.file.nodes.find((n) => n.id !== leader)!.id;
  for (const n of cluster.file.nodes) t.regex(n.metrics ?? '', /^127\.0\.0\.1:\d+$/, `cluster.json lists node ${n.id}'s metrics address`);

  const before = new Map<number, Map<string, Family>>();
  for (const n of cluster.file.nodes) {
    const s = await scrape(n.metrics!);
    t.is(s.status, 200);
    t.regex(s.contentType, /^text\/plain; version=0\.0\.4/);
    for (const [name, type] of Object.entries(expectedTypes)) {
      t.is(s.families.get(name)?.type, type, `node ${n.id}: ${name} is a ${type}`);
    }
    t.is(value(s.families, 'chard_raft_term', { node: String(n.id) }) !== undefined, true, 'samples carry the node label');
    t.true((value(s.families, 'chard_raft_leader_changes_total') ?? 0) >= 1, `node ${n.id} has seen the first leader`);
    t.is(s.families.get('chard_process_resident_memory_bytes')?.type, 'gauge', 'process metrics from the same registry');
    before.set(n.id, s.families);
  }
  const leaders = [...before].filter(([, f]) => value(f, 'chard_raft_role', { role: 'leader' }) === 1).map(([id]) => id);
  t.deepEqual(leaders, [leader], 'exactly the leader reports role="leader" 1');
  for (const [id, f] of before) {
    for (const role of ['follower', 'candidate', 'pre-candidate', 'leader']) t.not(value(f, 'chard_raft_role', { role }), undefined, `node ${id} exports role ${role}`);
  }

  await writeBlocks(cluster.node(leader).nbd, 20, 0xa1);
  await writeBlocks(cluster.node(follower).nbd, 5, 0xb2);

  const l0 = before.get(leader)!;
  const l1 = (await scrape(cluster.node(leader).metrics!)).families;
  for (const [name, type] of Object.entries(expectedTypes)) t.is(l1.get(name)?.type, type, `leader: ${name} is a ${type} after writes`);
  t.true(value(l1, 'chard_nbd_requests_total', { command: 'write' })! >= 20, 'NBD writes counted by command');
  t.true(value(l1, 'chard_nbd_bytes_total', { direction: 'in' })! >= 20 * 4096, 'bytes in');
  t.true(value(l1, 'chard_nbd_request_duration_seconds_count', { command: 'write' })! >= 20, 'NBD write latency observed');
  t.is(value(l1, 'chard_nbd_request_duration_seconds_bucket', { command: 'write', le: '+Inf' }), value(l1, 'chard_nbd_request_duration_seconds_count', { command: 'write' }));
  t.true(value(l1, 'chard_raft_commit_index')! >= value(l0, 'chard_raft_commit_index')! + 25, 'commit index moved by every write');
  t.true(value(l1, 'chard_raft_applied_index')! > value(l0, 'chard_raft_applied_index')!, 'applied index moved');
  t.true(value(l1, 'chard_raft_proposal_duration_seconds_count')! >= 25, 'proposal latency observed on the leader');
  t.true(value(l1, 'chard_raft_fsync_duration_seconds_count')! > value(l0, 'chard_raft_fsync_duration_seconds_count')!, 'fsyncs observed');
  t.true(value(l1, 'chard_raft_entries_per_fsync_sum')! >= value(l0, 'chard_raft_entries_per_fsync_sum')! + 25, 'entries per fsync sum covers the writes');
  t.is(value(l1, 'chard_nbd_inflight_requests'), 0, 'nothing in flight after the writes');
  t.not(value(l1, 'chard_raft_follower_lag_entries', { peer: String(follower) }), undefined, 'the leader reports each member lag');

  const f1 = (await scrape(cluster.node(follower).metrics!)).families;
  t.true(value(f1, 'chard_forwarded_requests_total')! >= 5, 'the follower forwarded its writes');
  t.true(value(f1, 'chard_nbd_requests_total', { command: 'write' })! >= 5);

  // The writes are far below checkpointWalBytes: once the WAL went idle, the worker checkpoints it
  // and nothing stays pending (the gauge is copied once a second). Deadline only for a hang.
  const idleCheckpoints = (f: Map<string, Family>) => value(f, 'chard_state_checkpoints_total', { trigger: 'idle' }) ?? 0;
  let l2 = l1;
  await until(t, 'an idle checkpoint on the leader with nothing pending', async () => {
    l2 = (await scrape(cluster.node(leader).metrics!)).families;
    return idleCheckpoints(l2) > idleCheckpoints(l1) && value(l2, 'chard_state_wal_pending_bytes') === 0;
  }, 60_000);
  t.true(idleCheckpoints(l2) > idleCheckpoints(l1), 'the leader checkpointed its idle state.db WAL');
  t.is(value(l2, 'chard_state_wal_pending_bytes'), 0, 'nothing of the WAL left to checkpoint');
  t.is(value(l2, 'chard_state_checkpoints_total', { trigger: 'size' }), 0, 'no WAL reached checkpointWalBytes');

  // Every node applies only entries durable in its own log, so each whole 4 KiB write became a
  // pointer into the log on every node (copied once a second into the counter).
  for (const id of [leader, follower]) {
    await until(t, `node ${id} counts the writes as blocks in the log`, async () => {
      const f = (await scrape(cluster.node(id).metrics!)).families;
      return (value(f, 'chard_state_blocks_placed_total', { where: 'in_log' }) ?? 0) >= 25;
    }, 60_000);
  }
  t.is(value((await scrape(cluster.node(leader).metrics!)).families, 'chard_state_blocks_placed_total', { where: 'relocated' }), 0, 'nothing compacted, nothing relocated');

  const notFound = await fetch(`http://${cluster.node(leader).metrics}/other`);
  t.is(notFound.status, 404);
  const post = await fetch(`http://${cluster.node(leader).metrics}/metrics`, { method: 'POST' });
  t.is(post.status, 405);
});

test('the attach agent serves its own metrics', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 1 });
  t.teardown(() => cluster.stop());
  await cluster.leader();
  const agent = await AttachAgent.start({
    cluster: cluster.file.nodes.map((n) => ({ id: n.id, admin: n.admin })),
    volume: 'default',
    listen: { host: '127.0.0.1', port: 0 },
    metrics: '127.0.0.1:0',
  });
  t.teardown(() => agent.close());
  t.regex(agent.metricsAddress ?? '', /^127\.0\.0\.1:\d+$/);
  const port = 'port' in agent.address ? agent.address.port : 0;
  await writeBlocks(`127.0.0.1:${port}`, 8, 0xc3);
  const s = await scrape(agent.metricsAddress!);
  t.is(s.status, 200);
  t.true(value(s.families, 'chard_nbd_requests_total', { command: 'write', agent: 'default' })! >= 8);
  t.true(value(s.families, 'chard_nbd_request_duration_seconds_count', { command: 'write' })! >= 8);
  t.is(s.families.get('chard_nbd_request_duration_seconds')?.type, 'histogram');
  t.is(s.families.get('chard_raft_term'), undefined, 'no raft metrics in an agent');
});
