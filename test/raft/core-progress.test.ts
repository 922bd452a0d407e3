// core-progress: unit tests of src/raft/progress.ts: the Inflights window (count and bytes), the
// Progress state machine (probe / replicate / snapshot, maybeUpdate, maybeDecrTo, pausing), and
// the quorum math, checked with fast-check against brute-force definitions: jointIndex is the
// largest index acknowledged by a majority of both halves; jointVote is won / lost / pending
// exactly as the set of possible outcomes of the missing votes says.
import test from 'ava';
import fc from 'fast-check';
import { Inflights, Progress, VoteResult, allMembers, allVoters, jointIndex, jointVote, majorityIndex } from '../../src/raft/progress.js';
import { type ConfState, type NodeId, emptyConfState } from '../../src/raft/types.js';

test('Inflights: bounded by count, freed in order up to an index', (t) => {
  const inflights = new Inflights(3, 0);
  inflights.add(5, 10);
  inflights.add(7, 10);
  t.false(inflights.full());
  inflights.add(9, 10);
  t.true(inflights.full());
  t.throws(() => inflights.add(11, 1), { message: /not full/ });
  inflights.freeLE(4);
  t.is(inflights.count(), 3);
  inflights.freeLE(7);
  t.is(inflights.count(), 1);
  t.false(inflights.full());
  inflights.freeLE(100);
  t.is(inflights.count(), 0);
  inflights.add(20, 1);
  t.throws(() => inflights.add(20, 1), { message: /increase/ });
  inflights.reset();
  t.is(inflights.count(), 0);
});

test('Inflights.freeFirstOne: releases the oldest message only', (t) => {
  const inflights = new Inflights(2, 150);
  inflights.freeFirstOne(); // empty: no-op
  inflights.add(3, 100);
  inflights.add(4, 100);
  t.true(inflights.full());
  inflights.freeFirstOne();
  t.is(inflights.count(), 1);
  t.false(inflights.full(), 'bytes are released too');
  inflights.freeLE(3);
  t.is(inflights.count(), 1, 'index 3 was the one released');
  inflights.freeLE(4);
  t.is(inflights.count(), 0);
});

test('Inflights: bounded by bytes when bytesMax > 0', (t) => {
  const inflights = new Inflights(100, 250);
  inflights.add(1, 100);
  inflights.add(2, 100);
  t.false(inflights.full());
  inflights.add(3, 100);
  t.true(inflights.full(), '300 >= 250');
  inflights.freeLE(1);
  t.false(inflights.full(), '200 < 250');
  t.false(new Inflights(1, 0).full());
});

test('Progress: probe sends one message at a time until acknowledged', (t) => {
  const pr = new Progress(5, 10, 0, false);
  t.is(pr.state, 'probe');
  t.false(pr.isPaused());
  pr.sentEntries(2, 6, 10);
  t.true(pr.isPaused());
  t.is(pr.next, 5, 'probe does not advance next optimistically');
  t.true(pr.maybeUpdate(6));
  t.is(pr.match, 6);
  t.is(pr.next, 7);
  t.false(pr.isPaused());
  t.false(pr.maybeUpdate(4), 'a stale ack does not move match back');
  t.is(pr.match, 6);
});

test('Progress: replicate pipelines within the inflight window', (t) => {
  const pr = new Progress(1, 2, 0, false);
  pr.match = 3;
  pr.becomeReplicate();
  t.is(pr.next, 4);
  pr.sentEntries(2, 5, 10);
  t.is(pr.next, 6);
  pr.sentEntries(0, 5, 0); // an empty append is not tracked
  t.is(pr.inflights.count(), 1);
  pr.sentEntries(1, 6, 10);
  t.true(pr.isPaused());
  pr.maybeUpdate(5);
  pr.inflights.freeLE(5);
  t.false(pr.isPaused());
});

test('Progress.maybeDecrTo: replicate falls back to match + 1; probe uses the hint; stale rejections are ignored', (t) => {
  const replicate = new Progress(1, 10, 0, false);
  replicate.match = 5;
  replicate.becomeReplicate();
  replicate.sentEntries(3, 8, 10);
  t.false(replicate.maybeDecrTo(4, 0), 'rejection of an index already matched is stale');
  t.true(replicate.maybeDecrTo(7, 2));
  t.is(replicate.next, 6);

  const probe = new Progress(10, 10, 0, false);
  probe.match = 2;
  probe.sentEntries(1, 10, 1);
  t.false(probe.maybeDecrTo(5, 3), 'not the index we probed');
  t.true(probe.maybeDecrTo(9, 4));
  t.is(probe.next, 5, 'min(rejected, hint + 1)');
  t.false(probe.isPaused());
  probe.sentEntries(1, 5, 1);
  t.true(probe.maybeDecrTo(4, 0));
  t.is(probe.next, 3, 'never below match + 1');
});

test('Progress: snapshot state pauses appends; leaving it resumes after the snapshot', (t) => {
  const pr = new Progress(1, 10, 0, false);
  pr.match = 2;
  pr.becomeSnapshot(50);
  t.is(pr.state, 'snapshot');
  t.true(pr.isPaused());
  t.is(pr.pendingSnapshot, 50);
  pr.snapshotSent = 30;
  pr.becomeProbe();
  t.is(pr.state, 'probe');
  t.is(pr.next, 51);
  t.is(pr.snapshotSent, 0);
  pr.match = 60;
  pr.becomeSnapshot(55);
  pr.becomeProbe();
  t.is(pr.next, 61, 'max(match + 1, snapshot + 1)');
  pr.becomeProbe();
  t.is(pr.next, 61);
});

// ---------------------------------------------------------------- quorum math

const ids = [1, 2, 3, 4, 5, 6, 7];

const arbConf = fc
  .record({
    voters: fc.subarray(ids, { minLength: 0, maxLength: 7 }),
    votersOutgoing: fc.subarray(ids, { minLength: 0, maxLength: 7 }),
  })
  .map(({ voters, votersOutgoing }) => ({ ...emptyConfState(), voters, votersOutgoing }) as ConfState);

/** bruteIndex: the largest index i such that a majority of `voters` acknowledged >= i (Infinity for none). */
function bruteIndex(voters: NodeId[], acked: Map<NodeId, number>): number {
  if (voters.length === 0) return Number.POSITIVE_INFINITY;
  let best = 0;
  for (const candidate of [0, ...acked.values()]) {
    const count = voters.filter((id) => (acked.get(id) ?? 0) >= candidate).length;
    if (count * 2 > voters.length && candidate > best) best = candidate;
  }
  return best;
}

test('jointIndex equals the brute-force joint majority index (property)', (t) => {
  fc.assert(
    fc.property(arbConf, fc.array(fc.nat(20), { minLength: 7, maxLength: 7 }), (cs, values) => {
      const acked = new Map(ids.map((id, i) => [id, values[i]!]));
      const expected = Math.min(bruteIndex(cs.voters, acked), bruteIndex(cs.votersOutgoing, acked));
      return jointIndex(cs, (id) => acked.get(id) ?? 0) === expected;
    }),
    { numRuns: 500, seed: 42 },
  );
  t.pass();
});

/** bruteVote: won if the granted votes already win, lost if even granting all missing ones cannot win. */
function bruteVote(cs: ConfState, votes: Map<NodeId, boolean>): VoteResult {
  const half = (voters: NodeId[], assumeMissing: boolean) => {
    if (voters.length === 0) return true;
    const yes = voters.filter((id) => votes.get(id) ?? assumeMissing).length;
    return yes * 2 > voters.length;
  };
  const wonNow = half(cs.voters, false) && half(cs.votersOutgoing, false);
  const canWin = half(cs.voters, true) && half(cs.votersOutgoing, true);
  if (wonNow) return VoteResult.Won;
  if (!canWin) return VoteResult.Lost;
  return VoteResult.Pending;
}

test('jointVote equals the brute-force election outcome (property)', (t) => {
  fc.assert(
    fc.property(arbConf, fc.array(fc.constantFrom<boolean | undefined>(true, false, undefined), { minLength: 7, maxLength: 7 }), (cs, raw) => {
      const votes = new Map<NodeId, boolean>();
      ids.forEach((id, i) => {
        if (raw[i] !== undefined) votes.set(id, raw[i]!);
      });
      return jointVote(cs, votes) === bruteVote(cs, votes);
    }),
    { numRuns: 500, seed: 7 },
  );
  t.pass();
});

test('quorum math: examples', (t) => {
  t.is(majorityIndex([], () => 0), Number.POSITIVE_INFINITY);
  t.is(majorityIndex([1, 2, 3], (id) => [0, 5, 3, 1][id]!), 3);
  t.is(majorityIndex([1, 2, 3, 4], (id) => [0, 5, 3, 1, 9][id]!), 3);
  const joint: ConfState = { ...emptyConfState(), voters: [1, 2, 3], votersOutgoing: [3, 4, 5] };
  t.is(jointIndex(joint, (id) => [0, 9, 9, 2, 1, 1][id]!), 1, 'the outgoing half holds it back');
  t.is(jointVote(joint, new Map([[1, true], [2, true]])), VoteResult.Pending);
  t.is(jointVote(joint, new Map([[1, true], [2, true], [4, true], [5, true]])), VoteResult.Won);
  t.is(jointVote(joint, new Map([[4, false], [5, false]])), VoteResult.Lost);
  t.deepEqual(allVoters(joint), [1, 2, 3, 4, 5]);
  t.deepEqual(allMembers({ ...joint, learners: [7], learnersNext: [6] }), [1, 2, 3, 4, 5, 6, 7]);
});
