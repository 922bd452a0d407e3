/**
 * block-pointers: blocks kept in the log (issue 12, item 2). A whole, aligned 4 KiB block of a
 * write whose entry is durable in the log becomes a pointer row (segment, offset, crc) to its
 * bytes inside the entry's record; state.db holds no copy. compactLog moves the blocks that still
 * point into the stretch of log it drops into their rows first; a snapshot carries the data.
 *
 * Proves: durable writes become pointer rows and read back byte for byte (also after reopening);
 * a partial write and a write applied before its entry is durable are stored in their rows; the
 * state hash is the same as that of a store that copies every block; compactLog relocates the
 * blocks of the segments it deletes, so every block still reads back and no pointer is left
 * below the log's first index, also after reopening; a block written again is not relocated; a
 * snapshot has no pointer rows and installs elsewhere to the same state; a flipped byte in the
 * log under a pointer is CorruptError on read, and on relocation, never wrong data.
 */

import fs from 'node:fs';
import path from 'node:path';
import test, { type ExecutionContext } from 'ava';
import Database from 'better-sqlite3';
import { BlockStore, BlockStateMachine, type BlockStoreLimits } from '../../src/blockstore/index.js';
import { type Command, encodeCommand } from '../../src/blockstore/commands.js';
import { CorruptError } from '../../src/errors.js';
import { type Entry, EntryType } from '../../src/raft/types.js';
import { nextConfState } from '../../src/raft/confchange.js';
import { Prng, applyCommitted, readAll, readyOf, tempDir, transferSnapshot } from './helpers.js';

const KiB = 1024;
const volumeBytes = 4 * 1024 * KiB;
/** small segments, so that a compaction deletes whole ones */
const limits: Partial<BlockStoreLimits> = { segmentBytesMax: 64 * KiB, compactionTrailingEntries: 0, relocateBytesPerTurn: 16 * KiB };
const all = () => ({ upTo: Number.MAX_SAFE_INTEGER, retainFor: [] });

/** durably: appends `commands` at term 1, waits until the append is durable, then applies them. */
async function durably(store: BlockStore, commands: Command[]): Promise<Entry[]> {
  const start = store.logStorage.lastIndex() + 1;
  const entries: Entry[] = commands.map((c, i) => ({ index: start + i, term: 1, type: EntryType.Normal, data: encodeCommand(c) }));
  await store.persist({ ...readyOf(), entries, hardState: { term: 1, vote: 0, commit: start + entries.length - 1 } });
  applyCommitted(store, entries);
  return entries;
}

/** sameBytes: byte equality without ava's per-element diff (slow for MiBs). */
function sameBytes(t: ExecutionContext, actual: Uint8Array, expected: Uint8Array, message?: string): void {
  t.true(Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length)) === 0, message ?? 'the bytes read back');
}

/** Model: the bytes the volume must read back. */
class Model {
  readonly bytes = new Uint8Array(volumeBytes);
  apply(commands: Command[]): void {
    for (const c of commands) if (c.kind === 'write') this.bytes.set(c.data, c.offset);
  }
}

function writes(rng: Prng, count: number): Command[] {
  const out: Command[] = [];
  for (let i = 0; i < count; i++) {
    const blocks = 1 + rng.int(4);
    const offset = rng.int(volumeBytes / (4 * KiB) - blocks) * 4 * KiB;
    out.push({ kind: 'write', volume: 'v', offset, data: rng.bytes(blocks * 4 * KiB) });
  }
  return out;
}

async function withStore(prefix: string, body: (store: BlockStore, dir: string) => Promise<BlockStore | void>): Promise<void> {
  const tmp = tempDir(prefix);
  let store = BlockStore.open(tmp.dir, { limits });
  try {
    store.bootstrap([1]);
    await durably(store, [{ kind: 'createVolume', name: 'v', sizeBytes: volumeBytes }]);
    store = (await body(store, tmp.dir)) ?? store;
  } finally {
    store.close();
    tmp.cleanup();
  }
}

/** pointerSegments: the log segments the pointer rows of a store name. */
function pointerSegments(store: BlockStore): number[] {
  const rows = store.state.database().prepare('SELECT DISTINCT seg FROM blocks WHERE seg IS NOT NULL ORDER BY seg').all() as Array<{ seg: number }>;
  return rows.map((r) => r.seg);
}

function sequenceOf(file: string): number {
  return Number(/wal-(\d+)\.log$/.exec(file)![1]);
}

/** copyHash: the state hash of a store that copies every block (no log attached), fed the same entries. */
function copyHash(dir: string, entries: Entry[]): string {
  const plain = BlockStateMachine.open(path.join(dir, 'plain.db'));
  try {
    plain.apply(entries, (cc) => nextConfState(plain.confState(), cc));
    return plain.stateHash().hash;
  } finally {
    plain.close();
  }
}

test('durable whole-block writes are pointers into the log and read back, also after reopening', async (t) => {
  const rng = new Prng(1);
  const model = new Model();
  await withStore('ptr-basic', async (store, dir) => {
    const commands = writes(rng, 40);
    await durably(store, commands);
    model.apply(commands);
    t.true(store.state.refStats.refsStored > 0);
    t.is((store.state.database().prepare('SELECT COUNT(*) AS c FROM blocks WHERE seg IS NULL').get() as { c: number }).c, 0, 'every block is a pointer');
    sameBytes(t, readAll(store, 'v', 0, volumeBytes), model.bytes);
    // No copy of the data in state.db: its rows hold empty blobs.
    const stored = store.state.database().prepare('SELECT SUM(LENGTH(data)) AS n FROM blocks').get() as { n: number };
    t.is(stored.n, 0);
    store.close();
    const reopened = BlockStore.open(dir, { limits });
    sameBytes(t, readAll(reopened, 'v', 0, volumeBytes), model.bytes, 'pointers resolve after reopening');
    return reopened;
  });
});

test('a partial write, and a write applied before its entry is durable, are stored in their rows', async (t) => {
  const rng = new Prng(2);
  await withStore('ptr-inline', async (store) => {
    const partial: Command = { kind: 'write', volume: 'v', offset: 4 * KiB + 100, data: rng.bytes(1000) };
    await durably(store, [partial]);
    t.is(store.state.pointerRows(), 0, 'a partial block is read-modify-written into its row');
    // Applied while its append is still in flight (never in a node: the Replica applies durable entries only).
    const start = store.logStorage.lastIndex() + 1;
    const entry: Entry = { index: start, term: 1, type: EntryType.Normal, data: encodeCommand({ kind: 'write', volume: 'v', offset: 64 * KiB, data: rng.bytes(4 * KiB) }) };
    const persisted = store.persist({ ...readyOf(), entries: [entry], hardState: { term: 1, vote: 0, commit: start } });
    applyCommitted(store, [entry]);
    t.is(store.state.pointerRows(), 0, 'not durable yet: a copy');
    await persisted;
    const full: Command = { kind: 'write', volume: 'v', offset: 128 * KiB, data: rng.bytes(8 * KiB) };
    await durably(store, [full]);
    t.is(store.state.pointerRows(), 2);
    sameBytes(t, readAll(store, 'v', 128 * KiB, 8 * KiB), (full as { data: Uint8Array }).data);
  });
});

test('the state hash equals that of a store copying every block, before and after relocation', async (t) => {
  const rng = new Prng(3);
  await withStore('ptr-hash', async (store, dir) => {
    const commands = writes(rng, 60);
    await durably(store, commands);
    const entries = store.logStorage.entries(1, store.logStorage.lastIndex() + 1, Number.MAX_SAFE_INTEGER);
    const expected = copyHash(dir, entries);
    t.is(store.stateHash().hash, expected);
    t.truthy(await store.compactLog(all));
    t.is(store.state.pointerRows(), 0, 'compacted to the applied index: every block moved into its row');
    t.is(store.stateHash().hash, expected);
  });
});

test('compactLog relocates the blocks of the segments it deletes; every block reads back, also after reopening', async (t) => {
  const rng = new Prng(4);
  const model = new Model();
  await withStore('ptr-compact', async (store, dir) => {
    for (let round = 0; round < 6; round++) {
      const commands = writes(rng, 30);
      await durably(store, commands);
      model.apply(commands);
      // Keep the last 20 entries in the log: blocks of those stay pointers.
      const applied = store.appliedIndex();
      const compacted = await store.compactLog(() => ({ upTo: applied - 20, retainFor: [] }));
      t.truthy(compacted);
      const first = store.logStorage.firstIndex();
      t.is(first, compacted! + 1);
      // The invariant: no pointer names a segment before the one holding the first entry (those go).
      const firstSegment = store.logStorage.wal.locate(first)!.segment;
      for (const seg of pointerSegments(store)) t.true(seg >= firstSegment, `pointer into segment ${seg}, the log starts in ${firstSegment}`);
      t.true(store.state.pointerRows() > 0, 'the recent blocks are still pointers');
      sameBytes(t, readAll(store, 'v', 0, volumeBytes), model.bytes, `round ${round}`);
    }
    t.true(store.state.refStats.relocated > 0);
    // Remove every segment before the first entry's own (as the compaction's unlinks do, whether or
    // not they finished): the blocks must not need them.
    const firstSegment = store.logStorage.wal.locate(store.logStorage.firstIndex())!.segment;
    store.close();
    const walDir = path.join(dir, 'wal');
    let removed = 0;
    for (const name of fs.readdirSync(walDir)) {
      if (name.startsWith('wal-') && sequenceOf(name) < firstSegment) {
        fs.rmSync(path.join(walDir, name));
        removed++;
      }
    }
    t.log(`${removed} segments removed before reopening; the log starts in segment ${firstSegment}`);
    const reopened = BlockStore.open(dir, { limits });
    sameBytes(t, readAll(reopened, 'v', 0, volumeBytes), model.bytes);
    return reopened;
  });
});

test('a block written again before compaction is not relocated (only live pointers move)', async (t) => {
  const rng = new Prng(5);
  await withStore('ptr-dead', async (store) => {
    const a: Command = { kind: 'write', volume: 'v', offset: 0, data: rng.bytes(4 * KiB) };
    await durably(store, [a]);
    const firstBatch = store.appliedIndex();
    const b: Command = { kind: 'write', volume: 'v', offset: 0, data: rng.bytes(4 * KiB) };
    await durably(store, [b]);
    t.truthy(await store.compactLog(() => ({ upTo: firstBatch, retainFor: [] })));
    t.is(store.state.refStats.relocated, 0, 'the first write of block 0 was dead');
    t.is(store.state.pointerRows(), 1);
    sameBytes(t, readAll(store, 'v', 0, 4 * KiB), (b as { data: Uint8Array }).data);
  });
});

test('a snapshot carries the data, not pointers, and installs elsewhere to the same state', async (t) => {
  const rng = new Prng(6);
  const model = new Model();
  await withStore('ptr-snap', async (store) => {
    const commands = writes(rng, 40);
    await durably(store, commands);
    model.apply(commands);
    t.true(store.state.pointerRows() > 0);
    const metadata = (await store.createSnapshotAsync())!;
    const file = store.logStorage.snapshotFilePath()!;
    const db = new Database(file, { readonly: true });
    try {
      t.is((db.prepare('SELECT COUNT(*) AS c FROM blocks WHERE seg IS NOT NULL').get() as { c: number }).c, 0);
      t.is((db.prepare('SELECT COUNT(*) AS c FROM blocks WHERE LENGTH(data) = 4096').get() as { c: number }).c, (db.prepare('SELECT COUNT(*) AS c FROM blocks').get() as { c: number }).c);
    } finally {
      db.close();
    }
    const other = tempDir('ptr-snap-to');
    const to = BlockStore.open(other.dir, { limits });
    try {
      transferSnapshot(store, to, metadata);
      t.is(to.stateHash().hash, store.stateHash().hash);
      sameBytes(t, readAll(to, 'v', 0, volumeBytes), model.bytes);
    } finally {
      to.close();
      other.cleanup();
    }
  });
});

test('a flipped byte in the log under a pointer is CorruptError on read, in the state hash and in the integrity check, never wrong data', async (t) => {
  const rng = new Prng(7);
  await withStore('ptr-rot', async (store) => {
    const w: Command = { kind: 'write', volume: 'v', offset: 8 * KiB, data: rng.bytes(4 * KiB) };
    await durably(store, [w]);
    const row = store.state.database().prepare('SELECT seg, off FROM blocks WHERE block = 2').get() as { seg: number; off: number };
    const file = store.logStorage.wal.segmentFiles().find((f) => f.endsWith(`${String(row.seg).padStart(16, '0')}.log`))!;
    const fd = fs.openSync(file, 'r+');
    try {
      const byte = Buffer.alloc(1);
      fs.readSync(fd, byte, 0, 1, row.off + 77);
      byte[0] = byte[0]! ^ 0xff;
      fs.writeSync(fd, byte, 0, 1, row.off + 77);
    } finally {
      fs.closeSync(fd);
    }
    const error = t.throws(() => store.read('v', 8 * KiB, 4 * KiB));
    t.true(error instanceof CorruptError);
    t.is((error as CorruptError & { offset?: number }).offset, 8 * KiB);
    t.is(store.stateHash === undefined, false);
    t.throws(() => store.stateHash(), { instanceOf: CorruptError });
    t.is(store.state.checkIntegrity().corrupt, 1);
    // (A reopened log would not even hold the entry: its record fails the WAL's own checksum.)
  });
});
