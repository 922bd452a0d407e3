/**
 * log-contract: proves that SqliteLogStorage and WalLogStorage (the block store's log: entries in
 * the segmented WAL, snapshots in log.db) honour the LogStorage contract exactly like
 * MemoryStorage — term/entries bounds and their errors (COMPACTED, LOG_UNAVAILABLE,
 * SNAPSHOT_OUT_OF_DATE), truncation of a conflicting suffix, byte limits, compaction only behind
 * a snapshot, snapshot staging and install, hard state — by running ONE test table against both,
 * each scenario also across a restart (reopen for SQLite, clone for memory). A seeded random
 * operation sequence then compares every observable answer of the two (tiny cache, so SQLite
 * reads are exercised too).
 */

import test from 'ava';
import { SqliteLogStorage } from '../../src/blockstore/log-store.js';
import { WalLogStorage } from '../../src/blockstore/wal-storage.js';
import { AssertionFailure } from '../../src/assert.js';
import { ChardError, ErrorCode } from '../../src/errors.js';
import { type LogStorage, MemoryStorage } from '../../src/raft/storage.js';
import { type ConfState, type Entry, EntryType, type HardState, type SnapshotMetadata, emptyConfState } from '../../src/raft/types.js';
import { Prng, seedFromEnv, tempDir } from './helpers.js';

/** Subject: a LogStorage plus the application-side writes, for either implementation. */
interface Subject {
  storage: LogStorage;
  append(entries: Entry[]): void;
  setHardState(hs: HardState): void;
  snapshot(index: number, cs: ConfState, data: Uint8Array): SnapshotMetadata;
  compact(index: number, stateDurableIndex?: number): void;
  stage(metadata: SnapshotMetadata, offset: number, data: Uint8Array): void;
  install(metadata: SnapshotMetadata): void;
  restart(): Subject;
  close(): void;
}

function memorySubject(storage = new MemoryStorage()): Subject {
  return {
    storage,
    append: (e) => storage.append(e),
    setHardState: (hs) => storage.setHardState(hs),
    snapshot: (i, cs, d) => storage.createSnapshot(i, cs, d),
    compact: (i, d) => storage.compact(i, d),
    stage: (m, o, d) => storage.stageSnapshotChunk(m, o, d),
    install: (m) => storage.applySnapshot(m, storage.takeStagedSnapshot(m)),
    restart: () => memorySubject(storage.clone()),
    close: () => {},
  };
}

function sqliteSubject(dir: string, cacheEntriesMax = 16_384): Subject {
  const storage = SqliteLogStorage.open(dir, { limits: { cacheEntriesMax } });
  return {
    storage,
    append: (entries) => storage.persist({ entries }),
    setHardState: (hardState) => storage.persist({ hardState }),
    snapshot: (i, cs, d) => storage.createSnapshot(i, cs, d),
    compact: (i) => storage.compact(i),
    stage: (metadata, offset, data) => storage.persist({ snapshotChunks: [{ metadata, offset, data, last: offset + data.length === metadata.sizeBytes }] }),
    install: (snapshot) => storage.persist({ snapshot }),
    restart: () => {
      storage.close();
      return sqliteSubject(dir, cacheEntriesMax);
    },
    close: () => storage.close(),
  };
}

function walSubject(dir: string, cacheBytesMax = 64 * 1024 * 1024): Subject {
  const storage = WalLogStorage.open(dir, { limits: { cacheBytesMax } });
  return {
    storage,
    append: (entries) => void storage.persist({ entries }),
    setHardState: (hardState) => void storage.persist({ hardState }),
    snapshot: (i, cs, d) => storage.createSnapshot(i, cs, d),
    compact: (i, d) => void storage.compact(i, d),
    stage: (metadata, offset, data) => void storage.persist({ snapshotChunks: [{ metadata, offset, data, last: offset + data.length === metadata.sizeBytes }] }),
    install: (snapshot) => void storage.persist({ snapshot }),
    restart: () => {
      storage.close();
      return walSubject(dir, cacheBytesMax);
    },
    close: () => storage.close(),
  };
}

const kinds = [
  { name: 'memory', make: () => ({ subject: memorySubject(), cleanup: () => {} }) },
  {
    name: 'sqlite',
    make: () => {
      const t = tempDir('contract');
      return { subject: sqliteSubject(t.dir, 3), cleanup: t.cleanup };
    },
  },
  {
    name: 'wal',
    make: () => {
      const t = tempDir('contract-wal');
      return { subject: walSubject(t.dir, 300), cleanup: t.cleanup };
    },
  },
];

const entry = (index: number, term: number, size = 8): Entry => ({ index, term, type: EntryType.Normal, data: new Uint8Array(size).fill(index & 255) });
const run = (from: number, to: number, term: number, size = 8) => {
  const out: Entry[] = [];
  for (let i = from; i <= to; i++) out.push(entry(i, term, size));
  return out;
};
function code(fn: () => unknown): string {
  try {
    fn();
    return 'ok';
  } catch (error) {
    if (error instanceof ChardError) return error.code;
    if (error instanceof AssertionFailure) return 'assert';
    throw error;
  }
}
const cs: ConfState = { ...emptyConfState(), voters: [1, 2, 3] };

for (const kind of kinds) {
  test(`${kind.name}: empty log, bounds and errors`, (t) => {
    const { subject, cleanup } = kind.make();
    try {
      const s = subject.storage;
      t.is(s.firstIndex(), 1);
      t.is(s.lastIndex(), 0);
      t.is(s.term(0), 0);
      t.is(code(() => s.term(1)), ErrorCode.LogUnavailable);
      t.deepEqual(s.entries(1, 1, 100), []);
      t.is(code(() => s.entries(1, 2, 100)), ErrorCode.LogUnavailable);
      t.is(code(() => s.entries(0, 1, 100)), ErrorCode.Compacted);
      t.is(s.snapshot().index, 0);
      t.is(s.pendingSnapshot(), undefined);
    } finally {
      subject.close();
      cleanup();
    }
  });

  test(`${kind.name}: append, byte limits, conflicting suffix truncated, restart`, (t) => {
    const { subject, cleanup } = kind.make();
    let cur = subject;
    try {
      cur.append(run(1, 10, 1, 100));
      t.is(cur.storage.lastIndex(), 10);
      t.deepEqual(cur.storage.entries(3, 6, Number.MAX_SAFE_INTEGER).map((e) => e.index), [3, 4, 5]);
      // maxBytes: at least one entry, then at most maxBytes (entryBytes = 100 + 24).
      t.is(cur.storage.entries(3, 10, 1).length, 1);
      t.is(cur.storage.entries(3, 10, 124 * 2).length, 2);
      t.is(cur.storage.entries(3, 10, 124 * 2 + 123).length, 2);
      t.is(code(() => cur.storage.entries(5, 12, 1000)), ErrorCode.LogUnavailable);
      // conflicting suffix: 6..8 at term 2 replace 6..10
      cur.append(run(6, 8, 2));
      t.is(cur.storage.lastIndex(), 8);
      t.deepEqual([5, 6, 7, 8].map((i) => cur.storage.term(i)), [1, 2, 2, 2]);
      t.is(code(() => cur.storage.term(9)), ErrorCode.LogUnavailable);
      cur.setHardState({ term: 2, vote: 3, commit: 7 });
      cur = cur.restart();
      t.deepEqual(cur.storage.initialState().hardState, { term: 2, vote: 3, commit: 7 });
      t.is(cur.storage.lastIndex(), 8);
      const all = cur.storage.entries(1, 9, Number.MAX_SAFE_INTEGER);
      t.deepEqual(all.map((e) => [e.index, e.term, e.data.length]), [...run(1, 5, 1, 100), ...run(6, 8, 2)].map((e) => [e.index, e.term, e.data.length]));
      t.deepEqual([...all[6]!.data], [...entry(7, 2).data]);
    } finally {
      cur.close();
      cleanup();
    }
  });

  test(`${kind.name}: snapshot, compaction only behind it, chunks, out of date`, (t) => {
    const { subject, cleanup } = kind.make();
    let cur = subject;
    try {
      cur.append(run(1, 10, 1));
      t.is(code(() => cur.compact(3)), 'assert', 'no compaction without a snapshot');
      const data = new Uint8Array(1000).map((_, i) => i & 255);
      const meta = cur.snapshot(7, cs, data);
      t.deepEqual(meta, { index: 7, term: 1, confState: cs, sizeBytes: 1000 });
      t.is(code(() => cur.compact(8)), 'assert', 'no compaction beyond the snapshot');
      cur.compact(5);
      t.is(cur.storage.firstIndex(), 6);
      t.is(cur.storage.term(5), 1);
      t.is(code(() => cur.storage.term(4)), ErrorCode.Compacted);
      t.is(code(() => cur.storage.entries(5, 7, 100)), ErrorCode.Compacted);
      t.deepEqual(cur.storage.entries(6, 8, 1000).map((e) => e.index), [6, 7]);
      t.deepEqual([...cur.storage.snapshotChunk(7, 990, 100)], [...data.subarray(990)]);
      t.deepEqual([...cur.storage.snapshotChunk(7, 10, 5)], [...data.subarray(10, 15)]);
      t.is(code(() => cur.storage.snapshotChunk(6, 0, 10)), ErrorCode.SnapshotOutOfDate);
      // entries entirely behind the compaction point are ignored
      cur.append(run(2, 4, 1));
      t.is(cur.storage.lastIndex(), 10);
      cur = cur.restart();
      t.is(cur.storage.firstIndex(), 6);
      t.deepEqual(cur.storage.snapshot(), meta);
      t.deepEqual([...cur.storage.snapshotChunk(7, 0, 2000)], [...data]);
      t.is(cur.storage.term(5), 1);
    } finally {
      cur.close();
      cleanup();
    }
  });

  if (kind.name !== 'sqlite') {
    // (log.db's log is kept only for the migration: it compacts behind snapshots only.)
    test(`${kind.name}: compaction behind the durable state, without a snapshot`, (t) => {
      const { subject, cleanup } = kind.make();
      let cur = subject;
      try {
        cur.append(run(1, 10, 1));
        cur.append(run(11, 12, 2));
        t.is(code(() => cur.compact(6, 5)), 'assert', 'not beyond the durable state');
        cur.compact(5, 7);
        t.is(cur.storage.firstIndex(), 6);
        t.is(cur.storage.term(5), 1, 'the term at the compaction point is kept');
        t.is(code(() => cur.storage.term(4)), ErrorCode.Compacted);
        t.is(cur.storage.snapshot().index, 0, 'no snapshot was made');
        cur = cur.restart();
        t.is(cur.storage.firstIndex(), 6);
        t.is(cur.storage.lastIndex(), 12);
        t.is(cur.storage.term(5), 1);
        t.deepEqual(cur.storage.entries(6, 13, 1 << 20).map((e) => e.term), [1, 1, 1, 1, 1, 2, 2]);
        t.is(cur.storage.snapshot().index, 0);
      } finally {
        cur.close();
        cleanup();
      }
    });
  }

  test(`${kind.name}: staged snapshot survives restart, install replaces a conflicting log`, (t) => {
    const { subject, cleanup } = kind.make();
    let cur = subject;
    try {
      cur.append(run(1, 5, 1));
      const meta: SnapshotMetadata = { index: 20, term: 3, confState: cs, sizeBytes: 300 };
      const data = new Uint8Array(300).map((_, i) => (i * 7) & 255);
      cur.stage(meta, 0, data.subarray(0, 100));
      cur.stage(meta, 200, data.subarray(200, 300)); // out of order: ignored
      t.deepEqual(cur.storage.pendingSnapshot(), { metadata: meta, bytesReceived: 100 });
      cur = cur.restart();
      t.deepEqual(cur.storage.pendingSnapshot(), { metadata: meta, bytesReceived: 100 });
      cur.stage(meta, 100, data.subarray(100, 300));
      t.is(cur.storage.pendingSnapshot()!.bytesReceived, 300);
      cur.install(meta);
      t.is(cur.storage.pendingSnapshot(), undefined);
      t.is(cur.storage.firstIndex(), 21);
      t.is(cur.storage.lastIndex(), 20);
      t.is(cur.storage.term(20), 3);
      t.is(code(() => cur.storage.term(5)), ErrorCode.Compacted);
      t.deepEqual(cur.storage.initialState().confState, cs);
      cur.append(run(21, 22, 3));
      cur = cur.restart();
      t.deepEqual([...cur.storage.snapshotChunk(20, 0, 1000)], [...data]);
      t.is(cur.storage.lastIndex(), 22);
      t.is(cur.storage.term(20), 3);
      // a chunk of a different snapshot restarts staging
      const other: SnapshotMetadata = { index: 30, term: 4, confState: cs, sizeBytes: 10 };
      cur.stage(other, 0, new Uint8Array(4));
      t.deepEqual(cur.storage.pendingSnapshot(), { metadata: other, bytesReceived: 4 });
    } finally {
      cur.close();
      cleanup();
    }
  });
}

for (const durable of [
  { name: 'sqlite', open: (dir: string) => sqliteSubject(dir, 4) },
  { name: 'wal', open: (dir: string) => walSubject(dir, 500) },
])
test(`memory and ${durable.name} answer identically under a seeded random operation sequence`, (t) => {
  const seed = seedFromEnv(20261124);
  t.log(`seed=${seed} (CHARD_SEED replays)`);
  const rng = new Prng(seed);
  const tmp = tempDir('contract-model');
  let memory = memorySubject();
  let sqlite = durable.open(tmp.dir);
  try {
    let term = 1;
    let snapshotIndex = 0;
    const counts = { appends: 0, snapshots: 0, compactions: 0, restarts: 0 };
    for (let step = 0; step < 400; step++) {
      const last = memory.storage.lastIndex();
      const first = memory.storage.firstIndex();
      const op = rng.int(10);
      if (op < 5) {
        // Never at or below the latest snapshot: a snapshot holds committed entries only, which
        // raft never replaces (WalLogStorage takes a log that disagrees with the recorded snapshot
        // for an install whose reset a crash lost, and resets it on open).
        const start = Math.max(first, snapshotIndex + 1, last + 1 - rng.int(4));
        if (rng.int(3) === 0) term++;
        const entries = run(start, start + rng.int(6), term, rng.int(200));
        memory.append(entries);
        sqlite.append(entries);
        counts.appends++;
      } else if (op === 5 && last >= first) {
        const index = first + rng.int(last - first + 1);
        if (index > snapshotIndex) {
          const data = rng.bytes(1 + rng.int(500));
          t.deepEqual(sqlite.snapshot(index, cs, data), memory.snapshot(index, cs, data));
          snapshotIndex = index;
          counts.snapshots++;
        }
      } else if (op === 6 && snapshotIndex >= first) {
        const index = first + rng.int(snapshotIndex - first + 1);
        memory.compact(index);
        sqlite.compact(index);
        counts.compactions++;
      } else if (op === 7) {
        const hs = { term, vote: rng.int(4), commit: rng.int(last + 1) };
        memory.setHardState(hs);
        sqlite.setHardState(hs);
      } else if (op === 8) {
        memory = memory.restart();
        sqlite = sqlite.restart();
        counts.restarts++;
      }
      // observe everything
      const a = memory.storage;
      const b = sqlite.storage;
      t.is(b.firstIndex(), a.firstIndex(), `firstIndex at step ${step}`);
      t.is(b.lastIndex(), a.lastIndex(), `lastIndex at step ${step}`);
      t.deepEqual(b.initialState().hardState, a.initialState().hardState);
      t.deepEqual(b.snapshot(), a.snapshot());
      for (let i = a.firstIndex() - 2; i <= a.lastIndex() + 1; i++) t.is(code(() => b.term(i)) === 'ok' ? b.term(i) : code(() => b.term(i)), code(() => a.term(i)) === 'ok' ? a.term(i) : code(() => a.term(i)));
      const lo = a.firstIndex() - 1 + rng.int(3);
      const hi = lo + rng.int(a.lastIndex() - lo + 3);
      const maxBytes = 1 + rng.int(1000);
      const ea = code(() => a.entries(lo, hi, maxBytes));
      t.is(code(() => b.entries(lo, hi, maxBytes)), ea);
      if (ea === 'ok') {
        const flat = (es: Entry[]) => es.map((e) => [e.index, e.term, Buffer.from(e.data).toString('hex')]);
        t.deepEqual(flat(b.entries(lo, hi, maxBytes)), flat(a.entries(lo, hi, maxBytes)));
      }
    }
    t.log(counts, `final log [${memory.storage.firstIndex()}, ${memory.storage.lastIndex()}]`);
    t.true(counts.snapshots > 5 && counts.compactions > 5 && counts.restarts > 5);
  } finally {
    sqlite.close();
    tmp.cleanup();
  }
});
