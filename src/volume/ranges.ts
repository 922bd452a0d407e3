/**
 * ranges: the sparse-range walker of a volume — the one place that cuts a byte range into block
 * pieces and coalesces pieces into the answers of READ (data chunks and holes) and BLOCK_STATUS
 * (allocation extents), and that splits a large request into bounded pieces.
 */

import { assert } from '../assert.js';

/** ReadChunk: a piece of a read. Without `data` the piece is a hole and reads as zeros. */
export interface ReadChunk {
  offset: number;
  length: number;
  data?: Uint8Array;
}

/** Extent: allocation status of `length` bytes (base:allocation). */
export interface Extent {
  length: number;
  hole: boolean;
  zero: boolean;
}

/** BlockPiece: the part [from, to) of a range that falls in block `block` (starting at `blockStart`). */
export interface BlockPiece {
  block: number;
  blockStart: number;
  from: number;
  to: number;
}

/** blockPieces: [offset, offset+length) cut at every multiple of `blockBytes`, in order. */
export function* blockPieces(offset: number, length: number, blockBytes: number): Generator<BlockPiece> {
  const end = offset + length;
  let at = offset;
  while (at < end) {
    const block = Math.floor(at / blockBytes);
    const blockStart = block * blockBytes;
    const to = Math.min(end, blockStart + blockBytes);
    yield { block, blockStart, from: at, to };
    at = to;
  }
}

/** splitRange: [offset, offset+length) as consecutive pieces of at most `pieceBytes` (one piece for length 0). */
export function splitRange(offset: number, length: number, pieceBytes: number): Array<{ offset: number; length: number }> {
  assert(pieceBytes > 0, 'pieces are non-empty');
  if (length <= pieceBytes) return [{ offset, length }];
  const pieces: Array<{ offset: number; length: number }> = [];
  for (let at = 0; at < length; at += pieceBytes) pieces.push({ offset: offset + at, length: Math.min(pieceBytes, length - at) });
  return pieces;
}

/**
 * ChunkRuns: builds a read answer from pieces in order. Adjacent data pieces become one chunk
 * (concatenated once, when the run ends; a run of one piece is the piece itself unless `copy`),
 * adjacent holes one hole; the chunks cover the range exactly.
 */
export class ChunkRuns {
  private readonly chunks: ReadChunk[] = [];
  private run: { offset: number; length: number; pieces: Uint8Array[] } | undefined;
  private at: number;

  constructor(
    offset: number,
    private readonly copy = false,
  ) {
    this.at = offset;
  }

  /** hole: zeros from the current position up to `to` (nothing if `to` is not beyond it). */
  hole(to: number): void {
    if (to <= this.at) return;
    this.endRun();
    const previous = this.chunks[this.chunks.length - 1];
    if (previous !== undefined && previous.data === undefined) previous.length += to - this.at;
    else this.chunks.push({ offset: this.at, length: to - this.at });
    this.at = to;
  }

  /** data: `piece` at the current position. */
  data(piece: Uint8Array): void {
    if (piece.length === 0) return;
    this.run ??= { offset: this.at, length: 0, pieces: [] };
    this.run.pieces.push(piece);
    this.run.length += piece.length;
    this.at += piece.length;
  }

  /** finish: the chunks, with a hole up to `end`. */
  finish(end: number): ReadChunk[] {
    this.hole(end);
    this.endRun();
    return this.chunks;
  }

  private endRun(): void {
    const run = this.run;
    if (run === undefined) return;
    this.run = undefined;
    let data: Uint8Array;
    if (run.pieces.length === 1 && !this.copy) data = run.pieces[0]!;
    else {
      data = new Uint8Array(run.length);
      let p = 0;
      for (const piece of run.pieces) {
        data.set(piece, p);
        p += piece.length;
      }
    }
    this.chunks.push({ offset: run.offset, length: run.length, data });
  }
}

/**
 * ExtentRuns: builds a block-status answer from pieces in order; adjacent pieces of the same kind
 * merge. With `extentsMax`, a piece that would need one more extent is refused (push returns
 * false) and the answer is a prefix of the range, as NBD allows.
 */
export class ExtentRuns {
  private readonly list: Extent[] = [];
  private at: number;

  constructor(
    offset: number,
    private readonly extentsMax = Number.POSITIVE_INFINITY,
  ) {
    this.at = offset;
  }

  push(to: number, hole: boolean): boolean {
    if (to <= this.at) return true;
    const previous = this.list[this.list.length - 1];
    if (previous !== undefined && previous.hole === hole) previous.length += to - this.at;
    else {
      if (this.list.length >= this.extentsMax) return false;
      this.list.push({ length: to - this.at, hole, zero: hole });
    }
    this.at = to;
    return true;
  }

  extents(): Extent[] {
    return this.list;
  }
}
