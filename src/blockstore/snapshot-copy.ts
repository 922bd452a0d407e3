/**
 * snapshot-copy: makes a snapshot file of state.db through a connection of its OWN, so the same
 * code runs on the main thread (BlockStore.createSnapshot) and in the snapshot worker
 * (snapshot-worker.ts, BlockStore.createSnapshotAsync).
 *
 * Consistency: state.db is in WAL mode, so a separate read-only connection sees the latest
 * COMMITTED state and `VACUUM INTO` copies it in ONE read transaction, while the main thread keeps
 * applying (its commits go to the WAL and are not seen by that transaction). Every apply batch
 * writes its effects and the new applied index / configuration in the same transaction, so the
 * copy's `meta` row is exactly the index and configuration of the copied state: that is why the
 * snapshot's metadata is read from the copy, never from the live store.
 */

import fs from 'node:fs';
import Database from 'better-sqlite3';
import { CorruptError } from '../errors.js';
import type { ConfState } from '../raft/types.js';

/** SnapshotCopy: what a finished copy holds — its applied index and configuration — and its size. */
export interface SnapshotCopy {
  index: number;
  confState: ConfState;
  sizeBytes: number;
}

/**
 * copyStateSnapshot: writes a consistent copy of the committed state of `source` (a state.db) to
 * `target` (removed first), fsyncs it, and returns the index and configuration recorded INSIDE
 * the copy. On any error `target` is removed before the error propagates (no stray files).
 * `onCopyStarted` runs once the connection to `source` is open, right before `VACUUM INTO`
 * (the snapshot worker reports it to the main thread: BlockStore.createSnapshotAsync's hook).
 */
export function copyStateSnapshot(source: string, target: string, onCopyStarted?: () => void): SnapshotCopy {
  fs.rmSync(target, { force: true });
  try {
    const db = new Database(source, { readonly: true, fileMustExist: true });
    try {
      onCopyStarted?.();
      db.prepare('VACUUM INTO ?').run(target);
    } finally {
      db.close();
    }
    const meta = readSnapshotMeta(target);
    const fd = fs.openSync(target, 'r+');
    try {
      fs.fsyncSync(fd);
      return { ...meta, sizeBytes: fs.fstatSync(fd).size };
    } finally {
      fs.closeSync(fd);
    }
  } catch (error) {
    fs.rmSync(target, { force: true });
    throw error;
  }
}

/**
 * readSnapshotMeta: the applied index and configuration stored in the snapshot file `file`.
 * VACUUM INTO writes a rollback-journal database, so a read-only open creates no side files.
 */
export function readSnapshotMeta(file: string): { index: number; confState: ConfState } {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT applied_index, conf_state FROM meta WHERE id = 1').get() as { applied_index: number; conf_state: string } | undefined;
    if (row === undefined || !Number.isSafeInteger(row.applied_index) || row.applied_index < 0) {
      throw new CorruptError(`snapshot copy ${file} has no valid meta row`);
    }
    return { index: row.applied_index, confState: JSON.parse(row.conf_state) as ConfState };
  } finally {
    db.close();
  }
}
