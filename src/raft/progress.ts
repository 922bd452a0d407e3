/**
 * progress: the leader's view of each follower (etcd's Progress/Inflights) and the quorum rules
 * over a possibly joint configuration.
 *
 * Follower progress state machine (docs/design.md has the diagram):
 *   probe     — one App at a time until the follower's match is found (after a reject, restart or
 *               unreachable report);
 *   replicate — optimistic pipelining, bounded by Inflights (count and bytes);
 *   snapshot  — the follower needs a snapshot; chunks stream with a bounded window; App is paused.
 */

import { assert } from '../assert.js';
import type { ConfState, NodeId } from './types.js';

export const ProgressState = {
  Probe: 'probe',
  Replicate: 'replicate',
  Snapshot: 'snapshot',
} as const;
export type ProgressState = (typeof ProgressState)[keyof typeof ProgressState];

/** Inflights: a bounded FIFO of App messages in flight to one follower (by last index and bytes). */
export class Inflights {
  private readonly indexes: number[] = [];
  private readonly sizes: number[] = [];
  private bytes = 0;
  constructor(
    readonly countMax: number,
    readonly bytesMax: number,
  ) {}

  add(index: number, bytes: number): void {
    assert(!this.full(), 'inflights not full on add');
    assert(this.indexes.length === 0 || index > this.indexes[this.indexes.length - 1]!, 'inflight indexes increase');
    this.indexes.push(index);
    this.sizes.push(bytes);
    this.bytes += bytes;
  }

  /** freeLE: releases every message whose last index is <= index. */
  freeLE(index: number): void {
    let count = 0;
    while (count < this.indexes.length && this.indexes[count]! <= index) {
      this.bytes -= this.sizes[count]!;
      count++;
    }
    if (count > 0) {
      this.indexes.splice(0, count);
      this.sizes.splice(0, count);
    }
  }

  /** freeFirstOne: releases the oldest message (it may be lost); lets a full window make progress. */
  freeFirstOne(): void {
    if (this.indexes.length === 0) return;
    this.bytes -= this.sizes[0]!;
    this.indexes.shift();
    this.sizes.shift();
  }

  full(): boolean {
    return this.indexes.length >= this.countMax || (this.bytesMax > 0 && this.bytes >= this.bytesMax);
  }

  count(): number {
    return this.indexes.length;
  }

  reset(): void {
    this.indexes.length = 0;
    this.sizes.length = 0;
    this.bytes = 0;
  }
}

export class Progress {
  match = 0;
  next: number;
  state: ProgressState = ProgressState.Probe;
  /** probeSent: in probe state, an App is outstanding; wait for its answer or a heartbeat response. */
  probeSent = false;
  /** recentActive: heard from since the last CheckQuorum. */
  recentActive = false;
  isLearner: boolean;
  readonly inflights: Inflights;
  /** pendingSnapshot: index of the snapshot being sent (snapshot state). */
  pendingSnapshot = 0;
  /** snapshotSent / snapshotAcked: bytes of the pending snapshot sent and acknowledged as staged. */
  snapshotSent = 0;
  snapshotAcked = 0;
  /** snapshotAckedAtLastHeartbeat: for detecting a stalled transfer (lost chunks) and resending. */
  snapshotAckedAtLastHeartbeat = -1;
  /**
   * sentCommit: the highest commit index an App to this follower carried (optimistic: the App may
   * be lost; heartbeats carry the commit index too). A commit broadcast skips a follower that was
   * already sent it (etcd-io/raft's Progress.sentCommit).
   */
  sentCommit = 0;
  /** leaseAckTick: the leader tick carried by the newest heartbeat this follower acknowledged. */
  leaseAckTick = -1;

  constructor(next: number, inflightCountMax: number, inflightBytesMax: number, isLearner: boolean) {
    this.next = next;
    this.isLearner = isLearner;
    this.inflights = new Inflights(inflightCountMax, inflightBytesMax);
  }

  private resetState(state: ProgressState): void {
    this.probeSent = false;
    this.pendingSnapshot = 0;
    this.snapshotSent = 0;
    this.snapshotAcked = 0;
    this.snapshotAckedAtLastHeartbeat = -1;
    this.state = state;
    this.inflights.reset();
  }

  becomeProbe(): void {
    if (this.state === ProgressState.Snapshot) {
      const pending = this.pendingSnapshot;
      this.resetState(ProgressState.Probe);
      this.next = Math.max(this.match + 1, pending + 1);
    } else {
      this.resetState(ProgressState.Probe);
      this.next = this.match + 1;
    }
  }

  becomeReplicate(): void {
    this.resetState(ProgressState.Replicate);
    this.next = this.match + 1;
  }

  becomeSnapshot(snapshotIndex: number): void {
    this.resetState(ProgressState.Snapshot);
    this.pendingSnapshot = snapshotIndex;
  }

  /** maybeUpdate: an acknowledgement of index n; returns whether match advanced. */
  maybeUpdate(n: number): boolean {
    let updated = false;
    if (this.match < n) {
      this.match = n;
      updated = true;
      this.probeSent = false;
    }
    this.next = Math.max(this.next, n + 1);
    return updated;
  }

  /**
   * maybeDecrTo: a rejection of the App whose previous index was `rejected`, with the follower's
   * hint `matchHint`. Returns false when the rejection is stale.
   */
  maybeDecrTo(rejected: number, matchHint: number): boolean {
    if (this.state === ProgressState.Replicate) {
      if (rejected <= this.match) return false;
      this.next = this.match + 1;
      return true;
    }
    if (this.next - 1 !== rejected) return false;
    this.next = Math.max(Math.min(rejected, matchHint + 1), this.match + 1);
    this.probeSent = false;
    return true;
  }

  /** sentEntries: bookkeeping after an App with entries up to lastIndex was sent. */
  sentEntries(entryCount: number, lastIndex: number, bytes: number): void {
    if (this.state === ProgressState.Replicate) {
      if (entryCount > 0) {
        this.next = lastIndex + 1;
        this.inflights.add(lastIndex, bytes);
      }
    } else if (this.state === ProgressState.Probe) {
      this.probeSent = true;
    }
  }

  isPaused(): boolean {
    switch (this.state) {
      case ProgressState.Probe:
        return this.probeSent;
      case ProgressState.Replicate:
        return this.inflights.full();
      case ProgressState.Snapshot:
        return true;
    }
  }
}

export const VoteResult = { Pending: 'pending', Won: 'won', Lost: 'lost' } as const;
export type VoteResult = (typeof VoteResult)[keyof typeof VoteResult];

/** majorityIndex: the largest index acknowledged by a majority of `voters`; +Infinity for an empty set. */
export function majorityIndex(voters: readonly NodeId[], indexOf: (id: NodeId) => number): number {
  if (voters.length === 0) return Number.POSITIVE_INFINITY;
  const values = voters.map(indexOf).sort((a, b) => b - a);
  return values[Math.floor(voters.length / 2)]!;
}

/** jointIndex: the index acknowledged by a majority of both halves of a joint configuration. */
export function jointIndex(cs: ConfState, indexOf: (id: NodeId) => number): number {
  return Math.min(majorityIndex(cs.voters, indexOf), majorityIndex(cs.votersOutgoing, indexOf));
}

function majorityVote(voters: readonly NodeId[], votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  if (voters.length === 0) return VoteResult.Won;
  let granted = 0;
  let missing = 0;
  for (const id of voters) {
    const vote = votes.get(id);
    if (vote === undefined) missing++;
    else if (vote) granted++;
  }
  const quorum = Math.floor(voters.length / 2) + 1;
  if (granted >= quorum) return VoteResult.Won;
  if (granted + missing >= quorum) return VoteResult.Pending;
  return VoteResult.Lost;
}

/** jointVote: the election result over a possibly joint configuration (both halves must win). */
export function jointVote(cs: ConfState, votes: ReadonlyMap<NodeId, boolean>): VoteResult {
  const incoming = majorityVote(cs.voters, votes);
  const outgoing = majorityVote(cs.votersOutgoing, votes);
  if (incoming === VoteResult.Won && outgoing === VoteResult.Won) return VoteResult.Won;
  if (incoming === VoteResult.Lost || outgoing === VoteResult.Lost) return VoteResult.Lost;
  return VoteResult.Pending;
}

/** allVoters: every voter of either half, sorted. */
export function allVoters(cs: ConfState): NodeId[] {
  return [...new Set([...cs.voters, ...cs.votersOutgoing])].sort((a, b) => a - b);
}

/** allMembers: voters, learners and learners-to-be, sorted. */
export function allMembers(cs: ConfState): NodeId[] {
  return [...new Set([...cs.voters, ...cs.votersOutgoing, ...cs.learners, ...cs.learnersNext])].sort((a, b) => a - b);
}
