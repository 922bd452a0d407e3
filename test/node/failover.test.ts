/**
 * failover: kill -9 of the leader, 20 times, on a real 3-node cluster of OS processes.
 *
 * Proves: after each kill a new leader is elected and serves a write (measured from the kill to
 * the acknowledged write of a client that starts writing at the kill; the election time is taken
 * from the new leader's log). Each kill is a single failure: the killed node is restarted and
 * rejoined (LocalCluster.waitRejoined) before the next one; without that wait (and while `node
 * start` returned at the spawn) the next kill came while it was still starting, and its failover
 * waited for it (p50 1-1.5 s instead of ~0.45 s).
 * The target is 1 s; the test asserts p50 <= 1.5 s as a regression bound that a loaded 2-core
 * machine still meets, and every one within the liveness bound; no
 * acknowledged write is ever lost (every block acknowledged before any kill reads back the same
 * from every node at the end); `chard verify` finds every replica equal at the same applied
 * index. It fails if a write goes missing, a replica diverges, or a failover never completes.
 */

import { readFileSync } from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { AckedWriter, LocalCluster, block, quantile } from '../helpers/local-cluster.js';

/** roleChanges: the "role changed" lines of a node's log (pino: time is the wall clock in ms). */
function roleChanges(dataDir: string): { role: string; time: number }[] {
  const lines = readFileSync(path.join(dataDir, 'node.log'), 'utf8').split('\n');
  const out: { role: string; time: number }[] = [];
  for (const line of lines) {
    if (!line.includes('"role changed"')) continue;
    try {
      const entry = JSON.parse(line) as { role: string; time: number };
      out.push({ role: entry.role, time: entry.time });
    } catch {
      // a torn last line of a killed node
    }
  }
  return out;
}

const kills = 20;
const failoverMaxMs = 5000;

test('kill -9 of the leader 20 times: a new leader serves, nothing acknowledged is lost, replicas equal', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3 });
  t.teardown(() => cluster.stop());
  const writer = new AckedWriter(cluster.client);
  const electedMs: number[] = [];
  const servedMs: number[] = [];
  let nextBlock = 0;
  try {
    for (let round = 0; round < kills; round++) {
      for (let i = 0; i < 10; i++) await writer.write(nextBlock++ % 4096, block(`r${round}-w${i}`));
      const leader = await cluster.leader();
      const killedAt = performance.now();
      const killedAtWall = Date.now();
      cluster.kill(leader);
      // A client writes right away and keeps retrying: what it sees is the failover time.
      await writer.write(nextBlock++ % 4096, block(`r${round}-after`), failoverMaxMs);
      servedMs.push(performance.now() - killedAt);
      // The election time from the new leader's own log (wall clock of the same machine).
      const elected = cluster.file.nodes
        .filter((n) => n.id !== leader)
        .flatMap((n) => roleChanges(n.data))
        .filter((e) => e.role === 'leader' && e.time >= killedAtWall)
        .sort((a, b) => a.time - b.time)[0];
      t.truthy(elected, `round ${round}: a new leader logged its election`);
      electedMs.push(elected === undefined ? Number.NaN : elected.time - killedAtWall);
      await cluster.waitDead(leader);
      await cluster.restart(leader);
      // The next kill is of a whole cluster again: one failure at a time.
      await cluster.waitRejoined(leader);
    }
    const fmt = (v: number[]) => `p50 ${quantile(v, 0.5).toFixed(0)} ms, max ${Math.max(...v).toFixed(0)} ms`;
    t.log(`${kills} leader kills: elected ${fmt(electedMs)}; first write served ${fmt(servedMs)}`);
    t.log(`served after kill (ms): ${servedMs.map((v) => v.toFixed(0)).join(' ')}`);
    t.true(quantile(servedMs, 0.5) <= 1500, `p50 of serving after a leader kill is ${quantile(servedMs, 0.5).toFixed(0)} ms (regression bound 1.5 s; target 1 s)`);
    t.true(Math.max(...servedMs) < failoverMaxMs);

    // Every node holds every acknowledged write.
    await cluster.client.waitForLeader(10_000);
    for (const n of cluster.file.nodes) {
      const problems = await writer.check(cluster.api(n.id));
      t.deepEqual(problems, [], `node ${n.id} lost acknowledged writes`);
    }
    const verify = await cluster.verify();
    t.is(verify.code, 0, verify.stderr + verify.stdout);
    t.true(JSON.parse(verify.stdout).equal);
  } catch (error) {
    t.log(cluster.logs());
    throw error;
  }
});
