/**
 * sim-scheduler: the simulator's step-clocked implementation of the node runtime's Scheduler port
 * (src/node/clock.ts), so the seeded simulator drives the Replica that ships.
 *
 * One SimWorld holds one event queue for the whole simulated cluster, ordered by (time, phase,
 * sequence): deterministic, no wall clock, no real timers. Time is simulated milliseconds. Each
 * node incarnation gets its own NodeScheduler: `now()` is simulated time, `soon` queues at now
 * (phase "io"), `after`/`every` queue at now + ms (phase "timer"), and `io` is how the outside
 * world (peer messages, client requests) reaches the node. At equal time every io/soon callback
 * runs before any timer, the way Node runs socket callbacks and setImmediate before the next
 * timers phase once its poll returns.
 *
 * A paused process (SIGSTOP, a GC pause, a VM freeze) runs nothing: events of a paused node are
 * held. On resume, the held I/O callbacks (peer messages, client proposals and reads, in an order
 * the seed shuffles, as epoll hands ready sockets back in no particular order) run FIRST, then its
 * held soon callbacks, then its timers — so time has jumped, I/O runs, then the ticks fire. A
 * blocking fsync (`busy(ms)`) is the same thing on a small scale: the node's own clock moves on
 * within the callback and whatever arrives meanwhile waits until the callback is over.
 *
 * A callback that throws SimCrash ends its node at that instant (a crash inside a synchronous
 * fsync): the rest of the callback never runs, and every event of that incarnation is dropped.
 */

import type { Scheduler, Timer } from '../../src/node/clock.js';
import type { SeededRandom } from '../../src/raft/random.js';

/** SimCrash: thrown from inside a node's callback to crash the node at that instant. */
export class SimCrash extends Error {
  constructor(readonly why: string) {
    super(`simulated crash: ${why}`);
  }
}

const PhaseIo = 0;
const PhaseTimer = 1;

interface SimEvent {
  time: number;
  phase: number;
  seq: number;
  owner: NodeScheduler | undefined;
  kind: 'io' | 'soon' | 'timer' | 'control';
  fn: () => void;
  cancelled: boolean;
}

function before(a: SimEvent, b: SimEvent): boolean {
  return a.time < b.time || (a.time === b.time && (a.phase < b.phase || (a.phase === b.phase && a.seq < b.seq)));
}

/** SimWorld: the global event queue (a binary heap) and the simulated time. */
export class SimWorld {
  now = 0;
  private readonly heap: SimEvent[] = [];
  private seq = 0;
  /** eventsRun: callbacks run so far (for the stats). */
  eventsRun = 0;

  constructor(readonly random: SeededRandom) {}

  /** at: a world-level callback (faults, operators, clients) at simulated time `time`. */
  at(time: number, fn: () => void): Timer {
    return this.push(Math.max(time, this.now), PhaseTimer, undefined, 'control', fn);
  }

  push(time: number, phase: number, owner: NodeScheduler | undefined, kind: SimEvent['kind'], fn: () => void): Timer {
    const event: SimEvent = { time, phase, seq: 0, owner, kind, fn, cancelled: false };
    this.insert(event);
    return { cancel: () => void (event.cancelled = true) };
  }

  /** requeue: a held event goes back into the queue at `time` (its cancel handle still works). */
  requeue(event: SimEvent, time: number, phase: number): void {
    if (event.cancelled) return;
    event.time = time;
    event.phase = phase;
    this.insert(event);
  }

  private insert(event: SimEvent): void {
    event.seq = ++this.seq;
    const heap = this.heap;
    heap.push(event);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!before(heap[i]!, heap[parent]!)) break;
      [heap[i], heap[parent]] = [heap[parent]!, heap[i]!];
      i = parent;
    }
  }

  private pop(): SimEvent | undefined {
    const heap = this.heap;
    if (heap.length === 0) return undefined;
    const top = heap[0]!;
    const last = heap.pop()!;
    if (heap.length > 0) {
      heap[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < heap.length && before(heap[l]!, heap[m]!)) m = l;
        if (r < heap.length && before(heap[r]!, heap[m]!)) m = r;
        if (m === i) break;
        [heap[i], heap[m]] = [heap[m]!, heap[i]!];
        i = m;
      }
    }
    return top;
  }

  /** nextTime: time of the earliest queued event (Infinity when none). */
  nextTime(): number {
    return this.heap.length === 0 ? Infinity : this.heap[0]!.time;
  }

  /**
   * runOne: runs the earliest event whose time is <= `until` and returns its node (undefined for a
   * world event); false when there is none. Time moves to that event's time. A SimCrash from a
   * node callback is passed to `onCrash`.
   */
  runOne(until: number, onCrash: (node: NodeScheduler, crash: SimCrash) => void): NodeScheduler | undefined | false {
    for (;;) {
      const top = this.heap[0];
      if (top === undefined || top.time > until) return false;
      const event = this.pop()!;
      if (event.cancelled) continue;
      this.now = event.time;
      if (event.owner === undefined) {
        this.eventsRun++;
        event.fn();
        return undefined;
      }
      const ran = event.owner.dispatch(event, onCrash);
      if (ran) {
        this.eventsRun++;
        return event.owner;
      }
    }
  }
}

/** NodeScheduler: the Scheduler of one node incarnation (see the file comment). */
export class NodeScheduler implements Scheduler {
  state: 'up' | 'paused' | 'dead' = 'up';
  /** localNow: the node's own clock inside a callback (ahead of the world while it fsyncs). */
  private localNow = 0;
  private busyUntil = 0;
  private pausedUntil = 0;
  private heldIo: SimEvent[] = [];
  private heldOther: SimEvent[] = [];
  /** inCallback: a callback of this node is running (busy() is only meaningful then). */
  private inCallback = false;
  private onResume: ((heldIo: number) => void) | undefined;

  constructor(
    readonly world: SimWorld,
    readonly id: number,
    private readonly random: SeededRandom,
  ) {
    this.localNow = world.now;
  }

  now(): number {
    return this.inCallback ? this.localNow : this.world.now;
  }

  soon(fn: () => void): void {
    if (this.state === 'dead') return;
    this.world.push(this.now(), PhaseIo, this, 'soon', fn);
  }

  after(ms: number, fn: () => void): Timer {
    if (this.state === 'dead') return { cancel: () => {} };
    return this.world.push(this.now() + Math.max(0, ms), PhaseTimer, this, 'timer', fn);
  }

  every(ms: number, fn: () => void): Timer {
    let current: Timer | undefined;
    let cancelled = false;
    const arm = () => {
      if (cancelled || this.state === 'dead') return;
      current = this.world.push(this.now() + Math.max(1e-3, ms), PhaseTimer, this, 'timer', () => {
        arm();
        fn();
      });
    };
    arm();
    return {
      cancel: () => {
        cancelled = true;
        current?.cancel();
      },
    };
  }

  /** io: a callback from outside the node (a message, a client request) arriving at `time`. */
  io(time: number, fn: () => void): void {
    if (this.state === 'dead') return;
    this.world.push(Math.max(time, this.world.now), PhaseIo, this, 'io', fn);
  }

  /** busy: the running callback blocks for `ms` (a synchronous fsync); the node's clock moves on. */
  busy(ms: number): void {
    if (!this.inCallback || ms <= 0) return;
    this.localNow += ms;
  }

  /** pause: the process stops running anything until `until` (then resume order as above). */
  pause(until: number, onResume?: (heldIo: number) => void): void {
    if (this.state !== 'up') return;
    this.state = 'paused';
    this.pausedUntil = until;
    this.onResume = onResume;
    this.world.push(until, PhaseIo, undefined, 'control', () => this.release());
  }

  /** resume: end a pause now (the liveness phase heals everything). */
  resume(): void {
    if (this.state !== 'paused') return;
    this.pausedUntil = this.world.now;
    this.release();
  }

  /** kill: the incarnation is gone; its queued and held events are dropped. */
  kill(): void {
    this.state = 'dead';
    this.heldIo = [];
    this.heldOther = [];
  }

  dispatch(event: SimEvent, onCrash: (node: NodeScheduler, crash: SimCrash) => void): boolean {
    if (this.state === 'dead') return false;
    if (this.state === 'paused' || this.world.now < this.busyUntil) {
      (event.kind === 'io' ? this.heldIo : this.heldOther).push(event);
      return false;
    }
    this.inCallback = true;
    this.localNow = this.world.now;
    try {
      event.fn();
    } catch (error) {
      if (!(error instanceof SimCrash)) throw error;
      this.inCallback = false;
      onCrash(this, error);
      return true;
    } finally {
      this.inCallback = false;
    }
    if (this.localNow > this.world.now && this.state === 'up') {
      this.busyUntil = this.localNow;
      this.world.push(this.busyUntil, PhaseIo, undefined, 'control', () => this.release());
    }
    return true;
  }

  /** release: the pause or the blocking call is over; held events run, I/O first, timers last. */
  private release(): void {
    if (this.state === 'dead') return;
    if (this.world.now < this.busyUntil || (this.state === 'paused' && this.world.now < this.pausedUntil)) return;
    if (this.state === 'paused') {
      const onResume = this.onResume;
      this.onResume = undefined;
      this.state = 'up';
      onResume?.(this.heldIo.length);
    }
    const io = this.heldIo;
    const other = this.heldOther;
    this.heldIo = [];
    this.heldOther = [];
    // epoll hands the ready sockets back in no particular order: the seed decides.
    for (let i = io.length - 1; i > 0; i--) {
      const j = this.random.int(i + 1);
      [io[i], io[j]] = [io[j]!, io[i]!];
    }
    const now = this.world.now;
    for (const event of io) this.world.requeue(event, now, PhaseIo);
    for (const event of other) if (event.kind === 'soon') this.world.requeue(event, now, PhaseIo);
    for (const event of other) if (event.kind !== 'soon') this.world.requeue(event, now, PhaseTimer);
  }

  /** heldIoCount: I/O callbacks waiting for the node to resume (for the trace). */
  heldIoCount(): number {
    return this.heldIo.length;
  }
}
