/**
 * restart: the whole cluster killed with SIGKILL while writes are in flight, then restarted.
 *
 * Proves durability end to end: a write is acknowledged only after a quorum fsynced it, so after
 * every node dies at once (no graceful shutdown) and restarts, every acknowledged block reads
 * back unchanged from every node, the state machines rebuilt from their logs are equal
 * (`chard verify`), and the cluster accepts new writes. Writes still in flight at the kill may or
 * may not have taken effect (they were not acknowledged); the test only holds acknowledged ones.
 */

import test from 'ava';
import { AckedWriter, LocalCluster, block } from '../helpers/local-cluster.js';

test('full-cluster kill -9 and restart: everything acknowledged is still there', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3 });
  t.teardown(() => cluster.stop());
  try {
    const writer = new AckedWriter(cluster.client);
    for (let i = 0; i < 200; i++) await writer.write(i, block(`before-${i}`));
    // Keep writing concurrently while the whole cluster is killed.
    let stop = false;
    const background = (async () => {
      for (let i = 200; !stop; i++) {
        try {
          await writer.write(i % 1024, block(`during-${i}`), 500);
        } catch {
          /* not acknowledged: may or may not have been applied */
        }
      }
    })();
    await new Promise((r) => setTimeout(r, 300));
    for (const n of cluster.file.nodes) cluster.kill(n.id);
    stop = true;
    await background;
    for (const n of cluster.file.nodes) await cluster.waitDead(n.id);
    t.log(`acknowledged before the kill: ${writer.acked.size} blocks`);

    for (const n of cluster.file.nodes) await cluster.restart(n.id);
    const leader = await cluster.leader(20_000);
    t.log(`leader after restart: node ${leader}`);
    for (const n of cluster.file.nodes) {
      t.deepEqual(await writer.check(cluster.api(n.id)), [], `node ${n.id} lost acknowledged writes`);
    }
    await writer.write(2000, block('after-restart'));
    const verify = await cluster.verify();
    t.is(verify.code, 0, verify.stderr + verify.stdout);
    t.true(JSON.parse(verify.stdout).equal);
  } catch (error) {
    t.log(cluster.logs());
    throw error;
  }
});
