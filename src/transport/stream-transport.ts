/**
 * stream-transport: StreamTransport, the raft peer transport over length-prefixed frames
 * (framing.ts) on node:net, or node:tls with a node certificate set. It keeps every guarantee
 * listed in transport.ts; docs/transport.md has the wire format and why it replaced gRPC.
 *
 * Per peer and lane (regular, snap) the sender opens one connection and says Hello {cluster id,
 * from, to, lane}; the receiver answers HelloOk {cluster id, node id} or a Refusal {code, details}
 * and closes. Then the sender writes envelope frames (the protobuf bytes of chard.raft.Envelope)
 * and the receiver answers with an ack every ackEveryFrames frames and a pong to every ping.
 * Connections are one-way for raft traffic: each node dials its peers for what it sends.
 *
 * Receiving is where peer input enters: a framing violation (unknown kind, a length above the
 * kind's limit, checked before buffering), bytes that are no Envelope, a control frame that
 * breaks its schema or a frame out of order is counted (`transport.frame.rejected[.<reason>]`),
 * logged (rate-limited) and ends the connection; an envelope that decodes but breaks a codec rule
 * is dropped and counted while the connection goes on, as before; nothing a peer sends throws.
 */

import net from 'node:net';
import tls from 'node:tls';
import { assert } from '../assert.js';
import { ErrorCode } from '../errors.js';
import { SeededRandom } from '../raft/random.js';
import type { Message, NodeId, Random } from '../raft/types.js';
import { decodeEnvelope, encodeEnvelope, FrameError, messageBytes, type WireEnvelope } from './codec.js';
import { controlFrameBytesMax, encodeAck, encodeControl, encodeFrame, type Frame, FrameDecoder, frameHeader, FrameKind, FramingError } from './framing.js';
import { deserializeEnvelope, serializeEnvelope } from './proto.js';
import {
  defaultTransportLimits,
  frameOverheadBytes,
  Lane,
  type LaneName,
  type PeerState,
  type PeerStats,
  refusalLogIntervalMs,
  refusalLogPeersMax,
  type StreamTransportOptions,
  type Transport,
  type TransportLimits,
  type TransportLogger,
} from './transport.js';
import type { CertSet } from './tls.js';

/** Hello: the client's first frame on a connection. */
export interface Hello {
  cluster_id: string;
  from: NodeId;
  to: NodeId;
  lane: LaneName;
}
/** HelloOk: the server's answer to an accepted Hello. */
export interface HelloOk {
  cluster_id: string;
  node_id: NodeId;
}
/** Refusal: the server's answer to a refused Hello or envelope; the connection closes after it. */
export interface Refusal {
  code: string;
  details: string;
}

/** ControlError: a control frame that breaks its schema (counted as `bad-<kind>`). */
class ControlError extends Error {
  constructor(readonly reason: string) {
    super(`bad control frame (${reason})`);
  }
}

function parseJson(payload: Buffer, reason: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new ControlError(reason);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ControlError(reason);
  return value as Record<string, unknown>;
}

const isNodeId = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v > 0;

/** parseHello: a validated Hello (cluster id bounded by the codec's clusterIdBytesMax). */
export function parseHello(payload: Buffer, clusterIdBytesMax: number): Hello {
  const v = parseJson(payload, 'bad-hello');
  const { cluster_id, from, to, lane } = v;
  if (typeof cluster_id !== 'string' || cluster_id.length > clusterIdBytesMax || !isNodeId(from) || !isNodeId(to) || (lane !== 'regular' && lane !== 'snap')) {
    throw new ControlError('bad-hello');
  }
  return { cluster_id, from, to, lane };
}

function parseHelloOk(payload: Buffer): HelloOk {
  const v = parseJson(payload, 'bad-hello-ok');
  if (typeof v['cluster_id'] !== 'string' || !isNodeId(v['node_id'])) throw new ControlError('bad-hello-ok');
  return { cluster_id: v['cluster_id'], node_id: v['node_id'] };
}

function parseRefusal(payload: Buffer): Refusal {
  const v = parseJson(payload, 'bad-refusal');
  if (typeof v['code'] !== 'string' || typeof v['details'] !== 'string') throw new ControlError('bad-refusal');
  return { code: v['code'], details: v['details'] };
}

/** splitAddress: host and port of "host:port" / "[v6]:port". */
export function splitAddress(address: string): { host: string; port: number } {
  const colon = address.lastIndexOf(':');
  assert(colon > 0, `address ${address} has no port`);
  let host = address.slice(0, colon);
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  const port = Number(address.slice(colon + 1));
  assert(Number.isInteger(port) && port >= 0 && port < 65536, `address ${address} has no valid port`);
  return { host, port };
}

function validAddress(address: string): boolean {
  const colon = address.lastIndexOf(':');
  const port = Number(address.slice(colon + 1));
  return colon > 0 && address.slice(colon + 1) !== '' && Number.isInteger(port) && port > 0 && port < 65536;
}

/** ClientLink: the sending side of one (peer, lane) connection. */
interface ClientLink {
  socket: net.Socket;
  decoder: FrameDecoder;
  lastReceivedMs: number;
  pingSent: boolean;
}

class Peer {
  state: PeerState = 'idle';
  failures = 0;
  backoffTimer: NodeJS.Timeout | undefined;
  probeTimer: NodeJS.Timeout | undefined;
  /** unreachableReported: reported in the current trouble episode (cleared by a successful write). */
  unreachableReported = false;
  /** attempt: bumped per connection attempt so callbacks of an old attempt are ignored. */
  attempt = 0;
  readonly lanes: Record<LaneName, Lane>;
  links: Partial<Record<LaneName, ClientLink>> = {};

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

/** ServerConnection: the receiving side of one connection from a peer. */
interface ServerConnection {
  socket: net.Socket;
  decoder: FrameDecoder;
  remote: string;
  acceptedMs: number;
  lastReceivedMs: number;
  hello: Hello | undefined;
  /** done: refused or torn down; whatever else arrives is ignored. */
  done: boolean;
  frames: number;
}

/** StreamTransport: Transport over framed TCP / TLS streams; see the module comment. */
export class StreamTransport implements Transport {
  readonly clusterId: string;
  readonly nodeId: NodeId;
  readonly limits: TransportLimits;
  private readonly listenAddress: string;
  private readonly certs: CertSet | undefined;
  private readonly peerUnit: string | undefined;
  private readonly random: Random;
  private readonly userOnEvent: ((name: string, value?: number) => void) | undefined;
  private readonly logger: TransportLogger | undefined;
  private readonly envelopeBytesMax: number;
  /** refusalsLogged: per peer address, when its last refusal was logged and how many since. */
  private readonly refusalsLogged = new Map<string, { atMs: number; suppressed: number }>();
  private readonly eventCounts = new Map<string, number>();
  private readonly peers = new Map<NodeId, Peer>();
  private readonly serverConnections = new Set<ServerConnection>();
  /** acceptedSockets: every TCP connection the listener holds (also those still in a TLS handshake). */
  private readonly acceptedSockets = new Set<net.Socket>();
  private server: net.Server | undefined;
  private livenessTimer: NodeJS.Timeout | undefined;
  private boundAddress = '';
  private messageHandler: (m: Message) => void = () => {};
  private unreachableHandler: (peer: NodeId) => void = () => {};
  private flushScheduled = false;
  private closed = false;

  constructor(options: StreamTransportOptions) {
    assert(Number.isSafeInteger(options.nodeId) && options.nodeId > 0, 'node id must be a positive safe integer');
    assert(options.clusterId.length > 0, 'cluster id must not be empty');
    this.clusterId = options.clusterId;
    this.nodeId = options.nodeId;
    this.listenAddress = options.listen;
    this.limits = { ...defaultTransportLimits, ...options.limits };
    assert(this.limits.peerQueueMessagesMax > 0 && this.limits.snapQueueMessagesMax > 0, 'queues must hold a message');
    assert(this.limits.frameMessagesMax > 0 && this.limits.frameMessagesMax <= this.limits.codec.messagesPerFrameMax, 'frameMessagesMax');
    assert(this.limits.reconnectBackoffMsMin > 0 && this.limits.reconnectBackoffMsMin <= this.limits.reconnectBackoffMsMax, 'backoff');
    assert(this.limits.keepaliveTimeMs > 0 && this.limits.keepaliveTimeoutMs > 0, 'keepalive');
    assert(this.limits.ackEveryFrames > 0, 'ackEveryFrames');
    this.envelopeBytesMax = this.limits.frameBytesMax + frameOverheadBytes;
    this.certs = options.tls;
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

  async start(): Promise<void> {
    assert(this.server === undefined, 'transport started twice');
    assert(!this.closed, 'transport closed');
    const { host, port } = splitAddress(this.listenAddress);
    let server: net.Server;
    if (this.certs !== undefined) {
      server = tls.createServer(
        {
          key: this.certs.key,
          cert: this.certs.cert,
          ca: this.certs.ca,
          requestCert: true,
          rejectUnauthorized: true,
          minVersion: 'TLSv1.2',
          // A stranger stalling in the handshake holds a slot no longer than a stalled Hello would.
          handshakeTimeout: this.limits.probeTimeoutMs,
        },
        (socket) => this.serve(socket),
      );
      // A handshake that fails (no certificate, another CA, plaintext) never reaches serve().
      // With a listener, Node leaves the socket to it (a timed-out handshake stayed open).
      server.on('tlsClientError', (_error: Error, socket: tls.TLSSocket) => {
        this.event('transport.tls.refused');
        socket.destroy();
      });
    } else {
      server = net.createServer((socket) => this.serve(socket));
    }
    // Every accepted TCP connection, TLS handshake or not: bounded, and destroyed by close().
    server.on('connection', (socket: net.Socket) => {
      if (this.closed || this.acceptedSockets.size >= this.limits.inboundConnectionsMax) {
        this.event('transport.stream.refused.too-many');
        socket.destroy();
        return;
      }
      this.acceptedSockets.add(socket);
      socket.once('close', () => this.acceptedSockets.delete(socket));
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (error) => this.logger?.warn({ err: error.message }, 'raft listener error'));
    const bound = server.address() as net.AddressInfo;
    this.boundAddress = `${this.listenAddress.slice(0, this.listenAddress.lastIndexOf(':'))}:${bound.port}`;
    const { keepaliveTimeMs, keepaliveTimeoutMs } = this.limits;
    this.livenessTimer = setInterval(() => this.checkLiveness(), Math.max(10, Math.floor(Math.min(keepaliveTimeMs, keepaliveTimeoutMs) / 4)));
    this.livenessTimer.unref?.();
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
    if (this.livenessTimer !== undefined) clearInterval(this.livenessTimer);
    for (const peer of this.peers.values()) {
      this.shutPeer(peer);
      peer.state = 'closed';
    }
    this.peers.clear();
    for (const connection of this.serverConnections) connection.socket.destroy();
    this.serverConnections.clear();
    for (const socket of this.acceptedSockets) socket.destroy();
    this.acceptedSockets.clear();
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) await new Promise<void>((resolve) => server.close(() => resolve()));
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
    this.event('transport.peer.connecting');
    if (!validAddress(peer.address)) {
      // A member address that is no host:port (it came from the membership, not from a peer):
      // the link fails and backs off like an unreachable peer instead of throwing out of send().
      this.failPeer(peer, 'bad-address');
      return;
    }
    for (const lane of Object.values(peer.lanes)) this.openLink(peer, lane, attempt);
    peer.probeTimer = setTimeout(() => {
      peer.probeTimer = undefined;
      if (peer.attempt === attempt && peer.state === 'probing') this.failPeer(peer, 'probe-failed');
    }, this.limits.probeTimeoutMs);
    peer.probeTimer.unref?.();
  }

  private openLink(peer: Peer, lane: Lane, attempt: number): void {
    const { host, port } = splitAddress(peer.address);
    const certs = this.certs;
    // With TLS, the peer's certificate must be signed by the cluster CA and name the host we dial
    // (tls.checkServerIdentity against `host`: `chard certs init` puts the node's names and
    // addresses in its subjectAltName), as the gRPC client checked before.
    const socket: net.Socket =
      certs === undefined
        ? net.connect({ host, port })
        : tls.connect({ host, port, ca: certs.ca, cert: certs.cert, key: certs.key, minVersion: 'TLSv1.2', ...(net.isIP(host) === 0 ? { servername: host } : {}) });
    socket.setNoDelay(true);
    const link: ClientLink = {
      socket,
      decoder: new FrameDecoder({ envelopeBytesMax: 0 }), // a server sends no envelopes
      lastReceivedMs: performance.now(),
      pingSent: false,
    };
    peer.links[lane.name] = link;
    const current = () => peer.attempt === attempt && (peer.state === 'probing' || peer.state === 'streaming');
    socket.once(certs === undefined ? 'connect' : 'secureConnect', () => {
      if (!current()) return;
      const hello: Hello = { cluster_id: this.clusterId, from: this.nodeId, to: peer.id, lane: lane.name };
      socket.write(encodeControl(FrameKind.Hello, hello));
    });
    socket.on('data', (chunk: Buffer) => {
      if (!current()) return;
      this.clientData(peer, lane, link, attempt, chunk);
    });
    socket.on('drain', () => {
      if (!current() || lane.socket !== socket) return;
      peer.unreachableReported = false;
      this.pumpLane(peer, lane);
    });
    socket.on('error', () => {}); // 'close' follows and fails the link
    socket.on('close', () => {
      if (!current()) return;
      this.failPeer(peer, peer.state === 'streaming' ? `stream-${lane.name}-error` : 'probe-failed');
    });
  }

  private clientData(peer: Peer, lane: Lane, link: ClientLink, attempt: number, chunk: Buffer): void {
    link.lastReceivedMs = performance.now();
    link.pingSent = false;
    let frames: Frame[];
    try {
      frames = link.decoder.push(chunk);
    } catch (error) {
      this.rejectFrame(`${peer.address}`, error instanceof FramingError ? error.reason : 'undecodable', error);
      this.failPeer(peer, `stream-${lane.name}-error`);
      return;
    }
    for (const frame of frames) {
      if (peer.attempt !== attempt) return; // failed meanwhile
      try {
        this.clientFrame(peer, lane, link, frame);
      } catch (error) {
        if (!(error instanceof ControlError)) throw error;
        this.rejectFrame(peer.address, error.reason, error);
        this.failPeer(peer, `stream-${lane.name}-error`);
        return;
      }
    }
  }

  private clientFrame(peer: Peer, lane: Lane, link: ClientLink, frame: Frame): void {
    switch (frame.kind) {
      case FrameKind.HelloOk: {
        const ok = parseHelloOk(frame.payload);
        if (peer.state !== 'probing' || lane.socket !== undefined) throw new ControlError('unexpected-hello-ok');
        if (ok.cluster_id !== this.clusterId || ok.node_id !== peer.id) {
          this.event('transport.peer.refused.wrong-cluster');
          this.failPeer(peer, 'wrong-identity');
          return;
        }
        lane.socket = link.socket;
        if (Object.values(peer.lanes).every((l) => l.socket !== undefined)) this.linkUp(peer);
        return;
      }
      case FrameKind.Refusal: {
        const refusal = parseRefusal(frame.payload);
        if (refusal.code === ErrorCode.WrongCluster) this.event('transport.peer.refused.wrong-cluster');
        this.failPeer(peer, peer.state === 'probing' ? 'probe-failed' : `stream-${lane.name}-error`);
        return;
      }
      case FrameKind.Ack:
      case FrameKind.Pong:
        // The receiver made progress or answered a ping: the link is alive (lastReceivedMs).
        return;
      default:
        throw new ControlError('unexpected-kind');
    }
  }

  /** linkUp: every lane's Hello was answered; stream. */
  private linkUp(peer: Peer): void {
    if (peer.probeTimer !== undefined) clearTimeout(peer.probeTimer);
    peer.probeTimer = undefined;
    peer.state = 'streaming';
    if (peer.failures !== 0) this.event('transport.peer.recovered');
    peer.failures = 0;
    this.event('transport.peer.connected');
    this.pumpPeer(peer);
  }

  private pumpPeer(peer: Peer): void {
    this.pumpLane(peer, peer.lanes.regular);
    this.pumpLane(peer, peer.lanes.snap);
  }

  /** pumpLane: write frames while the lane has messages and the in-flight bounds allow. */
  private pumpLane(peer: Peer, lane: Lane): void {
    const socket = lane.socket;
    if (socket === undefined || lane.length === 0) return;
    socket.cork();
    try {
      while (lane.length > 0 && socket.writableLength < lane.inflightBytesMax && lane.inflightFrames < lane.inflightFramesMax && lane.socket === socket) {
        const batch: Message[] = [];
        let frameBytes = 0;
        for (let next = lane.peek(); next !== undefined && batch.length < lane.frameMessagesMax; next = lane.peek()) {
          const bytes = messageBytes(next);
          if (batch.length > 0 && frameBytes + bytes > this.limits.frameBytesMax) break;
          batch.push(lane.shift());
          frameBytes += bytes;
        }
        lane.queuedBytes -= frameBytes;
        const payload = serializeEnvelope(encodeEnvelope(this.clusterId, this.nodeId, peer.id, batch));
        socket.write(frameHeader(FrameKind.Envelope, payload.length));
        if (lane.inflightFramesMax === Number.MAX_SAFE_INTEGER) {
          if (socket.write(payload)) peer.unreachableReported = false;
        } else {
          // Snapshot lane: one chunk frame in flight; the next is written once the kernel took it.
          lane.inflightFrames++;
          const generation = lane.generation;
          socket.write(payload, () => {
            if (lane.generation !== generation) return;
            lane.inflightFrames--;
            peer.unreachableReported = false;
            this.pumpLane(peer, lane);
          });
        }
        this.event('transport.frames.sent');
        this.event('transport.messages.sent', batch.length);
      }
    } finally {
      socket.uncork();
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
    if (peer.probeTimer !== undefined) clearTimeout(peer.probeTimer);
    peer.probeTimer = undefined;
    for (const lane of Object.values(peer.lanes)) {
      lane.detach();
      const dropped = lane.clear();
      if (dropped > 0) this.event('transport.send.dropped.link-down', dropped);
    }
    for (const link of Object.values(peer.links)) link.socket.destroy();
    peer.links = {};
  }

  /**
   * checkLiveness: client links ping after keepaliveTimeMs of silence and fail after
   * keepaliveTimeMs + keepaliveTimeoutMs; server connections are closed after twice that
   * (the client pings when idle, so only a dead or stopped peer is that silent) and a connection
   * that has not said Hello within probeTimeoutMs is closed.
   */
  private checkLiveness(): void {
    const now = performance.now();
    const { keepaliveTimeMs, keepaliveTimeoutMs, probeTimeoutMs } = this.limits;
    for (const peer of [...this.peers.values()]) {
      if (peer.state !== 'streaming') continue;
      for (const link of Object.values(peer.links)) {
        const silentMs = now - link.lastReceivedMs;
        if (silentMs >= keepaliveTimeMs + keepaliveTimeoutMs) {
          this.failPeer(peer, 'keepalive');
          break;
        }
        if (silentMs >= keepaliveTimeMs && !link.pingSent) {
          link.pingSent = true;
          link.socket.write(encodeFrame(FrameKind.Ping));
          this.event('transport.ping.sent');
        }
      }
    }
    for (const connection of [...this.serverConnections]) {
      if (connection.hello === undefined && now - connection.acceptedMs > probeTimeoutMs) {
        this.event('transport.stream.hello-timeout');
        this.dropConnection(connection);
      } else if (now - connection.lastReceivedMs > 2 * (keepaliveTimeMs + keepaliveTimeoutMs)) {
        this.event('transport.stream.silent-closed');
        this.dropConnection(connection);
      }
    }
  }

  // ---------------------------------------------------------------- receiving side

  private serve(socket: net.Socket): void {
    socket.on('error', () => {}); // a reset peer; 'close' follows
    if (this.closed) {
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    const now = performance.now();
    const connection: ServerConnection = {
      socket,
      // Until the Hello is accepted, no frame may be larger than a control frame: a stranger
      // cannot make us buffer an envelope's worth of bytes.
      decoder: new FrameDecoder({ envelopeBytesMax: controlFrameBytesMax }),
      remote: `${socket.remoteAddress ?? 'unknown'}:${socket.remotePort ?? 0}`,
      acceptedMs: now,
      lastReceivedMs: now,
      hello: undefined,
      done: false,
      frames: 0,
    };
    this.serverConnections.add(connection);
    socket.on('close', () => this.serverConnections.delete(connection));
    if (this.peerUnit !== undefined) {
      const unit = (socket as tls.TLSSocket).getPeerCertificate?.()?.subject?.OU;
      const units = Array.isArray(unit) ? unit : [unit];
      if (!units.includes(this.peerUnit)) {
        this.event('transport.peer.refused.certificate');
        this.refuse(connection, ErrorCode.FailedPrecondition, `a raft peer needs a certificate with OU=${this.peerUnit}`);
        return;
      }
    }
    socket.on('data', (chunk: Buffer) => this.serverData(connection, chunk));
  }

  /** refuse: answer with a Refusal and close; nothing more from this connection is read. */
  private refuse(connection: ServerConnection, code: string, details: string): void {
    connection.done = true;
    const refusal: Refusal = { code, details };
    connection.socket.end(encodeControl(FrameKind.Refusal, refusal));
    connection.socket.removeAllListeners('data');
    // end() flushes the refusal, then waits for the peer's FIN; a peer that sends none is closed.
    const timer = setTimeout(() => connection.socket.destroy(), this.limits.probeTimeoutMs);
    timer.unref?.();
    connection.socket.once('close', () => clearTimeout(timer));
  }

  private dropConnection(connection: ServerConnection): void {
    connection.done = true;
    this.serverConnections.delete(connection);
    connection.socket.destroy();
  }

  /** rejectFrame: count and log (rate-limited) a frame refused at the wire. */
  private rejectFrame(peer: string, reason: string, error: unknown): void {
    this.event('transport.frame.rejected');
    this.event(`transport.frame.rejected.${reason}`);
    this.logRefusal(peer, reason, error);
  }

  /** logRefusal: one warning per peer address per refusalLogIntervalMs, with the count suppressed. */
  private logRefusal(peer: string, reason: string, error: unknown): void {
    if (this.logger === undefined) return;
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

  private serverData(connection: ServerConnection, chunk: Buffer): void {
    if (connection.done || this.closed) return;
    connection.lastReceivedMs = performance.now();
    let frames: Frame[];
    try {
      frames = connection.decoder.push(chunk);
    } catch (error) {
      this.rejectFrame(connection.remote, error instanceof FramingError ? error.reason : 'undecodable', error);
      this.dropConnection(connection);
      return;
    }
    for (const frame of frames) {
      if (connection.done || this.closed) return;
      try {
        this.serverFrame(connection, frame);
      } catch (error) {
        if (!(error instanceof ControlError)) throw error;
        this.rejectFrame(connection.remote, error.reason, error);
        this.dropConnection(connection);
        return;
      }
    }
  }

  private serverFrame(connection: ServerConnection, frame: Frame): void {
    if (connection.hello === undefined) {
      if (frame.kind !== FrameKind.Hello) throw new ControlError('no-hello');
      this.serveHello(connection, parseHello(frame.payload, this.limits.codec.clusterIdBytesMax));
      return;
    }
    switch (frame.kind) {
      case FrameKind.Envelope:
        this.serveEnvelope(connection, frame.payload);
        return;
      case FrameKind.Ping:
        connection.socket.write(encodeFrame(FrameKind.Pong));
        return;
      default:
        throw new ControlError('unexpected-kind');
    }
  }

  private serveHello(connection: ServerConnection, hello: Hello): void {
    if (hello.cluster_id !== this.clusterId || hello.to !== this.nodeId) {
      this.event('transport.probe.refused');
      this.refuse(connection, ErrorCode.WrongCluster, `node ${this.nodeId} of cluster ${this.clusterId} is not node ${hello.to} of cluster ${hello.cluster_id}`);
      return;
    }
    connection.hello = hello;
    connection.decoder.limits = { envelopeBytesMax: this.envelopeBytesMax };
    const ok: HelloOk = { cluster_id: this.clusterId, node_id: this.nodeId };
    connection.socket.write(encodeControl(FrameKind.HelloOk, ok));
    this.event('transport.stream.accepted');
    // The peer just reached us, so it is up: stop backing off from it.
    const peer = this.peers.get(hello.from);
    if (peer !== undefined && peer.state === 'backoff') {
      this.event('transport.peer.backoff-ended-by-probe');
      peer.failures = 0;
      this.endBackoff(peer);
    }
  }

  private serveEnvelope(connection: ServerConnection, payload: Buffer): void {
    let wire: WireEnvelope;
    try {
      wire = deserializeEnvelope(payload) as WireEnvelope;
    } catch (error) {
      // Bytes that are no Envelope: the peer does not speak our protocol; end the connection.
      throw Object.assign(new ControlError('undecodable'), { cause: error });
    }
    let envelope;
    try {
      envelope = decodeEnvelope(wire, this.limits.codec);
    } catch (error) {
      // Whatever a peer sends, it is answered by a counted refusal, never by an exception; a frame
      // that breaks a codec rule is dropped whole and the connection goes on.
      this.rejectFrame(connection.remote, error instanceof FrameError ? error.reason : 'undecodable', error);
      return;
    }
    if (envelope.clusterId !== this.clusterId || envelope.to !== this.nodeId) {
      const wrongCluster = envelope.clusterId !== this.clusterId;
      this.event(wrongCluster ? 'transport.frame.wrong-cluster' : 'transport.frame.wrong-node');
      this.event('transport.messages.refused', envelope.messages.length);
      this.refuse(
        connection,
        ErrorCode.WrongCluster,
        wrongCluster ? `frame of cluster ${envelope.clusterId} refused by cluster ${this.clusterId}` : `frame for node ${envelope.to} refused by node ${this.nodeId}`,
      );
      return;
    }
    connection.frames++;
    this.event('transport.frames.received');
    this.event('transport.messages.received', envelope.messages.length);
    for (const m of envelope.messages) this.messageHandler(m);
    if (connection.frames % this.limits.ackEveryFrames === 0 && !connection.done) connection.socket.write(encodeAck(connection.frames));
  }
}
