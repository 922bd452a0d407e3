/**
 * fio: the NBD baseline benchmark. `fioFigures(uri)` runs three fio jobs with
 * ioengine=nbd against any NBD URI (nbd://host:port/name or nbd+unix:///name?socket=path) and
 * returns what they measured. No timing is asserted anywhere: these are figures for a human (and
 * for `chard bench`) to compare chard against `nbdkit file` and the bare disk.
 *
 * Jobs (each `runtimeSeconds`, time based, one connection, over the first `regionBytes`):
 *   randwrite-4k-qd32   4 KiB random writes, iodepth 32
 *   randwrite-4k-qd1    4 KiB random writes, iodepth 1 (its p50 is the latency of one write)
 *   seqwrite-1m-qd8     1 MiB sequential writes, iodepth 8
 *   randread-4k-qd32    4 KiB random reads,  iodepth 32 (after the writes, so it reads data)
 *   randread-4k-qd1     4 KiB random reads,  iodepth 1
 *
 * `chard bench` (src/bench/bench.ts) runs them against a 3-node cluster and `nbdkit file` in the
 * same run; test/interop/fio.test.ts runs them briefly so they keep working.
 */

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

async function run(command: string, args: string[], options: { timeoutMs: number }): Promise<{ stdout: string }> {
  try {
    const { stdout } = await execFileAsync(command, args, { timeout: options.timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { stdout };
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    throw new Error(`${command} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

const MiB = 1024 * 1024;

/** FioJob: one fio job of the baseline. */
export interface FioJob {
  name: string;
  rw: 'randwrite' | 'randread' | 'write';
  blockBytes: number;
  iodepth: number;
}

export const fioJobs: readonly FioJob[] = [
  { name: 'randwrite-4k-qd32', rw: 'randwrite', blockBytes: 4096, iodepth: 32 },
  { name: 'randwrite-4k-qd1', rw: 'randwrite', blockBytes: 4096, iodepth: 1 },
  { name: 'seqwrite-1m-qd8', rw: 'write', blockBytes: MiB, iodepth: 8 },
  { name: 'randread-4k-qd32', rw: 'randread', blockBytes: 4096, iodepth: 32 },
  { name: 'randread-4k-qd1', rw: 'randread', blockBytes: 4096, iodepth: 1 },
];

/** FioFigure: what one job measured. Latencies are completion latencies in microseconds. */
export interface FioFigure {
  job: string;
  iops: number;
  mibPerSecond: number;
  latencyMeanMicros: number;
  latencyP50Micros: number;
  latencyP99Micros: number;
  ioBytes: number;
  runtimeMs: number;
}

export interface FioFiguresOptions {
  /** runtimeSeconds: per job (default 5). */
  runtimeSeconds?: number;
  /** regionBytes: the part of the export the jobs use (default 256 MiB; the export must be at least this large). */
  regionBytes?: number;
  /** jobTimeoutMs: kill fio if one job takes longer than this (default runtime + 60 s). */
  jobTimeoutMs?: number;
  /** onJob: called around each job (the bench samples the servers' /proc counters there). */
  onJob?: (job: FioJob, phase: 'before' | 'after') => Promise<void> | void;
}

interface FioSide {
  io_bytes: number;
  iops: number;
  bw_bytes: number;
  runtime: number;
  clat_ns: { mean: number; percentile?: Record<string, number> };
}

/** fioFigures: runs the three jobs one after the other against `uri`; throws if fio reports an error. */
export async function fioFigures(uri: string, options: FioFiguresOptions = {}): Promise<FioFigure[]> {
  const runtimeSeconds = options.runtimeSeconds ?? 5;
  const regionBytes = options.regionBytes ?? 256 * MiB;
  const jobTimeoutMs = options.jobTimeoutMs ?? runtimeSeconds * 1000 + 60_000;
  const figures: FioFigure[] = [];
  for (const job of fioJobs) {
    await options.onJob?.(job, 'before');
    const args = [
      `--name=${job.name}`,
      '--ioengine=nbd',
      `--uri=${uri}`,
      `--rw=${job.rw}`,
      `--bs=${job.blockBytes}`,
      `--iodepth=${job.iodepth}`,
      `--size=${regionBytes}`,
      '--time_based',
      `--runtime=${runtimeSeconds}`,
      '--randrepeat=1',
      '--output-format=json',
    ];
    const { stdout } = await run('fio', args, { timeoutMs: jobTimeoutMs });
    const report = JSON.parse(stdout.slice(stdout.indexOf('{'))) as { jobs: { error: number; read: FioSide; write: FioSide }[] };
    const result = report.jobs[0];
    if (!result || result.error !== 0) throw new Error(`fio job ${job.name} failed: ${stdout}`);
    const side = job.rw === 'randread' ? result.read : result.write;
    await options.onJob?.(job, 'after');
    figures.push({
      job: job.name,
      iops: Math.round(side.iops),
      mibPerSecond: Math.round((side.bw_bytes / MiB) * 10) / 10,
      latencyMeanMicros: Math.round(side.clat_ns.mean / 1000),
      latencyP50Micros: Math.round((side.clat_ns.percentile?.['50.000000'] ?? 0) / 1000),
      latencyP99Micros: Math.round((side.clat_ns.percentile?.['99.000000'] ?? 0) / 1000),
      ioBytes: side.io_bytes,
      runtimeMs: side.runtime,
    });
  }
  return figures;
}

/** NbdkitFile: an `nbdkit file` server on a sparse temp file, reachable over a Unix socket. */
export interface NbdkitFile {
  uri: string;
  stop(): Promise<void>;
}

/**
 * startNbdkitFile: the baseline server (nbdkit's file plugin) on a new sparse file of `sizeBytes`.
 * `durable`: add `--filter=fua fuamode=force`, so that every write is flushed to the disk before it
 * is answered — the same promise chard makes (an acknowledged write survives power loss), on one
 * node. `dir`: where the image lives (default: a new directory under the system temp directory).
 */
export async function startNbdkitFile(sizeBytes = 512 * MiB, options: { durable?: boolean; dir?: string } = {}): Promise<NbdkitFile> {
  const dir = await mkdtemp(join(options.dir ?? tmpdir(), 'chard-nbdkit-'));
  const image = join(dir, 'disk.img');
  const socket = join(dir, 'nbd.sock');
  const pidFile = join(dir, 'nbdkit.pid');
  const f = await open(image, 'w');
  await f.truncate(sizeBytes);
  await f.close();
  const child: ChildProcess = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', socket, '-P', pidFile, ...(options.durable ? ['--filter=fua'] : []), 'file', image, ...(options.durable ? ['fuamode=force'] : [])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      child.kill('SIGTERM');
      await exited;
    }
    await rm(dir, { recursive: true, force: true });
  };
  const deadline = performance.now() + 15_000;
  for (;;) {
    const pid = await readFile(pidFile, 'utf8').catch(() => '');
    if (pid.trim() !== '') break;
    if (child.exitCode !== null || performance.now() > deadline) {
      await stop();
      throw new Error(`nbdkit file did not start: ${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { uri: `nbd+unix:///?socket=${socket}`, stop };
}

/** formatFigures: a fixed-width table, one line per job. */
export function formatFigures(label: string, figures: FioFigure[]): string {
  const lines = [`${label}`, `  ${'job'.padEnd(20)}${'IOPS'.padStart(10)}${'MiB/s'.padStart(10)}${'mean us'.padStart(10)}${'p99 us'.padStart(10)}`];
  for (const f of figures) {
    lines.push(`  ${f.job.padEnd(20)}${String(f.iops).padStart(10)}${f.mibPerSecond.toFixed(1).padStart(10)}${String(f.latencyMeanMicros).padStart(10)}${String(f.latencyP99Micros).padStart(10)}`);
  }
  return lines.join('\n');
}
