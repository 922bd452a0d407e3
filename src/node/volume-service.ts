/**
 * volume-service: LocalVolumeService, the VolumeService a node offers its own NBD server.
 *
 * Writes: on the leader, the command is proposed and answered once applied here (which implies
 * committed on a quorum). On a follower it is forwarded to the leader's Block service. Either way
 * a failure that says "not now" is retried, with the SAME session stamp, until `submitTimeoutMs`:
 * any RemoteError (no leader, leader changed, timeout) and, whatever their class, BUSY (the core's
 * uncommitted-bytes limit, the waiter table) and PROPOSAL_DROPPED (a leadership transfer or the
 * SIGTERM hand-over in progress). The session table applies a sequence at most once, so a retry
 * of a write that did commit returns its original result instead of writing again. Usage errors
 * (unknown volume, out of range) are answered at once. A client connected to a node therefore
 * sees a slow request, never an error, for any of those. Once the replica is closed (SIGTERM,
 * after its hand-over) nothing is retried: the request fails with CLOSED and the NBD server
 * closes that connection at once instead of holding its drain.
 *
 * Backpressure: the commands a node has in flight (its own clients' and those forwarded to it)
 * pass one gate of `inflightBytesMax` payload bytes and `inflightCommandsMax` commands, half the
 * core's uncommitted limit, so one connection at QD64 x 1 MiB waits at the gate instead of
 * filling the leader's log past its limit; at most `gateWaitersMax` wait (more is BUSY, retried).
 *
 * Reads: a linearizable read barrier (lease on the leader, ReadIndex elsewhere), retried the same
 * way, then the local state machine. A node cut off from the quorum never gets the barrier, so it
 * serves nothing (the request fails with UNAVAILABLE after the timeout and the NBD server closes
 * that connection instead of answering stale data).
 *
 * A block that fails its checksum here (bit rot in state.db; the store never serves it) is not an
 * error the client must see while other replicas hold the block: the range is read from a peer
 * instead (the leader first, then the others), with `local` set so that the peer serves its own
 * state or fails, never asks a third. The peer's read is linearizable on its own (its barrier),
 * so the answer is as fresh as a local one. Counted (`volume.read_from_peer.served` / `.failed`)
 * and logged; the local block stays rotten until a write replaces it. Only when every peer fails
 * does the client get the local CORRUPT error (EIO).
 */

import { assert } from '../assert.js';
import { ChardError, ErrorCode, RemoteError, UsageError } from '../errors.js';
import { type SessionCommand, renewableIfFirst } from '../volume/command.js';
import { type Extent, type ReadChunk, splitRange } from '../volume/ranges.js';
import { requestLimits, type VolumeInfo } from '../volume/rules.js';
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

/** LeaderForwarder: sends a command to the leader's Block service (gRPC), and reads from a peer's. */
export interface LeaderForwarder {
  submit(leader: NodeId, command: SessionCommand): Promise<void>;
  /**
   * readFrom: a linearizable read of at most requestLimits.readPieceBytes of `peer`'s own state
   * (it never asks another node), within `timeoutMs`; holes as zeros.
   */
  readFrom(peer: NodeId, volume: string, offset: number, length: number, timeoutMs: number): Promise<Uint8Array>;
}

/** PeerReadLogger: where a read served by a peer is reported (pino's warn). */
export interface PeerReadLogger {
  warn(o: object, m?: string): void;
}

export interface VolumeServiceLimits {
  /** submitTimeoutMs: how long a write is retried across leader changes before UNAVAILABLE. */
  submitTimeoutMs: number;
  /** readTimeoutMs: how long a read waits for a linearizable barrier. */
  readTimeoutMs: number;
  /** peerReadTimeoutMs: how long one peer may take to serve a piece whose local copy is rotten, before the next is asked. */
  peerReadTimeoutMs: number;
  /** peerReadLogEveryMs: at most one warn line per this period about reads served by peers (the rest are counted in it). */
  peerReadLogEveryMs: number;
  /** retryBackoffMs / retryBackoffMaxMs: pause between attempts (doubling). */
  retryBackoffMs: number;
  retryBackoffMaxMs: number;
  /** inflightBytesMax: write payload bytes of the commands in flight through this node at once. */
  inflightBytesMax: number;
  /** inflightCommandsMax: commands in flight through this node at once. */
  inflightCommandsMax: number;
  /** gateWaitersMax: commands waiting for the gate; one more is refused with BUSY (retryable). */
  gateWaitersMax: number;
}

export const defaultVolumeServiceLimits: VolumeServiceLimits = {
  submitTimeoutMs: 30_000,
  readTimeoutMs: 30_000,
  peerReadTimeoutMs: 5_000,
  peerReadLogEveryMs: 10_000,
  retryBackoffMs: 10,
  retryBackoffMaxMs: 100,
  // Half of the core's uncommittedBytesMax (64 MiB), so that the leader's own traffic and what
  // followers forward to it stay below the limit at which the core answers BUSY.
  inflightBytesMax: 32 * 1024 * 1024,
  inflightCommandsMax: 1024,
  gateWaitersMax: 16_384,
};

/** isRetryable: a failure that says "not now": retried with the same session stamp. */
export function isRetryable(error: unknown): boolean {
  if (error instanceof UsageError) return false;
  if (error instanceof RemoteError) return true;
  return error instanceof ChardError && (error.code === ErrorCode.Busy || error.code === ErrorCode.ProposalDropped);
}

/** commandCost: the bytes a command holds of the in-flight budget (its payload; a header for the others). */
function commandCost(command: SessionCommand): number {
  return command.kind === 'write' ? Math.max(command.data.length, 64) : 64;
}

/**
 * InflightGate: a FIFO budget of bytes and commands. A request larger than the whole budget
 * runs alone. Waiters are served in arrival order, so a large request is not starved.
 */
function cancelled(): RemoteError {
  return new RemoteError(ErrorCode.Cancelled, 'the request ended (deadline passed or client gone) before it could be proposed');
}

export class InflightGate {
  private bytes = 0;
  private commands = 0;
  private readonly waiting: Array<{ cost: number; grant: (release: () => void) => void }> = [];
  /** abandoned: waiters that left the queue because their request's signal aborted. */
  abandoned = 0;
  constructor(
    private readonly bytesMax: number,
    private readonly commandsMax: number,
    private readonly waitersMax: number,
  ) {}

  inflight(): { bytes: number; commands: number; waiting: number } {
    return { bytes: this.bytes, commands: this.commands, waiting: this.waiting.length };
  }

  private fits(cost: number): boolean {
    return this.commands < this.commandsMax && (this.bytes === 0 || this.bytes + cost <= this.bytesMax);
  }

  /**
   * acquire: resolves with a release function once `cost` bytes fit (the budget is taken on its
   * behalf). If `signal` aborts first (the request's caller is gone) the waiter leaves the queue
   * and the promise rejects with CANCELLED: the budget goes to requests someone still waits for.
   */
  acquire(cost: number, signal?: AbortSignal): Promise<() => void> {
    if (signal?.aborted === true) return Promise.reject(cancelled());
    if (this.waiting.length === 0 && this.fits(cost)) return Promise.resolve(this.take(cost));
    if (this.waiting.length >= this.waitersMax) {
      return Promise.reject(new RemoteError(ErrorCode.Busy, `${this.waitersMax} commands already wait for this node's in-flight budget`));
    }
    return new Promise((grant, reject) => {
      const waiter = {
        cost,
        grant: (release: () => void) => {
          signal?.removeEventListener('abort', onAbort);
          grant(release);
        },
      };
      const onAbort = () => {
        const at = this.waiting.indexOf(waiter);
        if (at < 0) return;
        this.waiting.splice(at, 1);
        this.abandoned++;
        reject(cancelled());
        // The head may have been what held smaller requests back.
        if (at === 0) this.grantWaiting();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.waiting.push(waiter);
    });
  }

  private grantWaiting(): void {
    while (this.waiting.length > 0 && this.fits(this.waiting[0]!.cost)) {
      const next = this.waiting.shift()!;
      next.grant(this.take(next.cost));
    }
  }

  private take(cost: number): () => void {
    this.bytes += cost;
    this.commands++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.bytes -= cost;
      this.commands--;
      this.grantWaiting();
    };
  }
}

export class LocalVolumeService implements VolumeService {
  private readonly limits: VolumeServiceLimits;
  /** gate: the in-flight budget of the commands through this node (see the module comment). */
  readonly gate: InflightGate;
  private sessions = 0;
  private peerReadLoggedAt = -Infinity;
  private peerReadLogSuppressed = 0;
  constructor(
    private readonly replica: Replica,
    private readonly state: VolumeStateView,
    private readonly encode: (command: SessionCommand) => Uint8Array,
    private readonly forwarder: LeaderForwarder,
    private readonly clock: Clock,
    private readonly defaultVolumeName: string,
    limits: Partial<VolumeServiceLimits> = {},
    private readonly counters?: Counters,
    private readonly logger?: PeerReadLogger,
  ) {
    this.limits = { ...defaultVolumeServiceLimits, ...limits };
    this.gate = new InflightGate(this.limits.inflightBytesMax, this.limits.inflightCommandsMax, this.limits.gateWaitersMax);
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

  /** read: see the module comment; `local`: never from a peer (a peer asking for a healthy copy). */
  async read(volume: string, offset: number, length: number, options: { local?: boolean } = {}): Promise<ReadChunk[]> {
    await this.barrier();
    try {
      return this.state.read(volume, offset, length);
    } catch (error) {
      if (options.local === true || !(error instanceof ChardError) || error.code !== ErrorCode.Corrupt) throw error;
      return this.readFromPeer(volume, offset, length);
    }
  }

  /**
   * readFromPeer: the range again, piece by piece (readPieceBytes, what a Block.Read serves): a
   * piece that reads locally is served from here; one that fails its checksum is read from a
   * peer, the leader first, each within peerReadTimeoutMs. A peer's usage error (the volume was
   * deleted or shrunk meanwhile: its read is linearizable, so that is the answer) is the answer;
   * when no peer serves a piece, the client gets the local CORRUPT.
   */
  private async readFromPeer(volume: string, offset: number, length: number): Promise<ReadChunk[]> {
    const leader = this.replica.leaderId();
    const peers = this.replica.peerIds();
    const order = peers.includes(leader) ? [leader, ...peers.filter((id) => id !== leader)] : peers;
    const pieces = await Promise.all(
      splitRange(offset, length, requestLimits.readPieceBytes).map(async (piece): Promise<ReadChunk[]> => {
        let local: ChardError;
        try {
          return this.state.read(volume, piece.offset, piece.length);
        } catch (error) {
          if (!(error instanceof ChardError) || error.code !== ErrorCode.Corrupt) throw error;
          local = error;
        }
        const failures: string[] = [];
        for (const peer of order) {
          try {
            const data = await this.forwarder.readFrom(peer, volume, piece.offset, piece.length, this.limits.peerReadTimeoutMs);
            if (data.length !== piece.length) throw new RemoteError(ErrorCode.Internal, `node ${peer} answered ${data.length} bytes for ${piece.length}`);
            this.counters?.inc('volume.read_from_peer.served');
            this.logPeerRead({ volume, offset: piece.offset, length: piece.length, peer, corrupt: local.message }, 'a block failed its checksum here: the read was served by a peer (the local copy stays rotten until it is written again)');
            return [{ offset: piece.offset, length: piece.length, data }];
          } catch (error) {
            if (error instanceof UsageError) throw error;
            failures.push(`node ${peer}: ${error instanceof Error ? error.message : String(error)}`);
          }
        }
        this.counters?.inc('volume.read_from_peer.failed');
        this.logPeerRead({ volume, offset: piece.offset, length: piece.length, corrupt: local.message, failures }, 'a block failed its checksum here and no peer could serve the read');
        throw local;
      }),
    );
    return pieces.flat();
  }

  /** logPeerRead: a warn line, at most one per peerReadLogEveryMs (the count of those left out goes with the next). */
  private logPeerRead(fields: object, message: string): void {
    const now = this.clock.now();
    if (now - this.peerReadLoggedAt < this.limits.peerReadLogEveryMs) {
      this.peerReadLogSuppressed++;
      return;
    }
    this.logger?.warn({ ...fields, suppressedSinceLast: this.peerReadLogSuppressed }, message);
    this.peerReadLoggedAt = now;
    this.peerReadLogSuppressed = 0;
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

  async submit(command: SessionCommand): Promise<void> {
    const release = await this.gate.acquire(commandCost(command));
    try {
      await this.submitRetrying(command);
    } finally {
      release();
    }
  }

  private async submitRetrying(command: SessionCommand): Promise<void> {
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

  /**
   * submitLocal: a command forwarded from another node (or sent by the attach agent): propose here
   * only if leading. `signal`: the RPC ended; a command still queued for the budget is dropped.
   */
  async submitLocal(command: SessionCommand, signal?: AbortSignal): Promise<void> {
    // A grant resolves before any later I/O event can abort the call, so only the queue wait needs the signal.
    const release = await this.gate.acquire(commandCost(command), signal).catch((error: unknown) => {
      if (error instanceof ChardError && error.code === ErrorCode.Cancelled) this.counters?.inc('volume.write.abandoned');
      throw error;
    });
    try {
      await this.replica.propose(this.encode(command));
    } finally {
      release();
    }
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
        if (!isRetryable(error)) throw renewableIfFirst(error, tries + 1);
        assert(error instanceof ChardError, 'a retryable error is a ChardError');
        // A closed replica learns nothing more (after its hand-over it may not know the new
        // leader yet, and never will): retrying would only hold the NBD drain until it expires.
        if (this.replica.closing) throw error.code === ErrorCode.Closed ? error : new RemoteError(ErrorCode.Closed, `node is shutting down (${what}: ${error.message})`);
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
