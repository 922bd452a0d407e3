/**
 * state-commit: with a timer, the applies of several Readys share one state.db transaction
 * (StateStoreLimits.commitDelayMs / commitEntriesMax / commitRowsMax). What must hold:
 *  - the store's own reads see every applied entry at once (same connection);
 *  - another connection (a snapshot copy, an operator's sqlite3) sees only committed state, and
 *    sees it once the timer fires or the batch is full;
 *  - an apply that throws rolls back alone; the earlier applies of the batch stay and commit;
 *  - losing the open transaction (a crash) leaves the last committed applied index with exactly
 *    its effects, and re-applying the lost entries gives the same state as never losing them;
 *  - a snapshot copy is taken at the applied index (BlockStore commits first);
 *  - fewer bytes reach the disk per entry than with a commit per apply (counted from the files).
 */

import fs from 'node:fs';
import path from 'node:path';
import test from 'ava';
import Database from 'better-sqlite3';
import { BlockStore } from '../../src/blockstore/index.js';
import { BlockStateMachine, type StateTimer, blockBytes } from '../../src/blockstore/state-store.js';
import { CorruptError } from '../../src/errors.js';
import { type Entry, EntryType, emptyConfState } from '../../src/raft/types.js';
import { type Command, encodeCommand } from '../../src/volume/command.js';
import { readyOf, tempDir } from './helpers.js';

/** ManualTimer: fires only when the test says so. */
class ManualTimer implements StateTimer {
  pending: Array<{ fn: () => void; cancelled: boolean }> = [];
  after(_ms: number, fn: () => void) {
    const t = { fn, cancelled: false };
    this.pending.push(t);
    return { cancel: () => (t.cancelled = true) };
  }
  fire(): void {
    const due = this.pending;
    this.pending = [];
    for (const t of due) if (!t.cancelled) t.fn();
  }
  armed(): number {
    return this.pending.filter((t) => !t.cancelled).length;
  }
}

function entriesOf(from: number, commands: Command[]): Entry[] {
  return commands.map((c, i) => ({ index: from + i, term: 1, type: EntryType.Normal, data: encodeCommand(c) }));
}

/** wchar: bytes this process passed to write(2) and friends so far (/proc/self/io). */
function wchar(): number {
  return Number(/wchar: (\d+)/.exec(fs.readFileSync('/proc/self/io', 'utf8'))![1]);
}

const block = (fill: number) => new Uint8Array(blockBytes).fill(fill);

function committedApplied(file: string): number {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT applied_index AS a FROM meta WHERE id = 1').get() as { a: number }).a;
  } finally {
    db.close();
  }
}

/** sharedStore: a state machine with a ManualTimer and volume v (64 blocks) created at index 1. */
function sharedStore(name: string, limits: Parameters<typeof BlockStateMachine.open>[1] = {}) {
  const tmp = tempDir(name);
  const file = path.join(tmp.dir, 'state.db');
  const timer = new ManualTimer();
  const sm = BlockStateMachine.open(file, limits, { timer });
  sm.apply(entriesOf(1, [{ kind: 'createVolume', name: 'v', sizeBytes: 64 * blockBytes }]), () => emptyConfState());
  return { tmp, file, timer, sm };
}

test('applies share a transaction: own reads see them at once, other connections once the timer commits', (t) => {
  const { tmp, file, timer, sm } = sharedStore('commit-shared');
  try {
    sm.apply(entriesOf(2, [{ kind: 'write', volume: 'v', offset: 0, data: block(1) }]), () => emptyConfState());
    sm.apply(entriesOf(3, [{ kind: 'write', volume: 'v', offset: blockBytes, data: block(2) }]), () => emptyConfState());
    t.is(sm.appliedIndex(), 3);
    t.is(sm.uncommitted(), 3);
    t.is(timer.armed(), 1, 'one commit timer per shared transaction');
    const bytes = Buffer.concat(sm.read('v', 0, 2 * blockBytes).map((c) => Buffer.from(c.data!)));
    t.deepEqual(bytes, Buffer.concat([block(1), block(2)]));
    t.is(committedApplied(file), 0, 'another connection sees only committed state');
    timer.fire();
    t.is(sm.uncommitted(), 0);
    t.is(committedApplied(file), 3);
    sm.apply(entriesOf(4, [{ kind: 'write', volume: 'v', offset: 0, data: block(3) }]), () => emptyConfState());
    t.is(timer.armed(), 1, 'the next apply opens the next transaction');
  } finally {
    sm.close();
  }
  t.is(committedApplied(file), 4, 'close commits');
  tmp.cleanup();
});

test('a full batch commits without waiting for the timer (commitEntriesMax, commitRowsMax)', (t) => {
  const { tmp, file, timer, sm } = sharedStore('commit-full', { commitEntriesMax: 3, commitRowsMax: 8 });
  try {
    sm.apply(entriesOf(2, [{ kind: 'write', volume: 'v', offset: 0, data: block(1) }]), () => emptyConfState());
    t.is(committedApplied(file), 0);
    sm.apply(entriesOf(3, [{ kind: 'write', volume: 'v', offset: blockBytes, data: block(1) }]), () => emptyConfState());
    t.is(committedApplied(file), 3, 'three entries: committed');
    t.is(timer.armed(), 0, 'its timer cancelled');
    sm.apply(entriesOf(4, [{ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(8 * blockBytes).fill(5) }]), () => emptyConfState());
    t.is(committedApplied(file), 4, 'eight rows: committed');
  } finally {
    sm.close();
    tmp.cleanup();
  }
});

test('an apply that throws rolls back alone; the batch before it stays and commits', (t) => {
  const { tmp, file, timer, sm } = sharedStore('commit-throw');
  try {
    sm.apply(entriesOf(2, [{ kind: 'write', volume: 'v', offset: 0, data: block(1) }]), () => emptyConfState());
    // Rot block 0 inside the open transaction; a partial write over it must read it and throws.
    sm.database().prepare('UPDATE blocks SET crc = crc + 1 WHERE block = 0').run();
    t.throws(() => sm.apply(entriesOf(3, [{ kind: 'write', volume: 'v', offset: 100, data: new Uint8Array(10).fill(9) }, { kind: 'write', volume: 'v', offset: 5 * blockBytes, data: block(6) }]), () => emptyConfState()), {
      instanceOf: CorruptError,
    });
    t.is(sm.appliedIndex(), 2);
    t.deepEqual(sm.read('v', 5 * blockBytes, blockBytes).map((c) => c.data), [undefined], 'the failed batch left nothing');
    timer.fire();
    t.is(committedApplied(file), 2);
  } finally {
    sm.close();
    tmp.cleanup();
  }
});

test('losing the open transaction (a crash) keeps the last commit; re-applying gives the same state', (t) => {
  const tmp = tempDir('commit-crash');
  const lossy = path.join(tmp.dir, 'lossy.db');
  const plain = path.join(tmp.dir, 'plain.db');
  const timer = new ManualTimer();
  const commands: Command[] = [{ kind: 'createVolume', name: 'v', sizeBytes: 64 * blockBytes }];
  for (let i = 0; i < 40; i++) commands.push({ kind: 'write', volume: 'v', offset: (i % 16) * blockBytes, data: block(i + 1) });
  const all = entriesOf(1, commands);
  let sm = BlockStateMachine.open(lossy, {}, { timer });
  for (const e of all.slice(0, 20)) sm.apply([e], () => emptyConfState());
  timer.fire(); // committed through 20
  for (const e of all.slice(20, 30)) sm.apply([e], () => emptyConfState());
  t.is(sm.uncommitted(), 10);
  sm.database().close(); // a crash: the open transaction is gone, no commit
  sm = BlockStateMachine.open(lossy, {}, { timer });
  t.is(sm.appliedIndex(), 20, 'the applied index is the committed one, with exactly its effects');
  for (const e of all.slice(20)) sm.apply([e], () => emptyConfState());
  const reference = BlockStateMachine.open(plain);
  reference.apply(all, () => emptyConfState());
  t.deepEqual(sm.stateHash(), reference.stateHash());
  sm.close();
  reference.close();
  tmp.cleanup();
});

test('a snapshot of a store with an open transaction is taken at the applied index', (t) => {
  const tmp = tempDir('commit-snap');
  const timer = new ManualTimer();
  const store = BlockStore.open(tmp.dir, { timer });
  try {
    store.bootstrap([1]);
    const first = store.logStorage.lastIndex() + 1;
    const entries = entriesOf(first, [{ kind: 'createVolume', name: 'v', sizeBytes: 64 * blockBytes }, { kind: 'write', volume: 'v', offset: 0, data: block(7) }]);
    void store.persist({ ...readyOf(), entries, hardState: { term: 1, vote: 1, commit: first + 1 } });
    store.apply(store.logStorage.entries(1, first + 2, Number.MAX_SAFE_INTEGER), () => emptyConfState());
    t.true(store.state.uncommitted() > 0);
    const meta = store.createSnapshot();
    t.is(meta?.index, first + 1, 'the copy holds every applied entry');
    t.is(store.state.uncommitted(), 0);
  } finally {
    store.close();
    tmp.cleanup();
  }
});

test('4 KiB writes applied one per Ready: a shared transaction writes fewer bytes per entry than a commit per apply (counted from the files)', (t) => {
  const tmp = tempDir('commit-bytes');
  const run = (name: string, timer: ManualTimer | undefined) => {
    const file = path.join(tmp.dir, `${name}.db`);
    const before = wchar();
    const sm = BlockStateMachine.open(file, { commitEntriesMax: 64 }, timer === undefined ? {} : { timer });
    sm.apply(entriesOf(1, [{ kind: 'createVolume', name: 'v', sizeBytes: 4096 * blockBytes }]), () => emptyConfState());
    // Deterministic pseudo-random blocks: the same writes in both runs.
    let x = 12345;
    for (let i = 0; i < 512; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      sm.apply(entriesOf(i + 2, [{ kind: 'write', volume: 'v', offset: ((x >>> 8) % 4096) * blockBytes, data: block((i % 250) + 1) }]), () => emptyConfState());
    }
    const hash = sm.stateHash().hash;
    sm.close();
    return { walBytes: wchar() - before, hash };
  };
  const perApply = run('per-apply', undefined);
  const shared = run('shared', new ManualTimer());
  t.is(shared.hash, perApply.hash, 'same state');
  t.log(`bytes written for 512 x 4 KiB (WAL and checkpoints): commit per apply ${perApply.walBytes}, shared (64 entries) ${shared.walBytes}`);
  t.true(shared.walBytes < perApply.walBytes, 'fewer bytes');
  tmp.cleanup();
});

test('with a timer, the WAL is checkpointed by the worker thread, never inside a commit on the event loop', async (t) => {
  // Far below checkpointWalBytes: the checkpoint that comes is the one for a WAL gone idle.
  const { tmp, file, timer, sm } = sharedStore('commit-checkpoint', { checkpointIdleMs: 20, checkpointPollMs: 10 });
  try {
    t.is(sm.database().pragma('wal_autocheckpoint', { simple: true }), 0, 'no checkpoint in COMMIT');
    const before = fs.statSync(file).size;
    for (let i = 0; i < 64; i++) sm.apply(entriesOf(i + 2, [{ kind: 'write', volume: 'v', offset: i * blockBytes, data: block(i + 1) }]), () => emptyConfState());
    timer.fire(); // commit
    // In WAL mode only a checkpoint writes the database file; this connection runs none.
    // Wait for both: the file grows while the worker's checkpoint runs, and it counts it after.
    const done = () => fs.statSync(file).size >= before + 64 * blockBytes && sm.checkpointer!.checkpoints() > 0;
    const deadline = Date.now() + 30_000;
    while (!done() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
    t.true(fs.statSync(file).size >= before + 64 * blockBytes, 'the blocks reached state.db through the worker');
    t.true(sm.checkpointer!.checkpoints() > 0);
    t.is(sm.checkpointer!.checkpointsBy().size, 0, 'no WAL reached checkpointWalBytes');
    t.deepEqual(Buffer.from(sm.read('v', 63 * blockBytes, blockBytes)[0]!.data!), Buffer.from(block(64)));
  } finally {
    sm.close();
    tmp.cleanup();
  }
  t.false(sm.checkpointer!.running(), 'close stops the worker');
});

test('without a timer there is no checkpoint worker (tools and tests: SQLite checkpoints in its commits)', (t) => {
  const tmp = tempDir('commit-no-checkpointer');
  const sm = BlockStateMachine.open(path.join(tmp.dir, 'state.db'));
  t.is(sm.checkpointer, undefined);
  t.is(sm.database().pragma('wal_autocheckpoint', { simple: true }), 1000);
  sm.close();
  tmp.cleanup();
});
