/**
 * command: `chard chaos` — parse the options, pick the mode, run, print one verdict line.
 *
 * Modes:
 *  - netns (root, NetLab available; the default when possible): this process cleans up stale
 *    labs, creates a lab with a namespace per node id the schedule may use, writes its descriptor
 *    to DIR/lab.json and re-executes the CLI inside the lab's client namespace
 *    (`chard chaos ... --inside-lab DIR/lab.json`), where the runner reaches every node; node
 *    spawning and nftables changes work from there through `ip netns exec`. When the inner run
 *    ends (or this process is interrupted) the lab is destroyed, whatever happened inside.
 *  - local (no root, or `--mode local`): nodes on 127.0.0.1, faults through `testing.faultsFile`.
 *
 *  - recheck (`--recheck DIR`): no run; the verdict of a finished run is computed again from
 *    DIR/history.jsonl and DIR/results.json alone (recheck.ts), printed as the same verdict line,
 *    and compared with the verdict the run recorded.
 *
 * Exit code: 0 only when the run is valid (PASS) — for a recheck, when it is PASS and agrees with
 * the recorded verdict; 1 for FAIL, UNKNOWN or disagreement; 2 for bad options.
 */

import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseIntOption } from '../cli/cluster-file.js';
import { mainScript } from '../cli/processes.js';
import { ErrorCode, UsageError } from '../errors.js';
import { NetLab, type NetLabDescriptor } from './netlab.js';
import { recheckDir } from './recheck.js';
import { runChaos, RunMode, type ChaosResults } from './runner.js';
import { parseFaults, type FaultKind } from './schedule.js';

export interface ChaosCommandOptions {
  nodes: string;
  duration: string;
  seed?: string;
  faults: string;
  clients: string;
  out?: string;
  mode: string;
  unsafeLocalReads?: boolean;
  keys: string;
  opTimeout: string;
  compactEvery: string;
  insideLab?: string;
  json?: boolean;
  recheck?: string;
}

/** chaosNodesMax: a run's cluster size bound (each node is a process on this machine). */
export const chaosNodesMax = 9;
export const chaosClientsMax = 64;
/** chaosDurationMsMax: 24 h; a soak is documented at 30 minutes. */
export const chaosDurationMsMax = 24 * 3600_000;

/** parseDuration: `90`, `90s`, `2m`, `1500ms`, `1h` → milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (match === null) throw new UsageError(ErrorCode.InvalidArgument, `--duration: "${text}" is not a duration like 60s, 2m, 1500ms`);
  const value = Number(match[1]);
  const unit = match[2] ?? 's';
  const ms = value * ({ ms: 1, s: 1000, m: 60_000, h: 3600_000 } as const)[unit as 'ms' | 's' | 'm' | 'h'];
  if (!(ms > 0) || ms > chaosDurationMsMax) throw new UsageError(ErrorCode.InvalidArgument, `--duration must be in (0, 24h]`);
  return Math.round(ms);
}

interface Parsed {
  nodes: number;
  durationMs: number;
  seed: number;
  faults: FaultKind[];
  clients: number;
  outDir: string;
  mode: 'auto' | RunMode;
  keys: number;
  opTimeoutMs: number;
  compactEveryEntries: number;
}

function parse(options: ChaosCommandOptions): Parsed {
  const seed = options.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(options.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new UsageError(ErrorCode.InvalidArgument, `--seed must be a non-negative integer, got "${options.seed}"`);
  if (!['auto', 'netns', 'local'].includes(options.mode)) throw new UsageError(ErrorCode.InvalidArgument, `--mode must be auto, netns or local`);
  const outDir = path.resolve(options.out ?? `chaos-${seed}`);
  // A previous run's node directories would be started again (an old cluster's log and members:
  // seen as "no leader elected"), and its history mixed into this one's. (The run re-executed
  // inside the lab finds the lab.json its outer run wrote there: that is this run.)
  if (options.insideLab === undefined && existsSync(outDir) && readdirSync(outDir).length > 0) {
    throw new UsageError(ErrorCode.AlreadyExists, `--out ${outDir} is not empty (it holds a previous run); choose another directory or remove it`);
  }
  return {
    nodes: parseIntOption(options.nodes, '--nodes', 1, chaosNodesMax),
    durationMs: parseDuration(options.duration),
    seed,
    faults: parseFaults(options.faults),
    clients: parseIntOption(options.clients, '--clients', 1, chaosClientsMax),
    outDir,
    mode: options.mode as Parsed['mode'],
    keys: parseIntOption(options.keys, '--keys', 1, 4096),
    opTimeoutMs: parseIntOption(options.opTimeout, '--op-timeout', 100, 600_000),
    compactEveryEntries: parseIntOption(options.compactEvery, '--compact-every', 0, 10_000_000),
  };
}

/** verdictLine: the one line on stdout. */
export function verdictLine(r: ChaosResults, outDir: string): string {
  const f = r.figures;
  return (
    `chaos: ${r.verdict.toUpperCase()} seed=${r.seed} mode=${r.mode} nodes=${r.nodes} ops=${f.operations} (ok ${f.ok}, fail ${f.fail}, unknown ${f.info}) ` +
    `linearizability=${r.checks.linearizability.verdict} acked-writes=${r.checks.ackedWrites.ok ? 'ok' : r.checks.ackedWrites.verdict} ` +
    `leaders=${r.checks.leaders.ok ? 'ok' : 'CONFLICT'} convergence=${r.checks.convergence.ok ? 'ok' : 'NOT-OK'} ` +
    `${r.checks.truncated ? 'history=TRUNCATED(cannot-be-fully-re-checked) ' : ''}` +
    `${r.resourceErrors.length > 0 ? `RUNAWAY-NODES=${r.resourceErrors.length} ` : ''}${r.errors.length > 0 ? `run-errors=${r.errors.length} ` : ''}` +
    `checker=${f.checkerMs}ms report=${path.join(outDir, 'report.html')}`
  );
}

/** chaos: the action of `chard chaos`; sets process.exitCode. */
export async function chaos(options: ChaosCommandOptions): Promise<void> {
  if (options.recheck !== undefined) return recheck(options.recheck, options.json === true);
  const p = parse(options);
  mkdirSync(p.outDir, { recursive: true });
  const workload = { keyCount: p.keys, opTimeoutMs: p.opTimeoutMs };
  const common = {
    nodes: p.nodes,
    durationMs: p.durationMs,
    seed: p.seed,
    faults: p.faults,
    clients: p.clients,
    outDir: p.outDir,
    unsafeLocalReads: options.unsafeLocalReads === true,
    compactEveryEntries: p.compactEveryEntries,
    workload,
  };

  if (options.insideLab !== undefined) {
    const descriptor = JSON.parse(readFileSync(options.insideLab, 'utf8')) as NetLabDescriptor;
    const lab = await NetLab.attach(descriptor);
    try {
      const results = await runChaos({ ...common, mode: RunMode.Netns, lab });
      finish(results, p.outDir, options.json === true);
    } finally {
      lab.release();
    }
    return;
  }

  let mode: RunMode;
  if (p.mode === 'local') mode = RunMode.Local;
  else {
    const available = await NetLab.available();
    if (available.ok) mode = RunMode.Netns;
    else if (p.mode === 'netns') throw new UsageError(ErrorCode.FailedPrecondition, `--mode netns: ${available.reason}`);
    else {
      process.stderr.write(`chaos: network namespaces unavailable (${available.reason}); using local mode (fault-injecting transport)\n`);
      mode = RunMode.Local;
    }
  }
  if (mode === RunMode.Local) {
    const results = await runChaos({ ...common, mode });
    finish(results, p.outDir, options.json === true);
    return;
  }

  // netns: build the lab here, run inside its client namespace, destroy it whatever happens.
  await NetLab.cleanupStale();
  const ids = Array.from({ length: p.nodes }, (_, i) => i + 1);
  const lab = await NetLab.create({ nodes: ids });
  const labFile = path.join(p.outDir, 'lab.json');
  const forward: NodeJS.Signals[] = ['SIGINT', 'SIGTERM'];
  try {
    writeFileSync(labFile, `${JSON.stringify(lab.descriptor())}\n`);
    const args = [mainScript, 'chaos', ...reexecArgs(options, p), '--inside-lab', labFile];
    const child = lab.spawn('client', process.execPath, args, { stdio: 'inherit' });
    const onSignal = (signal: NodeJS.Signals) => child.kill(signal);
    for (const s of forward) process.on(s, onSignal);
    const code = await new Promise<number>((resolve) => {
      child.once('exit', (c, signal) => resolve(c ?? (signal ? 1 : 0)));
      child.once('error', () => resolve(1));
    });
    for (const s of forward) process.off(s, onSignal);
    process.exitCode = code;
  } finally {
    await lab.destroy();
  }
}

function reexecArgs(options: ChaosCommandOptions, p: Parsed): string[] {
  const args = [
    '--nodes', String(p.nodes),
    '--duration', `${p.durationMs}ms`,
    '--seed', String(p.seed),
    '--faults', p.faults.join(',') || 'none',
    '--clients', String(p.clients),
    '--out', p.outDir,
    '--mode', 'netns',
    '--keys', String(p.keys),
    '--op-timeout', String(p.opTimeoutMs),
    '--compact-every', String(p.compactEveryEntries),
  ];
  if (options.unsafeLocalReads === true) args.push('--unsafe-local-reads');
  if (options.json === true) args.push('--json');
  return args;
}

function finish(results: ChaosResults, outDir: string, json: boolean): void {
  if (json) console.log(JSON.stringify({ verdict: results.verdict, valid: results.valid, reasons: results.reasons, seed: results.seed, mode: results.mode, figures: results.figures, stallsByFault: results.stallsByFault, outDir }));
  else {
    for (const reason of results.reasons) process.stderr.write(`chaos: ${results.verdict.toUpperCase()} because ${reason}\n`);
    console.log(verdictLine(results, outDir));
  }
  process.exitCode = results.valid ? 0 : 1;
}

/** recheck: `chard chaos --recheck DIR`; the verdict line of DIR's files, and whether it agrees. */
function recheck(dir: string, json: boolean): void {
  const outDir = path.resolve(dir);
  const { results, recorded, differences } = recheckDir(outDir);
  const agreement = recorded === undefined ? "no recorded verdict (results.json missing or facts only): nothing to compare" : differences.length === 0 ? `agrees with the run (${recorded.verdict})` : `DIFFERS from the run: ${differences.join('; ')}`;
  if (json) {
    console.log(JSON.stringify({ recheck: true, verdict: results.verdict, valid: results.valid, reasons: results.reasons, checks: results.checks, figures: results.figures, recorded: recorded?.verdict ?? null, differences, outDir }));
  } else {
    for (const reason of results.reasons) process.stderr.write(`chaos: ${results.verdict.toUpperCase()} because ${reason}\n`);
    console.log(`recheck ${verdictLine(results, outDir)}`);
    console.log(`recheck: ${agreement}`);
  }
  process.exitCode = results.valid && differences.length === 0 ? 0 : 1;
}
