/**
 * snapshot-worker: the worker_threads entry point of BlockStore.createSnapshotAsync. It copies
 * `workerData.source` (state.db) to `workerData.target` with copyStateSnapshot — its own
 * read-only connection, VACUUM INTO, fsync — and posts `{ kind: 'copying' }` when the copy
 * starts, then exactly one SnapshotWorkerResult. All the blocking work (the copy is seconds for a
 * few hundred MiB) happens here, off the event loop.
 */

import { parentPort, workerData } from 'node:worker_threads';
import { assert } from '../assert.js';
import { type SnapshotCopy, copyStateSnapshot } from './snapshot-copy.js';

/** SnapshotWorkerData: the paths the worker is started with. */
export interface SnapshotWorkerData {
  source: string;
  target: string;
  /** walDir: the log directory whose segments hold the bytes of pointer rows (materializePointers). */
  walDir?: string;
}

/** SnapshotWorkerResult: the last message the worker posts. */
export type SnapshotWorkerResult = { kind: 'result'; ok: true; copy: SnapshotCopy } | { kind: 'result'; ok: false; message: string; code?: string };

/** SnapshotWorkerMessage: `copying` (its connection to the source is open, VACUUM INTO starts), then the result. */
export type SnapshotWorkerMessage = { kind: 'copying' } | SnapshotWorkerResult;

const port = parentPort;
assert(port !== null, 'snapshot-worker runs as a worker thread');
const data = workerData as SnapshotWorkerData;
let result: SnapshotWorkerResult;
try {
  const copying: SnapshotWorkerMessage = { kind: 'copying' };
  result = { kind: 'result', ok: true, copy: copyStateSnapshot(data.source, data.target, () => port.postMessage(copying), data.walDir) };
} catch (error) {
  const e = error as { message?: unknown; code?: unknown };
  result = { kind: 'result', ok: false, message: String(e?.message ?? error), ...(typeof e?.code === 'string' ? { code: e.code } : {}) };
}
port.postMessage(result);
