/**
 * recovery: proves BlockStore.open() starts from the files a power loss or a rotted block leaves,
 * by crafting those files on disk (the real WAL segment cut short, state.db changed byte by byte) and opening them as a node does — RawNode over the store's log
 * with the store's applied index:
 *  - applied above the stored commit index (the commit-only record in the WAL was lost, state.db
 *    kept its batch): the store raises the commit index, durably, and raft starts.
 *  - a rotted block (one byte flipped in the state.db file) under a partial write: apply throws
 *    StateCorruptError (typed, nothing applied), the marker names volume/block/entry, reads and
 *    further applies are refused; the reopened store rebuilds its state from the latest snapshot
 *    (or, without one, from the empty state) and raft's replay of the local log makes it equal to
 *    an uncorrupted replica's (stateHash, configuration, members). When the snapshot holds the
 *    rot too, every open refuses with an error that names the operator's remedy.
 */

import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import { BlockStore, CORRUPTION_MARKER_FILE, STATE_DB_FILE, WAL_DIR } from '../../src/blockstore/index.js';
import { SegmentedLog } from '../../src/blockstore/wal.js';
import { type Command, encodeCommand } from '../../src/blockstore/commands.js';
import { type MemberAddresses, StateCorruptError } from '../../src/blockstore/replica-store.js';
import { CorruptError } from '../../src/errors.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import { type Entry, EntryType } from '../../src/raft/types.js';
import { Prng, applyCommitted, drive, readAll, readyOf, tempDir } from './helpers.js';

const KiB = 1024;

/** startRaft: the RawNode a Replica builds over `store` on start (its constructor runs RaftLog's recovery checks). */
function startRaft(store: BlockStore): RawNode {
  return new RawNode({ id: 1, storage: store.logStorage, random: new SeededRandom(1), applied: store.appliedIndex(), electionTimeoutTicks: 10, heartbeatIntervalTicks: 1 });
}

test('power loss leaves state.db applied beyond the WAL commit: the store raises commit to applied, raft starts', async (t) => {
  const tmp = tempDir('recovery-commit');
  try {
    let store = BlockStore.open(tmp.dir);
    store.bootstrap([1]);
    applyCommitted(store);
    drive(store, [{ kind: 'createVolume', name: 'v', sizeBytes: 64 * KiB }]);
    // A leader's append (durable, commit not yet advanced), then the commit-only batch (mustSync
    // false: no fsync of its own), then the apply of the newly committed entries to state.db.
    const start = store.logStorage.lastIndex() + 1;
    const entries: Entry[] = [0, 1, 2].map((i) => ({
      index: start + i,
      term: 1,
      type: EntryType.Normal,
      data: encodeCommand({ kind: 'write', volume: 'v', offset: i * 4 * KiB, data: new Uint8Array(4 * KiB).fill(i + 1) }),
    }));
    const durableCommit = start - 1;
    await store.persist({ ...readyOf(), entries, hardState: { term: 1, vote: 0, commit: durableCommit } });
    const segment = store.logStorage.wal.segmentFiles().at(-1)!;
    const durableBytes = fs.statSync(segment).size;
    t.is(store.persist({ ...readyOf(), mustSync: false, hardState: { term: 1, vote: 0, commit: start + 2 } }), undefined, 'a commit-only Ready waits for no disk');
    applyCommitted(store, entries);
    const applied = store.appliedIndex();
    t.is(applied, start + 2);
    const hashBefore = store.stateHash();
    store.close();

    // The power loss: the WAL loses the commit-only record nobody waited for (close() had flushed
    // it: cut it off again), state.db keeps its batch.
    t.true(fs.statSync(segment).size > durableBytes, 'the commit-only record was written after the awaited append');
    fs.truncateSync(segment, durableBytes);

    store = BlockStore.open(tmp.dir);
    const raft = startRaft(store); // the old code failed here: RaftLog asserts applied <= committed
    t.is(store.appliedIndex(), applied);
    t.is(store.logStorage.hardState().commit, applied, 'commit raised to the applied index');
    t.is(raft.raft.log.committed, applied);
    t.is(raft.raft.log.applied, applied);
    t.deepEqual(store.stateHash(), hashBefore);
    store.close();

    // Durable: the WAL itself holds the raised commit.
    const reread = SegmentedLog.open(path.join(tmp.dir, WAL_DIR));
    t.is(reread.hardState().commit, applied);
    await reread.close();
  } finally {
    tmp.cleanup();
  }
});

/** drainRaft: runs the Ready loop of a single-voter RawNode over `store` until it has nothing to do (persist, apply, advance). */
function drainRaft(store: BlockStore, raft: RawNode): void {
  for (let rounds = 0; raft.hasReady(); rounds++) {
    if (rounds > 10_000) throw new Error('Ready loop does not settle');
    const rd = raft.ready();
    store.persist(rd);
    if (rd.committedEntries.length > 0) store.apply(rd.committedEntries, (cc) => raft.applyConfChange(cc));
    raft.advance();
  }
}

/**
 * flipByteOf: closes nothing; flips one byte of `needle`'s only occurrence in the file `file`
 * (a checkpointed state.db: the block's bytes are in its overflow page).
 */
function flipByteOf(file: string, needle: Uint8Array): void {
  const bytes = fs.readFileSync(file);
  const at = bytes.indexOf(needle);
  if (at < 0 || bytes.indexOf(needle, at + 1) >= 0) throw new Error(`the needle occurs ${at < 0 ? 'nowhere' : 'more than once'} in ${file}`);
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, Buffer.from([bytes[at + 7]! ^ 0x01]), 0, 1, at + 7);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

const members = new Map<number, MemberAddresses>([[1, { raft: '127.0.0.1:1', admin: '127.0.0.1:2', nbd: '127.0.0.1:3' }]]);
const rottenBlock = 5;

/** setUp: bootstrap + a volume whose blocks 0..15 hold random bytes; returns the data of the rotten block. */
function setUp(store: BlockStore, seed: number): Uint8Array {
  store.bootstrap([1], [], members);
  applyCommitted(store);
  const rng = new Prng(seed);
  const commands: Command[] = [{ kind: 'createVolume', name: 'v', sizeBytes: 64 * 4 * KiB }];
  let rotten: Uint8Array = new Uint8Array(0);
  for (let block = 0; block < 16; block++) {
    const data = rng.bytes(4 * KiB);
    if (block === rottenBlock) rotten = data;
    commands.push({ kind: 'write', volume: 'v', offset: block * 4 * KiB, data });
  }
  drive(store, commands);
  return rotten;
}

const partialWrite: Command = { kind: 'write', volume: 'v', offset: rottenBlock * 4 * KiB + 100, data: new Uint8Array(300).fill(0xab) };
const laterWrites: Command[] = [
  { kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(4 * KiB).fill(3) },
  { kind: 'trim', volume: 'v', offset: 9 * 4 * KiB, length: 4 * KiB },
];

for (const withSnapshot of [true, false]) {
  test(`a rotted block under a partial write: typed error + marker; reopen rebuilds from ${withSnapshot ? 'the latest snapshot' : 'the empty state'} and converges`, (t) => {
    const dirs = ['rotten', 'healthy'].map((name) => tempDir(`recovery-${name}`));
    let rotten = BlockStore.open(dirs[0]!.dir);
    const healthy = BlockStore.open(dirs[1]!.dir);
    try {
      const needle = setUp(rotten, 42).subarray(2000, 2064);
      setUp(healthy, 42);
      if (withSnapshot) {
        t.truthy(rotten.createSnapshot(), 'a clean snapshot, taken before the rot');
        healthy.createSnapshot();
      }
      drive(rotten, laterWrites);
      drive(healthy, laterWrites);
      const appliedBefore = rotten.appliedIndex();
      rotten.close();

      flipByteOf(path.join(dirs[0]!.dir, STATE_DB_FILE), needle);
      rotten = BlockStore.open(dirs[0]!.dir);
      const error = t.throws(() => drive(rotten, [partialWrite]), { instanceOf: StateCorruptError });
      t.true(error instanceof CorruptError, 'a CorruptError (InternalError, code CORRUPT) for the replica to catch');
      t.like(error!.record, { volume: 'v', block: rottenBlock, index: appliedBefore + 1 });
      t.is(rotten.appliedIndex(), appliedBefore, 'nothing of the batch applied');
      const marker = JSON.parse(fs.readFileSync(path.join(dirs[0]!.dir, CORRUPTION_MARKER_FILE), 'utf8')) as Record<string, unknown>;
      t.like(marker, { volume: 'v', block: rottenBlock, index: appliedBefore + 1 }, 'the marker is on disk');
      t.throws(() => rotten.read('v', 0, 4 * KiB), { instanceOf: StateCorruptError }, 'no reads from a rotten state, even of intact blocks');
      t.throws(() => applyCommitted(rotten), { instanceOf: StateCorruptError }, 'the same entry is not applied again');
      t.is(rotten.createSnapshot(), undefined, 'no snapshot of a rotten state');
      drive(healthy, [partialWrite]);
      rotten.close();

      rotten = BlockStore.open(dirs[0]!.dir);
      t.like(rotten.repaired, { from: withSnapshot ? 'snapshot' : 'empty', record: { volume: 'v', block: rottenBlock } });
      t.false(fs.existsSync(path.join(dirs[0]!.dir, CORRUPTION_MARKER_FILE)), 'marker cleared after the repair');
      const raft = startRaft(rotten);
      drainRaft(rotten, raft);
      t.is(rotten.appliedIndex(), healthy.appliedIndex(), 'raft re-applied the local log');
      t.deepEqual(rotten.stateHash(), healthy.stateHash(), 'the rebuilt state equals the uncorrupted replica');
      t.deepEqual(rotten.state.confState(), healthy.state.confState());
      t.deepEqual(rotten.members(), healthy.members());
      t.deepEqual(rotten.state.checkIntegrity(), healthy.state.checkIntegrity());
      t.deepEqual(readAll(rotten, 'v', 0, 64 * 4 * KiB), readAll(healthy, 'v', 0, 64 * 4 * KiB));
    } finally {
      rotten.close();
      healthy.close();
      for (const x of dirs) x.cleanup();
    }
  });
}

test('a rot that the latest snapshot holds too: every open refuses with the operator remedy, and serves nothing', (t) => {
  const tmp = tempDir('recovery-refuse');
  let store = BlockStore.open(tmp.dir);
  try {
    const needle = setUp(store, 7).subarray(2000, 2064);
    store.close();
    flipByteOf(path.join(tmp.dir, STATE_DB_FILE), needle);
    store = BlockStore.open(tmp.dir);
    t.truthy(store.createSnapshot(), 'the snapshot copies the rotten row as it is');
    t.throws(() => drive(store, [partialWrite]), { instanceOf: StateCorruptError });
    store.close();
    for (let attempt = 0; attempt < 2; attempt++) {
      const error = t.throws(() => BlockStore.open(tmp.dir), { instanceOf: CorruptError });
      t.regex(error!.message, /volume "v" block 5/);
      t.regex(error!.message, /latest snapshot \(\d+\) holds 1 blocks that fail their checksum/);
      t.regex(error!.message, /remove this node from the cluster \(chard member remove ID\), delete its data directory.*add it again \(chard member add ID/);
      t.true(fs.existsSync(path.join(tmp.dir, CORRUPTION_MARKER_FILE)), 'the marker stays: the next start refuses the same way');
    }
  } finally {
    store.close();
    tmp.cleanup();
  }
});
