/**
 * log-crash: proves that persist() is atomic and durable under process crashes. A child process
 * (crash-child.ts) persists a deterministic sequence of batches (appends, some overwriting a
 * conflicting suffix, each with a hard state naming the batch) and prints each batch number after
 * persist() returned; the parent kills it with SIGKILL at a seeded random moment, reopens the log
 * and checks that it equals the model log after exactly batch J (J = the durable hard state's
 * term) with J >= the last printed batch: every acknowledged batch is present and no batch is
 * half-written (entries and hard state agree). Repeated over several kill/restart rounds.
 */

import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { SqliteLogStorage } from '../../src/blockstore/log-store.js';
import { Prng, crashModel, seedFromEnv, tempDir } from './helpers.js';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'crash-child.js');

function runAndKill(dir: string, seed: number, killAfterMs: number): Promise<{ lastAck: number; started: number }> {
  return new Promise((resolve, reject) => {
    const proc = spawn(process.execPath, [child, dir, String(seed)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let timer: NodeJS.Timeout | undefined;
    proc.stdout.on('data', (chunk: Buffer) => {
      out += chunk.toString();
      // Start the kill clock once the child has acknowledged its first batch of this round.
      if (timer === undefined && /ok \d+/.test(out)) timer = setTimeout(() => proc.kill('SIGKILL'), killAfterMs);
    });
    proc.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const guard = setTimeout(() => proc.kill('SIGKILL'), 20_000);
    proc.on('close', (_code, signal) => {
      clearTimeout(guard);
      if (timer !== undefined) clearTimeout(timer);
      if (signal !== 'SIGKILL') return reject(new Error(`child ended without SIGKILL: ${signal} ${err}`));
      const started = Number(/start (\d+)/.exec(out)?.[1] ?? NaN);
      const acks = [...out.matchAll(/ok (\d+)\n/g)].map((m) => Number(m[1]));
      resolve({ lastAck: acks.length === 0 ? started : acks[acks.length - 1]!, started });
    });
  });
}

test('SIGKILL at random points: every acknowledged batch survives, nothing is half-written', async (t) => {
  const seed = seedFromEnv(7);
  t.log(`seed=${seed} (CHARD_SEED replays the batch sequence; kill times vary with scheduling)`);
  const rng = new Prng(seed);
  const tmp = tempDir('crash');
  try {
    let previous = 0;
    const rounds = 8;
    for (let round = 0; round < rounds; round++) {
      const { lastAck, started } = await runAndKill(tmp.dir, seed, 5 + rng.int(150));
      t.is(started, previous, `round ${round}: child resumed after the durable batch`);
      const log = SqliteLogStorage.open(tmp.dir);
      try {
        const durable = log.hardState().term;
        t.true(durable >= lastAck, `round ${round}: durable batch ${durable} >= acknowledged ${lastAck}`);
        t.true(durable <= lastAck + 1, `round ${round}: at most the one in-flight batch beyond the acknowledged`);
        const model = crashModel(seed, durable);
        t.deepEqual(log.hardState(), model.hardState);
        t.is(log.lastIndex(), model.log.length, `round ${round}: log length of batch ${durable}`);
        const stored = log.entries(1, log.lastIndex() + 1, Number.MAX_SAFE_INTEGER);
        let same = stored.length === model.log.length;
        for (let i = 0; same && i < stored.length; i++) {
          const a = stored[i]!;
          const b = model.log[i]!;
          same = a.index === b.index && a.term === b.term && Buffer.compare(a.data, b.data) === 0;
        }
        t.true(same, `round ${round}: log content equals the model after batch ${durable}`);
        t.log(`round ${round}: acknowledged ${lastAck}, durable ${durable}, ${log.lastIndex()} entries`);
        previous = durable;
      } finally {
        log.close();
      }
    }
    t.true(previous >= rounds, 'the children made progress (each round acknowledged a batch before the kill clock started)');
  } finally {
    tmp.cleanup();
  }
});
