/**
 * checkpointer: moves state.db's WAL checkpoints off the event loop. With SQLite's automatic
 * checkpoint, the COMMIT that pushes the WAL past 1,000 pages also copies those pages into the
 * database file and fsyncs it — on the event loop: 70-200 ms per such commit under a 256 MiB copy,
 * long enough for a two-node cluster to lose its leader (CheckQuorum). A node's BlockStateMachine
 * turns the automatic checkpoint off on its connection and runs a Checkpointer instead: a worker
 * thread with its own connection that checkpoints (PASSIVE: it never waits for the writer or for
 * readers). Should the worker die, the connection checkpoints in its commits again (`onLost`).
 *
 * When: every `pollMs` the worker reads the WAL's frame counts from the wal-index header in
 * `state.db-shm` (136 bytes; the layout is SQLite's documented WAL format, sqlite.org/walformat.html)
 * and checkpoints once the frames not yet copied into state.db reach `walBytes` ('size'), or once
 * the WAL has not grown for `idleMs` with frames pending ('idle'). Checkpointing by size rather
 * than every 200 ms is a write-amplification choice: a checkpoint writes each page that changed
 * since the last one once, however often it changed, so a longer interval folds the many writes
 * of one B-tree leaf (a leaf holds ~8 block rows) into one. Measured on one store (64k-block
 * volume, random 4 KiB writes in 32-row transactions, /proc write_bytes): SQLite wrote 2.66x the
 * payload checkpointing every 512 writes and 1.95x every 8,192 writes (empty volume; 4.13x and
 * 3.06x on a full one). The cost: the WAL grows to `walBytes` before it is reset, and a
 * connection's close (shutdown, a snapshot install) checkpoints what is pending on its thread.
 * A header the worker cannot read (not initialised, or changing under it) counts as unknown, and
 * the worker then checkpoints every `idleMs`, as a timer would.
 */

import { readSync } from 'node:fs';
import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { assert } from '../assert.js';

/** CheckpointLimits: when the worker checkpoints (see the file comment). */
export interface CheckpointLimits {
  /** walBytes: checkpoint once the WAL holds this many bytes of frames not yet in state.db. */
  walBytes: number;
  /** idleMs: ... or once the WAL has not grown for this long with frames pending. */
  idleMs: number;
  /** pollMs: how often the worker reads the wal-index header (one 136-byte read). */
  pollMs: number;
}

/** CheckpointWorkerData: what the worker (checkpoint-worker.ts) is started with. */
export interface CheckpointWorkerData {
  file: string;
  limits: CheckpointLimits;
  /**
   * state: Int32Array over a SharedArrayBuffer: [stateStop] stop requested, [stateClosed]
   * connection closed, [stateSizeCheckpoints] / [stateIdleCheckpoints] checkpoints run by each
   * trigger, [statePendingKiB] WAL bytes not yet in state.db after the last look, in KiB.
   */
  state: SharedArrayBuffer;
}

export const stateStop = 0;
export const stateClosed = 1;
export const stateSizeCheckpoints = 2;
export const stateIdleCheckpoints = 3;
export const statePendingKiB = 4;
const stateWords = 5;

/** WalIndexHeader: what the worker needs of the wal-index header. */
export interface WalIndexHeader {
  /** frames: mxFrame, the frames in the WAL since its last reset. */
  frames: number;
  /** backfilled: nBackfill, the frames a checkpoint already copied into the database. */
  backfilled: number;
  pageBytes: number;
}

/** walIndexHeaderBytes: two copies of WalIndexHdr (48 bytes each), then WalCkptInfo. */
export const walIndexHeaderBytes = 136;
const walIndexVersion = 3007000;
/** walFrameHeaderBytes: each WAL frame is a 24-byte header and one page. */
export const walFrameHeaderBytes = 24;

/**
 * parseWalIndexHeader: the header at the start of `<db>-shm`, or undefined when it is not
 * initialised or its two copies differ (a writer is updating it: ask again later). The wal-index
 * is in the machine's byte order.
 */
export function parseWalIndexHeader(bytes: Buffer): WalIndexHeader | undefined {
  if (bytes.length < walIndexHeaderBytes || !bytes.subarray(0, 48).equals(bytes.subarray(48, 96))) return undefined;
  const le = os.endianness() === 'LE';
  const u32 = (at: number) => (le ? bytes.readUInt32LE(at) : bytes.readUInt32BE(at));
  const u16 = (at: number) => (le ? bytes.readUInt16LE(at) : bytes.readUInt16BE(at));
  if (u32(0) !== walIndexVersion || bytes[12] !== 1) return undefined;
  const size = u16(14);
  const pageBytes = (size & 0xfe00) + ((size & 0x0001) << 16); // 65536 is stored as 1
  const frames = u32(16);
  const backfilled = u32(96);
  if (pageBytes < 512 || backfilled > frames) return undefined;
  return { frames, backfilled, pageBytes };
}

/** readWalIndexHeader: parseWalIndexHeader of the first bytes of the open `-shm` file `fd`. */
export function readWalIndexHeader(fd: number, scratch: Buffer = Buffer.alloc(walIndexHeaderBytes)): WalIndexHeader | undefined {
  const read = readSync(fd, scratch, 0, walIndexHeaderBytes, 0);
  return read === walIndexHeaderBytes ? parseWalIndexHeader(scratch) : undefined;
}

/** walPendingBytes: WAL bytes (frames with their headers) that a checkpoint has yet to copy. */
export function walPendingBytes(header: WalIndexHeader): number {
  return (header.frames - header.backfilled) * (header.pageBytes + walFrameHeaderBytes);
}

/**
 * CheckpointPlanner: the worker's decision, kept apart from its thread so that tests can drive
 * it with made-up headers and times. `decide` is called once per poll.
 */
export class CheckpointPlanner {
  private lastFrames = -1;
  private changedAt: number;
  private checkpointedAt: number;
  /** heldAt: the frames copied after the last checkpoint when it could not copy them all (a reader held it back). */
  private heldAt: number | undefined;

  constructor(
    private readonly limits: CheckpointLimits,
    now: number,
  ) {
    this.changedAt = now;
    this.checkpointedAt = now;
  }

  decide(header: WalIndexHeader | undefined, now: number): 'size' | 'idle' | undefined {
    if (header === undefined) return now - this.checkpointedAt >= this.limits.idleMs ? 'idle' : undefined;
    if (header.frames !== this.lastFrames) {
      this.lastFrames = header.frames;
      this.changedAt = now;
    }
    const pending = walPendingBytes(header);
    if (pending === 0) return undefined;
    // A PASSIVE checkpoint that a reader held back (a snapshot copy's long read) leaves frames
    // pending, and the next one can copy no more until that reader moves on: nothing is tried
    // again within idleMs while nothing more was copied, whatever the trigger.
    const held = this.heldAt !== undefined && header.backfilled === this.heldAt && now - this.checkpointedAt < this.limits.idleMs;
    if (pending >= this.limits.walBytes) return held ? undefined : 'size';
    if (now - this.changedAt >= this.limits.idleMs && now - this.checkpointedAt >= this.limits.idleMs) return 'idle';
    return undefined;
  }

  /** checkpointed: a checkpoint ended at `now`; `after`: the header it left (undefined: unknown). */
  checkpointed(now: number, after?: WalIndexHeader): void {
    this.checkpointedAt = now;
    this.heldAt = after !== undefined && after.backfilled < after.frames ? after.backfilled : undefined;
  }
}

/** stopWaitMsMax: how long stop() waits for a checkpoint in progress before it lets the worker go. */
const stopWaitMsMax = 5_000;

export class Checkpointer {
  private worker: Worker | undefined;
  private state = new Int32Array(new SharedArrayBuffer(stateWords * Int32Array.BYTES_PER_ELEMENT));
  /** totals: checkpoints of the workers that ended (a worker's own counts start at 0). */
  private totals = { size: 0, idle: 0 };

  constructor(
    private readonly file: string,
    private readonly limits: CheckpointLimits,
    private readonly onLost: () => void,
  ) {
    assert(limits.walBytes > 0 && limits.idleMs > 0 && limits.pollMs > 0, 'checkpoint limits must be positive');
  }

  /** start: a worker for the database at `file` (which must exist). */
  start(): void {
    if (this.worker !== undefined) return;
    this.state = new Int32Array(new SharedArrayBuffer(stateWords * Int32Array.BYTES_PER_ELEMENT));
    const workerData: CheckpointWorkerData = { file: this.file, limits: this.limits, state: this.state.buffer as SharedArrayBuffer };
    const worker = new Worker(new URL('./checkpoint-worker.js', import.meta.url), { workerData });
    worker.unref();
    worker.on('error', () => undefined); // seen as its exit
    worker.on('exit', () => {
      if (this.worker !== worker) return; // stopped on purpose
      this.addTotals();
      this.worker = undefined;
      this.onLost();
    });
    this.worker = worker;
  }

  /**
   * stop: the worker's connection is closed when this returns (before state.db is replaced or
   * closed). Blocks for at most a checkpoint in progress (stopWaitMsMax).
   */
  stop(): void {
    const worker = this.worker;
    if (worker === undefined) return;
    this.worker = undefined;
    Atomics.store(this.state, stateStop, 1);
    worker.postMessage({ kind: 'stop' });
    Atomics.wait(this.state, stateClosed, 0, stopWaitMsMax);
    this.addTotals();
    void worker.terminate();
  }

  /** running: a worker is checkpointing. */
  running(): boolean {
    return this.worker !== undefined;
  }

  private addTotals(): void {
    // exchange: a worker that outlived stop()'s wait may still count; nothing is lost or counted twice.
    this.totals.size += Atomics.exchange(this.state, stateSizeCheckpoints, 0);
    this.totals.idle += Atomics.exchange(this.state, stateIdleCheckpoints, 0);
  }

  /** checkpoints: PASSIVE checkpoints run so far, by trigger (metrics, the bench, tests). */
  checkpointsBy(): { size: number; idle: number } {
    const live = this.worker !== undefined;
    return {
      size: this.totals.size + (live ? Atomics.load(this.state, stateSizeCheckpoints) : 0),
      idle: this.totals.idle + (live ? Atomics.load(this.state, stateIdleCheckpoints) : 0),
    };
  }

  /** checkpoints: PASSIVE checkpoints run so far (tests, status). */
  checkpoints(): number {
    const by = this.checkpointsBy();
    return by.size + by.idle;
  }

  /** pendingBytes: WAL bytes not yet copied into state.db when the worker last looked (undefined without a worker: unknown). */
  pendingBytes(): number | undefined {
    return this.worker === undefined ? undefined : Atomics.load(this.state, statePendingKiB) * 1024;
  }
}
