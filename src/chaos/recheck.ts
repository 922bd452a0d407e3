/**
 * recheck: `chard chaos --recheck DIR` — the verdict of a finished run from its files alone.
 *
 * Reads DIR/history.jsonl (every op the verdict uses: the workload, the reads queued at paused
 * nodes, the final reads of the lost-write check, the leader changes, and the truncation marker
 * if the recorder's cap cut the history) and DIR/results.json (the facts a history cannot hold:
 * the replicas' hashes after the heal, run errors, runaway nodes), runs the same judge as the run
 * (judge.ts) and compares. Without results.json only the history is judged: convergence is then
 * not known and the verdict is at best UNKNOWN (a history that shows a violation still FAILs).
 * Both files are input: malformed content is a UsageError naming what is wrong.
 */

import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, UsageError } from '../errors.js';
import type { ReplicaState } from './checks.js';
import { parseHistory } from './history.js';
import { judgeRun, type RunFacts } from './judge.js';
import { buildResults, RunMode, type ChaosResults, type RunMeta } from './runner.js';

/** resultsBytesMax / historyBytesMax: bounds on the files a recheck reads. */
export const resultsBytesMax = 64 * 1024 * 1024;
export const historyBytesMax = 512 * 1024 * 1024;

export interface RecheckOutcome {
  /** results: the recomputed results (what results.json would hold). */
  results: ChaosResults;
  /** recorded: the run's own results.json, if present and holding a verdict. */
  recorded: ChaosResults | undefined;
  /** differences: where the recheck disagrees with the recorded results (empty: agrees). */
  differences: string[];
}

function bad(file: string, message: string): UsageError {
  return new UsageError(ErrorCode.InvalidArgument, `${file}: ${message}`);
}

function stringList(v: unknown, file: string, field: string): string[] {
  if (v === undefined) return [];
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw bad(file, `${field} must be a list of strings`);
  return v as string[];
}

/** factsOf: the RunFacts a results.json holds (validated: it is a file, not our memory). */
export function factsOf(raw: unknown, file = 'results.json'): RunFacts {
  if (typeof raw !== 'object' || raw === null) throw bad(file, 'not a JSON object');
  const o = raw as Record<string, unknown>;
  const checks = o.checks as Record<string, unknown> | undefined;
  const c = checks?.convergence as Record<string, unknown> | undefined;
  let convergence: RunFacts['convergence'];
  if (c !== undefined && Array.isArray(c.replicas)) {
    const replicas: ReplicaState[] = c.replicas.map((r: unknown, i: number) => {
      const x = r as Record<string, unknown> | null;
      if (
        x === null ||
        typeof x !== 'object' ||
        !(typeof x.node === 'number' || typeof x.node === 'string') ||
        typeof x.appliedIndex !== 'number' ||
        !Number.isSafeInteger(x.appliedIndex) ||
        x.appliedIndex < 0 ||
        typeof x.hash !== 'string'
      ) {
        throw bad(file, `checks.convergence.replicas[${i}] must be { node, appliedIndex, hash }`);
      }
      return { node: x.node, appliedIndex: x.appliedIndex, hash: x.hash };
    });
    convergence = { replicas };
  } else if (c !== undefined && typeof c.error === 'string') {
    convergence = { error: c.error };
  } else {
    throw bad(file, 'checks.convergence has neither replicas nor an error');
  }
  return { convergence, errors: stringList(o.errors, file, 'errors'), resourceErrors: stringList(o.resourceErrors, file, 'resourceErrors') };
}

function metaOf(recorded: ChaosResults | undefined): RunMeta {
  return {
    seed: typeof recorded?.seed === 'number' ? recorded.seed : 0,
    mode: recorded?.mode === RunMode.Local ? RunMode.Local : RunMode.Netns,
    nodes: typeof recorded?.nodes === 'number' ? recorded.nodes : 0,
    clients: typeof recorded?.clients === 'number' ? recorded.clients : 0,
    durationMs: typeof recorded?.durationMs === 'number' ? recorded.durationMs : 0,
    faults: Array.isArray(recorded?.faults) ? recorded.faults : [],
    unsafeLocalReads: recorded?.unsafeLocalReads === true,
    schedule: Array.isArray(recorded?.schedule) ? recorded.schedule : [],
    faultErrors: Array.isArray(recorded?.faultErrors) ? recorded.faultErrors : [],
  };
}

function readBounded(file: string, max: number): string {
  if (statSync(file).size > max) throw bad(file, `larger than ${max} bytes`);
  return readFileSync(file, 'utf8');
}

/** recheckDir: judges DIR's files again; throws a UsageError when history.jsonl is missing or bad. */
export function recheckDir(dir: string): RecheckOutcome {
  const historyFile = path.join(dir, 'history.jsonl');
  if (!existsSync(historyFile)) throw new UsageError(ErrorCode.NotFound, `--recheck: ${historyFile} does not exist`);
  const events = parseHistory(readBounded(historyFile, historyBytesMax));
  const resultsFile = path.join(dir, 'results.json');
  let recorded: ChaosResults | undefined;
  let facts: RunFacts;
  if (existsSync(resultsFile)) {
    let raw: unknown;
    try {
      raw = JSON.parse(readBounded(resultsFile, resultsBytesMax));
    } catch (error) {
      if (error instanceof UsageError) throw error;
      throw bad(resultsFile, `not JSON (${(error as Error).message})`);
    }
    facts = factsOf(raw, resultsFile);
    // A results.json without a verdict (hand-made facts) gives facts only, nothing to compare.
    if (typeof (raw as { verdict?: unknown }).verdict === 'string') recorded = raw as ChaosResults;
  } else {
    facts = { convergence: { error: 'results.json missing: convergence after the heal not known' }, errors: [], resourceErrors: [] };
  }
  const judgement = judgeRun(events, facts);
  const figures = recorded?.figures;
  const results = buildResults(metaOf(recorded), judgement, {
    workloadMs: typeof figures?.workloadMs === 'number' ? figures.workloadMs : 0,
    healMs: typeof figures?.healMs === 'number' ? figures.healMs : 0,
    runMs: typeof figures?.runMs === 'number' ? figures.runMs : 0,
  });
  const differences: string[] = [];
  if (recorded !== undefined) {
    const compare = (what: string, now: unknown, then: unknown) => {
      if (JSON.stringify(now) !== JSON.stringify(then)) differences.push(`${what}: recheck ${JSON.stringify(now)}, run ${JSON.stringify(then)}`);
    };
    compare('verdict', results.verdict, recorded.verdict);
    compare('linearizability', results.checks.linearizability.verdict, recorded.checks?.linearizability?.verdict);
    compare('acked-writes', results.checks.ackedWrites.ok, recorded.checks?.ackedWrites?.ok);
    compare('leaders', results.checks.leaders.ok, recorded.checks?.leaders?.ok);
    compare('convergence', results.checks.convergence.ok, recorded.checks?.convergence?.ok);
    compare('operations', results.figures.operations, recorded.figures?.operations);
    compare('keys read back', results.figures.keysTouched, recorded.figures?.keysTouched);
  }
  return { results, recorded, differences };
}
