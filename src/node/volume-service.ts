/**
 * volume-service: LocalVolumeService, the VolumeService a node offers its own NBD server.
 *
 * Writes: on the leader, the command is proposed and answered once applied here (which implies
 * committed on a quorum). On a follower it is forwarded to the leader's Block service. Either way
 * a failure that says "not now" (RemoteError: no leader, leader changed, timeout) is retried,
 * with the SAME session stamp, until `submitTimeoutMs`: the session table applies a sequence at
 * most once, so a retry of a write that did commit returns its original result instead of
 * writing again. Usage errors (unknown volume, out of range) are answered at once.
 *
 * Reads: a linearizable read barrier (lease on the leader, ReadIndex elsewhere), retried the same
 * way, then the local state machine. A node cut off from the quorum never gets the barrier, so it
 * serves nothing (the request fails with UNAVAILABLE after the timeout and the NBD server closes
 * that connection instead of answering stale data).
 */

import { ErrorCode, RemoteError, UsageError } from '../errors.js';
import type { BlockCommand } from '../volume/command.js';
import type { Extent, ReadChunk } from '../volume/ranges.js';
import type { VolumeInfo } from '../volume/rules.js';
import { None, type NodeId } from '../raft/types.js';
import type { Clock } from './clock.js';
import type { Counters } from './metrics.js';
import type { Replica } from './replica.js';
import type { VolumeService } from './volume-backend.js';
import { setTimeout as sleep } from 'node:timers/promises';

/** VolumeStateView: the local, already-applied state a read is served from. */
export interface VolumeStateView {
  read(volume: string, offset: number, length: number): ReadChunk[];
  blockStatus(volume: string, offset: number, length: number): Extent[];
  listVolumes(): VolumeInfo[];
}

/** LeaderForwarder: sends a command to the leader's Block service (gRPC). */
export interface LeaderForwarder {
  submit(leader: NodeId, command: BlockCommand): Promise<void>;
}

export interface VolumeServiceLimits {
  /** submitTimeoutMs: how long a write is retried across leader changes before UNAVAILABLE. */
  submitTimeoutMs: number;
  /** readTimeoutMs: how long a read waits for a linearizable barrier. */
  readTimeoutMs: number;
  /** retryBackoffMs / retryBackoffMaxMs: pause between attempts (doubling). */
  retryBackoffMs: number;
  retryBackoffMaxMs: number;
}

export const defaultVolumeServiceLimits: VolumeServiceLimits = {
  submitTimeoutMs: 30_000,
  readTimeoutMs: 30_000,
  retryBackoffMs: 10,
  retryBackoffMaxMs: 100,
};


export class LocalVolumeService implements VolumeService {
  private readonly limits: VolumeServiceLimits;
  private sessions = 0;
  constructor(
    private readonly replica: Replica,
    private readonly state: VolumeStateView,
    private readonly encode: (command: BlockCommand) => Uint8Array,
    private readonly forwarder: LeaderForwarder,
    private readonly clock: Clock,
    private readonly defaultVolumeName: string,
    limits: Partial<VolumeServiceLimits> = {},
    private readonly counters?: Counters,
  ) {
    this.limits = { ...defaultVolumeServiceLimits, ...limits };
  }

  newSessionId(): string {
    // Unique across restarts and nodes: node id, process start, counter.
    return `n${this.replica.id}-${process.pid.toString(36)}-${Math.floor(performance.timeOrigin).toString(36)}-${(++this.sessions).toString(36)}`;
  }

  defaultVolume(): string {
    return this.defaultVolumeName;
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    await this.barrier();
    return this.state.listVolumes();
  }

  async read(volume: string, offset: number, length: number): Promise<ReadChunk[]> {
    await this.barrier();
    return this.state.read(volume, offset, length);
  }

  async blockStatus(volume: string, offset: number, length: number): Promise<Extent[]> {
    await this.barrier();
    return this.state.blockStatus(volume, offset, length);
  }

  /** unsafeLocalReads: testing only (NodeTesting) — skip the barrier, so reads may be stale. */
  unsafeLocalReads = false;

  /** barrier: a linearizable read point, retried across leader changes. */
  async barrier(): Promise<void> {
    if (this.unsafeLocalReads) return;
    await this.retrying(this.limits.readTimeoutMs, 'read', () => this.replica.readBarrier());
  }

  async submit(command: BlockCommand): Promise<void> {
    await this.retrying(this.limits.submitTimeoutMs, 'write', async () => {
      if (this.replica.isLeader()) {
        await this.replica.propose(this.encode(command));
        return;
      }
      const leader = this.replica.leaderId();
      if (leader === None || leader === this.replica.id) throw new RemoteError(ErrorCode.Unavailable, 'no leader known');
      this.counters?.inc('volume.forwarded');
      // A leader that is paused or cut off does not answer; its call would hang until the RPC
      // deadline. Once this node learns of a new leader (or none), retry there: the request keeps
      // its session stamp, so if the old leader did get it committed it is not applied twice.
      const change = this.replica.leaderChange(leader);
      const forwarded = this.forwarder.submit(leader, command);
      forwarded.catch(() => undefined); // abandoned below; its outcome is settled by the retry
      try {
        await Promise.race([
          forwarded,
          change.promise.then(() => {
            this.counters?.inc('volume.forward.abandoned');
            throw new RemoteError(ErrorCode.NotLeader, `node ${leader} stopped being the leader while a write forwarded to it was in flight`);
          }),
        ]);
      } finally {
        change.cancel();
      }
    });
  }

  /** submitLocal: a command forwarded from another node: propose here only if leading. */
  async submitLocal(command: BlockCommand): Promise<void> {
    await this.replica.propose(this.encode(command));
  }

  private async retrying(timeoutMs: number, what: string, attempt: () => Promise<void>): Promise<void> {
    const deadline = this.clock.now() + timeoutMs;
    let backoff = this.limits.retryBackoffMs;
    for (let tries = 0; ; tries++) {
      try {
        await attempt();
        if (tries > 0) this.counters?.inc(`volume.${what}.retried_ok`);
        return;
      } catch (error) {
        if (error instanceof UsageError || !(error instanceof RemoteError)) throw error;
        if (error.code === ErrorCode.Closed && this.replica.closing) throw error;
        if (this.clock.now() + backoff >= deadline) {
          this.counters?.inc(`volume.${what}.gave_up`);
          throw new RemoteError(ErrorCode.Unavailable, `${what} not served within ${timeoutMs} ms: ${error.message}`);
        }
        this.counters?.inc(`volume.${what}.retry`);
        await sleep(backoff);
        backoff = Math.min(backoff * 2, this.limits.retryBackoffMaxMs);
      }
    }
  }
}
