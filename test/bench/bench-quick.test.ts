// bench-quick: `chard bench --quick --json` still runs end to end — every baseline (local
// fdatasync, nbdkit file, nbdkit file forcing FUA), a 3-node cluster through the leader and a
// follower, per-node /proc figures and the target table — and writes results.json. It checks the
// shape of what was measured, never a figure (figures belong to docs/benchmarks.md, not to tests).
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { BenchResult } from '../../src/bench/bench.js';
import { fioJobs } from '../../src/bench/fio.js';
import { mainScript } from '../../src/cli/processes.js';

const execFileAsync = promisify(execFile);

test('chard bench --quick measures every baseline, both chard paths, per-node costs and the targets', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-bench-test-'));
  try {
    const resultsFile = path.join(dir, 'results.json');
    const { stdout } = await execFileAsync(process.execPath, [mainScript, 'bench', '--quick', '--json', '--dir', dir, '--results', resultsFile], { timeout: 240_000, maxBuffer: 16 * 1024 * 1024 });
    const printed = JSON.parse(stdout) as BenchResult;
    const written = JSON.parse(readFileSync(resultsFile, 'utf8')) as BenchResult;
    t.deepEqual(written, printed);
    t.true(printed.localFdatasyncP50Micros > 0);
    for (const label of ['nbdkit-file', 'nbdkit-durable', 'chard-leader', 'chard-follower']) {
      t.deepEqual(printed.fio[label]?.map((f) => f.job), fioJobs.map((j) => j.name), label);
      for (const f of printed.fio[label]!) t.true(f.ioBytes > 0 && f.latencyP50Micros > 0, `${label} ${f.job} did I/O`);
    }
    t.is(Object.keys(printed.nodes).length, 3);
    for (const [name, n] of Object.entries(printed.nodes)) {
      // Every node writes at least the payload it stores (its copy of each block): amplification >= 1.
      t.true((n.writeAmplification['randwrite-4k-qd32'] ?? 0) >= 1, `${name} wrote its copy`);
      t.true(n.rssMiB > 0);
      // The main thread is one of the process's threads: its CPU is part of the process's.
      const main = n.mainThreadCpuSecondsPer1000Writes['randwrite-4k-qd32'];
      t.true(main !== undefined && main > 0 && main <= n.cpuSecondsPer1000Writes['randwrite-4k-qd32']!, `${name} main-thread CPU ${main}`);
      t.true(n.memoryMiB.heapUsed > 0 && n.memoryMiB.heapUsed <= n.memoryMiB.heapTotal && n.memoryMiB.heapTotal < n.rssMiB, `${name} memory ${JSON.stringify(n.memoryMiB)}`);
    }
    t.true(printed.group.entriesPerFsync > 0 && printed.group.messagesPerProposal > 0 && printed.group.framesPerProposal > 0, "the leader counted its fsyncs, messages and frames");
    t.is(printed.targets.length, 8);
    for (const row of printed.targets) t.not(row.value, undefined, row.figure);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
