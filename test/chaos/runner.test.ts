/**
 * runner: `chard chaos` end to end, through the real CLI (real node processes, real NBD clients,
 * one of them through the attach agent).
 *
 * Proves: (1) the schedule is a function of the seed (same seed → same steps; another seed →
 * other steps; every step heals before the next; the last ends before the cooldown); (2) as root,
 * a 2-minute run with every fault kind on 5 nodes in network namespaces is VALID (exit 0; PASS in
 * results.json; linearizable, no acknowledged write lost, one leader per term, replicas equal)
 * and writes report.html (rendered in headless Chromium to artifacts/chaos/runner-report.png),
 * history.jsonl (with the final reads, and reads queued at every paused node) and results.json,
 * and `--recheck` of those files agrees with the run; (3) a deliberately broken backend (`--unsafe-local-reads`: reads
 * skip the linearizable barrier) under partitions is reported INVALID with a linearizability
 * violation (exit 1); (4) without root, local mode (faults through the nodes' testing.faultsFile)
 * runs a short valid run and says so in results.json and the report. (2) and (3) need root
 * (namespaces + nftables): under CI=true their absence FAILS, elsewhere they are skipped with a
 * message; (5) a run-level failure (a node killed by the memory watchdog) turns a report banner
 * that the checks alone would show as PASS into FAIL. Budget: about 3.5 minutes of wall time.
 */

import test from 'ava';
import { execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { NetLab } from '../../src/chaos/netlab.js';
import { finalReadProcess, pairOperations, parseHistory } from '../../src/chaos/history.js';
import { drawSchedule, faultKinds, parseFaults } from '../../src/chaos/schedule.js';
import { overrideBanner, type ChaosResults } from '../../src/chaos/runner.js';
import { checkHistory } from '../../src/chaos/linearizability.js';
import { renderReport } from '../../src/chaos/report.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const cliPath = path.resolve(here, '../../src/cli/main.js');
const artifactsDir = path.resolve(here, '../../../artifacts/chaos');

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

function chard(args: string[], timeoutMs: number): Promise<CliRun> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliPath, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? ((error as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** needLab: whether the netns tests can run; fails under CI=true, skips (logged) elsewhere. */
async function needLab(t: { fail(m: string): void; log(m: string): void; pass(): void }): Promise<boolean> {
  const available = await NetLab.available();
  if (available.ok) return true;
  if (process.env.CI === 'true') t.fail(`NetLab unavailable under CI: ${available.reason}`);
  else {
    t.log(`SKIPPED: the chaos runner's netns tests need root network namespaces: ${available.reason}`);
    t.pass();
  }
  return false;
}

test('the same seed draws the same schedule; steps heal in between and end before the cooldown', (t) => {
  const options = { seed: 1234, nodeCount: 5, durationMs: 120_000, faults: parseFaults('all') };
  const a = drawSchedule(options);
  const b = drawSchedule({ ...options });
  t.deepEqual(a, b);
  t.notDeepEqual(drawSchedule({ ...options, seed: 1235 }), a);
  t.true(a.length >= 10, `a 2-minute run has many faults (${a.length})`);
  for (let i = 0; i < a.length; i++) {
    const step = a[i]!;
    if (i > 0) t.true(step.startMs > a[i - 1]!.startMs + a[i - 1]!.durationMs, 'a healed gap before every step');
    t.true(step.startMs + step.durationMs + 4_000 <= options.durationMs, 'the last step ends before the cooldown');
  }
  // Over a few seeds, every kind shows up (the menu is really used).
  const kinds = new Set<string>();
  for (let seed = 0; seed < 5; seed++) for (const step of drawSchedule({ ...options, seed })) kinds.add(step.kind);
  t.deepEqual([...kinds].sort(), [...faultKinds].sort());
  t.deepEqual(parseFaults('kill,partition'), ['kill', 'partition']);
  t.throws(() => parseFaults('kill,meteor'), { message: /unknown fault "meteor"/ });
});

test('--out naming a directory that holds a previous run is refused before anything starts', async (t) => {
  const out = mkdtempSync(path.join(tmpdir(), 'chard-chaos-reused-'));
  try {
    mkdirSync(path.join(out, 'n1'));
    const run = await chard(['chaos', '--mode', 'local', '--nodes', '3', '--duration', '5s', '--out', out], 60_000);
    t.is(run.code, 2, run.stderr);
    t.regex(run.stderr, /ALREADY_EXISTS: --out .* is not empty \(it holds a previous run\)/);
    t.false(existsSync(path.join(out, 'history.jsonl')), 'nothing ran');
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test('a run-level failure (runaway node) overrides a passing report banner, escaped', (t) => {
  const events = parseHistory(
    '{"type":"invoke","process":0,"opId":0,"f":"write","key":"v/0","value":"a","time":1}\n{"type":"ok","process":0,"opId":0,"f":"write","key":"v/0","value":"a","time":2}\n',
  );
  const html = renderReport(events, { linearizability: checkHistory(events) });
  t.regex(html, /class="verdict pass"/);
  const failed = overrideBanner(html, 'pass', 'fail', ['n1 exceeded 2 GiB <script>']);
  t.notRegex(failed, /class="verdict pass"/);
  t.regex(failed, /class="verdict fail"><div class="big">FAIL<\/div><ul><li>n1 exceeded 2 GiB &lt;script&gt;<\/li>/);
  t.regex(failed, /— FAIL<\/title>/);
  t.is(overrideBanner(html, 'pass', 'pass', ['x']), html);
});

test.serial('a 2-minute run with all faults on 5 nodes in network namespaces is valid', async (t) => {
  t.timeout(330_000);
  if (!(await needLab(t))) return;
  const out = mkdtempSync(path.join(tmpdir(), 'chard-chaos-all-'));
  const started = performance.now();
  const run = await chard(['chaos', '--nodes', '5', '--duration', '120s', '--seed', '42', '--faults', 'all', '--clients', '4', '--out', out], 320_000);
  const wallS = (performance.now() - started) / 1000;
  const lines = run.stdout.trim().split('\n');
  t.log(lines[lines.length - 1] ?? '(no verdict line)');
  t.log(`wall ${wallS.toFixed(0)} s`);
  t.true(existsSync(path.join(out, 'results.json')), `results.json written; stderr tail: ${run.stderr.slice(-3000)}`);
  const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8')) as ChaosResults;
  t.log(`figures: ${JSON.stringify(results.figures)}`);
  for (const s of results.stallsByFault) {
    t.log(`stall ${s.fault}: n=${s.count} first ok after median ${s.firstOkAfterMsMedian?.toFixed(0)} ms max ${s.firstOkAfterMsMax?.toFixed(0)} ms; longest gap median ${s.longestGapMsMedian.toFixed(0)} ms max ${s.longestGapMsMax.toFixed(0)} ms`);
  }
  if (results.faultErrors.length > 0) t.log(`fault step errors: ${results.faultErrors.join(' | ')}`);
  t.is(results.mode, 'netns');
  t.deepEqual(results.resourceErrors, [], `no node ran away (kept for inspection: ${out})`);
  t.deepEqual(results.errors, [], 'the run healed, read back and verified');
  t.is(results.checks.linearizability.verdict, 'ok', JSON.stringify(results.checks.linearizability.violations));
  t.true(results.checks.ackedWrites.ok, 'no acknowledged write lost');
  t.true(results.checks.leaders.ok, 'at most one leader per term');
  t.true(results.checks.convergence.ok, 'replicas converged');
  t.is(results.verdict, 'pass');
  t.is(run.code, 0, 'exit 0 only when valid');
  t.regex(lines[lines.length - 1] ?? '', /^chaos: PASS seed=42 mode=netns/);
  t.true(results.figures.operations > 1000, 'the workload ran');
  t.true(results.schedule.length >= 10, 'faults were injected');
  const history = parseHistory(readFileSync(path.join(out, 'history.jsonl'), 'utf8'));
  t.true(history.some((e) => e.type === 'fault'), 'fault windows recorded');
  t.true(history.some((e) => e.type === 'leader'), 'leader changes recorded');
  t.false(history.some((e) => e.type === 'truncated'), 'the history is complete');
  const ops = pairOperations(history);
  t.is(new Set(ops.filter((op) => op.process === finalReadProcess && op.status === 'ok').map((op) => op.key)).size, results.figures.keysTouched, 'the final reads are in history.jsonl');
  // Every pause step had a client reading from the stopped node.
  const pauses = history.filter((e) => e.type === 'fault' && e.phase === 'start' && e.fault.startsWith('pause-'));
  for (const start of pauses) {
    const stop = history.find((e) => e.type === 'fault' && e.phase === 'stop' && e.time >= start.time)!;
    const queued = ops.filter((op) => typeof op.process === 'string' && op.process.startsWith('paused-') && op.callTime >= start.time && op.callTime <= stop.time);
    t.true(queued.length > 0, `reads queued during the pause at ${(start.time / 1000).toFixed(1)} s`);
  }
  t.log(`${pauses.length} pauses; ${ops.filter((op) => typeof op.process === 'string' && op.process.startsWith('paused-')).length} reads queued at paused nodes`);
  const recheck = await chard(['chaos', '--recheck', out], 120_000);
  t.is(recheck.stdout.trim().split('\n')[1], 'recheck: agrees with the run (pass)', recheck.stdout + recheck.stderr.slice(-2000));
  t.is(recheck.code, 0);
  for (let id = 1; id <= 5; id++) t.true(existsSync(path.join(out, `n${id}`, 'node.log')), `node ${id} log kept`);
  const html = readFileSync(path.join(out, 'report.html'), 'utf8');
  t.regex(html, /PASS/);
  await screenshot(t, path.join(out, 'report.html'), 'runner-report');
  rmSync(out, { recursive: true, force: true });
});

test.serial('a broken backend (reads skip the barrier) under partitions is reported as a violation', async (t) => {
  t.timeout(180_000);
  if (!(await needLab(t))) return;
  const out = mkdtempSync(path.join(tmpdir(), 'chard-chaos-broken-'));
  const run = await chard(
    ['chaos', '--nodes', '3', '--duration', '30s', '--seed', '7', '--faults', 'partition', '--clients', '6', '--unsafe-local-reads', '--out', out],
    170_000,
  );
  const lines = run.stdout.trim().split('\n');
  t.log(lines[lines.length - 1] ?? '(no verdict line)');
  t.true(existsSync(path.join(out, 'results.json')), `results.json written; stderr tail: ${run.stderr.slice(-3000)}`);
  const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8')) as ChaosResults;
  t.true(results.unsafeLocalReads);
  t.is(results.checks.linearizability.verdict, 'violation', 'stale reads are found');
  t.log(`violations: ${results.checks.linearizability.violations.slice(0, 3).map((v) => `${v.key} ${v.kind}`).join('; ')} (of ${results.checks.linearizability.counts.violation} keys)`);
  t.is(results.verdict, 'fail');
  t.false(results.valid);
  t.is(run.code, 1, 'a violation exits 1');
  t.regex(lines[lines.length - 1] ?? '', /^chaos: FAIL /);
  t.regex(readFileSync(path.join(out, 'report.html'), 'utf8'), /FAIL/);
  rmSync(out, { recursive: true, force: true });
});

test.serial('without root: local mode (fault-injecting transport) runs and says which mode ran', async (t) => {
  t.timeout(120_000);
  const out = mkdtempSync(path.join(tmpdir(), 'chard-chaos-local-'));
  const run = await chard(
    ['chaos', '--mode', 'local', '--nodes', '3', '--duration', '20s', '--seed', '5', '--faults', 'kill,partition,partition-oneway,transfer', '--clients', '3', '--out', out],
    110_000,
  );
  const lines = run.stdout.trim().split('\n');
  t.log(lines[lines.length - 1] ?? '(no verdict line)');
  t.true(existsSync(path.join(out, 'results.json')), `results.json written; stderr tail: ${run.stderr.slice(-3000)}`);
  const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8')) as ChaosResults;
  t.is(results.mode, 'local');
  t.regex(readFileSync(path.join(out, 'report.html'), 'utf8'), /fault-injecting transport/);
  t.true(existsSync(path.join(out, 'faults.json')), 'faults went through testing.faultsFile');
  t.true(results.schedule.length >= 1);
  t.deepEqual(results.errors, []);
  t.is(results.verdict, 'pass', JSON.stringify(results.checks));
  t.is(run.code, 0);
  rmSync(out, { recursive: true, force: true });
});

/** screenshot: renders the report in headless Chromium into artifacts/chaos/<name>.png (+ the HTML). */
async function screenshot(t: { log(m: string): void; fail(m: string): void; true(v: boolean, m?: string): void }, htmlFile: string, name: string): Promise<void> {
  const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'].find((p) => existsSync(p));
  if (chromium === undefined) {
    if (process.env.CI === 'true') t.fail('chromium is not installed (apt-get install chromium)');
    else t.log('SKIPPED screenshot: chromium is not installed');
    return;
  }
  mkdirSync(artifactsDir, { recursive: true });
  const png = path.join(artifactsDir, `${name}.png`);
  rmSync(png, { force: true });
  copyFileSync(htmlFile, path.join(artifactsDir, `${name}.html`));
  const profile = mkdtempSync(path.join(tmpdir(), 'chard-chromium-'));
  await new Promise<void>((resolve) => {
    execFile(
      chromium,
      [
        '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
        '--disable-component-update', '--disable-sync', '--hide-scrollbars', `--user-data-dir=${profile}`,
        `--screenshot=${png}`, '--window-size=1400,2400', `file://${htmlFile}`,
      ],
      { timeout: 90_000 },
      () => resolve(),
    );
  });
  rmSync(profile, { recursive: true, force: true });
  t.true(existsSync(png) && readFileSync(png).length > 10_000, `screenshot written to ${png}`);
}
