/**
 * prom-exporter: PromExporter sums counter increments between scrapes and adds them at the next
 * scrape (a prom-client inc hashes its labels every time), so a scrape must show exactly the
 * totals of every inc before it — including the counts replayed by attach() and increments
 * after an earlier scrape — and the latest value of the deferred in-flight gauge; an inc that
 * also feeds a histogram (store.entries: entries per fsync) keeps one observation per inc.
 */

import test from 'ava';
import { Counters, PromExporter } from '../../src/node/metrics.js';

const sample = (text: string, series: string): number | undefined => {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
};

test('deferred counter increments and gauge values are exact at every scrape', async (t) => {
  const counters = new Counters();
  counters.inc('nbd.bytesRead', 100); // before attach: replayed
  const exporter = new PromExporter({ labels: { node: '1' }, processMetrics: false });
  counters.attach(exporter);
  for (let i = 0; i < 1000; i++) {
    counters.set('nbd.inflight', 1);
    counters.inc('nbd.bytesRead', 4096);
    counters.inc('nbd.readRequests');
    counters.set('nbd.inflight', i === 999 ? 7 : 0);
  }
  let text = await exporter.text();
  t.is(sample(text, 'chard_nbd_bytes_total{direction="out",node="1"}'), 100 + 1000 * 4096);
  t.is(sample(text, 'chard_nbd_requests_total{command="read",node="1"}'), 1000);
  t.is(sample(text, 'chard_nbd_inflight_requests{node="1"}'), 7);
  t.is(sample(text, 'chard_nbd_bytes_total{direction="in",node="1"}'), 0, 'declared families are present at zero');

  counters.inc('nbd.bytesRead', 1);
  counters.inc('store.entries', 3);
  counters.inc('store.entries', 5);
  text = await exporter.text();
  t.is(sample(text, 'chard_nbd_bytes_total{direction="out",node="1"}'), 100 + 1000 * 4096 + 1, 'nothing counted twice across scrapes');
  t.is(sample(text, 'chard_raft_persisted_entries_total{node="1"}'), 8);
  t.is(sample(text, 'chard_raft_entries_per_fsync_count{node="1"}'), 2, 'one observation per inc');
  t.is(sample(text, 'chard_raft_entries_per_fsync_sum{node="1"}'), 8);
  t.is(sample(text, 'chard_nbd_inflight_requests{node="1"}'), 7, 'the gauge keeps its last value');
});
