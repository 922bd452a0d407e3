/**
 * bench: `chard bench` / `npm run bench` — the speed and memory figures of chard, each next to a
 * baseline measured in the same run on the same machine and disk (docs/benchmarks.md):
 *   - local disk: p50 of one 4 KiB write + fdatasync, in the directory the servers use.
 *   - fio (ioengine=nbd, src/bench/fio.ts: 4K randwrite QD32 and QD1, 1M seq write QD8, 4K randread
 *     QD32 and QD1) against `nbdkit file` (volatile: nothing is flushed), `nbdkit file` with
 *     `--filter=fua fuamode=force` (durable: every write flushed, one node — chard's promise on one
 *     disk), and a 3-node chard cluster through the leader and through a follower.
 *   - per node during the chard write jobs: write amplification (bytes the process wrote, from
 *     /proc/PID/io write_bytes, divided by the payload fio wrote), CPU seconds per 1,000 writes
 *     (/proc/PID/stat utime + stime), entries per fsync (the node's own counters), and resident
 *     memory after the run.
 * It prints one table of figures, ratios and the issue's targets, and writes results.json. Nothing
 * here asserts a figure: a test runs `--quick` only so that the bench keeps working.
 */

import { execFile } from 'node:child_process';
import { closeSync, fdatasyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ClusterClient } from '../cli/client.js';
import type { ClusterFile } from '../cli/cluster-file.js';
import { mainScript } from '../cli/processes.js';
import { type FioFigure, type FioJob, fioFigures, fioJobs, startNbdkitFile } from './fio.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

export interface BenchOptions {
  runtimeSeconds: number;
  nodes: number;
  json: boolean;
  keep: boolean;
  /** quick: a short run (1 s per job, a small region) that only shows the bench still works. */
  quick: boolean;
  /** dir: where the servers keep their data (default: the system temp directory). */
  dir?: string;
  /** resultsFile: where results.json goes (default: ./results.json; '' for none). */
  resultsFile: string;
}

/** NodeFigures: one chard node's costs over the write jobs of one run. */
export interface NodeFigures {
  /** writeAmplification: job name → bytes the process wrote ÷ payload bytes fio wrote. */
  writeAmplification: Record<string, number>;
  /** cpuSecondsPer1000Writes: job name → CPU seconds of the process per 1,000 fio writes. */
  cpuSecondsPer1000Writes: Record<string, number>;
  /**
   * mainThreadCpuSecondsPer1000Writes: the same for the main thread alone (the event loop, which
   * runs raft, the NBD server and the peer transport); the rest is libuv's pool, V8's GC helpers
   * and the checkpoint and snapshot workers.
   */
  mainThreadCpuSecondsPer1000Writes: Record<string, number>;
  rssMiB: number;
  /**
   * memoryMiB: what the resident set is made of after the run: the main isolate's JS heap (used of
   * reserved), memory JS objects hold outside it (external, Buffers among it), and the rest
   * (native: SQLite's caches, the worker threads' isolates, the binary's pages, malloc's arenas).
   */
  memoryMiB: { heapUsed: number; heapTotal: number; external: number; arrayBuffers: number; native: number };
}

export interface BenchResult {
  date: string;
  machine: { cpus: number; cpuModel: string; memoryGiB: number; node: string; kernel: string };
  runtimeSecondsPerJob: number;
  localFdatasyncP50Micros: number;
  fio: Record<string, FioFigure[]>;
  nodes: Record<string, NodeFigures>;
  /**
   * group: the leader's counters over its fio jobs: proposals per second, entries per fsync, and
   * the raft messages it sent and received per proposal with the transport frames that carried them
   * (every frame is one gRPC stream message: the per-write CPU follows these counts).
   */
  group: { proposalsPerSecond: number; entriesPerFsync: number; fsyncs: number; entries: number; messagesPerProposal: number; framesPerProposal: number };
  targets: TargetRow[];
}

/** TargetRow: one line of the issue's target table: the measured ratio and whether it is met. */
export interface TargetRow {
  figure: string;
  value: number | undefined;
  target: string;
  met: boolean | undefined;
}

async function cli(args: string[]): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, [mainScript, ...args], { timeout: 120_000, maxBuffer: 16 * MiB });
  return stdout;
}

/** fdatasyncP50Micros: p50 of `count` 4 KiB writes each followed by fdatasync, in `dir`. */
export function fdatasyncP50Micros(dir: string, count: number): number {
  const file = path.join(dir, `chard-fdatasync-${process.pid}.tmp`);
  const fd = openSync(file, 'w');
  const block = Buffer.alloc(4096, 0xa5);
  const micros: number[] = [];
  try {
    for (let i = 0; i < count; i++) {
      const started = performance.now();
      writeSync(fd, block, 0, block.length, (i % 256) * 4096);
      fdatasyncSync(fd);
      micros.push((performance.now() - started) * 1000);
    }
  } finally {
    closeSync(fd);
    unlinkSync(file);
  }
  micros.sort((a, b) => a - b);
  return Math.round(micros[Math.floor(micros.length / 2)]!);
}

/** ProcSample: what /proc says of one process at one moment. */
interface ProcSample {
  writeBytes: number;
  cpuSeconds: number;
  mainThreadCpuSeconds: number;
}

const clockTicksPerSecond = 100; // Linux USER_HZ on every architecture Node runs on here

function procSample(pid: number): ProcSample {
  const io = readFileSync(`/proc/${pid}/io`, 'utf8');
  const writeBytes = Number(/^write_bytes:\s*(\d+)/m.exec(io)?.[1] ?? 0);
  // /proc/PID/stat: the command may hold spaces and parentheses; fields are counted after the last ')'.
  const cpu = (file: string) => {
    const stat = readFileSync(file, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
  };
  // The main thread's task id is the process id.
  return { writeBytes, cpuSeconds: cpu(`/proc/${pid}/stat`), mainThreadCpuSeconds: cpu(`/proc/${pid}/task/${pid}/stat`) };
}

const round = (x: number, digits: number) => Math.round(x * 10 ** digits) / 10 ** digits;

export async function runBench(options: BenchOptions): Promise<BenchResult> {
  const log = (line: string) => {
    if (!options.json) console.error(line);
  };
  const runtimeSeconds = options.quick ? 1 : options.runtimeSeconds;
  const regionBytes = options.quick ? 64 * MiB : 256 * MiB;
  // --dir names where the bench may work (the disk under test); it is made if it does not exist.
  if (options.dir !== undefined) mkdirSync(options.dir, { recursive: true });
  const workDir = mkdtempSync(path.join(options.dir ?? os.tmpdir(), 'chard-bench-'));
  const fio: Record<string, FioFigure[]> = {};
  const result: BenchResult = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', memoryGiB: round(os.totalmem() / 1024 ** 3, 1), node: process.version, kernel: os.release() },
    runtimeSecondsPerJob: runtimeSeconds,
    localFdatasyncP50Micros: 0,
    fio,
    nodes: {},
    group: { proposalsPerSecond: 0, entriesPerFsync: 0, fsyncs: 0, entries: 0, messagesPerProposal: 0, framesPerProposal: 0 },
    targets: [],
  };
  let cluster: ClusterFile | undefined;
  try {
    log(`chard bench: ${runtimeSeconds} s per fio job, data in ${workDir}`);
    result.localFdatasyncP50Micros = fdatasyncP50Micros(workDir, options.quick ? 50 : 500);
    log(`  local 4 KiB write + fdatasync p50 ${result.localFdatasyncP50Micros} us`);
    for (const [label, durable] of [
      ['nbdkit-file', false],
      ['nbdkit-durable', true],
    ] as const) {
      const nbdkit = await startNbdkitFile(1024 * MiB, { durable, dir: workDir });
      try {
        fio[label] = await fioFigures(nbdkit.uri, { runtimeSeconds, regionBytes });
      } finally {
        await nbdkit.stop();
      }
      log(`  ${label} done`);
    }

    const clusterDir = path.join(workDir, 'cluster');
    cluster = JSON.parse(await cli(['cluster', 'up', '--detach', '--json', '--nodes', String(options.nodes), '--dir', clusterDir, '--volume-size', '1GiB'])) as ClusterFile;
    const client = new ClusterClient(cluster.nodes.map((n) => ({ id: n.id, admin: n.admin })));
    try {
      const leaderId = await client.waitForLeader(30_000);
      const leader = cluster.nodes.find((n) => n.id === leaderId)!;
      const follower = cluster.nodes.find((n) => n.id !== leaderId)!;
      for (const n of cluster.nodes) result.nodes[`node${n.id}`] = { writeAmplification: {}, cpuSecondsPer1000Writes: {}, mainThreadCpuSecondsPer1000Writes: {}, rssMiB: 0, memoryMiB: { heapUsed: 0, heapTotal: 0, external: 0, arrayBuffers: 0, native: 0 } };
      // Per node and write job: /proc counters before and after, against the payload fio wrote.
      const samples = new Map<number, ProcSample>();
      const onJob = async (job: FioJob, phase: 'before' | 'after') => {
        if (job.rw === 'randread') return;
        if (phase === 'after') await checkpointsAfterJob(client, cluster!, log);
        for (const n of cluster!.nodes) {
          const now = procSample(n.pid);
          if (phase === 'before') samples.set(n.id, now);
          else pending.push({ node: n.id, job: job.name, write: now.writeBytes - samples.get(n.id)!.writeBytes, cpu: now.cpuSeconds - samples.get(n.id)!.cpuSeconds, mainCpu: now.mainThreadCpuSeconds - samples.get(n.id)!.mainThreadCpuSeconds });
        }
      };
      const pending: { node: number; job: string; write: number; cpu: number; mainCpu: number }[] = [];
      const before = await client.api(leader.admin).metrics();
      const started = performance.now();
      fio['chard-leader'] = await fioFigures(`nbd://${leader.nbd}/default`, { runtimeSeconds, regionBytes, onJob });
      const after = await client.api(leader.admin).metrics();
      const seconds = (performance.now() - started) / 1000;
      const delta = (name: string) => (after.counts[name] ?? 0) - (before.counts[name] ?? 0);
      const perProposal = (n: number) => (delta('raft.proposed') === 0 ? 0 : round(n / delta('raft.proposed'), 1));
      result.group = {
        proposalsPerSecond: Math.round(delta('raft.proposed') / seconds),
        entriesPerFsync: delta('store.fsync') === 0 ? 0 : round(delta('store.entries') / delta('store.fsync'), 1),
        fsyncs: delta('store.fsync'),
        entries: delta('store.entries'),
        messagesPerProposal: perProposal(delta('transport.messages.sent') + delta('transport.messages.received')),
        framesPerProposal: perProposal(delta('transport.frames.sent') + delta('transport.frames.received')),
      };
      for (const p of pending) {
        const figure = fio['chard-leader'].find((f) => f.job === p.job)!;
        const job = fioJobs.find((j) => j.name === p.job)!;
        const writes = figure.ioBytes / job.blockBytes;
        const node = result.nodes[`node${p.node}`]!;
        node.writeAmplification[p.job] = figure.ioBytes === 0 ? 0 : round(p.write / figure.ioBytes, 2);
        node.cpuSecondsPer1000Writes[p.job] = writes === 0 ? 0 : round((p.cpu / writes) * 1000, 3);
        node.mainThreadCpuSecondsPer1000Writes[p.job] = writes === 0 ? 0 : round((p.mainCpu / writes) * 1000, 3);
      }
      log(`  chard through the leader (node ${leaderId}) done`);
      fio['chard-follower'] = await fioFigures(`nbd://${follower.nbd}/default`, { runtimeSeconds, regionBytes });
      log(`  chard through a follower (node ${follower.id}) done`);
      for (const n of cluster.nodes) {
        const m = (await client.api(n.admin).metrics()).memory;
        const node = result.nodes[`node${n.id}`]!;
        node.rssMiB = round(m.rssBytes / MiB, 1);
        // The heap is resident only as far as it is reserved; external memory outside it is counted once.
        node.memoryMiB = { heapUsed: round(m.heapUsedBytes / MiB, 1), heapTotal: round(m.heapTotalBytes / MiB, 1), external: round(m.externalBytes / MiB, 1), arrayBuffers: round(m.arrayBuffersBytes / MiB, 1), native: round(Math.max(0, m.rssBytes - m.heapTotalBytes - m.externalBytes) / MiB, 1) };
      }
    } finally {
      client.close();
    }
  } finally {
    if (cluster !== undefined) await cli(['cluster', 'down', '--dir', path.join(workDir, 'cluster')]).catch(() => '');
    if (!options.keep) rmSync(workDir, { recursive: true, force: true });
  }
  result.targets = targets(result);
  if (options.resultsFile !== '') writeFileSync(options.resultsFile, `${JSON.stringify(result, null, 2)}\n`);
  return result;
}

/** checkpointWaitMsMax: how long the bench waits for the nodes' state.db WAL to be checkpointed after a write job. */
const checkpointWaitMsMax = 60_000;

/**
 * checkpointsAfterJob: waits until every node has run a state.db checkpoint for an idle WAL since
 * the job ended, with nothing left pending, so that the bytes a node writes for a job include the
 * checkpoint of that job's writes (the worker checkpoints by size or when the WAL goes idle:
 * src/blockstore/checkpointer.ts). An idle checkpoint comes only after the WAL stopped growing
 * for checkpointIdleMs, longer than the delayed commit of the job's last applies. Says so, and
 * goes on, if a node does not get there in time (its figure is then a lower bound).
 */
async function checkpointsAfterJob(client: ClusterClient, cluster: ClusterFile, log: (line: string) => void): Promise<void> {
  const idle = async (admin: string) => {
    const m = await client.api(admin).metrics();
    return { idle: m.counts['store.state_checkpoints.idle'] ?? 0, pending: m.gauges['store.state_wal_pending_bytes'] ?? 0 };
  };
  const base = new Map<number, number>();
  for (const n of cluster.nodes) base.set(n.id, (await idle(n.admin)).idle);
  const deadline = performance.now() + checkpointWaitMsMax;
  for (const n of cluster.nodes) {
    for (;;) {
      const now = await idle(n.admin);
      if (now.idle > base.get(n.id)! && now.pending === 0) break;
      if (performance.now() > deadline) {
        log(`  node ${n.id}: no idle state.db checkpoint within ${checkpointWaitMsMax / 1000} s of the job's end (${now.pending} B pending); its write amplification is a lower bound`);
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

function figure(result: BenchResult, label: string, job: string): FioFigure | undefined {
  return result.fio[label]?.find((f) => f.job === job);
}

/** targets: issue 12's target table, as ratios measured in this run. */
export function targets(result: BenchResult): TargetRow[] {
  const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined || b === 0 ? undefined : round(a / b, 3));
  const leader = (job: string) => figure(result, 'chard-leader', job);
  const rows: TargetRow[] = [];
  const add = (name: string, value: number | undefined, target: string, met: (v: number) => boolean) =>
    rows.push({ figure: name, value, target, met: value === undefined ? undefined : met(value) });
  add('4K randwrite QD32 / nbdkit durable', ratio(leader('randwrite-4k-qd32')?.iops, figure(result, 'nbdkit-durable', 'randwrite-4k-qd32')?.iops), '>= 1.0', (v) => v >= 1);
  add(
    '4K write QD1 p50 / nbdkit durable QD1 p50',
    ratio(leader('randwrite-4k-qd1')?.latencyP50Micros, figure(result, 'nbdkit-durable', 'randwrite-4k-qd1')?.latencyP50Micros),
    '<= 3',
    (v) => v <= 3,
  );
  const durableSeq = figure(result, 'nbdkit-durable', 'seqwrite-1m-qd8')?.mibPerSecond;
  add('1M seq write QD8 / (nbdkit durable / 3)', ratio(leader('seqwrite-1m-qd8')?.mibPerSecond, durableSeq === undefined ? undefined : durableSeq / 3), '>= 0.5', (v) => v >= 0.5);
  add('4K randread QD32 / nbdkit file', ratio(leader('randread-4k-qd32')?.iops, figure(result, 'nbdkit-file', 'randread-4k-qd32')?.iops), '>= 0.6', (v) => v >= 0.6);
  add(
    '4K randread QD1 p50 / nbdkit file p50',
    ratio(leader('randread-4k-qd1')?.latencyP50Micros, figure(result, 'nbdkit-file', 'randread-4k-qd1')?.latencyP50Micros),
    '<= 3',
    (v) => v <= 3,
  );
  for (const job of ['randwrite-4k-qd32', 'seqwrite-1m-qd8']) {
    const values = Object.values(result.nodes).map((n) => n.writeAmplification[job]).filter((v): v is number => v !== undefined);
    add(`write amplification per node, ${job} (max)`, values.length === 0 ? undefined : Math.max(...values), '<= 2.2', (v) => v <= 2.2);
  }
  const rss = Object.values(result.nodes).map((n) => n.rssMiB);
  add('RSS per node after the bench, MiB (max)', rss.length === 0 ? undefined : Math.max(...rss), '<= 200', (v) => v <= 200);
  return rows;
}

export function formatBench(result: BenchResult): string {
  const labels = ['nbdkit-file', 'nbdkit-durable', 'chard-leader', 'chard-follower'];
  const cell = (label: string, job: string) => {
    const f = figure(result, label, job);
    if (f === undefined) return '-';
    if (job.startsWith('seq')) return `${f.mibPerSecond.toFixed(0)} MiB/s`;
    if (job.endsWith('qd1')) return `${f.latencyP50Micros} us p50`;
    return `${f.iops} IOPS`;
  };
  const jobs = result.fio['nbdkit-file']?.map((f) => f.job) ?? [];
  const lines = [
    `chard bench ${result.date}: ${result.machine.cpus} x ${result.machine.cpuModel}, ${result.machine.memoryGiB} GiB, Node ${result.machine.node}; ${result.runtimeSecondsPerJob} s per fio job`,
    `local disk: 4 KiB write + fdatasync p50 ${result.localFdatasyncP50Micros} us`,
    '',
    `  ${'job'.padEnd(20)}${labels.map((l) => l.padStart(17)).join('')}`,
    ...jobs.map((job) => `  ${job.padEnd(20)}${labels.map((l) => cell(l, job).padStart(17)).join('')}`),
    '',
    `per node (chard write jobs through the leader): write amplification, CPU s per 1,000 writes (of it the main thread's), RSS after the run (JS heap used/reserved, external, native)`,
    ...Object.entries(result.nodes).map(
      ([name, n]) =>
        `  ${name.padEnd(8)} amp ${Object.entries(n.writeAmplification).map(([j, v]) => `${j} ${v}x`).join(', ')}; cpu ${Object.entries(n.cpuSecondsPer1000Writes).map(([j, v]) => `${j} ${v} (${n.mainThreadCpuSecondsPer1000Writes[j] ?? '-'})`).join(', ')}; rss ${n.rssMiB} MiB (heap ${n.memoryMiB.heapUsed}/${n.memoryMiB.heapTotal}, external ${n.memoryMiB.external}, native ${n.memoryMiB.native})`,
    ),
    `group commit on the leader: ${result.group.proposalsPerSecond} proposals/s, ${result.group.entriesPerFsync} entries per fsync (${result.group.entries} entries, ${result.group.fsyncs} fsyncs); raft messages sent + received per proposal ${result.group.messagesPerProposal}, in ${result.group.framesPerProposal} frames`,
    '',
    'targets (ratios measured in this run)',
    ...result.targets.map((t) => `  ${t.figure.padEnd(52)}${String(t.value ?? '-').padStart(10)}  target ${t.target.padEnd(8)} ${t.met === undefined ? 'not measured' : t.met ? 'met' : 'MISSED'}`),
  ];
  return lines.join('\n');
}
