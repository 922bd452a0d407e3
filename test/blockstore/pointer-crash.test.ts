/**
 * pointer-crash: SIGKILL of a block store whose blocks point into its log while compactions
 * relocate them and delete segments (pointer-crash-child.ts). After each kill the store reopens,
 * re-applies its committed log, and must hold every acknowledged batch — each block reads back
 * intact, no pointer names a segment before the log's first one — and the next child continues
 * where it stopped. Checks that could fail: a relocation not durable before its segment goes, or
 * a compaction past what was relocated, leaves a row pointing into a deleted segment
 * (CorruptError on read); a lost acknowledged batch shows as a shorter log or other bytes.
 */

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { BlockStore } from '../../src/blockstore/index.js';
import { Prng, applyCommitted, readAll, tempDir } from './helpers.js';
import { batchCommands, crashLimits, headerEntries, modelAfter, volumeBytes } from './pointer-crash-model.js';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'pointer-crash-child.js');
const seed = 11;

test('SIGKILL while blocks point into the log and compactions relocate them: every acknowledged write reads back', async (t) => {
  const tmp = tempDir('pointer-crash');
  t.teardown(() => tmp.cleanup());
  const rng = new Prng(seed);
  const perBatch = batchCommands(seed, 1).length;
  let relocated = 0;
  let acked = 0;
  let compactions = 0;
  let firstBefore = 1;
  for (let round = 0; round < 6; round++) {
    // Killed once this child compacted at least once and that compaction's COMPACT record is
    // durable (two batches acknowledged after its line: the second was appended after the record),
    // after a random number of further acknowledged batches (events, not a sleep).
    const killAfter = acked + 20 + rng.int(60);
    const proc = spawn(process.execPath, [child, tmp.dir, String(seed)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    await new Promise<void>((resolve) => {
      proc.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const lines = out.split('\n');
        const oks = lines.filter((l) => l.startsWith('ok '));
        if (oks.length > 0) acked = Math.max(acked, Number(oks[oks.length - 1]!.slice(3)));
        const firstCompacted = lines.findIndex((l) => l.startsWith('compacted '));
        const durableCompaction = firstCompacted >= 0 && lines.slice(firstCompacted).filter((l) => l.startsWith('ok ')).length >= 2;
        if ((acked >= killAfter && durableCompaction) || out.includes('compact failed')) {
          const compactedLines = lines.filter((l) => l.startsWith('compacted '));
          compactions += compactedLines.length;
          if (compactedLines.length > 0) relocated += Number(/relocated (\d+)/.exec(compactedLines[compactedLines.length - 1]!)![1]);
          proc.kill('SIGKILL');
          resolve();
        }
      });
      void exited.then(() => resolve());
    });
    t.is(await exited, null, `round ${round}: the child was killed, it did not exit on its own`);
    t.false(out.includes('compact failed'), out.split('\n').find((l) => l.startsWith('compact failed')) ?? '');

    const store = BlockStore.open(tmp.dir, { limits: crashLimits });
    try {
      applyCommitted(store);
      const batches = (store.logStorage.lastIndex() - headerEntries) / perBatch;
      t.true(Number.isInteger(batches), `round ${round}: whole batches in the log`);
      t.true(batches >= acked, `round ${round}: ${batches} batches in the log, ${acked} acknowledged`);
      const bytes = readAll(store, 'v', 0, volumeBytes);
      t.true(Buffer.from(bytes).equals(Buffer.from(modelAfter(seed, batches))), `round ${round}: the volume holds batches 1..${batches}`);
      const first = store.logStorage.firstIndex();
      t.true(first > firstBefore, `round ${round}: the log was compacted (first index ${firstBefore} -> ${first})`);
      firstBefore = first;
      const firstSegment = store.logStorage.wal.locate(first)?.segment ?? Number.MAX_SAFE_INTEGER;
      const segments = store.state.database().prepare('SELECT DISTINCT seg FROM blocks WHERE seg IS NOT NULL').all() as Array<{ seg: number }>;
      for (const { seg } of segments) t.true(seg >= firstSegment, `round ${round}: a pointer into segment ${seg}, the log starts in ${firstSegment}`);
      const inRows = (store.state.database().prepare('SELECT COUNT(*) AS c FROM blocks WHERE seg IS NULL').get() as { c: number }).c;
      t.log(`round ${round}: killed after batch ${acked}; log [${first}, ${store.logStorage.lastIndex()}], ${segments.length} segments pointed into, ${inRows} blocks in rows`);
    } finally {
      store.close();
    }
  }
  t.true(relocated > 0, 'compactions relocated blocks into rows');
  t.log(`${compactions} compactions reported in all, ${relocated} blocks relocated`);
});
