/**
 * wal-store: the block store's log in the segmented WAL (wal-storage.ts). persist() returns a
 * promise when the Ready has something to make durable, and undefined otherwise; entries are
 * visible before they are durable; after the promise resolves a reopened store has the same log;
 * a copy of the directory taken while appends are in flight opens to a prefix of the batches
 * (torn tail cut) with a hard state that never commits beyond its entries; a Ready with a snapshot
 * and entries resets a disagreeing log first, also across a crash that lost the reset; compaction
 * deletes segments; a directory written by the SQLite-log code is migrated (also when a crash
 * interrupted the migration); and 1,000 4 KiB entries cost few fdatasyncs (counted, not timed).
 */

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { BlockStore, STATE_DB_FILE, WAL_DIR, defaultBlockStoreLimits } from '../../src/blockstore/index.js';
import { encodeCommand } from '../../src/blockstore/commands.js';
import { LOG_DB_FILE, SqliteLogStorage } from '../../src/blockstore/log-store.js';
import { copyStateSnapshot } from '../../src/blockstore/snapshot-copy.js';
import { BlockStateMachine } from '../../src/blockstore/state-store.js';
import { bootstrapConfState, bootstrapEntry, nextConfState } from '../../src/raft/confchange.js';
import { type Entry, EntryType, type HardState } from '../../src/raft/types.js';
import { Prng, applyCommitted, drive, readAll, readyOf, seedFromEnv, tempDir } from './helpers.js';
import { until } from '../helpers/until.js';

const KiB = 1024;

function writes(start: number, count: number, term: number, bytes = 4 * KiB, fill = 0): Entry[] {
  return Array.from({ length: count }, (_, i) => ({
    index: start + i,
    term,
    type: EntryType.Normal,
    data: encodeCommand({ kind: 'write', volume: 'v', offset: ((start + i) % 16) * 4 * KiB, data: new Uint8Array(bytes).fill((start + i + fill) & 255) }),
  }));
}

/** digest: an entry as [index, term, sha1 of data]. */
function digest(e: Entry): [number, number, string] {
  return [e.index, e.term, createHash('sha1').update(e.data).digest('hex')];
}

/** logOf: every entry of the store's log, digested. */
function logOf(store: BlockStore): Array<[number, number, string]> {
  const log = store.logStorage;
  if (log.lastIndex() < log.firstIndex()) return [];
  return log.entries(log.firstIndex(), log.lastIndex() + 1, Number.MAX_SAFE_INTEGER).map(digest);
}

/** newStore: a bootstrapped single-voter store with volume "v" (16 blocks), everything durable. */
async function newStore(dir: string, limits: Parameters<typeof BlockStore.open>[1] = {}): Promise<BlockStore> {
  const store = BlockStore.open(dir, limits);
  store.bootstrap([1]);
  applyCommitted(store);
  drive(store, [{ kind: 'createVolume', name: 'v', sizeBytes: 16 * 4 * KiB }]);
  await store.persist({ ...readyOf(), hardState: store.logStorage.hardState() });
  return store;
}

test('persist: entries visible at once, durable when the promise resolves; a reopened store has the same log', async (t) => {
  const tmp = tempDir('walstore-basic');
  try {
    const store = await newStore(tmp.dir);
    const start = store.logStorage.lastIndex() + 1;
    const entries = writes(start, 8, 1);
    const hardState: HardState = { term: 1, vote: 1, commit: start - 1 };
    const durable = store.persist({ ...readyOf(), entries, hardState });
    t.true(durable instanceof Promise, 'a Ready with entries returns a promise');
    t.is(store.logStorage.lastIndex(), start + 7, 'visible before durable');
    t.deepEqual(store.logStorage.entries(start, start + 8, Number.MAX_SAFE_INTEGER).map((e) => e.index), entries.map((e) => e.index));
    t.true(store.logStorage.durableIndex() < start, 'not durable yet when persist returns');
    t.deepEqual(store.logStorage.hardState(), hardState);
    await durable;
    t.is(store.logStorage.durableIndex(), start + 7);
    t.is(store.persist({ ...readyOf() }), undefined, 'an empty Ready waits for nothing');
    const syncs = store.logStorage.wal.stats.batches;
    t.is(store.persist({ ...readyOf(), mustSync: false, hardState: { ...hardState, commit: start + 7 } }), undefined, 'a commit-only Ready waits for nothing');
    await store.logStorage.wal.append([], { sync: false }); // resolves after the commit-only record is written
    t.is(store.logStorage.wal.stats.batches, syncs, 'a commit-only Ready costs no fdatasync');
    t.true(store.persist({ ...readyOf(), hardState: { term: 2, vote: 1, commit: start + 7 } }) instanceof Promise, 'a term change is awaited');
    const before = logOf(store);
    store.close();
    const again = BlockStore.open(tmp.dir);
    t.deepEqual(logOf(again), before);
    t.deepEqual(again.logStorage.hardState(), { term: 2, vote: 1, commit: start + 7 });
    t.true(fs.existsSync(path.join(tmp.dir, WAL_DIR)));
    const db = new Database(path.join(tmp.dir, LOG_DB_FILE), { readonly: true });
    t.is((db.prepare('SELECT COUNT(*) AS c FROM entries').get() as { c: number }).c, 0, 'log.db holds no entries');
    db.close();
    again.close();
  } finally {
    tmp.cleanup();
  }
});

/**
 * copyMidWrite: copies a store directory while its WAL is being written, newest segment first. A
 * segment is written only after every earlier one is complete and synced, so a copy taken newest
 * first is a state some crash could leave (oldest first could copy segment N torn and N+1 written
 * later, which no crash produces).
 */
function copyMidWrite(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true, filter: (source) => path.basename(source) !== WAL_DIR || source === from });
  fs.mkdirSync(path.join(to, WAL_DIR));
  for (const name of fs.readdirSync(path.join(from, WAL_DIR)).sort().reverse()) fs.copyFileSync(path.join(from, WAL_DIR, name), path.join(to, WAL_DIR, name));
}

test('a copy of the directory taken while appends are in flight opens to a prefix of the batches, never a commit beyond its entries', async (t) => {
  const seed = seedFromEnv(4242);
  t.log(`seed=${seed} (CHARD_SEED replays the batches; copy points vary with scheduling)`);
  const rng = new Prng(seed);
  const tmp = tempDir('walstore-crash');
  const copies = tempDir('walstore-crash-copies');
  try {
    const store = await newStore(tmp.dir, { limits: { segmentBytesMax: 64 * KiB } });
    // models[j]: the log and hard state after batch j (j = 0: before any).
    const models: Array<{ log: Array<[number, number, string]>; hardState: HardState }> = [{ log: logOf(store), hardState: store.logStorage.hardState() }];
    const resolved: number[] = [];
    const promises: Promise<void>[] = [];
    let checked = 0;
    const behind: string[] = []; // copies that missed batches still in flight (batch -> batch held)
    for (let j = 1; j <= 120; j++) {
      const last = store.logStorage.lastIndex();
      const base = models[0]!.log.length;
      const back = rng.int(4) === 0 ? Math.min(rng.int(4), last - base) : 0; // replace a suffix now and then
      const start = last + 1 - back;
      const entries = writes(start, 1 + rng.int(8), 1 + j, 1 + rng.int(6000), j);
      const hardState = { term: 1 + j, vote: 1, commit: start - 1 };
      const p = store.persist({ ...readyOf(), entries, hardState })!;
      promises.push(p.then(() => void resolved.push(j)));
      models.push({ log: logOf(store), hardState });
      if (rng.int(3) === 0) await new Promise((resolve) => setImmediate(resolve));
      if (j % 10 === 0) {
        const acknowledged = Math.max(0, ...resolved);
        const copy = path.join(copies.dir, `copy-${j}`);
        copyMidWrite(tmp.dir, copy);
        const opened = BlockStore.open(copy);
        const log = logOf(opened);
        const k = models.findIndex((m) => JSON.stringify(m.log) === JSON.stringify(log));
        t.true(k >= 0, `copy at batch ${j}: the log is the log after some batch`);
        t.true(k >= acknowledged, `copy at batch ${j}: holds batch ${k}, every acknowledged batch (${acknowledged}) survives`);
        const hs = opened.logStorage.hardState();
        t.true(JSON.stringify(hs) === JSON.stringify(models[k]!.hardState) || (k > 0 && JSON.stringify(hs) === JSON.stringify(models[k - 1]!.hardState)), `copy at batch ${j}: hard state of batch ${k} or the one before`);
        t.true(hs.commit <= opened.logStorage.lastIndex(), 'commit never beyond the entries');
        opened.close();
        checked += 1;
        if (k < j) behind.push(`${j}->${k}`);
      }
    }
    await Promise.all(promises);
    t.is(checked, 12);
    t.log(`copies that lost batches in flight: ${behind.join(', ') || 'none'}`);
    t.true(store.logStorage.wal.segmentFiles().length > 1, 'segments rotated');
    const final = logOf(store);
    store.close();
    const again = BlockStore.open(tmp.dir);
    t.deepEqual(logOf(again), final);
    again.close();
  } finally {
    tmp.cleanup();
    copies.cleanup();
  }
});

test('a Ready with a snapshot and entries: the disagreeing log is reset first, then the entries; a crash that lost the reset is repaired on open', async (t) => {
  const dirs = ['leader', 'follower', 'crashed'].map((n) => tempDir(`walstore-snap-${n}`));
  try {
    const leader = await newStore(dirs[0]!.dir);
    drive(leader, [{ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(4 * KiB).fill(7) }]);
    await leader.persist({ ...readyOf(), hardState: leader.logStorage.hardState() });
    const metadata = leader.createSnapshot()!;
    t.truthy(metadata);
    // The follower: the bootstrap entry, then a log of term 5 past the snapshot, never committed.
    const follower = BlockStore.open(dirs[1]!.dir);
    follower.bootstrap([1]);
    applyCommitted(follower);
    const stale = writes(2, metadata.index + 8, 5);
    await follower.persist({ ...readyOf(), entries: stale, hardState: { term: 5, vote: 0, commit: 1 } });
    t.not(follower.logStorage.term(metadata.index), metadata.term, 'the follower disagrees at the snapshot index');
    const data = leader.logStorage.snapshotChunk(metadata.index, 0, metadata.sizeBytes);
    t.is(follower.persist({ ...readyOf(), snapshotChunks: [{ metadata, offset: 0, data, last: true }] }), undefined, 'chunks are durable on return');
    const walBytes = fs.statSync(follower.logStorage.wal.segmentFiles().at(-1)!).size;
    const next = writes(metadata.index + 1, 3, 6);
    const durable = follower.persist({ ...readyOf(), snapshot: metadata, entries: next, hardState: { term: 6, vote: 0, commit: metadata.index } });
    t.true(durable instanceof Promise);
    t.is(follower.logStorage.firstIndex(), metadata.index + 1);
    t.is(follower.logStorage.lastIndex(), metadata.index + 3, 'the stale entries after the snapshot are gone');
    t.is(follower.logStorage.term(metadata.index), metadata.term);
    await durable;
    follower.installSnapshot(metadata);
    follower.close();
    // The crash: a copy of the follower whose WAL lost the append with the reset (log.db, the snapshot file and state.db kept theirs).
    fs.cpSync(dirs[1]!.dir, dirs[2]!.dir, { recursive: true });
    const segment = path.join(dirs[2]!.dir, WAL_DIR, path.basename(fs.readdirSync(path.join(dirs[2]!.dir, WAL_DIR)).sort().at(-1)!));
    fs.truncateSync(segment, walBytes);
    const reopened = BlockStore.open(dirs[1]!.dir);
    t.is(reopened.logStorage.firstIndex(), metadata.index + 1);
    t.deepEqual(logOf(reopened).map(([i, term]) => [i, term]), next.map((e) => [e.index, e.term]));
    t.deepEqual(reopened.stateHash(), leader.stateHash());
    reopened.close();
    const crashed = BlockStore.open(dirs[2]!.dir);
    t.is(crashed.logStorage.firstIndex(), metadata.index + 1, 'the lost reset is done again on open');
    t.is(crashed.logStorage.lastIndex(), metadata.index);
    t.is(crashed.logStorage.term(metadata.index), metadata.term);
    t.is(crashed.appliedIndex(), metadata.index);
    crashed.close();
    leader.close();
  } finally {
    for (const d of dirs) d.cleanup();
  }
});

test('compaction behind a snapshot moves the first index at once and deletes whole segments once durable', async (t) => {
  const tmp = tempDir('walstore-compact');
  try {
    const limits = { segmentBytesMax: 32 * KiB, compactionTrailingEntries: 5 };
    const store = await newStore(tmp.dir, { limits });
    for (let i = 0; i < 10; i++) {
      const start = store.logStorage.lastIndex() + 1;
      const entries = writes(start, 10, 1);
      await store.persist({ ...readyOf(), entries, hardState: { term: 1, vote: 0, commit: start + 9 } });
      applyCommitted(store, entries);
    }
    const segmentsBefore = store.logStorage.wal.segmentFiles().length;
    t.true(segmentsBefore > 5, `${segmentsBefore} segments`);
    const metadata = store.createSnapshot()!;
    t.is(store.logStorage.firstIndex(), metadata.index - 5 + 1, 'compacted at once, keeping compactionTrailingEntries');
    // The segments leave the log at once and their files a moment later (unlinked on the thread pool, oldest first).
    const onDisk = () => fs.readdirSync(path.join(tmp.dir, WAL_DIR)).length;
    const files = () => store.logStorage.wal.segmentFiles().length;
    await until(t, 'the compacted segments gone from the log and the disk', () => files() < segmentsBefore && onDisk() === files());
    const segmentsAfter = store.logStorage.wal.segmentFiles();
    t.true(segmentsAfter.length < segmentsBefore, `${segmentsBefore} -> ${segmentsAfter.length} segments`);
    t.is(fs.readdirSync(path.join(tmp.dir, WAL_DIR)).length, segmentsAfter.length, 'the files are gone');
    const before = logOf(store);
    const hash = store.stateHash();
    store.close();
    const again = BlockStore.open(tmp.dir, { limits });
    t.is(again.logStorage.firstIndex(), metadata.index - 5 + 1);
    t.is(again.logStorage.term(metadata.index - 5), 1);
    t.deepEqual(logOf(again), before);
    t.deepEqual(again.stateHash(), hash);
    again.close();
  } finally {
    tmp.cleanup();
  }
});

/**
 * oldStoreDir: a store directory as the code before the WAL wrote it — the block store was
 * SqliteLogStorage (log.db: entries, hard state, snapshot) over BlockStateMachine (state.db): a
 * bootstrap, writes, a snapshot with the log compacted behind it, then entries not yet applied.
 */
function oldStoreDir(dir: string): { firstIndex: number; lastIndex: number; hardState: HardState; entries: Entry[] } {
  const state = BlockStateMachine.open(path.join(dir, STATE_DB_FILE), defaultBlockStoreLimits);
  const log = SqliteLogStorage.open(dir, { confStateSource: () => state.confState() });
  try {
    log.persist({ entries: [bootstrapEntry([1])], hardState: { term: 0, vote: 0, commit: 1 }, mustSync: true });
    state.bootstrapConfState(bootstrapConfState([1]));
    const apply = (entries: Entry[]) => state.apply(entries, (cc) => nextConfState(state.confState(), cc));
    apply(log.entries(1, 2, Number.MAX_SAFE_INTEGER));
    const create: Entry = { index: 2, term: 1, type: EntryType.Normal, data: encodeCommand({ kind: 'createVolume', name: 'v', sizeBytes: 16 * 4 * KiB }) };
    const batch = [create, ...writes(3, 20, 1)];
    log.persist({ entries: batch, hardState: { term: 1, vote: 1, commit: 22 }, mustSync: true });
    apply(batch);
    const temp = log.snapshotTempPath(22);
    const copy = copyStateSnapshot(state.file, temp);
    log.recordSnapshotFile(copy.index, copy.confState, temp);
    log.compact(15);
    const tail = writes(23, 6, 2, 4 * KiB, 9);
    log.persist({ entries: tail, hardState: { term: 2, vote: 1, commit: 26 }, mustSync: true });
    apply(tail.slice(0, 4));
    return { firstIndex: log.firstIndex(), lastIndex: log.lastIndex(), hardState: log.hardState(), entries: log.entries(log.firstIndex(), log.lastIndex() + 1, Number.MAX_SAFE_INTEGER) };
  } finally {
    log.close();
    state.close();
  }
}

function logDbRows(dir: string): { entries: number; hardState: number } {
  const db = new Database(path.join(dir, LOG_DB_FILE), { readonly: true });
  try {
    return {
      entries: (db.prepare('SELECT COUNT(*) AS c FROM entries').get() as { c: number }).c,
      hardState: (db.prepare('SELECT COUNT(*) AS c FROM hard_state').get() as { c: number }).c,
    };
  } finally {
    db.close();
  }
}

test('a directory written with the log in log.db is migrated on open: entries and hard state into the WAL, then out of log.db', (t) => {
  const dirs = ['old', 'interrupted', 'reference'].map((n) => tempDir(`walstore-migrate-${n}`));
  try {
    const old = oldStoreDir(dirs[0]!.dir);
    oldStoreDir(dirs[1]!.dir);
    oldStoreDir(dirs[2]!.dir);
    t.deepEqual(logDbRows(dirs[0]!.dir), { entries: old.lastIndex - old.firstIndex + 1, hardState: 1 });
    t.false(fs.existsSync(path.join(dirs[0]!.dir, WAL_DIR)));
    // A migration a crash interrupted before its rename leaves wal.migrating/: thrown away.
    fs.mkdirSync(path.join(dirs[0]!.dir, 'wal.migrating'));
    fs.writeFileSync(path.join(dirs[0]!.dir, 'wal.migrating', 'wal-0000000000000001.log'), 'half a segment');

    const check = (store: BlockStore): void => {
      t.is(store.logStorage.firstIndex(), old.firstIndex);
      t.is(store.logStorage.lastIndex(), old.lastIndex);
      t.is(store.logStorage.term(old.firstIndex - 1), 1);
      t.deepEqual(store.logStorage.hardState(), old.hardState);
      t.deepEqual(logOf(store), old.entries.map(digest));
      t.is(store.logStorage.snapshot().index, 22);
      t.deepEqual(logDbRows(store.dir), { entries: 0, hardState: 0 }, 'log.db holds no log any more');
    };
    let store = BlockStore.open(dirs[0]!.dir);
    t.deepEqual(store.logStorage.migrated, { entries: old.lastIndex - old.firstIndex + 1 });
    t.false(fs.existsSync(path.join(dirs[0]!.dir, 'wal.migrating')));
    check(store);
    applyCommitted(store, old.entries.filter((e) => e.index <= old.hardState.commit));
    t.is(store.appliedIndex(), old.hardState.commit, 'the committed, unapplied tail applies from the WAL');
    const hash = store.stateHash();
    store.close();
    store = BlockStore.open(dirs[0]!.dir);
    t.is(store.logStorage.migrated, undefined, 'migrated once');
    check(store);
    t.deepEqual(store.stateHash(), hash);
    store.close();

    // A crash after the rename, before log.db's rows were deleted: the WAL is the truth, the rows go.
    fs.cpSync(path.join(dirs[0]!.dir, WAL_DIR), path.join(dirs[1]!.dir, WAL_DIR), { recursive: true });
    // ...the WAL above also holds the hard state the store raised nothing over, so both agree.
    store = BlockStore.open(dirs[1]!.dir);
    t.is(store.logStorage.migrated, undefined);
    check(store);
    store.close();

    // The reference: the same old directory, read by the old log code, answers the same entries.
    const reference = SqliteLogStorage.open(dirs[2]!.dir);
    t.deepEqual(reference.entries(old.firstIndex, old.lastIndex + 1, Number.MAX_SAFE_INTEGER).map(digest), old.entries.map(digest));
    reference.close();
  } finally {
    for (const d of dirs) d.cleanup();
  }
});

test('1,000 x 4 KiB entries: batches in flight share fdatasyncs; bytes per entry are the data plus headers (counted, not timed)', async (t) => {
  const tmp = tempDir('walstore-perf');
  try {
    const store = await newStore(tmp.dir);
    const wal = store.logStorage.wal;
    const run = async (batch: number, pipelined: boolean): Promise<{ persists: number; fdatasyncs: number; bytesPerEntry: number }> => {
      const before = { ...wal.stats };
      const pending: Promise<void>[] = [];
      for (let i = 0; i < 1000; i += batch) {
        const start = store.logStorage.lastIndex() + 1;
        const p = store.persist({ ...readyOf(), entries: writes(start, batch, 1), hardState: { term: 1, vote: 0, commit: start - 1 } })!;
        if (pipelined) pending.push(p);
        else await p;
      }
      await Promise.all(pending);
      return { persists: 1000 / batch, fdatasyncs: wal.stats.batches - before.batches, bytesPerEntry: (wal.stats.bytes - before.bytes) / 1000 };
    };
    const awaited = await run(10, false);
    const pipelined = await run(10, true);
    const big = await run(100, true);
    t.log(`batches of 10, each awaited: ${awaited.persists} persists, ${awaited.fdatasyncs} fdatasyncs, ${awaited.bytesPerEntry.toFixed(1)} bytes/entry`);
    t.log(`batches of 10, all in flight: ${pipelined.persists} persists, ${pipelined.fdatasyncs} fdatasyncs, ${pipelined.bytesPerEntry.toFixed(1)} bytes/entry`);
    t.log(`batches of 100, all in flight: ${big.persists} persists, ${big.fdatasyncs} fdatasyncs`);
    t.is(awaited.fdatasyncs, awaited.persists, 'one fdatasync per awaited persist');
    t.true(pipelined.fdatasyncs < pipelined.persists / 2, 'appends in flight share fdatasyncs (group commit)');
    // 4 KiB data + the write command's encoding + 17 bytes entry header + 9 record header + a hard state record (25) per batch.
    const commandBytes = writes(1, 1, 1)[0]!.data.length;
    t.true(awaited.bytesPerEntry <= commandBytes + 17 + (9 + 4 + 25) / 10 + 1, `${awaited.bytesPerEntry} bytes per entry of ${commandBytes}`);
    store.close();
  } finally {
    tmp.cleanup();
  }
});

test('readAll after reopen: data applied from WAL entries reads back', async (t) => {
  const tmp = tempDir('walstore-read');
  try {
    const store = await newStore(tmp.dir);
    drive(store, [{ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(4 * KiB).fill(0x5a) }]);
    store.close();
    const again = BlockStore.open(tmp.dir);
    t.deepEqual(readAll(again, 'v', 0, 4 * KiB), new Uint8Array(4 * KiB).fill(0x5a));
    again.close();
  } finally {
    tmp.cleanup();
  }
});
