/**
 * replica: Replica, the runtime of one chard node — it owns the RawNode, drives it with ticks from
 * a monotonic clock, runs the Ready loop against durable storage and the peer transport, and
 * offers the operations the rest of the node needs: propose (leader), linearizable read barrier
 * (any node), membership changes, leadership transfer, status.
 *
 * The Ready loop (docs/design.md): send messagesEarly → persist → (once durable) install the
 * snapshot, send messages → apply committed entries (one transaction) → advance. Ready handling is
 * coalesced with `scheduler.soon` (setImmediate in production), so every proposal and message that
 * arrives in one turn of the event loop shares one fsync (group commit).
 *
 * persist (ReplicaStore, src/blockstore/replica-store.ts) is synchronous or asynchronous. A store
 * whose persist returns a promise (its fsync runs off the event loop) keeps one Ready in flight:
 * the leader's appends (messagesEarly) leave at once, the event loop goes on stepping peer messages
 * and client proposals into the core, and when the promise resolves the rest of the Ready runs
 * (a follower's acknowledgements and votes leave only then; the leader counts its own entries
 * only at advance(), after its write is durable) and the next Ready carries everything that
 * arrived during the fsync: group commit across turns. Committed entries that were durable here
 * before the Ready are applied when its persist starts, so their clients are answered while the
 * next batch fsyncs. A rejected persist halts the replica (a failed fsync is never retried). A
 * synchronous persist blocks the event loop; a leader's is then deferred by one turn so that its
 * appends reach the sockets first.
 *
 * Every timer and every reading of time goes through the Scheduler port (src/node/clock.ts), so the
 * seeded simulator runs this very code.
 */

import { assert } from '../assert.js';
import { ChardError, ErrorCode, NotLeaderError, RemoteError, UsageError } from '../errors.js';
import type { RaftConfigInput, ReadOnlyOption } from '../raft/config.js';
import { decodeConfChange } from '../raft/confchange.js';
import { RawNode, type Status } from '../raft/rawnode.js';
import {
  type ConfChange,
  type ConfState,
  type Entry,
  EntryType,
  type Message,
  type NodeId,
  None,
  type Random,
  type Ready,
  type SnapshotMetadata,
  MessageType,
  message,
} from '../raft/types.js';
import type { Transport } from '../transport/transport.js';
import { type Scheduler, Ticker, type Timer } from './clock.js';
import type { Counters } from './metrics.js';
import { ProposalWaiters, ReadWaiters } from './waiters.js';

import type { ApplyOutcome, CompactionHolds, MemberAddresses, ReplicaStore } from '../blockstore/replica-store.js';
export type { ApplyOutcome, MemberAddresses, ReplicaStore } from '../blockstore/replica-store.js';

/**
 * ReplicaFailure: what halted a replica (Replica.failed): a failed apply of committed entries, or
 * a persist that could not be made durable (a failed fsync).
 */
export interface ReplicaFailure {
  /** stage: 'apply' (the state is corrupt, see status().stateCorrupt) or 'persist' (the log write failed). */
  stage: 'apply' | 'persist';
  message: string;
  code: ErrorCode | undefined;
  /**
   * firstIndex..lastIndex: apply: the committed entries whose apply failed (none of them is
   * applied); persist: the entries of the Ready that could not be made durable (0..0 if it had none).
   */
  firstIndex: number;
  lastIndex: number;
  /** at: scheduler time of the failure. */
  at: number;
}

export interface ReplicaLimits {
  tickIntervalMs: number;
  electionTimeoutTicks: number;
  heartbeatIntervalTicks: number;
  requestTimeoutMs: number;
  proposalsInflightMax: number;
  readsInflightMax: number;
  /** applyEntriesPerTurnMax: committed entries applied in one turn of the event loop (then it yields). */
  applyEntriesPerTurnMax: number;
  /** applyBytesPerTurnMax: committed entry bytes applied in one turn (at least one entry). */
  applyBytesPerTurnMax: number;
  /**
   * applyRowsPerTurnMax: block rows (ReplicaStore.applyCost) applied in one turn (at least one
   * entry): a lagging replica handed 1,024 zero pieces at once would otherwise delete 4 M rows
   * in one turn (seconds of stall, and an election).
   */
  applyRowsPerTurnMax: number;
  /**
   * compactEveryEntries: compact the log after this many applied entries (ReplicaStore.compactLog:
   * behind the store's durable state, no snapshot; a store without compactLog takes a snapshot
   * instead). Snapshots are made when a follower needs one (Ready.snapshotWanted). 65,536: 256
   * MiB of 4 KiB writes, as compactEveryLogBytes for large ones — a block overwritten within that
   * stretch never leaves the log; one still live at compaction is copied into state.db
   * (docs/blockstore.md, Blocks in the log: 20,000 relocated 45 % more blocks under a skewed load).
   */
  compactEveryEntries: number;
  /**
   * compactEveryLogBytes: ... or after this many bytes of applied entry data, whichever comes
   * first: with 1 MiB writes, 65,536 entries alone would keep ~64 GiB of log between compactions.
   */
  compactEveryLogBytes: number;
  readOnlyOption: ReadOnlyOption;
  appendBytesMax: number;
  snapshotChunkBytes: number;
}

/** stalledFollowerMsMax: time a non-leader counts at once after a stall (see catchUpTicks). */
export const stalledFollowerMsMax = 50;
/** expireEveryMs: how often waiters past their deadline (requestTimeoutMs) are failed. */
export const expireEveryMs = 100;
/** leaseDriftMs: how much shorter than the election timeout a leader's lease is (leaseDriftTicks). */
export const leaseDriftMs = 30;

/**
 * Timing defaults: election timeout 300 ms (randomized to [300, 600) ms), heartbeats every 50 ms
 * (six per timeout), so a dead leader is replaced within a second. The 10 ms tick makes the
 * randomized timeout 30 distinct values: two followers of a dead leader pick the same one (and
 * split their pre-votes, costing another timeout) in ~1/30 failovers instead of 1/16 with 25 ms.
 */
export const defaultReplicaLimits: ReplicaLimits = {
  tickIntervalMs: 10,
  electionTimeoutTicks: 30,
  heartbeatIntervalTicks: 5,
  requestTimeoutMs: 10_000,
  proposalsInflightMax: 4096,
  readsInflightMax: 8192,
  applyEntriesPerTurnMax: 1024,
  applyBytesPerTurnMax: 8 * 1024 * 1024,
  applyRowsPerTurnMax: 16_384,
  compactEveryEntries: 65_536,
  compactEveryLogBytes: 256 * 1024 * 1024,
  readOnlyOption: 'lease',
  appendBytesMax: 1024 * 1024,
  snapshotChunkBytes: 1024 * 1024,
};

export interface ReplicaOptions {
  id: NodeId;
  store: ReplicaStore;
  transport: Transport;
  /**
   * scheduler: the replica's only source of time and of event-loop turns (ticks, the coalesced
   * Ready handling, deadlines). Production passes `systemScheduler`; the simulator a step-clocked one.
   */
  scheduler: Scheduler;
  random: Random;
  limits?: Partial<ReplicaLimits>;
  counters?: Counters;
  logger?: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void };
  /** onApplied: called after each applied batch (e.g. to wake waiters of the NBD layer). */
  onApplied?: (appliedIndex: number) => void;
  /** testing: knobs that each restore one known defect, for the simulator's knock-out list. Never set in production. */
  testing?: ReplicaTestingKnobs;
  /**
   * raft: TEST-ONLY overrides of the core's configuration (the simulator draws preVote,
   * checkQuorum, flow-control limits and the core's own testing knobs per seed). Spread last, so
   * they win over the values derived from `limits`. Production leaves it unset.
   */
  raft?: Partial<Omit<RaftConfigInput, 'id' | 'storage' | 'random' | 'applied'>>;
}

/**
 * ReplicaTestingKnobs: TEST-ONLY switches, each bringing back one defect so that a test or the
 * simulator can show it is caught. Nothing outside tests sets them.
 */
export interface ReplicaTestingKnobs {
  /**
   * skipCatchUpOnEntry: client entry points (readBarrier, propose, proposeConfChange,
   * transferLeadership) no longer deliver the ticks that elapsed before consulting the lease or
   * the role. A leader resumed from a pause then runs queued client reads before its timers and
   * serves them on a lease that expired while it was stopped (defect a of issue 11).
   */
  skipCatchUpOnEntry?: boolean;
  /**
   * ackBeforeDurable: a Ready's messages (a follower's append responses, votes) are sent when its
   * persist starts instead of once it is durable. A node that crashes with the write lost has then
   * acknowledged entries or a vote it no longer holds (the rule of issue 12's pipelined Ready loop).
   */
  ackBeforeDurable?: boolean;
  /**
   * muteWhileInFlight: nothing leaves while a persist is pending (the loop before
   * RawNode.takeMessagesInFlight): a follower with a slow fsync answers no heartbeat for its
   * duration, and its leader's CheckQuorum steps down. For the test that shows the difference.
   */
  muteWhileInFlight?: boolean;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** encodeMembersContext / decodeMembersContext: addresses carried by a ConfChange. */
export function encodeMembersContext(members: Record<number, MemberAddresses>): Uint8Array {
  return encoder.encode(JSON.stringify(members));
}
export function decodeMembersContext(context: Uint8Array): Record<number, MemberAddresses> {
  if (context.length === 0) return {};
  try {
    return JSON.parse(decoder.decode(context)) as Record<number, MemberAddresses>;
  } catch {
    return {};
  }
}

/**
 * retryableCoreRefusal: the core refuses a proposal it did not append with a plain ChardError BUSY
 * (uncommitted tail at its limit) or PROPOSAL_DROPPED (leadership transfer, leader being removed).
 * Both mean "not now": callers retry RemoteErrors only, so they are raised as RemoteErrors.
 */
function retryableCoreRefusal(error: unknown): unknown {
  if (error instanceof ChardError && !(error instanceof RemoteError) && (error.code === ErrorCode.Busy || error.code === ErrorCode.ProposalDropped)) {
    return new RemoteError(error.code, error.message, { cause: error });
  }
  return error;
}

/** validateLimits: every numeric limit is a positive integer (a 0 would stall or spin the Ready loop). */
function validateLimits(limits: ReplicaLimits): ReplicaLimits {
  for (const [name, value] of Object.entries(limits)) {
    if (name === 'readOnlyOption') continue;
    if (typeof value !== 'number' || !Number.isSafeInteger(value) || value <= 0) {
      throw new UsageError(ErrorCode.InvalidArgument, `replica limit ${name} must be a positive integer (got ${String(value)})`);
    }
  }
  return limits;
}

function isEmptyReady(rd: Ready): boolean {
  return (
    rd.softState === undefined &&
    rd.hardState === undefined &&
    rd.entries.length === 0 &&
    rd.snapshotChunks.length === 0 &&
    rd.snapshot === undefined &&
    rd.committedEntries.length === 0 &&
    rd.messagesEarly.length === 0 &&
    rd.messages.length === 0 &&
    rd.readStates.length === 0 &&
    rd.snapshotWanted !== true
  );
}

export class Replica {
  readonly id: NodeId;
  readonly raw: RawNode;
  readonly limits: ReplicaLimits;
  private readonly store: ReplicaStore;
  private readonly transport: Transport;
  private readonly scheduler: Scheduler;
  private readonly ticker: Ticker;
  private readonly proposals: ProposalWaiters<Uint8Array>;
  private readonly reads: ReadWaiters;
  private readonly counters: Counters | undefined;
  private readonly logger: ReplicaOptions['logger'];
  private readonly onApplied: ReplicaOptions['onApplied'];
  private tickTimer: Timer | undefined;
  private readyScheduled = false;
  /**
   * readyInFlight: a Ready was taken and is not yet advanced: a synchronous persist deferred by
   * one turn, or an asynchronous one not yet durable. No other Ready is taken meanwhile.
   */
  private readyInFlight = false;
  /** persistsAsync: the store's persist answered with a promise once (then it is written to at once). */
  private persistsAsync = false;
  private closed = false;
  private failure: ReplicaFailure | undefined;
  private lastExpireMs = 0;
  /** leaderWatchers: callbacks of leaderChange(), each waiting for the leader to stop being `from`. */
  private readonly leaderWatchers = new Set<{ from: NodeId; notify: () => void }>();
  /** stateWatchers: callbacks of waitUntil(), run after every role/leader change and on close. */
  private readonly stateWatchers = new Set<() => void>();
  private appliedSinceCompaction = 0;
  private appliedBytesSinceCompaction = 0;
  /** compacting: a compactLog (or, for a store without it, a snapshot) is in flight. */
  private compacting = false;
  /** snapshotting: a snapshot asked for by raft (Ready.snapshotWanted) is being made. */
  private snapshotting = false;
  private leaderSince = 0;
  /** removed: this node applied a configuration without itself. */
  removed = false;
  private readonly readPrefix: string;
  private readonly testing: ReplicaTestingKnobs;
  /** applyCost: the store's measure of one entry's apply work (block rows), if it has one. */
  private readonly applyCost: ((entry: Entry) => number) | undefined;

  constructor(options: ReplicaOptions) {
    this.id = options.id;
    this.store = options.store;
    this.applyCost = options.store.applyCost?.bind(options.store);
    this.transport = options.transport;
    this.scheduler = options.scheduler;
    this.counters = options.counters;
    this.logger = options.logger;
    this.onApplied = options.onApplied;
    this.testing = options.testing ?? {};
    this.limits = validateLimits({ ...defaultReplicaLimits, ...options.limits });
    this.ticker = new Ticker(this.scheduler, this.limits.tickIntervalMs);
    this.proposals = new ProposalWaiters(this.limits.proposalsInflightMax);
    this.reads = new ReadWaiters(this.limits.readsInflightMax);
    this.readPrefix = `${this.id}-${options.random.int(2 ** 31)}`;
    this.raw = new RawNode({
      id: this.id,
      storage: this.store.logStorage,
      random: options.random,
      applied: this.store.appliedIndex(),
      electionTimeoutTicks: this.limits.electionTimeoutTicks,
      heartbeatIntervalTicks: this.limits.heartbeatIntervalTicks,
      leaseDriftTicks: Math.min(this.limits.electionTimeoutTicks - 1, Math.ceil(leaseDriftMs / this.limits.tickIntervalMs)),
      readOnlyOption: this.limits.readOnlyOption,
      checkQuorum: true,
      preVote: true,
      appendBytesMax: this.limits.appendBytesMax,
      snapshotChunkBytes: this.limits.snapshotChunkBytes,
      committedBytesPerReadyMax: this.limits.applyBytesPerTurnMax,
      ...options.raft,
    });
    for (const [id, addresses] of this.store.members()) if (id !== this.id) this.transport.addPeer(id, addresses.raft);
    this.transport.onMessage((m) => this.receive(m));
    this.transport.onUnreachable((peer) => {
      if (this.halted) return;
      this.raw.reportUnreachable(peer);
      this.schedule();
    });
  }

  start(): void {
    assert(this.tickTimer === undefined, 'replica started twice');
    this.tickTimer = this.scheduler.every(this.limits.tickIntervalMs, () => this.onTick());
    this.schedule();
  }

  private onTick(): void {
    if (this.halted) return;
    this.catchUpTicks();
    const now = this.scheduler.now();
    // Deadlines are seconds long: scanning the waiters every tick would be wasted work.
    if (now - this.lastExpireMs >= expireEveryMs) {
      this.lastExpireMs = now;
      this.proposals.expire(now);
      this.reads.expire(now);
    }
    this.reads.retryInFlight(now, this.limits.tickIntervalMs * this.limits.electionTimeoutTicks);
    this.issueReadIndex();
    this.schedule();
  }

  /**
   * catchUpTicks: deliver the ticks that elapsed since the last call. A LEADER gets every one, so
   * its lease and CheckQuorum see real time (a paused leader must not serve a lease read on time
   * that did not pass for the others). A follower or candidate that stalled (a long fsync, a
   * snapshot, GC) gets at most `stalledFollowerMsMax` of ticks: the heartbeats that queued up while it
   * was stalled are handled before it may time out, instead of it calling an election against a
   * healthy leader. Counting less time only delays a follower's election and prolongs its vote
   * refusal (the lease side), so it never weakens safety.
   */
  private catchUpTicks(): number {
    const due = this.ticker.due();
    if (due === 0) return 0;
    const stalledTicksMax = Math.max(1, Math.floor(stalledFollowerMsMax / this.limits.tickIntervalMs));
    const ticks = this.raw.basicStatus().role === 'leader' ? due : Math.min(due, stalledTicksMax);
    if (ticks < due) this.counters?.inc('raft.ticks_dropped_after_stall', due - ticks);
    for (let i = 0; i < ticks; i++) this.raw.tick();
    return ticks;
  }

  /**
   * enter: the first step of every client entry point that consults the lease or the role. After
   * a pause, Node runs the I/O callbacks that queued up (client reads, proposals) BEFORE the tick
   * timer, so without this a deposed leader would check its lease against a tick count from before
   * the pause and serve a stale read. Ticks that produced work (heartbeats, a step-down) get a Ready.
   */
  private enter(): void {
    if (this.testing.skipCatchUpOnEntry === true) return;
    if (this.catchUpTicks() > 0) this.schedule();
  }

  private receive(m: Message): void {
    if (this.halted) return;
    // Catch up on ticks first: a process that was paused must see elapsed time before messages.
    this.catchUpTicks();
    try {
      this.raw.step(m);
    } catch (error) {
      this.counters?.inc('raft.message.refused');
      this.logger?.warn({ err: String(error), type: m.type, from: m.from }, 'refused peer message');
      return;
    }
    this.schedule();
  }

  /** schedule: handle Readys soon, once per turn of the event loop (group commit). */
  private schedule(): void {
    if (this.readyScheduled || this.halted) return;
    this.readyScheduled = true;
    this.scheduler.soon(() => {
      this.readyScheduled = false;
      this.handleReadys();
    });
  }

  /**
   * handleReadys: one Ready at a time. The leader's messagesEarly (its appends and heartbeats)
   * leave first, then the Ready is persisted (persistReady). A synchronous store blocks the event
   * loop on its fsync: when a Ready has messagesEarly and must be synced, the persist and the rest
   * continue in the next turn of the event loop, after the transport has written the appends to
   * the sockets, so that the followers fsync their copies while the leader fsyncs its own. An
   * asynchronous store is written to at once and the Ready stays in flight until the write is
   * durable; meanwhile receive(), propose() and the ticks keep stepping the core, and the loop
   * resumes when the promise settles (see the file comment).
   *
   * Apply work is bounded per turn: one Ready per turn carries committed entries, at most
   * applyEntriesPerTurnMax of them and applyBytesPerTurnMax of bytes (one entry at least); the
   * Readys after it in the same turn carry none (they still persist and send). When only committed
   * entries remain, the loop yields (scheduler.soon), so the peer messages, client reads and ticks
   * waiting in the event loop run between two slices of a long committed backlog. A Ready is
   * advanced only after all of its committed entries are applied.
   */
  private handleReadys(): void {
    if (this.readyInFlight && !this.halted) {
      // A persist is pending: heartbeat responses, ReadIndex traffic and a leader's replication go
      // out now (RawNode.takeMessagesInFlight); votes and append responses wait for the next Ready.
      const early = this.testing.muteWhileInFlight === true ? [] : this.raw.takeMessagesInFlight();
      if (early.length > 0) this.transport.send(early);
      return;
    }
    let rounds = 0;
    let appliedThisTurn = false;
    while (!this.halted && !this.readyInFlight && this.raw.hasReady() && rounds++ < 64) {
      const rd = this.raw.ready(
        appliedThisTurn
          ? { committedEntriesMax: 0 }
          : {
              committedEntriesMax: this.limits.applyEntriesPerTurnMax,
              committedBytesMax: this.limits.applyBytesPerTurnMax,
              ...(this.applyCost !== undefined ? { committedCost: { max: this.limits.applyRowsPerTurnMax, cost: this.applyCost } } : {}),
            },
      );
      if (rd.committedEntries.length > 0) appliedThisTurn = true;
      else if (appliedThisTurn && isEmptyReady(rd)) {
        // Only committed entries wait: they are the next turn's slice.
        this.raw.advance();
        this.counters?.inc('raft.apply_yielded');
        break;
      }
      if (rd.messagesEarly.length > 0) this.transport.send(rd.messagesEarly);
      if (rd.messagesEarly.length > 0 && rd.mustSync && !this.persistsAsync) {
        this.readyInFlight = true;
        this.scheduler.soon(() => {
          this.readyInFlight = false;
          if (this.halted) return;
          this.persistReady(rd);
          this.schedule();
        });
        return;
      }
      this.persistReady(rd);
    }
    if (!this.halted && !this.readyInFlight && this.raw.hasReady()) this.schedule();
  }

  /**
   * persistReady: hand the Ready to the store. A synchronous persist is durable on return and the
   * Ready is finished at once; a promise keeps it in flight until it settles (onDurable,
   * onPersistFailed). An exception of a synchronous persist propagates (the process dies, as on
   * any fsync it cannot complete).
   */
  private persistReady(rd: Ready): void {
    if (this.testing.ackBeforeDurable === true && rd.messages.length > 0) {
      this.transport.send(rd.messages);
      rd.messages = [];
    }
    const started = this.scheduler.now();
    const pending = this.store.persist(rd);
    if (pending === undefined) {
      this.countPersist(rd, started);
      this.finishReady(rd, false);
      return;
    }
    this.persistsAsync = true;
    this.readyInFlight = true;
    // Committed entries that were durable here before this Ready (below its entries; no snapshot
    // in it) need not wait for its write: applied now, their clients get their answers while the
    // log fsyncs the next batch. A batch with a ConfChange waits (the configuration then changes
    // together with the core's applied index, at advance()).
    const appliedEarly = this.appliesEarly(rd);
    pending.then(
      () => this.onDurable(rd, started, appliedEarly),
      (error: unknown) => this.onPersistFailed(rd, error),
    );
    if (appliedEarly) this.applyEntries(rd.committedEntries);
  }

  /** appliesEarly: the Ready's committed entries are all durable here already and hold no ConfChange. */
  private appliesEarly(rd: Ready): boolean {
    const committed = rd.committedEntries;
    if (committed.length === 0 || rd.snapshot !== undefined) return false;
    if (rd.entries.length > 0 && committed[committed.length - 1]!.index >= rd.entries[0]!.index) return false;
    return committed.every((entry) => entry.type !== EntryType.ConfChange);
  }

  /** onDurable: an asynchronous persist completed: finish the Ready and take the next one. */
  private onDurable(rd: Ready, started: number, appliedEarly: boolean): void {
    this.readyInFlight = false;
    if (this.halted) return;
    try {
      this.countPersist(rd, started);
      this.finishReady(rd, appliedEarly);
    } catch (error) {
      // A defect (not a storage failure): raised on the scheduler, as it would be from a
      // synchronous persist's turn, instead of vanishing in a promise reaction.
      this.scheduler.soon(() => {
        throw error;
      });
      return;
    }
    this.schedule();
  }

  /** onPersistFailed: the store could not make the Ready durable: halt (never retried). */
  private onPersistFailed(rd: Ready, error: unknown): void {
    this.readyInFlight = false;
    if (this.closed) {
      this.logger?.info({ err: String(error) }, 'persist in flight at close failed');
      return;
    }
    if (this.failure !== undefined) return;
    const first = rd.entries.length > 0 ? rd.entries[0]!.index : 0;
    const last = rd.entries.length > 0 ? rd.entries[rd.entries.length - 1]!.index : 0;
    this.fail('persist', error, first, last);
  }

  private countPersist(rd: Ready, started: number): void {
    if (!rd.mustSync) return;
    this.counters?.inc('store.fsync');
    this.counters?.inc('store.entries', rd.entries.length);
    this.counters?.observe('store.persist_ms', this.scheduler.now() - started);
  }

  /** finishReady: the Ready is durable: install its snapshot, send, apply (unless done early), advance. */
  private finishReady(rd: Ready, appliedEarly: boolean): void {
    if (rd.snapshot !== undefined) {
      this.store.installSnapshot(rd.snapshot);
      this.counters?.inc('snapshot.installed');
      this.logger?.info({ index: rd.snapshot.index }, 'installed snapshot');
      this.refreshPeers();
    }
    if (rd.messages.length > 0) this.transport.send(rd.messages);
    // A failed apply halts the replica with this Ready not advanced: the core's applied index stays
    // what the store holds (see fail()).
    if (!appliedEarly && rd.committedEntries.length > 0 && !this.applyEntries(rd.committedEntries)) return;
    for (const rs of rd.readStates) this.reads.readState(rs.requestContext, rs.index);
    if (rd.softState !== undefined) this.onSoftState(rd.softState.role, rd.softState.leader);
    this.raw.advance();
    this.reads.applied(this.raw.basicStatus().applied);
    this.issueReadIndex();
    if (rd.snapshotWanted === true) this.snapshotOnDemand();
    this.maybeCompact();
  }

  /** applyEntries: apply one slice; false if the store failed (the replica is then halted). */
  private applyEntries(entries: Entry[]): boolean {
    let outcomes: Map<number, ApplyOutcome>;
    try {
      outcomes = this.store.apply(entries, (cc, index) => this.applyConfChange(cc, index));
    } catch (error) {
      this.fail('apply', error, entries[0]!.index, entries[entries.length - 1]!.index);
      return false;
    }
    for (const entry of entries) {
      this.proposals.applied(entry.index, entry.term, () => {
        const outcome = outcomes.get(entry.index);
        if (outcome === undefined) return new Uint8Array(0);
        if (outcome.ok) return outcome.value;
        return new UsageError(outcome.code, outcome.message);
      });
    }
    const last = entries[entries.length - 1]!.index;
    this.appliedSinceCompaction += entries.length;
    for (const entry of entries) this.appliedBytesSinceCompaction += entry.data.length;
    this.counters?.inc('raft.applied', entries.length);
    this.counters?.set('raft.applied_index', last);
    this.onApplied?.(last);
    return true;
  }

  /**
   * fail: the state machine could not apply committed entries (stage 'apply': a CorruptError from
   * a rotted block, an I/O error), or the store could not make a Ready durable (stage 'persist':
   * a failed fsync, which is never retried — the kernel may have dropped the pages it failed to
   * write). Throwing on would crash the process and, on restart, apply the same entry again: a
   * crash loop. Instead the replica halts, as a crash-stopped raft member does (always safe): no
   * more persists, applies, messages or ticks, so it never campaigns or serves again in this
   * process. Waiters fail with a retryable UNAVAILABLE; a leader first hands its leadership to a
   * voter that holds its whole log (TimeoutNow), otherwise its silence makes the followers elect a
   * new leader within an election timeout. status() reports `halted` (and `stateCorrupt` for an
   * apply failure); `failed` carries the details for the repair (restore from a peer's snapshot
   * on restart).
   */
  private fail(stage: ReplicaFailure['stage'], error: unknown, firstIndex: number, lastIndex: number): void {
    const message = error instanceof Error ? error.message : String(error);
    const code = error instanceof ChardError ? error.code : undefined;
    this.failure = { stage, message, code, firstIndex, lastIndex, at: this.scheduler.now() };
    this.counters?.inc(stage === 'apply' ? 'raft.apply_failed' : 'raft.persist_failed');
    this.logger?.error(
      { err: message, code, firstIndex, lastIndex, appliedIndex: this.store.appliedIndex() },
      stage === 'apply' ? 'applying committed entries failed: this replica stops serving and steps down' : 'making entries durable failed: this replica stops serving and steps down',
    );
    if (this.isLeaderInCore()) this.handOverOnFailure();
    this.tickTimer?.cancel();
    const unavailable = () => this.failedError();
    this.proposals.failAll(unavailable);
    this.reads.failAll(unavailable);
    for (const watcher of this.leaderWatchers) watcher.notify();
    this.leaderWatchers.clear();
    for (const check of [...this.stateWatchers]) check();
  }

  /** handOverOnFailure: TimeoutNow to the voter whose log matches ours to the end, if there is one. */
  private handOverOnFailure(): void {
    const status = this.raw.status();
    for (const [id, pr] of status.progress) {
      if (id === this.id || pr.learner || pr.match !== status.lastIndex) continue;
      // Built here because the core's Ready loop is halted; a TimeoutNow only makes `id` campaign
      // at once, and it wins only with an up-to-date log, so sending it is always safe.
      this.transport.send([message({ type: MessageType.TimeoutNow, from: this.id, to: id, term: status.term })]);
      this.logger?.warn({ to: id }, 'handed leadership over after the apply failure');
      return;
    }
  }

  private failedError(): RemoteError {
    const f = this.failure;
    const what = f?.stage === 'persist' ? 'making entries durable' : 'applying entries';
    return new RemoteError(ErrorCode.Unavailable, `node ${this.id} stopped serving: ${what} ${f?.firstIndex}..${f?.lastIndex} failed (${f?.message}); retry at another node`);
  }

  /**
   * failed: why this replica halted (see fail()), or undefined while it is healthy. The restart-time
   * repair of the block store keys on it (also reported as status().halted, and for an apply
   * failure as status().stateCorrupt).
   */
  get failed(): ReplicaFailure | undefined {
    return this.failure;
  }

  /** halted: closed, or stopped by a failed apply or persist. */
  private get halted(): boolean {
    return this.closed || this.failure !== undefined;
  }

  private applyConfChange(cc: ConfChange, index: number): ConfState {
    const members = decodeMembersContext(cc.context);
    for (const change of cc.changes) {
      if (change.type === 'remove-node') continue;
      const addresses = members[change.nodeId];
      if (addresses !== undefined) {
        this.store.setMember(change.nodeId, addresses);
        if (change.nodeId !== this.id) this.transport.addPeer(change.nodeId, addresses.raft);
      }
    }
    const known = [...this.store.members().keys()];
    const cs = this.raw.applyConfChange(cc);
    // A removed voter stays in the outgoing half of the joint configuration until the leave-joint
    // entry commits, and that entry needs its acknowledgement: a member leaves the store's member
    // list only once it is in no part of the configuration. Its link (address) stays in the
    // transport: a replica that lags behind a later re-addition of that node — which may lead by
    // then — must still be able to answer it, or neither can make progress (the simulator's seeds
    // 13 and 1487). Raft sends nothing to non-members, so a kept address costs no traffic.
    const inConfig = new Set([...cs.voters, ...cs.votersOutgoing, ...cs.learners, ...cs.learnersNext]);
    if (inConfig.size > 0) {
      for (const id of known) if (!inConfig.has(id)) this.store.setMember(id, undefined);
    }
    const member = cs.voters.includes(this.id) || cs.votersOutgoing.includes(this.id) || cs.learners.includes(this.id) || cs.learnersNext.includes(this.id);
    if (cs.voters.length > 0 && member === this.removed) {
      // A node that restarts with old data replays its own removal before its re-addition.
      this.removed = !member;
      if (this.removed) this.logger?.warn({ index }, 'this node was removed from the cluster');
      else this.logger?.info({ index }, 'this node is a member again');
    }
    this.counters?.inc('raft.conf_change');
    return cs;
  }

  private refreshPeers(): void {
    for (const [id, addresses] of this.store.members()) if (id !== this.id) this.transport.addPeer(id, addresses.raft);
  }

  private onSoftState(role: string, leader: NodeId): void {
    this.counters?.set('raft.leader', leader);
    this.logger?.info({ role, leader, term: this.raw.basicStatus().term }, 'role changed');
    if (role === 'leader') {
      this.leaderSince = this.scheduler.now();
      this.counters?.inc('raft.became_leader');
    } else {
      // Outcome unknown: the entries may still commit under the next leader. The client retries
      // with the same session sequence and the session table answers it without applying twice.
      this.proposals.failAll(() => new NotLeaderError(leader, this.addressOf(leader)?.admin));
    }
    // A ReadIndex sent to the old leader will not be answered by the new one: queue it again so
    // finishReady issues it (after advance) now rather than after an election timeout.
    this.reads.retryInFlight(this.scheduler.now(), 0);
    for (const watcher of this.leaderWatchers) {
      if (leader !== watcher.from) {
        this.leaderWatchers.delete(watcher);
        watcher.notify();
      }
    }
    for (const check of [...this.stateWatchers]) check();
  }

  /**
   * waitUntil: resolves true as soon as `condition()` holds (checked now, after every role or
   * leader change, and on close), or false at `deadline` (scheduler time). No polling.
   */
  private waitUntil(condition: () => boolean, deadline: number): Promise<boolean> {
    if (condition()) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const finish = (result: boolean) => {
        this.stateWatchers.delete(check);
        timer.cancel();
        resolve(result);
      };
      const check = () => {
        if (condition()) finish(true);
        else if (this.halted) finish(false);
      };
      const timer = this.scheduler.after(Math.max(0, deadline - this.scheduler.now()), () => finish(condition()));
      this.stateWatchers.add(check);
    });
  }

  /**
   * leaderChange: resolves once this node no longer takes `from` for the leader (another leader,
   * none, or this node closing). A follower uses it to stop waiting on a request forwarded to a
   * leader that lost its leadership while paused or cut off (its call would hang until its deadline)
   * and retry at the new one. `cancel` forgets the watcher.
   */
  leaderChange(from: NodeId): { promise: Promise<void>; cancel(): void } {
    let watcher: { from: NodeId; notify: () => void } | undefined;
    const promise = new Promise<void>((resolve) => {
      watcher = { from, notify: resolve };
    });
    if (this.halted || this.raw.basicStatus().leader !== from) {
      watcher!.notify();
      return { promise, cancel: () => {} };
    }
    this.leaderWatchers.add(watcher!);
    return { promise, cancel: () => this.leaderWatchers.delete(watcher!) };
  }

  /**
   * maybeCompact: every compactEveryEntries (or compactEveryLogBytes) applied, compact the log
   * behind the store's durable state (ReplicaStore.compactLog), one at a time. On a leader the
   * store keeps the log for followers that lag, within its budget (compactionHolds), so that a
   * restarted node, or one that just installed a snapshot, catches up from the log. A store
   * without compactLog takes a snapshot instead.
   */
  private maybeCompact(): void {
    if (this.compacting) return;
    if (this.appliedSinceCompaction < this.limits.compactEveryEntries && this.appliedBytesSinceCompaction < this.limits.compactEveryLogBytes) return;
    this.appliedSinceCompaction = 0;
    this.appliedBytesSinceCompaction = 0;
    const compactLog = this.store.compactLog;
    if (compactLog === undefined) {
      this.takeSnapshot(true);
      return;
    }
    const started = this.scheduler.now();
    this.compacting = true;
    compactLog
      .call(this.store, () => this.compactionHolds())
      .then(
        (index) => {
          if (index === undefined) return;
          this.counters?.inc('log.compacted');
          this.counters?.observe('log.compact_ms', this.scheduler.now() - started);
          this.logger?.info({ index, ms: Math.round(this.scheduler.now() - started) }, 'log compacted');
        },
        (error: unknown) => {
          this.counters?.inc('log.compact_failed');
          this.logger?.error({ err: String(error) }, 'log compaction failed');
        },
      )
      .finally(() => {
        this.compacting = false;
      });
  }

  /**
   * compactionHolds: what a compaction must keep now (CompactionHolds). On a leader, one hold per
   * follower behind the applied index: a follower receiving a snapshot holds the snapshot's index
   * (it continues from the entries after it), any other its match; `active` when it was heard
   * from within an election timeout (raft's recentActive), so that a follower that is down holds
   * only within the store's smaller budget.
   */
  private compactionHolds(): CompactionHolds {
    const upTo = this.raw.basicStatus().applied;
    const retainFor: CompactionHolds['retainFor'] = [];
    if (this.raw.basicStatus().role === 'leader') {
      const snapshotIndex = this.store.logStorage.snapshot().index;
      for (const [id, pr] of this.raw.status().progress) {
        if (id === this.id) continue;
        const match = pr.state === 'snapshot' ? snapshotIndex : pr.match;
        if (match < upTo) retainFor.push({ match, active: pr.recentActive });
      }
    }
    return { upTo, retainFor };
  }

  /** snapshotOnDemand: raft wants a snapshot for a follower whose entries are compacted away. */
  private snapshotOnDemand(): void {
    if (this.snapshotting) return;
    this.counters?.inc('snapshot.wanted');
    this.takeSnapshot(false);
  }

  /**
   * takeSnapshot: a snapshot of the applied state, copied off the event loop when the store can
   * (heartbeats keep flowing while a large state is copied). `periodic`: instead of compactLog.
   */
  private takeSnapshot(periodic: boolean): void {
    const started = this.scheduler.now();
    const done = (metadata: SnapshotMetadata | undefined) => {
      if (metadata === undefined) return;
      this.counters?.inc('snapshot.created');
      this.counters?.observe('snapshot.create_ms', this.scheduler.now() - started);
      this.logger?.info({ index: metadata.index, bytes: metadata.sizeBytes, ms: Math.round(this.scheduler.now() - started), onDemand: !periodic }, 'snapshot created');
    };
    const flag = periodic ? 'compacting' : 'snapshotting';
    if (this.store.createSnapshotAsync === undefined) {
      done(this.store.createSnapshot());
      return;
    }
    this[flag] = true;
    let copy: Promise<SnapshotMetadata | undefined>;
    try {
      copy = this.store.createSnapshotAsync();
    } catch (error) {
      copy = Promise.reject(error); // (e.g. the commit before the copy failed): reported below, the flag cleared
    }
    copy
      .then(done, (error: unknown) => {
        this.counters?.inc('snapshot.failed');
        this.logger?.error({ err: String(error) }, 'snapshot failed');
      })
      .finally(() => {
        this[flag] = false;
      });
  }

  private issueReadIndex(): void {
    if (this.halted) return;
    const status = this.raw.basicStatus();
    if (status.leader === None && status.role !== 'leader') return;
    const context = this.reads.nextRequest(this.scheduler.now(), this.readPrefix);
    if (context === undefined) return;
    try {
      this.raw.readIndex(context);
    } catch (error) {
      if (!(error instanceof ChardError)) throw error;
      this.reads.retryInFlight(this.scheduler.now(), 0);
    }
    this.schedule();
  }

  // ---------------------------------------------------------------- operations

  /** snapshotIndex: index of the latest durable snapshot. */
  snapshotIndex(): number {
    return this.store.logStorage.snapshot().index;
  }

  /** snapshotBytes: size of the latest durable snapshot. */
  snapshotBytes(): number {
    return this.store.logStorage.snapshot().sizeBytes;
  }

  /** closing: close() was called; nothing new is accepted. */
  get closing(): boolean {
    return this.closed;
  }

  addressOf(id: NodeId): MemberAddresses | undefined {
    return this.store.members().get(id);
  }

  /** peerIds: the other members this node knows an address for (ascending). */
  peerIds(): NodeId[] {
    return [...this.store.members().keys()].filter((id) => id !== this.id).sort((a, b) => a - b);
  }

  /** leaderId: the leader this node knows (None once it halted: it no longer follows anyone). */
  leaderId(): NodeId {
    return this.failure !== undefined ? None : this.raw.basicStatus().leader;
  }

  /** isLeader: this node leads and serves (false once it halted, even before the others notice). */
  isLeader(): boolean {
    return this.failure === undefined && this.isLeaderInCore();
  }

  private isLeaderInCore(): boolean {
    return this.raw.basicStatus().role === 'leader';
  }

  notLeaderError(): NotLeaderError {
    const leader = this.raw.basicStatus().leader;
    return new NotLeaderError(leader, leader === None ? undefined : this.addressOf(leader)?.admin);
  }

  /**
   * propose: replicate `data` and resolve with the state machine's result once applied here.
   * Refusals are decided before the entry is appended (an appended entry may commit, so refusing
   * it afterwards would make the client's retry land twice). BUSY and PROPOSAL_DROPPED are
   * RemoteErrors: the caller backs off and retries.
   */
  propose(data: Uint8Array): Promise<Uint8Array> {
    return this.proposeWith(() => this.raw.propose(data), true);
  }

  /** proposeConfChange: a membership change; resolves once applied here. */
  proposeConfChange(cc: ConfChange): Promise<Uint8Array> {
    return this.proposeWith(() => this.raw.proposeConfChange(cc), false);
  }

  private proposeWith(append: () => number, count: boolean): Promise<Uint8Array> {
    if (this.closed) return Promise.reject(new RemoteError(ErrorCode.Closed, 'node is shutting down'));
    if (this.failure !== undefined) return Promise.reject(this.failedError());
    this.enter();
    if (!this.isLeader()) return Promise.reject(this.notLeaderError());
    const refusal = this.proposals.refusal();
    if (refusal !== undefined) {
      this.counters?.inc('raft.proposal_refused.busy');
      return Promise.reject(refusal);
    }
    let index: number;
    try {
      index = append();
    } catch (error) {
      return Promise.reject(retryableCoreRefusal(error));
    }
    const proposedAt = this.scheduler.now();
    const waiter = this.proposals.add(index, this.raw.basicStatus().term, proposedAt + this.limits.requestTimeoutMs);
    if (count) {
      this.counters?.inc('raft.proposed');
      if (this.counters) void waiter.then(() => this.counters?.observe('raft.propose_ms', this.scheduler.now() - proposedAt), () => undefined);
    }
    this.schedule();
    return waiter;
  }

  /**
   * readBarrier: resolves once the local state machine reflects every write acknowledged before
   * the call (ReadIndex, or the lease on a leader). Works on followers (forwarded ReadIndex).
   */
  readBarrier(): Promise<void> {
    if (this.closed) return Promise.reject(new RemoteError(ErrorCode.Closed, 'node is shutting down'));
    if (this.failure !== undefined) return Promise.reject(this.failedError());
    this.enter();
    if (this.raw.basicStatus().leader === None) return Promise.reject(this.notLeaderError());
    const waiter = this.reads.wait(this.scheduler.now() + this.limits.requestTimeoutMs);
    this.issueReadIndex();
    return waiter;
  }

  transferLeadership(to: NodeId): void {
    if (this.failure !== undefined) throw this.failedError();
    this.enter();
    if (!this.isLeader()) throw this.notLeaderError();
    this.raw.transferLeadership(to);
    this.schedule();
  }

  /**
   * status: the core's status, plus `halted` (the replica stopped on a failed apply or persist,
   * see `failed`) and `stateCorrupt` (halted on a failed apply).
   */
  status(): Status & { removed: boolean; leaderForMs: number; halted: boolean; stateCorrupt: boolean } {
    const core = this.raw.status();
    const halted = this.failure !== undefined;
    return {
      ...core,
      ...(halted ? { role: 'follower' as const, leader: None, leaseValid: false, applied: this.store.appliedIndex() } : {}),
      removed: this.removed,
      leaderForMs: this.isLeader() ? this.scheduler.now() - this.leaderSince : 0,
      halted,
      stateCorrupt: this.failure?.stage === 'apply',
    };
  }

  /** waitForLeader: resolves with the leader id once one is known (bounded by timeoutMs). */
  async waitForLeader(timeoutMs: number): Promise<NodeId> {
    const known = await this.waitUntil(() => this.leaderId() !== None, this.scheduler.now() + timeoutMs);
    if (known) return this.leaderId();
    throw new RemoteError(ErrorCode.Timeout, `no leader within ${timeoutMs} ms`);
  }

  /** isConfEntry: helper for callers inspecting entries. */
  static isConfEntry(entry: Entry): boolean {
    return entry.type === EntryType.ConfChange;
  }

  static decodeConfChange = decodeConfChange;

  /**
   * close: stop ticking and serving. When `transfer` and this node leads, first hand leadership
   * to the most caught-up voter and wait (bounded) for it to take over.
   */
  async close(options: { transfer?: boolean; transferTimeoutMs?: number } = {}): Promise<void> {
    if (this.closed) return;
    if (options.transfer && this.isLeader()) {
      const status = this.raw.status();
      let best: NodeId = None;
      let bestMatch = -1;
      for (const [id, pr] of status.progress) {
        if (id === this.id || pr.learner) continue;
        if (pr.match > bestMatch) {
          best = id;
          bestMatch = pr.match;
        }
      }
      if (best !== None) {
        // The core gives one attempt an election timeout; a target behind a deep queue of 1 MiB
        // writes needs several (as NodeAdmin.leaderTransfer does): re-issue until the deadline.
        const deadline = this.scheduler.now() + (options.transferTimeoutMs ?? 3000);
        const attemptMs = this.limits.tickIntervalMs * this.limits.electionTimeoutTicks;
        try {
          while (this.isLeader() && this.scheduler.now() < deadline) {
            if (this.raw.status().leadTransferee === None) this.transferLeadership(best);
            await this.waitUntil(() => !this.isLeader(), Math.min(deadline, this.scheduler.now() + attemptMs));
          }
        } catch (error) {
          this.logger?.warn({ err: String(error) }, 'leadership transfer on shutdown failed');
        }
      }
    }
    this.closed = true;
    this.tickTimer?.cancel();
    const closing = () => new RemoteError(ErrorCode.Closed, 'node is shutting down');
    this.proposals.failAll(closing);
    this.reads.failAll(closing);
    for (const watcher of this.leaderWatchers) watcher.notify();
    this.leaderWatchers.clear();
    for (const check of [...this.stateWatchers]) check();
  }
}
