/**
 * state-store-counts: BlockStateMachine.lastApplyCounts counts the block rows one apply()
 * transaction stored and deleted — the figure the zero-piece bound of issue 11 h is stated in
 * (test/node/volume-zero-pieces) — exactly: full and partial writes, writes of zeros (holes),
 * trims over dense and sparse ranges, a volume delete, and a batch of several entries.
 */

import path from 'node:path';
import test from 'ava';
import { BlockStateMachine, blockBytes } from '../../src/blockstore/state-store.js';
import { EntryType, emptyConfState } from '../../src/raft/types.js';
import { type Command, applyRows, encodeCommand } from '../../src/volume/command.js';
import { tempDir } from './helpers.js';

test('lastApplyCounts: rows stored and deleted by each apply', (t) => {
  const tmp = tempDir('counts');
  const sm = BlockStateMachine.open(path.join(tmp.dir, 'state.db'));
  let index = 0;
  const apply = (...commands: Command[]) => {
    const entries = commands.map((c) => ({ index: ++index, term: 1, type: EntryType.Normal, data: encodeCommand(c) }));
    for (const outcome of sm.apply(entries, () => emptyConfState()).values()) t.true(outcome.ok);
    return sm.lastApplyCounts();
  };
  const applyEmpty = () => {
    sm.apply([{ index: ++index, term: 1, type: EntryType.Normal, data: new Uint8Array(0) }], () => emptyConfState());
    return sm.lastApplyCounts();
  };
  try {
    t.deepEqual(apply({ kind: 'createVolume', name: 'v', sizeBytes: 1024 * blockBytes }), { blocksStored: 0, blocksDeleted: 0 });
    t.deepEqual(apply({ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(64 * blockBytes).fill(7) }), { blocksStored: 64, blocksDeleted: 0 });
    // Unaligned: touches blocks 100 and 101 (read-modify-write of both).
    t.deepEqual(apply({ kind: 'write', volume: 'v', offset: 100 * blockBytes + 10, data: new Uint8Array(blockBytes).fill(1) }), { blocksStored: 2, blocksDeleted: 0 });
    // Zeros over blocks 0..3: deleted (holes), not stored.
    t.deepEqual(apply({ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(4 * blockBytes) }), { blocksStored: 0, blocksDeleted: 4 });
    // Trim of 4..19 (16 stored), then of the same range again (nothing left).
    t.deepEqual(apply({ kind: 'trim', volume: 'v', offset: 4 * blockBytes, length: 16 * blockBytes }), { blocksStored: 0, blocksDeleted: 16 });
    t.deepEqual(apply({ kind: 'trim', volume: 'v', offset: 4 * blockBytes, length: 16 * blockBytes }), { blocksStored: 0, blocksDeleted: 0 });
    // A batch: the counts are the whole transaction's.
    t.deepEqual(
      apply({ kind: 'writeZeroes', volume: 'v', offset: 20 * blockBytes, length: 10 * blockBytes }, { kind: 'write', volume: 'v', offset: 500 * blockBytes, data: new Uint8Array(blockBytes).fill(3) }),
      { blocksStored: 1, blocksDeleted: 10 },
    );
    // Left: 30..63 (34), 100, 101, 500 = 37 rows: the delete itself deletes none (they are
    // reaped), the next empty entry reaps all 37.
    t.deepEqual(apply({ kind: 'deleteVolume', name: 'v' }), { blocksStored: 0, blocksDeleted: 0 });
    t.true(sm.reaping());
    t.deepEqual(applyEmpty(), { blocksStored: 0, blocksDeleted: 37 });
    t.false(sm.reaping());
    t.is(sm.checkIntegrity().blocks, 0);
  } finally {
    sm.close();
    tmp.cleanup();
  }
});

test('applyRows bounds the rows each data command really stores or deletes (the replica budgets apply turns by it)', (t) => {
  const tmp = tempDir('rows');
  const sm = BlockStateMachine.open(path.join(tmp.dir, 'state.db'));
  let index = 0;
  const check = (command: Command) => {
    const entry = { index: ++index, term: 1, type: EntryType.Normal, data: encodeCommand(command) };
    for (const outcome of sm.apply([entry], () => emptyConfState()).values()) t.true(outcome.ok);
    const counts = sm.lastApplyCounts();
    const rows = applyRows(command);
    t.true(counts.blocksStored + counts.blocksDeleted <= rows, `${command.kind}: ${counts.blocksStored} stored + ${counts.blocksDeleted} deleted <= ${rows}`);
    return rows;
  };
  try {
    check({ kind: 'createVolume', name: 'v', sizeBytes: 8192 * blockBytes });
    const fill = () => {
      for (let block = 0; block < 4096; block += 256) check({ kind: 'write', volume: 'v', offset: block * blockBytes, data: new Uint8Array(256 * blockBytes).fill(5) });
    };
    fill();
    check({ kind: 'write', volume: 'v', offset: 7 * blockBytes + 1, data: new Uint8Array(3 * blockBytes).fill(6) });
    // A 16 MiB zero piece over written blocks: 61 bytes of entry, 4,096 rows deleted.
    t.is(check({ kind: 'trim', volume: 'v', offset: 0, length: 4096 * blockBytes }), 4097);
    fill();
    check({ kind: 'writeZeroes', volume: 'v', offset: 100, length: 4000 * blockBytes });
  } finally {
    sm.close();
    tmp.cleanup();
  }
});
