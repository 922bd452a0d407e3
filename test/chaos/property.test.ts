// property: histories generated from a real sequential register, with random overlapping
// intervals around each op's linearization point, random processes, and info/fail outcomes (writes
// that did or did not take effect), are always judged linearizable; the same history with one read
// corrupted to an observably stale value (its value was overwritten by a write that completed
// before the read was invoked) is always judged a violation on exactly that key.
import test from 'ava';
import fc from 'fast-check';
import { checkHistory } from '../../src/chaos/linearizability.js';
import { generate, toEvents, type GenOp, type GenSpec } from './generate.js';

const specArb: fc.Arbitrary<GenSpec> = fc.record({
  keys: fc.constantFrom(['k0'], ['k0', 'k1'], ['k0', 'k1', 'k2']),
  pointGapMs: fc.constant(10),
  steps: fc.array(
    fc.record({
      key: fc.nat(2),
      write: fc.boolean(),
      outcome: fc.constantFrom('ok', 'ok', 'ok', 'ok', 'info-applied', 'info-lost', 'fail') as fc.Arbitrary<GenOp['outcome']>,
      before: fc.nat(25),
      after: fc.nat(25),
      process: fc.nat(5),
    }),
    { minLength: 0, maxLength: 60, size: "max" },
  ),
});

const runs = Number(process.env.CHARD_PROPERTY_RUNS ?? 300);

for (const fastPaths of [true, false]) test(`generated sequential histories are linearizable${fastPaths ? '' : ' (search only)'}`, (t) => {
  fc.assert(
    fc.property(specArb, (spec) => {
      const result = checkHistory(toEvents(generate(spec)), { fastPaths });
      if (result.verdict !== 'ok') throw new Error(`expected ok, got ${result.verdict}: ${JSON.stringify(result.keys[0]?.explanation?.message)}`);
    }),
    { numRuns: runs, seed: Number(process.env.CHARD_PROPERTY_SEED ?? 4242) },
  );
  t.pass();
});

/**
 * corrupt picks an ok read r and an ok write w2 on its key that returned before r was invoked; r is
 * changed to return either the initial value (null) or the value of an ok write w1 that returned
 * before w2 was invoked. Either way r must follow w2, which follows w1 (or the start), and no
 * other write writes that value: the staleness is observable. If no such triple exists, a new
 * write and a stale read are appended after everything else (same reasoning).
 */
function corrupt(ops: GenOp[], pick: number): { ops: GenOp[]; key: string } {
  const out = ops.map((op) => ({ ...op }));
  const candidates: { r: number; value: string | null }[] = [];
  out.forEach((r, ri) => {
    if (r.f !== 'read' || r.outcome !== 'ok') return;
    for (const w2 of out) {
      if (w2.f !== 'write' || w2.outcome !== 'ok' || w2.key !== r.key || !(w2.ret < r.call)) continue;
      if (r.value !== null) candidates.push({ r: ri, value: null });
      for (const w1 of out) {
        if (w1.f === 'write' && w1.outcome === 'ok' && w1.key === r.key && w1.ret < w2.call && w1.value !== r.value) candidates.push({ r: ri, value: w1.value });
      }
    }
  });
  if (candidates.length > 0) {
    const c = candidates[pick % candidates.length]!;
    out[c.r]!.value = c.value;
    return { ops: out, key: out[c.r]!.key };
  }
  const end = Math.max(0, ...out.map((op) => op.ret)) + 100;
  out.push({ process: 9, key: 'k0', f: 'write', outcome: 'ok', value: 'tail', call: end, ret: end + 1 });
  out.push({ process: 9, key: 'k0', f: 'read', outcome: 'ok', value: null, call: end + 2, ret: end + 3 });
  return { ops: out, key: 'k0' };
}

for (const fastPaths of [true, false]) test(`one observably stale read makes the history a violation on its key${fastPaths ? '' : ' (search only)'}`, (t) => {
  let embedded = 0;
  fc.assert(
    fc.property(specArb, fc.nat(1000), (spec, pick) => {
      const ops = generate(spec);
      const { ops: bad, key } = corrupt(ops, pick);
      if (bad.length === ops.length) embedded++;
      const result = checkHistory(toEvents(bad), { fastPaths });
      const violating = result.keys.filter((k) => k.verdict !== 'ok').map((k) => `${k.key}:${k.verdict}`);
      if (violating.length !== 1 || violating[0] !== `${key}:violation`) throw new Error(`expected exactly ${key} to violate, got ${JSON.stringify(violating)}`);
    }),
    { numRuns: runs, seed: Number(process.env.CHARD_PROPERTY_SEED ?? 4243) },
  );
  t.log(`${embedded} of ${runs} corruptions were inside the generated history (the rest appended)`);
  t.true(embedded > runs / 4, 'most corruptions are embedded in the random part');
});

/**
 * bruteForce decides linearizability of one key's ops by trying every order that respects real
 * time: an op may go next if no other pending op with a finite return returned before its call.
 * Info writes may also be left out; fail ops and info reads are ignored. Exponential: tiny inputs only.
 */
function bruteForce(ops: { f: 'read' | 'write'; value: string | null; call: number; ret: number; outcome: 'ok' | 'info' | 'fail' }[]): boolean {
  const live = ops.filter((op) => op.outcome !== 'fail' && !(op.outcome === 'info' && op.f === 'read'));
  const ret = (op: (typeof live)[number]): number => (op.outcome === 'info' ? Infinity : op.ret);
  const go = (pending: typeof live, state: string | null): boolean => {
    if (pending.every((op) => op.outcome === 'info')) return true;
    for (const op of pending) {
      if (pending.some((other) => other !== op && ret(other) < op.call)) continue;
      if (op.f === 'read' && op.value !== state) continue;
      if (go(pending.filter((x) => x !== op), op.f === 'write' ? op.value : state)) return true;
    }
    return false;
  };
  return go(live, null);
}

for (const fastPaths of [true, false]) test(`agrees with a brute-force checker on small random histories${fastPaths ? '' : ' (search only)'}`, (t) => {
  let violations = 0;
  const opArb = fc.record({
    f: fc.constantFrom('read', 'write') as fc.Arbitrary<'read' | 'write'>,
    readValue: fc.constantFrom(null, 'w0', 'w1', 'w2', 'w3', 'x'),
    call: fc.nat(20),
    duration: fc.nat(10),
    outcome: fc.constantFrom('ok', 'ok', 'ok', 'info', 'fail') as fc.Arbitrary<'ok' | 'info' | 'fail'>,
  });
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 7 }), (raw) => {
      let writes = 0;
      const ops = raw.map((op) => ({
        f: op.f,
        value: op.f === 'write' ? `w${writes++}` : op.outcome === 'ok' ? op.readValue : null,
        call: op.call,
        ret: op.call + op.duration,
        outcome: op.outcome,
      }));
      const events = toEvents(
        ops.map((op) => ({ process: 1, key: 'k', f: op.f, outcome: op.outcome === 'info' ? 'info-lost' : op.outcome, value: op.value, call: op.call, ret: op.ret })),
      );
      const expected = bruteForce(ops);
      const actual = checkHistory(events, { fastPaths }).verdict;
      if (!expected) violations++;
      if (actual !== (expected ? 'ok' : 'violation')) throw new Error(`brute force says ${expected ? 'ok' : 'violation'}, checker says ${actual}: ${JSON.stringify(ops)}`);
    }),
    { numRuns: runs * 3, seed: Number(process.env.CHARD_PROPERTY_SEED ?? 4244) },
  );
  t.log(`${violations} of ${runs * 3} random histories were not linearizable`);
  t.true(violations > runs / 2, 'both verdicts are exercised');
});

test('the fast paths never change a verdict (medium random histories)', (t) => {
  const counts = { ok: 0, violation: 0 };
  const opArb = fc.record({
    write: fc.boolean(),
    readOf: fc.nat(12),
    call: fc.nat(60),
    duration: fc.nat(15),
    outcome: fc.constantFrom('ok', 'ok', 'ok', 'ok', 'info-lost', 'fail') as fc.Arbitrary<GenOp['outcome']>,
  });
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 1, maxLength: 30 }), (raw) => {
      let writes = 0;
      const ops: GenOp[] = raw.map((op) => ({
        process: 1,
        key: 'k',
        f: op.write ? 'write' : 'read',
        outcome: op.outcome,
        value: op.write ? `w${writes++}` : op.readOf === 0 ? null : `w${op.readOf - 1}`,
        call: op.call,
        ret: op.call + op.duration,
      }));
      const events = toEvents(ops);
      const withGreedy = checkHistory(events).verdict;
      const searchOnly = checkHistory(events, { fastPaths: false }).verdict;
      if (withGreedy !== searchOnly) throw new Error(`fast paths ${withGreedy} vs search only ${searchOnly}: ${JSON.stringify(ops)}`);
      if (withGreedy === 'ok' || withGreedy === 'violation') counts[withGreedy]++;
    }),
    { numRuns: runs * 3, seed: Number(process.env.CHARD_PROPERTY_SEED ?? 4245) },
  );
  t.log(`verdicts: ${JSON.stringify(counts)}`);
  t.true(counts.ok > runs / 4 && counts.violation > runs / 4, 'both verdicts are exercised');
});
