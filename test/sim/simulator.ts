/**
 * simulator: a seeded swarm simulator for the raft core (TigerBeetle VOPR / FoundationDB Sim2 style).
 *
 * `runSeed(seed, options)` draws a whole run from one seed — cluster size, timeouts, network
 * faults, partitions, crashes, pauses, membership changes, leader transfers, compaction, client
 * traffic — and drives RawNodes through it in simulated time, calling the checkers (checkers.ts)
 * as facts become observable. The only randomness is SeededRandom, the only clock is the step
 * counter: the same seed replays the same run exactly (the trace hash proves it).
 *
 * Time: one step is a quarter of a tick. Each node ticks once every `stepsPerTick` steps at its
 * own phase. Messages travel with a per-message delay in steps (so they reorder), may be dropped
 * or duplicated, and are blocked by partitions (a set of cut directed links).
 *
 * Storage model: each node's MemoryStorage holds exactly what is durable. Handling a Ready is
 * split in two: at `ready()` the leader's messagesEarly leave; the persist (step 2 of the Ready
 * contract) happens `fsync` steps later, followed by messages, apply and advance. A crash in
 * between loses that Ready entirely. The state machine (a KV register map + SessionTable) keeps
 * a durable copy that may lag the applied index; a restarted node restores it (or the newer
 * snapshot in storage) and replays the log from there, exactly as the node layer does.
 */

import { assert } from '../../src/assert.js';
import { ChardError, NotLeaderError } from '../../src/errors.js';
import { decodeConfChange } from '../../src/raft/confchange.js';
import type { ReadOnlyOption, TestingKnobs } from '../../src/raft/config.js';
import { SeededRandom } from '../../src/raft/random.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SessionTable, SessionVerdict } from '../../src/blockstore/sessions.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import {
  type ConfChange,
  ConfChangeType,
  type ConfState,
  type Entry,
  EntryType,
  type Message,
  type NodeId,
  type Ready,
  emptyConfState,
} from '../../src/raft/types.js';
import { CheckerName, Checkers, type Violation, hashString } from './checkers.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export interface SimOptions {
  /** ticks: length of the safety phase in ticks (faults on). */
  ticks?: number;
  /** knobs: testing knobs set on every node (each breaks one safety rule). */
  knobs?: TestingKnobs;
  /** trace: receives a readable line per event (role changes, faults, client ops, raft decisions). */
  trace?: (line: string) => void;
  /** stopOnViolation: end the run at the first violation (default true). */
  stopOnViolation?: boolean;
  /**
   * drawAs: draw the seed's schedule as if these knobs were on (default: `knobs`). With
   * `knobs` off and `drawAs` set, a run is the control experiment of a knob run.
   */
  drawAs?: TestingKnobs;
  /** livenessTimeoutsMax: the liveness phase must succeed within this many election timeouts. */
  livenessTimeoutsMax?: number;
}

export interface SimStats {
  nodes: number;
  ticks: number;
  messagesSent: number;
  messagesDelivered: number;
  crashes: number;
  pauses: number;
  partitions: number;
  confChanges: number;
  transfers: number;
  snapshotsInstalled: number;
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
  electionTimeoutTicks: number;
  heartbeatIntervalTicks: number;
  preVote: boolean;
  checkQuorum: boolean;
  readOnlyOption: ReadOnlyOption;
  stepsPerTick: number;
  delayStepsMax: number;
  dropRate: number;
  duplicateRate: number;
  fsyncStepsMax: number;
  faultsPerKiloTick: number;
  crashInReadyRate: number;
  snapshotChunkBytes: number;
  snapshotChunksInflightMax: number;
  appendBytesMax: number;
  inflightMessagesMax: number;
  compactionRate: number;
  clients: number;
  keys: number;
  clientOpRate: number;
  /** clientTimeoutTicks: a client retries elsewhere after this long without an answer. */
  clientTimeoutTicks: number;
  /** isolateLeaderBias: share of faults that isolate the current leader. */
  isolateLeaderBias: number;
  /** faultDurationTimeouts: crashes last up to this many election timeouts (partitions 1.2x, pauses 0.6x). */
  faultDurationTimeouts: number;
  stateSyncRate: number;
  confChangeRate: number;
  transferRate: number;
}

// ------------------------------------------------------------------------------------------------
// state machine

interface Command {
  sessionId: string;
  sequence: number;
  key: string;
  value: string;
}

interface MachineImage {
  applied: number;
  kv: Array<[string, string]>;
  sessions: Array<{ sessionId: string; ackedBelow: number; results: Array<{ sequence: number }>; lastSequence: number; lastIndex: number }>;
  evicted: string[];
  confState: ConfState;
}

/** KvMachine: the replicated state machine — a map of registers, deduplicated by a SessionTable. */
class KvMachine {
  applied = 0;
  kv = new Map<string, string>();
  sessions = new SessionTable({ sessionsMax: 16, resultsPerSessionMax: 8 });
  confState: ConfState = emptyConfState();

  image(): MachineImage {
    return {
      applied: this.applied,
      kv: [...this.kv.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)),
      sessions: this.sessions.entries().map((r) => ({
        sessionId: r.sessionId,
        ackedBelow: r.ackedBelow,
        results: r.results.map((x) => ({ sequence: x.sequence })),
        lastSequence: r.lastSequence,
        lastIndex: r.lastIndex,
      })),
      evicted: this.sessions.evictedIds(),
      confState: this.confState,
    };
  }

  serialize(): Uint8Array {
    return encoder.encode(JSON.stringify(this.image()));
  }

  /** stateHash: hash of everything but the applied index (the checker keys by index). */
  stateHash(): number {
    const image = this.image();
    return hashString(JSON.stringify([image.kv, image.sessions, image.evicted, image.confState]));
  }

  static restore(data: Uint8Array): KvMachine {
    const image = JSON.parse(decoder.decode(data)) as MachineImage;
    const machine = new KvMachine();
    machine.applied = image.applied;
    machine.kv = new Map(image.kv);
    machine.sessions.restore(
      image.sessions.map((s) => ({
        sessionId: s.sessionId,
        ackedBelow: s.ackedBelow,
        results: s.results.map((x) => ({ sequence: x.sequence, result: new Uint8Array(0) })),
        lastSequence: s.lastSequence,
        lastResult: new Uint8Array(0),
        lastIndex: s.lastIndex,
      })),
      image.evicted,
    );
    machine.confState = image.confState;
    return machine;
  }
}

// ------------------------------------------------------------------------------------------------
// nodes, network, clients

interface InFlightMessage {
  message: Message;
  deliverAt: number;
  order: number;
}

interface PendingRead {
  readId: number;
  context: string;
  /** index: the read index, once the node has it. */
  index: number | undefined;
}

interface SimNode {
  id: NodeId;
  raw: RawNode | undefined;
  storage: MemoryStorage;
  machine: KvMachine;
  /** machineDurable: the state machine as last saved (it may lag; the log replays the rest). */
  machineDurable: Uint8Array;
  state: 'up' | 'crashed' | 'paused' | 'stopped';
  /** until: step at which a crash or pause ends. */
  until: number;
  missedTicks: number;
  inFlight: { rd: Ready; persistAt: number } | undefined;
  tickPhase: number;
  random: SeededRandom;
  reads: PendingRead[];
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
  /** retryAt: step at which the client gives up on the current target and tries again. */
  retryAt: number;
  proposed: boolean;
  readId: number;
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

class SimulationStopped extends Error {}

/** runSeed: runs one seed; see the file comment. Deterministic: same seed, options => same result. */
export function runSeed(seed: number, options: SimOptions = {}): SimResult {
  return new Simulation(seed, options).run();
}

/** drawConfig: what a seed draws (exposed for the trace and the docs). */
export function drawConfig(random: SeededRandom, knobs: TestingKnobs | undefined): SimConfig {
  const voters = random.pick([1, 2, 3, 3, 3, 4, 5, 5, 6, 7]);
  let learners = random.chance(0.3) ? 1 + random.int(2) : 0;
  const electionTimeoutTicks = 5 + random.int(11);
  const heartbeatIntervalTicks = 1 + random.int(Math.min(3, Math.floor((electionTimeoutTicks - 1) / 3)));
  let checkQuorum = random.chance(0.8);
  const preVote = random.chance(0.8);
  let lease = checkQuorum && random.chance(0.35);
  let crashInReadyRate = random.pick([0, 0, 0.01, 0.03]);
  let fsyncStepsMax = random.pick([0, 2, 6, 12]);
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
    crashInReadyRate = Math.max(crashInReadyRate, 0.05);
    fsyncStepsMax = Math.max(fsyncStepsMax, 6);
  }
  if (knobs?.commitOldTermEntries || knobs?.voteWithoutLogCheck) faultsPerKiloTick = Math.max(faultsPerKiloTick, 60);
  const config: SimConfig = {
    voters: voterCount,
    learners,
    idsMax: voterCount + learners + 2,
    electionTimeoutTicks,
    heartbeatIntervalTicks,
    preVote,
    checkQuorum,
    readOnlyOption: lease ? 'lease' : 'safe',
    stepsPerTick: 4,
    delayStepsMax: random.pick([1, 2, 4, 8, 16]),
    dropRate: random.pick([0, 0.01, 0.05, 0.15]),
    duplicateRate: random.pick([0, 0.01, 0.05]),
    fsyncStepsMax,
    faultsPerKiloTick,
    crashInReadyRate,
    snapshotChunkBytes: random.pick([16, 64, 256, 4096]),
    snapshotChunksInflightMax: 1 + random.int(3),
    appendBytesMax: random.pick([64, 512, 1024 * 1024]),
    inflightMessagesMax: random.pick([1, 4, 256]),
    compactionRate: random.pick([0, 0.002, 0.01]),
    clients: 1 + random.int(3),
    keys: 1 + random.int(4),
    clientOpRate: random.pick([0.05, 0.2, 0.5]),
    clientTimeoutTicks: 3 * electionTimeoutTicks,
    isolateLeaderBias: 0,
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
    config.crashInReadyRate = 0;
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
    config.crashInReadyRate = 0;
    config.clientOpRate = 0.5;
    config.confChangeRate = 0;
    config.idsMax = config.voters + config.learners + 2;
  }
  return config;
}

class Simulation {
  readonly seed: number;
  private readonly options: SimOptions;
  private readonly random: SeededRandom;
  private readonly netRandom: SeededRandom;
  private readonly faultRandom: SeededRandom;
  private readonly clientRandom: SeededRandom;
  readonly config: SimConfig;
  private readonly checkers: Checkers;
  private readonly nodes = new Map<NodeId, SimNode>();
  private network: InFlightMessage[] = [];
  private readonly cut = new Set<string>();
  private readonly clients: Client[] = [];
  private step = 0;
  private eventCount = 0;
  private messageOrder = 0;
  private readCount = 0;
  private traceHash = 0;
  private faultsOn = true;
  private dropRate: number;
  private duplicateRate: number;
  private delayStepsMax: number;
  /** healAt: step at which the current partition heals (0 = none). */
  private healAt = 0;
  /** latest configuration applied anywhere (by index). */
  private latestConf: { index: number; confState: ConfState } = { index: 0, confState: emptyConfState() };
  private readonly stats: SimStats;

  constructor(seed: number, options: SimOptions) {
    this.seed = seed;
    this.options = options;
    this.random = new SeededRandom(seed);
    this.config = drawConfig(this.random, options.drawAs ?? options.knobs);
    this.netRandom = this.random.fork();
    this.faultRandom = this.random.fork();
    this.clientRandom = this.random.fork();
    this.dropRate = this.config.dropRate;
    this.duplicateRate = this.config.duplicateRate;
    this.delayStepsMax = this.config.delayStepsMax;
    this.checkers = new Checkers(seed, () => this.tick());
    this.stats = {
      nodes: this.config.voters + this.config.learners,
      ticks: 0,
      messagesSent: 0,
      messagesDelivered: 0,
      crashes: 0,
      pauses: 0,
      partitions: 0,
      confChanges: 0,
      transfers: 0,
      snapshotsInstalled: 0,
      compactions: 0,
      writesAcked: 0,
      readsServed: 0,
      leaders: 0,
    };
  }

  private tick(): number {
    return Math.floor(this.step / this.config.stepsPerTick);
  }

  private trace(text: string): void {
    this.traceHash = hashString(text, this.traceHash);
    this.options.trace?.(`[${String(this.tick()).padStart(5)}.${this.step % this.config.stepsPerTick}] ${text}`);
  }

  private nextEvent(): number {
    return ++this.eventCount;
  }

  run(): SimResult {
    const c = this.config;
    this.trace(`seed ${this.seed}: ${JSON.stringify(c)}`);
    const voters = range(1, c.voters);
    const learners = range(c.voters + 1, c.voters + c.learners);
    for (const id of [...voters, ...learners]) this.createNode(id, MemoryStorage.bootstrap(voters, learners), 1);
    this.latestConf = { index: 1, confState: structuredClone(this.nodes.get(1)!.machine.confState) };
    for (let i = 0; i < c.clients; i++) this.clients.push({ sessionId: `c${i + 1}`, scripted: false, sequence: 0, op: undefined, leaderHint: 0 });
    const safetyTicks = this.options.ticks ?? 600;
    try {
      try {
        const safetySteps = safetyTicks * c.stepsPerTick;
        while (this.step < safetySteps) this.runStep();
        this.liveness();
      } catch (error) {
        if (error instanceof SimulationStopped) throw error;
        const text = error instanceof Error ? (error.stack ?? error.message).split('\n').slice(0, 4).join(' | ') : String(error);
        this.trace(`EXCEPTION ${text}`);
        this.checkers.violate(CheckerName.CoreException, text);
      }
    } catch (error) {
      if (!(error instanceof SimulationStopped)) throw error;
    }
    this.stats.ticks = this.tick();
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

  private stopIfViolated(): void {
    if (this.checkers.violations.length > 0 && this.options.stopOnViolation !== false) throw new SimulationStopped();
  }

  // ---------------------------------------------------------------- nodes

  private nodeConfig(id: NodeId, node: { storage: MemoryStorage; random: SeededRandom }, applied: number) {
    const c = this.config;
    return {
      id,
      storage: node.storage,
      random: node.random,
      applied,
      electionTimeoutTicks: c.electionTimeoutTicks,
      heartbeatIntervalTicks: c.heartbeatIntervalTicks,
      preVote: c.preVote,
      checkQuorum: c.checkQuorum,
      readOnlyOption: c.readOnlyOption,
      snapshotChunkBytes: c.snapshotChunkBytes,
      snapshotChunksInflightMax: c.snapshotChunksInflightMax,
      appendBytesMax: c.appendBytesMax,
      inflightMessagesMax: c.inflightMessagesMax,
      uncommittedBytesMax: 64 * 1024,
      readIndexQueueMax: 64,
      ...(this.options.knobs === undefined ? {} : { testing: this.options.knobs }),
      ...(this.options.trace === undefined ? {} : { logger: (line: string) => this.options.trace!(`      raft ${line}`) }),
    };
  }

  private createNode(id: NodeId, storage: MemoryStorage, applied: number): SimNode {
    const machine = new KvMachine();
    machine.applied = applied;
    machine.confState = structuredClone(storage.confState);
    const random = this.random.fork();
    const node: SimNode = {
      id,
      raw: undefined,
      storage,
      machine,
      machineDurable: machine.serialize(),
      state: 'up',
      until: 0,
      missedTicks: 0,
      inFlight: undefined,
      tickPhase: this.random.int(this.config.stepsPerTick),
      random,
      reads: [],
      leaderTerm: 0,
      role: 'follower',
    };
    node.raw = new RawNode(this.nodeConfig(id, node, applied));
    this.nodes.set(id, node);
    this.trace(`n${id} created (applied ${applied}, voters ${storage.confState.voters.join(',') || '-'})`);
    return node;
  }

  private crash(node: SimNode, why: string): void {
    if (node.state === 'crashed' || node.state === 'stopped') return;
    const lost = node.inFlight !== undefined ? ` (losing an unpersisted Ready with ${node.inFlight.rd.entries.length} entries)` : '';
    node.raw = undefined;
    node.inFlight = undefined;
    node.reads = [];
    node.state = 'crashed';
    node.until = this.step + (1 + this.faultRandom.int(Math.ceil(this.config.faultDurationTimeouts * this.config.electionTimeoutTicks))) * this.config.stepsPerTick;
    node.role = 'down';
    this.stats.crashes++;
    this.trace(`FAULT crash n${node.id} ${why}${lost}`);
  }

  private restart(node: SimNode): void {
    assert(node.state === 'crashed', 'restart a crashed node');
    let machine = KvMachine.restore(node.machineDurable);
    const snapshot = node.storage.snapshot();
    if (snapshot.index > machine.applied) machine = KvMachine.restore(node.storage.snapshotBytes());
    node.machine = machine;
    node.storage = node.storage.clone();
    node.storage.confState = structuredClone(machine.confState);
    node.random = this.random.fork();
    node.raw = new RawNode(this.nodeConfig(node.id, node, machine.applied));
    node.state = 'up';
    node.missedTicks = 0;
    node.leaderTerm = 0;
    node.role = 'follower';
    const hs = node.storage.hardState;
    this.trace(`n${node.id} restarted (term ${hs.term}, vote ${hs.vote}, commit ${hs.commit}, applied ${machine.applied}, last ${node.storage.lastIndex()})`);
  }

  private pause(node: SimNode): void {
    if (node.state !== 'up') return;
    node.state = 'paused';
    node.until = this.step + (1 + this.faultRandom.int(Math.ceil((this.config.faultDurationTimeouts * 3 * this.config.electionTimeoutTicks) / 5))) * this.config.stepsPerTick;
    node.missedTicks = 0;
    this.stats.pauses++;
    this.trace(`FAULT pause n${node.id} until tick ${Math.floor(node.until / this.config.stepsPerTick)}`);
  }

  /** resume: a paused node's monotonic clock catches up (the missed ticks) before it sees any message. */
  private resume(node: SimNode): void {
    assert(node.state === 'paused', 'resume a paused node');
    node.state = 'up';
    const missed = node.missedTicks;
    node.missedTicks = 0;
    this.trace(`n${node.id} resumed (${missed} missed ticks)`);
    for (let i = 0; i < missed; i++) {
      node.raw!.tick();
      this.observe(node);
    }
  }

  /** observe: checks that apply the moment a node's role changes (one leader per term, completeness). */
  private observe(node: SimNode): void {
    const raft = node.raw!.raft;
    if (raft.role !== node.role) {
      node.role = raft.role;
      this.trace(`n${node.id} is ${raft.role} in term ${raft.term}`);
    }
    if (raft.role === 'leader' && node.leaderTerm !== raft.term) {
      node.leaderTerm = raft.term;
      this.stats.leaders++;
      this.trace(`n${node.id} LEADER of term ${raft.term} (last ${raft.log.lastIndex()}, commit ${raft.log.committed})`);
      this.checkers.onLeader(node.id, raft.term, raft.log);
      this.stopIfViolated();
    }
  }

  // ---------------------------------------------------------------- the step loop

  private runStep(): void {
    this.step++;
    const c = this.config;
    // 1. crashes and pauses end; partitions heal.
    for (const node of this.nodes.values()) {
      if (node.state === 'crashed' && this.step >= node.until) this.restart(node);
      else if (node.state === 'paused' && this.step >= node.until) this.resume(node);
    }
    if (this.healAt !== 0 && this.step >= this.healAt) {
      this.cut.clear();
      this.healAt = 0;
      this.trace('partition healed');
    }
    // 2. faults and operator actions, once per tick.
    if (this.faultsOn && this.step % c.stepsPerTick === 0) this.drawFaults();
    // 3. ticks.
    for (const node of this.nodes.values()) {
      if ((this.step + node.tickPhase) % c.stepsPerTick !== 0) continue;
      if (node.state === 'paused') node.missedTicks++;
      if (node.state !== 'up') continue;
      node.raw!.tick();
      this.observe(node);
    }
    // 4. deliver due messages.
    this.deliver();
    // 5. clients.
    if (this.step % c.stepsPerTick === 0) this.driveClients();
    // 6. Ready handling.
    for (const node of this.nodes.values()) this.handleReadys(node);
  }

  private drawFaults(): void {
    const c = this.config;
    const r = this.faultRandom;
    if (r.float() * 1000 < c.faultsPerKiloTick) {
      const nodes = [...this.nodes.values()].filter((n) => n.state !== 'stopped');
      const kind = r.chance(this.config.isolateLeaderBias) ? 5 : r.int(8);
      const node = r.pick(nodes);
      switch (kind) {
        case 0:
          this.crash(node, '');
          break;
        case 1:
          this.crash(this.currentLeader() ?? node, '');
          break;
        case 2:
          // pausing the leader is the interesting case (stale leases, a deposed leader resuming)
          this.pause(r.chance(0.5) ? (this.currentLeader() ?? node) : node);
          break;
        case 3:
        case 4: {
          // symmetric partition: a random split
          this.cut.clear();
          const ids = nodes.map((n) => n.id);
          const side = ids.filter(() => r.chance(0.5));
          for (const a of side) for (const b of ids) if (!side.includes(b)) this.cutBoth(a, b);
          this.healAt = this.step + (1 + r.int(Math.ceil((c.faultDurationTimeouts * 6 * c.electionTimeoutTicks) / 5))) * c.stepsPerTick;
          this.stats.partitions++;
          this.trace(`FAULT partition {${side.join(',')}} | {${ids.filter((i) => !side.includes(i)).join(',')}}`);
          break;
        }
        case 5: {
          // isolate the leader (the interesting case for leases and stale reads)
          const leader = this.currentLeader() ?? node;
          this.cut.clear();
          for (const other of nodes) if (other.id !== leader.id) this.cutBoth(leader.id, other.id);
          this.healAt = this.step + (1 + r.int(Math.ceil((c.faultDurationTimeouts * 6 * c.electionTimeoutTicks) / 5))) * c.stepsPerTick;
          this.stats.partitions++;
          this.trace(`FAULT isolate n${leader.id}`);
          break;
        }
        case 6: {
          // one-way partition: some links drop in one direction only
          this.cut.clear();
          const links: string[] = [];
          for (const a of nodes) for (const b of nodes) if (a !== b && r.chance(0.3)) {
            this.cut.add(`${a.id}>${b.id}`);
            links.push(`${a.id}>${b.id}`);
          }
          this.healAt = this.step + (1 + r.int(Math.ceil((c.faultDurationTimeouts * 6 * c.electionTimeoutTicks) / 5))) * c.stepsPerTick;
          this.stats.partitions++;
          this.trace(`FAULT one-way cut ${links.join(' ') || '(none)'}`);
          break;
        }
        case 7:
          this.cut.clear();
          this.healAt = 0;
          this.trace('partition healed (early)');
          break;
      }
    }
    const leader = this.currentLeader();
    if (leader !== undefined) {
      if (r.float() < c.confChangeRate) this.changeMembership(leader);
      if (r.float() < c.transferRate) this.transfer(leader);
    }
    if (r.float() < c.compactionRate * this.nodes.size) this.compact(r.pick([...this.nodes.values()]));
  }

  private cutBoth(a: NodeId, b: NodeId): void {
    this.cut.add(`${a}>${b}`);
    this.cut.add(`${b}>${a}`);
  }

  private currentLeader(): SimNode | undefined {
    let best: SimNode | undefined;
    for (const node of this.nodes.values()) {
      if (node.state !== 'up') continue;
      const raft = node.raw!.raft;
      if (raft.role === 'leader' && (best === undefined || raft.term > best.raw!.raft.term)) best = node;
    }
    return best;
  }

  private changeMembership(leader: SimNode): void {
    const r = this.faultRandom;
    const cs = leader.raw!.raft.confState;
    if (cs.votersOutgoing.length > 0) return;
    const ids = range(1, this.config.idsMax);
    const outside = ids.filter((id) => !cs.voters.includes(id) && !cs.learners.includes(id));
    const choices: ConfChange[] = [];
    const change = (type: ConfChangeType, nodeId: NodeId): ConfChange => ({ changes: [{ type, nodeId }], context: new Uint8Array(0) });
    for (const id of outside) choices.push(change(ConfChangeType.AddLearner, id));
    for (const id of cs.learners) choices.push(change(ConfChangeType.AddNode, id), change(ConfChangeType.RemoveNode, id));
    if (cs.voters.length > 1) for (const id of cs.voters) choices.push(change(ConfChangeType.RemoveNode, id));
    if (cs.voters.length < 7 && outside.length > 0) choices.push(change(ConfChangeType.AddNode, r.pick(outside)));
    if (choices.length === 0) return;
    const cc = r.pick(choices);
    const single = cc.changes[0]!;
    // A node joins with empty storage (a brand-new machine) unless it exists already (a removed
    // node keeps its data and is simply added back: that keeps its term and vote, so it can
    // never vote twice in one term).
    if (!this.nodes.has(single.nodeId) && single.type !== ConfChangeType.RemoveNode) this.createNode(single.nodeId, new MemoryStorage(), 0);
    const target = this.nodes.get(single.nodeId);
    if (target !== undefined && target.state === 'stopped') {
      target.state = 'crashed';
      target.until = this.step;
    }
    try {
      const index = leader.raw!.proposeConfChange(cc);
      this.stats.confChanges++;
      this.trace(`n${leader.id} proposes ${single.type} n${single.nodeId} at ${index}`);
    } catch (error) {
      if (!(error instanceof ChardError)) throw error;
      this.trace(`n${leader.id} refuses ${single.type} n${single.nodeId}: ${error.code}`);
    }
    this.observe(leader);
  }

  private transfer(leader: SimNode): void {
    const cs = leader.raw!.raft.confState;
    const others = cs.voters.filter((id) => id !== leader.id);
    if (others.length === 0) return;
    const to = this.faultRandom.pick(others);
    try {
      leader.raw!.transferLeadership(to);
      this.stats.transfers++;
      this.trace(`n${leader.id} transfers leadership to n${to}`);
    } catch (error) {
      if (!(error instanceof ChardError)) throw error;
    }
    this.observe(leader);
  }

  /** compact: the node snapshots its state machine at its applied index and drops log behind it. */
  private compact(node: SimNode): void {
    if (node.state !== 'up') return;
    const applied = node.machine.applied;
    if (applied <= node.storage.snapshot().index || applied > node.storage.lastIndex()) return;
    node.storage.createSnapshot(applied, node.machine.confState, node.machine.serialize());
    const compactIndex = Math.max(node.storage.firstIndex(), applied - this.faultRandom.int(4));
    node.storage.compact(compactIndex);
    this.stats.compactions++;
    this.trace(`n${node.id} snapshot at ${applied}, compacted to ${compactIndex}`);
  }

  // ---------------------------------------------------------------- network

  private send(messages: Message[]): void {
    for (const m of messages) {
      this.stats.messagesSent++;
      if (this.netRandom.float() < this.dropRate) continue;
      const copies = this.netRandom.float() < this.duplicateRate ? 2 : 1;
      for (let i = 0; i < copies; i++) {
        const deliverAt = this.step + 1 + this.netRandom.int(this.delayStepsMax);
        this.network.push({ message: m, deliverAt, order: ++this.messageOrder });
      }
    }
  }

  private deliver(): void {
    const due: InFlightMessage[] = [];
    const later: InFlightMessage[] = [];
    for (const item of this.network) (item.deliverAt <= this.step ? due : later).push(item);
    if (due.length === 0) return;
    this.network = later;
    due.sort((a, b) => a.deliverAt - b.deliverAt || a.order - b.order);
    for (const { message: m } of due) {
      if (this.cut.has(`${m.from}>${m.to}`)) continue;
      const target = this.nodes.get(m.to);
      if (target === undefined || target.state !== 'up') continue;
      this.stats.messagesDelivered++;
      target.raw!.step(m);
      this.observe(target);
    }
  }

  // ---------------------------------------------------------------- Ready handling

  private handleReadys(node: SimNode): void {
    for (let round = 0; round < 16; round++) {
      if (node.state !== 'up') return;
      const raw = node.raw!;
      if (node.inFlight !== undefined) {
        if (node.inFlight.persistAt > this.step) return;
        this.completeReady(node);
        continue;
      }
      if (!raw.hasReady()) return;
      const rd = raw.ready();
      // Ready step 1: a leader's appends may leave before its own fsync.
      this.send(rd.messagesEarly);
      const writes = rd.entries.length > 0 || rd.hardState !== undefined || rd.snapshot !== undefined || rd.snapshotChunks.length > 0;
      if (writes && this.faultsOn && this.faultRandom.float() < this.config.crashInReadyRate) {
        node.inFlight = { rd, persistAt: this.step };
        this.crash(node, 'between messagesEarly and persist');
        return;
      }
      const fsync = writes && this.config.fsyncStepsMax > 0 ? this.faultRandom.int(this.config.fsyncStepsMax + 1) : 0;
      node.inFlight = { rd, persistAt: this.step + fsync };
    }
  }

  /** completeReady: steps 2-5 of the Ready contract: persist, send, apply, advance. */
  private completeReady(node: SimNode): void {
    const rd = node.inFlight!.rd;
    node.inFlight = undefined;
    const storage = node.storage;
    // 2. persist (one durable transaction).
    for (const chunk of rd.snapshotChunks) storage.stageSnapshotChunk(chunk.metadata, chunk.offset, chunk.data);
    if (rd.snapshot !== undefined) {
      const data = storage.takeStagedSnapshot(rd.snapshot);
      storage.applySnapshot(rd.snapshot, data);
      const machine = KvMachine.restore(data);
      if (machine.applied !== rd.snapshot.index) {
        this.checkers.violate(CheckerName.StateMachineSafety, `n${node.id} got snapshot ${rd.snapshot.index} holding state applied to ${machine.applied}`);
      }
      machine.applied = rd.snapshot.index;
      machine.confState = structuredClone(rd.snapshot.confState);
      node.machine = machine;
      node.machineDurable = machine.serialize();
      node.reads = node.reads.filter((read) => read.index === undefined); // re-served below as applied advances
      this.stats.snapshotsInstalled++;
      this.trace(`n${node.id} installed snapshot ${rd.snapshot.index} (term ${rd.snapshot.term}, ${rd.snapshot.sizeBytes} bytes)`);
      this.checkers.onStateHash(node.id, rd.snapshot.index, machine.stateHash());
    }
    if (rd.entries.length > 0) {
      storage.append(rd.entries);
      for (const entry of rd.entries) this.checkers.onPersist(node.id, entry, termOr(storage, entry.index - 1));
    }
    if (rd.hardState !== undefined) storage.setHardState(rd.hardState);
    // 3. messages that promise durable state.
    this.send(rd.messages);
    // 4. apply.
    for (const entry of rd.committedEntries) this.apply(node, entry);
    for (const rs of rd.readStates) {
      const context = decoder.decode(rs.requestContext);
      const read = node.reads.find((x) => x.context === context);
      if (read !== undefined && read.index === undefined) read.index = rs.index;
    }
    if (this.faultRandom.float() < this.config.stateSyncRate || rd.snapshot !== undefined) node.machineDurable = node.machine.serialize();
    // 5. advance.
    node.raw!.advance();
    this.observe(node);
    this.serveReads(node);
    this.stopIfViolated();
  }

  private apply(node: SimNode, entry: Entry): void {
    const machine = node.machine;
    if (entry.index <= machine.applied) return; // replay below a restored snapshot
    assert(entry.index === machine.applied + 1, `n${node.id} applies ${entry.index} after ${machine.applied}`);
    if (entry.type === EntryType.ConfChange) {
      const cc = decodeConfChange(entry.data);
      machine.confState = node.raw!.applyConfChange(cc);
      node.storage.confState = structuredClone(machine.confState);
      if (entry.index > this.latestConf.index) {
        this.latestConf = { index: entry.index, confState: structuredClone(machine.confState) };
        const cs = machine.confState;
        this.trace(`config at ${entry.index}: voters ${cs.voters.join(',')}${cs.votersOutgoing.length > 0 ? ` & ${cs.votersOutgoing.join(',')}` : ''} learners ${cs.learners.join(',') || '-'}`);
      }
    } else if (entry.data.length > 0) {
      const command = JSON.parse(decoder.decode(entry.data)) as Command;
      const verdict = machine.sessions.check(command.sessionId, command.sequence);
      if (verdict === SessionVerdict.Apply) {
        machine.kv.set(command.key, command.value);
        machine.sessions.record(command.sessionId, command.sequence, entry.index, new Uint8Array(0));
        const invokedAt = this.invokedAt.get(command.value) ?? 0;
        this.checkers.onSessionApply(command.sessionId, command.sequence, entry.index, command.value, invokedAt);
      }
      if (verdict === SessionVerdict.Apply || verdict === SessionVerdict.Duplicate) this.maybeAckWrite(node, command, entry.index);
    }
    machine.applied = entry.index;
    this.checkers.onApply(node.id, entry, machine.stateHash());
  }

  // ---------------------------------------------------------------- clients

  /** invokedAt: value -> event number of the first invocation of its write. */
  private readonly invokedAt = new Map<string, number>();

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
        client.op = {
          kind,
          key,
          value,
          sequence,
          invokedAt: this.nextEvent(),
          target: 0,
          retryAt: 0,
          proposed: false,
          readId: 0,
          attempts: 0,
          timeouts: 0,
          redirected: false,
        };
        if (kind === 'write') this.invokedAt.set(value, client.op.invokedAt);
        this.attempt(client);
      } else if (this.step >= op.retryAt) {
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

  /** attempt: send the client's current request to a node (a retry keeps the same sequence). */
  private attempt(client: Client): void {
    const op = client.op!;
    // A retry after a timeout means the node we tried did not answer: forget it as the leader.
    if (op.attempts > 0 && this.step >= op.retryAt && op.target === client.leaderHint) client.leaderHint = 0;
    op.attempts++;
    // Exponential backoff (capped at 4x): a client that keeps timing out must not flood the log.
    if (op.attempts > 1 && !op.redirected) op.timeouts++;
    op.redirected = false;
    const timeoutSteps = this.config.clientTimeoutTicks * this.config.stepsPerTick * 2 ** Math.min(2, op.timeouts);
    op.retryAt = this.step + timeoutSteps;
    const node = this.pickTarget(client);
    if (node === undefined || node.state !== 'up') return; // lost: the client times out
    op.target = node.id;
    const raw = node.raw!;
    try {
      if (op.kind === 'write') {
        const command: Command = { sessionId: client.sessionId, sequence: op.sequence, key: op.key, value: op.value };
        const index = raw.propose(encoder.encode(JSON.stringify(command)));
        op.proposed = true;
        this.trace(`client ${client.sessionId} write ${op.key}=${op.value} to n${node.id} at ${index} (attempt ${op.attempts})`);
      } else {
        op.readId = ++this.readCount;
        const context = `r${op.readId}`;
        node.reads.push({ readId: op.readId, context, index: undefined });
        raw.readIndex(encoder.encode(context));
        this.trace(`client ${client.sessionId} read ${op.key} at n${node.id} (${context})`);
      }
    } catch (error) {
      if (error instanceof NotLeaderError) {
        client.leaderHint = error.leaderId;
        op.retryAt = this.step + this.config.stepsPerTick; // redirect quickly
        op.redirected = true;
      } else if (!(error instanceof ChardError)) {
        throw error;
      }
      if (op.kind === 'read') node.reads = node.reads.filter((x) => x.readId !== op.readId);
    }
    this.observe(node);
  }

  private maybeAckWrite(node: SimNode, command: Command, index: number): void {
    for (const client of this.clients) {
      const op = client.op;
      if (client.sessionId !== command.sessionId || op === undefined || op.kind !== 'write' || op.sequence !== command.sequence) continue;
      if (op.target !== node.id) return; // the client waits on another node; it will retry there
      const appliedIndex = this.checkers.appliedAt.get(`${command.sessionId}/${command.sequence}`) ?? index;
      const ackedAt = this.nextEvent();
      this.checkers.onWriteAcked({
        sessionId: command.sessionId,
        sequence: command.sequence,
        key: op.key,
        value: op.value,
        index: appliedIndex,
        invokedAt: op.invokedAt,
        ackedAt,
      });
      client.leaderHint = node.id;
      client.op = undefined;
      this.trace(`client ${client.sessionId} write ${op.key}=${op.value} ACKED by n${node.id} (index ${appliedIndex})`);
      return;
    }
  }

  private serveReads(node: SimNode): void {
    if (node.reads.length === 0) return;
    const remaining: PendingRead[] = [];
    for (const read of node.reads) {
      if (read.index === undefined || read.index > node.machine.applied) {
        remaining.push(read);
        continue;
      }
      const client = this.clients.find((c) => c.op?.kind === 'read' && c.op.readId === read.readId);
      if (client === undefined) continue; // abandoned
      const op = client.op!;
      const value = node.machine.kv.get(op.key);
      const completedAt = this.nextEvent();
      this.trace(`client ${client.sessionId} read ${op.key} = ${value ?? '(unset)'} from n${node.id} (read index ${read.index}, applied ${node.machine.applied})`);
      this.checkers.onRead(node.id, op.key, value, op.invokedAt, completedAt, read.index);
      client.op = undefined;
    }
    node.reads = remaining;
  }

  // ---------------------------------------------------------------- liveness

  /**
   * liveness: heal everything and require, within `livenessTimeoutsMax` election timeouts, a leader,
   * a fresh proposal committed and applied by it, and every member of the latest configuration
   * applied up to it with equal state.
   */
  private liveness(): void {
    const c = this.config;
    this.faultsOn = false;
    this.dropRate = 0;
    this.duplicateRate = 0;
    // A round trip must fit well inside an election timeout, or no election can be expected to succeed.
    this.delayStepsMax = Math.max(1, Math.min(this.delayStepsMax, Math.floor((c.electionTimeoutTicks * c.stepsPerTick) / 4)));
    this.cut.clear();
    this.healAt = 0;
    this.trace('LIVENESS phase: healed, restarting and resuming every node');
    const members = (): NodeId[] => {
      const cs = this.latestConf.confState;
      return [...new Set([...cs.voters, ...cs.votersOutgoing, ...cs.learners, ...cs.learnersNext])];
    };
    for (const node of this.nodes.values()) {
      if (node.state === 'crashed') this.restart(node);
      else if (node.state === 'paused') this.resume(node);
    }
    const probe: Client = { sessionId: 'live', scripted: true, sequence: 0, op: undefined, leaderHint: 0 };
    this.clients.push(probe);
    const limitSteps = this.step + (this.options.livenessTimeoutsMax ?? 40) * c.electionTimeoutTicks * c.stepsPerTick;
    let probeIndex = 0;
    while (this.step < limitSteps) {
      // Nodes removed from the latest configuration are shut down by the operator, once every
      // member has applied that configuration (before, a member may still need their votes).
      const current = members();
      const settled = current.every((id) => (this.nodes.get(id)?.machine.applied ?? 0) >= this.latestConf.index);
      for (const node of this.nodes.values()) {
        if (settled && !current.includes(node.id) && node.state === 'up') {
          node.state = 'stopped';
          node.raw = undefined;
          node.inFlight = undefined;
          node.reads = [];
          this.trace(`n${node.id} stopped (not in the configuration)`);
        } else if (current.includes(node.id) && node.state === 'stopped') {
          node.state = 'crashed';
          this.restart(node); // added back by a change that committed late
        }
      }
      if (probeIndex === 0 && probe.op === undefined) {
        const done = this.checkers.appliedAt.get('live/1');
        if (done !== undefined && probe.sequence === 1) probeIndex = done;
        else if (probe.sequence === 0) {
          probe.sequence = 1;
          probe.op = { kind: 'write', key: 'live', value: 'live.1', sequence: 1, invokedAt: this.nextEvent(), target: 0, retryAt: 0, proposed: false, readId: 0, attempts: 0, timeouts: 0, redirected: false };
          this.invokedAt.set('live.1', probe.op.invokedAt);
        }
      }
      if (probe.op !== undefined && this.step >= probe.op.retryAt) {
        const leader = this.currentLeader();
        if (leader !== undefined) probe.leaderHint = leader.id;
        this.attempt(probe);
      }
      if (probe.op === undefined && probe.sequence === 1) probeIndex = this.checkers.appliedAt.get('live/1') ?? 0;
      if (probeIndex > 0) {
        const lagging = current.filter((id) => {
          const node = this.nodes.get(id);
          return node === undefined || node.state !== 'up' || node.machine.applied < probeIndex;
        });
        if (lagging.length === 0) {
          this.trace(`LIVENESS ok: probe committed at ${probeIndex}, members ${current.join(',')} caught up by tick ${this.tick()}`);
          this.checkAckedWrites(current, probeIndex);
          return;
        }
      }
      this.runStep();
    }
    const statuses = [...this.nodes.values()]
      .map((n) => {
        if (n.state !== 'up') return `n${n.id}:${n.state}`;
        const s = n.raw!.raft;
        return `n${n.id}:${s.role}/t${s.term}/commit${s.log.committed}/applied${n.machine.applied}/last${s.log.lastIndex()}`;
      })
      .join(' ');
    const leader = this.currentLeader();
    const progress =
      leader === undefined
        ? 'no leader'
        : [...leader.raw!.status().progress.entries()]
            .map(([id, p]) => `${id}:${p.state}/match${p.match}/next${p.next}/active${p.recentActive ? 1 : 0}/inflight${p.inflight}/snap${p.snapshotSent}-${p.snapshotAcked}`)
            .join(' ');
    this.checkers.violate(
      CheckerName.Liveness,
      `no progress within ${this.options.livenessTimeoutsMax ?? 40} election timeouts after healing (probe index ${probeIndex || 'none'}; members ${members().join(',')}; ${statuses}; leader progress ${progress}; leader snapshot ${leader?.storage.snapshot().index ?? '-'})`,
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
        const session = node.machine.sessions.entries().find((s) => s.sessionId === write.sessionId);
        if (session === undefined || session.lastSequence < write.sequence) {
          this.checkers.violate(
            CheckerName.AckedWriteDurable,
            `n${id} (applied ${node.machine.applied}) lost acknowledged write ${write.sessionId}/${write.sequence} (index ${write.index})`,
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

function termOr(storage: MemoryStorage, index: number): number {
  try {
    return storage.term(index);
  } catch {
    return -1;
  }
}
