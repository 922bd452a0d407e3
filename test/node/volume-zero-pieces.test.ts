/**
 * volume-zero-pieces (issue 11 h, the service half): a TRIM or WRITE_ZEROES of a large range
 * (mkfs discards the whole device) becomes commands of at most requestLimits.zeroPieceBytes
 * (16 MiB, zeroPieceBlocksMax = 4,096 blocks) of range, at most zeroPiecesInflightMax (4) in
 * flight, so that one apply transaction deletes at most 4,096 rows and the apply batch of a
 * replica that keeps up at most 16,384 (zeroBatchBlocksBudget below). The counts are the state
 * machine's own (BlockStateMachine.lastApplyCounts), not timings. Before issue 11 h the request
 * was one command deleting every row of the range; with 64 MiB pieces one command deleted 16,384
 * rows and a batch of 4 up to 65,536 (~4 × 50-100 ms on a loaded 2-core machine, estimated: the election
 * timeout is 300 ms). Both fail the assertions below.
 */

import test from 'ava';
import { Command } from '../../src/nbd/protocol.js';
import { zeroPiecesInflightMax } from '../../src/node/volume-backend.js';
import { requestLimits, zeroPieceBlocksMax } from '../../src/volume/rules.js';
import { startFakeNode } from './fake-leader.js';

const MiB = 1024 * 1024;
/**
 * zeroBatchBlocksBudget: the block rows the zero pieces of one request may delete in one apply
 * batch. Measured: deleting 16,384 dense rows in one transaction takes 20-26 ms on an idle machine
 * and 50-100 ms with two CPU hogs on 2 cores, well inside the 300 ms election timeout.
 */
const zeroBatchBlocksBudget = 16_384;

for (const [name, type] of [
  ['TRIM', Command.trim],
  ['WRITE_ZEROES', Command.writeZeroes],
] as const) {
  test(`a 1 GiB ${name} is commands of at most zeroPieceBlocksMax rows, a few in flight`, async (t) => {
    const node = await startFakeNode({ sizeBytes: 1024 * MiB });
    try {
      const c = await node.connect();
      await c.go('v', { structured: false });
      // Dense data in the first 64 MiB: the first pieces each delete as many rows as a piece may.
      for (let i = 0; i < 64; i++) c.request({ type: Command.write, handle: i + 1, offset: i * MiB, payload: Buffer.alloc(MiB, 0x5c) });
      for (let i = 0; i < 64; i++) t.is((await c.reply()).errno, 0);
      const before = node.leader.applyMs.length;
      node.leader.maxInflightEntries = 0;
      c.request({ type, handle: 100, offset: 0, lengthBytes: 1024 * MiB });
      t.is((await c.read(16, 60_000)).readUInt32BE(4), 0, `${name} succeeded`);
      const counts = node.leader.applyCounts.slice(before);
      t.is(counts.length, (1024 * MiB) / requestLimits.zeroPieceBytes, `one command per ${requestLimits.zeroPieceBytes / MiB} MiB of range`);
      const deleted = counts.map((x) => x.blocksDeleted);
      t.is(deleted.reduce((a, b) => a + b, 0), (64 * MiB) / 4096, 'every stored block of the range was deleted');
      t.is(Math.max(...deleted), zeroPieceBlocksMax, 'a dense piece deletes zeroPieceBlocksMax rows, never more');
      t.true(node.leader.maxInflightEntries <= zeroPiecesInflightMax, `at most ${zeroPiecesInflightMax} pieces in flight (saw ${node.leader.maxInflightEntries})`);
      t.true(
        zeroPiecesInflightMax * zeroPieceBlocksMax <= zeroBatchBlocksBudget,
        `an apply batch of the pieces in flight deletes at most ${zeroPiecesInflightMax * zeroPieceBlocksMax} rows (budget ${zeroBatchBlocksBudget})`,
      );
      const pieceMs = node.leader.applyMs.slice(before);
      t.log(`${name} of 1 GiB: ${counts.length} applies, rows deleted per apply at most ${Math.max(...deleted)}, slowest apply ${Math.max(...pieceMs).toFixed(1)} ms`);
      c.request({ type: Command.read, handle: 101, offset: 10 * MiB, lengthBytes: 4096 });
      const r = await c.simpleReply(4096);
      t.true(r.errno === 0 && r.data.every((b) => b === 0), 'the range reads as zeros');
      t.is(node.leader.state.blockStatus('v', 0, 1024 * MiB).length, 1, 'one hole');
      c.close();
    } finally {
      await node.close();
    }
  });
}
