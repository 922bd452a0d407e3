/**
 * volume-zero-pieces (issue 11 h, the service half): a TRIM or WRITE_ZEROES of a large range
 * (mkfs discards the whole device) becomes commands of at most requestLimits.zeroPieceBytes
 * (64 MiB) of range, so that each apply on each replica deletes a bounded number of rows. Before
 * the fix it was one command: one apply deleting every row of the range. Prints the apply time of
 * the biggest piece (64 MiB of dense 4 KiB blocks = 16,384 rows).
 */

import test from 'ava';
import { Command } from '../../src/nbd/protocol.js';
import { requestLimits } from '../../src/volume/rules.js';
import { startFakeNode } from './fake-leader.js';

const MiB = 1024 * 1024;

for (const [name, type] of [
  ['TRIM', Command.trim],
  ['WRITE_ZEROES', Command.writeZeroes],
] as const) {
  test(`a 1 GiB ${name} is 16 commands of 64 MiB; each apply is bounded`, async (t) => {
    const node = await startFakeNode({ sizeBytes: 1024 * MiB });
    try {
      const c = await node.connect();
      await c.go('v', { structured: false });
      // Dense data in the first piece: the biggest piece's apply deletes 16,384 rows.
      for (let i = 0; i < 64; i++) c.request({ type: Command.write, handle: i + 1, offset: i * MiB, payload: Buffer.alloc(MiB, 0x5c) });
      for (let i = 0; i < 64; i++) t.is((await c.reply()).errno, 0);
      const before = node.leader.applyMs.length;
      c.request({ type, handle: 100, offset: 0, lengthBytes: 1024 * MiB });
      t.is((await c.read(16, 60_000)).readUInt32BE(4), 0, `${name} succeeded`);
      const pieces = node.leader.applyMs.slice(before);
      t.is(pieces.length, (1024 * MiB) / requestLimits.zeroPieceBytes, 'one command per 64 MiB of range');
      t.log(`${name} of 1 GiB: ${pieces.length} applies, biggest ${Math.max(...pieces).toFixed(1)} ms (64 MiB of dense blocks), the others ${Math.max(...pieces.slice(1)).toFixed(1)} ms at most`);
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
