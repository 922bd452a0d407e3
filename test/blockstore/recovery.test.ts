/**
 * recovery: proves BlockStore.open() starts from the files a power loss or a rotted block leaves,
 * by crafting those files on disk (real log.db / state.db, changed through their own SQLite
 * connections or byte by byte) and opening them as a node does — RawNode over the store's log
 * with the store's applied index:
 *  - applied above the stored commit index (the commit-only batch to log.db was lost, state.db
 *    kept its batch): the store raises the commit index, durably, and raft starts.
 */

import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { BlockStore } from '../../src/blockstore/index.js';
import { encodeCommand } from '../../src/blockstore/commands.js';
import { LOG_DB_FILE } from '../../src/blockstore/log-store.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import { type Entry, EntryType } from '../../src/raft/types.js';
import { applyCommitted, drive, readyOf, tempDir } from './helpers.js';

const KiB = 1024;

/** startRaft: the RawNode a Replica builds over `store` on start (its constructor runs RaftLog's recovery checks). */
function startRaft(store: BlockStore): RawNode {
  return new RawNode({ id: 1, storage: store.logStorage, random: new SeededRandom(1), applied: store.appliedIndex(), electionTimeoutTicks: 10, heartbeatIntervalTicks: 1 });
}

test('power loss leaves state.db applied beyond log.db commit: the store raises commit to applied, raft starts', (t) => {
  const tmp = tempDir('recovery-commit');
  try {
    let store = BlockStore.open(tmp.dir);
    store.bootstrap([1]);
    applyCommitted(store);
    drive(store, [{ kind: 'createVolume', name: 'v', sizeBytes: 64 * KiB }]);
    // A leader's append (durable, commit not yet advanced), then the commit-only batch (mustSync
    // false: no fsync of its own), then the apply of the newly committed entries to state.db.
    const start = store.logStorage.lastIndex() + 1;
    const entries: Entry[] = [0, 1, 2].map((i) => ({
      index: start + i,
      term: 1,
      type: EntryType.Normal,
      data: encodeCommand({ kind: 'write', volume: 'v', offset: i * 4 * KiB, data: new Uint8Array(4 * KiB).fill(i + 1) }),
    }));
    const durableCommit = start - 1;
    store.persist({ ...readyOf(), entries, hardState: { term: 1, vote: 0, commit: durableCommit } });
    store.persist({ ...readyOf(), mustSync: false, hardState: { term: 1, vote: 0, commit: start + 2 } });
    applyCommitted(store, entries);
    const applied = store.appliedIndex();
    t.is(applied, start + 2);
    const hashBefore = store.stateHash();
    store.close();

    // The power loss: log.db loses the unsynced commit-only transaction, state.db keeps its batch.
    const log = new Database(path.join(tmp.dir, LOG_DB_FILE));
    log.prepare('UPDATE hard_state SET commit_index = ? WHERE id = 1').run(durableCommit);
    log.close();

    store = BlockStore.open(tmp.dir);
    const raft = startRaft(store); // the old code failed here: RaftLog asserts applied <= committed
    t.is(store.appliedIndex(), applied);
    t.is(store.logStorage.hardState().commit, applied, 'commit raised to the applied index');
    t.is(raft.raft.log.committed, applied);
    t.is(raft.raft.log.applied, applied);
    t.deepEqual(store.stateHash(), hashBefore);
    store.close();

    // Durable: a second start sees the raised commit in log.db itself.
    const reread = new Database(path.join(tmp.dir, LOG_DB_FILE), { readonly: true });
    t.is((reread.prepare('SELECT commit_index FROM hard_state WHERE id = 1').get() as { commit_index: number }).commit_index, applied);
    reread.close();
  } finally {
    tmp.cleanup();
  }
});
