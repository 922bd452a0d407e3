/**
 * memory: MemoryHub, an in-process Transport hub for tests. Each node gets a MemoryTransport;
 * messages are delivered asynchronously (setImmediate, never inside send(), so a handler never
 * re-enters the sender), in order per link, to peers the sender knows (addPeer) that are started.
 * A message to a peer never added is dropped (counted, as StreamTransport does); one to a closed or
 * unstarted node is dropped and reported unreachable, like a refused connection. Per-link queues
 * are bounded (`linkQueueMessagesMax`) with StreamTransport's overflow rule: drop, report unreachable.
 */

import { assert } from '../assert.js';
import type { Message, NodeId } from '../raft/types.js';
import type { Transport } from './transport.js';

export interface MemoryHubLimits {
  /** linkQueueMessagesMax: messages waiting for delivery on one directed link. */
  linkQueueMessagesMax: number;
}

export const defaultMemoryHubLimits: MemoryHubLimits = { linkQueueMessagesMax: 8192 };

/** MemoryHub: the shared "network" of MemoryTransports. */
export class MemoryHub {
  readonly limits: MemoryHubLimits;
  private readonly nodes = new Map<NodeId, MemoryTransport>();
  /** delivered / dropped: counts over the hub's life (tests assert on them). */
  delivered = 0;
  dropped = 0;

  constructor(limits: Partial<MemoryHubLimits> = {}) {
    this.limits = { ...defaultMemoryHubLimits, ...limits };
  }

  /** transport: the MemoryTransport of node `id` (a new one if it was closed). */
  transport(id: NodeId): MemoryTransport {
    const existing = this.nodes.get(id);
    if (existing !== undefined && !existing.isClosed()) return existing;
    const transport = new MemoryTransport(this, id);
    this.nodes.set(id, transport);
    return transport;
  }

  /** lookup: the live, started transport of `id`. */
  lookup(id: NodeId): MemoryTransport | undefined {
    const node = this.nodes.get(id);
    return node !== undefined && node.isStarted() && !node.isClosed() ? node : undefined;
  }
}

/** MemoryTransport: one node's end of a MemoryHub. */
export class MemoryTransport implements Transport {
  private readonly peers = new Map<NodeId, string>();
  private readonly outbox = new Map<NodeId, Message[]>();
  private messageHandler: (m: Message) => void = () => {};
  private unreachableHandler: (peer: NodeId) => void = () => {};
  private started = false;
  private closed = false;
  private flushScheduled = false;

  constructor(
    private readonly hub: MemoryHub,
    readonly id: NodeId,
  ) {}

  isStarted(): boolean {
    return this.started;
  }
  isClosed(): boolean {
    return this.closed;
  }

  async start(): Promise<void> {
    assert(!this.closed, 'memory transport closed');
    this.started = true;
  }

  send(messages: Message[]): void {
    if (this.closed) return;
    for (const m of messages) {
      assert(m.from === this.id, `message from ${m.from} sent by node ${this.id}`);
      if (!this.peers.has(m.to)) {
        this.hub.dropped++;
        continue;
      }
      let queue = this.outbox.get(m.to);
      if (queue === undefined) {
        queue = [];
        this.outbox.set(m.to, queue);
      }
      if (queue.length >= this.hub.limits.linkQueueMessagesMax) {
        this.hub.dropped++;
        this.unreachableHandler(m.to);
        continue;
      }
      queue.push(m);
    }
    if (!this.flushScheduled && this.outbox.size > 0) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    if (this.closed) return;
    const outbox = [...this.outbox];
    this.outbox.clear();
    for (const [to, queue] of outbox) {
      const target = this.hub.lookup(to);
      if (target === undefined) {
        this.hub.dropped += queue.length;
        this.unreachableHandler(to);
        continue;
      }
      for (const m of queue) {
        if (target.closed) break;
        this.hub.delivered++;
        target.messageHandler(m);
      }
    }
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
    this.outbox.delete(id);
  }
  address(): string {
    return `memory:${this.id}`;
  }
  async close(): Promise<void> {
    this.closed = true;
    this.outbox.clear();
  }
}
