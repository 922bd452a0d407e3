/** pointer-crash-model: the deterministic batches of pointer-crash-child.ts and what they leave in the volume. */

import type { Command } from '../../src/blockstore/commands.js';
import type { BlockStoreLimits } from '../../src/blockstore/index.js';
import { Prng } from './helpers.js';

const KiB = 1024;
export const volumeBytes = 2 * 1024 * KiB;
/** headerEntries: the bootstrap entry and the createVolume before the first batch. */
export const headerEntries = 2;
/** crashLimits: small segments and relocation turns, so that compactions delete segments and yield often. */
export const crashLimits: Partial<BlockStoreLimits> = { segmentBytesMax: 64 * KiB, compactionTrailingEntries: 0, relocateBytesPerTurn: 64 * KiB, commitDelayMs: 5 };

/** batchCommands: batch j of `seed` — four aligned writes of 1-4 blocks and one partial write. */
export function batchCommands(seed: number, j: number): Command[] {
  const rng = new Prng(seed * 1_000_003 + j);
  const out: Command[] = [];
  for (let i = 0; i < 4; i++) {
    const blocks = 1 + rng.int(4);
    out.push({ kind: 'write', volume: 'v', offset: rng.int(volumeBytes / (4 * KiB) - blocks) * 4 * KiB, data: rng.bytes(blocks * 4 * KiB) });
  }
  out.push({ kind: 'write', volume: 'v', offset: rng.int(volumeBytes - 3000), data: rng.bytes(1 + rng.int(3000)) });
  return out;
}

/** modelAfter: the volume's bytes after batches 1..count. */
export function modelAfter(seed: number, count: number): Uint8Array {
  const bytes = new Uint8Array(volumeBytes);
  for (let j = 1; j <= count; j++) for (const c of batchCommands(seed, j)) if (c.kind === 'write') bytes.set(c.data, c.offset);
  return bytes;
}
