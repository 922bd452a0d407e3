/**
 * crash-child: the writer of log-crash.test.ts. Opens the log in argv[2], continues the
 * deterministic batch sequence of `seed` (argv[3]) after the last batch that is durable (its
 * number is the hard state's term), and prints `ok <j>` after persist() of batch j RETURNED —
 * until the parent kills it with SIGKILL.
 */

import { SqliteLogStorage } from '../../src/blockstore/log-store.js';
import { crashBatch } from './helpers.js';

const dir = process.argv[2]!;
const seed = Number(process.argv[3]);
const log = SqliteLogStorage.open(dir, { limits: { cacheEntriesMax: 64 } });
let j = log.hardState().term;
process.stdout.write(`start ${j}\n`);
for (;;) {
  j++;
  const batch = crashBatch(seed, j, log.lastIndex());
  log.persist({ entries: batch.entries, hardState: batch.hardState, mustSync: true });
  process.stdout.write(`ok ${j}\n`);
}
