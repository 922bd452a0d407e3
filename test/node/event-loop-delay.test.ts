/**
 * event-loop-delay: watchEventLoopDelay samples the longest event-loop stall of each period into
 * `node.event_loop_delay_ms` (Admin.Metrics JSON) and `chard_event_loop_delay_seconds`
 * (Prometheus). A 250 ms busy-wait blocks the loop for at least 250 ms, so the sample of that
 * period is at least ~250 ms (a lower bound only: the machine may add to it, never take away).
 */

import test from 'ava';
import { Counters, PromExporter, eventLoopDelayEveryMs, eventLoopDelayResolutionMs, watchEventLoopDelay } from '../../src/node/metrics.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

test('a blocked event loop shows up in node.event_loop_delay_ms and chard_event_loop_delay_seconds', async (t) => {
  const counters = new Counters();
  const exporter = new PromExporter({ labels: { node: '1' } });
  counters.attach(exporter);
  const watch = watchEventLoopDelay(counters);
  t.teardown(() => watch.close());
  await sleep(2 * eventLoopDelayResolutionMs);
  const blockedMs = 250;
  const until = performance.now() + blockedMs;
  while (performance.now() < until) {
    // busy: the event loop is blocked
  }
  const deadline = Date.now() + 30_000;
  while ((counters.snapshot().quantiles['node.event_loop_delay_ms']?.max ?? 0) < blockedMs - eventLoopDelayResolutionMs && Date.now() < deadline) await sleep(eventLoopDelayEveryMs / 4);
  const q = counters.snapshot().quantiles['node.event_loop_delay_ms'];
  t.truthy(q, 'sampled');
  t.true(q!.max >= blockedMs - eventLoopDelayResolutionMs, `the stall was seen (${q!.max.toFixed(0)} ms)`);
  const text = await exporter.text();
  t.regex(text, /chard_event_loop_delay_seconds_count\{node="1"\} [1-9]/);
});
