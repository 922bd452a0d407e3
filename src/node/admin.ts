/**
 * admin: NodeAdmin, the operator operations of one node (served over gRPC as chard.v1.Admin).
 *
 * Operations that change the cluster (volumes, members, leadership) run on the leader only; a
 * follower answers NOT_LEADER with the leader's id and admin address, and the client follows it.
 * Every operation validates its input before proposing anything, so bad input changes nothing;
 * a command that passes validation here is checked again when applied (a concurrent change may
 * have made it invalid), and that deterministic result is what the caller gets.
 */

import { ErrorCode, RemoteError, UsageError } from '../errors.js';
import { decodeOutcome } from '../blockstore/state-store.js';
import { type SessionTable, SessionVerdict } from '../blockstore/sessions.js';
import { encodeCommand, type Command, type Session } from '../volume/command.js';
import { type VolumeInfo, checkVolumeName, checkVolumeSize } from '../volume/rules.js';
import { validateConfChange } from '../raft/confchange.js';
import { type ConfChange, ConfChangeType, type ConfState, None, type NodeId } from '../raft/types.js';
import type { Clock } from './clock.js';
import { validateNodeId } from './config.js';
import { encodeMembersContext, type MemberAddresses, type Replica } from './replica.js';

export interface NodeStatusReport {
  id: number;
  role: string;
  term: number;
  leader: number;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
  removed: boolean;
  leaseValid: boolean;
  voters: number[];
  learners: number[];
  joint: boolean;
  /** snapshotBytes: size of this node's latest snapshot (the one a lagging follower is sent). */
  snapshotBytes: number;
  progress: { id: number; match: number; next: number; state: string; learner: boolean; recentActive: boolean; snapshotSent: number; snapshotAcked: number }[];
}

export interface MemberReport {
  id: number;
  role: 'voter' | 'learner';
  raft: string;
  admin: string;
  nbd: string;
  match: number;
  state: string;
  snapshotSent: number;
  snapshotAcked: number;
}

export interface VerifyReport {
  id: number;
  appliedIndex: number;
  hash: string;
}

/** AdminStore: the parts of the block store the admin operations read. */
export interface AdminStore {
  listVolumes(): VolumeInfo[];
  /** state: the applied session table (a retried volume change is answered from it). */
  readonly state: { sessions(): Pick<SessionTable, 'check' | 'result'> };
  members(): Map<NodeId, MemberAddresses>;
  stateHash(): { appliedIndex: number; hash: string };
}

/** jointLeaveWaitMs: how long a membership change waits for the joint configuration to be left. */
export const jointLeaveWaitMs = 10_000;


export class NodeAdmin {
  constructor(
    private readonly replica: Replica,
    private readonly store: AdminStore,
    private readonly clock: Clock,
  ) {}

  status(): NodeStatusReport {
    const s = this.replica.status();
    const progress = [...s.progress].map(([id, p]) => ({
      id,
      match: p.match,
      next: p.next,
      state: p.state,
      learner: p.learner,
      recentActive: p.recentActive,
      snapshotSent: p.snapshotSent,
      snapshotAcked: p.snapshotAcked,
    }));
    return {
      id: s.id,
      role: s.role,
      term: s.term,
      leader: s.leader,
      commitIndex: s.commit,
      appliedIndex: s.applied,
      lastIndex: s.lastIndex,
      removed: s.removed,
      leaseValid: s.leaseValid,
      voters: [...new Set([...s.confState.voters, ...s.confState.votersOutgoing])].sort((a, b) => a - b),
      learners: [...new Set([...s.confState.learners, ...s.confState.learnersNext])].sort((a, b) => a - b),
      joint: s.confState.votersOutgoing.length > 0,
      snapshotBytes: this.replica.snapshotBytes(),
      progress,
    };
  }

  private requireLeader(): void {
    if (!this.replica.isLeader()) throw this.replica.notLeaderError();
  }

  private async propose(command: Command): Promise<void> {
    this.requireLeader();
    await this.replica.propose(encodeCommand(command));
  }

  async volumeList(): Promise<VolumeInfo[]> {
    await this.replica.readBarrier();
    return this.store.listVolumes();
  }

  /*
   * Volume changes. With a session stamp (a client that retries: ClusterClient.volumeCreate...)
   * a retry of an operation that was already applied is answered with its first result from
   * the session table: a create that succeeded but whose answer was lost returns success again,
   * not ALREADY_EXISTS. Otherwise the existence checks refuse before anything is proposed (bad
   * input changes nothing); one raced by a concurrent change is refused by apply.
   */
  async volumeCreate(name: string, sizeBytes: number, session?: Session): Promise<VolumeInfo> {
    checkVolumeName(name);
    checkVolumeSize(sizeBytes);
    this.requireLeader();
    if (!this.answeredBefore(session)) {
      if (this.store.listVolumes().some((v) => v.name === name)) throw new UsageError(ErrorCode.AlreadyExists, `volume "${name}" already exists`);
      await this.propose({ kind: 'createVolume', name, sizeBytes, ...(session ? { session } : {}) });
    }
    return { name, sizeBytes };
  }

  async volumeResize(name: string, sizeBytes: number, session?: Session): Promise<VolumeInfo> {
    checkVolumeName(name);
    checkVolumeSize(sizeBytes);
    this.requireLeader();
    if (!this.answeredBefore(session)) {
      this.requireVolume(name);
      await this.propose({ kind: 'resizeVolume', name, sizeBytes, ...(session ? { session } : {}) });
    }
    return { name, sizeBytes };
  }

  async volumeDelete(name: string, session?: Session): Promise<void> {
    checkVolumeName(name);
    this.requireLeader();
    if (this.answeredBefore(session)) return;
    this.requireVolume(name);
    await this.propose({ kind: 'deleteVolume', name, ...(session ? { session } : {}) });
  }

  /**
   * answeredBefore: true when `session`'s request was already applied successfully (a retry);
   * throws its remembered refusal when it failed then. False for a new request (or no stamp).
   */
  private answeredBefore(session: Session | undefined): boolean {
    if (session === undefined) return false;
    const table = this.store.state.sessions();
    if (table.check(session.id, session.sequence, session.ackedBelow) !== SessionVerdict.Duplicate) return false;
    const outcome = decodeOutcome(table.result(session.id, session.sequence)!);
    if (!outcome.ok) throw new UsageError(outcome.code, outcome.message);
    return true;
  }

  private requireVolume(name: string): void {
    if (!this.store.listVolumes().some((v) => v.name === name)) throw new UsageError(ErrorCode.NotFound, `no volume named "${name}"`);
  }

  /** memberList: the leader's view (a removed node may never learn that it was removed). */
  memberList(): MemberReport[] {
    this.requireLeader();
    const s = this.replica.status();
    const addresses = this.store.members();
    const ids = new Set([...s.confState.voters, ...s.confState.votersOutgoing, ...s.confState.learners, ...s.confState.learnersNext]);
    return [...ids]
      .sort((a, b) => a - b)
      .map((id) => {
        const a = addresses.get(id);
        const p = s.progress.get(id);
        const learner = s.confState.learners.includes(id) || (s.confState.learnersNext.includes(id) && !s.confState.voters.includes(id));
        return {
          id,
          role: learner ? 'learner' : 'voter',
          raft: a?.raft ?? '',
          admin: a?.admin ?? '',
          nbd: a?.nbd ?? '',
          match: p?.match ?? 0,
          state: p?.state ?? '',
          snapshotSent: p?.snapshotSent ?? 0,
          snapshotAcked: p?.snapshotAcked ?? 0,
        } satisfies MemberReport;
      });
  }

  private async changeMembers(cc: ConfChange): Promise<void> {
    this.requireLeader();
    const reason = validateConfChange(this.replica.status().confState, cc);
    if (reason !== undefined) throw new UsageError(ErrorCode.FailedPrecondition, reason);
    await this.replica.proposeConfChange(cc);
    // A voter change enters a joint configuration that the leader leaves by itself with a second
    // entry; answer once that is applied too, so that `member list` right after shows the result.
    const deadline = this.clock.now() + jointLeaveWaitMs;
    while (this.replica.status().confState.votersOutgoing.length > 0 && this.clock.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  async memberAdd(id: number, addresses: MemberAddresses, learner: boolean): Promise<void> {
    validateNodeId(id);
    if (addresses.raft === '') throw new UsageError(ErrorCode.InvalidArgument, 'member add needs the raft address of the new node');
    this.requireLeader();
    const cs = this.replica.status().confState;
    if ([...cs.voters, ...cs.votersOutgoing, ...cs.learners, ...cs.learnersNext].includes(id)) {
      throw new UsageError(ErrorCode.AlreadyExists, `node ${id} is already a member`);
    }
    const type = learner ? ConfChangeType.AddLearner : ConfChangeType.AddNode;
    await this.changeMembers({ changes: [{ type, nodeId: id }], context: encodeMembersContext({ [id]: addresses }) });
  }

  /** memberPromote: a learner becomes a voter once it has caught up with the leader's log. */
  async memberPromote(id: number, caughtUpLagMax = 1000): Promise<void> {
    validateNodeId(id);
    this.requireLeader();
    const s = this.replica.status();
    if (s.confState.voters.includes(id)) throw new UsageError(ErrorCode.AlreadyExists, `node ${id} is already a voter`);
    if (!s.confState.learners.includes(id)) throw new UsageError(ErrorCode.NotFound, `node ${id} is not a learner`);
    const progress = s.progress.get(id);
    const lag = s.lastIndex - (progress?.match ?? 0);
    if (lag > caughtUpLagMax || progress?.state !== 'replicate') {
      throw new UsageError(ErrorCode.FailedPrecondition, `learner ${id} is ${lag} entries behind (promote once within ${caughtUpLagMax})`);
    }
    await this.changeMembers({ changes: [{ type: ConfChangeType.AddNode, nodeId: id }], context: new Uint8Array(0) });
  }

  async memberRemove(id: number): Promise<void> {
    validateNodeId(id);
    this.requireLeader();
    const cs = this.replica.status().confState;
    if (![...cs.voters, ...cs.learners].includes(id)) throw new UsageError(ErrorCode.NotFound, `node ${id} is not a member`);
    await this.changeMembers({ changes: [{ type: ConfChangeType.RemoveNode, nodeId: id }], context: new Uint8Array(0) });
  }

  /** leaderTransfer: hand leadership to voter `id`; resolves once it leads (bounded). */
  async leaderTransfer(id: number, timeoutMs = 5000): Promise<void> {
    validateNodeId(id);
    this.requireLeader();
    const s = this.replica.status();
    if (id === s.id) return;
    if (!s.confState.voters.includes(id)) throw new UsageError(ErrorCode.FailedPrecondition, `node ${id} is not a voter`);
    this.replica.transferLeadership(id);
    const deadline = this.clock.now() + timeoutMs;
    while (this.clock.now() < deadline) {
      const leader = this.replica.leaderId();
      if (leader === id) return;
      // The core gives one attempt an election timeout; a target behind by more than it fetches in
      // that time (a deep queue of 1 MiB writes) needs several: proposals stay paused meanwhile.
      if (this.replica.isLeader() && this.replica.status().leadTransferee === None) this.replica.transferLeadership(id);
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new RemoteError(ErrorCode.Timeout, `node ${id} did not take over within ${timeoutMs} ms (it may lag or be down)`);
  }

  verify(): VerifyReport {
    const { appliedIndex, hash } = this.store.stateHash();
    return { id: this.replica.id, appliedIndex, hash };
  }

  /** replicaStatus: raw raft details the RPC status reports. */
  replicaStatus(): { vote: number; snapshotIndex: number; leadTransferee: number; confState: ConfState } {
    const s = this.replica.status();
    return { vote: s.vote, snapshotIndex: this.replica.snapshotIndex(), leadTransferee: s.leadTransferee, confState: s.confState };
  }

  addressOf(id: NodeId): MemberAddresses | undefined {
    return this.store.members().get(id);
  }

  leaderHint(): NodeId {
    const leader = this.replica.leaderId();
    return leader === None ? None : leader;
  }
}
