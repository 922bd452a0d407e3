/**
 * pointer-crash-child: the writer of pointer-crash.test.ts. Opens the block store in argv[2] with
 * a real timer (applies share delayed transactions, compactLog yields between relocation turns),
 * re-applies its committed log beyond the applied index (as raft does after a restart), then
 * continues the deterministic batches of seed argv[3]: each batch is persisted, awaited (durable),
 * applied (whole blocks become pointers into the log), and reported `ok <j>`; every
 * `compactEveryBatches` batches a compactLog runs alongside (relocating, then compacting with no
 * entries kept), never awaited, reported `compacted <index> relocated <blocks so far>` when it compacted (its
 * COMPACT record is then queued: any batch appended after this line is durable only after it) —
 * until the parent kills it with SIGKILL.
 */

import { BlockStore } from '../../src/blockstore/index.js';
import { systemScheduler } from '../../src/node/clock.js';
import { encodeCommand } from '../../src/blockstore/commands.js';
import { type Entry, EntryType } from '../../src/raft/types.js';
import { applyCommitted, readyOf } from './helpers.js';
import { batchCommands, crashLimits, headerEntries, volumeBytes } from './pointer-crash-model.js';

const dir = process.argv[2]!;
const seed = Number(process.argv[3]);
const compactEveryBatches = 4;
// The node's own scheduler (its unref'd timers: the write loop below keeps the process alive).
const store = BlockStore.open(dir, { limits: crashLimits, timer: systemScheduler });

async function append(commands: ReturnType<typeof batchCommands>): Promise<void> {
  const start = store.logStorage.lastIndex() + 1;
  const entries: Entry[] = commands.map((c, i) => ({ index: start + i, term: 1, type: EntryType.Normal, data: encodeCommand(c) }));
  await store.persist({ ...readyOf(), entries, hardState: { term: 1, vote: 0, commit: start + entries.length - 1 } });
  applyCommitted(store, entries);
}

if (store.logStorage.lastIndex() === 0) {
  store.bootstrap([1]);
  await append([{ kind: 'createVolume', name: 'v', sizeBytes: volumeBytes }]);
}
applyCommitted(store);
const perBatch = batchCommands(seed, 1).length;
let j = (store.logStorage.lastIndex() - headerEntries) / perBatch;
if (!Number.isInteger(j)) throw new Error(`log holds a partial batch: last index ${store.logStorage.lastIndex()}`);
process.stdout.write(`start ${j}\n`);
const all = () => ({ upTo: Number.MAX_SAFE_INTEGER, retainFor: [] });
for (;;) {
  j++;
  await append(batchCommands(seed, j));
  if (j % compactEveryBatches === 0) {
    store.compactLog(all).then(
      (index) => {
        if (index !== undefined) process.stdout.write(`compacted ${index} relocated ${store.state.refStats.relocated}\n`);
      },
      (error: unknown) => {
        process.stdout.write(`compact failed ${String(error)}\n`);
        process.exit(1);
      },
    );
  }
  process.stdout.write(`ok ${j}\n`);
}
