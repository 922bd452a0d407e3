/**
 * simulator: a seeded swarm simulator (TigerBeetle VOPR / FoundationDB Sim2 style) that drives the
 * Replica that ships (src/node/replica.ts) — its Ready loop, ticker, waiters, read barrier and
 * membership handling — not a copy of it.
 *
 * `runSeed(seed, options)` draws a whole run from one seed — cluster size, timeouts, network
 * faults, partitions, crashes (also inside an fsync), pauses (also longer than the election
 * timeout), membership changes, leader transfers, snapshots, client traffic — and runs real
 * Replicas through it in simulated time, calling the checkers (checkers.ts) as facts become
 * observable. The only randomness is SeededRandom, the only clock the SimWorld's: the same seed
 * replays the same run exactly (the trace hash proves it).
 *
 * Wiring: each node is a Replica over a MemoryReplicaStore (memory-store.ts: crash = lose what is
 * not durable), a SimTransport (sim-transport.ts: delay, drop, duplicate, partitions) and a
 * NodeScheduler (sim-scheduler.ts: simulated ms; a paused node runs nothing and, on resume, runs
 * its queued I/O before its timers). Clients call `replica.propose` and `replica.readBarrier`
 * (then read the store) as the node's volume service does; their requests are I/O callbacks of
 * the node they target. After every callback the promise reactions run (as Node drains microtasks
 * after each callback) before the next event.
 *
 * Time: one tick is `tickIntervalMs` (10 ms) of simulated time, a step a quarter of it; delays,
 * fsync times and fault durations are drawn in steps and ticks.
 */

import { ChardError, NotLeaderError } from '../../src/errors.js';
import type { ReadOnlyOption, TestingKnobs } from '../../src/raft/config.js';
import { SeededRandom } from '../../src/raft/random.js';
import { type ConfChange, ConfChangeType, type ConfState, EntryType, type NodeId, type Ready, emptyConfState } from '../../src/raft/types.js';
import { Replica, type ReplicaLimits, encodeMembersContext, type MemberAddresses } from '../../src/node/replica.js';
import { CheckerName, Checkers, type Violation, hashString } from './checkers.js';
import { type Command, MemoryReplicaStore, SessionVerdict, encodeCommand } from './memory-store.js';
import { NodeScheduler, SimCrash, SimWorld } from './sim-scheduler.js';
import { SimNetwork, type SimTransport } from './sim-transport.js';

/** SimKnobs: the raft core's testing knobs plus the Replica's (each restores one defect). */
export interface SimKnobs extends TestingKnobs {
  /** skipCatchUpOnEntry: Replica's propose/readBarrier do not catch up on elapsed ticks first (issue 11 2a). */
  skipCatchUpOnEntry?: boolean;
  /** ackBeforeDurable: Replica sends a Ready's messages (acks, votes) before its persist is durable (issue 12). */
  ackBeforeDurable?: boolean;
}

export interface SimOptions {
  /** ticks: length of the safety phase in ticks (faults on). */
  ticks?: number;
  /** knobs: testing knobs set on every node (each breaks one safety rule). */
  knobs?: SimKnobs;
  /** trace: receives a readable line per event (role changes, faults, client ops, raft decisions). */
  trace?: (line: string) => void;
  /** stopOnViolation: end the run at the first violation (default true). */
  stopOnViolation?: boolean;
  /**
   * drawAs: draw the seed's schedule as if these knobs were on (default: `knobs`). With
   * `knobs` off and `drawAs` set, a run is the control experiment of a knob run.
   */
  drawAs?: SimKnobs;
  /** livenessTimeoutsMax: the liveness phase must succeed within this many election timeouts. */
  livenessTimeoutsMax?: number;
}

export interface SimStats {
  nodes: number;
  ticks: number;
  events: number;
  messagesSent: number;
  messagesDelivered: number;
  crashes: number;
  crashesInFsync: number;
  pauses: number;
  longPauses: number;
  partitions: number;
  confChanges: number;
  transfers: number;
  snapshotsInstalled: number;
  /** snapshotsMade: snapshots a node made (on demand: a follower needed one). */
  snapshotsMade: number;
  compactions: number;
  writesAcked: number;
  readsServed: number;
  leaders: number;
}

export interface SimResult {
  seed: number;
  violations: Violation[];
  /** traceHash: hash of the event trace; equal for two runs of the same seed. */
  traceHash: string;
  stats: SimStats;
  /** config: what the seed drew (for the trace and reports). */
  config: SimConfig;
}

/** SimConfig: everything one seed draws before the run starts. */
export interface SimConfig {
  voters: number;
  learners: number;
  idsMax: number;
  tickIntervalMs: number;
  electionTimeoutTicks: number;
  heartbeatIntervalTicks: number;
  preVote: boolean;
  checkQuorum: boolean;
  readOnlyOption: ReadOnlyOption;
  stepsPerTick: number;
  delayStepsMax: number;
  dropRate: number;
  duplicateRate: number;
  /**
   * asyncPersist: the stores' persist is asynchronous (a log fsynced off the event loop: the
   * Ready stays in flight until it is durable); otherwise synchronous (SQLite's, blocking).
   */
  asyncPersist: boolean;
  /** fsyncStepsMax: a synchronous persist blocks its node's event loop, an asynchronous one is in flight, for up to this many steps. */
  fsyncStepsMax: number;
  faultsPerKiloTick: number;
  /**
   * crashInFsyncRate: chance that a persist is cut by a crash (nothing of it durable; an
   * asynchronous one also when it would complete, then half the time with a prefix of its
   * entries durable: a torn log write).
   */
  crashInFsyncRate: number;
  snapshotChunkBytes: number;
  snapshotChunksInflightMax: number;
  appendBytesMax: number;
  inflightMessagesMax: number;
  /** compactEveryEntries: Replica's log compaction trigger (entries applied since the last one); snapshots are made on demand. */
  compactEveryEntries: number;
  /** retainEntriesMax: log the store keeps for lagging followers at a compaction (entries; 0: none). */
  retainEntriesMax: number;
  clients: number;
  keys: number;
  clientOpRate: number;
  /** clientTimeoutTicks: a client retries elsewhere after this long without an answer. */
  clientTimeoutTicks: number;
  /** isolateLeaderBias: share of faults that isolate the current leader. */
  isolateLeaderBias: number;
  /** longPauseLeaderBias: share of faults that pause the leader for 1.5-4 election timeouts. */
  longPauseLeaderBias: number;
  /** faultDurationTimeouts: crashes last up to this many election timeouts (partitions 1.2x, pauses 0.6x). */
  faultDurationTimeouts: number;
  stateSyncRate: number;
  confChangeRate: number;
  transferRate: number;
}

// ------------------------------------------------------------------------------------------------
// nodes and clients

interface SimNode {
  id: NodeId;
  state: 'up' | 'crashed' | 'paused' | 'stopped';
  store: MemoryReplicaStore;
  replica: Replica | undefined;
  scheduler: NodeScheduler | undefined;
  transport: SimTransport | undefined;
  leaderTerm: number;
  role: string;
}

interface ClientOp {
  kind: 'write' | 'read';
  key: string;
  value: string;
  sequence: number;
  invokedAt: number;
  target: NodeId;
  /** retryAt: time (ms) at which the client gives up on the current attempt and tries again. */
  retryAt: number;
  attempts: number;
  /** timeouts: attempts that got no answer (drives the backoff); redirected: the last one got NOT_LEADER. */
  timeouts: number;
  redirected: boolean;
}

interface Client {
  sessionId: string;
  /** scripted: driven by the liveness phase, not by driveClients. */
  scripted: boolean;
  sequence: number;
  op: ClientOp | undefined;
  leaderHint: NodeId;
}

/** runSeed: runs one seed; see the file comment. Deterministic: same seed, options => same result. */
export function runSeed(seed: number, options: SimOptions = {}): Promise<SimResult> {
  return new Simulation(seed, options).run();
}

function addressesOf(id: NodeId): MemberAddresses {
  return { raft: `sim:${id}`, admin: `sim-admin:${id}`, nbd: `sim-nbd:${id}` };
}

/** drawConfig: what a seed draws (exposed for the trace and the docs). */
export function drawConfig(random: SeededRandom, knobs: SimKnobs | undefined): SimConfig {
  const voters = random.pick([1, 2, 3, 3, 3, 4, 5, 5, 6, 7]);
  let learners = random.chance(0.3) ? 1 + random.int(2) : 0;
  const electionTimeoutTicks = 5 + random.int(11);
  const heartbeatIntervalTicks = 1 + random.int(Math.min(3, Math.floor((electionTimeoutTicks - 1) / 3)));
  let checkQuorum = random.chance(0.8);
  const preVote = random.chance(0.8);
  let lease = checkQuorum && random.chance(0.35);
  let crashInFsyncRate = random.pick([0, 0, 0.01, 0.03]);
  let fsyncStepsMax = random.pick([0, 1, 2, 6]);
  let faultsPerKiloTick = random.pick([5, 15, 30, 60]);
  let voterCount = voters;
  // Knob scenarios: each knob only matters under some conditions; make those conditions common.
  if (knobs?.leaseWithoutQuorum) {
    // A deposed leader serving from a lease it no longer holds: needs lease reads, and clients
    // that find the new leader (and read at the old one) within the overlap.
    checkQuorum = true;
    lease = true;
  }
  if (knobs?.leaderCountsUnpersisted) {
    // The early-counted self vote only escapes before the fsync when it alone is a quorum:
    // a single voter with learners, whose leader crashes between messagesEarly and persist.
    if (random.chance(0.5)) {
      voterCount = 1;
      learners = 1 + random.int(2);
    }
    crashInFsyncRate = Math.max(crashInFsyncRate, 0.05);
    fsyncStepsMax = Math.max(fsyncStepsMax, 6);
  }
  if (knobs?.commitOldTermEntries || knobs?.voteWithoutLogCheck) faultsPerKiloTick = Math.max(faultsPerKiloTick, 60);
  if (knobs?.ackBeforeDurable) {
    // An acknowledgement (or vote) sent before the write is durable is a lie only if the node
    // then crashes with the write lost: asynchronous persists (drawn below) that stay in flight
    // for a while, crashes that cut them, and often.
    crashInFsyncRate = Math.max(crashInFsyncRate, 0.05);
    fsyncStepsMax = Math.max(fsyncStepsMax, 6);
    faultsPerKiloTick = Math.max(faultsPerKiloTick, 60);
  }
  const config: SimConfig = {
    voters: voterCount,
    learners,
    idsMax: voterCount + learners + 2,
    electionTimeoutTicks,
    heartbeatIntervalTicks,
    preVote,
    checkQuorum,
    readOnlyOption: lease ? 'lease' : 'safe',
    tickIntervalMs: 10,
    stepsPerTick: 4,
    delayStepsMax: random.pick([1, 2, 4, 8, 16]),
    dropRate: random.pick([0, 0.01, 0.05, 0.15]),
    duplicateRate: random.pick([0, 0.01, 0.05]),
    asyncPersist: false, // drawn last, below
    fsyncStepsMax,
    faultsPerKiloTick,
    crashInFsyncRate,
    snapshotChunkBytes: random.pick([16, 64, 256, 4096]),
    snapshotChunksInflightMax: 1 + random.int(3),
    appendBytesMax: random.pick([64, 512, 1024 * 1024]),
    inflightMessagesMax: random.pick([1, 4, 256]),
    // A leader that snapshots faster than it can stream one restarts every transfer to a lagging
    // follower (seed 298 with 16 B chunks and a snapshot every 15 entries): the triggers stay
    // above the time one transfer takes.
    compactEveryEntries: random.pick([1_000_000, 200, 40]),
    retainEntriesMax: 0, // drawn last, below
    clients: 1 + random.int(3),
    keys: 1 + random.int(4),
    clientOpRate: random.pick([0.05, 0.2, 0.5]),
    clientTimeoutTicks: 3 * electionTimeoutTicks,
    isolateLeaderBias: 0,
    longPauseLeaderBias: 0.1,
    faultDurationTimeouts: 5,
    stateSyncRate: random.pick([1, 0.5, 0.1]),
    confChangeRate: random.pick([0, 0.005, 0.02]),
    transferRate: random.pick([0, 0.002, 0.01]),
  };
  if (knobs?.leaseWithoutQuorum) {
    config.clients = 3;
    config.clientOpRate = 0.5;
    config.clientTimeoutTicks = Math.max(2, Math.floor(config.electionTimeoutTicks / 2), Math.ceil((2 * config.delayStepsMax) / config.stepsPerTick) + 1);
    config.isolateLeaderBias = 0.5;
    config.dropRate = 0;
    config.crashInFsyncRate = 0;
    config.faultsPerKiloTick = Math.max(config.faultsPerKiloTick, 30);
  }
  if (knobs?.skipCatchUpOnEntry) {
    // A leader paused past its lease that, on resume, answers a client read (queued while it was
    // paused) before any tick or peer message tells it the time: needs lease reads, clients that
    // write at the new leader meanwhile, and long leader pauses.
    config.checkQuorum = true;
    config.readOnlyOption = 'lease';
    config.clients = 3;
    config.clientOpRate = 0.5;
    config.clientTimeoutTicks = 4 * config.electionTimeoutTicks;
    config.longPauseLeaderBias = 0.6;
    config.dropRate = 0;
    config.crashInFsyncRate = 0;
    config.faultsPerKiloTick = Math.max(config.faultsPerKiloTick, 30);
  }
  if (knobs?.commitOldTermEntries) {
    // Figure 8 of the Raft paper needs a new leader's old-term entry to reach a majority ahead of
    // its no-op: one entry per App, one App in flight, and leaders that crash often.
    config.appendBytesMax = 64;
    config.inflightMessagesMax = 1;
    config.voters = random.pick([3, 3, 5]);
    config.learners = 0;
    config.faultsPerKiloTick = 150;
    config.dropRate = random.pick([0.1, 0.2, 0.3]);
    config.isolateLeaderBias = 0.4;
    config.fsyncStepsMax = 0;
    config.crashInFsyncRate = 0;
    config.clientOpRate = 0.5;
    config.confChangeRate = 0;
    config.idsMax = config.voters + config.learners + 2;
  }
  // Drawn after everything else, so that every other value of a seed's draw is what it was
  // before asynchronous persists were modelled (the knobs' sharpened schedules stay as tuned).
  // skipCatchUpOnEntry's pause scenario keeps its tuned schedule whole: synchronous persists and
  // no draw (with asynchronous ones its first detection moved from seed 547 to 1400).
  config.asyncPersist = knobs?.ackBeforeDurable === true || (knobs?.skipCatchUpOnEntry !== true && random.chance(0.6));
  // Drawn last for the same reason; the knobs' tuned schedules keep none (they predate it).
  const anyKnob = knobs !== undefined && Object.values(knobs).some((v) => v === true);
  config.retainEntriesMax = anyKnob ? 0 : random.pick([0, 0, 30, 300]);
  return config;
}

class Simulation {
  readonly seed: number;
  private readonly options: SimOptions;
  private readonly random: SeededRandom;
  private readonly faultRandom: SeededRandom;
  private readonly clientRandom: SeededRandom;
  readonly config: SimConfig;
  private readonly checkers: Checkers;
  private readonly world: SimWorld;
  private readonly network: SimNetwork;
  private readonly nodes = new Map<NodeId, SimNode>();
  private readonly clients: Client[] = [];
  private readonly stepMs: number;
  private readonly tickMs: number;
  private eventCount = 0;
  private traceHash = 0;
  private faultsOn = true;
  /** healAt: time at which the current partition heals (0 = none). */
  private healAt = 0;
  /** latest configuration applied anywhere (by index). */
  private latestConf: { index: number; confState: ConfState } = { index: 0, confState: emptyConfState() };
  /** invokedAt: value -> event number of the first invocation of its write. */
  private readonly invokedAt = new Map<string, number>();
  private readonly stats: SimStats;
  private stopped = false;

  constructor(seed: number, options: SimOptions) {
    this.seed = seed;
    this.options = options;
    this.random = new SeededRandom(seed);
    this.config = drawConfig(this.random, options.drawAs ?? options.knobs);
    const c = this.config;
    this.tickMs = c.tickIntervalMs;
    this.stepMs = c.tickIntervalMs / c.stepsPerTick;
    this.faultRandom = this.random.fork();
    this.clientRandom = this.random.fork();
    this.world = new SimWorld(this.random.fork());
    this.network = new SimNetwork(this.random.fork(), {
      dropRate: c.dropRate,
      duplicateRate: c.duplicateRate,
      delayMsMin: this.stepMs,
      delayMsMax: c.delayStepsMax * this.stepMs,
    });
    this.checkers = new Checkers(seed, () => this.tick());
    this.stats = {
      nodes: c.voters + c.learners,
      ticks: 0,
      events: 0,
      messagesSent: 0,
      messagesDelivered: 0,
      crashes: 0,
      crashesInFsync: 0,
      pauses: 0,
      longPauses: 0,
      partitions: 0,
      confChanges: 0,
      transfers: 0,
      snapshotsInstalled: 0,
      snapshotsMade: 0,
      compactions: 0,
      writesAcked: 0,
      readsServed: 0,
      leaders: 0,
    };
  }

  private now(): number {
    return this.world.now;
  }

  private tick(): number {
    return Math.floor(this.world.now / this.tickMs);
  }

  private ticksToMs(ticks: number): number {
    return ticks * this.tickMs;
  }

  private trace(text: string): void {
    this.traceHash = hashString(text, this.traceHash);
    if (this.options.trace !== undefined) {
      const step = Math.floor((this.world.now % this.tickMs) / this.stepMs);
      this.options.trace(`[${String(this.tick()).padStart(5)}.${step}] ${text}`);
    }
  }

  private nextEvent(): number {
    return ++this.eventCount;
  }

  async run(): Promise<SimResult> {
    const c = this.config;
    this.trace(`seed ${this.seed}: ${JSON.stringify(c)}`);
    const voters = range(1, c.voters);
    const learners = range(c.voters + 1, c.voters + c.learners);
    const members = new Map([...voters, ...learners].map((id) => [id, addressesOf(id)] as const));
    for (const id of [...voters, ...learners]) this.createNode(id, MemoryReplicaStore.bootstrap(voters, learners, members));
    this.latestConf = { index: 1, confState: structuredClone(this.nodes.get(1)!.store.machine.confState) };
    for (let i = 0; i < c.clients; i++) this.clients.push({ sessionId: `c${i + 1}`, scripted: false, sequence: 0, op: undefined, leaderHint: 0 });
    const safetyMs = this.ticksToMs(this.options.ticks ?? 600);
    try {
      this.world.at(this.tickMs, () => this.onTick());
      await this.runUntil(safetyMs);
      if (!this.stopped) await this.liveness();
    } catch (error) {
      const text = error instanceof Error ? (error.stack ?? error.message).split('\n').slice(0, 4).join(' | ') : String(error);
      this.trace(`EXCEPTION ${text}`);
      this.checkers.violate(CheckerName.CoreException, text);
    }
    this.stats.ticks = this.tick();
    this.stats.events = this.world.eventsRun;
    this.stats.messagesSent = this.network.sent;
    this.stats.messagesDelivered = this.network.delivered;
    this.stats.readsServed = this.checkers.reads;
    this.stats.writesAcked = this.checkers.ackedWrites.length;
    for (const v of this.checkers.violations) this.trace(`VIOLATION ${v.checker}: ${v.details}`);
    return {
      seed: this.seed,
      violations: this.checkers.violations,
      traceHash: this.traceHash.toString(16).padStart(14, '0'),
      stats: this.stats,
      config: c,
    };
  }

  /**
   * runUntil: run events up to time `until` (or until `done()`); after each callback the promise
   * reactions it enabled run (Node drains microtasks after every callback) and the observers look
   * at the node that ran.
   */
  private async runUntil(until: number, done?: () => boolean): Promise<void> {
    const onCrash = (scheduler: NodeScheduler, crash: SimCrash) => {
      const node = this.nodes.get(scheduler.id);
      if (node !== undefined && node.scheduler === scheduler) this.crash(node, crash.why);
    };
    while (!this.stopped) {
      if (done?.() === true) return;
      const owner = this.world.runOne(until, onCrash);
      if (owner === false) {
        this.world.now = Math.max(this.world.now, until);
        return;
      }
      await null;
      if (owner !== undefined) {
        const node = this.nodes.get(owner.id);
        if (node !== undefined && node.scheduler === owner) this.observe(node);
      }
      if (this.checkers.violations.length > 0 && this.options.stopOnViolation !== false) this.stopped = true;
    }
  }

  /** onTick: once per tick of simulated time — partitions heal, faults are drawn, clients act. */
  private onTick(): void {
    this.world.at(this.now() + this.tickMs, () => this.onTick());
    if (this.healAt !== 0 && this.now() >= this.healAt) {
      this.network.cut.clear();
      this.healAt = 0;
      this.trace('partition healed');
    }
    if (this.faultsOn) this.drawFaults();
    this.driveClients();
  }

  // ---------------------------------------------------------------- nodes

  private limits(): Partial<ReplicaLimits> {
    const c = this.config;
    return {
      tickIntervalMs: c.tickIntervalMs,
      electionTimeoutTicks: c.electionTimeoutTicks,
      heartbeatIntervalTicks: c.heartbeatIntervalTicks,
      requestTimeoutMs: this.ticksToMs(c.clientTimeoutTicks * 4),
      readOnlyOption: c.readOnlyOption,
      appendBytesMax: c.appendBytesMax,
      snapshotChunkBytes: c.snapshotChunkBytes,
      compactEveryEntries: c.compactEveryEntries,
    };
  }

  private createNode(id: NodeId, store: MemoryReplicaStore): SimNode {
    const node: SimNode = { id, state: 'crashed', store, replica: undefined, scheduler: undefined, transport: undefined, leaderTerm: 0, role: 'down' };
    this.nodes.set(id, node);
    this.startNode(node);
    this.trace(`n${id} created (applied ${store.appliedIndex()}, voters ${store.logStorage.confState.voters.join(',') || '-'})`);
    return node;
  }

  /** startNode: a process starts on the node's (durable) store: new scheduler, transport, Replica. */
  private startNode(node: SimNode): void {
    const c = this.config;
    const knobs = this.options.knobs ?? {};
    const scheduler = new NodeScheduler(this.world, node.id, this.random.fork());
    const transport = this.network.attach(node.id, scheduler);
    // The operator's peer list (node.ts `peers`): every address a member may have.
    for (let id = 1; id <= c.idsMax; id++) transport.addPeer(id, addressesOf(id).raft);
    node.store.hooks = this.storeHooks(node, scheduler);
    const { skipCatchUpOnEntry, ackBeforeDurable, ...raftKnobs } = knobs;
    const replica = new Replica({
      id: node.id,
      store: node.store,
      transport,
      scheduler,
      random: this.random.fork(),
      limits: this.limits(),
      testing: { skipCatchUpOnEntry: skipCatchUpOnEntry === true, ackBeforeDurable: ackBeforeDurable === true },
      // the test-only pass-through of the raft config (knobs, preVote, flow-control limits)
      raft: {
        preVote: c.preVote,
        checkQuorum: c.checkQuorum,
        snapshotChunksInflightMax: c.snapshotChunksInflightMax,
        inflightMessagesMax: c.inflightMessagesMax,
        uncommittedBytesMax: 64 * 1024,
        readIndexQueueMax: 64,
        ...(Object.keys(raftKnobs).length === 0 ? {} : { testing: raftKnobs }),
        ...(this.options.trace === undefined ? {} : { logger: (line: string) => this.options.trace!(`      raft n${node.id} ${line}`) }),
      },
    });
    node.replica = replica;
    node.scheduler = scheduler;
    node.transport = transport;
    node.state = 'up';
    node.leaderTerm = 0;
    node.role = 'follower';
    // Each process starts at its own phase of the tick.
    scheduler.io(this.now() + this.faultRandom.int(c.stepsPerTick) * this.stepMs, () => replica.start());
  }

  private storeHooks(node: SimNode, scheduler: NodeScheduler): MemoryReplicaStore['hooks'] {
    const c = this.config;
    return {
      beforePersist: () => {
        if (this.faultsOn && c.crashInFsyncRate > 0 && this.faultRandom.float() < c.crashInFsyncRate) {
          this.stats.crashesInFsync++;
          throw new SimCrash('during fsync (the persist is lost)');
        }
        if (c.fsyncStepsMax > 0 && !c.asyncPersist) scheduler.busy(this.faultRandom.int(c.fsyncStepsMax + 1) * this.stepMs);
      },
      ...(c.asyncPersist ? { persistAsync: (ready, complete, tear) => this.persistAsync(node, scheduler, ready, complete, tear) } : {}),
      persisted: (entry, prevTerm) => this.checkers.onPersist(node.id, entry, prevTerm),
      applied: (entry, machine, verdict, command) => {
        if (entry.type === EntryType.ConfChange && entry.index > this.latestConf.index) {
          this.latestConf = { index: entry.index, confState: structuredClone(machine.confState) };
          const cs = machine.confState;
          this.trace(`config at ${entry.index}: voters ${cs.voters.join(',')}${cs.votersOutgoing.length > 0 ? ` & ${cs.votersOutgoing.join(',')}` : ''} learners ${cs.learners.join(',') || '-'}`);
        }
        if (command !== undefined && verdict === SessionVerdict.Apply) {
          this.checkers.onSessionApply(command.sessionId, command.sequence, entry.index, command.value, this.invokedAt.get(command.value) ?? 0);
        }
        this.checkers.onApply(node.id, entry, machine.stateHash());
      },
      installed: (metadata, machine) => {
        this.stats.snapshotsInstalled++;
        this.trace(`n${node.id} installed snapshot ${metadata.index} (term ${metadata.term}, ${metadata.sizeBytes} bytes)`);
        this.checkers.onStateHash(node.id, metadata.index, machine.stateHash());
      },
      snapshotted: (index, compactIndex) => {
        this.stats.snapshotsMade++;
        this.trace(`n${node.id} snapshot at ${index}, compacted to ${compactIndex}`);
      },
      compacted: (compactIndex) => {
        this.stats.compactions++;
        this.trace(`n${node.id} compacted its log to ${compactIndex} behind its durable state`);
      },
      syncMachine: () => this.faultRandom.float() < c.stateSyncRate,
      compactionLag: () => this.faultRandom.int(4),
      retainEntriesMax: () => c.retainEntriesMax,
    };
  }

  /**
   * persistAsync: an asynchronous persist of `node` completes after a seeded delay, as an I/O
   * callback of its process (held while it is paused, dropped if it crashes first: the write is
   * then lost). It may instead crash the node at that moment, with nothing or a prefix of the
   * Ready's entries durable.
   */
  private persistAsync(node: SimNode, scheduler: NodeScheduler, ready: Ready, complete: () => void, tear: (entries: number) => void): void {
    const c = this.config;
    const delay = this.faultRandom.int(c.fsyncStepsMax + 1) * this.stepMs;
    scheduler.io(this.now() + delay, () => {
      if (this.faultsOn && c.crashInFsyncRate > 0 && this.faultRandom.float() < c.crashInFsyncRate) {
        this.stats.crashesInFsync++;
        const kept = ready.entries.length > 0 && this.faultRandom.chance(0.5) ? this.faultRandom.int(ready.entries.length + 1) : 0;
        tear(kept);
        throw new SimCrash(`with a persist in flight (${kept} of its ${ready.entries.length} entries durable)`);
      }
      complete();
    });
  }

  /** stopProcess: the node's process is gone (crash or shutdown); its pending events die with it. */
  private stopProcess(node: SimNode): void {
    node.scheduler?.kill();
    if (node.transport !== undefined) this.network.detach(node.id, node.transport);
    node.replica = undefined;
    node.scheduler = undefined;
    node.transport = undefined;
    node.role = 'down';
  }

  private crash(node: SimNode, why: string): void {
    if (node.state === 'crashed' || node.state === 'stopped') return;
    this.stopProcess(node);
    node.store = node.store.crashImage();
    node.state = 'crashed';
    this.stats.crashes++;
    const c = this.config;
    const until = this.now() + this.ticksToMs(1 + this.faultRandom.int(Math.ceil(c.faultDurationTimeouts * c.electionTimeoutTicks)));
    this.trace(`FAULT crash n${node.id}${why === '' ? '' : ` ${why}`}`);
    if (this.faultsOn) this.world.at(until, () => this.restart(node));
  }

  private restart(node: SimNode): void {
    if (node.state !== 'crashed') return;
    this.startNode(node);
    const hs = node.store.logStorage.hardState;
    this.trace(`n${node.id} restarted (term ${hs.term}, vote ${hs.vote}, commit ${hs.commit}, applied ${node.store.appliedIndex()}, last ${node.store.logStorage.lastIndex()})`);
  }

  private pause(node: SimNode, ticks: number, kind: string): void {
    if (node.state !== 'up') return;
    const scheduler = node.scheduler!;
    node.state = 'paused';
    scheduler.pause(this.now() + this.ticksToMs(ticks), (held) => {
      // the scheduler now runs the held I/O callbacks first, then the timers
      if (node.scheduler === scheduler) node.state = 'up';
      this.trace(`n${node.id} resumed (${held} queued I/O callbacks run before its timers)`);
    });
    this.stats.pauses++;
    if (ticks > this.config.electionTimeoutTicks) this.stats.longPauses++;
    this.trace(`FAULT ${kind} n${node.id} for ${ticks} ticks`);
  }

  /** observe: checks that apply the moment a node's role changes (one leader per term, completeness). */
  private observe(node: SimNode): void {
    const replica = node.replica;
    if (replica === undefined) return;
    const raft = replica.raw.raft;
    if (raft.role !== node.role) {
      node.role = raft.role;
      this.trace(`n${node.id} is ${raft.role} in term ${raft.term}`);
    }
    if (raft.role === 'leader' && node.leaderTerm !== raft.term) {
      node.leaderTerm = raft.term;
      this.stats.leaders++;
      this.trace(`n${node.id} LEADER of term ${raft.term} (last ${raft.log.lastIndex()}, commit ${raft.log.committed})`);
      this.checkers.onLeader(node.id, raft.term, raft.log);
    }
  }

  // ---------------------------------------------------------------- faults and operators

  private drawFaults(): void {
    const c = this.config;
    const r = this.faultRandom;
    const et = c.electionTimeoutTicks;
    if (r.float() * 1000 < c.faultsPerKiloTick) {
      const nodes = [...this.nodes.values()].filter((n) => n.state !== 'stopped');
      const longPause = r.chance(c.longPauseLeaderBias);
      const kind = longPause ? 8 : r.chance(c.isolateLeaderBias) ? 5 : r.int(8);
      const node = r.pick(nodes);
      const partitionTicks = () => 1 + r.int(Math.ceil((c.faultDurationTimeouts * 6 * et) / 5));
      switch (kind) {
        case 0:
          this.crash(node, '');
          break;
        case 1:
          this.crash(this.currentLeader() ?? node, '');
          break;
        case 2:
          // pausing the leader is the interesting case (stale leases, a deposed leader resuming)
          this.pause(r.chance(0.5) ? (this.currentLeader() ?? node) : node, 1 + r.int(Math.ceil((c.faultDurationTimeouts * 3 * et) / 5)), 'pause');
          break;
        case 3:
        case 4: {
          // symmetric partition: a random split
          this.network.cut.clear();
          const ids = nodes.map((n) => n.id);
          const side = ids.filter(() => r.chance(0.5));
          for (const a of side) for (const b of ids) if (!side.includes(b)) this.cutBoth(a, b);
          this.healAt = this.now() + this.ticksToMs(partitionTicks());
          this.stats.partitions++;
          this.trace(`FAULT partition {${side.join(',')}} | {${ids.filter((i) => !side.includes(i)).join(',')}}`);
          break;
        }
        case 5: {
          // isolate the leader (the interesting case for leases and stale reads)
          const leader = this.currentLeader() ?? node;
          this.network.cut.clear();
          for (const other of nodes) if (other.id !== leader.id) this.cutBoth(leader.id, other.id);
          this.healAt = this.now() + this.ticksToMs(partitionTicks());
          this.stats.partitions++;
          this.trace(`FAULT isolate n${leader.id}`);
          break;
        }
        case 6: {
          // one-way partition: some links drop in one direction only
          this.network.cut.clear();
          const links: string[] = [];
          for (const a of nodes)
            for (const b of nodes)
              if (a !== b && r.chance(0.3)) {
                this.network.cut.add(`${a.id}>${b.id}`);
                links.push(`${a.id}>${b.id}`);
              }
          this.healAt = this.now() + this.ticksToMs(partitionTicks());
          this.stats.partitions++;
          this.trace(`FAULT one-way cut ${links.join(' ') || '(none)'}`);
          break;
        }
        case 7:
          this.network.cut.clear();
          this.healAt = 0;
          this.trace('partition healed (early)');
          break;
        case 8:
          // a long stop of the leader (SIGSTOP, VM freeze): 1.5-4 election timeouts, longer than its lease
          this.pause(this.currentLeader() ?? node, Math.ceil(1.5 * et) + r.int(Math.ceil(2.5 * et)), 'long pause');
          break;
      }
    }
    const leader = this.currentLeader();
    if (leader !== undefined) {
      if (r.float() < c.confChangeRate) this.changeMembership(leader);
      if (r.float() < c.transferRate) this.transfer(leader);
    }
  }

  private cutBoth(a: NodeId, b: NodeId): void {
    this.network.cut.add(`${a}>${b}`);
    this.network.cut.add(`${b}>${a}`);
  }

  private currentLeader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const node of this.nodes.values()) {
      if (node.state !== 'up') continue;
      const raft = node.replica!.raw.raft;
      if (raft.role === 'leader' && (best === undefined || raft.term > best.replica!.raw.raft.term)) best = node;
    }
    return best;
  }

  /** changeMembership: the operator's admin call on the leader (an I/O callback of that node). */
  private changeMembership(leader: SimNode): void {
    const r = this.faultRandom;
    const cs = leader.replica!.raw.raft.confState;
    if (cs.votersOutgoing.length > 0) return;
    const ids = range(1, this.config.idsMax);
    const outside = ids.filter((id) => !cs.voters.includes(id) && !cs.learners.includes(id));
    const choices: Array<{ type: ConfChangeType; nodeId: NodeId }> = [];
    for (const id of outside) choices.push({ type: ConfChangeType.AddLearner, nodeId: id });
    for (const id of cs.learners) choices.push({ type: ConfChangeType.AddNode, nodeId: id }, { type: ConfChangeType.RemoveNode, nodeId: id });
    if (cs.voters.length > 1) for (const id of cs.voters) choices.push({ type: ConfChangeType.RemoveNode, nodeId: id });
    if (cs.voters.length < 7 && outside.length > 0) choices.push({ type: ConfChangeType.AddNode, nodeId: r.pick(outside) });
    if (choices.length === 0) return;
    const single = r.pick(choices);
    const context = single.type === ConfChangeType.RemoveNode ? new Uint8Array(0) : encodeMembersContext({ [single.nodeId]: addressesOf(single.nodeId) });
    const cc: ConfChange = { changes: [single], context };
    // A node joins with empty storage (a brand-new machine) unless it exists already (a removed
    // node keeps its data and is simply added back: that keeps its term and vote, so it can
    // never vote twice in one term).
    if (!this.nodes.has(single.nodeId) && single.type !== ConfChangeType.RemoveNode) this.createNode(single.nodeId, MemoryReplicaStore.empty());
    const target = this.nodes.get(single.nodeId);
    if (target !== undefined && target.state === 'stopped') {
      target.state = 'crashed';
      this.restart(target);
    }
    const replica = leader.replica!;
    leader.scheduler!.io(this.now(), () => {
      this.stats.confChanges++;
      this.trace(`n${leader.id} proposes ${single.type} n${single.nodeId}`);
      replica.proposeConfChange(cc).then(
        () => {},
        (error: unknown) => this.expectChardError(error, `n${leader.id} ${single.type} n${single.nodeId}`),
      );
    });
  }

  private transfer(leader: SimNode): void {
    const cs = leader.replica!.raw.raft.confState;
    const others = cs.voters.filter((id) => id !== leader.id);
    if (others.length === 0) return;
    const to = this.faultRandom.pick(others);
    const replica = leader.replica!;
    leader.scheduler!.io(this.now(), () => {
      try {
        replica.transferLeadership(to);
        this.stats.transfers++;
        this.trace(`n${leader.id} transfers leadership to n${to}`);
      } catch (error) {
        this.expectChardError(error, `n${leader.id} transfer to n${to}`);
      }
    });
  }

  /** expectChardError: a refusal must be a coded ChardError; anything else is a defect. */
  private expectChardError(error: unknown, what: string): void {
    if (error instanceof ChardError) return;
    const text = error instanceof Error ? (error.stack ?? error.message).split('\n').slice(0, 4).join(' | ') : String(error);
    this.checkers.violate(CheckerName.CoreException, `${what}: ${text}`);
  }

  // ---------------------------------------------------------------- clients

  private driveClients(): void {
    const r = this.clientRandom;
    for (const client of this.clients) {
      if (client.scripted) continue;
      const op = client.op;
      if (op === undefined) {
        if (r.float() >= this.config.clientOpRate) continue;
        const key = `k${r.int(this.config.keys)}`;
        const kind = r.chance(0.5) ? 'write' : 'read';
        const sequence = kind === 'write' ? ++client.sequence : 0;
        const value = `${client.sessionId}.${sequence}`;
        client.op = { kind, key, value, sequence, invokedAt: this.nextEvent(), target: 0, retryAt: 0, attempts: 0, timeouts: 0, redirected: false };
        if (kind === 'write') this.invokedAt.set(value, client.op.invokedAt);
        this.attempt(client);
      } else if (this.now() >= op.retryAt) {
        if (op.kind === 'read' && op.attempts >= 3) {
          client.op = undefined; // a read that never completed is simply abandoned
          continue;
        }
        this.attempt(client);
      }
    }
  }

  private pickTarget(client: Client): SimNode | undefined {
    const r = this.clientRandom;
    const hinted = this.nodes.get(client.leaderHint);
    if (hinted !== undefined && r.chance(0.7)) return hinted;
    const nodes = [...this.nodes.values()].filter((n) => n.state !== 'stopped');
    return nodes.length === 0 ? undefined : r.pick(nodes);
  }

  /**
   * attempt: send the client's current request to a node (a retry keeps the same sequence). It
   * arrives as an I/O callback of that node after a network delay — queued, if the node is paused,
   * until it resumes — and calls replica.propose or replica.readBarrier as the volume service does.
   */
  private attempt(client: Client): void {
    const op = client.op!;
    // A retry after a timeout means the node we tried did not answer: forget it as the leader.
    if (op.attempts > 0 && this.now() >= op.retryAt && op.target === client.leaderHint) client.leaderHint = 0;
    op.attempts++;
    // Exponential backoff (capped at 4x): a client that keeps timing out must not flood the log.
    if (op.attempts > 1 && !op.redirected) op.timeouts++;
    op.redirected = false;
    op.retryAt = this.now() + this.ticksToMs(this.config.clientTimeoutTicks) * 2 ** Math.min(2, op.timeouts);
    const node = this.pickTarget(client);
    if (node === undefined || (node.state !== 'up' && node.state !== 'paused')) return; // lost: the client times out
    op.target = node.id;
    const scheduler = node.scheduler!;
    const replica = node.replica!;
    const attempt = op.attempts;
    scheduler.io(this.now() + this.network.delay(), () => {
      const store = node.store;
      if (op.kind === 'write') {
        const command: Command = { sessionId: client.sessionId, sequence: op.sequence, key: op.key, value: op.value };
        this.trace(`client ${client.sessionId} write ${op.key}=${op.value} at n${node.id} (attempt ${attempt})`);
        replica.propose(encodeCommand(command)).then(
          () => this.writeAcked(client, op, node.id),
          (error: unknown) => this.failed(client, op, error, node.id),
        );
      } else {
        this.trace(`client ${client.sessionId} read ${op.key} at n${node.id} (attempt ${attempt})`);
        replica.readBarrier().then(
          () => this.readServed(client, op, node.id, store),
          (error: unknown) => this.failed(client, op, error, node.id),
        );
      }
    });
  }

  private writeAcked(client: Client, op: ClientOp, nodeId: NodeId): void {
    if (client.op !== op) return; // answered already (an earlier attempt)
    const index = this.checkers.appliedAt.get(`${client.sessionId}/${op.sequence}`);
    if (index === undefined) {
      this.checkers.violate(CheckerName.ExactlyOnce, `n${nodeId} acknowledged write ${client.sessionId}/${op.sequence} that was never applied`);
      return;
    }
    this.checkers.onWriteAcked({ sessionId: client.sessionId, sequence: op.sequence, key: op.key, value: op.value, index, invokedAt: op.invokedAt, ackedAt: this.nextEvent() });
    client.leaderHint = nodeId;
    client.op = undefined;
    this.trace(`client ${client.sessionId} write ${op.key}=${op.value} ACKED by n${nodeId} (index ${index})`);
  }

  private readServed(client: Client, op: ClientOp, nodeId: NodeId, store: MemoryReplicaStore): void {
    if (client.op !== op) return;
    const machine = store.machine;
    const value = machine.kv.get(op.key);
    this.trace(`client ${client.sessionId} read ${op.key} = ${value ?? '(unset)'} from n${nodeId} (applied ${machine.applied})`);
    this.checkers.onRead(nodeId, op.key, value, op.invokedAt, this.nextEvent(), machine.applied);
    client.op = undefined;
  }

  private failed(client: Client, op: ClientOp, error: unknown, nodeId: NodeId): void {
    this.expectChardError(error, `client ${client.sessionId} at n${nodeId}`);
    if (client.op !== op || op.target !== nodeId) return;
    if (error instanceof NotLeaderError) {
      client.leaderHint = error.leaderId;
      op.redirected = true;
      op.retryAt = Math.min(op.retryAt, this.now() + this.tickMs); // redirect quickly
    } else {
      op.retryAt = Math.min(op.retryAt, this.now() + 2 * this.tickMs);
    }
  }

  // ---------------------------------------------------------------- liveness

  /**
   * liveness: heal everything and require, within `livenessTimeoutsMax` election timeouts, a leader,
   * a fresh proposal committed and applied by it, and every member of the latest configuration
   * applied up to it with equal state.
   */
  private async liveness(): Promise<void> {
    const c = this.config;
    this.faultsOn = false;
    const net = this.network.params;
    // A round trip must fit well inside an election timeout, or no election can be expected to succeed.
    const delayMax = Math.max(this.stepMs, Math.min(net.delayMsMax, this.ticksToMs(c.electionTimeoutTicks) / 4));
    this.network.params = { dropRate: 0, duplicateRate: 0, delayMsMin: Math.min(net.delayMsMin, delayMax), delayMsMax: delayMax };
    this.network.cut.clear();
    this.healAt = 0;
    this.trace('LIVENESS phase: healed, restarting and resuming every node');
    const members = (): NodeId[] => {
      const cs = this.latestConf.confState;
      return [...new Set([...cs.voters, ...cs.votersOutgoing, ...cs.learners, ...cs.learnersNext])];
    };
    for (const node of this.nodes.values()) {
      if (node.state === 'crashed') this.restart(node);
      else if (node.state === 'paused') node.scheduler!.resume();
    }
    const probe: Client = { sessionId: 'live', scripted: true, sequence: 0, op: undefined, leaderHint: 0 };
    this.clients.push(probe);
    const limitMs = this.now() + this.ticksToMs((this.options.livenessTimeoutsMax ?? 40) * c.electionTimeoutTicks);
    let probeIndex = 0;
    let ok = false;
    const checkpoint = () => {
      // Nodes removed from the latest configuration are shut down by the operator, once every
      // member has applied that configuration (before, a member may still need their votes).
      const current = members();
      const settled = current.every((id) => (this.nodes.get(id)?.store.appliedIndex() ?? 0) >= this.latestConf.index);
      for (const node of this.nodes.values()) {
        if (settled && !current.includes(node.id) && node.state === 'up') {
          this.stopProcess(node);
          node.state = 'stopped';
          this.trace(`n${node.id} stopped (not in the configuration)`);
        } else if (current.includes(node.id) && node.state === 'stopped') {
          node.state = 'crashed';
          this.restart(node); // added back by a change that committed late
        }
      }
      if (probe.sequence === 0) {
        probe.sequence = 1;
        probe.op = { kind: 'write', key: 'live', value: 'live.1', sequence: 1, invokedAt: this.nextEvent(), target: 0, retryAt: 0, attempts: 0, timeouts: 0, redirected: false };
        this.invokedAt.set('live.1', probe.op.invokedAt);
      }
      if (probe.op !== undefined && this.now() >= probe.op.retryAt) {
        const leader = this.currentLeader();
        if (leader !== undefined) probe.leaderHint = leader.id;
        this.attempt(probe);
      }
      if (probe.op === undefined) probeIndex = this.checkers.appliedAt.get('live/1') ?? 0;
      if (probeIndex > 0) {
        const lagging = current.filter((id) => {
          const node = this.nodes.get(id);
          return node === undefined || node.state !== 'up' || node.store.appliedIndex() < probeIndex;
        });
        if (lagging.length === 0) {
          this.trace(`LIVENESS ok: probe committed at ${probeIndex}, members ${current.join(',')} caught up by tick ${this.tick()}`);
          this.checkAckedWrites(current, probeIndex);
          ok = true;
        }
      }
    };
    // The operator looks once per step; the cluster runs in between.
    while (!ok && !this.stopped && this.now() < limitMs) {
      checkpoint();
      if (ok) break;
      await this.runUntil(Math.min(limitMs, this.now() + this.stepMs));
    }
    if (ok || this.stopped) return;
    const statuses = [...this.nodes.values()]
      .map((n) => {
        if (n.state !== 'up') return `n${n.id}:${n.state}`;
        const s = n.replica!.raw.raft;
        return `n${n.id}:${s.role}/t${s.term}/commit${s.log.committed}/applied${n.store.appliedIndex()}/last${s.log.lastIndex()}`;
      })
      .join(' ');
    const leader = this.currentLeader();
    const progress =
      leader === undefined
        ? 'no leader'
        : [...leader.replica!.raw.status().progress.entries()]
            .map(([id, p]) => `${id}:${p.state}/match${p.match}/next${p.next}/active${p.recentActive ? 1 : 0}/inflight${p.inflight}/snap${p.snapshotSent}-${p.snapshotAcked}`)
            .join(' ');
    this.checkers.violate(
      CheckerName.Liveness,
      `no progress within ${this.options.livenessTimeoutsMax ?? 40} election timeouts after healing (probe index ${probeIndex || 'none'}; members ${members().join(',')}; ${statuses}; leader progress ${progress}; leader snapshot ${leader?.store.logStorage.snapshot().index ?? '-'})`,
    );
  }

  /**
   * checkAckedWrites: no acknowledged write is lost. After convergence every member has applied
   * past every acknowledged write, and the entry at the write's index is still the one that
   * carried it (its session record shows the sequence applied).
   */
  private checkAckedWrites(members: NodeId[], probeIndex: number): void {
    for (const write of this.checkers.ackedWrites) {
      if (write.index > probeIndex) continue; // acknowledged after the probe: members need not have it yet
      const record = this.checkers.committed.get(write.index);
      if (record === undefined) {
        this.checkers.violate(CheckerName.AckedWriteDurable, `acknowledged write ${write.sessionId}/${write.sequence} at index ${write.index} was never seen committed`);
        continue;
      }
      for (const id of members) {
        const node = this.nodes.get(id)!;
        if (node.store.machine.lastSequence(write.sessionId) < write.sequence) {
          this.checkers.violate(
            CheckerName.AckedWriteDurable,
            `n${id} (applied ${node.store.appliedIndex()}) lost acknowledged write ${write.sessionId}/${write.sequence} (index ${write.index})`,
          );
          return;
        }
      }
    }
  }
}

function range(from: number, to: number): number[] {
  const out: number[] = [];
  for (let i = from; i <= to; i++) out.push(i);
  return out;
}
