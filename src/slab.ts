/**
 * slab: buffers of the hot paths carved out of shared slabs instead of allocated one by one.
 *
 * Node pools only allocations below 4 KiB (Buffer.poolSize 8 KiB, half of it the limit); a buffer
 * of one block or more gets an ArrayBuffer of its own, which on these machines costs ~2 µs each
 * (malloc, external-memory accounting, a finalizer for the GC) against ~0.2 µs for a view of a
 * slab. Every read of a block and every write's encoded command takes one.
 *
 * A slab lives as long as any piece of it, so only buffers that die young or in the order they
 * were taken (a read's reply; an entry's data, which leaves the raft log's caches in index order)
 * come from here; raising Buffer.poolSize instead would let any small long-lived buffer anywhere
 * in the process keep a whole slab alive. Pieces larger than `pieceBytesMax` are allocated on their
 * own. A piece's bytes are not zeroed: the caller writes every byte it hands on.
 */

import { assert } from './assert.js';

/** slabLimits: the size of one slab and of the largest piece taken from it. */
export const slabLimits = {
  slabBytes: 256 * 1024,
  pieceBytesMax: 64 * 1024,
} as const;

export class Slab {
  private slab: Buffer | undefined;
  private used = 0;

  constructor(
    readonly slabBytes: number = slabLimits.slabBytes,
    readonly pieceBytesMax: number = slabLimits.pieceBytesMax,
  ) {
    assert(Number.isSafeInteger(slabBytes) && Number.isSafeInteger(pieceBytesMax) && pieceBytesMax > 0 && pieceBytesMax <= slabBytes, 'a slab holds its largest piece');
  }

  /** take: `n` uninitialised bytes; a view of the current slab unless n > pieceBytesMax. */
  take(n: number): Buffer {
    assert(Number.isSafeInteger(n) && n >= 0, 'a piece has a size');
    if (n > this.pieceBytesMax) return Buffer.allocUnsafeSlow(n);
    if (this.slab === undefined || this.used + n > this.slab.length) {
      this.slab = Buffer.allocUnsafeSlow(this.slabBytes);
      this.used = 0;
    }
    const piece = this.slab.subarray(this.used, this.used + n);
    this.used += (n + 7) & ~7; // the next piece 8-byte aligned, as Node's own pool does
    return piece;
  }
}

/** blockSlab: the process's slab for block-sized buffers of the read and write paths. */
export const blockSlab = new Slab();
