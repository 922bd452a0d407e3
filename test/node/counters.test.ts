/**
 * counters: the quantiles of Counters (src/node/metrics.ts) are those of the most recent
 * `samplesMax` samples of each name: once the ring is full, each new sample replaces the oldest.
 */

import test from 'ava';
import { Counters } from '../../src/node/metrics.js';

test('quantiles cover the most recent samplesMax samples', (t) => {
  const counters = new Counters(4);
  for (let v = 1; v <= 3; v++) counters.observe('x_ms', v);
  t.deepEqual(counters.snapshot().quantiles.x_ms, { p50: 2, p99: 3, max: 3, count: 3 });
  for (let v = 4; v <= 10; v++) counters.observe('x_ms', v);
  t.deepEqual(counters.snapshot().quantiles.x_ms, { p50: 9, p99: 10, max: 10, count: 4 }, 'samples 7..10');
  for (let v = 1; v <= 3; v++) counters.observe('x_ms', 100 - v);
  t.deepEqual(counters.snapshot().quantiles.x_ms, { p50: 98, p99: 99, max: 99, count: 4 }, 'samples 10, 99, 98, 97');
  counters.observe('y_ms', 5);
  t.is(counters.snapshot().quantiles.y_ms?.count, 1, 'each name has its own ring');
});
