/**
 * bench: `chard bench` / `npm run bench` — the speed and memory figures of chard, each next to a
 * baseline measured in the same run on the same machine:
 *   - fio (ioengine=nbd): 4K randwrite QD32, 4K randread QD32, 1M sequential write QD8 against
 *     `nbdkit file` (baseline), a 3-node chard cluster through the leader, and through a follower
 *     (which forwards writes); ratios chard / nbdkit.
 *   - during the leader randwrite: proposals committed per second and entries per fsync (group
 *     commit), from the leader's own counters.
 *   - resident memory of every node process after the run.
 * Nothing here asserts a figure; it prints them (table and JSON).
 */

import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ClusterClient } from '../cli/client.js';
import type { ClusterFile } from '../cli/cluster-file.js';
import { mainScript } from '../cli/processes.js';
import { type FioFigure, fioFigures, startNbdkitFile } from './fio.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

export interface BenchOptions {
  runtimeSeconds: number;
  nodes: number;
  json: boolean;
  keep: boolean;
}

export interface BenchResult {
  runtimeSecondsPerJob: number;
  fio: Record<string, FioFigure[]>;
  ratios: Record<string, Record<string, number>>;
  group: { proposalsPerSecond: number; entriesPerFsync: number; fsyncs: number; entries: number };
  rssMiB: Record<string, number>;
}

async function cli(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, [mainScript, ...args], { timeout: 120_000, maxBuffer: 16 * MiB });
  return stdout;
}

export async function runBench(options: BenchOptions): Promise<BenchResult> {
  const fio: Record<string, FioFigure[]> = {};
  const log = (line: string) => {
    if (!options.json) console.error(line);
  };
  log(`chard bench: ${options.runtimeSeconds} s per fio job; baseline nbdkit file, then a ${options.nodes}-node cluster`);
  const nbdkit = await startNbdkitFile(1024 * MiB);
  try {
    fio['nbdkit-file'] = await fioFigures(nbdkit.uri, { runtimeSeconds: options.runtimeSeconds });
  } finally {
    await nbdkit.stop();
  }
  log('  nbdkit file done');

  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-bench-'));
  let cluster: ClusterFile | undefined;
  const result: BenchResult = { runtimeSecondsPerJob: options.runtimeSeconds, fio, ratios: {}, group: { proposalsPerSecond: 0, entriesPerFsync: 0, fsyncs: 0, entries: 0 }, rssMiB: {} };
  try {
    cluster = JSON.parse(await cli(['cluster', 'up', '--detach', '--json', '--nodes', String(options.nodes), '--dir', dir, '--volume-size', '1GiB'])) as ClusterFile;
    const client = new ClusterClient(cluster.nodes.map((n) => ({ id: n.id, admin: n.admin })));
    try {
      const leaderId = await client.waitForLeader(30_000);
      const leader = cluster.nodes.find((n) => n.id === leaderId)!;
      const follower = cluster.nodes.find((n) => n.id !== leaderId)!;
      const before = await client.api(leader.admin).metrics();
      const started = performance.now();
      const leaderFigures = await fioFigures(`nbd://${leader.nbd}/default`, { runtimeSeconds: options.runtimeSeconds });
      fio['chard-leader'] = leaderFigures;
      const after = await client.api(leader.admin).metrics();
      const seconds = (performance.now() - started) / 1000;
      const delta = (name: string) => (after.counts[name] ?? 0) - (before.counts[name] ?? 0);
      result.group = {
        proposalsPerSecond: Math.round(delta('raft.proposed') / seconds),
        entriesPerFsync: delta('store.fsync') === 0 ? 0 : Math.round((delta('store.entries') / delta('store.fsync')) * 10) / 10,
        fsyncs: delta('store.fsync'),
        entries: delta('store.entries'),
      };
      log(`  chard through the leader (node ${leaderId}) done`);
      fio['chard-follower'] = await fioFigures(`nbd://${follower.nbd}/default`, { runtimeSeconds: options.runtimeSeconds });
      log(`  chard through a follower (node ${follower.id}) done`);
      for (const n of cluster.nodes) result.rssMiB[`node${n.id}`] = Math.round(((await client.api(n.admin).metrics()).rssBytes / MiB) * 10) / 10;
    } finally {
      client.close();
    }
  } finally {
    if (cluster !== undefined) await cli(['cluster', 'down', '--dir', dir]).catch(() => '');
    if (!options.keep) rmSync(dir, { recursive: true, force: true });
  }
  for (const label of ['chard-leader', 'chard-follower']) {
    result.ratios[label] = {};
    for (const f of fio[label] ?? []) {
      const base = fio['nbdkit-file']?.find((b) => b.job === f.job);
      if (base) result.ratios[label]![f.job] = Math.round((f.job.startsWith('seq') ? f.mibPerSecond / base.mibPerSecond : f.iops / base.iops) * 1000) / 1000;
    }
  }
  return result;
}

export function formatBench(result: BenchResult): string {
  const jobs = result.fio['nbdkit-file']?.map((f) => f.job) ?? [];
  const cell = (label: string, job: string) => {
    const f = result.fio[label]?.find((x) => x.job === job);
    if (f === undefined) return '-';
    return job.startsWith('seq') ? `${f.mibPerSecond.toFixed(0)} MiB/s` : `${f.iops} IOPS`;
  };
  const lines = [
    `fio, ${result.runtimeSecondsPerJob} s per job (ratio = chard / nbdkit file, same machine, same run)`,
    `  ${'job'.padEnd(20)}${'nbdkit file'.padStart(14)}${'chard leader'.padStart(14)}${'ratio'.padStart(8)}${'chard follower'.padStart(16)}${'ratio'.padStart(8)}`,
    ...jobs.map(
      (job) =>
        `  ${job.padEnd(20)}${cell('nbdkit-file', job).padStart(14)}${cell('chard-leader', job).padStart(14)}${String(result.ratios['chard-leader']?.[job] ?? '-').padStart(8)}${cell('chard-follower', job).padStart(16)}${String(result.ratios['chard-follower']?.[job] ?? '-').padStart(8)}`,
    ),
    `group commit on the leader during the fio runs: ${result.group.proposalsPerSecond} proposals/s, ${result.group.entriesPerFsync} entries per fsync (${result.group.entries} entries, ${result.group.fsyncs} fsyncs)`,
    `resident memory after the run: ${Object.entries(result.rssMiB).map(([k, v]) => `${k} ${v} MiB`).join(', ')}`,
  ];
  return lines.join('\n');
}
