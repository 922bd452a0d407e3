/**
 * server: NbdServer speaks the NBD protocol (fixed newstyle handshake, then transmission) on TCP or
 * Unix sockets, or on any Duplex stream handed to `handleStream`, and serves a BlockBackend.
 *
 * Guarantees:
 *  - Untrusted input is validated at the wire (order: command, flags, read-only, bounds, block
 *    size limits, alignment if negotiated, metadata context; docs/nbd.md lists it) and answered
 *    with the protocol's error; the backend only sees valid requests. No length from the wire is
 *    used to allocate before it is checked against a limit.
 *  - A connection only ever affects itself: a malformed request magic, a protocol violation, a
 *    backend RemoteError (not leader, unavailable) closes that one connection without a reply.
 *  - Memory per connection is bounded: at most `inflightRequestsMax` requests and at most
 *    `inflightBytesMax` bytes of write payload plus read reply data in flight (the socket is not
 *    read while at either limit; a single request larger than the byte budget runs alone), at most
 *    `readaheadBytes` buffered beyond the current need, and replies wait for 'drain' when the socket
 *    says so, which holds the request slot, so a client that stops reading stops being served.
 *  - Replies may go out of order; the chunks of one reply are always contiguous on the wire.
 *  - Every notable event is counted in `counters` and reported to `onEvent`, so metrics attach later.
 *  - close() drains: in-flight requests are answered (up to shutdownDrainMs), new ones get ESHUTDOWN.
 *  - TLS (`tls` option): NBD_OPT_STARTTLS upgrades the socket in place (X.509, TLS >= 1.2); the
 *    client must present a certificate signed by the configured CA (checked by OpenSSL, the
 *    connection is dropped otherwise). Mode 'optional' (the spec's SELECTIVETLS with every export
 *    available either way) or 'required' (FORCEDTLS: every option but STARTTLS and ABORT is
 *    answered NBD_REP_ERR_TLS_REQD, NBD_OPT_EXPORT_NAME hangs up). Without `tls`, STARTTLS is
 *    answered NBD_REP_ERR_POLICY (NOTLS). Option state negotiated before STARTTLS is forgotten.
 *  - Abuse limits (NbdLimits), each counted under its own event and logged with the peer address:
 *    connections per server, handshake time (TLS handshake included), idle time in transmission
 *    (off by default: an idle mounted filesystem sends nothing for hours), option count and option
 *    size, requests and bytes in flight per connection (backpressure, not a disconnect).
 */

import * as net from 'node:net';
import type { Duplex } from 'node:stream';
import * as tls from 'node:tls';
import { AssertionFailure, assert } from '../assert.js';
import { ByteQueue } from '../byte-queue.js';
import { ChardError, ErrorCode, InternalError, RemoteError, UsageError } from '../errors.js';
import type { BlockBackend, ExportHandle, ExportInfo, Extent, ReadChunk } from './backend.js';
import {
  BlockState,
  ClientFlag,
  Command,
  CommandFlag,
  Errno,
  HandshakeFlag,
  InfoType,
  Magic,
  Option,
  OptionReply,
  ReplyFlag,
  TransmissionFlag,
  clientFlagsKnown,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  decodeString,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMessage,
  encodeMetaContextReplyData,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionReply,
  encodeServerReplyData,
  encodeSimpleReply,
  metaContextBaseAllocation,
  optionHeaderBytes,
  requestHeaderBytes,
  type RequestHeader,
  type StatusDescriptor,
} from './protocol.js';

/** NbdLimits: every bound the server enforces, in one place. */
export interface NbdLimits {
  /** requestBytesMax: largest READ / WRITE payload (and advertised maximum block size). */
  requestBytesMax: number;
  /** inflightRequestsMax: requests per connection being served at once; the socket is paused at the limit. */
  inflightRequestsMax: number;
  /**
   * inflightBytesMax: write payloads plus read lengths of the requests in flight on one connection.
   * Without it, `inflightRequestsMax` reads of `requestBytesMax` could pin 2 GiB per connection.
   */
  inflightBytesMax: number;
  /** optionBytesMax: largest option payload read during the handshake; larger ones are skipped and refused. */
  optionBytesMax: number;
  /** handshakeOptionsMax: options per connection before the server hangs up (a denial of service guard). */
  handshakeOptionsMax: number;
  /** connectionsMax: concurrent connections per server; more are closed at once. */
  connectionsMax: number;
  /** handshakeTimeoutMs: the whole handshake (TLS included) must finish within this, or the connection is closed. */
  handshakeTimeoutMs: number;
  /**
   * idleTimeoutMs: in transmission, a connection with nothing in flight and no request for this
   * long is closed; 0 (the default) disables it, because a kernel client of an idle filesystem
   * sends nothing at all and does not reconnect. Unauthenticated idlers are bounded by
   * handshakeTimeoutMs and connectionsMax.
   */
  idleTimeoutMs: number;
  /** readaheadBytes: bytes buffered from the socket beyond what the current read needs. */
  readaheadBytes: number;
  /** blockStatusExtentsMax: descriptors in one BLOCK_STATUS reply (the spec allows fewer than asked). */
  blockStatusExtentsMax: number;
  /** metaContextQueriesMax: queries in one LIST/SET_META_CONTEXT option. */
  metaContextQueriesMax: number;
  /** listExportsMax: exports sent in answer to NBD_OPT_LIST. */
  listExportsMax: number;
  /** lingerMs: after a soft disconnect, how long to wait for the peer to close before destroying. */
  lingerMs: number;
  /** shutdownDrainMs: on close(), how long connections in transmission may finish in-flight requests. */
  shutdownDrainMs: number;
}

export const defaultNbdLimits: NbdLimits = {
  requestBytesMax: 32 * 1024 * 1024,
  inflightRequestsMax: 64,
  inflightBytesMax: 64 * 1024 * 1024,
  optionBytesMax: 64 * 1024,
  handshakeOptionsMax: 128,
  connectionsMax: 1024,
  handshakeTimeoutMs: 10_000,
  idleTimeoutMs: 0,
  readaheadBytes: 256 * 1024,
  blockStatusExtentsMax: 1024,
  metaContextQueriesMax: 128,
  listExportsMax: 4096,
  lingerMs: 2_000,
  shutdownDrainMs: 5_000,
};

/** NbdEvent: names of the counted events. */
export const NbdEvent = {
  connectionsAccepted: 'connectionsAccepted',
  connectionsRejected: 'connectionsRejected',
  connectionsClosed: 'connectionsClosed',
  handshakesCompleted: 'handshakesCompleted',
  handshakeTimeouts: 'handshakeTimeouts',
  optionsReceived: 'optionsReceived',
  optionsUnsupported: 'optionsUnsupported',
  optionErrors: 'optionErrors',
  protocolViolations: 'protocolViolations',
  requests: 'requests',
  /** Per command, counted once the request passed validation (what the backend was asked to do). */
  readRequests: 'readRequests',
  writeRequests: 'writeRequests',
  trimRequests: 'trimRequests',
  writeZeroesRequests: 'writeZeroesRequests',
  flushRequests: 'flushRequests',
  cacheRequests: 'cacheRequests',
  blockStatusRequests: 'blockStatusRequests',
  /** fuaRequests: valid WRITE / TRIM / WRITE_ZEROES requests that carried NBD_CMD_FLAG_FUA. */
  fuaRequests: 'fuaRequests',
  replyErrors: 'replyErrors',
  remoteErrorDisconnects: 'remoteErrorDisconnects',
  internalErrors: 'internalErrors',
  backendBugs: 'backendBugs',
  bytesRead: 'bytesRead',
  bytesWritten: 'bytesWritten',
  // TLS
  tlsHandshakes: 'tlsHandshakes',
  tlsHandshakeFailures: 'tlsHandshakeFailures',
  /** tlsRequired: options refused with NBD_REP_ERR_TLS_REQD (or EXPORT_NAME hung up) before STARTTLS. */
  tlsRequired: 'tlsRequired',
  // Abuse limits (one event per limit; connectionsRejected and handshakeTimeouts above count too)
  connectionsLimited: 'connectionsLimited',
  idleTimeouts: 'idleTimeouts',
  optionsTooMany: 'optionsTooMany',
  optionsTooLarge: 'optionsTooLarge',
  inflightRequestsLimited: 'inflightRequestsLimited',
  inflightBytesLimited: 'inflightBytesLimited',
} as const;
export type NbdEvent = (typeof NbdEvent)[keyof typeof NbdEvent];
export type NbdCounters = Record<NbdEvent, number>;

/** NbdLogger: the subset of pino the server uses. */
export interface NbdLogger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

const silentLogger: NbdLogger = { debug() {}, info() {}, warn() {}, error() {} };

export interface NbdServerOptions {
  backend: BlockBackend;
  limits?: Partial<NbdLimits>;
  logger?: NbdLogger;
  /** onEvent: called for every counted event (metrics hook). `amount` is 1 except for byte counters. */
  onEvent?: (event: NbdEvent, amount: number) => void;
  /** tls: enables NBD_OPT_STARTTLS (undefined: TLS off, STARTTLS answered NBD_REP_ERR_POLICY). */
  tls?: NbdTlsOptions;
}

/** NbdTlsMode: 'optional' offers STARTTLS; 'required' refuses everything else until it is done. */
export type NbdTlsMode = 'optional' | 'required';

export interface NbdTlsOptions {
  mode: NbdTlsMode;
  /** PEM: the CA client certificates must chain to, and this server's certificate and key. */
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

export type NbdListenAddress = { host: string; port: number } | { path: string };

/** baseAllocationContextId: the id this server gives base:allocation after SET_META_CONTEXT. */
export const baseAllocationContextId = 1;

/** ConnectionClosed: internal signal that the peer went away (or we closed); never an error to log. */
class ConnectionClosed extends Error {
  constructor() {
    super('connection closed');
  }
}

const zeroBuffer = Buffer.alloc(1024 * 1024);

/** StreamReader: exact-size reads from a Duplex with bounded buffering (pauses the stream). */
class StreamReader {
  private readonly queue = new ByteQueue();
  private done = false;
  private paused = false;
  private pending: { bytes: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | undefined;
  private readonly onData = (chunk: Buffer): void => {
    if (this.done) return;
    this.queue.push(chunk);
    this.wake();
    this.flow();
  };
  private readonly finish = (): void => {
    this.done = true;
    const p = this.pending;
    this.pending = undefined;
    p?.reject(new ConnectionClosed());
  };

  constructor(
    private readonly stream: Duplex,
    private readonly readaheadBytes: number,
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.finish);
    stream.on('close', this.finish);
    stream.on('error', this.finish);
  }

  /**
   * detach: stop reading `stream` (STARTTLS hands it to TLS); returns how many bytes were
   * buffered and not consumed (the client sent data it must not have sent yet).
   */
  detach(): number {
    assert(this.pending === undefined, 'detach with no read pending');
    this.stream.off('data', this.onData);
    this.stream.off('end', this.finish);
    this.stream.off('close', this.finish);
    this.stream.off('error', this.finish);
    this.done = true;
    return this.queue.length;
  }

  read(bytes: number): Promise<Buffer> {
    assert(this.pending === undefined, 'one read at a time');
    assert(Number.isSafeInteger(bytes) && bytes >= 0, 'read size');
    if (this.queue.length >= bytes) {
      const out = this.queue.take(bytes);
      this.flow();
      return Promise.resolve(out);
    }
    if (this.done) return Promise.reject(new ConnectionClosed());
    return new Promise((resolve, reject) => {
      this.pending = { bytes, resolve, reject };
      this.flow();
    });
  }

  /** skip: discards `bytes` without allocating more than 64 KiB at a time. */
  async skip(bytes: number): Promise<void> {
    let remaining = bytes;
    while (remaining > 0) {
      const n = Math.min(remaining, 64 * 1024);
      await this.read(n);
      remaining -= n;
    }
  }

  private wake(): void {
    const p = this.pending;
    if (p && this.queue.length >= p.bytes) {
      this.pending = undefined;
      p.resolve(this.queue.take(p.bytes));
    }
  }

  private flow(): void {
    if (this.done) return;
    const wantBytes = Math.max(this.pending?.bytes ?? 0, this.readaheadBytes);
    if (this.queue.length >= wantBytes) {
      if (!this.paused) {
        this.paused = true;
        this.stream.pause();
      }
    } else if (this.paused) {
      this.paused = false;
      this.stream.resume();
    }
  }
}

/**
 * StreamWriter: serialises replies (each reply's buffers contiguous) and honours 'drain'. Once
 * `batchTurns()` was called (transmission), the replies of one event-loop turn leave in one writev:
 * the socket is corked at the turn's first reply and uncorked in setImmediate (at QD32 4K reads,
 * one writev per reply was a fifth of the node's CPU). `flush()` uncorks at once: before a close,
 * so that a reply written in the same turn is not dropped.
 */
class StreamWriter {
  private chain: Promise<void> = Promise.resolve();
  private batching = false;
  private corked = false;
  constructor(private readonly stream: Duplex) {}

  batchTurns(): void {
    this.batching = true;
  }

  flush(): void {
    if (!this.corked) return;
    this.corked = false;
    this.stream.uncork();
  }

  send(buffers: Uint8Array[]): Promise<void> {
    const p = this.chain.then(() => this.writeNow(buffers));
    this.chain = p.catch(() => undefined);
    return p;
  }

  private writeNow(buffers: Uint8Array[]): Promise<void> | undefined {
    const s = this.stream;
    if (s.destroyed || s.writableEnded) throw new ConnectionClosed();
    let ok = true;
    if (!this.batching) {
      s.cork();
      for (const b of buffers) ok = s.write(b);
      s.uncork();
    } else {
      if (!this.corked) {
        this.corked = true;
        s.cork();
        setImmediate(() => this.flush());
      }
      for (const b of buffers) ok = s.write(b);
    }
    if (ok && !s.writableNeedDrain) return undefined;
    return new Promise((resolve, reject) => {
      const onDrain = (): void => {
        s.off('close', onClose);
        resolve();
      };
      const onClose = (): void => {
        s.off('drain', onDrain);
        reject(new ConnectionClosed());
      };
      s.once('drain', onDrain);
      s.once('close', onClose);
    });
  }
}

type OptionOutcome = 'continue' | 'transmission' | 'close';

const commandFlagsKnown = CommandFlag.fua | CommandFlag.noHole | CommandFlag.df | CommandFlag.reqOne | CommandFlag.fastZero;

/** Connection: one client, from greeting to close. */
class Connection {
  /** stream / reader / writer: the socket, replaced by its TLS wrapper after STARTTLS. */
  private stream: Duplex;
  private reader: StreamReader;
  private writer: StreamWriter;
  /** peer: the client's address, for logs. */
  private readonly peer: string;
  private tlsActive = false;
  private idleTimer: NodeJS.Timeout | undefined;
  private lastActivity = performance.now();
  private limitLogged = new Set<NbdEvent>();
  private handle: ExportHandle | undefined;
  private structured = false;
  private noZeroes = false;
  /** metaContext: the export SET_META_CONTEXT ran for, and whether base:allocation was selected. */
  private metaContext: { exportName: string; baseAllocation: boolean } | undefined;
  private baseAllocation = false;
  /** blockSizeAgreed: the client asked for NBD_INFO_BLOCK_SIZE in NBD_OPT_GO, so it knows the minimum. */
  private blockSizeAgreed = false;
  private inflightCount = 0;
  private inflightBytes = 0;
  private slotWaiter: (() => void) | undefined;
  private readonly operations = new Set<Promise<void>>();
  private closed = false;
  /** shuttingDown: the server is closing; new requests are answered ESHUTDOWN (spec: server shutdown). */
  private shuttingDown = false;

  constructor(
    stream: Duplex,
    private readonly server: NbdServer,
    private readonly backend: BlockBackend,
    private readonly limits: NbdLimits,
    private readonly log: NbdLogger,
    private readonly tlsOptions: NbdTlsOptions | undefined,
  ) {
    this.stream = stream;
    this.peer = peerOf(stream);
    this.reader = new StreamReader(stream, limits.readaheadBytes);
    this.writer = new StreamWriter(stream);
    stream.on('error', (error) => this.log.debug({ err: error, peer: this.peer }, 'nbd connection error'));
  }

  /** limit: one abuse limit was reached: counted every time, logged (with the peer) once per connection. */
  private limit(event: NbdEvent, detail: object, level: 'warn' | 'info' = 'warn'): void {
    this.server.event(event);
    if (this.limitLogged.has(event)) return;
    this.limitLogged.add(event);
    this.log[level]({ peer: this.peer, limit: event, ...detail }, 'nbd limit reached');
  }

  async run(): Promise<void> {
    const timer = setTimeout(() => {
      this.limit(NbdEvent.handshakeTimeouts, { handshakeTimeoutMs: this.limits.handshakeTimeoutMs });
      this.hardClose();
    }, this.limits.handshakeTimeoutMs);
    let graceful = false;
    try {
      const outcome = await this.handshake();
      clearTimeout(timer);
      if (outcome === 'transmission') {
        this.server.event(NbdEvent.handshakesCompleted);
        this.writer.batchTurns();
        graceful = await this.transmit();
      } else {
        graceful = true; // the client sent NBD_OPT_ABORT
      }
    } catch (error) {
      if (!(error instanceof ConnectionClosed)) {
        this.server.event(NbdEvent.internalErrors);
        this.log.error({ err: error }, 'nbd connection failed');
      }
    } finally {
      clearTimeout(timer);
      clearTimeout(this.idleTimer);
      if (graceful) this.softClose();
      else this.hardClose();
      await Promise.allSettled([...this.operations]);
      if (this.handle) {
        const h = this.handle;
        this.handle = undefined;
        await h.close().catch((error: unknown) => this.log.warn({ err: error }, 'nbd export close failed'));
      }
      this.server.event(NbdEvent.connectionsClosed);
    }
  }

  /** hardClose: drop the connection now (protocol violation, RemoteError, server shutdown). */
  hardClose(): void {
    this.closed = true;
    this.writer.flush();
    this.stream.destroy();
  }

  /**
   * shutdown: the server is closing. A connection still in the handshake is dropped at once. One in
   * transmission answers every new request with ESHUTDOWN, waits up to `drainMs` for the requests
   * in flight to be answered (spec: "the server SHOULD wait for inflight requests to be serviced
   * prior to initiating a hard disconnect"), then closes once its replies are flushed.
   */
  async shutdown(drainMs: number): Promise<void> {
    if (this.handle === undefined || this.closed) {
      this.hardClose();
      return;
    }
    this.shuttingDown = true;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs)));
    await Promise.race([Promise.allSettled([...this.operations]), expired]);
    clearTimeout(timer);
    this.closed = true;
    if (this.stream.destroyed) return;
    this.writer.flush();
    this.stream.end(() => this.stream.destroy());
    setTimeout(() => this.stream.destroy(), this.limits.lingerMs).unref();
  }

  /** softClose: flush what was written, then close; destroy after lingerMs if the peer lingers. */
  private softClose(): void {
    this.closed = true;
    if (this.stream.destroyed) return;
    this.writer.flush();
    this.stream.end();
    setTimeout(() => this.stream.destroy(), this.limits.lingerMs).unref();
  }

  // ------------------------------------------------------------------------------------------
  // Handshake

  /** handshake: 'transmission' once an export is chosen, 'aborted' after NBD_OPT_ABORT; throws ConnectionClosed otherwise. */
  private async handshake(): Promise<'transmission' | 'aborted'> {
    await this.writer.send([encodeGreeting(HandshakeFlag.fixedNewstyle | HandshakeFlag.noZeroes)]);
    const clientFlags = (await this.reader.read(4)).readUInt32BE(0);
    if ((clientFlags & ~clientFlagsKnown) !== 0) return this.violation('unknown client flags');
    this.noZeroes = (clientFlags & ClientFlag.noZeroes) !== 0;
    for (let optionCount = 0; ; optionCount++) {
      if (optionCount >= this.limits.handshakeOptionsMax) {
        this.limit(NbdEvent.optionsTooMany, { handshakeOptionsMax: this.limits.handshakeOptionsMax });
        return this.violation('too many options');
      }
      const header = decodeOptionHeader(await this.reader.read(optionHeaderBytes));
      assert(header !== undefined, 'option header is complete');
      if (header.magic !== Magic.option) return this.violation('bad option magic');
      this.server.event(NbdEvent.optionsReceived);
      if (header.lengthBytes > this.limits.optionBytesMax) {
        this.limit(NbdEvent.optionsTooLarge, { option: header.option, lengthBytes: header.lengthBytes, optionBytesMax: this.limits.optionBytesMax });
        // NBD_OPT_EXPORT_NAME cannot be answered with an error: the spec says hang up.
        if (header.option === Option.exportName) return this.violation('export name too long');
        await this.reader.skip(header.lengthBytes);
        await this.optionError(header.option, OptionReply.errTooBig, `option data longer than ${this.limits.optionBytesMax} bytes`);
        continue;
      }
      const data = await this.reader.read(header.lengthBytes);
      if (this.tlsOptions?.mode === 'required' && !this.tlsActive && header.option !== Option.startTls && header.option !== Option.abort) {
        // FORCEDTLS: nothing but STARTTLS and ABORT before TLS. EXPORT_NAME cannot be refused: hang up.
        this.server.event(NbdEvent.tlsRequired);
        this.log.info({ peer: this.peer, option: header.option }, 'nbd option refused: TLS is required');
        if (header.option === Option.exportName) return this.violation('NBD_OPT_EXPORT_NAME before STARTTLS on a TLS-only server');
        await this.optionError(header.option, OptionReply.errTlsReqd, 'this server requires TLS: send NBD_OPT_STARTTLS first');
        continue;
      }
      const outcome = await this.handleOption(header.option, data);
      if (outcome === 'transmission') return outcome;
      if (outcome === 'close') return 'aborted';
    }
  }

  private violation(what: string): never {
    this.server.event(NbdEvent.protocolViolations);
    this.log.debug({ what, peer: this.peer }, 'nbd handshake violation; closing');
    this.hardClose();
    throw new ConnectionClosed();
  }

  private reply(option: number, replyType: number, data?: Uint8Array): Promise<void> {
    return this.writer.send([encodeOptionReply(option, replyType, data)]);
  }

  private optionError(option: number, replyType: number, message: string): Promise<void> {
    this.server.event(replyType === OptionReply.errUnsup ? NbdEvent.optionsUnsupported : NbdEvent.optionErrors);
    return this.reply(option, replyType, encodeMessage(message));
  }

  private resolveName(name: string): string {
    return name === '' ? this.backend.defaultExportName() : name;
  }

  private async handleOption(option: number, data: Buffer): Promise<OptionOutcome> {
    switch (option) {
      case Option.exportName: {
        const name = decodeString(data);
        if (name === undefined) return this.violation('bad export name');
        const handle = await this.openForExportName(this.resolveName(name));
        const info = handle.info();
        this.enterTransmission(handle, info.name);
        await this.writer.send([encodeExportNameReply(info.sizeBytes, this.transmissionFlags(info), this.noZeroes)]);
        return 'transmission';
      }
      case Option.abort:
        await this.reply(option, OptionReply.ack).catch(() => undefined);
        return 'close';
      case Option.list: {
        if (data.length !== 0) return this.invalid(option, 'NBD_OPT_LIST takes no data');
        const exports = await this.backendCall(() => this.backend.listExports());
        for (const e of exports.slice(0, this.limits.listExportsMax)) {
          await this.reply(option, OptionReply.server, encodeServerReplyData(e.name, e.description));
        }
        await this.reply(option, OptionReply.ack);
        return 'continue';
      }
      case Option.startTls:
        if (this.tlsOptions === undefined) {
          await this.optionError(option, OptionReply.errPolicy, 'TLS is not configured on this server');
          return 'continue';
        }
        if (data.length !== 0) return this.invalid(option, 'NBD_OPT_STARTTLS takes no data');
        if (this.tlsActive) return this.invalid(option, 'TLS is already active');
        await this.startTls(this.tlsOptions);
        return 'continue';
      case Option.info:
      case Option.go:
        return this.handleInfoOrGo(option, data);
      case Option.structuredReply:
        if (data.length !== 0) return this.invalid(option, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        if (this.structured) return this.invalid(option, 'structured replies already negotiated');
        this.structured = true;
        await this.reply(option, OptionReply.ack);
        return 'continue';
      case Option.listMetaContext:
      case Option.setMetaContext:
        return this.handleMetaContext(option, data);
      default:
        await this.optionError(option, OptionReply.errUnsup, `option ${option} is not supported`);
        return 'continue';
    }
  }

  private async invalid(option: number, message: string): Promise<OptionOutcome> {
    await this.optionError(option, OptionReply.errInvalid, message);
    return 'continue';
  }

  /**
   * startTls: ACK, then the TLS handshake on the same socket (server side, client certificate
   * required and verified against the CA by OpenSSL); afterwards every byte goes through TLS.
   * A failed handshake closes the connection (the spec: too late to go on without TLS).
   */
  private async startTls(options: NbdTlsOptions): Promise<void> {
    await this.reply(Option.startTls, OptionReply.ack);
    const raw = this.stream;
    // The client must wait for the ACK before its ClientHello: plaintext bytes here are a violation.
    if (this.reader.detach() !== 0) return this.violation('data after NBD_OPT_STARTTLS before the TLS handshake');
    const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
      // A tls.Server that never listens: it runs the server side of the handshake on `raw` and
      // drops a client whose certificate does not verify (rejectUnauthorized) before any data.
      const tlsServer = tls.createServer({
        ca: options.ca,
        cert: options.cert,
        key: options.key,
        requestCert: true,
        rejectUnauthorized: true,
        minVersion: 'TLSv1.2',
      });
      let reason = 'the client closed the connection during the TLS handshake (it may have refused this node\'s certificate, or it has no certificate of the cluster CA)';
      const onClose = (): void => {
        this.server.event(NbdEvent.tlsHandshakeFailures);
        this.log.warn({ peer: this.peer, reason }, 'nbd TLS handshake failed; closing');
        reject(new ConnectionClosed());
      };
      raw.once('close', onClose);
      tlsServer.once('tlsClientError', (error: NodeJS.ErrnoException) => {
        reason = error.code ?? error.message;
        raw.destroy();
      });
      tlsServer.once('secureConnection', (socket: tls.TLSSocket) => {
        raw.off('close', onClose);
        if (!socket.authorized) {
          // rejectUnauthorized already guarantees this; never serve an unverified peer.
          this.server.event(NbdEvent.tlsHandshakeFailures);
          socket.destroy();
          reject(new ConnectionClosed());
          return;
        }
        resolve(socket);
      });
      tlsServer.emit('connection', raw);
    });
    this.stream = secure;
    this.reader = new StreamReader(secure, this.limits.readaheadBytes);
    this.writer = new StreamWriter(secure);
    secure.on('error', (error) => this.log.debug({ err: error, peer: this.peer }, 'nbd TLS connection error'));
    this.tlsActive = true;
    // Nothing negotiated in plaintext carries over into the TLS session.
    this.structured = false;
    this.metaContext = undefined;
    this.server.event(NbdEvent.tlsHandshakes);
    const subject = secure.getPeerCertificate().subject;
    this.log.debug({ peer: this.peer, client: subject?.CN }, 'nbd TLS established');
  }

  /** backendCall: a RemoteError or unexpected failure during the handshake closes the connection. */
  private async backendCall<T>(f: () => Promise<T>): Promise<T> {
    try {
      return await f();
    } catch (error) {
      if (error instanceof RemoteError) this.server.event(NbdEvent.remoteErrorDisconnects);
      else {
        this.server.event(NbdEvent.internalErrors);
        this.log.error({ err: error }, 'nbd backend failed during handshake');
      }
      this.hardClose();
      throw new ConnectionClosed();
    }
  }

  private async openForExportName(name: string): Promise<ExportHandle> {
    try {
      return await this.backend.open(name);
    } catch (error) {
      if (error instanceof UsageError) this.violation(`export ${name} refused: ${error.message}`);
      return this.backendCall(() => Promise.reject(error));
    }
  }

  /** openOrReply: opens an export, or answers the option with an error and returns undefined. */
  private async openOrReply(option: number, name: string): Promise<ExportHandle | undefined> {
    try {
      return await this.backend.open(name);
    } catch (error) {
      if (error instanceof UsageError) {
        const replyType = error.code === ErrorCode.NotFound ? OptionReply.errUnknown : OptionReply.errInvalid;
        await this.optionError(option, replyType, error.message);
        return undefined;
      }
      return this.backendCall(() => Promise.reject(error));
    }
  }

  private async handleInfoOrGo(option: number, data: Buffer): Promise<OptionOutcome> {
    const request = decodeInfoRequest(data);
    if (!request) return this.invalid(option, 'malformed NBD_OPT_INFO/GO data');
    const name = this.resolveName(request.exportName);
    const handle = await this.openOrReply(option, name);
    if (!handle) return 'continue';
    let entered = false;
    try {
      const info = handle.info();
      const replies: Buffer[] = [encodeOptionReply(option, OptionReply.info, encodeInfoExport(info.sizeBytes, this.transmissionFlags(info)))];
      if (request.infoTypes.includes(InfoType.name)) replies.push(encodeOptionReply(option, OptionReply.info, encodeInfoString(InfoType.name, info.name)));
      if (request.infoTypes.includes(InfoType.description) && info.description !== '') {
        replies.push(encodeOptionReply(option, OptionReply.info, encodeInfoString(InfoType.description, info.description)));
      }
      const [minBytes, preferredBytes, maxBytes] = this.blockSizes(info);
      replies.push(encodeOptionReply(option, OptionReply.info, encodeInfoBlockSize(minBytes, preferredBytes, maxBytes)));
      replies.push(encodeOptionReply(option, OptionReply.ack));
      if (option === Option.go) {
        this.enterTransmission(handle, info.name);
        this.blockSizeAgreed = request.infoTypes.includes(InfoType.blockSize);
        entered = true;
      }
      await this.writer.send(replies);
      return option === Option.go ? 'transmission' : 'continue';
    } finally {
      if (!entered) await handle.close().catch(() => undefined);
    }
  }

  private enterTransmission(handle: ExportHandle, exportName: string): void {
    this.handle = handle;
    // Metadata contexts negotiated for another export do not carry over (spec: SET_META_CONTEXT).
    this.baseAllocation = this.structured && this.metaContext?.exportName === exportName && this.metaContext.baseAllocation;
  }

  private async handleMetaContext(option: number, data: Buffer): Promise<OptionOutcome> {
    if (!this.structured) return this.invalid(option, 'negotiate structured replies first');
    const request = decodeMetaContextRequest(data, this.limits.metaContextQueriesMax);
    if (!request) return this.invalid(option, 'malformed meta context data');
    const name = this.resolveName(request.exportName);
    const exports = await this.backendCall(() => this.backend.listExports());
    if (!exports.some((e) => e.name === name)) {
      await this.optionError(option, OptionReply.errUnknown, `no export named ${JSON.stringify(name)}`);
      return 'continue';
    }
    let matched: boolean;
    if (option === Option.listMetaContext) {
      matched = request.queries.length === 0 || request.queries.some((q) => q === 'base:' || q === metaContextBaseAllocation);
    } else {
      matched = request.queries.includes(metaContextBaseAllocation);
      this.metaContext = { exportName: name, baseAllocation: matched };
    }
    const replies: Buffer[] = [];
    if (matched) {
      const id = option === Option.listMetaContext ? 0 : baseAllocationContextId;
      replies.push(encodeOptionReply(option, OptionReply.metaContext, encodeMetaContextReplyData(id, metaContextBaseAllocation)));
    }
    replies.push(encodeOptionReply(option, OptionReply.ack));
    await this.writer.send(replies);
    return 'continue';
  }

  private transmissionFlags(info: ExportInfo): number {
    let flags = TransmissionFlag.hasFlags | TransmissionFlag.sendFlush | TransmissionFlag.sendFua | TransmissionFlag.canMultiConn | TransmissionFlag.sendCache;
    if (this.structured) flags |= TransmissionFlag.sendDf;
    if (info.readOnly) flags |= TransmissionFlag.readOnly;
    else flags |= TransmissionFlag.sendTrim | TransmissionFlag.sendWriteZeroes | TransmissionFlag.sendFastZero;
    return flags;
  }

  private blockSizes(info: ExportInfo): [number, number, number] {
    const minBytes = info.blockSizeMin;
    const preferredBytes = info.blockSizePreferred;
    let maxBytes = Math.min(info.blockSizeMax, this.limits.requestBytesMax);
    maxBytes -= maxBytes % minBytes;
    assert(minBytes >= 1 && minBytes <= 65536 && (minBytes & (minBytes - 1)) === 0, 'blockSizeMin is a power of two <= 64 KiB');
    assert(preferredBytes >= Math.max(minBytes, 512) && (preferredBytes & (preferredBytes - 1)) === 0, 'blockSizePreferred');
    assert(maxBytes >= minBytes, 'blockSizeMax >= blockSizeMin');
    return [minBytes, preferredBytes, maxBytes];
  }

  // ------------------------------------------------------------------------------------------
  // Transmission

  /** transmit: reads requests until DISC (returns true: soft close) or EOF / violation (false). */
  private async transmit(): Promise<boolean> {
    if (this.limits.idleTimeoutMs > 0) this.armIdle(this.limits.idleTimeoutMs);
    for (;;) {
      if (this.inflightCount >= this.limits.inflightRequestsMax) {
        this.limit(NbdEvent.inflightRequestsLimited, { inflightRequestsMax: this.limits.inflightRequestsMax }, 'info');
        while (this.inflightCount >= this.limits.inflightRequestsMax) await this.slotFreed();
      }
      if (this.closed) return false;
      const header = decodeRequestHeader(await this.reader.read(requestHeaderBytes));
      this.lastActivity = performance.now();
      assert(header !== undefined, 'request header is complete');
      if (header.magic !== Magic.request) {
        this.violation('bad request magic');
      }
      this.server.event(NbdEvent.requests);
      if (header.type === Command.disc) {
        await Promise.allSettled([...this.operations]);
        return true;
      }
      if (header.type === Command.write && header.lengthBytes > this.limits.requestBytesMax) {
        // Never buffer it: discard the payload, then refuse the request.
        await this.reader.skip(header.lengthBytes);
        this.start(header, undefined, 0, { errno: Errno.EINVAL, message: `write larger than ${this.limits.requestBytesMax} bytes` });
        continue;
      }
      // The byte budget is taken before the payload is read, so the socket stays paused at it.
      const costBytes = requestCostBytes(header, this.limits.requestBytesMax);
      if (this.inflightCount > 0 && this.inflightBytes + costBytes > this.limits.inflightBytesMax) {
        this.limit(NbdEvent.inflightBytesLimited, { inflightBytesMax: this.limits.inflightBytesMax }, 'info');
        while (this.inflightCount > 0 && this.inflightBytes + costBytes > this.limits.inflightBytesMax) await this.slotFreed();
      }
      if (this.closed) return false;
      let payload: Buffer | undefined;
      if (header.type === Command.write) {
        payload = await this.reader.read(header.lengthBytes);
        this.server.event(NbdEvent.bytesWritten, payload.length);
      }
      this.start(header, payload, costBytes, undefined);
    }
  }

  /**
   * armIdle: the idle check runs `afterMs` from now; a connection with requests in flight, or with
   * a request within idleTimeoutMs, is not idle (the check re-arms).
   */
  private armIdle(afterMs: number): void {
    this.idleTimer = setTimeout(() => {
      if (this.closed) return;
      const idleMs = performance.now() - this.lastActivity;
      if (this.inflightCount > 0 || idleMs < this.limits.idleTimeoutMs) {
        this.armIdle(this.inflightCount > 0 ? this.limits.idleTimeoutMs : Math.max(1, this.limits.idleTimeoutMs - idleMs));
        return;
      }
      this.limit(NbdEvent.idleTimeouts, { idleTimeoutMs: this.limits.idleTimeoutMs });
      this.hardClose();
    }, afterMs);
    this.idleTimer.unref();
  }

  /** slotFreed: resolves when the next in-flight request finishes (one waiter: the transmit loop). */
  private slotFreed(): Promise<void> {
    assert(this.slotWaiter === undefined, 'one slot waiter');
    assert(this.inflightCount > 0, 'a slot can be freed');
    return new Promise<void>((resolve) => (this.slotWaiter = resolve));
  }

  private start(header: RequestHeader, payload: Buffer | undefined, costBytes: number, refusal: WireError | undefined): void {
    this.inflightCount++;
    this.inflightBytes += costBytes;
    const op = this.execute(header, payload, refusal)
      .catch((error: unknown) => {
        if (!(error instanceof ConnectionClosed)) {
          this.server.event(NbdEvent.internalErrors);
          this.log.error({ err: error }, 'nbd request failed');
          this.hardClose();
        }
      })
      .finally(() => {
        this.operations.delete(op);
        this.lastActivity = performance.now();
        this.inflightCount--;
        this.inflightBytes -= costBytes;
        const w = this.slotWaiter;
        this.slotWaiter = undefined;
        w?.();
      });
    this.operations.add(op);
  }

  /** validate: the wire checks, in nbdkit's order. Returns the error to answer, or undefined. */
  private validate(h: RequestHeader, info: ExportInfo): WireError | undefined {
    const type = h.type;
    const isWrite = type === Command.write || type === Command.trim || type === Command.writeZeroes;
    const ranged = isWrite || type === Command.read || type === Command.cache || type === Command.blockStatus;
    if (!ranged && type !== Command.flush) return { errno: Errno.EINVAL, message: `unknown command ${type}` };
    if ((h.flags & ~commandFlagsKnown) !== 0) return { errno: Errno.EINVAL, message: `unknown command flags 0x${h.flags.toString(16)}` };
    if (h.flags & CommandFlag.noHole && type !== Command.writeZeroes) return { errno: Errno.EINVAL, message: 'NO_HOLE is only valid on WRITE_ZEROES' };
    if (h.flags & CommandFlag.fastZero && (type !== Command.writeZeroes || info.readOnly)) return { errno: Errno.EINVAL, message: 'FAST_ZERO is only valid on WRITE_ZEROES' };
    if (h.flags & CommandFlag.df && (type !== Command.read || !this.structured)) return { errno: Errno.EINVAL, message: 'DF is only valid on READ with structured replies' };
    if (h.flags & CommandFlag.reqOne && type !== Command.blockStatus) return { errno: Errno.EINVAL, message: 'REQ_ONE is only valid on BLOCK_STATUS' };
    if (isWrite && info.readOnly) return { errno: Errno.EPERM, message: 'export is read-only' };
    if (type === Command.flush) {
      if (h.offset !== 0n || h.lengthBytes !== 0) return { errno: Errno.EINVAL, message: 'FLUSH takes no offset or length' };
      return undefined;
    }
    if (h.lengthBytes === 0) return { errno: Errno.EINVAL, message: 'zero length' };
    if (h.offset + BigInt(h.lengthBytes) > BigInt(info.sizeBytes)) {
      return { errno: isWrite ? Errno.ENOSPC : Errno.EINVAL, message: `range beyond the export size ${info.sizeBytes}` };
    }
    const [minBytes, , maxBytes] = this.blockSizes(info);
    if ((type === Command.read || type === Command.write) && h.lengthBytes > maxBytes) {
      // maxBytes is what NBD_INFO_BLOCK_SIZE advertised: min(backend blockSizeMax, requestBytesMax).
      return { errno: h.flags & CommandFlag.df ? Errno.EOVERFLOW : Errno.EINVAL, message: `request larger than the maximum block size ${maxBytes}` };
    }
    if (this.blockSizeAgreed && minBytes > 1 && (h.offset % BigInt(minBytes) !== 0n || h.lengthBytes % minBytes !== 0)) {
      // A client that asked for the block size constraints must honour them, and the spec lets the
      // server refuse when it does not. A client that never asked (NBD_OPT_EXPORT_NAME, or GO
      // without NBD_INFO_BLOCK_SIZE) cannot know them, so its requests go through unaligned.
      return { errno: Errno.EINVAL, message: `offset and length must be multiples of the minimum block size ${minBytes}` };
    }
    if (type === Command.blockStatus && !this.baseAllocation) return { errno: Errno.EINVAL, message: 'no metadata context negotiated' };
    return undefined;
  }

  private async execute(h: RequestHeader, payload: Buffer | undefined, refusal: WireError | undefined): Promise<void> {
    const handle = this.handle;
    assert(handle !== undefined, 'transmission has an export');
    const info = handle.info();
    const shutdownError: WireError | undefined = this.shuttingDown ? { errno: Errno.ESHUTDOWN, message: 'the server is shutting down' } : undefined;
    const wireError = refusal ?? shutdownError ?? this.validate(h, info);
    if (wireError) return this.replyError(h, wireError);
    const offset = Number(h.offset);
    const length = h.lengthBytes;
    const fua = (h.flags & CommandFlag.fua) !== 0;
    const commandEvent = commandEvents[h.type as Command];
    assert(commandEvent !== undefined, 'validated command has a counter');
    this.server.event(commandEvent);
    if (fua && (h.type === Command.write || h.type === Command.trim || h.type === Command.writeZeroes)) this.server.event(NbdEvent.fuaRequests);
    let result: { chunks?: ReadChunk[]; extents?: Extent[] } = {};
    try {
      switch (h.type) {
        case Command.read:
          result.chunks = await handle.read(offset, length);
          break;
        case Command.write:
          assert(payload !== undefined && payload.length === length, 'write payload');
          await handle.write(offset, payload, { fua });
          break;
        case Command.trim:
          await handle.trim(offset, length, { fua });
          break;
        case Command.writeZeroes:
          await handle.writeZeroes(offset, length, { fua, noHole: (h.flags & CommandFlag.noHole) !== 0, fastZero: (h.flags & CommandFlag.fastZero) !== 0 });
          break;
        case Command.flush:
          await handle.flush();
          break;
        case Command.cache:
          await handle.cache(offset, length);
          break;
        case Command.blockStatus:
          result.extents = await handle.blockStatus(offset, length);
          break;
        default:
          assert(false, 'validated command');
      }
      if (result.chunks) checkChunks(result.chunks, offset, length);
      if (result.extents) checkExtents(result.extents, length);
    } catch (error) {
      if (error instanceof RemoteError) {
        // This node cannot serve it now: no reply; the client agent reconnects and retries.
        this.server.event(NbdEvent.remoteErrorDisconnects);
        this.log.info({ err: error, code: error.code }, 'nbd backend unavailable; closing connection');
        this.hardClose();
        return;
      }
      return this.replyError(h, this.mapError(error, h, offset, length));
    }
    if (this.closed) return;
    if (result.chunks) return this.replyRead(h, offset, length, result.chunks);
    if (result.extents) return this.replyBlockStatus(h, result.extents);
    return this.writer.send([encodeSimpleReply(0, h.handle)]);
  }

  private mapError(error: unknown, h: RequestHeader, offset: number, length: number): WireError {
    const isWrite = h.type === Command.write || h.type === Command.trim || h.type === Command.writeZeroes;
    if (error instanceof UsageError) {
      switch (error.code) {
        case ErrorCode.OutOfRange:
          return { errno: isWrite ? Errno.ENOSPC : Errno.EINVAL, message: error.message };
        case ErrorCode.ReadOnly:
          return { errno: Errno.EPERM, message: error.message };
        case ErrorCode.TooLarge:
          return { errno: h.type === Command.read && h.flags & CommandFlag.df ? Errno.EOVERFLOW : Errno.EINVAL, message: error.message };
        case ErrorCode.FailedPrecondition:
          return { errno: Errno.ENOTSUP, message: error.message };
        default:
          return { errno: Errno.EINVAL, message: error.message };
      }
    }
    if (error instanceof InternalError) {
      this.server.event(NbdEvent.internalErrors);
      this.log.error({ err: error, code: error.code }, 'nbd backend internal error');
      const at = (error as { offset?: unknown }).offset;
      const within = typeof at === 'number' && at >= offset && at < offset + length ? at : undefined;
      return { errno: Errno.EIO, message: error.message, offset: within };
    }
    this.server.event(NbdEvent.backendBugs);
    this.log.error({ err: error, assertion: error instanceof AssertionFailure }, 'nbd backend bug');
    return { errno: Errno.EIO, message: error instanceof ChardError ? error.message : 'internal error' };
  }

  private replyError(h: RequestHeader, e: WireError): Promise<void> {
    this.server.event(NbdEvent.replyErrors);
    if (this.structured) {
      const offset = h.type === Command.read || h.type === Command.write || h.type === Command.trim || h.type === Command.blockStatus ? e.offset : undefined;
      return this.writer.send([encodeErrorChunk(ReplyFlag.done, h.handle, e.errno, e.message, offset)]);
    }
    return this.writer.send([encodeSimpleReply(e.errno, h.handle)]);
  }

  private replyRead(h: RequestHeader, offset: number, length: number, chunks: ReadChunk[]): Promise<void> {
    this.server.event(NbdEvent.bytesRead, length);
    if (!this.structured) {
      const out: Uint8Array[] = [encodeSimpleReply(0, h.handle)];
      for (const c of chunks) pushData(out, c);
      return this.writer.send(out);
    }
    if (h.flags & CommandFlag.df) {
      if (chunks.length === 1 && !chunks[0]!.data) return this.writer.send([encodeOffsetHole(ReplyFlag.done, h.handle, offset, length)]);
      const out: Uint8Array[] = [encodeOffsetDataHeader(ReplyFlag.done, h.handle, offset, length)];
      for (const c of chunks) pushData(out, c);
      return this.writer.send(out);
    }
    // Coalesce adjacent data chunks into one OFFSET_DATA, holes into OFFSET_HOLE; last chunk is DONE.
    const groups: { offset: number; length: number; parts?: Uint8Array[] }[] = [];
    for (const c of chunks) {
      const last = groups[groups.length - 1];
      if (c.data && last?.parts) {
        last.parts.push(c.data);
        last.length += c.length;
      } else if (!c.data && last && !last.parts) last.length += c.length;
      else groups.push(c.data ? { offset: c.offset, length: c.length, parts: [c.data] } : { offset: c.offset, length: c.length });
    }
    const out: Uint8Array[] = [];
    groups.forEach((g, i) => {
      const flags = i === groups.length - 1 ? ReplyFlag.done : 0;
      if (g.parts) {
        out.push(encodeOffsetDataHeader(flags, h.handle, g.offset, g.length), ...g.parts);
      } else out.push(encodeOffsetHole(flags, h.handle, g.offset, g.length));
    });
    return this.writer.send(out);
  }

  private replyBlockStatus(h: RequestHeader, extents: Extent[]): Promise<void> {
    const descriptors: StatusDescriptor[] = [];
    let totalBytes = 0;
    for (const e of extents) {
      const flags = (e.hole ? BlockState.hole : 0) | (e.zero ? BlockState.zero : 0);
      const take = Math.min(e.length, h.lengthBytes - totalBytes);
      if (take <= 0) break;
      const last = descriptors[descriptors.length - 1];
      if (last && last.flags === flags) last.lengthBytes += take;
      else {
        if (descriptors.length >= this.limits.blockStatusExtentsMax) break;
        descriptors.push({ lengthBytes: take, flags });
      }
      totalBytes += take;
    }
    const sent = h.flags & CommandFlag.reqOne ? descriptors.slice(0, 1) : descriptors;
    return this.writer.send([encodeBlockStatusChunk(ReplyFlag.done, h.handle, baseAllocationContextId, sent)]);
  }
}

/** commandEvents: the per-command counter of each valid command (DISC is never executed). */
const commandEvents: Partial<Record<Command, NbdEvent>> = {
  [Command.read]: NbdEvent.readRequests,
  [Command.write]: NbdEvent.writeRequests,
  [Command.flush]: NbdEvent.flushRequests,
  [Command.trim]: NbdEvent.trimRequests,
  [Command.cache]: NbdEvent.cacheRequests,
  [Command.writeZeroes]: NbdEvent.writeZeroesRequests,
  [Command.blockStatus]: NbdEvent.blockStatusRequests,
};

/**
 * requestCostBytes: what a request pins in memory while in flight: its write payload, or the data
 * of its read reply (a read larger than requestBytesMax is refused without data, so costs nothing).
 */
function requestCostBytes(h: RequestHeader, requestBytesMax: number): number {
  if (h.type === Command.write) return h.lengthBytes;
  if (h.type === Command.read && h.lengthBytes <= requestBytesMax) return h.lengthBytes;
  return 0;
}

interface WireError {
  errno: number;
  message: string;
  /** offset: where the error happened, if known and inside the request (ERROR_OFFSET). */
  offset?: number | undefined;
}

/** pushData appends a chunk's bytes (zeros for a hole) without allocating for holes. */
function pushData(out: Uint8Array[], c: ReadChunk): void {
  if (c.data) {
    out.push(c.data);
    return;
  }
  for (let remaining = c.length; remaining > 0; ) {
    const n = Math.min(remaining, zeroBuffer.length);
    out.push(zeroBuffer.subarray(0, n));
    remaining -= n;
  }
}

/** checkChunks: the backend's read contract (exact, ordered cover); a violation is a backend bug. */
function checkChunks(chunks: ReadChunk[], offset: number, length: number): void {
  let at = offset;
  for (const c of chunks) {
    if (c.offset !== at || !(c.length > 0) || (c.data !== undefined && c.data.length !== c.length)) {
      throw new InternalError(ErrorCode.Internal, `backend read returned a bad chunk at ${c.offset}+${c.length}, expected ${at}`);
    }
    at += c.length;
  }
  if (at !== offset + length) throw new InternalError(ErrorCode.Internal, 'backend read did not cover the request');
}

/** checkExtents: at least one extent, each non-empty. */
function checkExtents(extents: Extent[], length: number): void {
  if (extents.length === 0 || extents.some((e) => !(e.length > 0))) {
    throw new InternalError(ErrorCode.Internal, `backend block status returned bad extents for ${length} bytes`);
  }
}

/** peerOf: "address:port" of a TCP peer, "unix" for a Unix socket, "stream" for anything else. */
function peerOf(stream: Duplex): string {
  if (stream instanceof net.Socket) {
    if (stream.remoteAddress !== undefined) return `${stream.remoteAddress}:${stream.remotePort}`;
    return 'unix';
  }
  return 'stream';
}

/** NbdServer: listeners + connections over one BlockBackend. */
export class NbdServer {
  readonly limits: NbdLimits;
  readonly counters: NbdCounters;
  private readonly backend: BlockBackend;
  private readonly log: NbdLogger;
  private readonly onEvent: ((event: NbdEvent, amount: number) => void) | undefined;
  private readonly listeners = new Set<net.Server>();
  private readonly connections = new Map<Connection, Promise<void>>();
  private readonly tls: NbdTlsOptions | undefined;
  private closing = false;

  constructor(options: NbdServerOptions) {
    if (options.tls !== undefined) {
      const mode: unknown = options.tls.mode;
      if (mode !== 'optional' && mode !== 'required') throw new UsageError(ErrorCode.InvalidArgument, `NBD TLS mode must be optional or required, got ${String(mode)}`);
      try {
        tls.createSecureContext({ ca: options.tls.ca, cert: options.tls.cert, key: options.tls.key });
      } catch (error) {
        throw new UsageError(ErrorCode.InvalidArgument, `NBD TLS certificates are not usable: ${(error as Error).message}`);
      }
    }
    this.tls = options.tls;
    this.backend = options.backend;
    this.limits = { ...defaultNbdLimits, ...options.limits };
    this.log = options.logger ?? silentLogger;
    this.onEvent = options.onEvent;
    this.counters = Object.fromEntries(Object.values(NbdEvent).map((e) => [e, 0])) as NbdCounters;
    const l = this.limits;
    for (const [k, v] of Object.entries(l)) assert(Number.isSafeInteger(v) && (v > 0 || (k === 'idleTimeoutMs' && v === 0)), `limit ${k} is a positive integer`);
    assert(l.requestBytesMax <= 0xffffffff - 8, 'requestBytesMax fits a chunk');
  }

  /** event: counts one event (the single place metrics hook into). */
  event(name: NbdEvent, amount = 1): void {
    this.counters[name] += amount;
    this.onEvent?.(name, amount);
  }

  /** listen: binds a TCP (use port 0 in tests) or Unix socket listener; resolves to the bound address. */
  async listen(address: NbdListenAddress): Promise<NbdListenAddress> {
    assert(!this.closing, 'listen after close');
    const listener = net.createServer({ noDelay: true }, (socket) => {
      socket.setNoDelay(true);
      void this.handleStream(socket);
    });
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      if ('path' in address) listener.listen(address.path, () => resolve());
      else listener.listen(address.port, address.host, () => resolve());
    });
    listener.on('error', (error) => this.log.error({ err: error }, 'nbd listener error'));
    this.listeners.add(listener);
    const bound = listener.address();
    if (typeof bound === 'string') return { path: bound };
    assert(bound !== null, 'listener is bound');
    return { host: bound.address, port: bound.port };
  }

  /** handleStream: serves one connection on any Duplex; resolves once it is fully closed. */
  handleStream(stream: Duplex): Promise<void> {
    if (this.closing || this.connections.size >= this.limits.connectionsMax) {
      this.event(NbdEvent.connectionsRejected);
      if (!this.closing) {
        this.event(NbdEvent.connectionsLimited);
        this.log.warn({ peer: peerOf(stream), limit: NbdEvent.connectionsLimited, connectionsMax: this.limits.connectionsMax }, 'nbd limit reached');
      }
      stream.on('error', () => undefined);
      stream.destroy();
      return Promise.resolve();
    }
    this.event(NbdEvent.connectionsAccepted);
    const connection = new Connection(stream, this, this.backend, this.limits, this.log, this.tls);
    const done = connection.run().finally(() => this.connections.delete(connection));
    this.connections.set(connection, done);
    return done;
  }

  connectionCount(): number {
    return this.connections.size;
  }

  /** close: stops listening, drops every connection, resolves when all are closed. */
  /**
   * close: stops listening; every connection in transmission finishes its in-flight requests (up
   * to `drainMs`, default `limits.shutdownDrainMs`; 0 drops them at once), answering new ones with
   * ESHUTDOWN, and is closed; connections still in the handshake are closed at once. Resolves when
   * every socket is closed and every connection cleaned up (or lingerMs after the drain at most).
   */
  async close(options: { drainMs?: number } = {}): Promise<void> {
    const drainMs = options.drainMs ?? this.limits.shutdownDrainMs;
    this.closing = true;
    const closed = [...this.listeners].map((l) => new Promise<void>((resolve) => l.close(() => resolve())));
    this.listeners.clear();
    await Promise.all([...this.connections.keys()].map((c) => (drainMs > 0 ? c.shutdown(drainMs) : c.hardClose())));
    // Every socket is closed now. A connection's cleanup still waits for the backend to settle its
    // requests before closing the export handle; a backend stuck past the drain does not hold
    // close() beyond lingerMs (the handles are then closed whenever those requests settle).
    let timer: NodeJS.Timeout | undefined;
    const lingered = new Promise<void>((resolve) => (timer = setTimeout(resolve, this.limits.lingerMs)));
    await Promise.race([Promise.allSettled([...this.connections.values()]), lingered]);
    clearTimeout(timer);
    await Promise.all(closed);
  }
}
