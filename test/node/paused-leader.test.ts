/**
 * paused-leader: a leader that is SIGSTOPped (a stalled VM, a GC pause, a frozen disk) does not
 * answer and does not close its connections. Writes and reads that a follower had forwarded to it
 * must not wait for it to wake up (or for an RPC deadline): once the follower learns of the new
 * leader it retries there with the same session stamp (replica.leaderChange, volume-service.ts)
 * and re-sends its ReadIndex (replica.onSoftState).
 *
 * Proves: with the leader stopped for 8 s, every write and read an NBD client had in flight on a
 * follower, or sent after the stop, completes while the old leader is still stopped; after it
 * resumes, every node holds exactly the acknowledged data and `chard verify` is equal. Before the
 * fix the forwarded writes completed only when the old leader resumed (~8 s), and this fails.
 */

import test from 'ava';
import { NbdClient } from '../../src/chaos/workload.js';
import { LocalCluster, block, retrying } from '../helpers/local-cluster.js';

const pauseMs = 8000;
const blockBytes = 4096;

test('writes and reads forwarded by a follower complete while the leader is paused', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3 });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leader();
  const follower = cluster.file.nodes.find((n) => n.id !== leader)!;
  const [host, port] = [follower.nbd.slice(0, follower.nbd.lastIndexOf(':')), Number(follower.nbd.slice(follower.nbd.lastIndexOf(':') + 1))];
  const nbd = await NbdClient.connect(host, port, 'default');
  t.teardown(() => nbd.close());
  for (let i = 0; i < 8; i++) await nbd.write(i * blockBytes, block(`warm-${i}`));

  let resumed = false;
  const stoppedAt = performance.now();
  cluster.kill(leader, 'SIGSTOP');
  const resume = setTimeout(() => {
    resumed = true;
    cluster.kill(leader, 'SIGCONT');
  }, pauseMs);
  t.teardown(() => {
    clearTimeout(resume);
    try {
      cluster.kill(leader, 'SIGCONT');
    } catch {
      // already gone
    }
  });

  const written = new Map<number, Buffer>();
  const doneMs: number[] = [];
  let completedAfterResume = 0;
  const ops: Promise<void>[] = [];
  for (let i = 0; i < 16; i++) {
    const data = block(`paused-${i}`);
    const offset = (100 + i) * blockBytes;
    ops.push(
      nbd.write(offset, data).then(() => {
        written.set(offset, data);
        doneMs.push(performance.now() - stoppedAt);
        if (resumed) completedAfterResume++;
      }),
    );
  }
  for (let i = 0; i < 4; i++) {
    ops.push(
      nbd.read(i * blockBytes, blockBytes).then((data) => {
        t.deepEqual(data, block(`warm-${i}`), `read ${i} returns the acknowledged data`);
        doneMs.push(performance.now() - stoppedAt);
        if (resumed) completedAfterResume++;
      }),
    );
  }
  await Promise.all(ops);
  const lastMs = Math.max(...doneMs);
  t.log(`leader n${leader} stopped for ${pauseMs} ms: ${ops.length} ops in flight on follower n${follower.id} completed after ${Math.min(...doneMs).toFixed(0)}-${lastMs.toFixed(0)} ms`);
  t.is(completedAfterResume, 0, `every op completed while the old leader was still stopped (last after ${lastMs.toFixed(0)} ms)`);

  await new Promise((resolve) => setTimeout(resolve, Math.max(0, pauseMs - (performance.now() - stoppedAt)) + 500));
  for (const n of cluster.file.nodes) {
    const other = await NbdClient.connect(n.nbd.slice(0, n.nbd.lastIndexOf(':')), Number(n.nbd.slice(n.nbd.lastIndexOf(':') + 1)), 'default');
    for (const [offset, data] of written) t.deepEqual(await retrying(() => other.read(offset, blockBytes)), data, `n${n.id} holds block ${offset / blockBytes}`);
    other.close();
  }
  const verify = await cluster.verify();
  t.is(verify.code, 0, verify.stdout + verify.stderr);
});
