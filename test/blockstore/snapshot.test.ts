/**
 * snapshot: proves the snapshot path end to end on real files. A leader store creates a
 * snapshot (VACUUM INTO, fsync, record, compact keeping compactionTrailingEntries); its bytes are
 * streamed through snapshotChunk() into a fresh follower store's persist(snapshotChunks) in random
 * chunk sizes, with a simulated restart half-way that resumes from pendingSnapshot(); the follower
 * then records and installs it and must have the same stateHash and applied index, a log that
 * starts behind the snapshot, and keep that across a restart. A crash between recording and
 * installing is recovered on open. Older snapshot files are deleted when superseded. The 64 MiB
 * run prints create / stream / install throughput in MiB/s (printed, not asserted).
 */

import test from 'ava';
import { BlockStore } from '../../src/blockstore/index.js';
import type { Command } from '../../src/blockstore/commands.js';
import type { SnapshotMetadata } from '../../src/raft/types.js';
import { Prng, applyCommitted, drive, seedFromEnv, settledSnapshotFiles, tempDir } from './helpers.js';

const MiB = 1024 * 1024;

/** stream: copies snapshot `metadata` from `from` into `to` in random chunk sizes; restarts `to` once half-way. */
function stream(from: BlockStore, toDir: string, to: BlockStore, metadata: SnapshotMetadata, rng: Prng, chunkBytesMax: number): { store: BlockStore; restartedAt: number } {
  let offset = 0;
  let restartedAt = -1;
  let store = to;
  while (offset < metadata.sizeBytes) {
    const size = 1 + rng.int(chunkBytesMax);
    const data = from.logStorage.snapshotChunk(metadata.index, offset, size);
    const last = offset + data.length === metadata.sizeBytes;
    store.persist({
      snapshotChunks: [{ metadata, offset, data, last }],
      mustSync: true,
      softState: undefined,
      hardState: undefined,
      entries: [],
      snapshot: undefined,
      committedEntries: [],
      messagesEarly: [],
      messages: [],
      readStates: [],
    });
    offset += data.length;
    if (restartedAt < 0 && offset >= metadata.sizeBytes / 2 && !last) {
      store.close();
      store = BlockStore.open(toDir);
      const pending = store.logStorage.pendingSnapshot();
      if (pending === undefined || pending.bytesReceived !== offset) throw new Error(`resume: expected ${offset} staged bytes, got ${pending?.bytesReceived}`);
      restartedAt = offset;
    }
  }
  return { store, restartedAt };
}

function recordSnapshot(store: BlockStore, metadata: SnapshotMetadata): void {
  store.persist({
    snapshot: metadata,
    hardState: { term: metadata.term, vote: 0, commit: metadata.index },
    mustSync: true,
    softState: undefined,
    snapshotChunks: [],
    entries: [],
    committedEntries: [],
    messagesEarly: [],
    messages: [],
    readStates: [],
  });
}

function randomWorkload(rng: Prng, count: number): Command[] {
  const commands: Command[] = [{ kind: 'createVolume', name: 'a', sizeBytes: MiB }, { kind: 'createVolume', name: 'b', sizeBytes: 512 * 1024 }];
  for (let i = 0; i < count; i++) {
    const volume = rng.int(2) === 0 ? 'a' : 'b';
    const size = volume === 'a' ? MiB : 512 * 1024;
    const offset = rng.int(size - 10_000);
    commands.push(
      rng.int(4) === 0
        ? { kind: 'trim', volume, offset, length: rng.int(10_000) }
        : { kind: 'write', volume, offset, data: rng.bytes(1 + rng.int(9000)), session: { id: `c${rng.int(3)}`, sequence: i + 1, ackedBelow: i + 1 } },
    );
  }
  return commands;
}

test('snapshot streamed in random chunks with a restart half-way installs the same state; log compacted only behind it', async (t) => {
  const seed = seedFromEnv(31337);
  t.log(`seed=${seed} (CHARD_SEED replays)`);
  const rng = new Prng(seed);
  const leaderTmp = tempDir('snap-leader');
  const followerTmp = tempDir('snap-follower');
  const leader = BlockStore.open(leaderTmp.dir, { limits: { compactionTrailingEntries: 10 } });
  let follower = BlockStore.open(followerTmp.dir);
  try {
    leader.bootstrap([1, 2]);
    applyCommitted(leader);
    drive(leader, randomWorkload(rng, 150));
    const first = leader.createSnapshot()!;
    t.is(first.index, leader.appliedIndex());
    drive(leader, randomWorkload(rng, 50).slice(2));
    const metadata = leader.createSnapshot()!;
    t.deepEqual(await settledSnapshotFiles(leaderTmp.dir), [`snap-${metadata.index}-1.db`], 'the superseded snapshot file is deleted (in the background)');
    t.is(leader.createSnapshot(), undefined, 'nothing new applied: no snapshot');
    t.is(leader.logStorage.firstIndex(), metadata.index - 10 + 1, 'compacted, keeping compactionTrailingEntries');
    t.is(leader.logStorage.term(metadata.index - 10), 1);
    t.deepEqual(metadata.confState.voters, [1, 2]);
    const result = stream(leader, followerTmp.dir, follower, metadata, rng, 64 * 1024);
    follower = result.store;
    t.true(result.restartedAt > 0);
    recordSnapshot(follower, metadata);
    follower.installSnapshot(metadata);
    t.is(follower.appliedIndex(), metadata.index);
    t.deepEqual(follower.stateHash(), leader.stateHash());
    t.is(follower.logStorage.firstIndex(), metadata.index + 1);
    t.deepEqual(follower.logStorage.initialState().confState.voters, [1, 2]);
    t.deepEqual(follower.state.checkIntegrity(), leader.state.checkIntegrity());
    // the follower can serve the same snapshot on
    t.deepEqual(
      Buffer.from(follower.logStorage.snapshotChunk(metadata.index, 0, 4096)),
      Buffer.from(leader.logStorage.snapshotChunk(metadata.index, 0, 4096)),
    );
    follower.close();
    follower = BlockStore.open(followerTmp.dir);
    t.deepEqual(follower.stateHash(), leader.stateHash(), 'installed state survives a restart');
    // and both continue identically
    const more = randomWorkload(rng, 20).slice(2);
    drive(leader, more);
    drive(follower, more);
    t.deepEqual(follower.stateHash(), leader.stateHash());
  } finally {
    leader.close();
    follower.close();
    leaderTmp.cleanup();
    followerTmp.cleanup();
  }
});

test('a crash between recording a received snapshot and swapping state.db is recovered on open', (t) => {
  const rng = new Prng(4);
  const leaderTmp = tempDir('snapcrash-leader');
  const followerTmp = tempDir('snapcrash-follower');
  const leader = BlockStore.open(leaderTmp.dir);
  let follower = BlockStore.open(followerTmp.dir);
  try {
    drive(leader, randomWorkload(rng, 40));
    const metadata = leader.createSnapshot()!;
    // the follower had an older, conflicting log and state
    drive(follower, [{ kind: 'createVolume', name: 'stale', sizeBytes: 4096 }]);
    follower = stream(leader, followerTmp.dir, follower, metadata, rng, 32 * 1024).store;
    recordSnapshot(follower, metadata);
    follower.close(); // "crash" before installSnapshot
    follower = BlockStore.open(followerTmp.dir);
    t.is(follower.appliedIndex(), metadata.index);
    t.deepEqual(follower.stateHash(), leader.stateHash());
    t.deepEqual(follower.listVolumes().map((v) => v.name), ['a', 'b']);
    follower.installSnapshot(metadata); // the node's retry after restart is harmless
    t.deepEqual(follower.stateHash(), leader.stateHash());
  } finally {
    leader.close();
    follower.close();
    leaderTmp.cleanup();
    followerTmp.cleanup();
  }
});

test('64 MiB state: snapshot create / stream / install throughput (printed)', (t) => {
  const leaderTmp = tempDir('snap64-leader');
  const followerTmp = tempDir('snap64-follower');
  const leader = BlockStore.open(leaderTmp.dir);
  let follower = BlockStore.open(followerTmp.dir);
  try {
    const rng = new Prng(64);
    drive(leader, [{ kind: 'createVolume', name: 'big', sizeBytes: 64 * MiB }]);
    const batches: Command[][] = [];
    for (let i = 0; i < 64; i += 8) {
      const batch: Command[] = [];
      for (let k = i; k < i + 8; k++) batch.push({ kind: 'write', volume: 'big', offset: k * MiB, data: rng.bytes(MiB) });
      batches.push(batch);
    }
    const fill = Date.now();
    for (const batch of batches) drive(leader, batch);
    const fillMs = Date.now() - fill;
    let started = Date.now();
    const metadata = leader.createSnapshot()!;
    const createMs = Date.now() - started;
    started = Date.now();
    follower = stream(leader, followerTmp.dir, follower, metadata, rng, 4 * MiB).store;
    recordSnapshot(follower, metadata);
    const streamMs = Date.now() - started;
    started = Date.now();
    follower.installSnapshot(metadata);
    const installMs = Date.now() - started;
    started = Date.now();
    const leaderHash = leader.stateHash();
    const hashMs = Date.now() - started;
    t.deepEqual(follower.stateHash(), leaderHash);
    started = Date.now();
    const chunks = follower.read('big', 0, 32 * MiB);
    const readMs = Date.now() - started;
    t.deepEqual(chunks.map((c) => [c.offset, c.length, c.data?.length]), [[0, 32 * MiB, 32 * MiB]], 'one coalesced data chunk');
    t.log(`read 32 MiB (checksums verified): ${readMs} ms (${((32 / Math.max(readMs, 1)) * 1000).toFixed(0)} MiB/s)`);
    const mib = metadata.sizeBytes / MiB;
    const rate = (ms: number) => `${(mib / (Math.max(ms, 1) / 1000)).toFixed(0)} MiB/s`;
    t.log(`64 MiB volume written (encode + persist to the WAL + apply, 8 x 1 MiB per batch) in ${fillMs} ms (${((64 / fillMs) * 1000).toFixed(0)} MiB/s)`);
    t.log(`snapshot file ${mib.toFixed(1)} MiB: create ${createMs} ms (${rate(createMs)}), stream+stage ${streamMs} ms (${rate(streamMs)}), install ${installMs} ms (${rate(installMs)}), stateHash ${hashMs} ms`);
  } finally {
    leader.close();
    follower.close();
    leaderTmp.cleanup();
    followerTmp.cleanup();
  }
});
