/**
 * byte-queue: the bytes received from a stream, held as the chunks they arrived in, and cut into
 * exact-size pieces. The one cut of the NBD server's StreamReader and the raft link's
 * FrameDecoder: a piece that lies inside one chunk is a view of it (no copy); only a piece that
 * spans chunks is copied into a buffer of its own.
 */

import { assert } from './assert.js';

export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  private bytes = 0;

  /** length: bytes held. */
  get length(): number {
    return this.bytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.bytes += chunk.length;
  }

  /** take: the next `n` bytes (n <= length): a view when they lie in one chunk, else a copy. */
  take(n: number): Buffer {
    assert(Number.isSafeInteger(n) && n >= 0 && n <= this.bytes, 'take within the queue');
    this.bytes -= n;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0]!;
      const part = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, part);
      filled += part;
      if (part === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(part);
    }
    return out;
  }
}
