/**
 * checkpoint-worker: the worker_threads side of Checkpointer (checkpointer.ts). It opens its own
 * connection to state.db and runs `PRAGMA wal_checkpoint(PASSIVE)` every `intervalMs`: the copy of
 * the WAL's pages into the database file and its fsync happen on this thread, never inside a
 * COMMIT on the event loop (a commit that checkpointed took 70-200 ms under a 256 MiB copy, and
 * such stalls cost a two-node cluster its leader). PASSIVE never waits for the writer or readers.
 *
 * Stopping: a `stop` message (or the `stop` word of the shared state) makes it close its
 * connection and set the `closed` word, which the main thread may wait for with Atomics.wait.
 */

import Database from 'better-sqlite3';
import { parentPort, workerData } from 'node:worker_threads';
import { assert } from '../assert.js';
import { type CheckpointWorkerData, stateClosed, stateCheckpoints, stateStop } from './checkpointer.js';


const port = parentPort;
assert(port !== null, 'checkpoint-worker runs as a worker thread');
const data = workerData as CheckpointWorkerData;
const state = new Int32Array(data.state);
let db: Database.Database | undefined;
let timer: NodeJS.Timeout | undefined;

function stop(): void {
  if (timer !== undefined) clearInterval(timer);
  timer = undefined;
  try {
    db?.close();
  } finally {
    db = undefined;
    Atomics.store(state, stateClosed, 1);
    Atomics.notify(state, stateClosed);
    port!.close();
  }
}

try {
  db = new Database(data.file, { fileMustExist: true });
  db.pragma('synchronous = NORMAL'); // the checkpoint syncs the WAL, then the database file
  db.pragma('wal_autocheckpoint = 0');
  db.pragma('cache_size = -2048'); // 2 MiB: a checkpoint copies pages from the WAL, it needs no cache
  timer = setInterval(() => {
    if (Atomics.load(state, stateStop) === 1) {
      stop();
      return;
    }
    db!.pragma('wal_checkpoint(PASSIVE)');
    Atomics.add(state, stateCheckpoints, 1);
  }, data.intervalMs);
  port.on('message', (message: { kind: 'stop' }) => {
    if (message.kind === 'stop') stop();
  });
} catch (error) {
  // The main thread sees the exit and checkpoints in its commits again (Checkpointer.onExit).
  Atomics.store(state, stateClosed, 1);
  Atomics.notify(state, stateClosed);
  throw error;
}
