/**
 * random: a small seeded PRNG (sfc32 seeded through splitmix32) for the core and the simulator.
 * The same seed always yields the same sequence on every platform.
 */

import type { Random } from './types.js';

function splitmix32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x9e3779b9) >>> 0;
    let z = state;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

/** SeededRandom: sfc32; `next()` is a 32-bit unsigned integer. */
export class SeededRandom implements Random {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number) {
    const mix = splitmix32(seed);
    this.a = mix();
    this.b = mix();
    this.c = mix();
    this.d = mix();
    for (let i = 0; i < 12; i++) this.next();
  }

  next(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t >>> 0;
  }

  int(n: number): number {
    if (n <= 1) return 0;
    return Math.floor((this.next() / 4294967296) * n);
  }

  /** float: uniform in [0, 1). */
  float(): number {
    return this.next() / 4294967296;
  }

  /** chance: true with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  /** pick: a uniformly chosen element of a non-empty array. */
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  /** fork: an independent generator derived from this one (for sub-streams). */
  fork(): SeededRandom {
    return new SeededRandom(this.next());
  }
}
