/**
 * rawnode: RawNode, the application's handle on the raft core (etcd's RawNode).
 *
 * The application drives it from one thread: tick() on its clock, step() with peer messages,
 * propose()/readIndex() for clients, and the Ready loop: `if (hasReady()) { const rd = ready();
 * ...handle as documented on Ready...; advance(); }`. Nothing here does I/O.
 *
 * Errors: propose() throws NotLeaderError (with the leader hint) on a non-leader, ChardError
 * PROPOSAL_DROPPED during a leadership transfer, BUSY when the uncommitted tail is at its limit;
 * proposeConfChange() throws a UsageError for an invalid change. step() never throws for a
 * well-formed peer message: what cannot be handled is dropped (the sender retries).
 */

import { assert } from '../assert.js';
import { ChardError, ErrorCode, NotLeaderError, UsageError } from '../errors.js';
import { type RaftConfigInput, resolveConfig } from './config.js';
import { encodeConfChange } from './confchange.js';
import type { ProgressState } from './progress.js';
import { Raft } from './raft.js';
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  type NodeId,
  None,
  type Ready,
  type Role,
  type SoftState,
  isLocalMessage,
  message,
} from './types.js';

export interface ProgressStatus {
  match: number;
  next: number;
  state: ProgressState;
  recentActive: boolean;
  learner: boolean;
  inflight: number;
  snapshotSent: number;
  snapshotAcked: number;
}

export interface Status {
  id: NodeId;
  term: number;
  vote: NodeId;
  commit: number;
  applied: number;
  leader: NodeId;
  role: Role;
  lastIndex: number;
  leadTransferee: NodeId;
  confState: ConfState;
  leaseValid: boolean;
  progress: Map<NodeId, ProgressStatus>;
}

/** BasicStatus: the narrow read-only view the runtime needs on every request (no allocation of progress). */
export interface BasicStatus {
  id: NodeId;
  role: Role;
  leader: NodeId;
  term: number;
  commit: number;
  applied: number;
}

interface InFlightReady {
  /** term: the hard state's term this Ready hands out (durable once it is advanced). */
  term: number;
  lastEntry: { index: number; term: number } | undefined;
  snapshotIndex: number | undefined;
  committedTo: number | undefined;
}

export class RawNode {
  readonly raft: Raft;
  private previousSoftState: SoftState;
  private previousHardState: HardState;
  private inFlight: InFlightReady | undefined;
  private sentEarly = 0;
  /** durableTerm: the term of the last advanced Ready's hard state (the storage's at start). */
  private durableTerm: number;

  constructor(input: RaftConfigInput) {
    this.raft = new Raft(resolveConfig(input));
    this.previousSoftState = { leader: this.raft.lead, role: this.raft.role };
    this.previousHardState = this.raft.hardState();
    this.durableTerm = this.previousHardState.term;
  }

  get id(): NodeId {
    return this.raft.id;
  }

  tick(): void {
    this.raft.tick();
  }

  campaign(): void {
    this.raft.step(message({ type: MessageType.Hup, from: this.raft.id }));
  }

  /** propose: append `data` as a new entry; returns its index. Leader only. */
  propose(data: Uint8Array): number {
    return this.proposeEntry(EntryType.Normal, data);
  }

  /** proposeConfChange: propose a membership change (validated against the current config). */
  proposeConfChange(cc: ConfChange): number {
    if (this.raft.role !== 'leader') throw new NotLeaderError(this.raft.lead);
    this.raft.validateConfChange(cc);
    return this.proposeEntry(EntryType.ConfChange, encodeConfChange(cc));
  }

  private proposeEntry(type: EntryType, data: Uint8Array): number {
    if (this.raft.role !== 'leader') throw new NotLeaderError(this.raft.lead);
    this.raft.step(
      message({ type: MessageType.Propose, from: this.raft.id, entries: [{ term: 0, index: 0, type, data }] }),
    );
    return this.raft.log.lastIndex();
  }

  /** applyConfChange: the application applies a committed ConfChange entry; persist the result. */
  applyConfChange(cc: ConfChange): ConfState {
    return this.raft.applyConfChange(cc);
  }

  /** step: deliver a message from a peer. Local-only types are refused; handling errors drop it. */
  step(m: Message): void {
    if (isLocalMessage(m.type) || m.type === MessageType.Propose) {
      throw new UsageError(ErrorCode.InvalidArgument, `message type ${m.type} cannot come from a peer`);
    }
    if (m.from === None || m.from === this.raft.id) {
      throw new UsageError(ErrorCode.InvalidArgument, `message from ${m.from} cannot come from a peer`);
    }
    if (!this.raft.progress.has(m.from) && isResponseFromNonMember(m)) return; // a response from a removed node
    // An AppResp about an index beyond our log cannot be true (ours never shrinks within a term): it would set a match we never sent.
    if (m.type === MessageType.AppResp && m.index > this.raft.log.lastIndex()) return;
    try {
      this.raft.step(m);
    } catch (error) {
      if (error instanceof ChardError) return; // e.g. a read that cannot be queued: the peer retries
      throw error;
    }
  }

  /** readIndex: request a linearizable read; answered in Ready.readStates with this context. */
  readIndex(context: Uint8Array): void {
    if (this.raft.role !== 'leader' && this.raft.lead === None) throw new NotLeaderError(None);
    this.raft.step(message({ type: MessageType.ReadIndex, from: this.raft.id, context }));
  }

  /** transferLeadership: ask the leader to hand over to `to` (must be an up-to-date voter to succeed). */
  transferLeadership(to: NodeId): void {
    if (this.raft.role !== 'leader' && this.raft.lead === None) throw new NotLeaderError(None);
    if (!this.raft.progress.has(to) && this.raft.role === 'leader') {
      throw new UsageError(ErrorCode.NotFound, `node ${to} is not a member`);
    }
    this.raft.step(message({ type: MessageType.TransferLeader, from: to }));
  }

  reportUnreachable(id: NodeId): void {
    this.raft.step(message({ type: MessageType.Unreachable, from: id }));
  }

  private softState(): SoftState {
    return { leader: this.raft.lead, role: this.raft.role };
  }

  hasReady(): boolean {
    const raft = this.raft;
    raft.flushBroadcast();
    const soft = this.softState();
    if (soft.leader !== this.previousSoftState.leader || soft.role !== this.previousSoftState.role) return true;
    if (!sameHardState(raft.hardState(), this.previousHardState)) return true;
    if (raft.log.unstableSnapshot !== undefined && this.inFlight?.snapshotIndex !== raft.log.unstableSnapshot.index) return true;
    if (raft.log.unstableEntries.length > 0 && this.unhandedEntries().length > 0) return true;
    if (raft.messages.length > 0 || raft.readStates.length > 0 || raft.snapshotChunks.length > 0 || raft.snapshotWanted) return true;
    return raft.log.hasNextCommittedEntries();
  }

  private unhandedEntries() {
    const log = this.raft.log;
    const handed = this.inFlight?.lastEntry;
    if (handed === undefined || !log.matchTerm(handed.index, handed.term)) return log.unstableEntries;
    return log.unstableEntries.slice(Math.max(0, handed.index + 1 - log.unstableOffset));
  }

  /**
   * ready: the next batch of work. Call advance() once it is fully handled. `limits` caps the
   * committed entries handed out (at least one entry if any is due and `committedEntriesMax` > 0;
   * the bytes cap defaults to committedBytesPerReadyMax): the application bounds its apply work per
   * event-loop turn with them, and the rest comes in the next Ready (etcd's MaxCommittedSizePerReady).
   * `committedCost` bounds the same slice by the application's own measure of apply work (e.g. the
   * block rows a command deletes, which its byte size does not show): entries are handed out while
   * the sum of their costs stays within `max` (at least one entry).
   */
  ready(
    limits: { committedEntriesMax?: number; committedBytesMax?: number; committedCost?: { max: number; cost: (entry: Entry) => number } } = {},
  ): Ready {
    assert(this.inFlight === undefined, 'ready() called twice without advance()');
    const raft = this.raft;
    raft.flushBroadcast();
    const soft = this.softState();
    const hard = raft.hardState();
    const entries = raft.log.unstableEntries.slice();
    const snapshot = raft.log.unstableSnapshot;
    const committedBytesMax = Math.min(raft.config.committedBytesPerReadyMax, limits.committedBytesMax ?? Infinity);
    const committedEntriesMax = limits.committedEntriesMax ?? Infinity;
    let committedEntries = committedEntriesMax > 0 ? raft.log.nextCommittedEntries(committedBytesMax) : [];
    if (committedEntries.length > committedEntriesMax) committedEntries = committedEntries.slice(0, committedEntriesMax);
    if (limits.committedCost !== undefined && committedEntries.length > 1) {
      const { max, cost } = limits.committedCost;
      let total = cost(committedEntries[0]!);
      let n = 1;
      while (n < committedEntries.length && total + cost(committedEntries[n]!) <= max) total += cost(committedEntries[n++]!);
      if (n < committedEntries.length) committedEntries = committedEntries.slice(0, n);
    }
    const all = raft.messages;
    raft.messages = [];
    // Early only once the leader's term is durable (handed out in an earlier, advanced Ready): a
    // voter that is a quorum alone becomes leader in the Ready that raises its term, and if that
    // persist is lost, the restarted node may lead the same term again with other entries.
    const isLeader = raft.role === 'leader' && hard.term === this.previousHardState.term;
    const messagesEarly: Message[] = [];
    const messages: Message[] = [];
    for (const m of all) (isLeader && isReplication(m, raft.term) ? messagesEarly : messages).push(m);
    this.sentEarly += messagesEarly.length;
    const readStates = raft.readStates;
    raft.readStates = [];
    const snapshotChunks = raft.snapshotChunks;
    raft.snapshotChunks = [];
    const snapshotWanted = raft.snapshotWanted;
    raft.snapshotWanted = false;
    const hardChanged = !sameHardState(hard, this.previousHardState);
    const rd: Ready = {
      softState: soft.leader !== this.previousSoftState.leader || soft.role !== this.previousSoftState.role ? soft : undefined,
      hardState: hardChanged ? hard : undefined,
      entries,
      snapshotChunks,
      snapshot,
      committedEntries,
      messagesEarly,
      messages,
      readStates,
      ...(snapshotWanted ? { snapshotWanted: true as const } : {}),
      mustSync:
        entries.length > 0 ||
        snapshot !== undefined ||
        snapshotChunks.length > 0 ||
        hard.term !== this.previousHardState.term ||
        hard.vote !== this.previousHardState.vote,
    };
    const lastEntry = entries.length > 0 ? entries[entries.length - 1]! : undefined;
    this.inFlight = {
      term: hard.term,
      lastEntry: lastEntry === undefined ? undefined : { index: lastEntry.index, term: lastEntry.term },
      snapshotIndex: snapshot?.index,
      committedTo: committedEntries.length > 0 ? committedEntries[committedEntries.length - 1]!.index : undefined,
    };
    if (committedEntries.length > 0) raft.log.applying = this.inFlight.committedTo!;
    this.previousSoftState = soft;
    this.previousHardState = hard;
    return rd;
  }

  /** advance: the last Ready was handled (persisted, sent, applied). */
  advance(): void {
    const inFlight = this.inFlight;
    assert(inFlight !== undefined, 'advance() without ready()');
    this.inFlight = undefined;
    this.durableTerm = inFlight.term;
    const raft = this.raft;
    if (inFlight.snapshotIndex !== undefined) {
      raft.log.stableSnapshotTo(inFlight.snapshotIndex);
      raft.log.appliedTo(inFlight.snapshotIndex);
    }
    if (inFlight.lastEntry !== undefined) raft.persisted(inFlight.lastEntry.index, inFlight.lastEntry.term);
    if (inFlight.committedTo !== undefined) raft.appliedTo(inFlight.committedTo);
  }

  /** basicStatus: role, leader, term, commit and applied index, read-only. */
  basicStatus(): BasicStatus {
    const raft = this.raft;
    return { id: raft.id, role: raft.role, leader: raft.lead, term: raft.term, commit: raft.log.committed, applied: raft.log.applied };
  }

  status(): Status {
    const raft = this.raft;
    const progress = new Map<NodeId, ProgressStatus>();
    if (raft.role === 'leader') {
      for (const [id, pr] of raft.progress) {
        progress.set(id, {
          match: pr.match,
          next: pr.next,
          state: pr.state,
          recentActive: pr.recentActive,
          learner: pr.isLearner,
          inflight: pr.inflights.count(),
          snapshotSent: pr.snapshotSent,
          snapshotAcked: pr.snapshotAcked,
        });
      }
    }
    return {
      id: raft.id,
      term: raft.term,
      vote: raft.vote,
      commit: raft.log.committed,
      applied: raft.log.applied,
      leader: raft.lead,
      role: raft.role,
      lastIndex: raft.log.lastIndex(),
      leadTransferee: raft.leadTransferee,
      confState: structuredClone(raft.confState),
      leaseValid: raft.leaseValid(),
      progress,
    };
  }

  /**
   * takeMessagesInFlight: while a Ready is in flight (its persist pending), the queued messages
   * that may leave at once because they promise nothing about durable state: heartbeat responses
   * and ReadIndex traffic from any node, and a leader's replication traffic once its term is
   * durable (the rule of ready()'s messagesEarly). Votes and append responses stay queued for the
   * next Ready, which is taken after the persist. Without this a node whose fsync is slow is mute
   * for its duration: its leader's CheckQuorum (or its followers' election timeout) takes it for
   * dead. etcd-io/raft's AsyncStorageWrites sends the same set before the write completes (only
   * MsgAppResp, MsgVoteResp and MsgPreVoteResp wait for it). Empty when no Ready is in flight.
   */
  takeMessagesInFlight(): Message[] {
    if (this.inFlight === undefined) return [];
    const raft = this.raft;
    raft.flushBroadcast(); // the appends of proposals made during the persist leave now, not after it
    const leaderEarly = raft.role === 'leader' && raft.term === this.durableTerm;
    const out: Message[] = [];
    const keep: Message[] = [];
    for (const m of raft.messages) {
      const unbound = m.type === MessageType.HeartbeatResp || m.type === MessageType.ReadIndex || m.type === MessageType.ReadIndexResp;
      (unbound || (leaderEarly && isReplication(m, raft.term)) ? out : keep).push(m);
    }
    raft.messages = keep;
    this.sentEarly += out.length;
    return out;
  }

  /** earlyMessageCount: messages sent before their persist (for metrics). */
  earlyMessageCount(): number {
    return this.sentEarly;
  }
}

/**
 * isReplication: a leader's replication traffic of its current term — what may leave before its
 * own fsync (thesis §10.2.1) once that term is durable, in ready()'s messagesEarly and in
 * takeMessagesInFlight. Anything that promises durable state (votes, acks) waits for the persist.
 */
function isReplication(m: Message, term: number): boolean {
  return m.term === term && (m.type === MessageType.App || m.type === MessageType.Heartbeat || m.type === MessageType.Snap || m.type === MessageType.TimeoutNow);
}

function sameHardState(a: HardState, b: HardState): boolean {
  return a.term === b.term && a.vote === b.vote && a.commit === b.commit;
}

function isResponseFromNonMember(m: Message): boolean {
  return m.type === MessageType.AppResp || m.type === MessageType.HeartbeatResp || m.type === MessageType.SnapResp;
}

export { ChardError, ErrorCode };
