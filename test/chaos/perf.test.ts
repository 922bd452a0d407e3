// perf: checks a synthetic, linearizable-by-construction history of 100k ops on 1000 keys (half
// the ops on 20 hot keys, ~10 ops in flight per hot key, 1 % each of info-applied, info-lost and
// failed outcomes) and prints how long the check took. The verdict must be ok; there is no timing
// assertion (the machine is shared), but the time is logged for the lead.
import test from 'ava';
import { performance } from 'node:perf_hooks';
import { checkHistory } from '../../src/chaos/linearizability.js';
import { pairOperations } from '../../src/chaos/history.js';
import { generate, toEvents, type GenSpec } from './generate.js';
import { xorshift32 } from './builder.js';

const opCount = 100_000;
const keyCount = 1000;
const hotKeyCount = 20;

function spec(seed: number): GenSpec {
  const random = xorshift32(seed);
  const keys = Array.from({ length: keyCount }, (_, i) => `vol${i % 4}/${i}`);
  const steps: GenSpec['steps'] = [];
  for (let n = 0; n < opCount; n++) {
    const u = random();
    steps.push({
      key: random() < 0.5 ? Math.floor(random() * hotKeyCount) : Math.floor(random() * keyCount),
      write: random() < 0.5,
      outcome: u < 0.01 ? 'info-applied' : u < 0.02 ? 'info-lost' : u < 0.03 ? 'fail' : 'ok',
      before: random() * 20,
      after: random() * 20,
      process: Math.floor(random() * 64),
    });
  }
  return { keys, steps, pointGapMs: 0.1 };
}

test('check a 100k-op history on 1000 keys', (t) => {
  const events = toEvents(generate(spec(7)));
  const pairStart = performance.now();
  const ops = pairOperations(events);
  const checkStart = performance.now();
  const result = checkHistory(events);
  const end = performance.now();
  t.is(ops.length, opCount);
  t.is(result.verdict, 'ok');
  t.is(result.keyCount, keyCount);
  const searched = result.keys.filter((k) => k.steps > k.searchedOpCount).length;
  t.log(`${searched} of ${result.keyCount} keys needed the search (the rest: greedy witness)`);
  t.log(`${opCount} ops, ${result.keyCount} keys: pairing ${(checkStart - pairStart).toFixed(0)} ms, check (incl. pairing) ${(end - checkStart).toFixed(0)} ms, ${result.steps} search steps`);
  // A stale read injected at the end is found in the same large history.
  const last = events[events.length - 1]!.time;
  const bad = [
    ...events,
    { type: 'invoke', process: 'x', opId: 1, f: 'write', key: 'vol0/0', value: 'fresh', time: last + 1 },
    { type: 'ok', process: 'x', opId: 1, f: 'write', key: 'vol0/0', value: 'fresh', time: last + 2 },
    { type: 'invoke', process: 'x', opId: 2, f: 'read', key: 'vol0/0', value: null, time: last + 3 },
    { type: 'ok', process: 'x', opId: 2, f: 'read', key: 'vol0/0', value: null, time: last + 4 },
  ] as const;
  const badStart = performance.now();
  const badResult = checkHistory([...bad]);
  t.log(`with one stale read appended: ${(performance.now() - badStart).toFixed(0)} ms`);
  t.is(badResult.verdict, 'violation');
  t.deepEqual(badResult.keys.filter((k) => k.verdict !== 'ok').map((k) => k.key), ['vol0/0']);
});
