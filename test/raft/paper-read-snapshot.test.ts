// paper-read-snapshot: linearizable reads (thesis §6.4 ReadIndex, §6.4.1 leases) and snapshots
// (paper §7, thesis §5: compaction, chunked InstallSnapshot that resumes after a restart and
// resends lost chunks). Harness clusters issue reads and compact logs; the tests watch the read
// states, the heartbeat rounds and the snapshot chunks that travel, and the final state machines.
import test from 'ava';
import { MemoryStorage } from '../../src/raft/storage.js';
import { type Message, type NodeId, message } from '../../src/raft/types.js';
import { Cluster, type NodeOptions, bytes, text, cluster, outbox, run, tickRun } from './harness.js';

const status = (c: Cluster, id: NodeId) => c.node(id).raw.status();
const reads = (c: Cluster, id: NodeId) => c.node(id).readStates.map((r) => `${text(r.requestContext)}@${r.index}`);

// ---------------------------------------------------------------- §6.4 ReadIndex

test('§6.4 ReadIndex: the read state is returned only after a heartbeat round reaches a quorum', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.propose(1, 'a');
  const commit = status(c, 1).commit;
  c.node(1).raw.readIndex(bytes('r1'));
  const sent = outbox(c, 1);
  t.deepEqual(reads(c, 1), [], 'not before the round');
  const beats = sent.filter((m) => m.type === 'Heartbeat');
  t.deepEqual(beats.map((m) => m.to).sort(), [2, 3]);
  for (const m of beats) t.is(text(m.context), 'r1');
  // One acknowledgement (plus the leader itself) is a quorum of 3.
  c.node(2).raw.step(beats.find((m) => m.to === 2)!);
  const ack = outbox(c, 2).find((m) => m.type === 'HeartbeatResp')!;
  t.is(text(ack.context), 'r1');
  c.node(1).raw.step(ack);
  while (c.handleReady(1)) {}
  t.deepEqual(reads(c, 1), [`r1@${commit}`]);
});

test('§6.4 ReadIndex: a leader cut off from the quorum never answers the read', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(1);
  c.node(1).raw.readIndex(bytes('r1'));
  c.stabilize();
  c.tick(1, 3);
  c.stabilize();
  t.deepEqual(reads(c, 1), []);
});

test('§6.4 ReadIndex: earlier pending reads are released by a later quorum-confirmed round', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(1);
  c.node(1).raw.readIndex(bytes('r1'));
  c.stabilize(); // r1's round is lost
  c.heal();
  c.node(1).raw.readIndex(bytes('r2'));
  c.stabilize();
  const commit = status(c, 1).commit;
  t.deepEqual(reads(c, 1), [`r1@${commit}`, `r2@${commit}`]);
});

// Fixed core bug (kept as a regression test): a ReadIndex whose heartbeat round is lost is never retried. Beat sends heartbeats with
// an empty context (etcd attaches the newest pending read's context, readOnly.lastPendingRequestCtx),
// and a client retry with the same context is treated as "already pending" without a new round,
// so the read stays pending until some other read with a new context arrives. Reproduction:
// 3 nodes, leader 1, isolate(1), readIndex('r1'), stabilize, heal, tick + stabilize: no read state.
test('§6.4 ReadIndex: a read whose heartbeat round was lost completes after later heartbeats', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(1);
  c.node(1).raw.readIndex(bytes('r1'));
  c.stabilize();
  c.heal();
  t.deepEqual(reads(c, 1), [], 'not answered while its round is lost');
  c.tickAll(3); // the next heartbeat carries the pending read's context
  t.deepEqual(reads(c, 1), [`r1@${status(c, 1).commit}`]);
});

test('§6.4 a new leader defers reads until it has committed an entry of its term', (t) => {
  const c = cluster(3);
  const votes = (m: Message) => m.type === 'PreVote' || m.type === 'PreVoteResp' || m.type === 'Vote' || m.type === 'VoteResp';
  c.node(1).raw.campaign();
  run(c, votes); // elected, but its no-op entry has reached nobody
  t.is(status(c, 1).role, 'leader');
  const noop = status(c, 1).lastIndex;
  t.true(status(c, 1).commit < noop);
  c.node(1).raw.readIndex(bytes('r1'));
  const sent = outbox(c, 1);
  t.false(sent.some((m) => m.type === 'Heartbeat' && text(m.context) === 'r1'), 'no read round before the commit');
  t.deepEqual(reads(c, 1), []);
  c.queue.push(...sent);
  c.tickAll(2);
  t.deepEqual(reads(c, 1), [`r1@${noop}`], 'answered at the index of the first entry of its term');
});

test('§6.4 a follower forwards ReadIndex to the leader and gets the read state back', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.propose(1, 'a');
  c.node(2).raw.readIndex(bytes('f1'));
  const forwarded = outbox(c, 2).filter((m) => m.type === 'ReadIndex');
  t.is(forwarded.length, 1);
  t.is(forwarded[0]!.to, 1);
  c.queue.push(...forwarded);
  c.stabilize();
  t.deepEqual(reads(c, 2), [`f1@${status(c, 1).commit}`]);
  t.deepEqual(reads(c, 1), []);
  // A node that knows no leader refuses at once.
  const d = cluster(3);
  t.throws(() => d.node(2).raw.readIndex(bytes('x')), { code: 'NOT_LEADER' });
});

test('§6.4 a single-voter leader answers reads at once', (t) => {
  const c = cluster(1);
  c.campaign(1);
  c.propose(1, 'a');
  c.node(1).raw.readIndex(bytes('r'));
  c.stabilize();
  t.deepEqual(reads(c, 1), [`r@${status(c, 1).commit}`]);
});

test('§6.4 readIndexQueueMax also bounds the reads a new leader defers', (t) => {
  const c = cluster(3, { readIndexQueueMax: 1 });
  const votes = (m: Message) => m.type === 'PreVote' || m.type === 'PreVoteResp' || m.type === 'Vote' || m.type === 'VoteResp';
  c.node(1).raw.campaign();
  run(c, votes);
  c.node(1).raw.readIndex(bytes('a'));
  t.throws(() => c.node(1).raw.readIndex(bytes('b')), { code: 'BUSY' });
  // A forwarded read that cannot be queued is dropped (the follower's client times out).
  t.notThrows(() => c.node(1).raw.step(message({ type: 'ReadIndex', from: 2, to: 1, context: bytes('c') })));
});

test('§6.4 readIndexQueueMax bounds the pending reads of a leader (BUSY)', (t) => {
  const c = cluster(3, { readIndexQueueMax: 2 });
  c.campaign(1);
  c.isolate(1);
  c.node(1).raw.readIndex(bytes('a'));
  c.node(1).raw.readIndex(bytes('b'));
  t.throws(() => c.node(1).raw.readIndex(bytes('c')), { code: 'BUSY' });
});

// ---------------------------------------------------------------- §6.4.1 leases

test('§6.4.1 lease reads are served without a round trip while the lease holds', (t) => {
  const c = cluster(3, { readOnlyOption: 'lease' });
  c.campaign(1);
  c.propose(1, 'a');
  c.tickAll(1); // a heartbeat round acknowledged by everyone: the lease starts
  t.true(status(c, 1).leaseValid);
  c.node(1).raw.readIndex(bytes('l1'));
  const sent = outbox(c, 1);
  t.deepEqual(reads(c, 1), [`l1@${status(c, 1).commit}`]);
  t.false(sent.some((m) => m.type === 'Heartbeat'), 'no heartbeat round for a lease read');
});

test('§6.4.1 lease reads fall back to a ReadIndex round once a quorum stopped answering', (t) => {
  const c = cluster(3, { readOnlyOption: 'lease' });
  c.campaign(1);
  c.tickAll(1);
  c.isolate(1);
  let ticks = 0;
  while (status(c, 1).leaseValid && ticks < 50) {
    c.tick(1);
    outbox(c, 1);
    ticks++;
  }
  t.is(status(c, 1).role, 'leader', 'the lease expires before CheckQuorum deposes the leader');
  t.true(ticks < 10, `lease lasted ${ticks} ticks (election timeout 10, drift 1)`);
  c.node(1).raw.readIndex(bytes('l2'));
  const sent = outbox(c, 1);
  t.deepEqual(reads(c, 1), [], 'not served from an expired lease');
  t.true(sent.some((m) => m.type === 'Heartbeat' && text(m.context) === 'l2'), 'a ReadIndex round instead');
});

test('§6.4.1 the lease-without-quorum testing knob really serves stale leases (checker sanity)', (t) => {
  const c = cluster(3, { readOnlyOption: 'lease', testing: { leaseWithoutQuorum: true } });
  c.campaign(1);
  c.isolate(1);
  c.tick(1, 12);
  outbox(c, 1);
  c.node(1).raw.readIndex(bytes('bad'));
  while (c.handleReady(1)) {}
  t.is(reads(c, 1).length, 1);
});

test('§6.4.1 no lease read after the leader sent TimeoutNow', (t) => {
  const c = cluster(3, { readOnlyOption: 'lease' });
  c.campaign(1);
  c.tickAll(1);
  t.true(status(c, 1).leaseValid);
  c.node(1).raw.transferLeadership(2);
  const sent = outbox(c, 1);
  t.true(sent.some((m) => m.type === 'TimeoutNow' && m.to === 2));
  t.false(status(c, 1).leaseValid);
  c.node(1).raw.readIndex(bytes('t1'));
  while (c.handleReady(1)) {}
  t.deepEqual(reads(c, 1), [], 'the target may already lead: our lease is void');
});

test('§6.4.1 the lease needs CheckQuorum (config validation)', (t) => {
  t.throws(() => cluster(3, { readOnlyOption: 'lease', checkQuorum: false }), { code: 'INVALID_ARGUMENT' });
});

// ---------------------------------------------------------------- §7 / thesis §5 snapshots

/**
 * snapshotCluster: leader 1 commits entries while 3 is away, then compacts its log behind a
 * snapshot — or, with `withoutSnapshot`, behind its state only (snapshots on demand).
 */
function snapshotCluster(options: NodeOptions, withoutSnapshot = false): Cluster {
  const c = cluster(3, options);
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 8; i++) c.propose(1, `value-${i}`);
  if (withoutSnapshot) c.compactLog(1);
  else c.compact(1);
  c.propose(1, 'after');
  return c;
}

const expected = [...Array.from({ length: 8 }, (_, i) => `value-${i}`), 'after'];

test('§7 after compaction a lagging follower is caught up with a chunked snapshot', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 16 });
  const size = c.node(1).storage.snapshot().sizeBytes;
  t.true(size > 64);
  c.heal();
  const chunks: Array<{ offset: number; length: number; last: boolean }> = [];
  tickRun(c, 10, (m) => {
    if (m.type === 'Snap' && m.snapshot) chunks.push({ offset: m.snapshot.offset, length: m.snapshot.data.length, last: m.snapshot.last });
    return true;
  });
  t.deepEqual(c.appliedData(3), expected);
  t.true(c.log.includes('3: installed snapshot ' + c.node(1).storage.snapshot().index));
  t.true(chunks.length >= Math.ceil(size / 16), `${chunks.length} chunks for ${size} bytes`);
  for (const chunk of chunks) t.true(chunk.length <= 16);
  t.is(chunks.filter((ch) => ch.last).length, 1);
  t.is(status(c, 1).progress.get(3)?.state, 'replicate');
  t.deepEqual(c.node(3).confState.voters, [1, 2, 3]);
});

test('§7 snapshot chunks stay within the in-flight window', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 8, snapshotChunksInflightMax: 2 });
  c.heal();
  let maxQueued = 0;
  let maxUnacked = 0;
  for (let i = 0; i < 20 && c.appliedData(3).length === 0; i++) {
    for (const node of c.nodes.values()) node.raw.tick();
    for (let round = 0; round < 500; round++) {
      let moved = false;
      for (const id of [1, 2, 3]) while (c.handleReady(id)) moved = true;
      maxQueued = Math.max(maxQueued, c.queue.filter((m) => m.type === 'Snap').length);
      const pr = status(c, 1).progress.get(3)!;
      if (pr.state === 'snapshot') maxUnacked = Math.max(maxUnacked, pr.snapshotSent - pr.snapshotAcked);
      if (c.deliver() > 0) moved = true;
      if (!moved) break;
    }
  }
  t.deepEqual(c.appliedData(3), expected);
  t.is(maxQueued, 2, 'two chunks of 8 bytes in flight at most');
  t.true(maxUnacked > 0 && maxUnacked <= 16, `max unacknowledged ${maxUnacked} bytes`);
});

test('§7 a follower restarted mid-transfer resumes from its staged bytes', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 8, snapshotChunksInflightMax: 1 });
  c.heal();
  let snaps = 0;
  // Let a few chunks through, then crash node 3 (chunks it staged are durable).
  for (let i = 0; i < 20 && snaps < 4; i++) {
    for (const node of c.nodes.values()) node.raw.tick();
    run(c, (m) => {
      if (m.type === 'Snap' && m.to === 3) {
        snaps++;
        return snaps <= 4;
      }
      return true;
    });
  }
  const held = c.node(3).storage.pendingSnapshot();
  t.truthy(held, 'a snapshot is staged');
  t.true(held!.bytesReceived >= 8, `${held!.bytesReceived} bytes held`);
  const restarted = c.restart(3);
  const staged: number[] = [];
  const stage = restarted.storage.stageSnapshotChunk.bind(restarted.storage);
  restarted.storage.stageSnapshotChunk = (metadata, offset, data) => {
    staged.push(offset);
    stage(metadata, offset, data);
  };
  tickRun(c, 15);
  t.deepEqual(c.appliedData(3), expected);
  t.true(staged.length > 0);
  t.true(Math.min(...staged) >= held!.bytesReceived, `after the restart staging started at ${Math.min(...staged)}, held ${held!.bytesReceived}`);
});

test('§7 lost snapshot chunks are resent after a heartbeat', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 8, snapshotChunksInflightMax: 2 });
  c.heal();
  let dropped = 0;
  tickRun(c, 20, (m) => {
    if (m.type === 'Snap' && m.snapshot && m.snapshot.offset === 16 && dropped < 2) {
      dropped++;
      return false;
    }
    return true;
  });
  t.is(dropped, 2);
  t.deepEqual(c.appliedData(3), expected);
});

test('§7 a snapshot the follower already covers is acknowledged without installing', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.propose(1, 'a');
  c.compact(1);
  const meta = c.node(1).storage.snapshot();
  const term = status(c, 1).term;
  c.node(2).raw.step(
    message({ type: 'Snap', from: 1, to: 2, term, snapshot: { metadata: meta, offset: 0, data: c.node(1).storage.snapshotBytes(), last: true } }),
  );
  const replies = outbox(c, 2);
  t.deepEqual(replies.map((m) => [m.type, m.reject, m.index]), [['AppResp', false, status(c, 2).commit]]);
  t.false(c.log.some((line) => line.startsWith('2: installed')));
});

test('§7 a fresh node joins through a snapshot when the log it needs is compacted', (t) => {
  const c = cluster(3, { snapshotChunkBytes: 32 });
  c.campaign(1);
  for (let i = 0; i < 4; i++) c.propose(1, `v${i}`);
  c.proposeConfChange(1, { changes: [{ type: 'add-learner', nodeId: 4 }], context: new Uint8Array(0) });
  c.compact(1);
  c.addEmptyNode(4);
  c.tickAll(5);
  t.deepEqual(c.appliedData(4), ['v0', 'v1', 'v2', 'v3']);
  t.deepEqual(c.node(4).confState.learners, [4]);
  t.deepEqual(c.node(4).storage.initialState().confState.voters, [1, 2, 3]);
});

test('§7 the leader restarts a transfer when its snapshot is replaced by a newer one', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 8, snapshotChunksInflightMax: 1 });
  c.heal();
  let snaps = 0;
  for (let i = 0; i < 10 && snaps < 2; i++) {
    for (const node of c.nodes.values()) node.raw.tick();
    run(c, (m) => !(m.type === 'Snap' && ++snaps > 2));
  }
  t.is(status(c, 1).progress.get(3)?.state, 'snapshot');
  // A newer snapshot replaces the one being sent.
  c.isolate(3);
  c.propose(1, 'newer');
  c.compact(1);
  c.heal();
  tickRun(c, 20);
  t.deepEqual(c.appliedData(3), [...expected, 'newer']);
});

test('§7 a restarted node keeps its compacted state (snapshot + log suffix)', (t) => {
  const c = snapshotCluster({});
  c.heal();
  c.tickAll(5);
  const first = c.node(3).storage.firstIndex();
  t.true(first > 2, 'node 3 holds a snapshot, not the full log');
  c.restart(3);
  c.propose(1, 'post');
  c.tickAll(3);
  t.deepEqual(c.appliedData(3), [...expected, 'post']);
  t.true(MemoryStorage.prototype.snapshot.call(c.node(3).storage).index > 0);
});

test('§7 a snapshot covering entries the follower already has only advances its commit', (t) => {
  const storage = MemoryStorage.bootstrap([1, 2, 3]);
  storage.append([2, 3].map((index) => ({ term: 1, index, type: 0 as const, data: new Uint8Array(1) })));
  storage.setHardState({ term: 1, vote: 0, commit: 1 });
  const c = new Cluster();
  c.startNode(2, storage, 1);
  const metadata = { index: 3, term: 1, confState: storage.confState, sizeBytes: 2 };
  c.node(2).raw.step(message({ type: 'Snap', from: 1, to: 2, term: 1, snapshot: { metadata, offset: 0, data: new Uint8Array(2), last: true } }));
  const replies = outbox(c, 2);
  t.deepEqual(replies.map((m) => [m.type, m.index]), [['AppResp', 3]]);
  t.is(status(c, 2).commit, 3);
  t.false(c.log.some((line) => line.startsWith('2: installed')));
  t.is(c.node(2).storage.firstIndex(), 1, 'the log is kept');
});

test('§7 chunks arriving while a snapshot install is pending are answered, not staged', (t) => {
  const c = new Cluster();
  c.addEmptyNode(2);
  const confState = { voters: [1, 2, 3], votersOutgoing: [], learners: [], learnersNext: [], autoLeave: false };
  const metadata = { index: 10, term: 2, confState, sizeBytes: 2 };
  const snap = (offset: number, data: number[], last: boolean, meta = metadata) =>
    message({ type: 'Snap', from: 1, to: 2, term: 2, snapshot: { metadata: meta, offset, data: new Uint8Array(data), last } });
  // The harness's state machine is a JSON array: the snapshot data is "[]".
  c.node(2).raw.step(snap(0, [0x5b], false));
  c.node(2).raw.step(snap(1, [0x5d], true));
  // The install sits in the next Ready; a chunk of a newer snapshot must not disturb it.
  c.node(2).raw.step(snap(0, [0x5b], false, { ...metadata, index: 12 }));
  const replies = outbox(c, 2);
  t.deepEqual(replies.map((m) => [m.type, m.index, m.rejectHint]), [
    ['SnapResp', 10, 1],
    ['AppResp', 10, 0],
    ['AppResp', 10, 0],
  ]);
  t.true(c.log.includes('2: installed snapshot 10'));
  t.is(c.node(2).storage.snapshot().index, 10);
  t.is(c.node(2).storage.pendingSnapshot(), undefined);
});

test('§7 a chunk that claims another size for the same snapshot restarts staging instead of wedging it', (t) => {
  const c = new Cluster();
  c.addEmptyNode(2);
  const confState = { voters: [1, 2, 3], votersOutgoing: [], learners: [], learnersNext: [], autoLeave: false };
  const big = { index: 10, term: 2, confState, sizeBytes: 4 };
  const snap = (offset: number, data: number[], last: boolean, meta: typeof big) =>
    message({ type: 'Snap', from: 1, to: 2, term: 2, snapshot: { metadata: meta, offset, data: new Uint8Array(data), last } });
  // Three bytes staged of a 4-byte snapshot (10, 2) ...
  c.node(2).raw.step(snap(0, [0x20, 0x20, 0x20], false, big));
  // ... then the leader's snapshot of the same (index, term) is 2 bytes ("[]"). Keyed by index and
  // term only, the staged 3 bytes stayed and 3 never equals 2: the transfer could not complete.
  const small = { ...big, sizeBytes: 2 };
  c.node(2).raw.step(snap(0, [0x5b], false, small));
  c.node(2).raw.step(snap(1, [0x5d], true, small));
  const replies = outbox(c, 2);
  t.deepEqual(replies.map((m) => [m.type, m.index, m.rejectHint]), [
    ['SnapResp', 10, 3],
    ['SnapResp', 10, 1],
    ['AppResp', 10, 0],
  ]);
  t.true(c.log.includes('2: installed snapshot 10'));
  t.is(c.node(2).storage.snapshot().sizeBytes, 2);
});

test('§7 an unreachable report during a snapshot transfer resends from the acknowledged offset; a reject falls back to probing', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 8, snapshotChunksInflightMax: 2 });
  c.heal();
  let snaps = 0;
  for (let i = 0; i < 10 && snaps < 3; i++) {
    for (const node of c.nodes.values()) node.raw.tick();
    run(c, (m) => !(m.type === 'Snap' && ++snaps > 3));
  }
  const pr = status(c, 1).progress.get(3)!;
  t.is(pr.state, 'snapshot');
  c.node(1).raw.reportUnreachable(3);
  const after = status(c, 1).progress.get(3)!;
  t.is(after.snapshotSent, after.snapshotAcked);
  // The follower refuses the snapshot: the leader goes back to probing.
  const term = status(c, 1).term;
  c.node(1).raw.step(message({ type: 'SnapResp', from: 3, to: 1, term, index: c.node(1).storage.snapshot().index, reject: true }));
  t.is(status(c, 1).progress.get(3)!.state, 'probe');
  tickRun(c, 20);
  t.deepEqual(c.appliedData(3), expected);
});

// ---------------------------------------------------------------- snapshots on demand

test('§7 a log compacted without a snapshot: the leader sends nothing to the lagging follower and asks for a snapshot until one exists', (t) => {
  const c = snapshotCluster({ snapshotChunkBytes: 16 }, true);
  t.is(c.node(1).storage.snapshot().index, 0, 'no snapshot');
  t.true(c.node(1).storage.firstIndex() > 2, 'the entries node 3 needs are gone');
  c.heal();
  let snaps = 0;
  tickRun(c, 10, (m) => {
    if (m.type === 'Snap') snaps++;
    return true;
  });
  t.is(snaps, 0, 'no snapshot message without a snapshot');
  t.true(c.node(1).snapshotsWanted >= 2, `asked again at later heartbeat responses (${c.node(1).snapshotsWanted})`);
  t.not(status(c, 1).progress.get(3)?.state, 'snapshot');
  t.deepEqual(c.appliedData(3), [], 'node 3 is still behind');
  t.deepEqual(c.appliedData(2), expected, 'the others are not held up');
  // The application makes the snapshot it was asked for: the next heartbeat response sends it.
  c.compact(1);
  tickRun(c, 10);
  t.deepEqual(c.appliedData(3), expected);
  t.true(c.log.includes('3: installed snapshot ' + c.node(1).storage.snapshot().index));
  t.is(status(c, 1).progress.get(3)?.state, 'replicate');
});

test('§7 a snapshot older than the log start is not sent: a follower that installed it would still lack entries', (t) => {
  const c = cluster(3, { snapshotChunkBytes: 16 });
  c.campaign(1);
  c.isolate(3);
  c.propose(1, 'value-0');
  c.compact(1); // a snapshot at the applied index ...
  const old = c.node(1).storage.snapshot().index;
  for (let i = 1; i < 8; i++) c.propose(1, `value-${i}`);
  c.compactLog(1); // ... then the log compacted past it without a new one
  t.true(c.node(1).storage.firstIndex() - 1 > old);
  c.heal();
  let snaps = 0;
  tickRun(c, 6, (m) => {
    if (m.type === 'Snap') snaps++;
    return true;
  });
  t.is(snaps, 0);
  t.true(c.node(1).snapshotsWanted > 0);
  c.snapshotsOnDemand = true; // now the leader serves the request itself, as the Replica does
  tickRun(c, 10);
  t.deepEqual(c.appliedData(3), expected.slice(0, 8));
  t.true(c.node(1).storage.snapshot().index > old);
});

test('§7 a new member joins through a snapshot made on demand', (t) => {
  const c = cluster(3, { snapshotChunkBytes: 32 });
  c.snapshotsOnDemand = true;
  c.campaign(1);
  for (let i = 0; i < 5; i++) c.propose(1, `value-${i}`);
  for (const id of [1, 2, 3]) c.compactLog(id);
  c.addEmptyNode(4);
  c.proposeConfChange(1, { changes: [{ type: 'add-learner', nodeId: 4 }], context: new Uint8Array(0) });
  tickRun(c, 10);
  t.deepEqual(c.appliedData(4), Array.from({ length: 5 }, (_, i) => `value-${i}`));
  t.true(c.node(1).snapshotsWanted > 0);
});
