/**
 * judge: the verdict of a chaos run from its history and the few facts the history cannot hold.
 *
 * One function, `judgeRun(events, facts)`, used both by the runner at the end of a run and by
 * `chard chaos --recheck DIR` on the files the run left (recheck.ts), so the two cannot disagree:
 *  - from history.jsonl alone: linearizability per key, no acknowledged write lost (the final
 *    reads are recorded ops of process `finalReadProcess`), one leader per term, failover stalls,
 *    operation counts, and whether the recorder's cap truncated the history (its marker);
 *  - from the run's facts (results.json): the replicas' state hashes after the heal (convergence),
 *    run errors (a heal, read-back or verify that failed) and runaway nodes.
 *
 * Verdict: FAIL if a check failed or a node ran away; otherwise UNKNOWN when the run proved
 * nothing (run errors, convergence not verified, no op completed ok, or a truncated history:
 * "history truncated: cannot be fully re-checked"); otherwise PASS. `reasons` says why a run is
 * not PASS when the checks alone would not show it.
 */

import { checkConvergence, checkLeaders, checkNoAckedWriteLost, failoverStalls, type AckedWriteCheck, type ConvergenceCheck, type FaultStall, type LeaderCheck, type ReplicaState } from './checks.js';
import { finalReadProcess, truncationOf, type HistoryEvent, type TruncatedEvent } from './history.js';
import { checkHistory, type LinearizabilityResult } from './linearizability.js';
import { overallVerdict, type OverallVerdict } from './report.js';

/** RunFacts: what a verdict needs besides the history. */
export interface RunFacts {
  /** convergence: the replicas `verify` returned after the heal, or why there are none. */
  convergence: { replicas: ReplicaState[] } | { error: string };
  errors: string[];
  resourceErrors: string[];
}

export interface OpCounts {
  operations: number;
  ok: number;
  fail: number;
  info: number;
  reads: number;
  writes: number;
  flushes: number;
}

export type ConvergenceResult = { ok: boolean; converged: boolean; replicas: ReplicaState[] } | { ok: false; error: string };

export interface Judgement {
  facts: RunFacts;
  verdict: OverallVerdict;
  /** reportVerdict: the verdict of the checks alone (what report.ts shows before an override). */
  reportVerdict: OverallVerdict;
  reasons: string[];
  linearizability: LinearizabilityResult;
  ackedWrites: AckedWriteCheck;
  leaders: LeaderCheck;
  stalls: FaultStall[];
  convergence: ConvergenceCheck | undefined;
  convergenceResult: ConvergenceResult;
  truncation: TruncatedEvent | undefined;
  /** opCounts: the workload's operations (final reads excluded). */
  opCounts: OpCounts;
  /** keysTouched: keys that a final read read. */
  keysTouched: number;
  checkerMs: number;
  ackedWriteCheckMs: number;
}

/** truncatedReason: the verdict's words for a history cut at the recorder's cap. */
export function truncatedReason(t: TruncatedEvent): string {
  return `history truncated: cannot be fully re-checked (the recorder kept ${t.eventsMax} events and dropped ${t.dropped} from ${(t.time / 1000).toFixed(1)} s on)`;
}

/** countOperations: invokes and completions of the workload (final reads are not workload). */
export function countOperations(events: readonly HistoryEvent[]): OpCounts {
  const counts: OpCounts = { operations: 0, ok: 0, fail: 0, info: 0, reads: 0, writes: 0, flushes: 0 };
  let completed = 0;
  for (const e of events) {
    if (e.type !== 'invoke' && e.type !== 'ok' && e.type !== 'fail' && e.type !== 'info') continue;
    if (e.process === finalReadProcess) continue;
    if (e.type === 'invoke') {
      counts.operations++;
      if (e.f === 'read') counts.reads++;
      else if (e.f === 'write') counts.writes++;
      else counts.flushes++;
    } else {
      counts[e.type]++;
      completed++;
    }
  }
  // An invoke never completed is unknown (info), as pairOperations treats it.
  counts.info += counts.operations - completed;
  return counts;
}

/** judgeRun: every check and the verdict; pure apart from timing the checkers. */
export function judgeRun(events: readonly HistoryEvent[], facts: RunFacts): Judgement {
  const checkerStart = performance.now();
  const linearizability = checkHistory(events);
  const checkerMs = performance.now() - checkerStart;
  const ackedStart = performance.now();
  const ackedWrites = checkNoAckedWriteLost(events);
  const ackedWriteCheckMs = performance.now() - ackedStart;
  const leaders = checkLeaders(events);
  // Stall windows end with the workload: leader changes logged during the heal (and the final
  // reads after it) would otherwise stretch the last fault's window over a time in which no
  // client was running.
  const isFinalRead = (e: HistoryEvent): boolean => 'process' in e && e.process === finalReadProcess;
  let workloadEndTime = 0;
  for (const e of events) if (e.type !== 'leader' && !isFinalRead(e) && e.time > workloadEndTime) workloadEndTime = e.time;
  const stalls = failoverStalls(events.filter((e) => !isFinalRead(e) && (e.type !== 'leader' || e.time <= workloadEndTime)));
  const convergence = 'replicas' in facts.convergence ? checkConvergence(facts.convergence.replicas) : undefined;
  const convergenceResult: ConvergenceResult =
    'replicas' in facts.convergence && convergence !== undefined
      ? { ok: convergence.ok && convergence.converged, converged: convergence.converged, replicas: facts.convergence.replicas }
      : { ok: false, error: 'error' in facts.convergence ? facts.convergence.error : 'not reached' };
  const truncation = truncationOf(events);
  const opCounts = countOperations(events);
  const readKeys = new Set<string>();
  for (const e of events) if (e.type === 'ok' && e.process === finalReadProcess) readKeys.add(e.key);
  const keysTouched = readKeys.size;

  const checks = { linearizability, ackedWrites, leaders, ...(convergence ? { convergence } : {}) };
  const reportVerdict = overallVerdict(checks);
  let verdict = reportVerdict;
  const reasons: string[] = [...facts.resourceErrors, ...facts.errors];
  // A node that ran away (memory) is a failure of the system under test, whatever else held.
  if (facts.resourceErrors.length > 0) verdict = 'fail';
  if (truncation !== undefined) reasons.push(truncatedReason(truncation));
  if (!convergenceResult.ok) {
    reasons.push('error' in convergenceResult ? `convergence not verified: ${convergenceResult.error}` : 'replicas did not converge to one applied index');
  }
  if (opCounts.ok === 0) reasons.push('no operation completed ok');
  // A run that could not heal, read back or verify, or whose history is cut, has not proven
  // anything: never PASS.
  if (verdict === 'pass' && (facts.errors.length > 0 || !convergenceResult.ok || truncation !== undefined || opCounts.ok === 0)) verdict = 'unknown';
  return {
    facts,
    verdict,
    reportVerdict,
    reasons,
    linearizability,
    ackedWrites,
    leaders,
    stalls,
    convergence,
    convergenceResult,
    truncation,
    opCounts,
    keysTouched,
    checkerMs,
    ackedWriteCheckMs,
  };
}
