/**
 * stamped-load: a verifying NBD load for integration tests. One StampedLoad owns a region of a
 * volume that no other client touches and keeps `depth` requests in flight on one NBD connection:
 * 4 KiB writes, 1 MiB writes and reads of 4-128 KiB. Every 4 KiB block it writes is stamped with
 * (client, block, sequence), so any block read back names the write it came from.
 *
 * The model: per block, the sequence of the last ACKNOWLEDGED write (0 = never written: zeros).
 * Requests in flight never overlap (a block is busy while one is), so a read of a block must
 * return exactly its model value — any other value is a lost or a stale write. A write in flight
 * when the connection dies (only allowed once `expectLoss()` was called: its node was stopped on
 * purpose) may or may not have been applied: its blocks accept either value from then on and
 * are not written again (a write still travelling inside the cluster could land later).
 *
 * Failures are collected, never thrown: `errors` holds every error reply (with errno), every
 * read that did not match, and every connection lost without `expectLoss()`.
 */

import { ConnectionLost, NbdClient, NbdErrorReply } from '../../src/chaos/workload.js';
import { Errno } from '../../src/nbd/protocol.js';

export const blockBytes = 4096;
const MiB = 1024 * 1024;
const bigBlocks = MiB / blockBytes;
/** readBlocksMax: the longest read (NbdClient buffers at most 1 MiB of replies). */
const readBlocksMax = 32;

/** stamp: the content of block `block` written by client `client` as write `sequence`. */
export function stamp(client: number, block: number, sequence: number, into = Buffer.alloc(blockBytes), at = 0): Buffer {
  for (let i = 0; i < blockBytes; i += 16) {
    into.writeUInt32BE(0x63686172, at + i); // "char"
    into.writeUInt32BE(client, at + i + 4);
    into.writeUInt32BE(block, at + i + 8);
    into.writeUInt32BE(sequence, at + i + 12);
  }
  return into;
}

/** decodeStamp: the sequence a block holds (0 for zeros), or a description of what is wrong with it. */
export function decodeStamp(client: number, block: number, data: Buffer, at = 0): number | string {
  const piece = data.subarray(at, at + blockBytes);
  if (piece.every((b) => b === 0)) return 0;
  const sequence = piece.readUInt32BE(12);
  if (!piece.equals(stamp(client, block, sequence))) return `block ${block}: not a stamp of client ${client} (starts ${piece.subarray(0, 16).toString('hex')})`;
  return sequence;
}

export interface LoadCounts {
  writes4k: number;
  writes1m: number;
  reads: number;
  /** shutdownReplies: ESHUTDOWN answers on a connection whose node was being stopped (not applied). */
  shutdownReplies: number;
}

export class StampedLoad {
  readonly errors: string[] = [];
  readonly counts: LoadCounts = { writes4k: 0, writes1m: 0, reads: 0, shutdownReplies: 0 };
  /** ackTimes: performance.now() of every acknowledged write. */
  readonly ackTimes: number[] = [];
  /** lost: connections that ended while loss was expected. */
  lost = 0;
  private readonly model: Uint32Array;
  private readonly maybe = new Map<number, Set<number>>();
  private readonly busy = new Set<number>();
  private sequence = 0;
  private connection: NbdClient | undefined;
  private workers: Promise<void>[] = [];
  private stopping = false;
  private lossExpected = false;
  private random: () => number;

  constructor(
    readonly name: string,
    readonly client: number,
    readonly firstBlock: number,
    readonly blocks: number,
    readonly depth: number,
    seed: number,
  ) {
    this.model = new Uint32Array(blocks);
    let s = seed >>> 0 || 1;
    this.random = () => {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      return (s >>> 0) / 2 ** 32;
    };
  }

  get acked(): number {
    return this.ackTimes.length;
  }

  /** ackedBetween: writes acknowledged in [from, to] (performance.now() times). */
  ackedBetween(from: number, to: number): number {
    let n = 0;
    for (const t of this.ackTimes) if (t >= from && t <= to) n++;
    return n;
  }

  /** run: start `depth` request loops on `connection` (a new one after a loss). */
  run(connection: NbdClient): void {
    this.connection = connection;
    this.lossExpected = false;
    this.stopping = false;
    this.workers = Array.from({ length: this.depth }, () => this.worker(connection));
  }

  /** expectLoss: this connection's node is being stopped; losing it is not an error. */
  expectLoss(): void {
    this.lossExpected = true;
  }

  /** settled: the loops ended (connection lost or stop()). */
  async settled(): Promise<void> {
    await Promise.all(this.workers);
  }

  /** stop: let the requests in flight finish (a request unanswered after `timeoutMs` is an error), then close. */
  async stop(timeoutMs = 30_000): Promise<void> {
    this.stopping = true;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs)));
    const hung = await Promise.race([this.settled().then(() => false), expired]);
    clearTimeout(timer);
    if (hung) {
      this.errors.push(`${this.name}: requests still unanswered ${timeoutMs} ms after stop()`);
      this.lossExpected = true; // closing it below fails them; that is not another error
    }
    this.connection?.close();
    await this.settled();
  }

  /** check: compare `data` (the region's blocks from `fromBlock`) with the model; returns problems. */
  check(fromBlock: number, data: Buffer): string[] {
    const problems: string[] = [];
    for (let i = 0; i * blockBytes < data.length; i++) {
      const problem = this.checkBlock(fromBlock + i, data, i * blockBytes);
      if (problem !== undefined) problems.push(problem);
    }
    return problems;
  }

  private checkBlock(relative: number, data: Buffer, at: number): string | undefined {
    const block = this.firstBlock + relative;
    const got = decodeStamp(this.client, block, data, at);
    if (typeof got === 'string') return `${this.name} ${got}`;
    const want = this.model[relative]!;
    if (got === want || this.maybe.get(relative)?.has(got)) return undefined;
    return `${this.name} block ${block}: holds write ${got}, last acknowledged write is ${want}`;
  }

  private pick(): { kind: 'write' | 'read'; from: number; count: number } {
    for (;;) {
      const r = this.random();
      const kind = r < 0.3 ? 'read' : 'write';
      let from: number;
      let count: number;
      if (kind === 'write' && r > 0.9 && this.blocks >= bigBlocks) {
        from = Math.floor(this.random() * Math.floor(this.blocks / bigBlocks)) * bigBlocks;
        count = bigBlocks;
      } else if (kind === 'read') {
        count = 1 + Math.floor(this.random() * readBlocksMax);
        from = Math.floor(this.random() * (this.blocks - count + 1));
      } else {
        from = Math.floor(this.random() * this.blocks);
        count = 1;
      }
      let free = true;
      for (let b = from; b < from + count && free; b++) if (this.busy.has(b) || (kind === 'write' && this.maybe.has(b))) free = false;
      if (free) return { kind, from, count };
    }
  }

  private addMaybe(from: number, count: number, sequence: number): void {
    for (let b = from; b < from + count; b++) {
      const set = this.maybe.get(b) ?? new Set<number>();
      set.add(sequence);
      this.maybe.set(b, set);
    }
  }

  private async worker(connection: NbdClient): Promise<void> {
    while (!this.stopping && this.connection === connection) {
      const op = this.pick();
      for (let b = op.from; b < op.from + op.count; b++) this.busy.add(b);
      const offset = (this.firstBlock + op.from) * blockBytes;
      const sequence = op.kind === 'write' ? ++this.sequence : 0;
      try {
        if (op.kind === 'write') {
          const data = Buffer.alloc(op.count * blockBytes);
          for (let i = 0; i < op.count; i++) stamp(this.client, this.firstBlock + op.from + i, sequence, data, i * blockBytes);
          await connection.write(offset, data);
          for (let b = op.from; b < op.from + op.count; b++) this.model[b] = sequence;
          this.ackTimes.push(performance.now());
          if (op.count === 1) this.counts.writes4k++;
          else this.counts.writes1m++;
        } else {
          const data = await connection.read(offset, op.count * blockBytes);
          this.counts.reads++;
          const problems = this.check(op.from, data);
          if (problems.length > 0) this.errors.push(`read at block ${this.firstBlock + op.from} x${op.count}: ${problems.slice(0, 3).join('; ')}`);
        }
      } catch (error) {
        if (error instanceof ConnectionLost) {
          if (!this.lossExpected) this.errors.push(`${this.name}: ${error.message} (its node was not being stopped)`);
          else if (this.connection === connection) this.lost++;
          if (op.kind === 'write') this.addMaybe(op.from, op.count, sequence);
          this.connection = this.connection === connection ? undefined : this.connection;
          return;
        }
        if (error instanceof NbdErrorReply && error.errno === Errno.ESHUTDOWN && this.lossExpected) {
          this.counts.shutdownReplies++; // answered before it ran (not applied); the connection is closing
          if (this.connection === connection) {
            this.lost++;
            this.connection = undefined;
          }
          return;
        }
        if (op.kind === 'write') this.addMaybe(op.from, op.count, sequence); // an error does not say it was not applied
        this.errors.push(`${this.name} ${op.kind} of ${op.count} block(s) at ${this.firstBlock + op.from}: ${error instanceof Error ? error.message : String(error)}`);
      } finally {
        for (let b = op.from; b < op.from + op.count; b++) this.busy.delete(b);
      }
    }
  }
}
