/**
 * metrics: the one place that counts events in a node process. Every layer reports through an
 * `onEvent(name, value?)` callback that ends here; a Prometheus exporter (prom-client) can later
 * read `snapshot()` without touching any layer.
 */

export class Counters {
  private readonly counts = new Map<string, number>();
  private readonly gauges = new Map<string, number>();
  private readonly histograms = new Map<string, number[]>();
  /** samplesMax: bounded memory per histogram (a ring of the most recent samples). */
  constructor(readonly samplesMax = 4096) {}

  inc(name: string, by = 1): void {
    this.counts.set(name, (this.counts.get(name) ?? 0) + by);
  }

  set(name: string, value: number): void {
    this.gauges.set(name, value);
  }

  observe(name: string, value: number): void {
    let samples = this.histograms.get(name);
    if (samples === undefined) {
      samples = [];
      this.histograms.set(name, samples);
    }
    if (samples.length >= this.samplesMax) samples.shift();
    samples.push(value);
  }

  /** onEvent: a callback to hand to layers (`onEvent('nbd.request.read')`). */
  readonly onEvent = (name: string, value = 1): void => this.inc(name, value);

  snapshot(): { counts: Record<string, number>; gauges: Record<string, number>; quantiles: Record<string, { p50: number; p99: number; max: number; count: number }> } {
    const quantiles: Record<string, { p50: number; p99: number; max: number; count: number }> = {};
    for (const [name, samples] of this.histograms) {
      const sorted = [...samples].sort((a, b) => a - b);
      const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
      quantiles[name] = { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0, count: sorted.length };
    }
    return { counts: Object.fromEntries(this.counts), gauges: Object.fromEntries(this.gauges), quantiles };
  }
}
