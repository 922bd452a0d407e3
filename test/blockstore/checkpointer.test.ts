/**
 * checkpointer: when the worker checkpoints state.db's WAL (src/blockstore/checkpointer.ts).
 *  - the wal-index header is read from a real `-shm` file: frames written, frames backfilled by a
 *    checkpoint, the page size; a header whose two copies differ is not trusted;
 *  - CheckpointPlanner: by size once the pending WAL reaches walBytes; when the WAL stopped growing
 *    for idleMs; never twice within idleMs for a WAL a reader held back; every idleMs without a
 *    readable header;
 *  - a real store with a small walBytes and an idle time beyond the test checkpoints by size.
 */

import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { CheckpointPlanner, parseWalIndexHeader, readWalIndexHeader, walPendingBytes } from '../../src/blockstore/checkpointer.js';
import { BlockStateMachine, type StateTimer, blockBytes } from '../../src/blockstore/state-store.js';
import { EntryType, emptyConfState } from '../../src/raft/types.js';
import { encodeCommand } from '../../src/volume/command.js';
import { tempDir } from './helpers.js';

test('the wal-index header says how much of the WAL a checkpoint has yet to copy', (t) => {
  const tmp = tempDir('checkpointer-header');
  const file = path.join(tmp.dir, 'x.db');
  const db = new Database(file);
  try {
    db.pragma('page_size = 4096');
    db.pragma('journal_mode = WAL');
    db.pragma('wal_autocheckpoint = 0');
    db.exec('CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)');
    const put = db.prepare('INSERT INTO t VALUES (?, ?)');
    for (let k = 0; k < 40; k++) put.run(k, Buffer.alloc(3000, k)); // one transaction each
    const fd = fs.openSync(`${file}-shm`, 'r');
    try {
      const before = readWalIndexHeader(fd)!;
      t.truthy(before);
      t.is(before.pageBytes, 4096);
      t.true(before.frames >= 40, `${before.frames} frames for 40 commits`);
      t.is(before.backfilled, 0);
      t.is(walPendingBytes(before), before.frames * (4096 + 24));
      t.is(fs.statSync(`${file}-wal`).size, 32 + before.frames * (4096 + 24), 'the WAL file holds exactly those frames after its 32-byte header');
      const result = db.pragma('wal_checkpoint(PASSIVE)') as { busy: number; log: number; checkpointed: number }[];
      const after = readWalIndexHeader(fd)!;
      t.is(after.frames, result[0]!.log);
      t.is(after.backfilled, result[0]!.checkpointed);
      t.is(walPendingBytes(after), 0);
      // A header whose two copies differ (a writer is updating it) is not trusted.
      const raw = Buffer.alloc(136);
      fs.readSync(fd, raw, 0, 136, 0);
      t.truthy(parseWalIndexHeader(raw));
      raw[16] = raw[16]! ^ 0xff;
      t.is(parseWalIndexHeader(raw), undefined);
      t.is(parseWalIndexHeader(Buffer.alloc(136)), undefined, 'an uninitialised header');
    } finally {
      fs.closeSync(fd);
    }
  } finally {
    db.close();
    tmp.cleanup();
  }
});

test('CheckpointPlanner: by size, when idle, not again for a held-back WAL, and by time without a header', (t) => {
  const limits = { walBytes: 100 * 4120, idleMs: 1000, pollMs: 100 };
  const header = (frames: number, backfilled = 0) => ({ frames, backfilled, pageBytes: 4096 });
  const p = new CheckpointPlanner(limits, 0);
  t.is(p.decide(header(0), 100), undefined, 'nothing pending');
  t.is(p.decide(header(10), 200), undefined, 'growing, below walBytes');
  t.is(p.decide(header(99), 300), undefined);
  t.is(p.decide(header(100), 400), 'size', 'walBytes reached');
  p.checkpointed(400);
  t.is(p.decide(header(100, 100), 500), undefined, 'all copied');
  t.is(p.decide(header(120, 100), 600), undefined, 'growing again');
  t.is(p.decide(header(120, 100), 1500), undefined, 'unchanged for 900 ms');
  t.is(p.decide(header(120, 100), 1600), 'idle', 'unchanged for idleMs with frames pending');
  p.checkpointed(1600);
  t.is(p.decide(header(120, 110), 1700), undefined, 'a reader held 10 frames back: not again at once');
  t.is(p.decide(header(120, 110), 2600), 'idle', 'idleMs after the last checkpoint');
  p.checkpointed(2600);
  t.is(p.decide(header(300, 110), 2700), 'size', 'a burst past walBytes does not wait for idleMs');

  // A reader (a snapshot copy) holds the checkpoint back: by size, not again until idleMs or progress.
  const held = new CheckpointPlanner(limits, 0);
  t.is(held.decide(header(150), 100), 'size');
  held.checkpointed(100, header(150, 40));
  t.is(held.decide(header(160, 40), 200), undefined, 'nothing more could be copied: not again at once');
  t.is(held.decide(header(170, 40), 1000), undefined);
  t.is(held.decide(header(180, 40), 1100), 'size', 'idleMs after the held-back one');
  held.checkpointed(1100, header(180, 120));
  t.is(held.decide(header(250, 125), 1200), 'size', 'the reader moved on (more was copied): by size again at once');

  const blind = new CheckpointPlanner(limits, 0);
  t.is(blind.decide(undefined, 999), undefined);
  t.is(blind.decide(undefined, 1000), 'idle', 'no readable header: every idleMs');
  blind.checkpointed(1000);
  t.is(blind.decide(undefined, 1500), undefined);
});

test('a store whose WAL reaches checkpointWalBytes is checkpointed by size while writes continue', async (t) => {
  const tmp = tempDir('checkpointer-size');
  const timer: StateTimer = { after: () => ({ cancel: () => undefined }) }; // commits happen when the batch is full
  // An idle time no test run reaches: only the size trigger can checkpoint.
  const sm = BlockStateMachine.open(path.join(tmp.dir, 'state.db'), { checkpointWalBytes: 256 * 1024, checkpointIdleMs: 3_600_000, checkpointPollMs: 10, commitEntriesMax: 8 }, { timer });
  try {
    let index = 1;
    const apply = (data: ReturnType<typeof encodeCommand>) => sm.apply([{ index: index++, term: 1, type: EntryType.Normal, data }], () => emptyConfState());
    apply(encodeCommand({ kind: 'createVolume', name: 'v', sizeBytes: 1024 * blockBytes }));
    let block = 0;
    const deadline = Date.now() + 60_000;
    // Keep writing (8 blocks per commit) until the worker has checkpointed by size.
    while (sm.checkpointer!.checkpointsBy().size === 0 && Date.now() < deadline) {
      for (let i = 0; i < 64; i++) apply(encodeCommand({ kind: 'write', volume: 'v', offset: (block++ % 1024) * blockBytes, data: new Uint8Array(blockBytes).fill(block & 0xff) }));
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    t.true(sm.checkpointer!.checkpointsBy().size > 0, `a checkpoint by size after ${block} blocks`);
    t.is(sm.checkpointer!.checkpointsBy().idle, 0);
    t.true(fs.statSync(path.join(tmp.dir, 'state.db')).size > 64 * blockBytes, 'the blocks reached state.db');
  } finally {
    sm.close();
    tmp.cleanup();
  }
});
