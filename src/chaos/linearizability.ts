/**
 * linearizability: a Wing–Gong / Porcupine-style checker for read/write registers.
 *
 * A history is linearizable iff each operation can be given one point in time, inside its
 * [callTime, returnTime] interval, such that the ops in point order form a legal sequential
 * register history (a read returns the last written value, or null — zeros — before any write).
 * Linearizability is local (P-compositional): a history is linearizable iff every per-key
 * sub-history is, so each key (one block of one volume) is checked on its own.
 *
 * Per key, the search is Porcupine's: call/return entries sorted by time in a doubly linked list;
 * a DFS repeatedly picks a pending call that the register model accepts, lifts it (and its return)
 * out of the list, and restarts from the head; meeting a return entry whose call is not yet
 * linearized means the current prefix is wrong, so it backtracks (unlifting in LIFO order — the
 * dancing-links trick makes both O(1)). A cache of visited (linearized-set bitset, register value)
 * pairs prunes every state already explored.
 *
 * Outcomes the checker accounts for:
 *  - `fail` ops definitely did not happen: dropped. Flushes carry no register effect: dropped.
 *  - `info` ops (unknown outcome) return at +infinity: they may be linearized anywhere after
 *    their call, or not at all. The search succeeds once every op with a finite return is
 *    linearized. An info read constrains nothing and is dropped; an info write whose (unique)
 *    value no ok read returned cannot help explain any read, so it is dropped too.
 *  - Intervals are closed: ops whose times touch (a.returnTime === b.callTime) are concurrent.
 *    This errs towards "ok" rather than inventing a violation from clock granularity.
 *
 * Limits: each key's search stops after `searchStepsMax` steps and the whole run after
 * `totalSearchStepsMax`; a key that runs out is reported `unknown`, and unknown is never ok.
 * Before the search, cheap witnesses (a read of a value never written, a read of a value whose
 * write started after the read returned) give an immediate violation. A violation carries a short
 * explanation naming the ops involved; see explain() for the patterns recognised.
 */

import { assert } from '../assert.js';
import { pairOperations, type HistoryEvent, type Operation, type RegisterValue } from './history.js';

export const Verdict = { Ok: 'ok', Violation: 'violation', Unknown: 'unknown' } as const;
export type Verdict = (typeof Verdict)[keyof typeof Verdict];

/** searchStepsMaxDefault: per-key DFS step budget (one step = one lift or one backtrack attempt). */
export const searchStepsMaxDefault = 2_000_000;
/** totalSearchStepsMaxDefault: the step budget shared by all keys of one check. */
export const totalSearchStepsMaxDefault = 50_000_000;
/** explanationOpsMaxDefault: at most this many ops are listed in an explanation. */
export const explanationOpsMaxDefault = 12;

export interface CheckOptions {
  searchStepsMax?: number;
  totalSearchStepsMax?: number;
  explanationOpsMax?: number;
  /**
   * fastPaths: before the exhaustive search, try the linear-time greedy linearization (proves ok)
   * and the stale / non-monotonic read patterns (prove a violation). Default true; tests turn it
   * off to exercise the search alone. Verdicts are the same either way; only speed differs.
   */
  fastPaths?: boolean;
}

export interface Explanation {
  /** kind: which pattern was recognised ('search' when only the exhaustive search found it). */
  kind: 'never-written' | 'future-read' | 'stale-read' | 'non-monotonic-read' | 'search';
  message: string;
  /** ops: the operations involved, in call-time order. */
  ops: Operation[];
  /** linearizedTail: for 'search', the last ops of the longest prefix found before getting stuck. */
  linearizedTail?: Operation[];
  linearizedCount?: number;
}

export interface KeyResult {
  key: string;
  verdict: Verdict;
  /** opCount: ops on this key in the history (before dropping fail/flush/unobserved info ops). */
  opCount: number;
  /** searchedOpCount: ops that took part in the search. */
  searchedOpCount: number;
  steps: number;
  explanation?: Explanation;
}

export interface LinearizabilityResult {
  verdict: Verdict;
  keyCount: number;
  opCount: number;
  counts: Record<Verdict, number>;
  steps: number;
  /** keys: one result per key, violations first, then unknown, then ok (each sorted by key). */
  keys: KeyResult[];
}

const initialValue: RegisterValue = null;

/** checkHistory pairs the events' operations and checks them (see checkOperations). */
export function checkHistory(events: readonly HistoryEvent[], options: CheckOptions = {}): LinearizabilityResult {
  return checkOperations(pairOperations(events), options);
}

/** checkOperations checks every key's sub-history; the verdict is violation > unknown > ok. */
export function checkOperations(ops: readonly Operation[], options: CheckOptions = {}): LinearizabilityResult {
  const searchStepsMax = options.searchStepsMax ?? searchStepsMaxDefault;
  let totalStepsLeft = options.totalSearchStepsMax ?? totalSearchStepsMaxDefault;
  assert(searchStepsMax > 0 && totalStepsLeft >= 0, 'step budgets are positive');
  const byKey = new Map<string, Operation[]>();
  let opCount = 0;
  for (const op of ops) {
    if (op.f === 'flush') continue;
    opCount++;
    let list = byKey.get(op.key);
    if (!list) byKey.set(op.key, (list = []));
    list.push(op);
  }
  const keys: KeyResult[] = [];
  const counts: Record<Verdict, number> = { ok: 0, violation: 0, unknown: 0 };
  let steps = 0;
  for (const key of [...byKey.keys()].sort()) {
    const result = checkKey(key, byKey.get(key)!, {
      searchStepsMax: Math.min(searchStepsMax, totalStepsLeft),
      explanationOpsMax: options.explanationOpsMax ?? explanationOpsMaxDefault,
      fastPaths: options.fastPaths ?? true,
    });
    totalStepsLeft = Math.max(0, totalStepsLeft - result.steps);
    steps += result.steps;
    counts[result.verdict]++;
    keys.push(result);
  }
  const rank: Record<Verdict, number> = { violation: 0, unknown: 1, ok: 2 };
  keys.sort((a, b) => rank[a.verdict] - rank[b.verdict] || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const verdict: Verdict = counts.violation > 0 ? 'violation' : counts.unknown > 0 ? 'unknown' : 'ok';
  return { verdict, keyCount: byKey.size, opCount, counts, steps, keys };
}

function byCall(a: Operation, b: Operation): number {
  return a.callTime - b.callTime || a.returnTime - b.returnTime || a.index - b.index;
}

/**
 * checkKey decides one key's sub-history. `searchStepsMax` may be 0 (budget exhausted): the key is
 * then unknown unless trivially decided (no ops to search, or a cheap witness).
 */
export function checkKey(
  key: string,
  keyOps: readonly Operation[],
  options: { searchStepsMax: number; explanationOpsMax: number; fastPaths?: boolean },
): KeyResult {
  for (const op of keyOps) assert(op.key === key && op.f !== 'flush', 'ops belong to this key');
  // Which values some ok read returned: an info write of any other (unique) value cannot matter.
  const readValues = new Set<RegisterValue>();
  for (const op of keyOps) if (op.f === 'read' && op.status === 'ok') readValues.add(op.output);
  const ops = keyOps
    .filter((op) => {
      if (op.status === 'fail') return false;
      if (op.status === 'info') return op.f === 'write' && (op.input === null || readValues.has(op.input));
      return true;
    })
    .sort(byCall);
  const base = { key, opCount: keyOps.length, searchedOpCount: ops.length };
  const cheap = cheapWitness(ops);
  if (cheap) return { ...base, verdict: 'violation', steps: 0, explanation: trim(cheap, options.explanationOpsMax) };
  const fastPaths = options.fastPaths ?? true;
  const search = searchKey(ops, options.searchStepsMax, options.explanationOpsMax, fastPaths ? () => explain(ops) : null);
  if (search.verdict !== 'violation') return { ...base, verdict: search.verdict, steps: search.steps };
  const explanation = search.witness ?? explain(ops) ?? {
    kind: 'search' as const,
    message:
      `no linearization exists: the longest linearizable prefix has ${search.deepestCount} ops, after which ` +
      `${describe(search.stuckOp!)} cannot be placed (register held ${JSON.stringify(search.deepestState)})`,
    ops: [search.stuckOp!],
    linearizedTail: search.deepestTail,
    linearizedCount: search.deepestCount,
  };
  return { ...base, verdict: 'violation', steps: search.steps, explanation: trim(explanation, options.explanationOpsMax) };
}

function trim(explanation: Explanation, opsMax: number): Explanation {
  const ops = [...explanation.ops].sort(byCall).slice(0, opsMax);
  return { ...explanation, ops };
}

/** describe renders an op for messages: `read -> "v" by p3 [10, 12]`. */
export function describe(op: Operation): string {
  const what = op.f === 'write' ? `write ${JSON.stringify(op.input)}` : op.f === 'read' ? `read -> ${JSON.stringify(op.output)}` : op.f;
  const ms = (t: number): string => String(Number(t.toFixed(3)));
  const end = op.returnTime === Infinity ? '?' : ms(op.returnTime);
  return `${what} (${op.status}) by process ${String(op.process)} op ${String(op.opId)} [${ms(op.callTime)}, ${end}]`;
}

/**
 * cheapWitness finds, in O(n), a read of a value no write on this key wrote (and that is not the
 * initial null), or a read of a value whose every write was invoked after the read returned.
 */
function cheapWitness(ops: readonly Operation[]): Explanation | null {
  const firstCall = new Map<RegisterValue, Operation>();
  for (const op of ops) {
    if (op.f !== 'write') continue;
    const seen = firstCall.get(op.input);
    if (!seen || op.callTime < seen.callTime) firstCall.set(op.input, op);
  }
  for (const op of ops) {
    if (op.f !== 'read') continue;
    const v = op.output;
    if (v === initialValue) continue;
    const w = firstCall.get(v);
    if (!w) {
      return { kind: 'never-written', message: `${describe(op)} returned a value that no write on this key wrote`, ops: [op] };
    }
    if (w.callTime > op.returnTime) {
      return { kind: 'future-read', message: `${describe(op)} returned the value of ${describe(w)}, which was invoked only after the read returned`, ops: [op, w] };
    }
  }
  return null;
}

/** A write that precedes every other op: the initial value, as a pseudo-source. */
interface Source {
  op: Operation | null;
  callTime: number;
  returnTime: number;
}

/**
 * explain looks for a small witness of a violation; each pattern is a proof on its own (no
 * linearization can exist), so it may run before the search:
 *  - stale read: read r returned v, and for every write s of v (or the initial state when v is
 *    null), some ok write w2 of another value started after s returned and returned before r was
 *    invoked — so r must follow w2, which must follow s: [s, w2, r];
 *  - non-monotonic reads: r1 returned before r2 was invoked, yet r2 returned a value whose only
 *    write s2 returned before the write s1 of r1's value was invoked: [s2, s1, r1, r2].
 * Returns null when neither pattern applies (the search decides; on a violation it reports its
 * deepest point). Sources that are info writes (return at +infinity) never satisfy the patterns.
 */
function explain(ops: readonly Operation[]): Explanation | null {
  const sources = new Map<RegisterValue, Source[]>();
  sources.set(initialValue, [{ op: null, callTime: -Infinity, returnTime: -Infinity }]);
  for (const op of ops) {
    if (op.f !== 'write') continue;
    let list = sources.get(op.input);
    if (!list) sources.set(op.input, (list = []));
    list.push({ op, callTime: op.callTime, returnTime: op.returnTime });
  }
  // Ok writes sorted by returnTime, with the prefix max of callTime (and the op holding it), split
  // by whether the written value is null: a stale-null witness needs a non-null overwrite.
  const finished = ops.filter((op) => op.f === 'write' && op.returnTime !== Infinity).sort((a, b) => a.returnTime - b.returnTime);
  const prefixAll = prefixMaxCall(finished);
  const prefixNonNull = prefixMaxCall(finished.filter((op) => op.input !== null));
  const reads = ops.filter((op) => op.f === 'read');
  for (const r of reads) {
    const prefix = r.output === null ? prefixNonNull : prefixAll;
    const w2 = latestStartedBefore(prefix, r.callTime);
    if (!w2) continue;
    const list = sources.get(r.output) ?? [];
    if (list.length > 0 && list.every((s) => w2.callTime > s.returnTime)) {
      const s = list[list.length - 1]!;
      const involved = s.op ? [s.op, w2, r] : [w2, r];
      const from = s.op ? `the value of ${describe(s.op)}` : 'the initial value (zeros)';
      return {
        kind: 'stale-read',
        message: `stale read: ${describe(r)} returned ${from}, but ${describe(w2)} overwrote it and returned before the read was invoked`,
        ops: involved,
      };
    }
  }
  // Non-monotonic reads over unique values only (null may have several sources).
  const uniqueSource = (v: RegisterValue): Source | null => {
    if (v === null) return (sources.get(null) ?? []).length === 1 ? sources.get(null)![0]! : null;
    const list = sources.get(v);
    return list && list.length === 1 ? list[0]! : null;
  };
  const annotated = reads
    .map((r) => ({ r, s: uniqueSource(r.output) }))
    .filter((x): x is { r: Operation; s: Source } => x.s !== null)
    .sort((a, b) => a.r.returnTime - b.r.returnTime);
  let best: { r: Operation; s: Source } | null = null;
  let j = 0;
  for (const r2 of [...annotated].sort((a, b) => a.r.callTime - b.r.callTime)) {
    while (j < annotated.length && annotated[j]!.r.returnTime < r2.r.callTime) {
      if (!best || annotated[j]!.s.callTime > best.s.callTime) best = annotated[j]!;
      j++;
    }
    if (best && best.s.callTime > r2.s.returnTime && best.r.output !== r2.r.output) {
      const s1 = best.s.op!;
      const involved = [s1, best.r, r2.r];
      if (r2.s.op) involved.push(r2.s.op);
      return {
        kind: 'non-monotonic-read',
        message:
          `non-monotonic reads: ${describe(best.r)} saw ${describe(s1)}, then the later ${describe(r2.r)} saw an older value ` +
          (r2.s.op ? `(written by ${describe(r2.s.op)}, which returned before that write was invoked)` : '(the initial value)'),
        ops: involved,
      };
    }
  }
  return null;
}

function prefixMaxCall(sortedByReturn: readonly Operation[]): { returnTimes: number[]; best: Operation[] } {
  const returnTimes: number[] = [];
  const best: Operation[] = [];
  let top: Operation | null = null;
  for (const op of sortedByReturn) {
    if (!top || op.callTime > top.callTime) top = op;
    returnTimes.push(op.returnTime);
    best.push(top);
  }
  return { returnTimes, best };
}

/** latestStartedBefore: among writes that returned strictly before `time`, the one invoked last. */
function latestStartedBefore(prefix: { returnTimes: number[]; best: Operation[] }, time: number): Operation | null {
  let lo = 0;
  let hi = prefix.returnTimes.length; // first index with returnTime >= time
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (prefix.returnTimes[mid]! < time) lo = mid + 1;
    else hi = mid;
  }
  return lo === 0 ? null : prefix.best[lo - 1]!;
}

interface SearchResult {
  verdict: Verdict;
  steps: number;
  /** witness: a violation pattern found before the search (then no search ran). */
  witness?: Explanation;
  stuckOp?: Operation;
  deepestCount?: number;
  deepestTail?: Operation[];
  deepestState?: RegisterValue;
}

/** mix32: a fixed 32-bit integer hash (splitmix-style) used for the incremental bitset hash. */
function mix32(x: number): number {
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return (x ^ (x >>> 16)) >>> 0;
}

/**
 * searchKey runs the DFS over `ops` (sorted by call time). Returns ok, violation (with the deepest
 * prefix reached and the op that could not be placed) or unknown when `stepsMax` is exhausted.
 */
function searchKey(
  ops: readonly Operation[],
  stepsMax: number,
  tailMax: number,
  witness: (() => Explanation | null) | null,
): SearchResult {
  const n = ops.length;
  let remaining = 0; // ops with a finite return not yet linearized
  for (const op of ops) if (op.returnTime !== Infinity) remaining++;
  if (remaining === 0) return { verdict: 'ok', steps: 0 };
  if (stepsMax <= 0) return { verdict: 'unknown', steps: 0 };

  // Values interned to small integers; 0 is the initial value (null).
  const valueIds = new Map<RegisterValue, number>([[initialValue, 0]]);
  const intern = (v: RegisterValue): number => {
    let id = valueIds.get(v);
    if (id === undefined) valueIds.set(v, (id = valueIds.size));
    return id;
  };
  const isWrite = new Uint8Array(n);
  const value = new Int32Array(n); // write: value written; read: value returned
  for (let i = 0; i < n; i++) {
    const op = ops[i]!;
    isWrite[i] = op.f === 'write' ? 1 : 0;
    value[i] = intern(op.f === 'write' ? op.input : op.output);
  }

  // Entries: 2*i = call of op i, 2*i+1 = return of op i (absent when returnTime is +infinity).
  const entryTimes: { entry: number; time: number }[] = [];
  for (let i = 0; i < n; i++) {
    entryTimes.push({ entry: 2 * i, time: ops[i]!.callTime });
    if (ops[i]!.returnTime !== Infinity) entryTimes.push({ entry: 2 * i + 1, time: ops[i]!.returnTime });
  }
  // Calls before returns at equal times: touching intervals count as concurrent.
  entryTimes.sort((a, b) => a.time - b.time || (a.entry & 1) - (b.entry & 1) || a.entry - b.entry);
  // Fast path: a linear-time greedy linearization. If it succeeds it is a valid witness (every op
  // is placed inside its interval and every read sees the value it returned), so the key is ok.
  // If it fails nothing is concluded and the exhaustive search below decides.
  // Then the violation patterns of explain(), each a proof on its own (O(n log n)). Both are
  // skipped when `witness` is null, so tests can exercise the search alone.
  if (witness) {
    if (greedyLinearization(entryTimes, n, isWrite, value)) return { verdict: 'ok', steps: n };
    const found = witness();
    if (found) return { verdict: 'violation', steps: n, witness: found };
  }
  const head = 2 * n; // sentinel
  const next = new Int32Array(2 * n + 1).fill(-1);
  const prev = new Int32Array(2 * n + 1).fill(-1);
  let last = head;
  for (const { entry } of entryTimes) {
    next[last] = entry;
    prev[entry] = last;
    last = entry;
  }
  const hasReturn = (i: number): boolean => ops[i]!.returnTime !== Infinity;
  const unlinkEntry = (e: number): void => {
    next[prev[e]!] = next[e]!;
    if (next[e]! !== -1) prev[next[e]!] = prev[e]!;
  };
  const relinkEntry = (e: number): void => {
    next[prev[e]!] = e;
    if (next[e]! !== -1) prev[next[e]!] = e;
  };
  const lift = (i: number): void => {
    unlinkEntry(2 * i);
    if (hasReturn(i)) unlinkEntry(2 * i + 1);
  };
  const unlift = (i: number): void => {
    if (hasReturn(i)) relinkEntry(2 * i + 1);
    relinkEntry(2 * i);
  };

  // Visited cache over (linearized set, register value). The set is kept compact because in a
  // long history almost every op below some index is linearized: it is stored as `m` (every op
  // with a finite return and index < m is linearized, op m is not), the linearized finite ops
  // above m (few: bounded by how far the search runs ahead), and the linearized info ops (few).
  // Lookup is by an incremental XOR hash of the full set, so entries stay small (no n-bit copies).
  const linearized = new Uint8Array(n);
  const finiteBefore = new Int32Array(n + 1);
  const infoOps: number[] = [];
  for (let i = 0; i < n; i++) {
    finiteBefore[i + 1] = finiteBefore[i]! + (hasReturn(i) ? 1 : 0);
    if (!hasReturn(i)) infoOps.push(i);
  }
  let m = 0;
  while (m < n && !hasReturn(m)) m++;
  let above = 0; // linearized finite ops with index > m
  let setHash = 0;
  const opHash = new Uint32Array(n);
  for (let i = 0; i < n; i++) opHash[i] = mix32(i + 0x9e3779b9);
  const mark = (i: number): void => {
    linearized[i] = 1;
    setHash = (setHash ^ opHash[i]!) >>> 0;
    if (!hasReturn(i)) return;
    if (i !== m) {
      assert(i > m, 'ops below m are linearized already');
      above++;
      return;
    }
    let j = i + 1;
    while (j < n && (!hasReturn(j) || linearized[j] === 1)) {
      if (hasReturn(j)) above--;
      j++;
    }
    m = j;
  };
  const unmark = (i: number): void => {
    linearized[i] = 0;
    setHash = (setHash ^ opHash[i]!) >>> 0;
    if (!hasReturn(i)) return;
    if (i > m) {
      above--;
      return;
    }
    assert(i < m, 'op m is not linearized');
    above += finiteBefore[m]! - finiteBefore[i + 1]!;
    m = i;
  };
  const flip = (i: number): void => (linearized[i] === 1 ? unmark(i) : mark(i));
  const scratch = new Int32Array(n + 1);
  const cache = new Map<number, { state: number; m: number; extras: Int32Array }[]>();
  const cacheAdd = (state: number): boolean => {
    let length = 0;
    for (let j = m + 1, found = 0; found < above; j++) {
      if (linearized[j] === 1 && hasReturn(j)) {
        scratch[length++] = j;
        found++;
      }
    }
    for (const j of infoOps) if (linearized[j] === 1) scratch[length++] = j;
    const h = (setHash ^ mix32(state * 0x27d4eb2d + 1)) >>> 0;
    let bucket = cache.get(h);
    if (!bucket) cache.set(h, (bucket = []));
    outer: for (const seen of bucket) {
      if (seen.state !== state || seen.m !== m || seen.extras.length !== length) continue;
      for (let k = 0; k < length; k++) if (seen.extras[k] !== scratch[k]) continue outer;
      return false;
    }
    bucket.push({ state, m, extras: scratch.slice(0, length) });
    return true;
  };

  const stackOp: number[] = [];
  const stackState: number[] = [];
  let state = 0;
  let steps = 0;
  let deepestCount = -1;
  let deepestTail: number[] = [];
  let deepestState = 0;
  let stuck = -1;
  let entry = next[head]!;
  for (;;) {
    assert(entry !== -1, 'a pending return entry precedes the end while ops remain');
    if (++steps > stepsMax) return { verdict: 'unknown', steps: stepsMax };
    const i = entry >>> 1;
    if ((entry & 1) === 0) {
      // A call: try to linearize op i now.
      const legal = isWrite[i] === 1 || value[i] === state;
      if (legal) {
        const newState = isWrite[i] === 1 ? value[i]! : state;
        flip(i);
        if (cacheAdd(newState)) {
          stackOp.push(i);
          stackState.push(state);
          state = newState;
          lift(i);
          if (hasReturn(i) && --remaining === 0) return { verdict: 'ok', steps };
          entry = next[head]!;
          continue;
        }
        flip(i);
        // A legal read whose successor configuration was already explored (and failed) makes this
        // configuration a dead end too (see the backtracking comment below); a write does not.
        if (isWrite[i] === 1) {
          entry = next[entry]!;
          continue;
        }
      } else {
        entry = next[entry]!;
        continue;
      }
    } else if (stackOp.length > deepestCount) {
      // A return whose call is not linearized: this prefix cannot be extended past it.
      deepestCount = stackOp.length;
      deepestTail = stackOp.slice(-tailMax);
      deepestState = state;
      stuck = i;
    }
    // Backtrack. A read that was linearized is never the wrong choice: it was legal (the register
    // held its value) and a candidate, and in any linearization from that point it can be moved
    // to the front (reads do not change the state; moving an op earlier breaks no real-time
    // constraint of the ops it passes, since it was callable already). So if the configuration
    // after a read is a dead end, so is the one before it: keep popping past reads.
    let resumed = false;
    while (stackOp.length > 0) {
      const j = stackOp.pop()!;
      state = stackState.pop()!;
      flip(j);
      unlift(j);
      if (hasReturn(j)) remaining++;
      if (isWrite[j] === 1) {
        // Every entry before j's call is a call (the scan reached j without meeting a return), so
        // a pending return lies after it: the scan resumes right after j and cannot run off the end.
        entry = next[2 * j]!;
        resumed = true;
        break;
      }
    }
    if (!resumed) break;
  }
  assert(stuck >= 0, 'the first dead end of a search is a return entry (the cache starts empty)');
  const stateName = [...valueIds.entries()].find(([, id]) => id === deepestState)![0];
  return {
    verdict: 'violation',
    steps,
    stuckOp: ops[stuck]!,
    deepestCount,
    deepestTail: deepestTail.map((k) => ops[k]!),
    deepestState: stateName,
  };
}

/**
 * greedyLinearization tries one linearization in a single pass over the time-ordered entries:
 *  - reads are placed as early as possible: as soon as they are pending and the register holds
 *    their value (this never hurts — see the backtracking note in searchKey);
 *  - a read reaching its return unplaced pulls in a pending write of its value just before it;
 *  - a write reaching its return unplaced is placed now if some unplaced read still wants its
 *    value (preceded by any pending write all of whose unplaced readers are pending: they read
 *    it at once, and could not once it is overwritten); otherwise, if another write was placed since its call, it is slotted in just before
 *    that write (where it is immediately overwritten, so nothing observes it); otherwise now.
 * Info writes are placed only when a read pulls them in. Returns true only if every op with a
 * finite return was placed inside its interval with a legal read value; false means "don't know".
 */
function greedyLinearization(entries: readonly { entry: number }[], n: number, isWrite: Uint8Array, value: Int32Array): boolean {
  const placed = new Uint8Array(n);
  const callPosition = new Int32Array(n);
  const pendingReads = new Map<number, number[]>(); // value -> pending unplaced reads
  const pendingWrites = new Map<number, number[]>(); // value -> pending unplaced writes
  const unplacedReaders = new Map<number, number>(); // value -> reads of it not yet placed
  for (let i = 0; i < n; i++) if (isWrite[i] === 0) unplacedReaders.set(value[i]!, (unplacedReaders.get(value[i]!) ?? 0) + 1);
  let state = 0;
  let lastWritePosition = -1;
  const drainReads = (): void => {
    const reads = pendingReads.get(state);
    if (!reads) return;
    for (const r of reads) placed[r] = 1;
    unplacedReaders.set(state, unplacedReaders.get(state)! - reads.length);
    pendingReads.delete(state);
  };
  const dropPendingWrite = (w: number): void => {
    placed[w] = 1;
    const list = pendingWrites.get(value[w]!)!;
    list.splice(list.indexOf(w), 1);
  };
  const placeWrite = (w: number, position: number): void => {
    // First place every other pending write whose unplaced readers are all pending now: each
    // is read at once, and after w it could no longer be (its readers would see w's value).
    for (const [v, writes] of pendingWrites) {
      if (writes.length === 0 || v === value[w]) continue;
      const readers = unplacedReaders.get(v) ?? 0;
      if (readers === 0 || readers !== (pendingReads.get(v)?.length ?? 0)) continue;
      const x = writes[0]!;
      dropPendingWrite(x);
      state = v;
      drainReads();
    }
    dropPendingWrite(w);
    state = value[w]!;
    lastWritePosition = position;
    drainReads();
  };
  for (let position = 0; position < entries.length; position++) {
    const entry = entries[position]!.entry;
    const i = entry >>> 1;
    const v = value[i]!;
    if ((entry & 1) === 0) {
      callPosition[i] = position;
      const pending = isWrite[i] === 1 ? pendingWrites : pendingReads;
      let list = pending.get(v);
      if (!list) pending.set(v, (list = []));
      list.push(i);
      if (isWrite[i] === 0 && v === state) drainReads();
      continue;
    }
    if (placed[i] === 1) continue;
    if (isWrite[i] === 1) {
      if ((unplacedReaders.get(v) ?? 0) === 0 && lastWritePosition > callPosition[i]!) dropPendingWrite(i);
      else placeWrite(i, position);
      continue;
    }
    const writes = pendingWrites.get(v);
    if (!writes || writes.length === 0) return false;
    placeWrite(writes[0]!, position);
    assert(placed[i] === 1, 'the read is placed once its value is written');
  }
  return true;
}
