/**
 * persist-bench: proves group commit — one persist() of a batch of N entries is exactly ONE
 * log.db transaction (one fsync, synchronous=FULL) whatever N — and prints the measured entries/s
 * and entries per fsync for batches of 1, 16 and 256 4-KiB entries (figures printed, not
 * asserted: they depend on the disk). Also checks the bounded entry cache keeps its limit while
 * reads of older entries still come back from SQLite, and that commit-only batches (mustSync
 * false) are written without a fsync of their own.
 */

import test from 'ava';
import { SqliteLogStorage } from '../../src/blockstore/log-store.js';
import { type Entry, EntryType } from '../../src/raft/types.js';
import { tempDir } from './helpers.js';

test('group commit: one transaction per persist(); entries/s for batches of 1, 16, 256 x 4 KiB (printed)', (t) => {
  const tmp = tempDir('bench');
  const log = SqliteLogStorage.open(tmp.dir, { limits: { cacheEntriesMax: 1024 } });
  try {
    const data = new Uint8Array(4096).fill(0xab);
    let next = 1;
    const lines: string[] = [];
    for (const batchSize of [1, 16, 256]) {
      const batches = batchSize === 1 ? 300 : batchSize === 16 ? 100 : 16;
      const before = { ...log.persistStats };
      const started = process.hrtime.bigint();
      for (let b = 0; b < batches; b++) {
        const entries: Entry[] = [];
        for (let i = 0; i < batchSize; i++) entries.push({ index: next + i, term: 1, type: EntryType.Normal, data });
        log.persist({ entries, hardState: { term: 1, vote: 1, commit: next - 1 }, mustSync: true });
        next += batchSize;
      }
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const transactions = log.persistStats.transactions - before.transactions;
      const entries = log.persistStats.entries - before.entries;
      t.is(transactions, batches, `batch ${batchSize}: one transaction (fsync) per persist()`);
      t.is(entries, batches * batchSize);
      lines.push(
        `batch ${String(batchSize).padStart(3)} x 4 KiB: ${Math.round(entries / seconds)} entries/s, ${(entries / transactions).toFixed(0)} entries/fsync, ` +
          `${((seconds / transactions) * 1000).toFixed(2)} ms/persist, ${((entries * 4096) / seconds / 1048576).toFixed(1)} MiB/s`,
      );
    }
    for (const line of lines) t.log(line);
    t.true(log.cachedEntryCount() <= 1024, 'cache bounded by cacheEntriesMax');
    const old = log.entries(5, 8, Number.MAX_SAFE_INTEGER);
    t.deepEqual(old.map((e) => [e.index, e.data.length]), [[5, 4096], [6, 4096], [7, 4096]]);
    t.is(log.term(1), 1);
    // commit-only: no fsync of its own (relaxed), still persisted
    const before = { ...log.persistStats };
    log.persist({ hardState: { term: 1, vote: 1, commit: next - 1 }, mustSync: false });
    t.is(log.persistStats.transactions, before.transactions);
    t.is(log.persistStats.relaxedTransactions, before.relaxedTransactions + 1);
    log.close();
    const reopened = SqliteLogStorage.open(tmp.dir);
    t.is(reopened.hardState().commit, next - 1);
    t.is(reopened.lastIndex(), next - 1);
    reopened.close();
  } finally {
    log.close();
    tmp.cleanup();
  }
});
