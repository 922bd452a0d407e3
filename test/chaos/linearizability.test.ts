// linearizability: a corpus of small hand-written register histories, each with the exact verdict
// (and, for violations, the kind of explanation and the ops it names) that the checker must give.
// Covers concurrent overlaps, info ops that did and did not take effect, fail ops, stale reads,
// lost writes, reads of values never written, reads of the initial value after a write completed,
// the search budget (unknown, never ok) and per-key partitioning.
import test from 'ava';
import { checkHistory, type Explanation, type LinearizabilityResult } from '../../src/chaos/linearizability.js';
import { HistoryBuilder } from './builder.js';

const k = 'vol1/0';

function only(result: LinearizabilityResult) {
  return result.keys.find((r) => r.key === k)!;
}

const cases: { name: string; build: (h: HistoryBuilder) => HistoryBuilder; verdict: 'ok' | 'violation' | 'unknown'; kind?: Explanation['kind']; opsValues?: (string | null)[] }[] = [
  { name: 'empty history', build: (h) => h, verdict: 'ok' },
  { name: 'sequential write then read', build: (h) => h.write(1, k, 'a', 0, 1).read(2, k, 'a', 2, 3), verdict: 'ok' },
  { name: 'read of initial value before any write', build: (h) => h.read(1, k, null, 0, 1).write(1, k, 'a', 2, 3), verdict: 'ok' },
  { name: 'read concurrent with write sees old value', build: (h) => h.write(1, k, 'a', 0, 10).read(2, k, null, 1, 2), verdict: 'ok' },
  { name: 'read concurrent with write sees new value', build: (h) => h.write(1, k, 'a', 0, 10).read(2, k, 'a', 1, 2), verdict: 'ok' },
  {
    name: 'concurrent writes linearized in reverse of call order',
    build: (h) => h.write(1, k, 'a', 0, 10).write(2, k, 'b', 1, 9).read(3, k, 'b', 2, 3).read(3, k, 'a', 4, 5).read(4, k, 'a', 11, 12),
    verdict: 'ok',
  },
  {
    name: 'touching intervals are concurrent',
    build: (h) => h.write(1, k, 'a', 0, 5).read(2, k, null, 5, 6),
    verdict: 'ok',
  },
  {
    name: 'pipelined ops of one process',
    build: (h) => h.write(1, k, 'a', 0, 4).write(1, k, 'b', 1, 5).read(1, k, 'a', 2, 6).read(1, k, 'b', 7, 8),
    verdict: 'ok',
  },
  { name: 'info write that took effect', build: (h) => h.write(1, k, 'a', 0, 3, 'info').read(2, k, 'a', 5, 6), verdict: 'ok' },
  { name: 'info write that did not take effect', build: (h) => h.write(1, k, 'a', 0, 3, 'info').read(2, k, null, 5, 6), verdict: 'ok' },
  {
    name: 'info write that took effect late (after a later ok write)',
    build: (h) => h.write(1, k, 'a', 0, 1, 'info').write(2, k, 'b', 2, 3).read(3, k, 'b', 4, 5).read(3, k, 'a', 6, 7),
    verdict: 'ok',
  },
  { name: 'write never completed counts as info', build: (h) => h.write(1, k, 'a', 0, 0, 'open').read(2, k, 'a', 5, 6), verdict: 'ok' },
  { name: 'info and failed reads constrain nothing', build: (h) => h.write(1, k, 'a', 0, 1).read(2, k, 'zzz', 2, 3, 'info').read(2, k, 'yyy', 4, 5, 'fail'), verdict: 'ok' },
  { name: 'flushes are ignored', build: (h) => h.write(1, k, 'a', 0, 1).op(1, 'flush', '', null, 1, 2).read(1, k, 'a', 3, 4), verdict: 'ok' },
  {
    name: 'read of a value never written',
    build: (h) => h.write(1, k, 'a', 0, 1).read(2, k, 'x', 2, 3),
    verdict: 'violation',
    kind: 'never-written',
    opsValues: ['x'],
  },
  {
    name: 'read of the value of a failed write',
    build: (h) => h.write(1, k, 'a', 0, 1, 'fail').read(2, k, 'a', 2, 3),
    verdict: 'violation',
    kind: 'never-written',
    opsValues: ['a'],
  },
  {
    name: 'read from the future',
    build: (h) => h.read(1, k, 'a', 0, 1).write(2, k, 'a', 2, 3),
    verdict: 'violation',
    kind: 'future-read',
    opsValues: ['a', 'a'],
  },
  {
    name: 'stale read after a completed overwrite',
    build: (h) => h.write(1, k, 'a', 0, 1).write(2, k, 'b', 2, 3).read(3, k, 'a', 4, 5),
    verdict: 'violation',
    kind: 'stale-read',
    opsValues: ['a', 'b', 'a'],
  },
  {
    name: 'read of initial value after a write completed',
    build: (h) => h.write(1, k, 'a', 0, 1).read(2, k, null, 2, 3),
    verdict: 'violation',
    kind: 'stale-read',
    opsValues: ['a', null],
  },
  {
    name: 'lost acknowledged write seen by a final read',
    build: (h) => h.write(1, k, 'a', 0, 1).write(1, k, 'b', 2, 3).write(2, k, 'c', 2.5, 10, 'info').read('final', k, 'a', 100, 101),
    verdict: 'violation',
    kind: 'stale-read',
    opsValues: ['a', 'b', 'a'],
  },
  {
    name: 'info write seen, then unseen (non-monotonic)',
    build: (h) => h.write(1, k, 'a', 0, 3, 'info').read(2, k, 'a', 5, 6).read(2, k, null, 7, 8),
    verdict: 'violation',
    kind: 'non-monotonic-read',
  },
  {
    name: 'newer value seen, then an older one',
    build: (h) => h.write(1, k, 'a', 0, 1).write(1, k, 'b', 2, 20).read(2, k, 'b', 5, 6).read(3, k, 'a', 7, 8),
    verdict: 'violation',
    kind: 'non-monotonic-read',
  },
  {
    name: 'flip-flop between overlapping writes (only the search finds it)',
    build: (h) => h.write(1, k, 'a', 0, 10).write(2, k, 'b', 1, 9).read(3, k, 'b', 2, 3).read(3, k, 'a', 4, 5).read(4, k, 'b', 6, 7),
    verdict: 'violation',
    kind: 'search',
  },
];

for (const c of cases) for (const fastPaths of [true, false]) {
  test(`corpus${fastPaths ? '' : ' (search only)'}: ${c.name} -> ${c.verdict}`, (t) => {
    const result = checkHistory(c.build(new HistoryBuilder()).build(), { fastPaths });
    t.is(result.verdict, c.verdict);
    if (c.verdict === 'ok') {
      t.true(result.keys.every((r) => r.verdict === 'ok'));
      return;
    }
    const r = only(result);
    t.is(r.verdict, c.verdict);
    t.truthy(r.explanation, 'a violation is explained');
    t.is(r.explanation!.kind, c.kind!);
    t.true(r.explanation!.message.length > 0);
    if (c.opsValues) t.deepEqual(r.explanation!.ops.map((op) => (op.f === 'write' ? op.input : op.output)), c.opsValues);
    t.log(r.explanation!.message);
  });
}

test('search explanation names the op that cannot be placed', (t) => {
  const h = new HistoryBuilder().write(1, k, 'a', 0, 10).write(2, k, 'b', 1, 9).read(3, k, 'b', 2, 3).read(3, k, 'a', 4, 5).read(4, k, 'b', 6, 7);
  const r = only(checkHistory(h.build()));
  t.is(r.explanation!.kind, 'search');
  t.is(r.explanation!.ops.length, 1);
  t.is(r.explanation!.ops[0]!.output, 'b');
  t.is(r.explanation!.ops[0]!.callTime, 6);
  t.true((r.explanation!.linearizedCount ?? 0) >= 3);
});

test('search budget exceeded is unknown, never ok', (t) => {
  const h = new HistoryBuilder().write(1, k, 'a', 0, 10).write(2, k, 'b', 1, 9).read(3, k, 'b', 2, 3).read(3, k, 'a', 4, 5).read(4, k, 'b', 6, 7);
  const result = checkHistory(h.build(), { searchStepsMax: 3 });
  t.is(result.verdict, 'unknown');
  t.is(only(result).verdict, 'unknown');
  t.is(result.counts.ok, 0);
  // The same holds for a linearizable history whose search needs more steps than allowed.
  const good = new HistoryBuilder();
  for (let i = 0; i < 20; i++) good.write(1, k, `v${i}`, 2 * i, 2 * i + 1).read(2, k, `v${i}`, 2 * i + 1.5, 2 * i + 1.8);
  t.is(checkHistory(good.build(), { searchStepsMax: 10, fastPaths: false }).verdict, 'unknown');
  t.is(checkHistory(good.build(), { fastPaths: false }).verdict, 'ok');
  t.is(checkHistory(good.build(), { searchStepsMax: 10 }).verdict, 'ok', 'the linear greedy witness needs no search');
  // The total budget shared by all keys is honoured too.
  const many = new HistoryBuilder();
  for (let i = 0; i < 10; i++) many.write(1, `key${i}`, 'a', 3 * i, 3 * i + 1).read(1, `key${i}`, 'a', 3 * i + 1, 3 * i + 2);
  const capped = checkHistory(many.build(), { totalSearchStepsMax: 12, fastPaths: false });
  t.is(capped.verdict, 'unknown');
  t.true(capped.counts.unknown > 0 && capped.counts.ok > 0);
});

test('keys are checked independently (P-compositionality)', (t) => {
  const h = new HistoryBuilder()
    .write(1, 'a', 'x1', 0, 1)
    .write(1, 'b', 'y1', 0, 1)
    .write(2, 'a', 'x2', 2, 3)
    .read(3, 'a', 'x1', 4, 5) // stale on key a
    .read(3, 'b', 'y1', 4, 5) // fine on key b
    .read(4, 'c', null, 0, 1); // a key only ever read
  const result = checkHistory(h.build());
  t.is(result.verdict, 'violation');
  t.is(result.keyCount, 3);
  t.deepEqual(result.counts, { ok: 2, violation: 1, unknown: 0 });
  t.is(result.keys[0]!.key, 'a', 'violations are listed first');
  t.deepEqual(result.keys.slice(1).map((r) => [r.key, r.verdict]), [['b', 'ok'], ['c', 'ok']]);
});

test('null writes (write zeroes) may be read back as null', (t) => {
  const h = new HistoryBuilder().write(1, k, 'a', 0, 1).write(1, k, null, 2, 3).read(2, k, null, 4, 5).write(1, k, null, 6, 7).read(2, k, null, 8, 9);
  t.is(checkHistory(h.build()).verdict, 'ok');
  const bad = new HistoryBuilder().write(1, k, null, 0, 1).write(1, k, 'a', 2, 3).read(2, k, null, 4, 5);
  const r = checkHistory(bad.build());
  t.is(r.verdict, 'violation');
  t.is(only(r).explanation!.kind, 'stale-read');
});
