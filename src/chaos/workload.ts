/**
 * workload: the clients of a chaos run and the recorder of their history.
 *
 *  - NbdClient: a small NBD client (fixed newstyle handshake with NBD_OPT_GO, simple replies only,
 *    pipelined requests matched by handle). A connection that the server closes, or that errors,
 *    fails every request in flight with `ConnectionLost`: the caller decides what that means.
 *  - HistoryRecorder: ONE monotonic clock for every event of the run (`now()` passed in), events
 *    kept in memory (bounded by `eventsMax`) and written to history.jsonl at the end.
 *  - WorkloadClient: one history "process": it keeps one NBD connection to its current target
 *    (sticky: it reconnects to the same node while that node takes connections, so a client on a
 *    partitioned minority keeps reading there), runs `inflightMax` op loops on it, each op a read
 *    of a block, a write of a unique tag (`c<process>-<opId>`) into a block, or a flush.
 *    Outcomes: reply ok → `ok`; read error reply / connection lost → `fail` (a read has no
 *    effect); write error reply / connection lost / timeout → `info` (it may still apply);
 *    read timeout → `info`. A timeout closes the connection (its in-flight ops are then unknown)
 *    and the client reconnects.
 *
 * Keys are `<volume>/<block>`; a block holds the tag as ASCII followed by zeros, so an unwritten
 * block (all zeros) reads as the initial value null.
 */

import net from 'node:net';
import { assert } from '../assert.js';
import { ErrorCode, RemoteError } from '../errors.js';
import { Command, Magic, Option, OptionReply, ClientFlag } from '../nbd/protocol.js';
import { finalReadProcess, serializeEvent, type HistoryEvent, type OpFunction, type RegisterValue, type TruncatedEvent } from './history.js';
import { setTimeout as sleep } from 'node:timers/promises';

/** blockBytes: the register size; every op reads or writes exactly one aligned block. */
export const blockBytes = 4096;
/** handshakeTimeoutMs: bound on connect + handshake. */
export const handshakeTimeoutMs = 3_000;
/** receiveBufferBytesMax: bound on buffered, unparsed reply bytes (a reply is at most 16 + 4096). */
export const receiveBufferBytesMax = 1 << 20;
/** inflightRequestsMax: bound on requests pending on one connection. */
export const inflightRequestsMax = 64;
/** optionRepliesMax: bound on option replies read during the handshake. */
const optionRepliesMax = 64;
const optionReplyDataBytesMax = 64 * 1024;

/** ConnectionLost: the connection went away with this request in flight (outcome unknown). */
export class ConnectionLost extends Error {
  constructor(reason: string) {
    super(`nbd connection lost: ${reason}`);
  }
}

interface Pending {
  handle: bigint;
  command: number;
  length: number;
  resolve: (data: Buffer) => void;
  reject: (error: Error) => void;
}

/** NbdClient: one NBD connection in the transmission phase. */
export class NbdClient {
  private buffer: Buffer = Buffer.alloc(0);
  private readonly pending = new Map<bigint, Pending>();
  private nextHandle = 1n;
  private closedReason: string | undefined;
  private constructor(
    private readonly socket: net.Socket,
    readonly sizeBytes: number,
  ) {
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.fail(error.message));
    socket.on('close', () => this.fail('closed by peer'));
  }

  /** NbdClient.connect: TCP connect plus the fixed-newstyle handshake with NBD_OPT_GO. */
  static async connect(host: string, port: number, exportName: string, timeoutMs = handshakeTimeoutMs): Promise<NbdClient> {
    const socket = net.connect({ host, port });
    socket.setNoDelay(true);
    const reader = new HandshakeReader(socket);
    const timer = setTimeout(() => socket.destroy(new Error(`handshake timed out after ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
      const greeting = await reader.read(18);
      if (greeting.readBigUInt64BE(0) !== Magic.init || greeting.readBigUInt64BE(8) !== Magic.option) throw new Error('not an NBD newstyle server');
      socket.write(u32(ClientFlag.fixedNewstyle | ClientFlag.noZeroes));
      const name = Buffer.from(exportName, 'utf8');
      const data = Buffer.concat([u32(name.length), name, u16(0)]);
      socket.write(Buffer.concat([u64(Magic.option), u32(Option.go), u32(data.length), data]));
      let sizeBytes = -1;
      for (let n = 0; ; n++) {
        if (n >= optionRepliesMax) throw new Error('too many option replies');
        const header = await reader.read(20);
        if (header.readBigUInt64BE(0) !== Magic.optionReply) throw new Error('bad option reply magic');
        const type = header.readUInt32BE(12);
        const length = header.readUInt32BE(16);
        if (length > optionReplyDataBytesMax) throw new Error('option reply too long');
        const body = length > 0 ? await reader.read(length) : Buffer.alloc(0);
        if (type === OptionReply.ack) break;
        if (type === OptionReply.info) {
          if (body.length >= 12 && body.readUInt16BE(0) === 0) sizeBytes = Number(body.readBigUInt64BE(2));
          continue;
        }
        if (type >= 0x80000000) throw new Error(`export "${exportName}" refused (reply 0x${type.toString(16)}: ${body.subarray(0).toString('utf8')})`);
      }
      if (sizeBytes < 0) throw new Error('server sent no export size');
      const rest = reader.detach();
      const client = new NbdClient(socket, sizeBytes);
      if (rest.length > 0) client.onData(rest);
      return client;
    } catch (error) {
      socket.destroy();
      throw error;
    } finally {
      clearTimeout(timer);
    }
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(Command.read, offset, length);
  }

  async write(offset: number, data: Buffer): Promise<void> {
    await this.request(Command.write, offset, data.length, data);
  }

  async flush(): Promise<void> {
    await this.request(Command.flush, 0, 0);
  }

  /** close: drops the connection; every request in flight fails with ConnectionLost. */
  close(reason = 'closed by client'): void {
    this.fail(reason);
  }

  private request(command: number, offset: number, length: number, data?: Buffer): Promise<Buffer> {
    if (this.closedReason !== undefined) return Promise.reject(new ConnectionLost(this.closedReason));
    assert(this.pending.size < inflightRequestsMax, 'nbd client: in-flight requests bounded');
    const handle = this.nextHandle++;
    const header = Buffer.alloc(28);
    header.writeUInt32BE(Magic.request, 0);
    header.writeUInt16BE(0, 4);
    header.writeUInt16BE(command, 6);
    header.writeBigUInt64BE(handle, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    return new Promise<Buffer>((resolve, reject) => {
      this.pending.set(handle, { handle, command, length, resolve, reject });
      this.socket.write(data ? Buffer.concat([header, data]) : header);
    });
  }

  private onData(chunk: Buffer): void {
    if (this.closedReason !== undefined) return;
    this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
    if (this.buffer.length > receiveBufferBytesMax) return this.fail('reply buffer overflow');
    for (;;) {
      if (this.buffer.length < 16) return;
      if (this.buffer.readUInt32BE(0) !== Magic.simpleReply) return this.fail('unexpected reply magic (structured replies are not negotiated)');
      const errno = this.buffer.readUInt32BE(4);
      const handle = this.buffer.readBigUInt64BE(8);
      const p = this.pending.get(handle);
      if (p === undefined) return this.fail(`reply for unknown handle ${handle}`);
      const payload = errno === 0 && p.command === Command.read ? p.length : 0;
      if (this.buffer.length < 16 + payload) return;
      const body = Buffer.from(this.buffer.subarray(16, 16 + payload));
      this.buffer = this.buffer.subarray(16 + payload);
      this.pending.delete(handle);
      if (errno === 0) p.resolve(body);
      else p.reject(new NbdErrorReply(errno));
    }
  }

  private fail(reason: string): void {
    if (this.closedReason === undefined) this.closedReason = reason;
    this.socket.destroy();
    for (const p of this.pending.values()) p.reject(new ConnectionLost(this.closedReason));
    this.pending.clear();
  }
}

/** NbdErrorReply: the server answered the request with an errno. */
export class NbdErrorReply extends Error {
  constructor(readonly errno: number) {
    super(`nbd error reply errno ${errno}`);
  }
}

/** HandshakeReader: exact-length reads from a socket during the handshake. */
class HandshakeReader {
  private buffer: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | undefined;
  private error: Error | undefined;
  private readonly onData = (chunk: Buffer) => {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    this.waiter?.();
  };
  private readonly onEnd = (error?: Error) => {
    this.error = error ?? new Error('connection closed during handshake');
    this.waiter?.();
  };
  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('error', this.onEnd);
    socket.on('close', () => this.onEnd());
  }

  async read(n: number): Promise<Buffer> {
    while (this.buffer.length < n) {
      if (this.error) throw this.error;
      await new Promise<void>((resolve) => (this.waiter = resolve));
      this.waiter = undefined;
    }
    const out = this.buffer.subarray(0, n);
    this.buffer = this.buffer.subarray(n);
    return out;
  }

  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('error', this.onEnd);
    this.socket.removeAllListeners('close');
    return this.buffer;
  }
}

function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(n);
  return b;
}

/** encodeTag: a block holding `tag` (ASCII) followed by zeros. */
export function encodeTag(tag: string): Buffer {
  assert(tag.length > 0 && tag.length < 256 && /^[\x21-\x7e]+$/.test(tag), 'tag is printable ASCII');
  const block = Buffer.alloc(blockBytes);
  block.write(tag, 0, 'latin1');
  return block;
}

/** decodeTag: the tag at the start of a block; null for an all-zero prefix (never written). */
export function decodeTag(block: Buffer): RegisterValue {
  const end = block.indexOf(0);
  const text = block.subarray(0, end < 0 ? Math.min(block.length, 256) : Math.min(end, 256)).toString('latin1');
  return text.length === 0 ? null : text;
}

/** UntimedEvent: a history event whose time the recorder stamps (unless given). */
export type UntimedEvent = HistoryEvent extends infer E ? (E extends HistoryEvent ? Omit<E, 'time'> & { time?: number } : never) : never;

/** recorderEventsMax: the default cap of a HistoryRecorder (events kept in memory). */
export const recorderEventsMax = 5_000_000;

/**
 * HistoryRecorder: the one clock and event list of a run. Past `eventsMax` events it drops new
 * ones and counts them; `truncation()` is then the marker that says so in history.jsonl.
 */
export class HistoryRecorder {
  readonly events: HistoryEvent[] = [];
  private dropped = 0;
  private droppedFrom = 0;
  constructor(
    readonly now: () => number,
    readonly eventsMax = recorderEventsMax,
  ) {}

  /** record: appends an event stamped now (or at `time`); returns its time. */
  record(event: UntimedEvent): number {
    const time = event.time ?? this.now();
    if (this.events.length >= this.eventsMax) {
      if (this.dropped === 0) this.droppedFrom = time;
      this.dropped++;
      return time;
    }
    this.events.push({ ...event, time } as HistoryEvent);
    return time;
  }

  get truncated(): boolean {
    return this.dropped > 0;
  }

  /** truncation: the marker event (at the time of the first dropped event), if any was dropped. */
  truncation(): TruncatedEvent | undefined {
    if (this.dropped === 0) return undefined;
    return { type: 'truncated', eventsMax: this.eventsMax, dropped: this.dropped, time: this.droppedFrom };
  }

  /** recorded: the events plus the truncation marker (what history.jsonl must hold). */
  recorded(): HistoryEvent[] {
    const marker = this.truncation();
    return marker ? [...this.events, marker] : [...this.events];
  }

  toJsonl(): string {
    return this.recorded().map((e) => serializeEvent(e) + '\n').join('');
  }
}

export interface Target {
  /** label: e.g. `n2` or `agent`. */
  label: string;
  host: string;
  port: number;
}

export interface WorkloadOptions {
  volume: string;
  /** keyCount: registers (blocks 0..keyCount-1); ~16-64 makes ops contend. */
  keyCount: number;
  /** readFraction / flushFraction: of all ops; the rest are writes. */
  readFraction: number;
  flushFraction: number;
  /** opTimeoutMs: a request unanswered this long is recorded `info` and its connection dropped. */
  opTimeoutMs: number;
  /** inflightMax: concurrent op loops per client (pipelined on its one connection). */
  inflightMax: number;
  /** thinkMs: pause between two ops of one loop (bounds the load on a 2-core machine). */
  thinkMs: number;
  /** reconnectDelayMs: wait after a failed connect before the next attempt. */
  reconnectDelayMs: number;
}

export const defaultWorkloadOptions: WorkloadOptions = {
  volume: 'chaos',
  keyCount: 24,
  readFraction: 0.5,
  flushFraction: 0.05,
  opTimeoutMs: 5_000,
  inflightMax: 2,
  thinkMs: 5,
  reconnectDelayMs: 100,
};

export interface ClientStats {
  ok: number;
  fail: number;
  info: number;
  connects: number;
  connectFailures: number;
}

/**
 * WorkloadClient: one history process. `targets()` returns the candidate endpoints in preference
 * order (the first is its home); the client stays on the one it is connected to and moves to the
 * next only when connecting fails. `random` is a seeded source in [0, 1).
 */
export class WorkloadClient {
  readonly stats: ClientStats = { ok: 0, fail: 0, info: 0, connects: 0, connectFailures: 0 };
  private opId = 0;
  private connection: NbdClient | undefined;
  private connecting: Promise<NbdClient | undefined> | undefined;
  private targetIndex = 0;
  private stopping = false;
  private loops: Promise<void>[] = [];

  constructor(
    readonly process: number,
    private readonly targets: () => Target[],
    private readonly recorder: HistoryRecorder,
    private readonly random: () => number,
    private readonly options: WorkloadOptions,
  ) {}

  start(): void {
    for (let i = 0; i < this.options.inflightMax; i++) this.loops.push(this.loop());
  }

  /** stop: no new ops; resolves when every op in flight completed or timed out. */
  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
    this.connection?.close('workload stopped');
  }

  private async loop(): Promise<void> {
    while (!this.stopping) {
      const connection = await this.connect();
      if (connection === undefined) continue;
      await this.operate(connection);
      if (this.options.thinkMs > 0) await sleep(this.options.thinkMs);
    }
  }

  /** connect: the live connection, or a new one to the current target (undefined after a failure). */
  private async connect(): Promise<NbdClient | undefined> {
    if (this.connection !== undefined && !this.connection.closed) return this.connection;
    if (this.connecting === undefined) {
      this.connecting = (async () => {
        const list = this.targets();
        if (list.length === 0) {
          await sleep(this.options.reconnectDelayMs);
          return undefined;
        }
        const target = list[this.targetIndex % list.length]!;
        try {
          const client = await NbdClient.connect(target.host, target.port, this.options.volume);
          this.stats.connects++;
          this.connection = client;
          return client;
        } catch {
          this.stats.connectFailures++;
          this.targetIndex++;
          await sleep(this.options.reconnectDelayMs);
          return undefined;
        }
      })().finally(() => (this.connecting = undefined));
    }
    return this.connecting;
  }

  private async operate(connection: NbdClient): Promise<void> {
    const r = this.random();
    const opId = this.opId++;
    const base = { process: this.process, opId };
    let f: OpFunction;
    if (r < this.options.flushFraction) f = 'flush';
    else if (r < this.options.flushFraction + this.options.readFraction) f = 'read';
    else f = 'write';
    const block = Math.floor(this.random() * this.options.keyCount);
    const key = f === 'flush' ? '' : `${this.options.volume}/${block}`;
    const tag = `c${this.process}-${opId}`;
    const value: RegisterValue = f === 'write' ? tag : null;
    this.recorder.record({ type: 'invoke', ...base, f, key, value });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), this.options.opTimeoutMs)));
    const work =
      f === 'read'
        ? connection.read(block * blockBytes, blockBytes).then((data) => decodeTag(data))
        : f === 'write'
          ? connection.write(block * blockBytes, encodeTag(tag)).then(() => tag)
          : connection.flush().then(() => null);
    const outcome = await Promise.race([work.then((v) => ({ v }), (error: unknown) => ({ error })), timeout]);
    clearTimeout(timer);
    work.catch(() => undefined);
    if (outcome === 'timeout') {
      this.recorder.record({ type: 'info', ...base, f, key, value });
      this.stats.info++;
      connection.close(`op timed out after ${this.options.opTimeoutMs} ms`);
      return;
    }
    if ('error' in outcome) {
      // A read never has an effect: it definitely failed. A write may have been applied.
      const type = f === 'read' ? 'fail' : 'info';
      this.recorder.record({ type, ...base, f, key, value });
      if (type === 'fail') this.stats.fail++;
      else this.stats.info++;
      if (outcome.error instanceof NbdErrorReply) connection.close('error reply');
      // The node hung up (it cannot serve right now): do not hammer it in a tight loop.
      await sleep(this.options.reconnectDelayMs);
      return;
    }
    this.recorder.record({ type: 'ok', ...base, f, key, value: f === 'read' ? (outcome.v as RegisterValue) : value });
    this.stats.ok++;
  }
}

/** pausedReadsMax / pausedReadIntervalMs: reads a QueuedReads probe queues at a paused node. */
export const pausedReadsMax = 48;
export const pausedReadIntervalMs = 40;

/**
 * QueuedReads: a history process connected to one node before it is paused (SIGSTOP) that keeps
 * issuing reads while the node is stopped. The kernel queues them in the node's socket; when the
 * node resumes, Node runs that waiting socket I/O before its timers, so a deposed leader that
 * trusts a lease on a clock it has not caught up answers them from its old state: a stale read
 * the checker sees, because each read was invoked after writes the new leader acknowledged.
 * Outcomes are recorded like a WorkloadClient's: ok with the value, fail on an error reply or a
 * lost connection, info when unanswered by the deadline given to finish().
 */
export class QueuedReads {
  private opId = 0;
  private timer: NodeJS.Timeout | undefined;
  private readonly reads: Promise<void>[] = [];
  private readonly settlers: ((timedOut: boolean) => void)[] = [];

  private constructor(
    private readonly connection: NbdClient,
    readonly process: string,
    private readonly recorder: HistoryRecorder,
    private readonly random: () => number,
    private readonly options: Pick<WorkloadOptions, 'volume' | 'keyCount'>,
  ) {}

  /** open: connects (and completes the NBD handshake) while the node still runs. */
  static async open(target: Target, process: string, recorder: HistoryRecorder, random: () => number, options: Pick<WorkloadOptions, 'volume' | 'keyCount'>): Promise<QueuedReads> {
    const connection = await NbdClient.connect(target.host, target.port, options.volume);
    return new QueuedReads(connection, process, recorder, random, options);
  }

  /** start: one read now and one every intervalMs (>= pausedReadIntervalMs) until stopIssuing() or pausedReadsMax. */
  start(intervalMs = pausedReadIntervalMs): void {
    assert(this.timer === undefined, 'QueuedReads starts once');
    this.issue();
    this.timer = setInterval(() => this.issue(), Math.max(pausedReadIntervalMs, intervalMs));
  }

  get issued(): number {
    return this.opId;
  }

  stopIssuing(): void {
    clearInterval(this.timer);
  }

  /** finish: no more reads; waits until each is answered or `timeoutMs` passed (then info), closes. */
  async finish(timeoutMs: number): Promise<void> {
    this.stopIssuing();
    const timer = setTimeout(() => {
      for (const settle of this.settlers) settle(true);
    }, timeoutMs);
    await Promise.all(this.reads);
    clearTimeout(timer);
    this.connection.close('queued reads done');
  }

  private issue(): void {
    if (this.opId >= pausedReadsMax || this.connection.closed) return this.stopIssuing();
    const opId = this.opId++;
    const block = Math.floor(this.random() * this.options.keyCount);
    const base = { process: this.process, opId, f: 'read' as const, key: `${this.options.volume}/${block}` };
    this.recorder.record({ type: 'invoke', ...base, value: null });
    let settled = false;
    this.reads.push(
      new Promise<void>((resolve) => {
        const settle = (timedOut: boolean, value?: RegisterValue, failed?: boolean) => {
          if (settled) return;
          settled = true;
          if (timedOut) this.recorder.record({ type: 'info', ...base, value: null });
          else if (failed) this.recorder.record({ type: 'fail', ...base, value: null });
          else this.recorder.record({ type: 'ok', ...base, value: value ?? null });
          resolve();
        };
        this.settlers.push(settle);
        this.connection.read(block * blockBytes, blockBytes).then(
          (data) => settle(false, decodeTag(data)),
          () => settle(false, null, true),
        );
      }),
    );
  }
}

/** finalReadEventsMax: the events readBlocks may record (invoke + completion per attempt). */
export function finalReadEventsMax(blockCount: number, roundsMax: number): number {
  return 2 * blockCount * roundsMax;
}

/**
 * readBlocks: final reads of many blocks over one connection per attempt round. With a recorder,
 * every attempt is recorded as a read op of process `finalReadProcess` (opIds `final-<n>`) with
 * its real invoke and completion times: ok with the value read, fail on an error or a lost
 * connection, info on a timeout. That is the record the lost-write check re-reads (checks.ts).
 */
export async function readBlocks(
  targets: Target[],
  volume: string,
  blocks: number[],
  attemptTimeoutMs: number,
  roundsMax: number,
  recorder?: HistoryRecorder,
): Promise<Map<number, RegisterValue>> {
  const out = new Map<number, RegisterValue>();
  let last = 'no targets';
  let opId = 0;
  for (let round = 0; round < roundsMax && out.size < blocks.length; round++) {
    const target = targets[round % targets.length]!;
    let client: NbdClient | undefined;
    try {
      client = await NbdClient.connect(target.host, target.port, volume);
      for (const block of blocks) {
        if (out.has(block)) continue;
        const base = { process: finalReadProcess, opId: `final-${opId++}`, f: 'read' as const, key: `${volume}/${block}` };
        recorder?.record({ type: 'invoke', ...base, value: null });
        let data: Buffer;
        try {
          data = await withTimeout(client.read(block * blockBytes, blockBytes), attemptTimeoutMs);
        } catch (error) {
          recorder?.record({ type: error instanceof TimedOut ? 'info' : 'fail', ...base, value: null });
          throw error;
        }
        const value = decodeTag(data);
        recorder?.record({ type: 'ok', ...base, value });
        out.set(block, value);
      }
    } catch (error) {
      last = `${target.label}: ${(error as Error).message}`;
      await sleep(250);
    } finally {
      client?.close();
    }
  }
  if (out.size < blocks.length) throw new RemoteError(ErrorCode.Unavailable, `final reads incomplete after ${roundsMax} rounds (last: ${last})`);
  return out;
}

class TimedOut extends Error {}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new TimedOut(`timed out after ${ms} ms`)), ms))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

