/**
 * nbd-raw-client: a deliberately dumb NBD client for tests. It sends exactly the bytes it is told
 * to (so tests can send malformed ones) and reads the server's answers field by field.
 * Also: duplexPair(), an in-memory connected pair of streams for driving NbdServer.handleStream.
 */

import * as net from 'node:net';
import { Duplex } from 'node:stream';
import {
  ClientFlag,
  Command,
  Magic,
  Option,
  OptionReply,
  decodeOptionReplyHeader,
  decodeStructuredHeader,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequestHeader,
  metaContextBaseAllocation,
} from '../../src/nbd/protocol.js';

export class Closed extends Error {}

/** RawClient: byte-level access to one connection. */
export class RawClient {
  private chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private ended = false;
  private waiter: (() => void) | undefined;
  readonly closed: Promise<void>;

  constructor(readonly stream: Duplex) {
    stream.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.bufferedBytes += c.length;
      this.waiter?.();
    });
    let markClosed!: () => void;
    this.closed = new Promise((resolve) => (markClosed = resolve));
    const end = (): void => {
      this.ended = true;
      this.waiter?.();
      markClosed();
    };
    stream.on('end', end);
    stream.on('close', end);
    stream.on('error', end);
  }

  static async connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    const socket = net.connect({ port, host });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    return new RawClient(socket);
  }

  write(bytes: Uint8Array): void {
    this.stream.write(bytes);
  }

  /** read: exactly n bytes, or throws Closed if the server closed first / timeoutMs passed. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.bufferedBytes < n) {
      if (this.ended) throw new Closed(`closed with ${this.bufferedBytes}/${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes (have ${this.bufferedBytes})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.waiter = undefined;
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.bufferedBytes -= n;
    return all.subarray(0, n);
  }

  /** isClosedSoon: true if the server closes within timeoutMs (any unread bytes are ignored). */
  async isClosedSoon(timeoutMs = 2000): Promise<boolean> {
    return Promise.race([this.closed.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), timeoutMs))]);
  }

  close(): void {
    this.stream.destroy();
  }

  // -- handshake ---------------------------------------------------------------------------

  async greet(clientFlags = ClientFlag.fixedNewstyle | ClientFlag.noZeroes): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== Magic.init || g.readBigUInt64BE(8) !== Magic.option) throw new Error('bad greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags >>> 0, 0);
    this.write(flags);
    return g.readUInt16BE(16);
  }

  option(option: number, data?: Uint8Array): void {
    this.write(encodeOption(option, data));
  }

  async optionReply(): Promise<{ option: number; replyType: number; data: Buffer }> {
    const h = decodeOptionReplyHeader(await this.read(20))!;
    if (h.magic !== Magic.optionReply) throw new Error('bad option reply magic');
    const data = await this.read(h.lengthBytes);
    return { option: h.option, replyType: h.replyType, data };
  }

  /** optionReplies: replies until (and including) the final ACK or error. */
  async optionReplies(): Promise<{ option: number; replyType: number; data: Buffer }[]> {
    const out = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.replyType === OptionReply.ack || r.replyType >= 0x80000000) return out;
    }
  }

  /** go: full handshake to transmission. Returns size and transmission flags. */
  async go(exportName = '', opts: { structured?: boolean; metaContext?: boolean; infoTypes?: number[] } = {}): Promise<{ sizeBytes: number; flags: number }> {
    await this.greet();
    if (opts.structured ?? true) {
      this.option(Option.structuredReply);
      const r = await this.optionReply();
      if (r.replyType !== OptionReply.ack) throw new Error('structured replies refused');
      if (opts.metaContext ?? true) {
        this.option(Option.setMetaContext, encodeMetaContextRequest(exportName, [metaContextBaseAllocation]));
        const rs = await this.optionReplies();
        if (rs[rs.length - 1]!.replyType !== OptionReply.ack) throw new Error('meta context refused');
      }
    }
    this.option(Option.go, encodeInfoRequest(exportName, opts.infoTypes ?? []));
    const replies = await this.optionReplies();
    const last = replies[replies.length - 1]!;
    if (last.replyType !== OptionReply.ack) throw new Error(`GO refused: ${last.replyType.toString(16)}`);
    const info = replies.find((r) => r.replyType === OptionReply.info && r.data.readUInt16BE(0) === 0)!;
    return { sizeBytes: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }

  // -- transmission ------------------------------------------------------------------------

  request(r: { type: number; flags?: number; handle: number | bigint; offset?: number | bigint; lengthBytes?: number; payload?: Uint8Array }): void {
    const lengthBytes = r.lengthBytes ?? r.payload?.length ?? 0;
    this.write(encodeRequestHeader({ type: r.type, flags: r.flags ?? 0, handle: BigInt(r.handle), offset: r.offset ?? 0, lengthBytes }));
    if (r.payload) this.write(r.payload);
  }

  async simpleReply(dataBytes = 0): Promise<{ errno: number; handle: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== Magic.simpleReply) throw new Error(`expected a simple reply, magic ${h.readUInt32BE(0).toString(16)}`);
    const errno = h.readUInt32BE(4);
    const data = errno === 0 && dataBytes > 0 ? await this.read(dataBytes) : Buffer.alloc(0);
    return { errno, handle: h.readBigUInt64BE(8), data };
  }

  /** reply: one simple reply (no data) or one structured chunk; context-free once structured replies are on. */
  async reply(): Promise<Reply> {
    const magicBytes = await this.read(4);
    const magic = magicBytes.readUInt32BE(0);
    if (magic === Magic.simpleReply) {
      const rest = await this.read(12);
      return { kind: 'simple', errno: rest.readUInt32BE(0), handle: rest.readBigUInt64BE(4), flags: 0, type: 0, payload: Buffer.alloc(0) };
    }
    if (magic !== Magic.structuredReply) throw new Error(`bad reply magic ${magic.toString(16)}`);
    const h = decodeStructuredHeader(Buffer.concat([magicBytes, await this.read(16)]))!;
    const payload = await this.read(h.lengthBytes);
    const errno = h.type & 0x8000 ? payload.readUInt32BE(0) : 0;
    return { kind: 'structured', errno, handle: h.handle.readBigUInt64BE(0), flags: h.flags, type: h.type, payload };
  }

  /** structuredReply: all chunks of one reply (assumes no interleaving with other requests). */
  async structuredReply(): Promise<Reply[]> {
    const out: Reply[] = [];
    for (;;) {
      const r = await this.reply();
      out.push(r);
      if (r.kind === 'simple' || r.flags & 1) return out;
    }
  }

  disconnect(): void {
    this.request({ type: Command.disc, handle: 0 });
  }
}

export interface Reply {
  kind: 'simple' | 'structured';
  errno: number;
  handle: bigint;
  flags: number;
  type: number;
  payload: Buffer;
}

/** duplexPair: two connected in-memory Duplex streams (what one writes, the other reads). */
export function duplexPair(): [Duplex, Duplex] {
  const make = (peer: () => Duplex): Duplex =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        const p = peer();
        if (!p.destroyed) p.push(chunk);
        callback();
      },
      final(callback) {
        const p = peer();
        if (!p.destroyed) p.push(null);
        callback();
      },
      destroy(error, callback) {
        const p = peer();
        if (!p.destroyed && !p.readableEnded) p.push(null);
        callback(error);
      },
    });
  // eslint-disable-next-line prefer-const
  let b: Duplex;
  const a = make(() => b);
  b = make(() => a);
  return [a, b];
}
