/**
 * clock: the node's only source of time. `Clock.now()` is monotonic milliseconds (never wall
 * time), so a step of the system clock cannot stretch or shrink a lease. Tests and the chaos
 * harness substitute their own clock.
 */
import { performance } from 'node:perf_hooks';

export interface Clock {
  /** now: monotonic milliseconds. */
  now(): number;
}

export const systemClock: Clock = { now: () => performance.now() };

/**
 * Ticker: turns elapsed monotonic time into raft ticks. If the process was paused (SIGSTOP, a
 * long GC, a blocked fsync), the ticks it missed are delivered at once on resume, before any
 * message is handled, so that the core sees its lease expire exactly as the clock says.
 * `ticksPerCallMax` bounds the catch-up burst; beyond it, the extra time is dropped (the lease
 * only gets shorter for it, never longer).
 */
export class Ticker {
  private last: number;
  private remainder = 0;
  constructor(
    private readonly clock: Clock,
    readonly tickIntervalMs: number,
    readonly ticksPerCallMax = 1000,
  ) {
    this.last = clock.now();
  }

  /** due: how many ticks have elapsed since the previous call. */
  due(): number {
    const now = this.clock.now();
    const elapsed = now - this.last + this.remainder;
    this.last = now;
    const ticks = Math.floor(elapsed / this.tickIntervalMs);
    this.remainder = elapsed - ticks * this.tickIntervalMs;
    return Math.min(ticks, this.ticksPerCallMax);
  }
}

/** Timer: a scheduled callback that can be cancelled (cancel after it ran is a no-op). */
export interface Timer {
  cancel(): void;
}

/**
 * Scheduler: the only way the node runtime (Replica and its waiters) reaches time and the event
 * loop. `now` is the monotonic Clock; `soon` runs a callback after the I/O callbacks already queued
 * in this turn (setImmediate); `after` once after `ms` (setTimeout); `every` repeatedly
 * (setInterval). Production uses `systemScheduler`; the seeded simulator substitutes a step-clocked
 * one, so that the code that ships is the code the simulator runs. Timers of `systemScheduler` are
 * unref'd: a pending timer alone never keeps a process alive.
 */
export interface Scheduler extends Clock {
  soon(fn: () => void): void;
  after(ms: number, fn: () => void): Timer;
  every(ms: number, fn: () => void): Timer;
}

export const systemScheduler: Scheduler = {
  now: () => performance.now(),
  soon: (fn) => {
    setImmediate(fn);
  },
  after: (ms, fn) => {
    const handle = setTimeout(fn, ms);
    handle.unref?.();
    return { cancel: () => clearTimeout(handle) };
  },
  every: (ms, fn) => {
    const handle = setInterval(fn, ms);
    handle.unref?.();
    return { cancel: () => clearInterval(handle) };
  },
};
