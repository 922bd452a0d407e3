/**
 * node-start: `chard node start --dir DIR --id N` returns once the node says it serves (every
 * listener bound), and a node that exits during start-up is an error naming its log (exit
 * status 1), not "started".
 *
 * How: a one-node local cluster is stopped; its NBD port — bound after the raft and admin
 * listeners, so a node that dies on it has already answered on its admin port — is taken by
 * another listener, and the restarted node exits with EADDRINUSE: `node start` must fail with
 * UNAVAILABLE "exited during start-up". With the port free again, `node start` must succeed, and
 * the node's Status must answer at once (no wait in the test: the command waited).
 */
import { createServer } from 'node:net';
import test from 'ava';
import { LocalCluster, chard } from '../helpers/local-cluster.js';

test('node start waits until the node serves; a node that dies starting is an error naming its log', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 1 });
  t.teardown(() => cluster.stop());
  const n = cluster.node(1);
  cluster.kill(1, 'SIGTERM');
  await cluster.waitDead(1);

  const nbdPort = Number(n.nbd.slice(n.nbd.lastIndexOf(':') + 1));
  const blocker = createServer();
  await new Promise<void>((resolve, reject) => {
    blocker.once('error', reject);
    blocker.listen(nbdPort, n.nbd.slice(0, n.nbd.lastIndexOf(':')), resolve);
  });
  const failed = await chard(['node', 'start', '--dir', cluster.dir, '--id', '1']);
  await new Promise<void>((resolve) => blocker.close(() => resolve()));
  t.is(failed.code, 1, failed.stdout + failed.stderr);
  t.regex(failed.stderr, /^chard: UNAVAILABLE: node 1 \(pid \d+\) exited during start-up \(status \d+\); see .*node\.log/);
  t.false(failed.stdout.includes('started'));

  const bad = await chard(['node', 'start', '--dir', cluster.dir, '--id', '1', '--wait', 'soon']);
  t.is(bad.code, 2);
  t.regex(bad.stderr, /--wait must be an integer/);

  const started = await chard(['node', 'start', '--dir', cluster.dir, '--id', '1']);
  t.is(started.code, 0, started.stderr);
  t.regex(started.stdout, /^node 1 started \(pid \d+\)/);
  cluster.reload();
  const status = await cluster.api(1).status(2_000);
  t.is(status.id, 1);
});
