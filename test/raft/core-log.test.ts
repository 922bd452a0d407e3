// core-log: unit tests of RaftLog (src/raft/log.ts) over a MemoryStorage: append and truncation of
// the unstable tail, the follower rule maybeAppend, findConflict / findConflictByTerm, slicing
// with byte limits across storage and the unstable tail, stableTo, restore, commit and apply
// bookkeeping. Each test builds a small log by hand and checks the exact indexes and terms.
import test from 'ava';
import { RaftLog } from '../../src/raft/log.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { type Entry, EntryType, emptyConfState } from '../../src/raft/types.js';

function entries(terms: number[], firstIndex: number, size = 0): Entry[] {
  return terms.map((term, i) => ({ term, index: firstIndex + i, type: EntryType.Normal, data: new Uint8Array(size) }));
}

/** logWith: a RaftLog whose storage holds `stored` terms from index 1 and whose unstable tail holds `unstable`. */
function logWith(stored: number[], unstable: number[] = [], commit = 0): RaftLog {
  const storage = new MemoryStorage();
  storage.append(entries(stored, 1));
  storage.setHardState({ term: Math.max(0, ...stored), vote: 0, commit });
  const log = new RaftLog(storage, 0);
  if (unstable.length > 0) log.append(entries(unstable, stored.length + 1));
  return log;
}

const terms = (log: RaftLog) => log.slice(log.firstIndex(), log.lastIndex() + 1, Number.MAX_SAFE_INTEGER).map((e) => e.term);

test('RaftLog: an empty log', (t) => {
  const log = new RaftLog(new MemoryStorage(), 0);
  t.is(log.firstIndex(), 1);
  t.is(log.lastIndex(), 0);
  t.is(log.lastTerm(), 0);
  t.is(log.committed, 0);
  t.deepEqual(log.entriesFrom(1, 100), []);
  t.false(log.hasNextCommittedEntries());
  t.deepEqual(log.nextCommittedEntries(100), []);
});

test('RaftLog.append: extends, or truncates the unstable tail at a conflict', (t) => {
  const log = logWith([1, 1], [2, 2]);
  t.is(log.lastIndex(), 4);
  t.is(log.unstableOffset, 3);
  log.append(entries([3], 5));
  t.deepEqual(terms(log), [1, 1, 2, 2, 3]);
  log.append(entries([4, 4], 4)); // inside the unstable tail
  t.deepEqual(terms(log), [1, 1, 2, 4, 4]);
  t.is(log.unstableOffset, 3);
  log.append(entries([5], 2)); // below the unstable tail: replaces it (the application truncates storage)
  t.is(log.unstableOffset, 2);
  t.deepEqual(log.unstableEntries.map((e) => e.term), [5]);
  t.is(log.lastIndex(), 2);
  t.is(log.append([]), 2);
});

test('RaftLog.append: never below the commit index', (t) => {
  const log = logWith([1, 1, 1], [], 2);
  t.throws(() => log.append(entries([2], 2)), { message: /overwrite committed/ });
});

test('RaftLog.maybeAppend: the AppendEntries consistency check and conflict handling', (t) => {
  const cases: Array<{ prev: [number, number]; commit: number; new: number[]; last: number | undefined; terms: number[]; committed: number }> = [
    { prev: [3, 2], commit: 3, new: [], last: 3, terms: [1, 2, 2], committed: 3 },
    { prev: [3, 3], commit: 3, new: [], last: undefined, terms: [1, 2, 2], committed: 0 }, // term mismatch
    { prev: [4, 2], commit: 3, new: [], last: undefined, terms: [1, 2, 2], committed: 0 }, // beyond the log
    { prev: [3, 2], commit: 9, new: [3], last: 4, terms: [1, 2, 2, 3], committed: 4 }, // commit capped at last new
    { prev: [2, 2], commit: 2, new: [2], last: 3, terms: [1, 2, 2], committed: 2 }, // already there: nothing changes
    { prev: [2, 2], commit: 2, new: [3, 3], last: 4, terms: [1, 2, 3, 3], committed: 2 }, // conflict at 3
    { prev: [1, 1], commit: 1, new: [2, 2], last: 3, terms: [1, 2, 2], committed: 1 }, // shorter, matching: keep the rest
  ];
  for (const c of cases) {
    const log = logWith([1, 2, 2]);
    const last = log.maybeAppend(c.prev[0], c.prev[1], c.commit, entries(c.new, c.prev[0] + 1));
    t.is(last, c.last, JSON.stringify(c));
    t.deepEqual(terms(log), c.terms, JSON.stringify(c));
    t.is(log.committed, c.committed, JSON.stringify(c));
  }
});

test('RaftLog.maybeAppend: a conflict with a committed entry is a broken invariant', (t) => {
  const log = logWith([1, 2, 2], [], 3);
  t.throws(() => log.maybeAppend(1, 1, 3, entries([3, 3], 2)), { message: /conflict at 2 with committed/ });
});

test('RaftLog.findConflict: first index whose term differs, 0 when all match', (t) => {
  const log = logWith([1, 2, 3]);
  t.is(log.findConflict([]), 0);
  t.is(log.findConflict(entries([1, 2, 3], 1)), 0);
  t.is(log.findConflict(entries([2, 3], 2)), 0);
  t.is(log.findConflict(entries([2, 3, 4, 4], 2)), 4); // new entries
  t.is(log.findConflict(entries([1, 4], 1)), 2);
  t.is(log.findConflict(entries([4], 3)), 3);
});

test('RaftLog.findConflictByTerm: the largest index <= index whose term <= term', (t) => {
  // index:  1 2 3 4 5 6 7
  // term:   1 1 2 2 5 5 5
  const log = logWith([1, 1, 2, 2, 5, 5, 5]);
  t.deepEqual(log.findConflictByTerm(7, 5), [7, 5]);
  t.deepEqual(log.findConflictByTerm(7, 4), [4, 2]);
  t.deepEqual(log.findConflictByTerm(7, 2), [4, 2]);
  t.deepEqual(log.findConflictByTerm(7, 1), [2, 1]);
  t.deepEqual(log.findConflictByTerm(7, 0), [0, 0]);
  t.deepEqual(log.findConflictByTerm(3, 9), [3, 2]);
  // Below a compaction point the term is unknown: stop there with term 0.
  const storage = new MemoryStorage();
  storage.append(entries([1, 1, 2, 2, 5, 5, 5], 1));
  storage.createSnapshot(4, emptyConfState(), new Uint8Array(1));
  storage.compact(4);
  const compacted = new RaftLog(storage, 0);
  t.deepEqual(compacted.findConflictByTerm(7, 1), [3, 0]);
  t.deepEqual(compacted.findConflictByTerm(7, 2), [4, 2], 'index 4 (the snapshot) still has a term');
});

test('RaftLog.isUpToDate: last term first, then length (§5.4.1)', (t) => {
  const log = logWith([1, 2, 2]);
  t.true(log.isUpToDate(3, 2));
  t.true(log.isUpToDate(4, 2));
  t.false(log.isUpToDate(2, 2));
  t.true(log.isUpToDate(1, 3));
  t.false(log.isUpToDate(10, 1));
});

test('RaftLog.slice: byte limits apply across storage and the unstable tail, at least one entry', (t) => {
  const storage = new MemoryStorage();
  storage.append(entries([1, 1, 1], 1, 76)); // 100 bytes each with the header estimate
  storage.setHardState({ term: 1, vote: 0, commit: 0 });
  const log = new RaftLog(storage, 0);
  log.append(entries([2, 2, 2], 4, 76));
  const indexes = (lo: number, hi: number, max: number) => log.slice(lo, hi, max).map((e) => e.index);
  t.deepEqual(indexes(1, 7, Number.MAX_SAFE_INTEGER), [1, 2, 3, 4, 5, 6]);
  t.deepEqual(indexes(1, 7, 0), [1], 'at least one entry');
  t.deepEqual(indexes(1, 7, 250), [1, 2], 'limit reached inside storage');
  t.deepEqual(indexes(2, 7, 350), [2, 3, 4], 'continues into the unstable tail');
  t.deepEqual(indexes(4, 7, 0), [4], 'at least one entry from the tail');
  t.deepEqual(indexes(4, 7, 200), [4, 5]);
  t.deepEqual(indexes(5, 5, 100), []);
  t.throws(() => log.slice(1, 9, 100), { message: /slice within log/ });
  t.deepEqual(log.entriesFrom(7, 100), []);
});

test('RaftLog.term: answers from the unstable tail, storage, the snapshot; errors otherwise', (t) => {
  const storage = new MemoryStorage();
  storage.append(entries([1, 1, 2, 2], 1));
  storage.createSnapshot(2, emptyConfState(), new Uint8Array(1));
  storage.compact(2);
  const log = new RaftLog(storage, 0);
  log.append(entries([3], 5));
  t.is(log.term(5), 3);
  t.is(log.term(4), 2);
  t.is(log.term(2), 1, 'the snapshot index keeps its term');
  t.throws(() => log.term(1), { code: 'COMPACTED' });
  t.throws(() => log.term(6), { code: 'LOG_UNAVAILABLE' });
  t.is(log.termOr(1, -7), -7);
  t.is(log.termOr(6, -7), -7);
  t.false(log.matchTerm(1, 1));
  t.throws(() => log.entriesFrom(1, 100), { code: 'COMPACTED' });
  t.is(log.committed, 2, 'a snapshot is committed');
  t.is(log.applied, 2);
});

test('RaftLog.stableTo: only an entry still present with that term becomes stable', (t) => {
  const log = logWith([1], [2, 2, 2]);
  log.stableTo(3, 9); // wrong term: replaced since, ignored
  t.is(log.unstableOffset, 2);
  log.stableTo(1, 1); // already stable
  t.is(log.unstableOffset, 2);
  log.stableTo(3, 2);
  t.is(log.unstableOffset, 4);
  t.deepEqual(log.unstableEntries.map((e) => e.index), [4]);
});

test('RaftLog.restore: a snapshot replaces the log; entries are then appended after it', (t) => {
  const log = logWith([1, 1], [2]);
  log.restore({ index: 10, term: 4, confState: emptyConfState(), sizeBytes: 5 });
  t.is(log.committed, 10);
  t.is(log.lastIndex(), 10);
  t.is(log.firstIndex(), 11);
  t.is(log.lastTerm(), 4);
  t.is(log.stableLastIndex(), 10);
  t.throws(() => log.term(9), { code: 'COMPACTED' });
  t.false(log.hasNextCommittedEntries(), 'nothing to apply while the snapshot is being installed');
  log.append(entries([4], 11));
  t.is(log.lastIndex(), 11);
  log.stableSnapshotTo(9); // another index: ignored
  t.truthy(log.unstableSnapshot);
  log.stableSnapshotTo(10);
  t.is(log.unstableSnapshot, undefined);
});

test('RaftLog: commit and apply bookkeeping', (t) => {
  const log = logWith([1, 1, 1, 1]);
  log.commitTo(3);
  log.commitTo(2); // never goes back
  t.is(log.committed, 3);
  t.throws(() => log.commitTo(9), { message: /beyond last index/ });
  t.deepEqual(log.nextCommittedEntries(Number.MAX_SAFE_INTEGER).map((e) => e.index), [1, 2, 3]);
  log.applying = 3;
  t.false(log.hasNextCommittedEntries());
  log.appliedTo(3);
  log.appliedTo(1); // never goes back
  t.is(log.applied, 3);
  t.throws(() => log.appliedTo(4), { message: /beyond committed/ });
});

test('RaftLog: constructing over storage validates applied against commit', (t) => {
  const storage = new MemoryStorage();
  storage.append(entries([1, 1], 1));
  storage.setHardState({ term: 1, vote: 0, commit: 1 });
  t.throws(() => new RaftLog(storage, 2), { message: /applied 2 beyond committed 1/ });
  storage.setHardState({ term: 1, vote: 0, commit: 5 });
  t.throws(() => new RaftLog(storage, 0), { message: /beyond durable last index/ });
});
