/**
 * slab: Slab (src/slab.ts), the buffers of the read and write paths carved out of shared slabs.
 * Pieces never overlap (each one written with its own byte survives every later take), start
 * 8-byte aligned, move to a new slab when the current one is full, and a piece larger than
 * pieceBytesMax is a buffer of its own.
 */

import test from 'ava';
import { Slab } from '../../src/slab.js';

test('pieces never overlap, are aligned, and fill one slab before the next', (t) => {
  const slab = new Slab(64 * 1024, 16 * 1024);
  const sizes = [1, 7, 8, 9, 4096, 4140, 16 * 1024, 0, 3, 12_345];
  const pieces: Buffer[] = [];
  for (let i = 0; i < 400; i++) {
    const piece = slab.take(sizes[i % sizes.length]!);
    t.is(piece.length, sizes[i % sizes.length]!);
    t.is(piece.byteOffset % 8, 0, 'aligned');
    piece.fill(i & 0xff);
    pieces.push(piece);
  }
  pieces.forEach((piece, i) => t.true(piece.every((b) => b === (i & 0xff)), `piece ${i} kept its bytes`));
  const buffers = new Set(pieces.map((p) => p.buffer));
  t.true(buffers.size > 1 && buffers.size < pieces.length, 'pieces share slabs, several slabs in all');
});

test('a piece larger than pieceBytesMax is a buffer of its own', (t) => {
  const slab = new Slab(64 * 1024, 16 * 1024);
  const small = slab.take(100);
  const big = slab.take(16 * 1024 + 1);
  t.not(big.buffer, small.buffer);
  t.is(big.byteLength, big.buffer.byteLength);
  t.is(slab.take(100).buffer, small.buffer, 'the slab carries on after it');
});

test('a slab must hold its largest piece', (t) => {
  t.throws(() => new Slab(1024, 2048));
  t.throws(() => new Slab(1024, 0));
});
