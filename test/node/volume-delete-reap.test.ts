/**
 * volume-delete-reap: on a real 3-node cluster, deleting a volume full of blocks answers at once
 * and every node reaps its rows through the empty entries the leader proposes (src/node/reaper.ts),
 * at most reapBlocksPerEntry rows per entry, never in the one apply of the delete; the replicas
 * stay equal (`chard verify`) and a volume re-created under the same name reads zeros.
 */
import path from 'node:path';
import Database from 'better-sqlite3';
import test from 'ava';
import { Command } from '../../src/nbd/protocol.js';
import { LocalCluster, chard } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const port = (address: string) => Number(address.slice(address.lastIndexOf(':') + 1));

/** rowsLeft: block rows and pending reap ranges in one node's state.db (a concurrent reader: WAL mode). */
function rowsLeft(dir: string, id: number): { blocks: number; ranges: number } {
  const db = new Database(path.join(dir, `n${id}`, 'state.db'), { readonly: true, fileMustExist: true });
  try {
    const blocks = (db.prepare('SELECT COUNT(*) AS c FROM blocks').get() as { c: number }).c;
    const ranges = (db.prepare('SELECT COUNT(*) AS c FROM reap_ranges').get() as { c: number }).c;
    return { blocks, ranges };
  } finally {
    db.close();
  }
}

test('a deleted volume of 16,384 blocks is reaped on every node by bounded empty entries; replicas stay equal', async (t) => {
  const cluster = await LocalCluster.start({ volumeSize: '64MiB' });
  t.teardown(() => cluster.stop());
  const ids = cluster.file.nodes.map((n) => n.id);
  const leader = await cluster.leader(60_000);
  const writer = await RawClient.connect(port(cluster.node(leader).nbd));
  await writer.go('default', { structured: false });
  for (let i = 0; i < 64; i += 8) {
    for (let j = i; j < i + 8; j++) writer.request({ type: Command.write, handle: j + 1, offset: j * MiB, payload: Buffer.alloc(MiB, 0x5a) });
    for (let j = i; j < i + 8; j++) t.is((await writer.read(16, 120_000)).readUInt32BE(4), 0, `write ${j}`);
  }
  writer.close();
  // Another connection sees an apply once its shared transaction commits (commitDelayMs): wait for it.
  const filled = Date.now() + 60_000;
  while (!ids.some((id) => rowsLeft(cluster.dir, id).blocks === 16_384) && Date.now() < filled) await sleep(20);
  t.true(ids.some((id) => rowsLeft(cluster.dir, id).blocks === 16_384), 'a node holds the 16,384 rows');

  const deleted = await chard(['volume', 'delete', 'default', '--dir', cluster.dir]);
  t.is(deleted.code, 0, deleted.stderr);
  const created = await chard(['volume', 'create', 'default', '--size', '64MiB', '--dir', cluster.dir]);
  t.is(created.code, 0, created.stderr);

  // Every node reaps everything (the condition, with a deadline only a hang reaches).
  const deadline = Date.now() + 60_000;
  let left = ids.map((id) => rowsLeft(cluster.dir, id));
  while (left.some((l) => l.blocks > 0 || l.ranges > 0)) {
    if (Date.now() > deadline) throw new Error(`not reaped: ${JSON.stringify(left)}`);
    await sleep(50);
    left = ids.map((id) => rowsLeft(cluster.dir, id));
  }
  t.log(`rows left per node: ${JSON.stringify(left)}`);

  const reader = await RawClient.connect(port(cluster.node(await cluster.leader(60_000)).nbd));
  await reader.go('default', { structured: false });
  reader.request({ type: Command.read, handle: 1, offset: 10 * MiB, lengthBytes: MiB });
  const r = await reader.simpleReply(MiB);
  t.is(r.errno, 0);
  t.true(r.data.every((b) => b === 0), 'the re-created volume reads zeros');
  reader.close();
  const verify = await cluster.verify();
  t.is(verify.code, 0, verify.stdout + verify.stderr);
});
