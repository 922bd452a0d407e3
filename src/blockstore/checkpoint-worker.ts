/**
 * checkpoint-worker: the worker_threads side of Checkpointer (checkpointer.ts). It opens its own
 * connection to state.db, looks at the WAL's frame counts every `pollMs` and runs
 * `PRAGMA wal_checkpoint(PASSIVE)` when CheckpointPlanner says so (by size, or when the WAL went
 * idle): the copy of the WAL's pages into the database file and its fsync happen on this thread,
 * never inside a COMMIT on the event loop (a commit that checkpointed took 70-200 ms under a
 * 256 MiB copy, and such stalls cost a two-node cluster its leader). PASSIVE never waits for the
 * writer or readers.
 *
 * Stopping: a `stop` message (or the `stop` word of the shared state) makes it close its
 * connection and set the `closed` word, which the main thread may wait for with Atomics.wait.
 */

import Database from 'better-sqlite3';
import { closeSync, openSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { parentPort, workerData } from 'node:worker_threads';
import { assert } from '../assert.js';
import {
  CheckpointPlanner,
  type CheckpointWorkerData,
  readWalIndexHeader,
  stateClosed,
  stateIdleCheckpoints,
  statePendingKiB,
  stateSizeCheckpoints,
  stateStop,
  walIndexHeaderBytes,
  walPendingBytes,
} from './checkpointer.js';

const port = parentPort;
assert(port !== null, 'checkpoint-worker runs as a worker thread');
const data = workerData as CheckpointWorkerData;
const state = new Int32Array(data.state);
let db: Database.Database | undefined;
let shm: number | undefined;
let timer: NodeJS.Timeout | undefined;

function stop(): void {
  if (timer !== undefined) clearInterval(timer);
  timer = undefined;
  try {
    if (shm !== undefined) closeSync(shm);
    shm = undefined;
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
  db.pragma('schema_version'); // a first read: the connection maps the wal-index (creating -shm)
  shm = openSync(`${data.file}-shm`, 'r');
  const scratch = Buffer.alloc(walIndexHeaderBytes);
  const planner = new CheckpointPlanner(data.limits, performance.now());
  const look = () => {
    const header = readWalIndexHeader(shm!, scratch);
    if (header !== undefined) Atomics.store(state, statePendingKiB, Math.ceil(walPendingBytes(header) / 1024));
    return header;
  };
  timer = setInterval(() => {
    if (Atomics.load(state, stateStop) === 1) {
      stop();
      return;
    }
    try {
      const why = planner.decide(look(), performance.now());
      if (why === undefined) return;
      db!.pragma('wal_checkpoint(PASSIVE)');
      planner.checkpointed(performance.now(), look());
      Atomics.add(state, why === 'size' ? stateSizeCheckpoints : stateIdleCheckpoints, 1);
    } catch (error) {
      // Close the connection and the -shm descriptor (a thread's descriptors are the process's),
      // then let the worker die: the main thread checkpoints in its commits again (onLost).
      stop();
      throw error;
    }
  }, data.limits.pollMs);
  port.on('message', (message: { kind: 'stop' }) => {
    if (message.kind === 'stop') stop();
  });
} catch (error) {
  // The main thread sees the exit and checkpoints in its commits again (Checkpointer.onExit).
  Atomics.store(state, stateClosed, 1);
  Atomics.notify(state, stateClosed);
  throw error;
}
