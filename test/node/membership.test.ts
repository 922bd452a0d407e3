/**
 * membership: a learner joins a cluster holding >= 256 MiB of blocks, catches up through a
 * streamed snapshot (the log behind it is compacted, so a snapshot is the only way), is promoted,
 * and an old member is removed — all through the real CLI against real processes.
 *
 * Proves: the snapshot transfer reports progress (`member add --wait` prints it), the new member
 * ends with exactly the same state (`chard verify` equal on every remaining replica), every
 * acknowledged block reads back from the new member, and the cluster keeps serving writes after
 * the removal. Prints the snapshot transfer rate (MiB/s).
 */

import test from 'ava';
import { AckedWriter, LocalCluster, block, chard, retrying } from '../helpers/local-cluster.js';

const dataMiB = 256;
const writeBytes = 1024 * 1024;

test(`a learner catches up via snapshot from ${dataMiB} MiB, is promoted, an old member is removed`, async (t) => {
  const cluster = await LocalCluster.start({
    nodes: 3,
    volumeSize: '1GiB',
    nodeOptions: { limits: { compactEveryEntries: 16 }, store: { compactionTrailingEntries: 4 } },
  });
  t.teardown(() => cluster.stop());
  const dir = ['--dir', cluster.dir];
  try {
    // Fill 256 MiB with distinct content: 1 MiB writes (as the NBD path splits them), 4 in flight.
    const started = performance.now();
    let next = 0;
    const writes = dataMiB;
    let sequence = 0;
    const worker = async () => {
      while (next < writes) {
        const i = next++;
        const data = Buffer.alloc(writeBytes, i % 251);
        data.writeUInt32BE(i, 0);
        const seq = ++sequence;
        await cluster.client.leader((api) =>
          api.submit({ kind: 'write', volume: 'default', offset: i * writeBytes, data, session: { id: 'fill', sequence: seq, ackedBelow: 0 } }),
        );
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    t.log(`wrote ${dataMiB} MiB in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    const writer = new AckedWriter(cluster.client);
    for (let i = 0; i < 40; i++) await writer.write(100_000 + i, block(`small-${i}`));

    const init = await chard(['node', 'init', '--id', '4', '--json', ...dir]);
    t.is(init.code, 0, init.stderr);
    const entry = JSON.parse(init.stdout);
    t.is((await chard(['node', 'start', '--id', '4', ...dir])).code, 0);
    cluster.reload();

    const addStarted = performance.now();
    const add = await chard(['member', 'add', '4', '--raft', entry.raft, '--admin', entry.admin, '--nbd', entry.nbd, '--learner', '--wait', ...dir], 600_000);
    const addSeconds = (performance.now() - addStarted) / 1000;
    t.is(add.code, 0, add.stderr);
    t.log(`learner caught up in ${addSeconds.toFixed(1)} s (${(dataMiB / addSeconds).toFixed(1)} MiB/s incl. snapshot creation)`);
    t.log(add.stderr.trim().split('\n').slice(-6).join('\n'));
    t.regex(add.stderr, /snapshot \[[#.]+\] [\d.]+ of [\d.]+ MiB received/, 'progress of the snapshot transfer is shown');
    const learnerCounts = (await cluster.api(4).metrics()).counts;
    t.true((learnerCounts['snapshot.installed'] ?? 0) >= 1, 'the learner caught up through a snapshot');
    t.log(add.stderr.split('\n').filter((l) => l.includes('snapshot transfer observed')).join('\n'));

    const promote = await chard(['member', 'promote', '4', ...dir], 300_000);
    t.is(promote.code, 0, promote.stderr);
    const remove = await chard(['member', 'remove', '1', ...dir]);
    t.is(remove.code, 0, remove.stderr);

    const members = JSON.parse((await chard(['member', 'list', '--json', ...dir])).stdout) as { id: number; role: string }[];
    t.deepEqual(members.map((m) => `${m.id}:${m.role}`), ['2:voter', '3:voter', '4:voter']);

    await writer.write(100_100, block('after-removal'));
    t.deepEqual(await writer.check(cluster.api(4)), [], 'the new member serves every acknowledged block');
    const sample = await cluster.api(4).read('default', 17 * writeBytes, 4096);
    t.is(sample.readUInt32BE(0), 17);

    // verify: the remaining members (node 1 was removed and stops participating).
    const verify = await chard(['verify', '--json', '--cluster', [2, 3, 4].map((id) => cluster.node(id).admin).join(',')]);
    t.is(verify.code, 0, verify.stderr + verify.stdout);
    t.true(JSON.parse(verify.stdout).equal);
    // (Whether node 1 learns of its own removal depends on timing: the leader stops replicating
    // to it once the removal is in the configuration.)
    t.log(`node 1 reports removed=${(await cluster.api(1).status()).removed} after its removal`);

    // The removed node, still running with its data, is added back and promoted: it must know it
    // is a member again (its status said "removed" forever before).
    const n1 = cluster.node(1);
    const readd = await chard(['member', 'add', '1', '--raft', n1.raft, '--admin', n1.admin, '--nbd', n1.nbd, '--learner', '--wait', ...dir], 300_000);
    t.is(readd.code, 0, readd.stderr);
    const repromote = await chard(['member', 'promote', '1', ...dir], 300_000);
    t.is(repromote.code, 0, repromote.stderr);
    await writer.write(100_101, block('after-readd'));
    const back = await retrying(async () => {
      const s = await cluster.api(1).status();
      if (s.removed) throw new Error('node 1 still reports removed');
      return s;
    });
    t.false(back.removed, 'node 1 is a member again');
    const verifyAll = await chard(['verify', '--json', '--cluster', [1, 2, 3, 4].map((id) => cluster.node(id).admin).join(',')]);
    t.is(verifyAll.code, 0, verifyAll.stderr + verifyAll.stdout);
  } catch (error) {
    t.log(cluster.logs());
    throw error;
  }
});
