// recheck: a chaos run's verdict can be computed again from its files alone. Hand-made run
// directories with known answers — a lost acknowledged write (seen only by the final reads), a
// stale read, a history cut at the recorder's cap — recheck to FAIL / FAIL / UNKNOWN with the
// reason; a clean one to PASS. The recorder writes its truncation marker. Then a real local run
// with pause faults: history.jsonl holds the final reads and the reads queued at each paused node
// (invoked while it was stopped, answered after it resumed), and `chard chaos --recheck DIR`
// prints the same verdict as the run.
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { appendFinalReads } from '../../src/chaos/checks.js';
import { finalReadProcess, pairOperations, parseHistory, serializeHistory, type HistoryEvent } from '../../src/chaos/history.js';
import { recheckDir } from '../../src/chaos/recheck.js';
import type { ChaosResults } from '../../src/chaos/runner.js';
import { HistoryRecorder } from '../../src/chaos/workload.js';
import { HistoryBuilder } from './builder.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const cliPath = path.resolve(here, '../../src/cli/main.js');

const converged = { checks: { convergence: { ok: true, converged: true, replicas: [1, 2, 3].map((node) => ({ node, appliedIndex: 40, hash: 'ab' })) } }, errors: [], resourceErrors: [] };

function runDir(events: HistoryEvent[], results: unknown = converged): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'chard-recheck-'));
  writeFileSync(path.join(dir, 'history.jsonl'), serializeHistory(events));
  if (results !== undefined) writeFileSync(path.join(dir, 'results.json'), JSON.stringify(results));
  return dir;
}

function workload(): HistoryBuilder {
  return new HistoryBuilder().write(1, 'v/0', 'a', 0, 10).write(2, 'v/0', 'b', 20, 30).read(1, 'v/0', 'b', 40, 45).write(1, 'v/1', 'c', 50, 55);
}

test('a clean run directory rechecks PASS; without results.json it is UNKNOWN (convergence not known)', (t) => {
  const events = appendFinalReads(workload().build(), [{ key: 'v/0', value: 'b' }, { key: 'v/1', value: 'c' }]);
  const dir = runDir(events);
  const { results, recorded, differences } = recheckDir(dir);
  t.is(results.verdict, 'pass', JSON.stringify(results.reasons));
  t.is(recorded, undefined, 'a results.json without a verdict gives facts only');
  t.is(results.figures.keysTouched, 2);
  t.is(results.figures.operations, 4, 'final reads are not counted as workload');
  t.deepEqual(differences, []);
  rmSync(path.join(dir, 'results.json'));
  const alone = recheckDir(dir);
  t.is(alone.results.verdict, 'unknown');
  t.regex(alone.results.reasons.join('\n'), /results\.json missing/);
  rmSync(dir, { recursive: true, force: true });
});

test('a lost acknowledged write, seen only by a recorded final read, rechecks FAIL', (t) => {
  // Every workload read is fine; only the final read after the heal shows v/1 lost its write.
  const events = appendFinalReads(workload().build(), [{ key: 'v/0', value: 'b' }, { key: 'v/1', value: null }]);
  const dir = runDir(events);
  const { results } = recheckDir(dir);
  t.is(results.verdict, 'fail');
  t.is(results.checks.linearizability.verdict, 'violation', 'the final reads are ops of the history, checked like the others');
  t.false(results.checks.ackedWrites.ok);
  t.is(results.checks.ackedWrites.verdict, 'violation');
  t.deepEqual(results.checks.linearizability.violations.map((v) => [v.key, v.kind]), [['v/1', 'stale-read']]);
  // The same history without its final reads: nothing to see (that is what the run used to write).
  const withoutFinal = events.filter((e) => !('process' in e) || e.process !== finalReadProcess);
  const blind = recheckDir(runDir(withoutFinal));
  t.not(blind.results.verdict, 'pass', 'no final reads: written keys unread, never PASS');
  t.deepEqual(blind.results.checks.ackedWrites.unreadKeys, ['v/0', 'v/1']);
  rmSync(dir, { recursive: true, force: true });
});

test('a stale read queued at a paused leader rechecks FAIL', (t) => {
  // n1 paused at 100; the new leader acknowledges v/0 = 'new' at 300; a read invoked at 400 while
  // n1 was stopped is answered at 1600 (after the resume) with the old value.
  const events = new HistoryBuilder()
    .write(1, 'v/0', 'old', 0, 10)
    .fault('pause-leader', 100, 1500, 'SIGSTOP n1 (leader)')
    .write(2, 'v/0', 'new', 250, 300)
    .read('paused-0', 'v/0', 'old', 400, 1600)
    .build();
  const dir = runDir(appendFinalReads(events, [{ key: 'v/0', value: 'new' }]));
  const { results } = recheckDir(dir);
  t.is(results.verdict, 'fail');
  t.is(results.checks.linearizability.violations[0]?.kind, 'stale-read');
  t.regex(results.checks.linearizability.violations[0]!.message, /paused-0/, 'the explanation names the queued read');
  rmSync(dir, { recursive: true, force: true });
});

test('the recorder marks a history cut at its cap; the recheck says it cannot be fully re-checked', (t) => {
  let now = 0;
  const recorder = new HistoryRecorder(() => now++, 4);
  for (let i = 0; i < 3; i++) {
    recorder.record({ type: 'invoke', process: 1, opId: i, f: 'write', key: 'v/0', value: `w${i}` });
    recorder.record({ type: 'ok', process: 1, opId: i, f: 'write', key: 'v/0', value: `w${i}` });
  }
  t.true(recorder.truncated);
  t.deepEqual(recorder.truncation(), { type: 'truncated', eventsMax: 4, dropped: 2, time: 4 });
  const text = recorder.toJsonl();
  t.regex(text.trim().split('\n').at(-1)!, /"type":"truncated"/, 'the marker is the trailer');
  const parsed = parseHistory(text);
  t.is(pairOperations(parsed).length, 2, 'the marker is no op');
  const dir = runDir(appendFinalReads(parsed, [{ key: 'v/0', value: 'w1' }]));
  const { results } = recheckDir(dir);
  t.is(results.checks.linearizability.verdict, 'ok');
  t.is(results.verdict, 'unknown', 'a cut history never passes');
  t.deepEqual(results.checks.truncated, { eventsMax: 4, dropped: 2 });
  t.regex(results.reasons.join('\n'), /history truncated: cannot be fully re-checked/);
  rmSync(dir, { recursive: true, force: true });
});

test('malformed run files are usage errors naming the file', (t) => {
  const dir = runDir(workload().build(), { checks: { convergence: { replicas: [{ node: 1 }] } } });
  t.throws(() => recheckDir(dir), { message: /results\.json: checks\.convergence\.replicas\[0\]/ });
  writeFileSync(path.join(dir, 'history.jsonl'), '{"type":"ok"}\n');
  t.throws(() => recheckDir(dir), { message: /line 1/ });
  rmSync(dir, { recursive: true, force: true });
});

function chard(args: string[], timeoutMs: number): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [cliPath, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof (error as { code?: unknown }).code === 'number' ? (error as { code: number }).code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test.serial('a local run with pause faults: queued reads and final reads are in history.jsonl; --recheck prints the same verdict', async (t) => {
  t.timeout(150_000);
  const out = mkdtempSync(path.join(tmpdir(), 'chard-recheck-run-'));
  const run = await chard(['chaos', '--mode', 'local', '--nodes', '3', '--duration', '24s', '--seed', '3', '--faults', 'pause', '--clients', '3', '--out', out], 140_000);
  const verdict = run.stdout.trim().split('\n').at(-1) ?? '';
  t.log(verdict);
  const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8')) as ChaosResults;
  t.deepEqual(results.errors, [], `stderr tail: ${run.stderr.slice(-3000)}`);
  const history = parseHistory(readFileSync(path.join(out, 'history.jsonl'), 'utf8'));
  const ops = pairOperations(history);

  // Final reads: one ok read per touched key, after every workload op.
  const finals = ops.filter((op) => op.process === finalReadProcess && op.status === 'ok');
  t.is(new Set(finals.map((op) => op.key)).size, results.figures.keysTouched);
  t.true(results.figures.keysTouched > 0);
  const lastWorkloadCompletion = Math.max(...ops.filter((op) => op.process !== finalReadProcess && op.completionTime !== null).map((op) => op.completionTime!));
  t.true(finals.every((op) => op.callTime > lastWorkloadCompletion), 'final reads come after the workload');

  // Each pause: a client connected to the paused node kept reading while it was stopped.
  const pauses = history.filter((e) => e.type === 'fault' && e.phase === 'start' && e.fault.startsWith('pause-'));
  t.true(pauses.length >= 1, `pause steps ran (${results.schedule.join(' | ')})`);
  let answeredAfterResume = 0;
  for (const start of pauses) {
    const stopEvent = history.find((e) => e.type === 'fault' && e.phase === 'stop' && e.time >= start.time);
    t.truthy(stopEvent);
    const queued = ops.filter((op) => typeof op.process === 'string' && op.process.startsWith('paused-') && op.callTime >= start.time && op.callTime <= stopEvent!.time);
    t.true(queued.length >= 10, `reads issued during the pause at ${start.time.toFixed(0)} ms (${queued.length})`);
    answeredAfterResume += queued.filter((op) => op.status === 'ok' && op.returnTime >= stopEvent!.time).length;
  }
  t.true(answeredAfterResume > 0, `queued reads were answered after the resume (${answeredAfterResume})`);

  const recheck = await chard(['chaos', '--recheck', out], 60_000);
  const lines = recheck.stdout.trim().split('\n');
  t.log(lines.join('\n'));
  t.is(lines[1], `recheck: agrees with the run (${results.verdict})`);
  t.regex(lines[0]!, new RegExp(`^recheck chaos: ${results.verdict.toUpperCase()} seed=3 mode=local nodes=3 ops=${results.figures.operations} `));
  t.is(recheck.code, run.code, 'the same exit code');
  rmSync(out, { recursive: true, force: true });
});

test.serial('a backend that answers from local state: the reads queued at each paused leader are caught as stale', async (t) => {
  // --unsafe-local-reads is what defect a amounts to at a resumed, deposed leader: a read served
  // from the node's own state without a current lease. The queued reads must expose it.
  t.timeout(150_000);
  const out = mkdtempSync(path.join(tmpdir(), 'chard-recheck-unsafe-'));
  const run = await chard(['chaos', '--mode', 'local', '--nodes', '3', '--duration', '24s', '--seed', '11', '--faults', 'pause', '--clients', '3', '--unsafe-local-reads', '--out', out], 140_000);
  t.log(run.stdout.trim().split('\n').at(-1) ?? '');
  const results = JSON.parse(readFileSync(path.join(out, 'results.json'), 'utf8')) as ChaosResults;
  t.is(results.verdict, 'fail');
  t.is(run.code, 1);
  const fromPaused = results.checks.linearizability.violations.filter((v) => v.kind === 'stale-read' && / by process paused-\d+ /.test(v.message));
  t.log(`${fromPaused.length} of ${results.checks.linearizability.violations.length} listed violations are reads queued at a paused node`);
  t.true(fromPaused.length > 0, JSON.stringify(results.checks.linearizability.violations.slice(0, 3)));
  const recheck = await chard(['chaos', '--recheck', out], 60_000);
  t.is(recheck.stdout.trim().split('\n')[1], 'recheck: agrees with the run (fail)');
  t.is(recheck.code, 1);
  rmSync(out, { recursive: true, force: true });
});
