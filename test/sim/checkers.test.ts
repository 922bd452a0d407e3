// Proves: each checker fires on the history it forbids and stays quiet on a correct one, fed by
// hand-made events (no simulator), so a silent checker cannot hide behind a clean swarm.
import test from 'ava';
import { CheckerName, Checkers, type LogView } from './checkers.js';
import type { Entry } from '../../src/raft/types.js';

const bytes = (text: string) => new TextEncoder().encode(text);
const entry = (index: number, term: number, data = `e${index}`): Entry => ({ index, term, type: 0, data: bytes(data) });
const logOf = (terms: number[]): LogView => ({
  firstIndex: () => 1,
  lastIndex: () => terms.length,
  termOr: (index, fallback) => (index >= 1 && index <= terms.length ? terms[index - 1]! : fallback),
});
const checkersAt = () => new Checkers(99, () => 5);

test('election safety: two leaders in one term', (t) => {
  const c = checkersAt();
  c.onLeader(1, 3, logOf([1, 3]));
  c.onLeader(1, 3, logOf([1, 3]));
  t.is(c.violations.length, 0);
  c.onLeader(2, 3, logOf([1, 3]));
  t.is(c.violations[0]?.checker, CheckerName.ElectionSafety);
  t.is(c.violations[0]?.seed, 99);
  t.is(c.violations[0]?.tick, 5);
});

test('leader completeness: a new leader missing a committed entry', (t) => {
  const c = checkersAt();
  c.onApply(1, entry(1, 1), 10);
  c.onApply(1, entry(2, 2), 11);
  c.onLeader(2, 3, logOf([1, 2, 3]));
  t.is(c.violations.length, 0);
  c.onLeader(3, 4, logOf([1, 3]));
  t.is(c.violations[0]?.checker, CheckerName.LeaderCompleteness);
});

test('leader completeness: a late leader of an older term need not hold entries committed after it won its votes', (t) => {
  const c = checkersAt();
  c.onLeader(1, 9, logOf([1, 9]));
  c.onLeader(2, 10, logOf([1, 9, 10]));
  c.onApply(2, entry(3, 10), 12); // committed under the leader of term 10
  // A candidate of term 9, paused with its votes in hand, wins term 9 late: legal (§5.4 is about higher terms).
  c.onLeader(3, 8, logOf([1, 8]));
  t.is(c.violations.length, 0);
  // A leader of a term above the one the entry was committed in must hold it.
  c.onLeader(4, 11, logOf([1, 9]));
  t.is(c.violations[0]?.checker, CheckerName.LeaderCompleteness);
});

test('log matching: same index and term with other data or another predecessor', (t) => {
  const c = checkersAt();
  c.onPersist(1, entry(5, 2, 'a'), 1);
  c.onPersist(2, entry(5, 2, 'a'), 1);
  t.is(c.violations.length, 0);
  c.onPersist(3, entry(5, 2, 'b'), 1);
  t.is(c.violations[0]?.checker, CheckerName.LogMatching);
  const d = checkersAt();
  d.onPersist(1, entry(5, 2, 'a'), 1);
  d.onPersist(2, entry(5, 2, 'a'), 2);
  t.is(d.violations[0]?.checker, CheckerName.LogMatching);
});

test('committed entries never change; state machines agree at equal applied index', (t) => {
  const c = checkersAt();
  c.onApply(1, entry(4, 2, 'x'), 100);
  c.onApply(2, entry(4, 2, 'x'), 100);
  t.is(c.violations.length, 0);
  c.onApply(3, entry(4, 3, 'y'), 100);
  t.is(c.violations[0]?.checker, CheckerName.CommittedStable);
  const d = checkersAt();
  d.onApply(1, entry(4, 2, 'x'), 100);
  d.onApply(2, entry(4, 2, 'x'), 101);
  t.is(d.violations[0]?.checker, CheckerName.StateMachineSafety);
});

test('exactly once: a session request applied at two indexes', (t) => {
  const c = checkersAt();
  c.onSessionApply('c1', 1, 10, 'c1.1', 1);
  c.onSessionApply('c1', 1, 10, 'c1.1', 1); // the same entry replayed after a restart
  t.is(c.violations.length, 0);
  c.onSessionApply('c1', 1, 12, 'c1.1', 1);
  t.is(c.violations[0]?.checker, CheckerName.ExactlyOnce);
});

test('linearizability: stale reads and reads from the future are caught; fresh reads pass', (t) => {
  const c = checkersAt();
  c.onSessionApply('c1', 1, 10, 'v1', 1);
  c.onWriteAcked({ sessionId: 'c1', sequence: 1, key: 'k', value: 'v1', index: 10, invokedAt: 1, ackedAt: 2 });
  c.onSessionApply('c1', 2, 11, 'v2', 3);
  c.onWriteAcked({ sessionId: 'c1', sequence: 2, key: 'k', value: 'v2', index: 11, invokedAt: 3, ackedAt: 4 });
  c.onRead(1, 'k', 'v2', 5, 6, 11); // fresh
  c.onRead(1, 'k', 'v1', 3, 6, 10); // concurrent with the second write: either value is fine
  t.is(c.violations.length, 0);
  c.onRead(2, 'k', 'v1', 5, 6, 10); // v2 was acknowledged before this read began
  t.is(c.violations[0]?.checker, CheckerName.Linearizability);
  const d = checkersAt();
  d.onSessionApply('c1', 1, 10, 'v1', 1);
  d.onWriteAcked({ sessionId: 'c1', sequence: 1, key: 'k', value: 'v1', index: 10, invokedAt: 1, ackedAt: 2 });
  d.onRead(1, 'k', undefined, 3, 4, 10); // unset after an acknowledged write
  t.is(d.violations[0]?.checker, CheckerName.Linearizability);
  const e = checkersAt();
  e.onSessionApply('c1', 1, 10, 'v1', 9);
  e.onRead(1, 'k', 'v1', 3, 4, 10); // the write was invoked after the read completed
  t.is(e.violations[0]?.checker, CheckerName.Linearizability);
});
