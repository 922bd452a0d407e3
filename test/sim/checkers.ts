/**
 * checkers: the safety properties the seeded simulator (simulator.ts) checks while a seed runs.
 *
 * Every check is fed by the simulator at the moment the fact becomes observable (a node becomes
 * leader, persists entries, applies an entry, answers a read, acknowledges a write) and records a
 * Violation naming the checker, the seed, the simulated tick and the details. The checkers keep
 * global history across crashes (what was ever committed, every acknowledged write), so a later
 * state that contradicts an earlier one is caught even when the node that saw it is gone.
 */

import type { Entry } from '../../src/raft/types.js';

/** Violation: one broken property; `checker` is one of CheckerName. */
export interface Violation {
  checker: CheckerName;
  seed: number;
  tick: number;
  details: string;
}

export const CheckerName = {
  ElectionSafety: 'election-safety',
  LogMatching: 'log-matching',
  LeaderCompleteness: 'leader-completeness',
  CommittedStable: 'committed-stable',
  StateMachineSafety: 'state-machine-safety',
  Linearizability: 'linearizability',
  AckedWriteDurable: 'acked-write-durable',
  ExactlyOnce: 'exactly-once',
  Liveness: 'liveness',
  CoreException: 'core-exception',
} as const;
export type CheckerName = (typeof CheckerName)[keyof typeof CheckerName];

/** hashString: cyrb53, a fast 53-bit string hash (collisions are irrelevant at these sizes). */
export function hashString(text: string, seed = 0): number {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** hashBytes: the same hash over bytes. */
export function hashBytes(data: Uint8Array, seed = 0): number {
  let h1 = 0xdeadbeef ^ seed;
  let h2 = 0x41c6ce57 ^ seed;
  for (let i = 0; i < data.length; i++) {
    const ch = data[i]!;
    h1 = Math.imul(h1 ^ ch, 2654435761);
    h2 = Math.imul(h2 ^ ch, 1597334677);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 4294967296 * (2097151 & h2) + (h1 >>> 0);
}

/** AckedWrite: a client write whose success was reported to the client. */
export interface AckedWrite {
  sessionId: string;
  sequence: number;
  key: string;
  value: string;
  /** index: the log index at which the write took effect (verdict Apply). */
  index: number;
  invokedAt: number;
  ackedAt: number;
}

/** Interface a checker needs to ask about a node's in-memory log. */
export interface LogView {
  firstIndex(): number;
  lastIndex(): number;
  /** termOr: the term at index, or `fallback` when unavailable. */
  termOr(index: number, fallback: number): number;
}

/**
 * Checkers: the history and the rules. Each `on*` method is called by the simulator; `now()` gives
 * the current tick (for the violation report) and `event()` a monotonic event counter used as the
 * real-time order of client invocations and responses.
 */
export class Checkers {
  readonly violations: Violation[] = [];
  /** violationsMax: a seed stops recording after this many (the first ones are the interesting ones). */
  readonly violationsMax = 20;
  private readonly leaderOfTerm = new Map<number, number>();
  /** persisted (index/term) -> "dataHash/prevTerm", for log matching. */
  private readonly persistedEntries = new Map<string, { dataHash: number; prevTerm: number; node: number }>();
  /** committed index -> term/data of the entry reported committed (applied) by any node. */
  readonly committed = new Map<number, { term: number; dataHash: number; node: number; tick: number; committedByTermMax: number }>();
  /** leaderTermMax: the highest term of any leader observed so far. */
  private leaderTermMax = 0;
  /** state machine hash after applying index. */
  private readonly stateHashes = new Map<number, { hash: number; node: number }>();
  /** (sessionId/sequence) -> index where it was applied (verdict Apply). */
  readonly appliedAt = new Map<string, number>();
  /** value -> the write that produced it (values are unique per write). */
  readonly valueWrites = new Map<string, { index: number; invokedAt: number }>();
  /** acknowledged writes per key, in ack order. */
  readonly ackedWrites: AckedWrite[] = [];
  private readonly latestAckedByKey = new Map<string, Array<{ ackedAt: number; index: number }>>();
  reads = 0;

  constructor(
    readonly seed: number,
    private readonly now: () => number,
  ) {}

  violate(checker: CheckerName, details: string): void {
    if (this.violations.length >= this.violationsMax) return;
    this.violations.push({ checker, seed: this.seed, tick: this.now(), details });
  }

  /** onLeader: node `id` is leader of `term` (checked the moment it is observed); log is its raft log. */
  onLeader(id: number, term: number, log: LogView): void {
    const existing = this.leaderOfTerm.get(term);
    if (existing !== undefined && existing !== id) {
      this.violate(CheckerName.ElectionSafety, `term ${term} has two leaders: ${existing} and ${id}`);
    }
    if (existing === id) return;
    this.leaderOfTerm.set(term, id);
    // Leader completeness (§5.4): an entry committed in term T is in the log of every leader of a
    // term above T. The commit happened under a leader already observed, so in a term no higher
    // than the highest leader term seen when it was first applied. A leader of an older term that
    // comes to power late (a candidate paused with its votes in hand, resumed after a newer term
    // committed entries) is legal and need not hold them; it can never commit anything.
    if (term > this.leaderTermMax) this.leaderTermMax = term;
    const first = log.firstIndex();
    for (const [index, record] of this.committed) {
      if (index < first) continue; // covered by the leader's snapshot
      if (term <= record.committedByTermMax) continue;
      const have = log.termOr(index, -1);
      if (have !== record.term) {
        this.violate(
          CheckerName.LeaderCompleteness,
          `leader ${id} of term ${term} has term ${have} at committed index ${index} (committed with term ${record.term} by node ${record.node} at tick ${record.tick}; leader lastIndex ${log.lastIndex()})`,
        );
        return;
      }
    }
  }

  /** onPersist: node persisted `entry`; prevTerm is the term of index-1 in its durable log (-1 if unknown). */
  onPersist(node: number, entry: Entry, prevTerm: number): void {
    const key = `${entry.index}/${entry.term}`;
    const dataHash = hashBytes(entry.data, entry.type);
    const existing = this.persistedEntries.get(key);
    if (existing === undefined) {
      this.persistedEntries.set(key, { dataHash, prevTerm, node });
      return;
    }
    if (existing.dataHash !== dataHash) {
      this.violate(CheckerName.LogMatching, `entry ${key} differs between node ${existing.node} and node ${node}`);
    } else if (existing.prevTerm !== prevTerm && existing.prevTerm !== -1 && prevTerm !== -1) {
      this.violate(
        CheckerName.LogMatching,
        `entry ${key}: node ${existing.node} has term ${existing.prevTerm} at ${entry.index - 1}, node ${node} has ${prevTerm}`,
      );
    } else if (existing.prevTerm === -1 && prevTerm !== -1) {
      existing.prevTerm = prevTerm;
    }
  }

  /** onApply: node applied (and so learned committed) `entry`, its state machine now hashes to stateHash. */
  onApply(node: number, entry: Entry, stateHash: number): void {
    const dataHash = hashBytes(entry.data, entry.type);
    const record = this.committed.get(entry.index);
    if (record === undefined) {
      this.committed.set(entry.index, { term: entry.term, dataHash, node, tick: this.now(), committedByTermMax: this.leaderTermMax });
    } else if (record.term !== entry.term || record.dataHash !== dataHash) {
      this.violate(
        CheckerName.CommittedStable,
        `node ${node} applied index ${entry.index} with term ${entry.term}, but node ${record.node} applied term ${record.term}${record.dataHash !== dataHash ? ' with other data' : ''} at tick ${record.tick}`,
      );
    }
    this.onStateHash(node, entry.index, stateHash);
  }

  /** onStateHash: node's state machine at applied index `index` hashes to `hash` (also after a snapshot install). */
  onStateHash(node: number, index: number, hash: number): void {
    const existing = this.stateHashes.get(index);
    if (existing === undefined) this.stateHashes.set(index, { hash, node });
    else if (existing.hash !== hash) {
      this.violate(CheckerName.StateMachineSafety, `state machines of nodes ${existing.node} and ${node} differ at applied index ${index}`);
    }
  }

  /** onSessionApply: a command (sessionId, sequence) was applied (verdict Apply) at `index`. */
  onSessionApply(sessionId: string, sequence: number, index: number, value: string, invokedAt: number): void {
    const key = `${sessionId}/${sequence}`;
    const existing = this.appliedAt.get(key);
    if (existing !== undefined && existing !== index) {
      this.violate(CheckerName.ExactlyOnce, `request ${key} applied twice: at index ${existing} and at index ${index}`);
      return;
    }
    this.appliedAt.set(key, index);
    if (!this.valueWrites.has(value)) this.valueWrites.set(value, { index, invokedAt });
  }

  /** onWriteAcked: the client was told its write succeeded. */
  onWriteAcked(write: AckedWrite): void {
    this.ackedWrites.push(write);
    let list = this.latestAckedByKey.get(write.key);
    if (list === undefined) this.latestAckedByKey.set(write.key, (list = []));
    list.push({ ackedAt: write.ackedAt, index: write.index });
  }

  /**
   * onRead: a read of `key` invoked at event `invokedAt` returned `value` at event `completedAt`
   * on node `node`. Register linearizability, in the two directions that matter:
   *  - not stale: the value's write must not be older (by log index) than any write of the key
   *    acknowledged before the read was invoked;
   *  - not from the future: the value's write must have been invoked before the read completed.
   */
  onRead(node: number, key: string, value: string | undefined, invokedAt: number, completedAt: number, readIndex: number): void {
    this.reads++;
    let floor = 0;
    for (const w of this.latestAckedByKey.get(key) ?? []) if (w.ackedAt < invokedAt && w.index > floor) floor = w.index;
    if (value === undefined) {
      if (floor > 0) this.violate(CheckerName.Linearizability, `node ${node} read ${key} = (unset) at read index ${readIndex}, but a write at index ${floor} was acknowledged before the read began`);
      return;
    }
    const write = this.valueWrites.get(value);
    if (write === undefined) {
      this.violate(CheckerName.Linearizability, `node ${node} read ${key} = ${value}, a value no applied write produced`);
      return;
    }
    if (write.index < floor) {
      this.violate(
        CheckerName.Linearizability,
        `node ${node} read ${key} = ${value} (written at index ${write.index}, read index ${readIndex}), but a write at index ${floor} was acknowledged before the read began`,
      );
    }
    if (write.invokedAt > completedAt) {
      this.violate(CheckerName.Linearizability, `node ${node} read ${key} = ${value}, whose write was invoked after the read completed`);
    }
  }
}
