/**
 * reap: a deleted volume's rows and a shrunk volume's tail are reaped by empty entries, at most
 * reapBlocksPerEntry rows each, instead of in the one apply of the delete or the shrink (a full
 * 4 GiB volume is a million rows: seconds of stall on every replica at once). The same entries
 * reap the same rows however they are batched, so replicas stay equal at each index; nothing that
 * was deleted or cut off is ever readable again; a reopened store goes on reaping.
 */

import path from 'node:path';
import test from 'ava';
import { BlockStateMachine, blockBytes } from '../../src/blockstore/state-store.js';
import { type Entry, EntryType, emptyConfState } from '../../src/raft/types.js';
import { type Command, encodeCommand } from '../../src/volume/command.js';
import { reapBlocksPerEntry } from '../../src/volume/rules.js';
import { tempDir } from './helpers.js';

const blocksWritten = 10_000;

/** Log: entries built one after another (the same list can be applied with any batching). */
class Log {
  readonly entries: Entry[] = [];
  command(command: Command): this {
    this.entries.push({ index: this.entries.length + 1, term: 1, type: EntryType.Normal, data: encodeCommand(command) });
    return this;
  }
  empty(n = 1): this {
    for (let i = 0; i < n; i++) this.entries.push({ index: this.entries.length + 1, term: 1, type: EntryType.Normal, data: new Uint8Array(0) });
    return this;
  }
  /** fill: `blocks` blocks of volume `name` from block 0, each block holding its number. */
  fill(name: string, blocks: number): this {
    for (let at = 0; at < blocks; at += 1024) {
      const n = Math.min(1024, blocks - at);
      const data = new Uint8Array(n * blockBytes);
      for (let b = 0; b < n; b++) data.fill(((at + b) % 250) + 1, b * blockBytes, (b + 1) * blockBytes);
      this.command({ kind: 'write', volume: name, offset: at * blockBytes, data });
    }
    return this;
  }
}

function open(prefix: string) {
  const tmp = tempDir(prefix);
  const file = path.join(tmp.dir, 'state.db');
  let sm = BlockStateMachine.open(file);
  return {
    get sm() {
      return sm;
    },
    reopen() {
      sm.close();
      sm = BlockStateMachine.open(file);
    },
    close() {
      sm.close();
      tmp.cleanup();
    },
  };
}

/** applyFrom: apply log entries from the store's applied index, `batch` at a time; returns rows deleted per apply. */
function applyFrom(sm: BlockStateMachine, log: Log, batch: number): number[] {
  const deleted: number[] = [];
  for (let i = sm.appliedIndex(); i < log.entries.length; i += batch) {
    const outcomes = sm.apply(log.entries.slice(i, i + batch), () => emptyConfState());
    for (const outcome of outcomes.values()) if (!outcome.ok) throw new Error(outcome.message);
    deleted.push(sm.lastApplyCounts().blocksDeleted);
  }
  return deleted;
}

const isZero = (sm: BlockStateMachine, name: string, offset: number, length: number) =>
  sm.read(name, offset, length).every((chunk) => chunk.data === undefined || chunk.data.every((b) => b === 0));

test('a deleted volume is reaped by empty entries, at most reapBlocksPerEntry rows each', (t) => {
  const s = open('reap-delete');
  try {
    const log = new Log().command({ kind: 'createVolume', name: 'v', sizeBytes: 16384 * blockBytes }).fill('v', blocksWritten);
    applyFrom(s.sm, log, 1);
    t.is(s.sm.checkIntegrity().blocks, blocksWritten);
    log.command({ kind: 'deleteVolume', name: 'v' });
    t.deepEqual(applyFrom(s.sm, log, 1), [0], 'the delete itself deletes no row');
    t.true(s.sm.reaping());
    t.is(s.sm.checkIntegrity().orphans, 0, 'rows waiting to be reaped are not orphans');
    // Re-created under the same name while the old rows wait: it reads zeros (another created index).
    log.command({ kind: 'createVolume', name: 'v', sizeBytes: 16384 * blockBytes });
    applyFrom(s.sm, log, 1);
    t.true(isZero(s.sm, 'v', 0, 64 * blockBytes));
    log.empty(4);
    const perEntry = applyFrom(s.sm, log, 1);
    t.deepEqual(perEntry, [reapBlocksPerEntry, reapBlocksPerEntry, blocksWritten - 2 * reapBlocksPerEntry, 0]);
    t.false(s.sm.reaping());
    t.deepEqual(s.sm.checkIntegrity(), { blocks: 0, corrupt: 0, orphans: 0 });
  } finally {
    s.close();
  }
});

test('reaping is the same however the entries are batched, and goes on after a reopen', (t) => {
  const a = open('reap-a');
  const b = open('reap-b');
  try {
    const log = new Log()
      .command({ kind: 'createVolume', name: 'x', sizeBytes: 16384 * blockBytes })
      .command({ kind: 'createVolume', name: 'y', sizeBytes: 16384 * blockBytes })
      .fill('x', blocksWritten)
      .fill('y', 3000)
      .command({ kind: 'deleteVolume', name: 'x' })
      .command({ kind: 'resizeVolume', name: 'y', sizeBytes: 100 * blockBytes })
      .empty(1)
      .fill('y', 100)
      .empty(1);
    applyFrom(a.sm, log, 1);
    applyFrom(b.sm, log, log.entries.length); // one batch
    t.deepEqual(a.sm.stateHash(), b.sm.stateHash());
    t.true(a.sm.reaping() && b.sm.reaping());
    a.reopen();
    t.true(a.sm.reaping(), 'the pending reap survives a reopen');
    log.empty(3);
    const perEntryA = applyFrom(a.sm, log, 1);
    applyFrom(b.sm, log, 2);
    t.deepEqual(a.sm.stateHash(), b.sm.stateHash());
    t.deepEqual(perEntryA, [reapBlocksPerEntry, blocksWritten + 2900 - 3 * reapBlocksPerEntry, 0]);
    t.false(a.sm.reaping());
    t.deepEqual(a.sm.checkIntegrity(), { blocks: 100, corrupt: 0, orphans: 0 });
  } finally {
    a.close();
    b.close();
  }
});

test('a volume shrunk and grown again reads zeros past the cut, reaped or not', (t) => {
  const s = open('reap-shrink');
  try {
    const log = new Log().command({ kind: 'createVolume', name: 'v', sizeBytes: 16384 * blockBytes }).fill('v', blocksWritten);
    // Shrink to 100 blocks and half a block: the partial block is zeroed at once, the rest reaped later.
    log.command({ kind: 'resizeVolume', name: 'v', sizeBytes: 100 * blockBytes + 512 });
    applyFrom(s.sm, log, 1);
    t.true(s.sm.reaping());
    t.true(isZero(s.sm, 'v', 100 * blockBytes + 512, 0));
    const before = s.sm.read('v', 99 * blockBytes, blockBytes + 512);
    t.true(before.every((c) => c.data !== undefined && c.data.every((x) => x !== 0)), 'what is kept is kept');
    // Grown before any empty entry ran: the rows below the new size go with the grow itself.
    log.command({ kind: 'resizeVolume', name: 'v', sizeBytes: 5000 * blockBytes });
    t.deepEqual(applyFrom(s.sm, log, 1), [5000 - 101]);
    t.true(isZero(s.sm, 'v', 100 * blockBytes + 512, 4900 * blockBytes - 512));
    t.true(s.sm.reaping(), 'the rows beyond the new size still wait');
    log.empty(2);
    t.deepEqual(applyFrom(s.sm, log, 1), [reapBlocksPerEntry, blocksWritten - 5000 - reapBlocksPerEntry]);
    t.false(s.sm.reaping());
    log.command({ kind: 'resizeVolume', name: 'v', sizeBytes: 16384 * blockBytes });
    applyFrom(s.sm, log, 1);
    t.true(isZero(s.sm, 'v', 100 * blockBytes + 512, 16284 * blockBytes - 512));
    t.deepEqual(s.sm.checkIntegrity(), { blocks: 101, corrupt: 0, orphans: 0 });
  } finally {
    s.close();
  }
});
