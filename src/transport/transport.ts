/**
 * transport: the peer transport of a chard node — the `Transport` interface the replica uses, and
 * GrpcTransport, its implementation over gRPC (proto/raft.proto, service chard.raft.RaftPeer).
 *
 * Guarantees and why:
 *  - send() never blocks and never buffers without bound: each peer has a bounded queue per lane
 *    (`peerQueueMessagesMax` / `peerQueueBytesMax`; snapshot chunks `snapQueue*`). A message that
 *    does not fit is dropped, counted, and the peer is reported unreachable, which is exactly what
 *    raft needs to know (it falls back to probing that follower). Raft tolerates loss; a stalled
 *    process holding gigabytes of stale appends does not.
 *  - Order is kept per link and lane: one long-lived stream per (peer, lane) carries frames in
 *    the order send() was called, batched (several messages per frame) up to `frameMessagesMax` /
 *    `frameBytesMax`. Bytes written but not yet taken by HTTP/2 are bounded by
 *    `streamInflightBytesMax`, so backpressure reaches the queue (and its drop rule).
 *  - Snapshot chunks never starve heartbeats: they travel on their own lane (a second stream on the
 *    same HTTP/2 connection, which interleaves the two streams' DATA frames), one chunk in flight
 *    at a time, from their own small queue.
 *  - Every frame carries the cluster id; the receiver refuses frames of another cluster and frames
 *    not addressed to itself (ending that stream with FAILED_PRECONDITION, chard-code
 *    WRONG_CLUSTER), and drops frames that fail validation (codec.ts); all of it is counted.
 *    Before streaming, a sender probes the peer (Probe) to check cluster id and node id.
 *  - A broken stream is torn down; its queued messages are dropped, the peer is reported
 *    unreachable, and the next send() after a backoff (`reconnectBackoffMsMin` doubling to
 *    `reconnectBackoffMsMax`, with jitter from a seeded Random) reconnects with a fresh channel.
 *  - Every event is reported through the one `onEvent(name, value)` callback (names start with
 *    `transport.`) and also kept in `counts()`, so tests and metrics see the same numbers.
 *
 * TLS: `credentials: { server, client }` (default insecure); a node with a `tls` config block
 * passes mutual-TLS credentials from tls.ts (nodeCredentials), so a peer without a certificate of
 * the cluster CA fails the TLS handshake before any frame is read.
 */

import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { assert } from '../assert.js';
import { ErrorCode } from '../errors.js';
import { SeededRandom } from '../raft/random.js';
import type { Message, NodeId, Random } from '../raft/types.js';
import {
  type CodecLimits,
  decodeEnvelope,
  defaultCodecLimits,
  encodeEnvelope,
  FrameError,
  messageBytes,
  type WireEnvelope,
} from './codec.js';
import { clientConstructor, serviceDefinition } from './proto.js';

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

/** TransportLimits: every bound of GrpcTransport, in one place. */
export interface TransportLimits {
  /** peerQueueMessagesMax / peerQueueBytesMax: regular-lane queue of one peer. */
  peerQueueMessagesMax: number;
  peerQueueBytesMax: number;
  /** snapQueueMessagesMax / snapQueueBytesMax: snapshot-chunk queue of one peer. */
  snapQueueMessagesMax: number;
  snapQueueBytesMax: number;
  /** frameMessagesMax / frameBytesMax: batching bounds of one frame (gRPC message). */
  frameMessagesMax: number;
  frameBytesMax: number;
  /** streamInflightBytesMax: bytes written to a regular stream and not yet taken by HTTP/2. */
  streamInflightBytesMax: number;
  /** snapInflightFramesMax: snapshot frames written and not yet taken by HTTP/2. */
  snapInflightFramesMax: number;
  /** probeTimeoutMs: deadline of the identity probe before streaming. */
  probeTimeoutMs: number;
  /** reconnectBackoffMsMin / Max: pause after a failure, doubling per consecutive failure. */
  reconnectBackoffMsMin: number;
  reconnectBackoffMsMax: number;
  /** keepaliveTimeMs / keepaliveTimeoutMs: HTTP/2 pings that detect a silently dead peer. */
  keepaliveTimeMs: number;
  keepaliveTimeoutMs: number;
  /** ackEveryFrames: the receiver acknowledges progress every this many frames. */
  ackEveryFrames: number;
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
  codec: defaultCodecLimits,
};

/** frameOverheadBytes: headroom of the gRPC message size limit over frameBytesMax. */
const frameOverheadBytes = 64 * 1024;

export interface TransportCredentials {
  server: grpc.ServerCredentials;
  client: grpc.ChannelCredentials;
}

export interface GrpcTransportOptions {
  clusterId: string;
  nodeId: NodeId;
  /** listen: host:port to bind; port 0 lets the OS pick (see address()). */
  listen: string;
  credentials?: TransportCredentials;
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
const refusalLogIntervalMs = 1000;
const refusalLogPeersMax = 1024;

/** chardCodeKey: the metadata key carrying a ChardError code (as grpc-server.ts). */
const chardCodeKey = 'chard-code';

function refusal(code: grpc.status, chardCode: string, details: string): grpc.ServiceError {
  const metadata = new grpc.Metadata();
  metadata.set(chardCodeKey, chardCode);
  return Object.assign(new Error(details), { code, details, metadata });
}

type LaneName = 'regular' | 'snap';

/**
 * Lane: one bounded queue and the stream that drains it. `queue[head..]` is what waits; a slot is
 * cleared as its message is taken, so a sent message (and the entry data it carries, up to
 * frameBytesMax per frame) is not kept alive by the queue until the array is next compacted —
 * which an idle lane never reached: after a 1 MiB write job a node kept up to 1,024 sent App
 * messages per peer.
 */
export class Lane {
  queue: (Message | undefined)[] = [];
  head = 0;
  queuedBytes = 0;
  stream: grpc.ClientDuplexStream<WireEnvelope, { frames: number }> | undefined;
  /** generation: bumped when the stream is replaced, so late write callbacks are ignored. */
  generation = 0;
  inflightBytes = 0;
  inflightFrames = 0;

  constructor(
    readonly name: LaneName,
    readonly messagesMax: number,
    readonly bytesMax: number,
    readonly frameMessagesMax: number,
    readonly inflightBytesMax: number,
    readonly inflightFramesMax: number,
  ) {}

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

  /**
   * detach: forget the stream and cancel it on a LATER event-loop turn. A link fails from inside
   * grpc-js's own teardown of a dropped connection (a keepalive timeout delivers each call's
   * status between its per-call and its session-destroying setImmediate callbacks); sending
   * RST_STREAM into that half-torn-down HTTP/2 session made Node 20 loop in SendPendingData with
   * memory growing without bound (test/transport/paused-peer.test.ts). One turn later the
   * session is destroyed and the cancel is a no-op; on a live connection it still frees the call.
   */
  detach(): void {
    const stream = this.stream;
    this.stream = undefined;
    this.generation++;
    this.inflightBytes = 0;
    this.inflightFrames = 0;
    if (stream !== undefined) {
      stream.removeAllListeners();
      stream.on('error', () => {}); // a cancelled call reports CANCELLED; nobody listens any more
      setImmediate(() => stream.cancel());
    }
  }
}

type PeerState = 'idle' | 'probing' | 'streaming' | 'backoff' | 'closed';

class Peer {
  state: PeerState = 'idle';
  client: grpc.Client | undefined;
  failures = 0;
  backoffTimer: NodeJS.Timeout | undefined;
  /** unreachableReported: reported in the current trouble episode (cleared by a successful write). */
  unreachableReported = false;
  /** attempt: bumped per connection attempt so callbacks of an old attempt are ignored. */
  attempt = 0;
  readonly lanes: Record<LaneName, Lane>;

  constructor(
    readonly id: NodeId,
    readonly address: string,
    limits: TransportLimits,
  ) {
    this.lanes = {
      regular: new Lane(
        'regular',
        limits.peerQueueMessagesMax,
        limits.peerQueueBytesMax,
        limits.frameMessagesMax,
        limits.streamInflightBytesMax,
        Number.MAX_SAFE_INTEGER,
      ),
      snap: new Lane('snap', limits.snapQueueMessagesMax, limits.snapQueueBytesMax, 1, Number.MAX_SAFE_INTEGER, limits.snapInflightFramesMax),
    };
  }
}

/** PeerStats: what a peer link holds right now (tests, status). */
export interface PeerStats {
  state: PeerState;
  queuedMessages: number;
  queuedBytes: number;
  inflightBytes: number;
  failures: number;
}

const RaftPeerClient = clientConstructor('raft.proto', 'chard.raft.RaftPeer');

/** GrpcTransport: Transport over gRPC streams; see the module comment for its guarantees. */
export class GrpcTransport implements Transport {
  readonly clusterId: string;
  readonly nodeId: NodeId;
  readonly limits: TransportLimits;
  private readonly listenAddress: string;
  private readonly credentials: TransportCredentials;
  private readonly peerUnit: string | undefined;
  private readonly random: Random;
  private readonly userOnEvent: ((name: string, value?: number) => void) | undefined;
  private readonly logger: TransportLogger | undefined;
  /** refusalsLogged: per peer address, when its last refusal was logged and how many since. */
  private readonly refusalsLogged = new Map<string, { atMs: number; suppressed: number }>();
  private readonly eventCounts = new Map<string, number>();
  private readonly peers = new Map<NodeId, Peer>();
  private readonly serverCalls = new Set<grpc.ServerDuplexStream<WireEnvelope, { frames: number }>>();
  private server: grpc.Server | undefined;
  private boundAddress = '';
  private messageHandler: (m: Message) => void = () => {};
  private unreachableHandler: (peer: NodeId) => void = () => {};
  private flushScheduled = false;
  private closed = false;

  constructor(options: GrpcTransportOptions) {
    assert(Number.isSafeInteger(options.nodeId) && options.nodeId > 0, 'node id must be a positive safe integer');
    assert(options.clusterId.length > 0, 'cluster id must not be empty');
    this.clusterId = options.clusterId;
    this.nodeId = options.nodeId;
    this.listenAddress = options.listen;
    this.limits = { ...defaultTransportLimits, ...options.limits };
    assert(this.limits.peerQueueMessagesMax > 0 && this.limits.snapQueueMessagesMax > 0, 'queues must hold a message');
    assert(this.limits.frameMessagesMax > 0 && this.limits.frameMessagesMax <= this.limits.codec.messagesPerFrameMax, 'frameMessagesMax');
    assert(this.limits.reconnectBackoffMsMin > 0 && this.limits.reconnectBackoffMsMin <= this.limits.reconnectBackoffMsMax, 'backoff');
    this.credentials = options.credentials ?? {
      server: grpc.ServerCredentials.createInsecure(),
      client: grpc.credentials.createInsecure(),
    };
    this.peerUnit = options.peerUnit;
    this.random = options.random ?? new SeededRandom(options.nodeId);
    this.userOnEvent = options.onEvent;
    this.logger = options.logger;
  }

  // ---------------------------------------------------------------- events

  private event(name: string, value = 1): void {
    this.eventCounts.set(name, (this.eventCounts.get(name) ?? 0) + value);
    this.userOnEvent?.(name, value);
  }

  /** counts: every event counted so far (the same numbers onEvent received). */
  counts(): Record<string, number> {
    return Object.fromEntries(this.eventCounts);
  }

  /** peerStats: the state of the link to `id`, or undefined for an unknown peer. */
  peerStats(id: NodeId): PeerStats | undefined {
    const peer = this.peers.get(id);
    if (peer === undefined) return undefined;
    const { regular, snap } = peer.lanes;
    return {
      state: peer.state,
      queuedMessages: regular.length + snap.length,
      queuedBytes: regular.queuedBytes + snap.queuedBytes,
      inflightBytes: regular.inflightBytes + snap.inflightBytes,
      failures: peer.failures,
    };
  }

  // ---------------------------------------------------------------- Transport

  private channelOptions(): grpc.ChannelOptions {
    const messageBytesMax = this.limits.frameBytesMax + frameOverheadBytes;
    return {
      'grpc.max_send_message_length': messageBytesMax,
      'grpc.max_receive_message_length': messageBytesMax,
      'grpc.keepalive_time_ms': this.limits.keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': this.limits.keepaliveTimeoutMs,
      'grpc.initial_reconnect_backoff_ms': this.limits.reconnectBackoffMsMin,
      'grpc.max_reconnect_backoff_ms': this.limits.reconnectBackoffMsMax,
      // One connection per peer client, never shared with another transport in this process.
      'grpc.use_local_subchannel_pool': 1,
    };
  }

  async start(): Promise<void> {
    assert(this.server === undefined, 'transport started twice');
    assert(!this.closed, 'transport closed');
    const server = new grpc.Server(this.channelOptions());
    server.addService(serviceDefinition('raft.proto', 'chard.raft.RaftPeer'), {
      Stream: (call: grpc.ServerDuplexStream<WireEnvelope, { frames: number }>) => this.serveStream(call),
      Probe: (
        call: grpc.ServerUnaryCall<{ cluster_id: string; from: number; to: number }, unknown>,
        callback: grpc.sendUnaryData<{ cluster_id: string; node_id: number }>,
      ) => this.serveProbe(call, callback),
    });
    this.server = server;
    const port = await new Promise<number>((resolve, reject) =>
      server.bindAsync(this.listenAddress, this.credentials.server, (error, boundPort) => (error ? reject(error) : resolve(boundPort))),
    );
    const host = this.listenAddress.slice(0, this.listenAddress.lastIndexOf(':'));
    this.boundAddress = `${host}:${port}`;
    this.event('transport.listening');
  }

  address(): string {
    assert(this.boundAddress !== '', 'address() before start()');
    return this.boundAddress;
  }

  onMessage(handler: (m: Message) => void): void {
    this.messageHandler = handler;
  }

  onUnreachable(handler: (peer: NodeId) => void): void {
    this.unreachableHandler = handler;
  }

  addPeer(id: NodeId, address: string): void {
    assert(Number.isSafeInteger(id) && id > 0, 'peer id must be a positive safe integer');
    if (id === this.nodeId || this.closed) return;
    const existing = this.peers.get(id);
    if (existing !== undefined) {
      if (existing.address === address) return;
      this.removePeer(id);
    }
    this.peers.set(id, new Peer(id, address, this.limits));
  }

  removePeer(id: NodeId): void {
    const peer = this.peers.get(id);
    if (peer === undefined) return;
    this.peers.delete(id);
    this.shutPeer(peer);
    peer.state = 'closed';
  }

  send(messages: Message[]): void {
    if (this.closed) return;
    for (const m of messages) {
      assert(m.from === this.nodeId, `message from ${m.from} sent by node ${this.nodeId}`);
      const peer = this.peers.get(m.to);
      if (peer === undefined) {
        this.event('transport.send.dropped.unknown-peer');
        continue;
      }
      const bytes = messageBytes(m);
      if (bytes > this.limits.frameBytesMax) {
        this.event('transport.send.dropped.too-large');
        this.reportUnreachable(peer);
        continue;
      }
      if (peer.state === 'backoff') {
        // Keep it (bounded by the lane) for the reconnect when the backoff ends: dropping here
        // would lose, for instance, the first PreVote to a peer that restarted meanwhile.
        this.event('transport.send.queued.disconnected');
        this.reportUnreachable(peer);
      }
      const lane = m.type === 'Snap' ? peer.lanes.snap : peer.lanes.regular;
      if (!lane.fits(bytes)) {
        this.event(`transport.send.dropped.overflow`);
        this.reportUnreachable(peer);
        continue;
      }
      lane.push(m, bytes);
      if (peer.state === 'idle') this.connect(peer);
    }
    this.scheduleFlush();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const peer of this.peers.values()) {
      this.shutPeer(peer);
      peer.state = 'closed';
    }
    this.peers.clear();
    for (const call of this.serverCalls) call.end();
    this.serverCalls.clear();
    const server = this.server;
    if (server !== undefined) {
      server.forceShutdown();
      this.server = undefined;
    }
    this.event('transport.closed');
  }

  // ---------------------------------------------------------------- sending side

  private reportUnreachable(peer: Peer): void {
    if (peer.unreachableReported) return;
    peer.unreachableReported = true;
    this.event('transport.peer.unreachable');
    this.unreachableHandler(peer.id);
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    // setImmediate: every send() of one event-loop turn shares frames (batching).
    setImmediate(() => {
      this.flushScheduled = false;
      if (this.closed) return;
      for (const peer of this.peers.values()) if (peer.state === 'streaming') this.pumpPeer(peer);
    });
  }

  private connect(peer: Peer): void {
    assert(peer.state === 'idle', `connect from state ${peer.state}`);
    peer.state = 'probing';
    const attempt = ++peer.attempt;
    if (peer.client === undefined) {
      peer.client = new RaftPeerClient(peer.address, this.credentials.client, this.channelOptions());
    }
    const client = peer.client as unknown as {
      Probe(
        request: { cluster_id: string; from: number; to: number },
        options: grpc.CallOptions,
        callback: (error: grpc.ServiceError | null, response?: { cluster_id: string; node_id: number }) => void,
      ): grpc.ClientUnaryCall;
    };
    this.event('transport.peer.connecting');
    client.Probe(
      { cluster_id: this.clusterId, from: this.nodeId, to: peer.id },
      { deadline: Date.now() + this.limits.probeTimeoutMs },
      (error, response) => {
        if (peer.state !== 'probing' || peer.attempt !== attempt) return;
        if (error !== null || response === undefined) {
          const code = error?.metadata?.get(chardCodeKey)[0];
          if (code === ErrorCode.WrongCluster) this.event('transport.peer.refused.wrong-cluster');
          this.failPeer(peer, 'probe-failed');
          return;
        }
        if (response.cluster_id !== this.clusterId || response.node_id !== peer.id) {
          this.event('transport.peer.refused.wrong-cluster');
          this.failPeer(peer, 'wrong-identity');
          return;
        }
        this.openStreams(peer);
      },
    );
  }

  private openStreams(peer: Peer): void {
    const client = peer.client as unknown as { Stream(): grpc.ClientDuplexStream<WireEnvelope, { frames: number }> };
    assert(client !== undefined, 'streams without a client');
    peer.state = 'streaming';
    const attempt = peer.attempt;
    for (const lane of Object.values(peer.lanes)) {
      const stream = client.Stream();
      lane.stream = stream;
      stream.on('data', () => {
        // The receiver accepted the stream (first Ack) or made progress: the link works.
        if (peer.attempt !== attempt) return;
        if (peer.failures !== 0) this.event('transport.peer.recovered');
        peer.failures = 0;
      });
      stream.on('error', (error: grpc.ServiceError) => {
        if (peer.attempt !== attempt || peer.state !== 'streaming') return;
        if (error.metadata?.get(chardCodeKey)[0] === ErrorCode.WrongCluster) this.event('transport.peer.refused.wrong-cluster');
        this.failPeer(peer, `stream-${lane.name}-error`);
      });
      stream.on('end', () => {
        if (peer.attempt !== attempt || peer.state !== 'streaming') return;
        this.failPeer(peer, `stream-${lane.name}-end`);
      });
    }
    this.event('transport.peer.connected');
    this.pumpPeer(peer);
  }

  private pumpPeer(peer: Peer): void {
    this.pumpLane(peer, peer.lanes.regular);
    this.pumpLane(peer, peer.lanes.snap);
  }

  /** pumpLane: write frames while the lane has messages and the in-flight bounds allow. */
  private pumpLane(peer: Peer, lane: Lane): void {
    while (
      lane.stream !== undefined &&
      lane.length > 0 &&
      lane.inflightBytes < lane.inflightBytesMax &&
      lane.inflightFrames < lane.inflightFramesMax
    ) {
      const batch: Message[] = [];
      let frameBytes = 0;
      for (let next = lane.peek(); next !== undefined && batch.length < lane.frameMessagesMax; next = lane.peek()) {
        const bytes = messageBytes(next);
        if (batch.length > 0 && frameBytes + bytes > this.limits.frameBytesMax) break;
        batch.push(lane.shift());
        frameBytes += bytes;
      }
      lane.queuedBytes -= frameBytes;
      lane.inflightBytes += frameBytes;
      lane.inflightFrames++;
      const generation = lane.generation;
      lane.stream.write(encodeEnvelope(this.clusterId, this.nodeId, peer.id, batch), () => {
        if (lane.generation !== generation) return;
        lane.inflightBytes -= frameBytes;
        lane.inflightFrames--;
        peer.unreachableReported = false;
        this.pumpLane(peer, lane);
      });
      this.event('transport.frames.sent');
      this.event('transport.messages.sent', batch.length);
    }
  }

  /** failPeer: tear the link down, drop what was queued, report, and back off. */
  private failPeer(peer: Peer, reason: string): void {
    if (this.closed || peer.state === 'closed') return;
    this.event(`transport.peer.failed.${reason}`);
    this.shutPeer(peer);
    peer.failures++;
    peer.state = 'backoff';
    this.reportUnreachable(peer);
    const exponent = Math.min(peer.failures - 1, 30);
    const ceiling = Math.min(this.limits.reconnectBackoffMsMax, this.limits.reconnectBackoffMsMin * 2 ** exponent);
    // Jitter in [ceiling/2, ceiling): peers that failed together do not reconnect in lockstep.
    const delayMs = Math.max(1, Math.floor(ceiling / 2) + this.random.int(Math.max(1, Math.ceil(ceiling / 2))));
    peer.backoffTimer = setTimeout(() => {
      peer.backoffTimer = undefined;
      if (peer.state !== 'backoff') return;
      this.endBackoff(peer);
    }, delayMs);
    peer.backoffTimer.unref?.();
  }

  /** endBackoff: the peer may be tried again; reconnect now if messages wait for it. */
  private endBackoff(peer: Peer): void {
    if (peer.backoffTimer !== undefined) clearTimeout(peer.backoffTimer);
    peer.backoffTimer = undefined;
    peer.state = 'idle';
    peer.unreachableReported = false;
    if (Object.values(peer.lanes).some((lane) => lane.length > 0)) this.connect(peer);
  }

  private shutPeer(peer: Peer): void {
    peer.attempt++;
    if (peer.backoffTimer !== undefined) clearTimeout(peer.backoffTimer);
    peer.backoffTimer = undefined;
    for (const lane of Object.values(peer.lanes)) {
      lane.detach();
      const dropped = lane.clear();
      if (dropped > 0) this.event('transport.send.dropped.link-down', dropped);
    }
    // A fresh channel per connection: our backoff is then the only one (not grpc-js's as well).
    peer.client?.close();
    peer.client = undefined;
  }

  // ---------------------------------------------------------------- receiving side

  /** peerRefusal: the refusal of a caller whose certificate is not a node's (see `peerUnit`). */
  private peerRefusal(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }): grpc.ServiceError | undefined {
    if (this.peerUnit === undefined) return undefined;
    const unit = call.getAuthContext()?.sslPeerCertificate?.subject?.OU;
    const units = Array.isArray(unit) ? unit : [unit];
    if (units.includes(this.peerUnit)) return undefined;
    this.event('transport.peer.refused.certificate');
    return refusal(grpc.status.PERMISSION_DENIED, ErrorCode.FailedPrecondition, `a raft peer needs a certificate with OU=${this.peerUnit}`);
  }

  private serveProbe(
    call: grpc.ServerUnaryCall<{ cluster_id: string; from: number; to: number }, unknown>,
    callback: grpc.sendUnaryData<{ cluster_id: string; node_id: number }>,
  ): void {
    const refused = this.peerRefusal(call);
    if (refused !== undefined) {
      callback(refused);
      return;
    }
    const request = call.request;
    if (request.cluster_id !== this.clusterId || request.to !== this.nodeId) {
      this.event('transport.probe.refused');
      callback(
        refusal(
          grpc.status.FAILED_PRECONDITION,
          ErrorCode.WrongCluster,
          `node ${this.nodeId} of cluster ${this.clusterId} is not node ${request.to} of cluster ${request.cluster_id}`,
        ),
      );
      return;
    }
    callback(null, { cluster_id: this.clusterId, node_id: this.nodeId });
    // The peer just reached us, so it is up: stop backing off from it.
    const peer = this.peers.get(request.from);
    if (peer !== undefined && peer.state === 'backoff') {
      this.event('transport.peer.backoff-ended-by-probe');
      peer.failures = 0;
      this.endBackoff(peer);
    }
  }

  /** logRefusal: one warning per peer address per refusalLogIntervalMs, with the count suppressed. */
  private logRefusal(call: grpc.ServerDuplexStream<WireEnvelope, { frames: number }>, reason: string, error: unknown): void {
    if (this.logger === undefined) return;
    let peer = 'unknown';
    try {
      peer = call.getPeer();
    } catch {
      // a call torn down meanwhile has no peer any more
    }
    const now = performance.now();
    const last = this.refusalsLogged.get(peer);
    if (last !== undefined && now - last.atMs < refusalLogIntervalMs) {
      last.suppressed++;
      return;
    }
    if (last === undefined && this.refusalsLogged.size >= refusalLogPeersMax) this.refusalsLogged.clear();
    this.refusalsLogged.set(peer, { atMs: now, suppressed: 0 });
    this.logger.warn(
      { peer, reason, err: error instanceof Error ? error.message : String(error), suppressed: last?.suppressed ?? 0 },
      'refused a raft frame from a peer',
    );
  }

  private serveStream(call: grpc.ServerDuplexStream<WireEnvelope, { frames: number }>): void {
    if (this.closed) {
      call.end();
      return;
    }
    const refused = this.peerRefusal(call);
    if (refused !== undefined) {
      setImmediate(() => call.emit('error', refused));
      return;
    }
    this.serverCalls.add(call);
    this.event('transport.stream.accepted');
    let frames = 0;
    call.write({ frames: 0 });
    call.on('data', (wire: WireEnvelope) => {
      if (this.closed) return;
      let envelope;
      try {
        envelope = decodeEnvelope(wire, this.limits.codec);
      } catch (error) {
        // Whatever a peer sends, it is answered by a counted refusal, never by an exception.
        const reason = error instanceof FrameError ? error.reason : 'undecodable';
        this.event('transport.frame.rejected');
        this.event(`transport.frame.rejected.${reason}`);
        this.logRefusal(call, reason, error);
        return;
      }
      if (envelope.clusterId !== this.clusterId || envelope.to !== this.nodeId) {
        const wrongCluster = envelope.clusterId !== this.clusterId;
        this.event(wrongCluster ? 'transport.frame.wrong-cluster' : 'transport.frame.wrong-node');
        this.event('transport.messages.refused', envelope.messages.length);
        this.serverCalls.delete(call);
        call.removeAllListeners('data');
        const error = refusal(
          grpc.status.FAILED_PRECONDITION,
          ErrorCode.WrongCluster,
          wrongCluster ? `frame of cluster ${envelope.clusterId} refused by cluster ${this.clusterId}` : `frame for node ${envelope.to} refused by node ${this.nodeId}`,
        );
        // Not from inside this 'data' callback, which may run while HTTP/2 is still parsing
        // received bytes: ending a stream there is the use-after-free class of Node's http2.
        setImmediate(() => call.emit('error', error));
        return;
      }
      frames++;
      this.event('transport.frames.received');
      this.event('transport.messages.received', envelope.messages.length);
      for (const m of envelope.messages) this.messageHandler(m);
      if (frames % this.limits.ackEveryFrames === 0) call.write({ frames });
    });
    const forget = () => {
      this.serverCalls.delete(call);
    };
    call.on('end', () => {
      forget();
      call.end();
    });
    call.on('error', forget);
    call.on('cancelled', forget);
  }
}
