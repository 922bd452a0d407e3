// checks: the non-linearizability checks on hand-made inputs with known answers — lost acknowledged
// writes found by appended final reads, two leaders in one term, failover stall windows measured
// from fault starts, and replica hash convergence at equal applied index.
import test from 'ava';
import { appendFinalReads, checkConvergence, checkLeaders, checkNoAckedWriteLost, failoverStalls } from '../../src/chaos/checks.js';
import { pairOperations } from '../../src/chaos/history.js';
import { HistoryBuilder } from './builder.js';

test('final reads are appended after every event', (t) => {
  const events = new HistoryBuilder().write(1, 'k', 'a', 0, 50).build();
  const out = appendFinalReads(events, [{ key: 'k', value: 'a' }, { key: 'j', value: null }]);
  const ops = pairOperations(out).filter((op) => op.process === 'final');
  t.deepEqual(ops.map((op) => [op.key, op.output, op.callTime, op.returnTime]), [['k', 'a', 51, 52], ['j', null, 53, 54]]);
});

test('no acknowledged write lost: ok, lost, unread key', (t) => {
  const events = new HistoryBuilder()
    .write(1, 'k1', 'a', 0, 1)
    .write(1, 'k1', 'b', 2, 3)
    .write(2, 'k2', 'c', 0, 10, 'info')
    .write(2, 'k3', 'd', 0, 1)
    .build();
  const good = checkNoAckedWriteLost(appendFinalReads(events, [
    { key: 'k1', value: 'b' },
    { key: 'k2', value: null }, // the info write may not have happened
    { key: 'k3', value: 'd' },
  ]));
  t.true(good.ok);
  t.is(good.result.verdict, 'ok');
  const alsoGood = checkNoAckedWriteLost(appendFinalReads(events, [{ key: 'k1', value: 'b' }, { key: 'k2', value: 'c' }, { key: 'k3', value: 'd' }]));
  t.true(alsoGood.ok);
  const lost = checkNoAckedWriteLost(appendFinalReads(events, [{ key: 'k1', value: 'a' }, { key: 'k2', value: null }, { key: 'k3', value: null }]));
  t.false(lost.ok);
  t.deepEqual(lost.result.keys.filter((k) => k.verdict === 'violation').map((k) => k.key), ['k1', 'k3']);
  t.is(lost.result.keys[0]!.explanation!.kind, 'stale-read');
  const unread = checkNoAckedWriteLost(appendFinalReads(events, [{ key: 'k1', value: 'b' }]));
  t.false(unread.ok);
  t.deepEqual(unread.unreadKeys, ['k2', 'k3']);
});

test('at most one leader per term', (t) => {
  const fine = new HistoryBuilder().leader(1, 1, 0).leader(1, 1, 5).leader(2, 2, 10).leader(3, 4, 20).build();
  t.deepEqual(checkLeaders(fine), { ok: true, termCount: 3, conflicts: [] });
  const split = new HistoryBuilder().leader(1, 1, 0).leader(2, 2, 10).leader(3, 2, 11).build();
  const result = checkLeaders(split);
  t.false(result.ok);
  t.is(result.conflicts.length, 1);
  t.is(result.conflicts[0]!.term, 2);
  t.deepEqual(result.conflicts[0]!.nodes, [2, 3]);
});

test('failover stalls per fault start', (t) => {
  const h = new HistoryBuilder();
  // ok completions every 10 ms from 0 to 100, none from 100 to 400, then every 10 ms to 600.
  let n = 0;
  for (let time = 0; time <= 100; time += 10) h.write(1, 'k', `v${n++}`, time - 1 < 0 ? 0 : time - 1, time);
  for (let time = 400; time <= 600; time += 10) h.write(1, 'k', `v${n++}`, time - 1, time);
  h.write(2, 'k', 'lost', 150, 390, 'info').write(2, 'k', 'nope', 160, 170, 'fail');
  h.fault('kill-leader', 105, 200, 'node 1').fault('partition', 500, null);
  const stalls = failoverStalls(h.build());
  t.is(stalls.length, 2);
  const [kill, part] = stalls;
  t.is(kill!.fault, 'kill-leader');
  t.is(kill!.detail, 'node 1');
  t.is(kill!.stopTime, 200);
  t.is(kill!.windowEndTime, 500);
  t.is(kill!.firstOkAfterMs, 295); // 105 -> 400
  t.is(kill!.longestGapMs, 295);
  t.is(kill!.longestGapStartTime, 105);
  t.is(kill!.failCount, 1);
  t.is(kill!.infoCount, 1);
  t.is(kill!.okCount, 11); // 400..500
  t.is(part!.stopTime, null);
  t.is(part!.windowEndTime, 600);
  t.is(part!.firstOkAfterMs, 0);
  t.is(part!.longestGapMs, 10);
  // A fault after which nothing ever completes ok.
  const dead = failoverStalls(new HistoryBuilder().write(1, 'k', 'a', 0, 1).fault('kill-all', 2, null).write(1, 'k', 'b', 3, 50, 'info').build());
  t.is(dead[0]!.firstOkAfterMs, null);
  t.is(dead[0]!.longestGapMs, 48);
});

test('replica convergence at equal applied index', (t) => {
  const same = checkConvergence([
    { node: 1, appliedIndex: 10, hash: 'x' },
    { node: 2, appliedIndex: 10, hash: 'x' },
    { node: 3, appliedIndex: 10, hash: 'x' },
  ]);
  t.true(same.ok);
  t.true(same.converged);
  const lagging = checkConvergence([
    { node: 1, appliedIndex: 10, hash: 'x' },
    { node: 2, appliedIndex: 9, hash: 'w' },
    { node: 3, appliedIndex: 10, hash: 'x' },
  ]);
  t.true(lagging.ok);
  t.false(lagging.converged);
  t.deepEqual(lagging.groups.map((g) => g.appliedIndex), [9, 10]);
  const diverged = checkConvergence([
    { node: 1, appliedIndex: 10, hash: 'x' },
    { node: 2, appliedIndex: 10, hash: 'y' },
  ]);
  t.false(diverged.ok);
  t.false(diverged.converged);
  t.deepEqual(diverged.groups[0]!.hashes, ['x', 'y']);
});
