/**
 * compaction-catchup: real node processes, the log compacted every 16 entries behind each node's
 * durable state (BlockStore.compactLog, no snapshot), 4 trailing entries. A follower is killed,
 * the cluster takes 120 writes (several compactions), and the follower is restarted.
 *
 * Proves, end to end: with the default retention (logRetainBytesMax 1 GiB) the leader kept the
 * log for the stopped follower, which catches up from it — no snapshot is made or installed
 * anywhere; with logRetainBytesMax 0 the log is compacted past the follower, the leader makes a
 * snapshot on demand (raft's Ready.snapshotWanted) and the follower installs it. In both, every
 * acknowledged write reads back from the restarted follower and `chard verify` finds the
 * replicas equal.
 */

import test from 'ava';
import { AckedWriter, LocalCluster, block } from '../helpers/local-cluster.js';

async function run(logRetainBytesMax: number | undefined) {
  const cluster = await LocalCluster.start({
    nodes: 3,
    nodeOptions: { limits: { compactEveryEntries: 16 }, store: { compactionTrailingEntries: 4, ...(logRetainBytesMax === undefined ? {} : { logRetainBytesMax }) } },
  });
  try {
    const writer = new AckedWriter(cluster.client);
    for (let i = 0; i < 10; i++) await writer.write(i, block(`before-${i}`));
    const leader = await cluster.leader();
    const away = [1, 2, 3].find((id) => id !== leader)!;
    cluster.kill(away);
    await cluster.waitDead(away);
    for (let i = 0; i < 120; i++) await writer.write(100 + i, block(`while-away-${i}`));
    const leaderStatus = await cluster.api(leader).status(5_000);
    await cluster.restart(away);
    await cluster.waitRejoined(away);
    const problems = await writer.check(cluster.api(away));
    const counts = new Map<number, Record<string, number>>();
    for (const id of [1, 2, 3]) counts.set(id, (await cluster.api(id).metrics()).counts);
    const verify = await cluster.verify();
    return { leader, away, leaderStatus, problems, counts, verify };
  } finally {
    await cluster.stop();
  }
}

test('a restarted follower catches up from the log the leader kept for it: no snapshot anywhere', async (t) => {
  const r = await run(undefined);
  t.deepEqual(r.problems, []);
  t.is(r.verify.code, 0, r.verify.stdout + r.verify.stderr);
  const leader = r.counts.get(r.leader)!;
  t.true((leader['log.compacted'] ?? 0) >= 1 || (r.counts.get(r.away)!['log.compacted'] ?? 0) >= 1, 'the nodes compacted their logs');
  for (const [id, c] of r.counts) {
    t.is(c['snapshot.created'] ?? 0, 0, `node ${id} made no snapshot`);
    t.is(c['snapshot.installed'] ?? 0, 0, `node ${id} installed no snapshot`);
  }
  t.log(`leader ${r.leader}: log compacted ${leader['log.compacted'] ?? 0} times while node ${r.away} was away; it caught up from the log`);
});

test('with logRetainBytesMax 0 the log is compacted past the stopped follower: the leader makes a snapshot on demand and the follower installs it', async (t) => {
  const r = await run(0);
  t.deepEqual(r.problems, []);
  t.is(r.verify.code, 0, r.verify.stdout + r.verify.stderr);
  const leader = r.counts.get(r.leader)!;
  t.true((leader['log.compacted'] ?? 0) >= 3, `the leader compacted (${leader['log.compacted'] ?? 0} times)`);
  t.true((leader['snapshot.wanted'] ?? 0) >= 1, 'raft wanted a snapshot');
  t.true((leader['snapshot.created'] ?? 0) >= 1, 'the leader made one');
  t.true((r.counts.get(r.away)!['snapshot.installed'] ?? 0) >= 1, 'the follower installed it');
});
