// Proves: a seed replays exactly. The same seed run twice gives the same trace hash (every event,
// role change and fault), the same violations and the same statistics; different seeds differ.
// Without this, `--seed N --trace` could not reproduce a failure.
import test from 'ava';
import { runSeed } from './simulator.js';

test('the same seed twice gives an identical trace hash and result', async (t) => {
  for (const seed of [1, 7, 42, 1234]) {
    const a = await runSeed(seed, { ticks: 300 });
    const b = await runSeed(seed, { ticks: 300 });
    t.is(a.traceHash, b.traceHash, `seed ${seed}`);
    t.deepEqual(a.stats, b.stats, `seed ${seed}`);
    t.deepEqual(a.violations, b.violations, `seed ${seed}`);
  }
});

test('tracing does not change the run (the trace is an observer)', async (t) => {
  const lines: string[] = [];
  const traced = await runSeed(7, { ticks: 300, trace: (line) => lines.push(line) });
  const plain = await runSeed(7, { ticks: 300 });
  t.is(traced.traceHash, plain.traceHash);
  t.true(lines.length > 10);
  t.true(lines.some((line) => line.includes('LEADER of term')));
});

test('different seeds draw different runs', async (t) => {
  const hashes = new Set(await Promise.all([1, 2, 3, 4, 5, 6, 7, 8].map(async (seed) => (await runSeed(seed, { ticks: 100 })).traceHash)));
  t.is(hashes.size, 8);
});
