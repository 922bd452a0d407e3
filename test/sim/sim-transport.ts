/**
 * sim-transport: the simulator's network — a Transport (src/transport/transport.ts) per node whose
 * deliveries are I/O callbacks of the receiving node's NodeScheduler, so the seed decides every
 * delay, drop, duplicate and partition, and a paused node's messages wait for it to resume.
 *
 * As MemoryTransport and StreamTransport: send() never blocks and never re-enters the receiver; a
 * message to a peer the sender never added (addPeer) is dropped; a message to a node that is down
 * is dropped and reported unreachable to the sender (a refused connection). Unlike them, messages
 * may be reordered (each draws its own delay), dropped, duplicated, or cut by a partition (a set of
 * cut directed links, checked at delivery).
 */

import type { Transport } from '../../src/transport/transport.js';
import type { SeededRandom } from '../../src/raft/random.js';
import type { Message, NodeId } from '../../src/raft/types.js';
import type { NodeScheduler } from './sim-scheduler.js';

/** NetworkParams: what the seed drew for the links (changed by the liveness phase). */
export interface NetworkParams {
  dropRate: number;
  duplicateRate: number;
  /** delayMsMin / delayMsMax: one-way delay range of a message. */
  delayMsMin: number;
  delayMsMax: number;
}

/** SimNetwork: the links between the node transports. */
export class SimNetwork {
  readonly cut = new Set<string>();
  private readonly endpoints = new Map<NodeId, SimTransport>();
  sent = 0;
  delivered = 0;

  constructor(
    private readonly random: SeededRandom,
    public params: NetworkParams,
  ) {}

  /** attach: a new transport for node `id` on scheduler `scheduler` (a restart replaces the old one). */
  attach(id: NodeId, scheduler: NodeScheduler): SimTransport {
    const transport = new SimTransport(this, id, scheduler);
    this.endpoints.set(id, transport);
    return transport;
  }

  /** detach: the node's process is gone. */
  detach(id: NodeId, transport: SimTransport): void {
    if (this.endpoints.get(id) === transport) this.endpoints.delete(id);
  }

  /** delay: one message's one-way delay, in ms. */
  delay(): number {
    const p = this.params;
    return p.delayMsMin + this.random.float() * (p.delayMsMax - p.delayMsMin);
  }

  route(from: SimTransport, messages: Message[]): void {
    for (const m of messages) {
      this.sent++;
      if (this.random.float() < this.params.dropRate) continue;
      const copies = this.random.float() < this.params.duplicateRate ? 2 : 1;
      const target = this.endpoints.get(m.to);
      if (target === undefined || target.scheduler.state === 'dead') {
        // a refused connection: the sender learns it after a round trip
        from.scheduler.io(from.scheduler.now() + 2 * this.delay(), () => from.unreachable(m.to));
        continue;
      }
      for (let i = 0; i < copies; i++) {
        target.scheduler.io(from.scheduler.now() + this.delay(), () => {
          if (this.cut.has(`${m.from}>${m.to}`)) return;
          this.delivered++;
          target.deliver(m);
        });
      }
    }
  }
}

/** SimTransport: one node's end of the SimNetwork. */
export class SimTransport implements Transport {
  private readonly peers = new Map<NodeId, string>();
  private messageHandler: (m: Message) => void = () => {};
  private unreachableHandler: (peer: NodeId) => void = () => {};
  private closed = false;

  constructor(
    private readonly network: SimNetwork,
    readonly id: NodeId,
    readonly scheduler: NodeScheduler,
  ) {}

  async start(): Promise<void> {}

  send(messages: Message[]): void {
    if (this.closed) return;
    const known = messages.filter((m) => this.peers.has(m.to));
    if (known.length > 0) this.network.route(this, known);
  }

  deliver(m: Message): void {
    if (!this.closed) this.messageHandler(m);
  }

  unreachable(peer: NodeId): void {
    if (!this.closed && this.peers.has(peer)) this.unreachableHandler(peer);
  }

  onMessage(handler: (m: Message) => void): void {
    this.messageHandler = handler;
  }
  onUnreachable(handler: (peer: NodeId) => void): void {
    this.unreachableHandler = handler;
  }
  addPeer(id: NodeId, address: string): void {
    if (id !== this.id) this.peers.set(id, address);
  }
  removePeer(id: NodeId): void {
    this.peers.delete(id);
  }
  address(): string {
    return `sim:${this.id}`;
  }
  async close(): Promise<void> {
    this.closed = true;
  }
}
