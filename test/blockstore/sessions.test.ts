// core-sessions: unit tests of SessionTable (src/blockstore/sessions.ts, thesis §6.3 exactly-once):
// new / duplicate / stale / expired verdicts, the per-session window of remembered results,
// deterministic LRU eviction (two tables fed the same calls evict the same sessions), restore.
import test from 'ava';
import { SessionTable, SessionVerdict } from '../../src/blockstore/sessions.js';

const r = (s: string) => new TextEncoder().encode(s);
const str = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));

test('SessionTable: apply, then duplicate with the remembered result, then stale once acknowledged', (t) => {
  const table = new SessionTable();
  t.is(table.check('s', 1), SessionVerdict.Apply);
  table.record('s', 1, 10, r('one'));
  t.is(table.check('s', 1), SessionVerdict.Duplicate);
  t.is(str(table.result('s', 1)), 'one');
  t.is(table.check('s', 2), SessionVerdict.Apply);
  table.record('s', 2, 11, r('two')); // ackedBelow defaults to 2: sequence 1 is answered
  t.is(table.check('s', 1), SessionVerdict.Stale);
  t.is(table.check('s', 2), SessionVerdict.Duplicate);
  t.is(str(table.result('s')), 'two');
  t.is(table.result('s', 1), undefined);
  t.is(table.result('nobody'), undefined);
  t.throws(() => table.check('s', 0), { message: /positive integer/ });
});

test('SessionTable: pipelined requests keep a window of results until the client acknowledges them', (t) => {
  const table = new SessionTable();
  table.record('s', 1, 1, r('a'), 1);
  table.record('s', 3, 2, r('c'), 1); // out of order within the window
  table.record('s', 2, 3, r('b'), 1);
  t.deepEqual(table.entries()[0]!.results.map((x) => x.sequence), [1, 2, 3]);
  for (const seq of [1, 2, 3]) t.is(table.check('s', seq), SessionVerdict.Duplicate);
  t.is(str(table.result('s')), 'c', 'the latest is the highest sequence');
  table.record('s', 4, 4, r('d'), 3); // client has answers below 3
  t.is(table.check('s', 2), SessionVerdict.Stale);
  t.is(table.check('s', 3), SessionVerdict.Duplicate);
  t.deepEqual(table.entries()[0]!.results.map((x) => x.sequence), [3, 4]);
});

test('SessionTable: a full window forgets the oldest result, which then becomes stale (never re-applied)', (t) => {
  const table = new SessionTable({ resultsPerSessionMax: 2 });
  table.record('s', 1, 1, r('a'), 1);
  table.record('s', 2, 2, r('b'), 1);
  table.record('s', 3, 3, r('c'), 1);
  t.is(table.check('s', 1), SessionVerdict.Stale);
  t.is(table.check('s', 2), SessionVerdict.Duplicate);
  t.is(table.check('s', 3), SessionVerdict.Duplicate);
});

test('SessionTable: least recently used sessions are evicted deterministically and then expire', (t) => {
  const run = () => {
    const table = new SessionTable({ sessionsMax: 2 });
    table.record('a', 1, 1, r('a1'));
    table.record('b', 1, 2, r('b1'));
    table.record('a', 2, 3, r('a2')); // a is now the most recent
    table.record('c', 1, 4, r('c1')); // evicts b
    return table;
  };
  const one = run();
  const two = run();
  t.deepEqual(one.evictedIds(), ['b']);
  t.deepEqual(one.entries().map((e) => e.sessionId), ['a', 'c']);
  t.deepEqual(two.entries(), one.entries(), 'replicas evict the same sessions');
  t.is(one.size(), 2);
  t.is(one.check('b', 2), SessionVerdict.Expired);
  t.is(one.check('z', 1), SessionVerdict.Apply, 'an unknown session is new');
});

test('SessionTable.restore: content and order survive a snapshot round trip', (t) => {
  const table = new SessionTable({ sessionsMax: 3 });
  table.record('x', 1, 1, r('x1'));
  table.record('y', 5, 2, r('y5'));
  const copy = new SessionTable({ sessionsMax: 3 });
  copy.restore(JSON.parse(JSON.stringify(table.entries(), (_k, v) => (v instanceof Uint8Array ? [...v] : v))).map((e: { results: Array<{ result: number[] }>; lastResult: number[] }) => ({
    ...e,
    lastResult: new Uint8Array(e.lastResult),
    results: e.results.map((x) => ({ ...x, result: new Uint8Array(x.result) })),
  })), ['old']);
  t.is(copy.check('x', 1), SessionVerdict.Duplicate);
  t.is(copy.check('y', 4), SessionVerdict.Stale);
  t.is(copy.check('old', 1), SessionVerdict.Expired);
  t.deepEqual(copy.entries().map((e) => e.sessionId), ['x', 'y']);
  // Records from an older format (no window) restore with their last result only.
  const legacy = new SessionTable();
  legacy.restore([{ sessionId: 'l', lastSequence: 7, lastResult: r('l7'), lastIndex: 3 } as never]);
  t.is(legacy.check('l', 7), SessionVerdict.Duplicate);
  t.is(legacy.check('l', 6), SessionVerdict.Stale);
  t.is(str(legacy.result('l', 7)), 'l7');
});

test('SessionTable: close retires the id; the retired ids are a bounded FIFO reported incrementally', (t) => {
  const table = new SessionTable({ sessionsMax: 2, retiredSessionsMax: 3 });
  for (let i = 1; i <= 6; i++) {
    table.record(`s${i}`, 1, i, r('x'));
    table.close(`s${i}`);
  }
  t.is(table.size(), 0);
  t.deepEqual(table.evictedIds(), ['s4', 's5', 's6']);
  t.deepEqual(table.takeChanges(), { retired: ['s1', 's2', 's3', 's4', 's5', 's6'], forgotten: ['s1', 's2', 's3'] });
  t.deepEqual(table.takeChanges(), { retired: [], forgotten: [] });
  t.is(table.check('s6', 1), SessionVerdict.Expired);
  t.is(table.check('new', 3, 2), SessionVerdict.Expired, 'an unknown session that had answers is expired');
  t.is(table.check('new', 3, 1), SessionVerdict.Apply);
});
