/**
 * wal-crash-child: the writer of wal.test.ts's crash test. Opens the SegmentedLog in argv[2] and
 * keeps appending batches of entries (several appends in flight at once, some replacing the last
 * entries as a new leader's would), printing `durable <index> <term>` whenever an append RESOLVED,
 * until the parent kills it with SIGKILL. argv[3], if given, is inlineWriteBytesMax (0: every write
 * on the thread pool). Entry data is derived from (index, term), so the parent
 * can check every byte after reopening.
 */
import { SegmentedLog, WalRecordType } from '../../src/blockstore/wal.js';
import type { Entry } from '../../src/raft/types.js';

export function entryData(index: number, term: number): Uint8Array {
  const data = Buffer.alloc(100 + (index % 7) * 1000, (index * 31 + term) & 0xff);
  data.writeUInt32LE(index, 0);
  data.writeUInt32LE(term, 4);
  return data;
}

if (process.argv[2] !== undefined) {
  const wal = SegmentedLog.open(process.argv[2], { segmentBytesMax: 256 * 1024, ...(process.argv[3] !== undefined ? { inlineWriteBytesMax: Number(process.argv[3]) } : {}) });
  let term = wal.hardState().term + 1;
  let inFlight = 0;
  const inFlightMax = 8;
  const step = (): void => {
    while (inFlight < inFlightMax) {
      // Every 17th batch, a new term replaces the last two entries (raft's conflict rule).
      let from = wal.lastIndex() + 1;
      if (from > 3 && from % 17 === 0) {
        term++;
        from -= 2;
      }
      const entries: Entry[] = [];
      for (let i = 0; i < 1 + (from % 5); i++) entries.push({ index: from + i, term, type: 0, data: entryData(from + i, term) });
      const last = entries[entries.length - 1]!;
      const appendTerm = term;
      inFlight++;
      wal
        .append([
          { type: WalRecordType.Entries, entries },
          { type: WalRecordType.HardState, hardState: { term: appendTerm, vote: 1, commit: 0 } },
        ])
        .then(() => {
          inFlight--;
          process.stdout.write(`durable ${wal.durableIndex()} ${last.index} ${appendTerm}\n`);
          step();
        });
    }
  };
  step();
}
