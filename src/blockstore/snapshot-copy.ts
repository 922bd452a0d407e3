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
import path from 'node:path';
import { crc32 } from 'node:zlib';
import Database from 'better-sqlite3';
import { CorruptError } from '../errors.js';
import type { ConfState } from '../raft/types.js';
import { blockBytes } from '../volume/rules.js';
import { segmentName } from './wal.js';

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
 *
 * A snapshot carries data, never pointers into this node's log: every block row of the copy that
 * points into the log (`walDir`, state-store.ts BlockLocator) gets its bytes from the segment
 * file, checksum-verified, before the copy is synced (materializePointers).
 */
export function copyStateSnapshot(source: string, target: string, onCopyStarted?: () => void, walDir?: string): SnapshotCopy {
  fs.rmSync(target, { force: true });
  try {
    const db = new Database(source, { readonly: true, fileMustExist: true });
    try {
      onCopyStarted?.();
      db.prepare('VACUUM INTO ?').run(target);
    } finally {
      db.close();
    }
    materializePointers(target, walDir);
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

/** materializeBatchRows: pointer rows one statement of materializePointers looks at (bounds its memory). */
const materializeBatchRows = 4096;

/**
 * materializePointers: in the copy `file`, every block row that points into the log gets its 4 KiB
 * from segment files in `walDir` (read through its own descriptors: the records are durable and
 * never change; the store compacts no log while a copy runs). The crc of the row must match, or
 * the copy fails with CorruptError (a snapshot never carries rot). A pointer row of a volume that
 * no longer exists (waiting to be reaped; nothing can read it) is dropped from the copy instead,
 * since its segment may be gone.
 */
export function materializePointers(file: string, walDir: string | undefined): void {
  const db = new Database(file);
  const fds = new Map<number, number>();
  try {
    const columns = new Set((db.pragma('table_info(blocks)') as Array<{ name: string }>).map((c) => c.name));
    if (!columns.has('seg')) return;
    db.pragma('journal_mode = OFF'); // a temp file: a failed copy is deleted, never repaired
    const select = db.prepare<[number, number], { id: number; block: number; crc: number; seg: number; off: number; live: number }>(
      'SELECT b.rowid AS id, b.block AS block, b.crc AS crc, b.seg AS seg, b.off AS off, (v.created_index IS NOT NULL) AS live FROM blocks b LEFT JOIN volumes v ON v.created_index = b.volume_id WHERE b.rowid > ? AND b.seg IS NOT NULL ORDER BY b.rowid LIMIT ?',
    );
    const update = db.prepare("UPDATE blocks SET data = ?, seg = NULL, off = NULL WHERE rowid = ?");
    const drop = db.prepare('DELETE FROM blocks WHERE rowid = ?');
    const fdOf = (seg: number): number | undefined => {
      let fd = fds.get(seg);
      if (fd !== undefined) return fd;
      if (walDir === undefined) return undefined;
      try {
        fd = fs.openSync(path.join(walDir, segmentName(seg)), 'r');
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw error;
      }
      fds.set(seg, fd);
      return fd;
    };
    const data = Buffer.alloc(blockBytes);
    db.transaction(() => {
      let after = 0;
      for (;;) {
        const rows = select.all(after, materializeBatchRows);
        if (rows.length === 0) break;
        for (const row of rows) {
          after = row.id;
          const fd = fdOf(row.seg);
          if (fd === undefined) {
            if (row.live === 0) {
              drop.run(row.id);
              continue;
            }
            throw new CorruptError(`snapshot copy: block ${row.block} points into log segment ${row.seg}, which is gone`);
          }
          const read = fs.readSync(fd, data, 0, blockBytes, row.off);
          if (read !== blockBytes || (crc32(data) >>> 0) !== (row.crc >>> 0)) {
            if (row.live === 0) {
              drop.run(row.id);
              continue;
            }
            throw new CorruptError(`snapshot copy: block ${row.block} (log segment ${row.seg} at ${row.off}) failed its checksum; no snapshot made`);
          }
          update.run(data, row.id);
        }
      }
    })();
  } finally {
    for (const fd of fds.values()) fs.closeSync(fd);
    db.close();
  }
}
