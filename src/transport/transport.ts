/**
 * transport: the peer transport interface of a chard node — the `Transport` the replica uses —
 * and what its one network implementation, StreamTransport (stream-transport.ts: length-prefixed
 * frames over TCP or TLS, wire format in framing.ts), shares: limits, options, the bounded Lane.
 *
 * Guarantees and why:
 *  - send() never blocks and never buffers without bound: each peer has a bounded queue per lane
 *    (`peerQueueMessagesMax` / `peerQueueBytesMax`; snapshot chunks `snapQueue*`). A message that
 *    does not fit is dropped, counted, and the peer is reported unreachable, which is exactly what
 *    raft needs to know (it falls back to probing that follower). Raft tolerates loss; a stalled
 *    process holding gigabytes of stale appends does not.
 *  - Order is kept per link and lane: one long-lived connection per (peer, lane) carries frames in
 *    the order send() was called, batched (several messages per frame) up to `frameMessagesMax` /
 *    `frameBytesMax`. Bytes written to a socket and not yet taken by the kernel are bounded by
 *    `streamInflightBytesMax`, so backpressure reaches the queue (and its drop rule).
 *  - Snapshot chunks never starve heartbeats: they travel on their own lane (a connection of
 *    their own), one chunk in flight at a time, from their own small queue.
 *  - Every frame carries the cluster id; the receiver refuses frames of another cluster and frames
 *    not addressed to itself (a Refusal with chard code WRONG_CLUSTER, then it closes the
 *    connection), and drops frames that fail validation (codec.ts); all of it is counted.
 *    Before streaming, a sender says Hello (cluster id, from, to) and waits for HelloOk.
 *  - A broken connection is torn down; its queued messages are dropped, the peer is reported
 *    unreachable, and the next send() after a backoff (`reconnectBackoffMsMin` doubling to
 *    `reconnectBackoffMsMax`, with jitter from a seeded Random) reconnects.
 *  - A silently dead peer (SIGSTOP, a cut cable) is found by pings: nothing received for
 *    `keepaliveTimeMs` sends one, nothing for `keepaliveTimeMs + keepaliveTimeoutMs` fails the link.
 *  - Every event is reported through the one `onEvent(name, value)` callback (names start with
 *    `transport.`) and also kept in `counts()`, so tests and metrics see the same numbers.
 *
 * TLS: a node with a `tls` config block passes its certificate set (tls.ts peerCerts); peers
 * verify each other against the cluster CA in the handshake (client certificates required), and
 * the server also requires the peer certificate's OU to be `peerUnit` ('node').
 */

import type { Socket } from 'node:net';
import type * as grpc from '@grpc/grpc-js';
import { assert } from '../assert.js';
import type { Message, NodeId, Random } from '../raft/types.js';
import { type CodecLimits, defaultCodecLimits } from './codec.js';
import type { CertSet } from './tls.js';

/**
 * Transport: how a node exchanges raft messages with its peers. send() never blocks; messages
 * may be lost (raft retries), are delivered at most once per send and in order per link.
 */
export interface Transport {
  /** start: listen (resolves once bound). */
  start(): Promise<void>;
  /** send: queue messages to their `to` peers; never blocks; overflow drops and reports unreachable. */
  send(messages: Message[]): void;
  /** onMessage: the handler of every accepted incoming message. */
  onMessage(handler: (m: Message) => void): void;
  /** onUnreachable: called when messages to `peer` were dropped or its stream broke. */
  onUnreachable(handler: (peer: NodeId) => void): void;
  addPeer(id: NodeId, address: string): void;
  removePeer(id: NodeId): void;
  /** address: the bound host:port (after start). */
  address(): string;
  close(): Promise<void>;
}

/** TransportLimits: every bound of the peer transport, in one place. */
export interface TransportLimits {
  /** peerQueueMessagesMax / peerQueueBytesMax: regular-lane queue of one peer. */
  peerQueueMessagesMax: number;
  peerQueueBytesMax: number;
  /** snapQueueMessagesMax / snapQueueBytesMax: snapshot-chunk queue of one peer. */
  snapQueueMessagesMax: number;
  snapQueueBytesMax: number;
  /** frameMessagesMax / frameBytesMax: batching bounds of one envelope frame. */
  frameMessagesMax: number;
  frameBytesMax: number;
  /** streamInflightBytesMax: bytes written to a regular-lane socket and not yet taken by the kernel. */
  streamInflightBytesMax: number;
  /** snapInflightFramesMax: snapshot frames written and not yet taken by the kernel. */
  snapInflightFramesMax: number;
  /** probeTimeoutMs: deadline of the Hello / HelloOk exchange before streaming (both sides). */
  probeTimeoutMs: number;
  /** reconnectBackoffMsMin / Max: pause after a failure, doubling per consecutive failure. */
  reconnectBackoffMsMin: number;
  reconnectBackoffMsMax: number;
  /**
   * keepaliveTimeMs / keepaliveTimeoutMs: a client link pings after keepaliveTimeMs without
   * receiving anything and fails after keepaliveTimeMs + keepaliveTimeoutMs; a server connection
   * silent for twice that is closed.
   */
  keepaliveTimeMs: number;
  keepaliveTimeoutMs: number;
  /** ackEveryFrames: the receiver acknowledges progress every this many frames (liveness). */
  ackEveryFrames: number;
  /** inboundConnectionsMax: connections the listener holds at once (two per peer: one per lane). */
  inboundConnectionsMax: number;
  /** codec: validation bounds of received frames. */
  codec: CodecLimits;
}

export const defaultTransportLimits: TransportLimits = {
  peerQueueMessagesMax: 8192,
  peerQueueBytesMax: 64 * 1024 * 1024,
  snapQueueMessagesMax: 8,
  snapQueueBytesMax: 32 * 1024 * 1024,
  frameMessagesMax: 512,
  frameBytesMax: 16 * 1024 * 1024,
  streamInflightBytesMax: 4 * 1024 * 1024,
  snapInflightFramesMax: 1,
  probeTimeoutMs: 2000,
  reconnectBackoffMsMin: 50,
  reconnectBackoffMsMax: 500,
  keepaliveTimeMs: 5000,
  keepaliveTimeoutMs: 5000,
  ackEveryFrames: 256,
  inboundConnectionsMax: 1024,
  codec: defaultCodecLimits,
};

/**
 * frameOverheadBytes: headroom of the envelope frame limit over frameBytesMax (messageBytes is an
 * estimate; the cluster id and per-field tags come on top).
 */
export const frameOverheadBytes = 64 * 1024;

/** TransportCredentials: gRPC credentials of a node's admin / block RPC (tls.ts nodeCredentials). */
export interface TransportCredentials {
  server: grpc.ServerCredentials;
  client: grpc.ChannelCredentials;
}

export interface StreamTransportOptions {
  clusterId: string;
  nodeId: NodeId;
  /** listen: host:port to bind; port 0 lets the OS pick (see address()). */
  listen: string;
  /** tls: the node's certificate set (tls.ts peerCerts); without it, plain TCP. */
  tls?: CertSet;
  /**
   * peerUnit: with TLS, a peer's certificate must carry this organizational unit (`chard certs
   * init` gives node certificates OU=node, client certificates OU=client), so a client
   * certificate of the same CA cannot speak raft. Undefined: any certificate the CA signed.
   */
  peerUnit?: string;
  limits?: Partial<TransportLimits>;
  /** onEvent: the one place events are counted (e.g. Counters.onEvent). */
  onEvent?: (name: string, value?: number) => void;
  /** random: jitter of the reconnect backoff (seeded by default from the node id). */
  random?: Random;
  /** logger: where refused frames are reported, with the peer's address (rate-limited). */
  logger?: TransportLogger;
}

/** TransportLogger: the part of the node's logger the transport uses. */
export interface TransportLogger {
  warn(o: object, m?: string): void;
}

/**
 * refusalLogIntervalMs / refusalLogPeersMax: at most one log line per peer address per interval
 * (a peer sending garbage must not flood the log; the counters count every frame), remembering at
 * most this many addresses.
 */
export const refusalLogIntervalMs = 1000;
export const refusalLogPeersMax = 1024;

export type LaneName = 'regular' | 'snap';

/**
 * Lane: one bounded queue and the connection that drains it. `queue[head..]` is what waits; a slot is
 * cleared as its message is taken, so a sent message (and the entry data it carries, up to
 * frameBytesMax per frame) is not kept alive by the queue until the array is next compacted —
 * which an idle lane never reached: after a 1 MiB write job a node kept up to 1,024 sent App
 * messages per peer.
 */
export class Lane {
  queue: (Message | undefined)[] = [];
  head = 0;
  queuedBytes = 0;
  /** socket: the connection frames are written to, once its Hello was answered. */
  socket: Socket | undefined;
  /** generation: bumped when the connection is replaced, so late write callbacks are ignored. */
  generation = 0;
  inflightFrames = 0;

  constructor(
    readonly name: LaneName,
    readonly messagesMax: number,
    readonly bytesMax: number,
    readonly frameMessagesMax: number,
    readonly inflightBytesMax: number,
    readonly inflightFramesMax: number,
  ) {}

  /** inflightBytes: written to the socket and not yet taken by the kernel. */
  get inflightBytes(): number {
    return this.socket?.writableLength ?? 0;
  }

  get length(): number {
    return this.queue.length - this.head;
  }

  fits(bytes: number): boolean {
    return this.length < this.messagesMax && this.queuedBytes + bytes <= this.bytesMax;
  }

  push(m: Message, bytes: number): void {
    this.queue.push(m);
    this.queuedBytes += bytes;
  }

  shift(): Message {
    const m = this.queue[this.head];
    assert(m !== undefined, 'shift of an empty lane');
    this.queue[this.head++] = undefined;
    if (this.head === this.queue.length) {
      this.queue.length = 0;
      this.head = 0;
    } else if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    return m;
  }

  peek(): Message | undefined {
    return this.queue[this.head];
  }

  /** clear: drop everything queued; returns how many messages were dropped. */
  clear(): number {
    const dropped = this.length;
    this.queue = [];
    this.head = 0;
    this.queuedBytes = 0;
    return dropped;
  }

  /** detach: forget the connection (and destroy it); late callbacks of it are ignored. */
  detach(): void {
    const socket = this.socket;
    this.socket = undefined;
    this.generation++;
    this.inflightFrames = 0;
    socket?.destroy();
  }
}

export type PeerState = 'idle' | 'probing' | 'streaming' | 'backoff' | 'closed';

/** PeerStats: what a peer link holds right now (tests, status). */
export interface PeerStats {
  state: PeerState;
  queuedMessages: number;
  queuedBytes: number;
  inflightBytes: number;
  failures: number;
}

