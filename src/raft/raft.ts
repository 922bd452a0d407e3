/**
 * raft: the consensus state machine (Raft paper + Ongaro's thesis, structured like etcd/raft).
 *
 * Raft is pure: it takes messages (step) and ticks (tick) and accumulates what the application
 * must do (entries to persist, messages to send, entries to apply); RawNode packages that as a
 * Ready. It never does I/O, never reads a clock and draws randomness only from config.random.
 *
 * Features: PreVote (thesis §9.6), CheckQuorum (§6.2), leader leases that survive follower
 * restarts, ReadIndex (§6.4), leadership transfer (§3.10), learners and joint consensus (§4.3),
 * chunked resumable snapshots (§5), per-follower flow control (probe/replicate/snapshot with
 * bounded in-flight count and bytes), fast log backtracking, and the §5.4.2 commit rule.
 */

import { assert } from '../assert.js';
import { ChardError, ErrorCode, NotLeaderError, UsageError } from '../errors.js';
import { type RaftConfig, ReadOnlyOption } from './config.js';
import { encodeConfChange, isJoint, nextConfState, validateConfChange } from './confchange.js';
import { RaftLog } from './log.js';
import { Progress, ProgressState, VoteResult, allMembers, allVoters, jointIndex, jointVote } from './progress.js';
import { isStorageError } from './storage.js';
import {
  type ConfChange,
  type ConfState,
  EMPTY_BYTES,
  type Entry,
  EntryType,
  type HardState,
  type Message,
  MessageType,
  type NodeId,
  None,
  type ReadState,
  Role,
  type SnapshotChunk,
  type SnapshotMetadata,
  sameSnapshot,
  entryBytes,
  isLocalMessage,
  message,
} from './types.js';

const TRANSFER_CONTEXT = new TextEncoder().encode('transfer');

function isTransferContext(context: Uint8Array): boolean {
  if (context.length !== TRANSFER_CONTEXT.length) return false;
  for (let i = 0; i < context.length; i++) if (context[i] !== TRANSFER_CONTEXT[i]) return false;
  return true;
}

function contextKey(context: Uint8Array): string {
  return Buffer.from(context.buffer, context.byteOffset, context.byteLength).toString('base64');
}

interface ReadRequest {
  index: number;
  context: Uint8Array;
  from: NodeId;
  acks: Set<NodeId>;
}

export class Raft {
  readonly id: NodeId;
  readonly config: RaftConfig;
  readonly log: RaftLog;

  term = 0;
  vote: NodeId = None;
  lead: NodeId = None;
  role: Role = Role.Follower;

  confState: ConfState;
  progress = new Map<NodeId, Progress>();
  private votes = new Map<NodeId, boolean>();

  /** messages produced since the last Ready. */
  messages: Message[] = [];
  readStates: ReadState[] = [];
  /** snapshot chunks received that the application must stage durably. */
  snapshotChunks: SnapshotChunk[] = [];
  /** snapshotWanted: a follower needs a snapshot and none reaches the log (startSnapshot); handed out in Ready. */
  snapshotWanted = false;
  /** bcastPending: appends to every follower are due (a proposal, a commit advance); sent once by flushBroadcast. */
  private bcastPending = false;
  /** staging: the snapshot being received: metadata and bytes held (durable + in this Ready). */
  private staging: { metadata: SnapshotMetadata; bytes: number } | undefined;

  electionElapsed = 0;
  heartbeatElapsed = 0;
  private randomizedElectionTimeout = 0;
  /** tickCount: the node's monotonic clock in ticks, for leases. */
  tickCount = 0;
  /** quietTicks: after a restart, votes are refused for one election timeout (keeps leases safe). */
  private quietTicks: number;

  leadTransferee: NodeId = None;
  /** transferCampaignPending: a TimeoutNow arrived while a conf change was unapplied; campaign once applied. */
  private transferCampaignPending = false;
  /** pendingConfIndex: index of the latest conf change appended; no new change until applied past it. */
  pendingConfIndex = 0;
  private uncommittedBytes = 0;
  /** leaseRevoked: this leader sent TimeoutNow in this term, so its lease can no longer be trusted. */
  private leaseRevoked = false;
  private readRequests: ReadRequest[] = [];
  /** reads received before the leader committed an entry of its term (§6.4 step 1). */
  private pendingReads: Message[] = [];
  isLearner = false;

  constructor(config: RaftConfig) {
    this.id = config.id;
    this.config = config;
    this.log = new RaftLog(config.storage, config.applied);
    const { hardState, confState } = config.storage.initialState();
    this.confState = structuredClone(confState);
    this.applyConfStateToProgress(this.confState);
    if (hardState.term > 0 || hardState.vote !== None || hardState.commit > 0) this.loadHardState(hardState);
    const pending = config.storage.pendingSnapshot();
    if (pending !== undefined) this.staging = { metadata: pending.metadata, bytes: pending.bytesReceived };
    // A restarted node may have acknowledged a leader's lease before it crashed; it must not help
    // elect anyone else until that lease has certainly expired. A brand-new node never acked one.
    this.quietTicks = config.checkQuorum && hardState.term > 0 ? config.electionTimeoutTicks : 0;
    this.becomeFollower(this.term, None);
  }

  private trace(text: string): void {
    this.config.logger?.(`${this.id} t${this.term} ${text}`);
  }

  private loadHardState(hardState: HardState): void {
    assert(hardState.commit <= this.log.lastIndex(), `hard state commit ${hardState.commit} beyond the log`);
    this.term = hardState.term;
    this.vote = hardState.vote;
    this.log.commitTo(Math.min(hardState.commit, this.log.lastIndex()));
  }

  hardState(): HardState {
    return { term: this.term, vote: this.vote, commit: this.log.committed };
  }

  // ---------------------------------------------------------------- roles

  private reset(term: number): void {
    if (this.term !== term) {
      this.term = term;
      this.vote = None;
      this.transferCampaignPending = false;
    }
    this.lead = None;
    this.electionElapsed = 0;
    this.heartbeatElapsed = 0;
    this.resetRandomizedElectionTimeout();
    this.abortLeaderTransfer();
    this.votes.clear();
    const last = this.log.lastIndex();
    for (const [id, pr] of this.progress) {
      const fresh = new Progress(last + 1, this.config.inflightMessagesMax, this.config.inflightBytesMax, pr.isLearner);
      if (id === this.id) fresh.match = this.log.stableLastIndex();
      this.progress.set(id, fresh);
    }
    this.pendingConfIndex = 0;
    this.uncommittedBytes = 0;
    this.snapshotWanted = false; // only a leader wants one, for its followers
    this.bcastPending = false;
    this.leaseRevoked = false;
    this.readRequests = [];
    this.pendingReads = [];
  }

  private resetRandomizedElectionTimeout(): void {
    this.randomizedElectionTimeout = this.config.electionTimeoutTicks + this.config.random.int(this.config.electionTimeoutTicks);
  }

  becomeFollower(term: number, lead: NodeId): void {
    this.reset(term);
    this.lead = lead;
    this.role = Role.Follower;
    this.trace(`became follower (leader ${lead})`);
  }

  becomePreCandidate(): void {
    assert(this.role !== Role.Leader, 'leader cannot become pre-candidate');
    // PreVote does not change term or vote (thesis §9.6).
    this.votes.clear();
    this.lead = None;
    this.role = Role.PreCandidate;
    this.trace('became pre-candidate');
  }

  becomeCandidate(): void {
    assert(this.role !== Role.Leader, 'leader cannot become candidate');
    this.reset(this.term + 1);
    this.vote = this.id;
    this.role = Role.Candidate;
    this.trace('became candidate');
  }

  becomeLeader(): void {
    assert(this.role !== Role.Follower, 'follower cannot become leader directly');
    this.reset(this.term);
    this.lead = this.id;
    this.role = Role.Leader;
    const self = this.progress.get(this.id);
    if (self !== undefined) self.becomeReplicate();
    // Conservatively no conf change until every entry of earlier terms is applied.
    this.pendingConfIndex = this.log.lastIndex();
    const appended = this.appendEntries([{ term: 0, index: 0, type: EntryType.Normal, data: EMPTY_BYTES }]);
    assert(appended, 'the empty entry of a new leader is always accepted');
    this.uncommittedBytes = 0; // the no-op does not count against proposals
    this.trace(`became leader at index ${this.log.lastIndex()}`);
  }

  // ---------------------------------------------------------------- configuration

  /** applyConfStateToProgress: make progress entries match a configuration. */
  private applyConfStateToProgress(cs: ConfState): void {
    const members = new Set(allMembers(cs));
    const learners = new Set([...cs.learners, ...cs.learnersNext.filter((id) => !cs.voters.includes(id) && !cs.votersOutgoing.includes(id))]);
    for (const id of [...this.progress.keys()]) if (!members.has(id)) this.progress.delete(id);
    const last = this.log.lastIndex();
    for (const id of members) {
      const isLearner = learners.has(id);
      const existing = this.progress.get(id);
      if (existing !== undefined) {
        existing.isLearner = isLearner;
        continue;
      }
      const pr = new Progress(last + 1, this.config.inflightMessagesMax, this.config.inflightBytesMax, isLearner);
      // A new member is assumed to have nothing; probing from lastIndex+1 finds where it stands.
      pr.recentActive = true;
      if (id === this.id) pr.match = this.log.stableLastIndex();
      this.progress.set(id, pr);
    }
    this.isLearner = cs.learners.includes(this.id);
  }

  /** switchToConfig: adopt a configuration (from an applied ConfChange or a restored snapshot). */
  private switchToConfig(cs: ConfState): void {
    this.confState = structuredClone(cs);
    this.applyConfStateToProgress(this.confState);
    if (this.role !== Role.Leader) return;
    if (!allVoters(this.confState).includes(this.id)) {
      this.handOverAfterRemoval();
      return;
    }
    if (this.leadTransferee !== None && !allVoters(this.confState).includes(this.leadTransferee)) this.abortLeaderTransfer();
    if (this.maybeCommit()) this.bcastAppend();
    else for (const id of this.progress.keys()) if (id !== this.id) this.maybeSendAppend(id, false);
  }

  /**
   * handOverAfterRemoval: the leader was removed (or demoted): hand over to the most caught-up
   * voter with TimeoutNow, then step down. If no voter holds its whole log yet, it keeps leading
   * (refusing proposals, as during a transfer) until one does: stepping down at once can leave
   * the remaining voters unable to elect anyone, when they still need this node's vote (they have
   * not yet applied the leave-joint entry) and its log is ahead of theirs (found by the
   * simulator: `--seed 161 --knob commitOldTermEntries`, a liveness failure).
   */
  private handOverAfterRemoval(): void {
    let best: NodeId = None;
    let bestMatch = -1;
    for (const id of allVoters(this.confState)) {
      const pr = this.progress.get(id);
      if (pr !== undefined && pr.match > bestMatch) {
        best = id;
        bestMatch = pr.match;
      }
    }
    if (best !== None && bestMatch < this.log.lastIndex()) {
      this.trace(`removed from the configuration; handing over to ${best} once it has the whole log`);
      this.leadTransferee = best;
      this.maybeSendAppend(best, true);
      return;
    }
    if (best !== None) this.send(message({ type: MessageType.TimeoutNow, to: best }));
    this.trace('removed from the configuration; stepping down');
    this.becomeFollower(this.term, None);
  }

  /**
   * learnCommit: a peer reports that (index, term) is committed. Commitment is permanent and a
   * matching (index, term) means an identical prefix (log matching), so we may commit it too.
   * This lets a voter that has not learned that the leave-joint entry committed — and needs the
   * vote of a removed node whose log is longer — apply it and campaign in the new configuration
   * (found by the simulator: `--seed 641 --ticks 1500`, a liveness failure).
   */
  private learnCommit(index: number, term: number): void {
    if (index <= this.log.committed || term === 0 || !this.log.matchTerm(index, term)) return;
    this.trace(`learned commit ${index} from a vote rejection`);
    this.log.commitTo(index);
  }

  /** applyConfChange: called by the application when it applies a committed ConfChange entry. */
  applyConfChange(cc: ConfChange): ConfState {
    const next = nextConfState(this.confState, cc);
    this.switchToConfig(next);
    return structuredClone(this.confState);
  }

  /** restoreConfState: adopt the configuration of an installed snapshot. */
  restoreConfState(cs: ConfState): void {
    this.switchToConfig(cs);
  }

  /** promotable: whether this node may campaign (it is a voter and has no snapshot to install). */
  promotable(): boolean {
    return allVoters(this.confState).includes(this.id) && this.log.unstableSnapshot === undefined;
  }

  // ---------------------------------------------------------------- sending

  private send(m: Message): void {
    if (m.from === None) m.from = this.id;
    if (
      m.type === MessageType.Vote ||
      m.type === MessageType.VoteResp ||
      m.type === MessageType.PreVote ||
      m.type === MessageType.PreVoteResp
    ) {
      assert(m.term !== 0, `${m.type} must carry a term`);
    } else if (m.type !== MessageType.Propose && m.type !== MessageType.ReadIndex) {
      m.term = this.term;
    } else if (m.type === MessageType.ReadIndex) {
      m.term = 0; // forwarded reads are local-like: term is not checked
    }
    this.messages.push(m);
  }

  /** maybeSendAppend: send entries (or start a snapshot) to `to`; false when nothing was sent. */
  maybeSendAppend(to: NodeId, sendIfEmpty: boolean): boolean {
    const pr = this.progress.get(to);
    if (pr === undefined || to === this.id) return false;
    if (pr.state === ProgressState.Snapshot) return this.sendSnapshotChunks(to, pr);
    if (pr.isPaused()) return false;
    const prevIndex = pr.next - 1;
    let prevTerm: number;
    let entries: Entry[] = [];
    try {
      prevTerm = this.log.term(prevIndex);
      if (pr.next <= this.log.lastIndex()) entries = this.log.entriesFrom(pr.next, this.config.appendBytesMax);
    } catch (error) {
      if (isStorageError(error, ErrorCode.Compacted) || isStorageError(error, ErrorCode.LogUnavailable)) {
        return this.startSnapshot(to, pr);
      }
      throw error;
    }
    if (entries.length === 0 && !sendIfEmpty) return false;
    let bytes = 0;
    for (const entry of entries) bytes += entryBytes(entry);
    this.send(message({ type: MessageType.App, to, index: prevIndex, logTerm: prevTerm, entries, commit: this.log.committed }));
    pr.sentEntries(entries.length, prevIndex + entries.length, bytes);
    // What the follower can learn from it: it commits no further than the App's last entry.
    pr.sentCommit = Math.max(pr.sentCommit, Math.min(this.log.committed, prevIndex + entries.length));
    return true;
  }

  /**
   * startSnapshot: `to` needs entries the log no longer holds. The application compacts its log
   * behind its own durable state and makes a snapshot only when a follower needs one, so the
   * latest snapshot may be missing or older than the log's start (a follower that installed it
   * would still lack the entries between the two). Then nothing is sent: `snapshotWanted` asks
   * the application for a snapshot (Ready.snapshotWanted), and the next heartbeat response
   * retries, as etcd-io/raft does on ErrSnapshotTemporarilyUnavailable.
   */
  private startSnapshot(to: NodeId, pr: Progress): boolean {
    if (!pr.recentActive) return false; // don't stream a snapshot to a node that may be down
    const metadata = this.config.storage.snapshot();
    if (metadata.index === 0 || metadata.index < this.log.firstIndex() - 1) {
      if (!this.snapshotWanted) this.trace(`no snapshot reaches the log (first index ${this.log.firstIndex()}) for ${to}: one is wanted`);
      this.snapshotWanted = true;
      return false;
    }
    pr.becomeSnapshot(metadata.index);
    this.trace(`sending snapshot ${metadata.index} to ${to}`);
    this.sendSnapshotChunks(to, pr);
    return true;
  }

  /** sendSnapshotChunks: send chunks of the pending snapshot within the in-flight window; true if any was sent. */
  private sendSnapshotChunks(to: NodeId, pr: Progress): boolean {
    const metadata = this.config.storage.snapshot();
    if (metadata.index !== pr.pendingSnapshot) {
      // The snapshot was replaced by a newer one: start over with it.
      pr.becomeProbe();
      return this.maybeSendAppend(to, true);
    }
    const chunkBytes = this.config.snapshotChunkBytes;
    const windowBytes = chunkBytes * this.config.snapshotChunksInflightMax;
    let sentAny = false;
    while (pr.snapshotSent - pr.snapshotAcked < windowBytes) {
      if (pr.snapshotSent >= metadata.sizeBytes && (sentAny || pr.snapshotSent > 0 || metadata.sizeBytes > 0)) break;
      let data: Uint8Array;
      try {
        data = this.config.storage.snapshotChunk(metadata.index, pr.snapshotSent, chunkBytes);
      } catch (error) {
        if (isStorageError(error, ErrorCode.SnapshotOutOfDate)) {
          pr.becomeProbe();
          return sentAny;
        }
        throw error;
      }
      const last = pr.snapshotSent + data.length >= metadata.sizeBytes;
      this.send(message({ type: MessageType.Snap, to, snapshot: { metadata, offset: pr.snapshotSent, data, last } }));
      pr.snapshotSent += data.length;
      sentAny = true;
      if (last) break;
    }
    return sentAny;
  }

  bcastAppend(): void {
    for (const id of this.progress.keys()) if (id !== this.id) this.maybeSendAppend(id, true);
  }

  private bcastHeartbeat(context: Uint8Array): void {
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      const commit = Math.min(pr.match, this.log.committed);
      // Heartbeat.index carries the leader's tick so the response can extend the lease.
      this.send(message({ type: MessageType.Heartbeat, to: id, commit, index: this.tickCount, context }));
    }
  }

  // ---------------------------------------------------------------- log

  /** appendEntries: the leader appends entries of its term; false when the uncommitted limit is hit. */
  private appendEntries(entries: Entry[]): boolean {
    let bytes = 0;
    for (const entry of entries) bytes += entryBytes(entry);
    if (this.uncommittedBytes > 0 && this.uncommittedBytes + bytes > this.config.uncommittedBytesMax) return false;
    let index = this.log.lastIndex();
    for (const entry of entries) {
      entry.term = this.term;
      entry.index = ++index;
    }
    this.log.append(entries);
    this.uncommittedBytes += bytes;
    if (this.config.testing?.leaderCountsUnpersisted) {
      this.progress.get(this.id)?.maybeUpdate(this.log.lastIndex());
    }
    this.maybeCommit();
    return true;
  }

  /** maybeCommit: advance commit to the quorum-acknowledged index if it is of this term (§5.4.2). */
  maybeCommit(): boolean {
    const index = jointIndex(this.confState, (id) => this.progress.get(id)?.match ?? 0);
    if (!Number.isFinite(index) || index <= this.log.committed) return false;
    const term = this.log.termOr(index, 0);
    if (term !== this.term && !this.config.testing?.commitOldTermEntries) return false;
    const before = this.log.committed;
    this.log.commitTo(index);
    this.reduceUncommitted(before, index);
    this.releasePendingReads();
    return true;
  }

  private reduceUncommitted(from: number, to: number): void {
    if (this.role !== Role.Leader || this.uncommittedBytes === 0) return;
    try {
      for (const entry of this.log.slice(from + 1, to + 1, Number.MAX_SAFE_INTEGER)) this.uncommittedBytes -= entryBytes(entry);
    } catch {
      this.uncommittedBytes = 0;
    }
    if (this.uncommittedBytes < 0) this.uncommittedBytes = 0;
  }

  private committedEntryInCurrentTerm(): boolean {
    return this.log.termOr(this.log.committed, 0) === this.term;
  }

  /** persisted: the application made entries up to (index, term) durable; a leader now counts itself. */
  persisted(index: number, term: number): void {
    this.log.stableTo(index, term);
    if (this.role === Role.Leader && this.log.matchTerm(index, term)) {
      const self = this.progress.get(this.id);
      if (self !== undefined && self.maybeUpdate(Math.min(index, this.log.stableLastIndex()))) {
        if (this.maybeCommit()) this.bcastAppend();
      }
    }
  }

  /** appliedTo: the application applied up to `index`; may trigger leaving a joint configuration. */
  appliedTo(index: number): void {
    this.log.appliedTo(index);
    if (this.transferCampaignPending && this.role === Role.Follower && !this.hasUnappliedConfChanges()) {
      this.transferCampaignPending = false;
      this.hup(true);
    }
    if (this.role === Role.Leader && this.confState.autoLeave && isJoint(this.confState) && index >= this.pendingConfIndex) {
      const leave: ConfChange = { changes: [], context: EMPTY_BYTES };
      if (this.appendEntries([{ term: 0, index: 0, type: EntryType.ConfChange, data: encodeConfChange(leave) }])) {
        this.pendingConfIndex = this.log.lastIndex();
        this.trace(`proposing to leave joint configuration at ${this.pendingConfIndex}`);
        this.bcastAppend();
      }
    }
  }

  // ---------------------------------------------------------------- ticks

  tick(): void {
    this.tickCount++;
    if (this.quietTicks > 0) this.quietTicks--;
    if (this.role === Role.Leader) this.tickHeartbeat();
    else this.tickElection();
  }

  private tickElection(): void {
    this.electionElapsed++;
    if (this.promotable() && this.electionElapsed >= this.randomizedElectionTimeout) {
      this.electionElapsed = 0;
      this.step(message({ type: MessageType.Hup, from: this.id }));
    }
  }

  private tickHeartbeat(): void {
    this.heartbeatElapsed++;
    this.electionElapsed++;
    if (this.electionElapsed >= this.config.electionTimeoutTicks) {
      this.electionElapsed = 0;
      if (this.config.checkQuorum) this.step(message({ type: MessageType.CheckQuorum, from: this.id }));
      if (this.role === Role.Leader && this.leadTransferee !== None) {
        this.trace(`leadership transfer to ${this.leadTransferee} timed out`);
        this.abortLeaderTransfer();
        if (!allVoters(this.confState).includes(this.id)) this.handOverAfterRemoval();
      }
    }
    if (this.role !== Role.Leader) return;
    if (this.heartbeatElapsed >= this.config.heartbeatIntervalTicks) {
      this.heartbeatElapsed = 0;
      this.step(message({ type: MessageType.Beat, from: this.id }));
    }
  }

  // ---------------------------------------------------------------- elections

  private hup(transfer: boolean): void {
    if (this.role === Role.Leader) return;
    if (!this.promotable()) return;
    if (this.hasUnappliedConfChanges()) {
      // Campaigning on a configuration older than a committed one could elect a second leader.
      this.trace('cannot campaign yet: unapplied configuration changes');
      if (transfer) this.transferCampaignPending = true;
      return;
    }
    if (this.config.preVote && !transfer) this.campaign('pre', false);
    else this.campaign('real', transfer);
  }

  private hasUnappliedConfChanges(): boolean {
    if (this.log.applied >= this.log.committed) return false;
    let index = this.log.applied + 1;
    while (index <= this.log.committed) {
      const batch = this.log.slice(index, this.log.committed + 1, 1024 * 1024);
      for (const entry of batch) if (entry.type === EntryType.ConfChange) return true;
      index += batch.length;
    }
    return false;
  }

  campaign(kind: 'pre' | 'real', transfer: boolean): void {
    let term: number;
    let type: MessageType;
    if (kind === 'pre') {
      this.becomePreCandidate();
      type = MessageType.PreVote;
      term = this.term + 1;
    } else {
      this.becomeCandidate();
      type = MessageType.Vote;
      term = this.term;
    }
    const respType = kind === 'pre' ? MessageType.PreVoteResp : MessageType.VoteResp;
    if (this.poll(this.id, respType, true) === VoteResult.Won) {
      if (kind === 'pre') this.campaign('real', transfer);
      else this.becomeLeader();
      return;
    }
    const lastIndex = this.log.lastIndex();
    const lastTerm = this.log.lastTerm();
    for (const id of allVoters(this.confState)) {
      if (id === this.id) continue;
      this.send(
        message({ type, to: id, term, index: lastIndex, logTerm: lastTerm, context: transfer ? TRANSFER_CONTEXT : EMPTY_BYTES }),
      );
    }
  }

  private poll(id: NodeId, type: MessageType, granted: boolean): VoteResult {
    if (!this.votes.has(id)) this.votes.set(id, granted);
    this.trace(`${granted ? 'granted' : 'rejected'} ${type} from ${id}`);
    return jointVote(this.confState, this.votes);
  }

  // ---------------------------------------------------------------- step

  step(m: Message): void {
    if ((m.type === MessageType.VoteResp || m.type === MessageType.PreVoteResp) && m.reject) this.learnCommit(m.commit, m.logTerm);
    if (m.term === 0) {
      // local message, or a forwarded proposal / read
    } else if (m.term > this.term) {
      if (m.type === MessageType.Vote || m.type === MessageType.PreVote) {
        const force = isTransferContext(m.context);
        const inLease = this.config.checkQuorum && this.lead !== None && this.electionElapsed < this.config.electionTimeoutTicks;
        if (!force && (inLease || this.quietTicks > 0)) {
          // §6 / thesis §4.2.3: a node that heard from a leader recently ignores disruptive candidates.
          this.trace(`ignored ${m.type} from ${m.from} (lease)`);
          return;
        }
      }
      if (m.type === MessageType.PreVote) {
        // never change term on a pre-vote
      } else if (m.type === MessageType.PreVoteResp && !m.reject) {
        // the term in a granted pre-vote response is the future term; we bump when we campaign
      } else {
        const leader = m.type === MessageType.App || m.type === MessageType.Heartbeat || m.type === MessageType.Snap ? m.from : None;
        this.trace(`received ${m.type} with higher term ${m.term} from ${m.from}`);
        this.becomeFollower(m.term, leader);
      }
    } else if (m.term < this.term) {
      if (m.type === MessageType.Heartbeat || m.type === MessageType.App) {
        // A stale leader: tell it our term so it steps down (§5.1). Needed with CheckQuorum/PreVote,
        // where it might otherwise never learn of the new term, and also without them: a stale
        // node campaigning with an old configuration can raise our term while its votes never
        // reach the leader (found by the simulator: `--seed 681 --ticks 1500`).
        this.send(message({ type: MessageType.AppResp, to: m.from }));
      } else if (m.type === MessageType.PreVote) {
        this.send(message({ type: MessageType.PreVoteResp, to: m.from, term: this.term, reject: true }));
      }
      return;
    }

    switch (m.type) {
      case MessageType.Hup:
        this.hup(false);
        return;
      case MessageType.Vote:
      case MessageType.PreVote: {
        const canVote =
          this.vote === m.from ||
          (this.vote === None && this.lead === None) ||
          (m.type === MessageType.PreVote && m.term > this.term);
        const upToDate = this.config.testing?.voteWithoutLogCheck === true || this.log.isUpToDate(m.index, m.logTerm);
        const respType = m.type === MessageType.Vote ? MessageType.VoteResp : MessageType.PreVoteResp;
        if (canVote && upToDate) {
          this.trace(`grants ${m.type} to ${m.from}`);
          this.send(message({ type: respType, to: m.from, term: m.term }));
          if (m.type === MessageType.Vote) {
            this.electionElapsed = 0;
            this.vote = m.from;
          }
        } else {
          // The rejection carries what we know is committed (index and its term), so a candidate
          // stuck in a joint configuration it does not know was left can learn it (see step()).
          // A node still at term 0 (fresh bootstrap) answers in the candidate's term: a vote
          // response must carry a term, and a rejection in that term is counted as one.
          this.send(message({ type: respType, to: m.from, term: this.term === 0 ? m.term : this.term, reject: true, commit: this.log.committed, logTerm: this.log.termOr(this.log.committed, 0) }));
        }
        return;
      }
      default:
        break;
    }
    switch (this.role) {
      case Role.Leader:
        this.stepLeader(m);
        break;
      case Role.Candidate:
      case Role.PreCandidate:
        this.stepCandidate(m);
        break;
      case Role.Follower:
        this.stepFollower(m);
        break;
    }
  }

  private stepLeader(m: Message): void {
    switch (m.type) {
      case MessageType.Beat: {
        // Carry the newest pending read's context (etcd's lastPendingRequestCtx): if its own round
        // was lost, this heartbeat's quorum of answers still confirms it and every read before it.
        const last = this.readRequests[this.readRequests.length - 1];
        this.bcastHeartbeat(last?.context ?? EMPTY_BYTES);
        return;
      }
      case MessageType.CheckQuorum:
        if (!this.quorumActive()) {
          this.trace('lost quorum contact; stepping down');
          this.becomeFollower(this.term, None);
        }
        for (const [id, pr] of this.progress) if (id !== this.id) pr.recentActive = false;
        return;
      case MessageType.Propose:
        this.handlePropose(m);
        return;
      case MessageType.ReadIndex:
        this.handleReadIndex(m);
        return;
      default:
        break;
    }
    const pr = this.progress.get(m.from);
    if (pr === undefined) return;
    switch (m.type) {
      case MessageType.AppResp:
        pr.recentActive = true;
        if (m.reject) {
          let nextProbeIndex = m.rejectHint;
          if (m.rejectTerm > 0) nextProbeIndex = this.log.findConflictByTerm(m.rejectHint, m.rejectTerm)[0];
          if (pr.maybeDecrTo(m.index, nextProbeIndex)) {
            if (pr.state === ProgressState.Replicate) pr.becomeProbe();
            this.maybeSendAppend(m.from, true);
          }
          return;
        }
        const wasPaused = pr.isPaused();
        if (pr.maybeUpdate(m.index) || (pr.state === ProgressState.Snapshot && pr.match >= pr.pendingSnapshot)) {
          if (pr.state === ProgressState.Probe) pr.becomeReplicate();
          else if (pr.state === ProgressState.Snapshot && pr.match >= pr.pendingSnapshot) {
            pr.becomeProbe();
            pr.becomeReplicate();
          } else if (pr.state === ProgressState.Replicate) pr.inflights.freeLE(m.index);
          if (this.maybeCommit()) this.bcastPending = true;
          else if (m.from !== this.id && wasPaused && !this.bcastPending) {
            // It was paused, so it may have missed the latest commit index: send it now.
            this.maybeSendAppend(m.from, true);
          }
          if (m.from !== this.id) while (this.maybeSendAppend(m.from, false)) {}
          if (m.from === this.leadTransferee && pr.match === this.log.lastIndex()) this.sendTimeoutNow(m.from);
        } else if (pr.state === ProgressState.Replicate) {
          pr.inflights.freeLE(m.index);
        }
        return;
      case MessageType.HeartbeatResp:
        pr.recentActive = true;
        pr.probeSent = false;
        if (m.index > pr.leaseAckTick) pr.leaseAckTick = m.index;
        if (pr.state === ProgressState.Snapshot) {
          if (pr.snapshotAcked === pr.snapshotAckedAtLastHeartbeat) pr.snapshotSent = pr.snapshotAcked; // stalled: resend
          pr.snapshotAckedAtLastHeartbeat = pr.snapshotAcked;
          this.sendSnapshotChunks(m.from, pr);
        } else {
          // App messages of a full window may have been lost: free one slot so the follower's
          // answer (or reject) restarts the flow, as etcd does (found by the simulator, seed 10).
          if (pr.state === ProgressState.Replicate && pr.inflights.full()) pr.inflights.freeFirstOne();
          if (pr.match < this.log.lastIndex()) this.maybeSendAppend(m.from, true);
        }
        if (m.context.length > 0) this.ackRead(m.from, m.context);
        return;
      case MessageType.SnapResp:
        pr.recentActive = true;
        if (pr.state !== ProgressState.Snapshot || m.index !== pr.pendingSnapshot) return;
        if (m.reject) {
          pr.becomeProbe();
          return;
        }
        // The follower's answer is the truth about what it holds. Less than we believed means it
        // lost staged bytes (restart) or the answer is stale: resend from there (duplicates are
        // ignored by the follower). More than we sent means it resumed an earlier transfer.
        if (m.rejectHint < pr.snapshotAcked || m.rejectHint > pr.snapshotSent) pr.snapshotSent = m.rejectHint;
        pr.snapshotAcked = m.rejectHint;
        this.sendSnapshotChunks(m.from, pr);
        return;
      case MessageType.Unreachable:
        if (pr.state === ProgressState.Replicate) pr.becomeProbe();
        else if (pr.state === ProgressState.Snapshot) pr.snapshotSent = pr.snapshotAcked;
        return;
      case MessageType.TransferLeader:
        this.handleTransferLeader(m.from, pr);
        return;
      default:
        return;
    }
  }

  private handlePropose(m: Message): void {
    assert(m.entries.length > 0, 'propose carries entries');
    if (!this.progress.has(this.id)) throw new ChardError(ErrorCode.ProposalDropped, 'this leader is being removed');
    if (this.leadTransferee !== None) {
      throw new ChardError(ErrorCode.ProposalDropped, `leadership transfer to ${this.leadTransferee} in progress`);
    }
    for (const entry of m.entries) {
      if (entry.type !== EntryType.ConfChange) continue;
      if (this.pendingConfIndex > this.log.applied) {
        throw new UsageError(ErrorCode.FailedPrecondition, 'a configuration change is still in progress');
      }
    }
    if (!this.appendEntries(m.entries)) throw new ChardError(ErrorCode.Busy, 'too many uncommitted bytes; retry later');
    for (const entry of m.entries) if (entry.type === EntryType.ConfChange) this.pendingConfIndex = entry.index;
    this.bcastPending = true;
  }

  /**
   * flushBroadcast: the appends that proposals and commit advances asked for, sent once: RawNode
   * calls it before it answers hasReady, builds a Ready, or hands out the messages that may leave
   * while a Ready's persist is in flight (takeMessagesInFlight) — the only ways messages leave the
   * core — so deferring changes no message's content, only their number: the proposals of one
   * event-loop turn travel in as few Apps per follower as appendBytesMax and the in-flight window
   * allow, and the commit index advanced by several responses in one broadcast (before, each
   * proposal sent its own App and each commit advance its own round of empty ones: ~8 messages
   * per write).
   */
  flushBroadcast(): void {
    if (!this.bcastPending) return;
    this.bcastPending = false;
    if (this.role !== Role.Leader) return;
    // New entries go to everyone, as many Apps as the window allows (a turn's proposals may exceed
    // appendBytesMax); an empty App (the commit index alone) only to a follower not yet sent it.
    for (const [id, pr] of this.progress) {
      if (id === this.id) continue;
      if (this.maybeSendAppend(id, pr.sentCommit < this.log.committed)) while (this.maybeSendAppend(id, false)) {}
    }
  }

  private handleTransferLeader(transferee: NodeId, pr: Progress): void {
    if (pr.isLearner) {
      this.trace(`ignored transfer to learner ${transferee}`);
      return;
    }
    if (this.leadTransferee === transferee) return;
    if (this.leadTransferee !== None) this.abortLeaderTransfer();
    if (transferee === this.id) return;
    this.electionElapsed = 0; // the transfer must finish within one election timeout
    this.leadTransferee = transferee;
    this.trace(`transferring leadership to ${transferee}`);
    if (pr.match === this.log.lastIndex()) this.sendTimeoutNow(transferee);
    else this.maybeSendAppend(transferee, true);
  }

  private sendTimeoutNow(to: NodeId): void {
    // The target will be elected regardless of leases, so ours can no longer be trusted this term.
    this.leaseRevoked = true;
    this.send(message({ type: MessageType.TimeoutNow, to }));
  }

  abortLeaderTransfer(): void {
    this.leadTransferee = None;
  }

  private quorumActive(): boolean {
    const active = jointVote(
      this.confState,
      new Map(allVoters(this.confState).map((id) => [id, id === this.id || (this.progress.get(id)?.recentActive ?? false)])),
    );
    return active === VoteResult.Won;
  }

  // ---------------------------------------------------------------- reads

  /** leaseValid: a quorum acknowledged a heartbeat sent less than (electionTimeout - drift) ticks ago. */
  leaseValid(): boolean {
    if (this.role !== Role.Leader || !this.config.checkQuorum) return false;
    if (this.config.testing?.leaseWithoutQuorum) return true;
    if (this.leaseRevoked || this.leadTransferee !== None) return false;
    const start = jointIndex(this.confState, (id) => (id === this.id ? this.tickCount : (this.progress.get(id)?.leaseAckTick ?? -1)));
    if (!Number.isFinite(start) || start < 0) return false;
    return this.tickCount < start + this.config.electionTimeoutTicks - this.config.leaseDriftTicks;
  }

  /** handleReadIndex: §6.4. A read from a peer that cannot be queued is dropped (the peer times out). */
  private handleReadIndex(m: Message): void {
    const local = m.from === None || m.from === this.id;
    const voters = allVoters(this.confState);
    if (voters.length === 1 && voters[0] === this.id) {
      this.respondRead(m.from, this.log.committed, m.context);
      return;
    }
    if (!this.committedEntryInCurrentTerm()) {
      if (this.pendingReads.length >= this.config.readIndexQueueMax) {
        if (local) throw new ChardError(ErrorCode.Busy, 'too many pending reads');
        return;
      }
      this.pendingReads.push(m);
      return;
    }
    if (!this.serveRead(m) && local) throw new ChardError(ErrorCode.Busy, 'too many pending reads');
  }

  private serveRead(m: Message): boolean {
    if (this.config.readOnlyOption === ReadOnlyOption.LeaseBased && this.leaseValid()) {
      this.respondRead(m.from, this.log.committed, m.context);
      return true;
    }
    const key = contextKey(m.context);
    if (this.readRequests.some((r) => contextKey(r.context) === key)) return true; // already pending
    if (this.readRequests.length >= this.config.readIndexQueueMax) return false;
    this.readRequests.push({ index: this.log.committed, context: m.context, from: m.from, acks: new Set([this.id]) });
    this.bcastHeartbeat(m.context);
    return true;
  }

  private releasePendingReads(): void {
    if (this.pendingReads.length === 0 || !this.committedEntryInCurrentTerm()) return;
    const pending = this.pendingReads;
    this.pendingReads = [];
    for (const m of pending) this.serveRead(m);
  }

  private ackRead(from: NodeId, context: Uint8Array): void {
    const key = contextKey(context);
    const position = this.readRequests.findIndex((r) => contextKey(r.context) === key);
    if (position < 0) return;
    const request = this.readRequests[position]!;
    request.acks.add(from);
    const votes = new Map(allVoters(this.confState).map((id) => [id, request.acks.has(id)]));
    if (jointVote(this.confState, votes) !== VoteResult.Won) return;
    // A quorum confirmed leadership at a time after every earlier request: release them all.
    const released = this.readRequests.splice(0, position + 1);
    for (const r of released) this.respondRead(r.from, r.index, r.context);
  }

  private respondRead(to: NodeId, index: number, context: Uint8Array): void {
    if (to === None || to === this.id) this.readStates.push({ index, requestContext: context });
    else this.send(message({ type: MessageType.ReadIndexResp, to, index, context }));
  }

  // ---------------------------------------------------------------- candidate / follower

  private stepCandidate(m: Message): void {
    const myResp = this.role === Role.PreCandidate ? MessageType.PreVoteResp : MessageType.VoteResp;
    switch (m.type) {
      case MessageType.Propose:
        throw new NotLeaderError(None);
      case MessageType.App:
        this.becomeFollower(m.term, m.from);
        this.handleAppend(m);
        return;
      case MessageType.Heartbeat:
        this.becomeFollower(m.term, m.from);
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.becomeFollower(m.term, m.from);
        this.handleSnapshot(m);
        return;
      case MessageType.PreVoteResp:
      case MessageType.VoteResp: {
        if (m.type !== myResp) return;
        const result = this.poll(m.from, m.type, !m.reject);
        if (result === VoteResult.Won) {
          if (this.role === Role.PreCandidate) this.campaign('real', false);
          else {
            this.becomeLeader();
            this.bcastAppend();
          }
        } else if (result === VoteResult.Lost) {
          this.becomeFollower(this.term, None);
        }
        return;
      }
      case MessageType.ReadIndex:
        throw new NotLeaderError(None);
      default:
        return;
    }
  }

  private stepFollower(m: Message): void {
    switch (m.type) {
      case MessageType.Propose:
        throw new NotLeaderError(this.lead);
      case MessageType.App:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleAppend(m);
        return;
      case MessageType.Heartbeat:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleHeartbeat(m);
        return;
      case MessageType.Snap:
        this.electionElapsed = 0;
        this.lead = m.from;
        this.handleSnapshot(m);
        return;
      case MessageType.TransferLeader:
        if (this.lead === None) throw new NotLeaderError(None);
        this.send(message({ ...m, to: this.lead, term: 0 }));
        return;
      case MessageType.TimeoutNow:
        this.trace(`received TimeoutNow from ${m.from}; campaigning`);
        this.hup(true);
        return;
      case MessageType.ReadIndex:
        if (this.lead === None) throw new NotLeaderError(None);
        this.send(message({ type: MessageType.ReadIndex, to: this.lead, context: m.context }));
        return;
      case MessageType.ReadIndexResp:
        this.readStates.push({ index: m.index, requestContext: m.context });
        return;
      default:
        return;
    }
  }

  private handleAppend(m: Message): void {
    if (m.index < this.log.committed) {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      return;
    }
    const lastNew = this.log.maybeAppend(m.index, m.logTerm, m.commit, m.entries);
    if (lastNew !== undefined) {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: lastNew }));
      return;
    }
    const [hintIndex, hintTerm] = this.log.findConflictByTerm(Math.min(m.index, this.log.lastIndex()), m.logTerm);
    this.send(message({ type: MessageType.AppResp, to: m.from, index: m.index, reject: true, rejectHint: hintIndex, rejectTerm: hintTerm }));
  }

  private handleHeartbeat(m: Message): void {
    this.log.commitTo(Math.min(m.commit, this.log.lastIndex()));
    this.send(message({ type: MessageType.HeartbeatResp, to: m.from, index: m.index, context: m.context }));
  }

  private handleSnapshot(m: Message): void {
    const chunk = m.snapshot;
    if (chunk === undefined) return;
    const metadata = chunk.metadata;
    if (metadata.index <= this.log.committed) {
      this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      return;
    }
    if (this.log.unstableSnapshot !== undefined) {
      // A snapshot is being installed (in the pending Ready): staging another one now would put
      // its chunk before that install in the same Ready and replace the staged bytes it needs
      // (found by the simulator, seed 1883). The leader resends once we have advanced.
      this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.lastIndex() }));
      return;
    }
    const staging = this.staging;
    if (staging === undefined || !sameSnapshot(staging.metadata, metadata)) {
      this.staging = { metadata, bytes: 0 };
    }
    const current = this.staging!;
    if (chunk.offset === current.bytes && current.bytes + chunk.data.length <= metadata.sizeBytes) {
      this.snapshotChunks.push(chunk);
      current.bytes += chunk.data.length;
    }
    if (current.bytes === metadata.sizeBytes) {
      this.staging = undefined;
      if (this.restore(metadata)) {
        this.trace(`installing snapshot ${metadata.index}`);
        this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.lastIndex() }));
      } else {
        this.send(message({ type: MessageType.AppResp, to: m.from, index: this.log.committed }));
      }
      return;
    }
    this.send(message({ type: MessageType.SnapResp, to: m.from, index: metadata.index, rejectHint: current.bytes }));
  }

  /** restore: adopt a fully received snapshot; false if our log already covers it. */
  private restore(metadata: SnapshotMetadata): boolean {
    if (metadata.index <= this.log.committed) return false;
    // Committed entries handed out in a Ready are still being applied: installing now would
    // switch the configuration under them (their ConfChanges would apply on top of the
    // snapshot's) and the application would see a snapshot overtake entries it is applying
    // (found by the simulator, seed 3752). Refuse; the staged bytes stay and the leader resends.
    if (this.log.applying > this.log.applied) return false;
    if (this.log.matchTerm(metadata.index, metadata.term)) {
      // We already have the entries; just commit up to the snapshot (etcd does the same).
      this.log.commitTo(metadata.index);
      return false;
    }
    this.log.restore(metadata);
    this.switchToConfig(metadata.confState);
    const self = this.progress.get(this.id);
    if (self !== undefined) self.match = metadata.index;
    return true;
  }

  /** validateProposal: usage checks of a conf change before it is proposed. */
  validateConfChange(cc: ConfChange): void {
    const problem = validateConfChange(this.confState, cc);
    if (problem !== undefined) throw new UsageError(ErrorCode.FailedPrecondition, problem);
  }

  stepLocal(m: Message): void {
    assert(isLocalMessage(m.type) || m.type === MessageType.Propose || m.type === MessageType.ReadIndex || m.type === MessageType.TransferLeader, 'stepLocal with a local type');
    this.step(m);
  }
}
