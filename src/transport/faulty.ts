/**
 * faulty: composable fault injection for any Transport (nbdkit filters/error + filters/delay, for
 * the network). A `Faults` object is the shared, mutable fault plan — drop and duplicate
 * probabilities, a delay range, and a set of blocked DIRECTED links (so one-way partitions are
 * expressible) — and `FaultyTransport` wraps one node's Transport and applies the plan.
 *
 * Blocked links are enforced on both sides: outgoing messages on a blocked link are never handed
 * to the inner transport, and incoming ones are never handed to the node, so wrapping only one
 * node (e.g. `chard chaos` without root) still cuts exactly the chosen directions. Drop, duplicate
 * and delay apply to outgoing messages only (once per hop, not twice). All randomness comes from
 * the Random passed in, so a seed replays the same decisions for the same sequence of sends.
 */

import { assert } from '../assert.js';
import type { Message, NodeId, Random } from '../raft/types.js';
import type { Transport } from './transport.js';

export interface FaultSettings {
  /** dropProbability: chance in [0, 1] that an outgoing message is lost. */
  dropProbability: number;
  /** duplicateProbability: chance in [0, 1] that an outgoing message is sent twice. */
  duplicateProbability: number;
  /** delayMsMin / delayMsMax: each outgoing message waits a uniform delay in this range (ms). */
  delayMsMin: number;
  delayMsMax: number;
}

export const noFaults: FaultSettings = { dropProbability: 0, duplicateProbability: 0, delayMsMin: 0, delayMsMax: 0 };

/** FaultCounts: what the plan did so far. */
export interface FaultCounts {
  dropped: number;
  blocked: number;
  duplicated: number;
  delayed: number;
}

const probabilityScale = 1_000_000;

/** Faults: a fault plan shared by every FaultyTransport of a test or chaos run. */
export class Faults {
  private settings: FaultSettings = { ...noFaults };
  private readonly blocked = new Set<string>();
  readonly counts: FaultCounts = { dropped: 0, blocked: 0, duplicated: 0, delayed: 0 };

  constructor(
    readonly random: Random,
    settings: Partial<FaultSettings> = {},
  ) {
    this.set(settings);
  }

  /** set: change some settings (validated: probabilities in [0, 1], 0 <= min <= max). */
  set(settings: Partial<FaultSettings>): void {
    const next = { ...this.settings, ...settings };
    assert(next.dropProbability >= 0 && next.dropProbability <= 1, 'dropProbability outside [0, 1]');
    assert(next.duplicateProbability >= 0 && next.duplicateProbability <= 1, 'duplicateProbability outside [0, 1]');
    assert(next.delayMsMin >= 0 && next.delayMsMin <= next.delayMsMax, 'delay range');
    this.settings = next;
  }

  current(): FaultSettings {
    return { ...this.settings };
  }

  /** block: cut the directed link from -> to (one way). */
  block(from: NodeId, to: NodeId): void {
    this.blocked.add(`${from}>${to}`);
  }

  unblock(from: NodeId, to: NodeId): void {
    this.blocked.delete(`${from}>${to}`);
  }

  /** partition: cut every link between the two groups, both ways. */
  partition(groupA: readonly NodeId[], groupB: readonly NodeId[]): void {
    for (const a of groupA) {
      for (const b of groupB) {
        this.block(a, b);
        this.block(b, a);
      }
    }
  }

  /** heal: unblock every link (settings stay). */
  heal(): void {
    this.blocked.clear();
  }

  isBlocked(from: NodeId, to: NodeId): boolean {
    return this.blocked.has(`${from}>${to}`);
  }

  chance(probability: number): boolean {
    if (probability <= 0) return false;
    if (probability >= 1) return true;
    return this.random.int(probabilityScale) < probability * probabilityScale;
  }

  delayMs(): number {
    const { delayMsMin, delayMsMax } = this.settings;
    return delayMsMax === 0 ? 0 : delayMsMin + this.random.int(delayMsMax - delayMsMin + 1);
  }
}

/** FaultyTransport: `inner` as seen through the fault plan. */
export class FaultyTransport implements Transport {
  private readonly timers = new Set<NodeJS.Timeout>();
  private closed = false;

  constructor(
    readonly inner: Transport,
    readonly faults: Faults,
  ) {}

  start(): Promise<void> {
    return this.inner.start();
  }

  send(messages: Message[]): void {
    if (this.closed) return;
    const now: Message[] = [];
    for (const m of messages) {
      if (this.faults.isBlocked(m.from, m.to)) {
        this.faults.counts.blocked++;
        continue;
      }
      const settings = this.faults.current();
      if (this.faults.chance(settings.dropProbability)) {
        this.faults.counts.dropped++;
        continue;
      }
      const copies = this.faults.chance(settings.duplicateProbability) ? 2 : 1;
      if (copies === 2) this.faults.counts.duplicated++;
      for (let copy = 0; copy < copies; copy++) {
        const delayMs = this.faults.delayMs();
        if (delayMs === 0) {
          now.push(m);
          continue;
        }
        this.faults.counts.delayed++;
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          // The plan may have changed while the message was in flight: a link cut now stays cut.
          if (this.closed || this.faults.isBlocked(m.from, m.to)) return;
          this.inner.send([m]);
        }, delayMs);
        this.timers.add(timer);
      }
    }
    if (now.length > 0) this.inner.send(now);
  }

  onMessage(handler: (m: Message) => void): void {
    this.inner.onMessage((m) => {
      if (this.faults.isBlocked(m.from, m.to)) {
        this.faults.counts.blocked++;
        return;
      }
      handler(m);
    });
  }

  onUnreachable(handler: (peer: NodeId) => void): void {
    this.inner.onUnreachable(handler);
  }

  addPeer(id: NodeId, address: string): void {
    this.inner.addPeer(id, address);
  }

  removePeer(id: NodeId): void {
    this.inner.removePeer(id);
  }

  address(): string {
    return this.inner.address();
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    await this.inner.close();
  }
}
