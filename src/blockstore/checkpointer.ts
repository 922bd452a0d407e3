/**
 * checkpointer: moves state.db's WAL checkpoints off the event loop. With SQLite's automatic
 * checkpoint, the COMMIT that pushes the WAL past 1,000 pages also copies those pages into the
 * database file and fsyncs it — on the event loop: 70-200 ms per such commit under a 256 MiB copy,
 * long enough for a two-node cluster to lose its leader (CheckQuorum). A node's BlockStateMachine
 * turns the automatic checkpoint off on its connection and runs a Checkpointer instead: a worker
 * thread with its own connection that checkpoints (PASSIVE: it never waits for the writer or for
 * readers) every `checkpointIntervalMs`. Should the worker die, the connection checkpoints in its
 * commits again (`onLost`).
 */

import { Worker } from 'node:worker_threads';

/** CheckpointWorkerData: what the worker (checkpoint-worker.ts) is started with. */
export interface CheckpointWorkerData {
  file: string;
  intervalMs: number;
  /** state: Int32Array over a SharedArrayBuffer: [stateStop] stop requested, [stateClosed] connection closed, [stateCheckpoints] checkpoints run. */
  state: SharedArrayBuffer;
}

export const stateStop = 0;
export const stateClosed = 1;
export const stateCheckpoints = 2;

/** stopWaitMsMax: how long stop() waits for a checkpoint in progress before it lets the worker go. */
const stopWaitMsMax = 5_000;

export class Checkpointer {
  private worker: Worker | undefined;
  private state = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
  private total = 0;

  constructor(
    private readonly file: string,
    private readonly intervalMs: number,
    private readonly onLost: () => void,
  ) {}

  /** start: a worker for the database at `file` (which must exist). */
  start(): void {
    if (this.worker !== undefined) return;
    this.state = new Int32Array(new SharedArrayBuffer(3 * Int32Array.BYTES_PER_ELEMENT));
    const workerData: CheckpointWorkerData = { file: this.file, intervalMs: this.intervalMs, state: this.state.buffer as SharedArrayBuffer };
    const worker = new Worker(new URL('./checkpoint-worker.js', import.meta.url), { workerData });
    worker.unref();
    worker.on('error', () => undefined); // seen as its exit
    worker.on('exit', () => {
      if (this.worker !== worker) return; // stopped on purpose
      this.total += Atomics.load(this.state, stateCheckpoints);
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
    this.total += Atomics.load(this.state, stateCheckpoints);
    void worker.terminate();
  }

  /** running: a worker is checkpointing. */
  running(): boolean {
    return this.worker !== undefined;
  }

  /** checkpoints: PASSIVE checkpoints run so far (tests, status). */
  checkpoints(): number {
    return this.total + (this.worker === undefined ? 0 : Atomics.load(this.state, stateCheckpoints));
  }
}
