// Proves that a real ext4 on the real Linux NBD client rides through chard leader changes with no
// I/O error and no lost acknowledged write. How: in a fresh network namespace, a 3-node chard
// cluster (real node processes, started with the real CLI) and the attach agent serve volume
// `default`; a TCG QEMU guest attaches /dev/nbd0 to the agent at 10.0.2.2 (nbd-client -C 2
// -t 600), runs mkfs.ext4 and mount, and a continuous writer creates 64 KiB files with fsync,
// printing a timestamped line with the sha256 of every completed write. Meanwhile the host
// SIGKILLs the current leader 5 times (restarting it with `chard node start` once the writer has
// completed more writes), runs `chard leader transfer` once, and removes a follower and re-adds it
// from an empty data directory (member remove, wipe, "join": true, member add --learner --wait,
// member promote), requiring each command to exit 0. Then the writer stops; umount; fsck.ext4 -fn
// must be clean; after a remount every completed write reads back with its sha256; `chard verify`
// must find every replica equal. It prints the I/O stall of each event (the longest gap between
// completed writes around it, from the guest's own clock), p50/max, and `chard attach --status`.
// Under CI=true missing qemu / root / build tools fail the test; elsewhere it is skipped with a log.

import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createNetns, ensureGuestImage, missingPrerequisites, runGuest, type GuestControl, type GuestRun, type Netns } from './guest.js';
import { failoverScript, type NbdConnectOptions } from './guest-scripts.js';
import { NetnsCluster, type CliResult } from './cluster-in-netns.js';

const fileBytes = 64 * 1024;
const leaderKillCount = 5;
/** writesBetweenEventsMin: completed writes the writer must add after each event (and after a restart). */
const writesBetweenEventsMin = 3;
/** eventWaitMsMax: the longest the host waits for the writer to progress after one event. */
const eventWaitMsMax = 30_000;
/** memberAddMsMax: `member add --learner --wait` on a tiny log takes seconds; this bound catches a hang. */
const memberAddMsMax = 30_000;
const guestTimeoutMs = 200_000;
const testTimeoutMs = 280_000;

/** ready: true when the host can run the guest; else fails (CI) or logs and skips. */
function ready(t: ExecutionContext): boolean {
  const missing = missingPrerequisites();
  if (missing.length === 0) return true;
  const message = `kernel guest prerequisites missing: ${missing.join(', ')} (see docs/kernel-test.md)`;
  if (process.env['CI'] === 'true') t.fail(message);
  else {
    t.log(`SKIPPED: ${message}`);
    t.pass();
  }
  return false;
}

interface WriteRecord {
  seq: number;
  /** t1Ms: guest uptime when the fsync returned, in ms. */
  t1Ms: number;
  ms: number;
  sha256: string;
}

interface HostEvent {
  kind: 'kill-leader' | 'leader-transfer' | 'member-readd';
  detail: string;
  /** hostMs: performance.now() when the event began. */
  hostMs: number;
}

/**
 * WriteTracker: follows the guest's writer over the console. Maps host time to guest time by the
 * smallest observed (host arrival - guest t1) difference: console lines arrive after they are
 * printed, never before, so the minimum is the best estimate of the clock offset.
 */
class WriteTracker {
  readonly writes: WriteRecord[] = [];
  readonly readback = new Map<string, string>();
  control: GuestControl | undefined;
  private offsetMs = Number.POSITIVE_INFINITY;
  private waiters: { count: number; resolve: () => void; reject: (error: Error) => void }[] = [];
  private ended: Error | undefined;

  onLine(line: string, guest: GuestControl): void {
    this.control = guest;
    const write = /^CHARD-RESULT write=(\d+) ok=1 t0=\S+ t1=([\d.]+) ms=(\d+) sha256=([0-9a-f]{64})/.exec(line);
    if (write !== null) {
      const record = { seq: Number(write[1]), t1Ms: Math.round(Number(write[2]) * 1000), ms: Number(write[3]), sha256: write[4]! };
      this.writes.push(record);
      this.offsetMs = Math.min(this.offsetMs, performance.now() - record.t1Ms);
      this.waiters = this.waiters.filter((w) => {
        if (this.writes.length < w.count) return true;
        w.resolve();
        return false;
      });
      return;
    }
    const readback = /^CHARD-RESULT readback=(\S+) sha256=([0-9a-f]{64})/.exec(line);
    if (readback !== null) this.readback.set(readback[1]!, readback[2]!);
    if (/^CHARD-IOERR |^CHARD-RESULT writer=done|^CHARD-DONE /.test(line)) this.end(new Error(`the guest writer stopped: ${line}`));
  }

  /** end: the writer will not progress any more; pending waits reject. */
  end(error: Error): void {
    this.ended ??= error;
    for (const w of this.waiters) w.reject(error);
    this.waiters = [];
  }

  /** waitWrites: resolves once `count` writes completed in total (rejects if the writer ended or timeoutMs passed). */
  waitWrites(count: number, timeoutMs: number): Promise<void> {
    if (this.writes.length >= count) return Promise.resolve();
    if (this.ended !== undefined) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the writer did not reach ${count} completed writes within ${timeoutMs} ms (at ${this.writes.length})`)), timeoutMs);
      this.waiters.push({
        count,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
    });
  }

  /** guestMs: a host performance.now() value on the guest's uptime clock (ms). */
  guestMs(hostMs: number): number {
    return hostMs - this.offsetMs;
  }

  /**
   * stallMs: the longest gap between consecutive completed writes, from the last write completed
   * before `fromGuestMs` (so the gap that spans the event counts in full) up to the last write
   * completed before `toGuestMs` (the gap spanning the next event belongs to that event).
   */
  stallMs(fromGuestMs: number, toGuestMs: number): number {
    const sorted = [...this.writes].sort((a, b) => a.t1Ms - b.t1Ms);
    let first = 0;
    for (let i = 0; i < sorted.length; i++) if (sorted[i]!.t1Ms <= fromGuestMs) first = i;
    let stall = 0;
    for (let i = first + 1; i < sorted.length && sorted[i]!.t1Ms <= toGuestMs; i++) stall = Math.max(stall, sorted[i]!.t1Ms - sorted[i - 1]!.t1Ms);
    return stall;
  }
}

function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

function describe(result: CliResult): string {
  // `member add --wait` prints one progress line per poll: keep the tail only.
  return `exit ${result.code} after ${result.ms} ms; stdout: ${result.stdout.trim().slice(-1000)}; stderr (tail): ${result.stderr.trim().slice(-400)}`;
}

/** kernelErrorLines: console lines where the guest kernel or ext4 reports trouble with nbd0. */
function kernelErrorLines(consoleText: string): string[] {
  return consoleText.split('\n').filter((line) => /I\/O error|EXT4-fs (error|warning)|Buffer I\/O|nbd\d*: .*(timed out|Receive control failed|Dead connection|shutting down|failed)|blk_update_request/i.test(line));
}

function explain(run: GuestRun): string {
  return `exitOk=${run.exitOk} timedOut=${run.timedOut} scriptRc=${run.scriptRc} qemu=${JSON.stringify(run.qemuExit)}\n--- console (tail) ---\n${run.console.slice(-5000)}`;
}

test.serial('kernel failover: ext4 on /dev/nbd0 rides through 5 leader kills, a leader transfer and a member re-add', async (t) => {
  t.timeout(testTimeoutMs);
  if (!ready(t)) return;
  const started = performance.now();
  const image = await ensureGuestImage();
  const dir = mkdtempSync(path.join(tmpdir(), 'chard-kfail-'));
  let netns: Netns | undefined;
  let cluster: NetnsCluster | undefined;
  let keepDir = false;
  try {
    netns = await createNetns();
    cluster = await NetnsCluster.up(netns, dir, { nodes: 3, volumeSize: '256MiB' });
    const agentPort = await netns.freePort();
    await cluster.startAgent('default', agentPort);
    const setupMs = Math.round(performance.now() - started);

    const tracker = new WriteTracker();
    const connect: NbdConnectOptions = { port: agentPort, exportName: 'default', timeoutSeconds: 600, connections: 2 };
    const guestPromise = runGuest({
      netns,
      image,
      memoryMb: 512,
      timeoutMs: guestTimeoutMs,
      script: failoverScript(connect, { fileBytes, secondsMax: 170 }),
      onLine: (line, _t, guest) => tracker.onLine(line, guest),
    }).then((run) => {
      tracker.end(new Error(`the guest exited: ${explain(run).slice(0, 3000)}`));
      return run;
    });

    // ---------------------------------------------------------------- host-side events
    const events: HostEvent[] = [];
    const failures: string[] = [];
    const c = cluster;
    const driver = async () => {
      await tracker.waitWrites(writesBetweenEventsMin, 120_000);
      const progress = async () => tracker.waitWrites(tracker.writes.length + writesBetweenEventsMin, eventWaitMsMax);
      /** healthy: every node in cluster.json reachable, a leader, every follower within 64 entries. */
      const healthy = () =>
        c.waitFor(
          'all nodes reachable and caught up',
          (s) => s.leader > 0 && s.nodes.every((n) => n.reachable && (n.lag ?? 0) <= 64),
          30_000,
        );
      for (let round = 1; round <= leaderKillCount; round++) {
        const leader = await c.leader();
        events.push({ kind: 'kill-leader', detail: `round ${round}: SIGKILL leader ${leader}`, hostMs: performance.now() });
        await c.killNode(leader);
        await progress();
        const restart = await c.startNode(leader);
        if (restart.code !== 0) throw new Error(`chard node start --id ${leader}: ${describe(restart)}`);
        await healthy();
        await progress();
      }

      {
        const status = await healthy();
        const target = status.nodes.find((n) => n.id !== status.leader)!.id;
        events.push({ kind: 'leader-transfer', detail: `leader transfer ${status.leader} -> ${target}`, hostMs: performance.now() });
        const transfer = await c.cli(['leader', 'transfer', String(target), '--dir', c.dir], 30_000);
        if (transfer.code !== 0) throw new Error(`chard leader transfer ${target}: ${describe(transfer)}`);
        const after = await c.leader();
        if (after !== target) failures.push(`after leader transfer to ${target} the leader is ${after}`);
        await progress();
      }

      {
        const status = await healthy();
        const x = status.nodes.find((n) => n.id !== status.leader)!.id;
        events.push({ kind: 'member-readd', detail: `member remove ${x}, wipe, join, add --learner --wait, promote`, hostMs: performance.now() });
        const remove = await c.cli(['member', 'remove', String(x), '--dir', c.dir], 30_000);
        if (remove.code !== 0) throw new Error(`chard member remove ${x}: ${describe(remove)}`);
        await c.stopNode(x);
        const addresses = c.wipeForRejoin(x);
        const start = await c.startNode(x);
        if (start.code !== 0) throw new Error(`chard node start --id ${x} (joining): ${describe(start)}`);
        const add = await c.cli(
          ['member', 'add', String(x), '--raft', addresses.raft, '--admin', addresses.admin, '--nbd', addresses.nbd, '--learner', '--wait', '--dir', c.dir],
          memberAddMsMax,
        );
        if (add.code !== 0) {
          const status = await c.status().catch((error: unknown) => String(error));
          const transport = await c.transportCounters(addresses.admin).catch((error: unknown) => String(error));
          failures.push(
            `chard member add ${x} --learner --wait did not finish: ${describe(add)}\n` +
              `cluster status: ${JSON.stringify(status)}\ntransport counters of the joining node ${x}: ${JSON.stringify(transport)}`,
          );
        } else {
          const promote = await c.cli(['member', 'promote', String(x), '--dir', c.dir], 60_000);
          if (promote.code !== 0) failures.push(`chard member promote ${x}: ${describe(promote)}`);
        }
        await progress();
      }
    };
    const driverStarted = performance.now();
    let driverError: unknown;
    try {
      await driver();
    } catch (error) {
      driverError = error;
    } finally {
      tracker.control?.send('stop');
    }
    const eventsMs = Math.round(performance.now() - driverStarted);
    const endHostMs = performance.now();
    const run = await guestPromise;

    // ---------------------------------------------------------------- figures
    const stalls = events.map((event, i) => {
      const next = events[i + 1]?.hostMs ?? endHostMs;
      return { ...event, stallMs: tracker.stallMs(tracker.guestMs(event.hostMs), tracker.guestMs(next)) };
    });
    const baseline = tracker.writes.map((w) => w.ms);
    t.log(`setup (netns, cluster up, agent) ${setupMs} ms; guest boot ${run.bootMs} ms; events ${eventsMs} ms; guest total ${run.totalMs} ms`);
    t.log(`writer: ${tracker.writes.length} fsynced ${fileBytes / 1024} KiB files; per-write ms p50 ${quantile(baseline, 0.5)} p99 ${quantile(baseline, 0.99)} max ${Math.max(0, ...baseline)}`);
    for (const s of stalls) t.log(`stall ${String(s.stallMs).padStart(6)} ms  ${s.kind.padEnd(16)} ${s.detail}`);
    const failoverStalls = stalls.filter((s) => s.kind !== 'member-readd').map((s) => s.stallMs);
    t.log(`failover stalls (${failoverStalls.length} leader changes): p50 ${quantile(failoverStalls, 0.5)} ms, max ${Math.max(0, ...failoverStalls)} ms`);
    const agent: Record<string, unknown>[] = await cluster.agentStatus().catch((error: unknown) => [{ error: String(error) }]);
    const a = agent[0] ?? {};
    t.log(
      `agent (chard attach --status): leader ${String(a['leader'])} failovers ${String(a['failovers'])} retries ${String(a['retries'])} ` +
        `lastFailoverStallMs ${String(a['lastFailoverStallMs'])} longestStallMs ${String(a['longestStallMs'])}`,
    );

    // The agent keeps using whichever node last answered; a follower forwards to the leader, so
    // it may be one hop away from the leader without knowing it (informational, not a failure).
    const finalStatus = await cluster.status().catch(() => undefined);
    if (finalStatus !== undefined && finalStatus.leader > 0) {
      const leaderAdmin = cluster.node(finalStatus.leader).admin;
      t.log(`agent sends to ${String(a['leader'])}; the leader is node ${finalStatus.leader} (${leaderAdmin})${a['leader'] === leaderAdmin ? '' : ' — the agent goes through a forwarding follower'}`);
    }

    // ---------------------------------------------------------------- checks
    const verifyArgs = ['verify', '--json', '--timeout', '30000'];
    const readded = !failures.some((f) => f.includes('member add'));
    if (readded) verifyArgs.push('--dir', cluster.dir);
    else {
      // The re-added node never caught up: compare the voters only (the failure is reported above).
      const voters = (await cluster.status()).nodes.filter((n) => n.appliedIndex !== undefined && n.appliedIndex > 0).map((n) => cluster!.node(n.id).admin);
      verifyArgs.push('--cluster', voters.join(','));
    }
    const verify = await cluster.cli(verifyArgs, 60_000);
    let verifyEqual = false;
    try {
      verifyEqual = (JSON.parse(verify.stdout) as { equal: boolean }).equal === true;
    } catch {
      // reported below
    }

    const steps = new Map(run.results.filter((r) => r['step'] !== undefined).map((r) => [r['step']!, r]));
    t.log(`guest steps (ms): ${[...steps].map(([name, r]) => `${name} ${r['ms']}${r['ok'] === '1' ? '' : ' FAILED'}`).join(', ')}`);
    t.log(`total wall time ${Math.round(performance.now() - started)} ms`);

    const problems: string[] = [];
    if (driverError !== undefined) problems.push(`host-side events: ${String(driverError)}`);
    problems.push(...failures);
    if (run.ioErrors.length > 0) problems.push(`the writer saw ${run.ioErrors.length} I/O error(s): ${JSON.stringify(run.ioErrors.slice(0, 5))}`);
    const kernelErrors = kernelErrorLines(run.console);
    if (kernelErrors.length > 0) problems.push(`the guest kernel reported: ${kernelErrors.slice(0, 10).join(' | ')}`);
    if (!run.exitOk) problems.push(`the guest script failed: ${explain(run)}`);
    for (const name of ['connect', 'mkfs', 'mount', 'sync', 'umount', 'fsck', 'remount', 'verify']) {
      if (steps.get(name)?.['ok'] !== '1') problems.push(`guest step ${name}: ${JSON.stringify(steps.get(name) ?? 'missing')}`);
    }
    if (events.length !== leaderKillCount + 2) problems.push(`only ${events.length} of ${leaderKillCount + 2} host events ran`);
    // Every completed (fsynced) write reads back with its checksum after fsck and a remount, and
    // nothing else is there.
    const written = new Map(tracker.writes.map((w) => [`f${w.seq}`, w.sha256]));
    const mismatched = [...written].filter(([name, sum]) => tracker.readback.get(name) !== sum).map(([name]) => name);
    const extra = [...tracker.readback.keys()].filter((name) => !written.has(name));
    if (mismatched.length > 0) problems.push(`${mismatched.length} fsynced file(s) missing or different after remount: ${mismatched.slice(0, 10).join(', ')}`);
    if (extra.length > 0) problems.push(`unexpected files after remount (writes that never completed?): ${extra.join(', ')}`);
    if (written.size === 0) problems.push('the writer completed no write');
    t.log(`readback after fsck + remount: ${written.size - mismatched.length} of ${written.size} fsynced files identical, ${extra.length} unexpected`);
    t.log(`chard ${verifyArgs.join(' ')}: exit ${verify.code}, equal ${verifyEqual}, ${verify.stdout.replace(/\s+/g, ' ').slice(0, 300)}`);
    if (verify.code !== 0 || !verifyEqual) problems.push(`chard verify (${verifyArgs.join(' ')}): ${describe(verify)}`);

    if (problems.length > 0) {
      keepDir = true;
      t.log(`kept ${dir} for inspection\n${cluster.logTails(40)}`);
      t.fail(problems.join('\n\n'));
    } else {
      t.pass(`${written.size} fsynced files survived ${events.length} events`);
    }
  } finally {
    await cluster?.destroy();
    await netns?.destroy();
    if (!keepDir) rmSync(dir, { recursive: true, force: true });
  }
});
