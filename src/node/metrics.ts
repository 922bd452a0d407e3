/**
 * metrics: the one place that counts events in a node (or attach agent) process. Every layer
 * reports through `Counters` (`inc`, `set`, `observe`, or the `onEvent(name, value?)` callback);
 * `PromExporter` maps those names onto prom-client metrics in its own Registry (never the global
 * one), so a layer never imports prom-client and the Admin.Metrics JSON and the Prometheus text
 * (src/node/metrics-http.ts) are fed by the same calls.
 *
 * Durations are observed in milliseconds under names ending in `_ms` and exported in seconds.
 * A Counters name the exporter does not map explicitly is still exported, as
 * `chard_events_total{event="<name>"}` (names come from code, never from peer input, so the label
 * set is bounded). A name `refused.<listener>.<reason>` is exported as
 * `chard_refused_connections_total{listener, reason}` without a mapping entry.
 */

import { monitorEventLoopDelay } from 'node:perf_hooks';
import { assert } from '../assert.js';
import * as prom from 'prom-client';
import type { BlockBackend, ExportHandle } from '../nbd/backend.js';
import { Role } from '../raft/types.js';

/** CounterSink: receives every inc/set/observe of a Counters (the Prometheus exporter). */
export interface CounterSink {
  inc(name: string, by: number): void;
  set(name: string, value: number): void;
  observe(name: string, value: number): void;
}

export class Counters {
  private readonly counts = new Map<string, number>();
  private readonly gauges = new Map<string, number>();
  /** histograms: the most recent samplesMax samples of each name, a ring once full (`next`: the oldest). */
  private readonly histograms = new Map<string, { samples: number[]; next: number }>();
  private readonly sinks: CounterSink[] = [];
  /** samplesMax: bounded memory per histogram (a ring of the most recent samples). */
  constructor(readonly samplesMax = 4096) {}

  inc(name: string, by = 1): void {
    this.counts.set(name, (this.counts.get(name) ?? 0) + by);
    for (const sink of this.sinks) sink.inc(name, by);
  }

  set(name: string, value: number): void {
    this.gauges.set(name, value);
    for (const sink of this.sinks) sink.set(name, value);
  }

  observe(name: string, value: number): void {
    let ring = this.histograms.get(name);
    if (ring === undefined) {
      ring = { samples: [], next: 0 };
      this.histograms.set(name, ring);
    }
    // A ring, not push + shift: shift moves all samplesMax samples, once per observation.
    if (ring.samples.length < this.samplesMax) ring.samples.push(value);
    else {
      ring.samples[ring.next] = value;
      ring.next = (ring.next + 1) % this.samplesMax;
    }
    for (const sink of this.sinks) sink.observe(name, value);
  }

  /** attach: forward every later event to `sink`, after replaying the counts and gauges so far. */
  attach(sink: CounterSink): void {
    for (const [name, value] of this.counts) sink.inc(name, value);
    for (const [name, value] of this.gauges) sink.set(name, value);
    this.sinks.push(sink);
  }

  /** onEvent: a callback to hand to layers (`onEvent('nbd.request.read')`). */
  readonly onEvent = (name: string, value = 1): void => this.inc(name, value);

  snapshot(): { counts: Record<string, number>; gauges: Record<string, number>; quantiles: Record<string, { p50: number; p99: number; max: number; count: number }> } {
    const quantiles: Record<string, { p50: number; p99: number; max: number; count: number }> = {};
    for (const [name, { samples }] of this.histograms) {
      const sorted = [...samples].sort((a, b) => a - b);
      const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
      quantiles[name] = { p50: at(0.5), p99: at(0.99), max: sorted[sorted.length - 1] ?? 0, count: sorted.length };
    }
    return { counts: Object.fromEntries(this.counts), gauges: Object.fromEntries(this.gauges), quantiles };
  }
}

// ------------------------------------------------------------------ event-loop delay

/** eventLoopDelayEveryMs: the period of one `node.event_loop_delay_ms` sample. */
export const eventLoopDelayEveryMs = 1000;
/** eventLoopDelayResolutionMs: the sampling timer of perf_hooks.monitorEventLoopDelay. */
export const eventLoopDelayResolutionMs = 10;

/**
 * watchEventLoopDelay: once per `eventLoopDelayEveryMs`, observes `node.event_loop_delay_ms`, the
 * longest time the event loop was blocked in that period (perf_hooks.monitorEventLoopDelay). A
 * stall longer than the election timeout (300 ms) on a leader costs its leadership (CheckQuorum),
 * so this is the figure to compare with it. A stall that spans the period is observed when it ends.
 */
export function watchEventLoopDelay(counters: Counters): { close(): void } {
  const histogram = monitorEventLoopDelay({ resolution: eventLoopDelayResolutionMs });
  histogram.enable();
  const timer = setInterval(() => {
    if (histogram.count > 0) counters.observe('node.event_loop_delay_ms', histogram.max / 1e6);
    histogram.reset();
  }, eventLoopDelayEveryMs);
  timer.unref();
  return {
    close: () => {
      clearInterval(timer);
      histogram.disable();
    },
  };
}

/** stateCheckpointsEveryMs: the period at which the state.db checkpoint figures are copied into the counters. */
export const stateCheckpointsEveryMs = 1000;

/** CheckpointSource: what watchStateCheckpoints reads (a BlockStateMachine's Checkpointer). */
export interface CheckpointSource {
  checkpointsBy(): { size: number; idle: number };
  /** pendingBytes: undefined while no worker runs (unknown: the gauge keeps its last value). */
  pendingBytes(): number | undefined;
}

/** BlockPlacementSource: block rows made pointers into the log, and pointer rows moved into their rows (BlockStateMachine.refStats). */
export interface BlockPlacementSource {
  readonly refStats: { refsStored: number; relocated: number };
}

/**
 * watchStateCheckpoints: once per `stateCheckpointsEveryMs`, counts the state.db WAL checkpoints
 * the worker ran since the last look (`store.state_checkpoints.size` / `.idle`,
 * chard_state_checkpoints_total{trigger}) and sets `store.state_wal_pending_bytes` (bytes of WAL
 * not yet in state.db). `chard bench` waits for an idle checkpoint after each job, so that the
 * write amplification it reports includes the checkpoint of that job's writes. With `blocks`, also
 * the blocks stored as pointers into the log and those relocated into their rows since the last
 * look (`store.blocks.in_log` / `.relocated`, chard_state_blocks_placed_total{where}).
 */
export function watchStateCheckpoints(source: CheckpointSource | undefined, counters: Counters, blocks?: BlockPlacementSource): { close(): void } {
  if (source === undefined) return { close: () => undefined };
  let seen = { size: 0, idle: 0 };
  let seenBlocks = { refsStored: 0, relocated: 0 };
  counters.inc('store.state_checkpoints.size', 0);
  counters.inc('store.state_checkpoints.idle', 0);
  if (blocks !== undefined) {
    counters.inc('store.blocks.in_log', 0);
    counters.inc('store.blocks.relocated', 0);
  }
  const sample = () => {
    if (blocks !== undefined) {
      const now = { ...blocks.refStats };
      if (now.refsStored > seenBlocks.refsStored) counters.inc('store.blocks.in_log', now.refsStored - seenBlocks.refsStored);
      if (now.relocated > seenBlocks.relocated) counters.inc('store.blocks.relocated', now.relocated - seenBlocks.relocated);
      seenBlocks = now;
    }
    const now = source.checkpointsBy();
    if (now.size > seen.size) counters.inc('store.state_checkpoints.size', now.size - seen.size);
    if (now.idle > seen.idle) counters.inc('store.state_checkpoints.idle', now.idle - seen.idle);
    seen = now;
    const pending = source.pendingBytes();
    if (pending !== undefined) counters.set('store.state_wal_pending_bytes', pending);
  };
  sample();
  const timer = setInterval(sample, stateCheckpointsEveryMs);
  timer.unref();
  return { close: () => clearInterval(timer) };
}

// ------------------------------------------------------------------ NBD latency and in-flight

/** nbdCommands: the label values of `command` (NBD_CMD_* in lower case). */
export const nbdCommands = ['read', 'write', 'trim', 'write_zeroes', 'flush', 'cache', 'block_status'] as const;
export type NbdCommandName = (typeof nbdCommands)[number];

/** slowRequestMs: an NBD request that takes longer is logged at warn with its request id. */
export const slowRequestMs = 1_000;

/** RequestLogger: the subset of pino the metered backend logs with. */
export interface RequestLogger {
  debug(o: object, m?: string): void;
  warn(o: object, m?: string): void;
  /** isLevelEnabled: pino's; without it, debug is taken as enabled. */
  isLevelEnabled?(level: string): boolean;
}

/**
 * meteredBackend: wraps a BlockBackend so that every export call is timed
 * (`nbd.<command>_ms`, from the call to its settling) and the calls in flight are a gauge
 * (`nbd.inflight`). The NBD server counts the requests themselves (`nbd.<command>Requests`).
 * With a logger, every opened export gets a connection id and every request an id
 * (`req: "c<conn>.<n>"`), logged at debug when it settles and at warn when slower than
 * `slowRequestMs` or failed.
 */
export function meteredBackend(backend: BlockBackend, counters: Counters, logger?: RequestLogger): BlockBackend {
  let inflight = 0;
  let connections = 0;
  const timed = <T>(conn: number, seq: () => number, command: NbdCommandName, offset: number, length: number, call: () => Promise<T>): Promise<T> => {
    const started = performance.now();
    counters.set('nbd.inflight', ++inflight);
    const request = logger === undefined ? 0 : seq(); // numbered whether or not it is logged
    const settle = (error?: unknown) => {
      counters.set('nbd.inflight', --inflight);
      const ms = performance.now() - started;
      counters.observe(`nbd.${command}_ms`, ms);
      if (logger === undefined) return;
      // The fields of a request that went well are built only when debug logging is on.
      if (error === undefined && ms <= slowRequestMs && logger.isLevelEnabled?.('debug') === false) return;
      const fields = { req: `c${conn}.${request}`, command, offset, length, ms: Math.round(ms * 100) / 100 };
      if (error !== undefined) logger.warn({ ...fields, err: String(error) }, 'nbd request failed');
      else if (ms > slowRequestMs) logger.warn(fields, 'slow nbd request');
      else logger.debug(fields, 'nbd request');
    };
    let promise: Promise<T>;
    try {
      promise = call();
    } catch (error) {
      settle();
      throw error;
    }
    promise.then(() => settle(), (error: unknown) => settle(error ?? 'rejected'));
    return promise;
  };
  return {
    listExports: () => backend.listExports(),
    defaultExportName: () => backend.defaultExportName(),
    open: async (name: string): Promise<ExportHandle> => {
      const handle = await backend.open(name);
      const conn = ++connections;
      let requests = 0;
      const seq = () => ++requests;
      logger?.debug({ conn: `c${conn}`, export: name }, 'nbd export opened');
      return {
        info: () => handle.info(),
        read: (offset, length) => timed(conn, seq, 'read', offset, length, () => handle.read(offset, length)),
        write: (offset, data, flags) => timed(conn, seq, 'write', offset, data.length, () => handle.write(offset, data, flags)),
        trim: (offset, length, flags) => timed(conn, seq, 'trim', offset, length, () => handle.trim(offset, length, flags)),
        writeZeroes: (offset, length, flags) => timed(conn, seq, 'write_zeroes', offset, length, () => handle.writeZeroes(offset, length, flags)),
        flush: () => timed(conn, seq, 'flush', 0, 0, () => handle.flush()),
        cache: (offset, length) => timed(conn, seq, 'cache', offset, length, () => handle.cache(offset, length)),
        blockStatus: (offset, length) => timed(conn, seq, 'block_status', offset, length, () => handle.blockStatus(offset, length)),
        close: () => {
          logger?.debug({ conn: `c${conn}`, requests }, 'nbd export closed');
          return handle.close();
        },
      };
    },
  };
}

// ------------------------------------------------------------------ Prometheus exporter

/** latencyBuckets: seconds, 0.25 ms .. 10 s. */
export const latencyBuckets = [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
export const entriesBuckets = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096];

/** Status the exporter reads at scrape time from a node (absent for the agent). */
export interface RaftStatusView {
  term: number;
  role: string;
  leader: number;
  commitIndex: number;
  appliedIndex: number;
  lastIndex: number;
  snapshotIndex: number;
  snapshotBytes: number;
  /** progress: the leader's view of each member (empty on a follower). */
  progress: { id: number; match: number; snapshotSent: number; snapshotAcked: number }[];
}

/** raftRoles: the label values of chard_raft_role (the raft core's role names). */
export const raftRoles = Object.values(Role);

const nbdCommandOfEvent: Record<string, NbdCommandName> = {
  readRequests: 'read',
  writeRequests: 'write',
  trimRequests: 'trim',
  writeZeroesRequests: 'write_zeroes',
  flushRequests: 'flush',
  cacheRequests: 'cache',
  blockStatusRequests: 'block_status',
};

/** refusedEvents: Counters names that count a refused connection or frame, by listener and reason. */
const refusedEvents: Record<string, { listener: string; reason: string }> = {
  'nbd.connectionsRejected': { listener: 'nbd', reason: 'connections_max' },
  'nbd.handshakeTimeouts': { listener: 'nbd', reason: 'handshake_timeout' },
  'nbd.protocolViolations': { listener: 'nbd', reason: 'protocol_violation' },
  'transport.frame.wrong-cluster': { listener: 'raft', reason: 'wrong_cluster' },
  'transport.frame.wrong-node': { listener: 'raft', reason: 'wrong_node' },
  'transport.frame.rejected': { listener: 'raft', reason: 'bad_frame' },
  'raft.message.refused': { listener: 'raft', reason: 'bad_message' },
};

const nbdLatencyHelp = 'NBD request latency at the backend, by command';
const refusedHelp = 'connections, frames and messages refused, by listener and reason';
const agentStallHelp = 'attach agent: how long the cluster did not answer during a failover';
const leaderChangesHelp = 'leader changes this node has seen';
const eventLoopDelayHelp = 'the longest event-loop stall of each second (a leader stalled past the election timeout loses its leadership)';
const proposalHelp = 'from proposing an entry to its being applied on the leader';
const fsyncHelp = 'durable write of a batch of log entries (write + fsync)';
const entriesHelp = 'log entries made durable by one fsync (group commit)';
const snapshotHelp = 'creating a local snapshot';
const compactHelp = 'compacting the log behind the durable state (state.db WAL fdatasync included)';

type Labels = Record<string, string>;

/**
 * PromExporter: prom-client metrics in a Registry of their own, fed by one Counters (attach) and,
 * for a node, by the raft status read at scrape time.
 */
export class PromExporter implements CounterSink {
  readonly registry = new prom.Registry();
  private readonly counters = new Map<string, prom.Counter<string>>();
  /** incPlans: per Counters name, what an inc of it adds to (planInc). */
  private readonly incPlans = new Map<string, Increment[]>();
  private readonly gauges = new Map<string, prom.Gauge<string>>();
  private readonly histograms = new Map<string, prom.Histogram<string>>();
  private lastLeader = 0;
  /** pendingIncs: counter increments summed per Counters name since the last scrape (inc, flush). */
  private readonly pendingIncs = new Map<string, number>();
  private pendingInflight: number | undefined;

  constructor(options: { labels?: Labels; status?: () => RaftStatusView; processMetrics?: boolean } = {}) {
    if (options.labels !== undefined) this.registry.setDefaultLabels(options.labels);
    if (options.processMetrics !== false) prom.collectDefaultMetrics({ register: this.registry, prefix: 'chard_' });
    const status = options.status;
    if (status !== undefined) this.raftGauges(status);
    this.declare(status !== undefined);
  }

  /**
   * declare: the families a dashboard expects, present (at zero) from the first scrape rather
   * than once first used; NBD families with every command label.
   */
  private declare(node: boolean): void {
    for (const command of Object.keys(nbdCommandOfEvent)) this.inc(`nbd.${command}`, 0);
    this.inc('nbd.bytesRead', 0);
    this.inc('nbd.bytesWritten', 0);
    this.set('nbd.inflight', 0);
    for (const command of nbdCommands) this.histogram('chard_nbd_request_duration_seconds', nbdLatencyHelp, latencyBuckets, ['command']).zero({ command });
    this.counter('chard_refused_connections_total', refusedHelp, ['listener', 'reason']);
    if (!node) {
      for (const name of ['agent.retries', 'agent.leader_moved', 'agent.leader_silent']) this.inc(name, 0);
      this.histogram('chard_agent_stall_duration_seconds', agentStallHelp, latencyBuckets);
      return;
    }
    for (const name of ['raft.proposed', 'raft.applied', 'raft.became_leader', 'store.fsync', 'volume.forwarded', 'volume.forward.abandoned', 'volume.write.abandoned', 'volume.read_from_peer.served', 'volume.read_from_peer.failed']) this.inc(name, 0);
        this.counter('chard_raft_leader_changes_total', leaderChangesHelp);
    for (const event of ['created', 'installed', 'failed', 'wanted']) this.inc(`snapshot.${event}`, 0);
    for (const name of ['log.compacted', 'log.compact_failed']) this.inc(name, 0);
    for (const op of ['read', 'write']) {
      this.inc(`volume.${op}.retry`, 0);
      this.inc(`volume.${op}.retried_ok`, 0);
      this.inc(`volume.${op}.gave_up`, 0);
    }
    this.histogram('chard_raft_proposal_duration_seconds', proposalHelp, latencyBuckets);
    this.histogram('chard_raft_fsync_duration_seconds', fsyncHelp, latencyBuckets);
    this.histogram('chard_raft_entries_per_fsync', entriesHelp, entriesBuckets);
    this.histogram('chard_snapshot_create_duration_seconds', snapshotHelp, latencyBuckets);
    this.histogram('chard_log_compact_duration_seconds', compactHelp, latencyBuckets);
    this.histogram('chard_event_loop_delay_seconds', eventLoopDelayHelp, latencyBuckets);
  }

  private counter(name: string, help: string, labelNames: string[] = []): prom.Counter<string> {
    let metric = this.counters.get(name);
    if (metric === undefined) {
      metric = new prom.Counter({ name, help, labelNames, registers: [this.registry] });
      this.counters.set(name, metric);
    }
    return metric;
  }

  private gauge(name: string, help: string, labelNames: string[] = []): prom.Gauge<string> {
    let metric = this.gauges.get(name);
    if (metric === undefined) {
      metric = new prom.Gauge({ name, help, labelNames, registers: [this.registry] });
      this.gauges.set(name, metric);
    }
    return metric;
  }

  private histogram(name: string, help: string, buckets: number[], labelNames: string[] = []): prom.Histogram<string> {
    let metric = this.histograms.get(name);
    if (metric === undefined) {
      metric = new prom.Histogram({ name, help, buckets, labelNames, registers: [this.registry] });
      this.histograms.set(name, metric);
    }
    return metric;
  }

  /** raftGauges: term, role, indexes, snapshot progress and follower lag, read at scrape time. */
  private raftGauges(status: () => RaftStatusView): void {
    const register = (name: string, help: string, labelNames: string[], fill: (g: prom.Gauge<string>, s: RaftStatusView) => void) => {
      const gauge: prom.Gauge<string> = new prom.Gauge({
        name,
        help,
        labelNames,
        registers: [this.registry],
        collect() {
          gauge.reset();
          fill(gauge, status());
        },
      });
      this.gauges.set(name, gauge);
    };
    register('chard_raft_term', 'current raft term of this node', [], (g, s) => g.set(s.term));
    register('chard_raft_role', 'raft role of this node (1 for the current role)', ['role'], (g, s) => {
      for (const role of raftRoles) g.set({ role }, s.role === role ? 1 : 0);
    });
    register('chard_raft_leader', 'id of the leader this node knows (0: none)', [], (g, s) => g.set(s.leader));
    register('chard_raft_commit_index', 'highest log index known committed', [], (g, s) => g.set(s.commitIndex));
    register('chard_raft_applied_index', 'highest log index applied to the block state', [], (g, s) => g.set(s.appliedIndex));
    register('chard_raft_last_index', 'last index of the local log', [], (g, s) => g.set(s.lastIndex));
    register('chard_raft_follower_lag_entries', 'on the leader: entries each member is behind the leader log', ['peer'], (g, s) => {
      for (const p of s.progress) g.set({ peer: String(p.id) }, Math.max(0, s.lastIndex - p.match));
    });
    register('chard_snapshot_index', 'log index of the latest local snapshot', [], (g, s) => g.set(s.snapshotIndex));
    register('chard_snapshot_bytes', 'size of the latest local snapshot', [], (g, s) => g.set(s.snapshotBytes));
    register('chard_snapshot_transfer_bytes', 'on the leader: bytes of the snapshot being sent to a member, sent and acknowledged', ['peer', 'state'], (g, s) => {
      for (const p of s.progress) {
        if (p.snapshotSent === 0 && p.snapshotAcked === 0) continue;
        g.set({ peer: String(p.id), state: 'sent' }, p.snapshotSent);
        g.set({ peer: String(p.id), state: 'acked' }, p.snapshotAcked);
      }
    });
  }

  inc(name: string, by: number): void {
    assert(!(by < 0), `a counter only grows (${name} by ${by})`); // what prom-client refuses, refused where it happens
    // Every NBD request and raft message counts several names: the name → metrics mapping is
    // worked out once per name (names come from code: a bounded set; incPlansMax is a backstop),
    // and what only adds to counters is summed here and added at the next scrape (flush): a
    // prom-client inc hashes its labels each time, ~3 % of a leader's CPU under 4K reads.
    let plan = this.incPlans.get(name);
    if (plan === undefined) {
      plan = this.planInc(name);
      if (this.incPlans.size < incPlansMax) this.incPlans.set(name, plan);
    }
    if (plan.every((increment) => increment.deferrable === true) && (this.pendingIncs.has(name) || this.pendingIncs.size < incPlansMax)) {
      this.pendingIncs.set(name, (this.pendingIncs.get(name) ?? 0) + by);
      return;
    }
    for (const increment of plan) increment(by);
  }

  /** flush: add the summed counter increments and the latest deferred gauge values to the prom-client metrics. */
  private flush(): void {
    for (const [name, by] of this.pendingIncs) {
      this.pendingIncs.delete(name); // taken before it is applied: a failure is never applied twice
      const plan = this.incPlans.get(name) ?? this.planInc(name);
      for (const increment of plan) increment(by);
    }
    if (this.pendingInflight !== undefined) {
      this.gauge('chard_nbd_inflight_requests', 'NBD requests being served').set(this.pendingInflight);
      this.pendingInflight = undefined;
    }
  }

  /** planInc: the metrics an inc of `name` adds to. */
  private planInc(name: string): Increment[] {
    const plan: Increment[] = [];
    const refused = refusedEvents[name] ?? refusedLabels(name);
    if (refused !== undefined) {
      plan.push(countTo(this.counter('chard_refused_connections_total', refusedHelp, ['listener', 'reason']), refused));
      if (name.startsWith('refused.')) return plan;
    }
    const mapped = this.mapCount(name);
    if (mapped !== undefined) plan.push(...mapped);
    else if (refused === undefined) plan.push(countTo(this.counter('chard_events_total', 'every other counted event, by its internal name', ['event']), { event: name }));
    return plan;
  }

  /** mapCount: the explicit name → metric table: what an inc of `name` adds to; undefined when `name` is not in it. */
  private mapCount(name: string): Increment[] | undefined {
    const parts = name.split('.');
    if (parts[0] === 'nbd') {
      const event = parts[1] ?? '';
      const command = nbdCommandOfEvent[event];
      if (command !== undefined) {
        return [countTo(this.counter('chard_nbd_requests_total', 'valid NBD requests, by command', ['command']), { command })];
      }
      switch (event) {
        case 'bytesWritten':
          return [countTo(this.counter('chard_nbd_bytes_total', 'NBD payload bytes, in (written) and out (read)', ['direction']), { direction: 'in' })];
        case 'bytesRead':
          return [countTo(this.counter('chard_nbd_bytes_total', 'NBD payload bytes, in (written) and out (read)', ['direction']), { direction: 'out' })];
        case 'connectionsAccepted':
          return [countTo(this.counter('chard_nbd_connections_total', 'NBD connections accepted and closed', ['event']), { event: 'accepted' })];
        case 'connectionsClosed':
          return [countTo(this.counter('chard_nbd_connections_total', 'NBD connections accepted and closed', ['event']), { event: 'closed' })];
        case 'fuaRequests':
          return [countTo(this.counter('chard_nbd_fua_requests_total', 'NBD write-like requests with the FUA flag'))];
        case 'replyErrors':
        case 'internalErrors':
        case 'backendBugs':
        case 'remoteErrorDisconnects':
          return [countTo(this.counter('chard_nbd_errors_total', 'NBD error replies and disconnects, by kind', ['kind']), { kind: event })];
        default:
          return undefined;
      }
    }
    switch (name) {
      case 'raft.proposed':
        return [countTo(this.counter('chard_raft_proposals_total', 'entries proposed by this node as leader'))];
      case 'raft.applied':
        return [countTo(this.counter('chard_raft_applied_entries_total', 'log entries applied to the block state'))];
      case 'raft.became_leader':
        return [countTo(this.counter('chard_raft_became_leader_total', 'times this node became the leader'))];
      case 'raft.conf_change':
        return [countTo(this.counter('chard_raft_conf_changes_total', 'membership changes applied'))];
      case 'store.fsync':
        return [countTo(this.counter('chard_raft_fsyncs_total', 'durable log writes (one fsync each)'))];
      case 'store.entries':
        // Counted once per fsync with that fsync's entry count: both the total and the distribution.
        return [countTo(this.counter('chard_raft_persisted_entries_total', 'log entries made durable')), observeTo(this.histogram('chard_raft_entries_per_fsync', entriesHelp, entriesBuckets))];
      case 'snapshot.created':
      case 'snapshot.installed':
      case 'snapshot.failed':
      case 'snapshot.wanted':
        return [countTo(this.counter('chard_snapshots_total', 'snapshots created, installed (received from the leader), failed, and wanted (raft asked for one for a follower behind the compacted log)', ['event']), { event: parts[1]! })];
      case 'store.state_checkpoints.size':
      case 'store.state_checkpoints.idle':
        return [countTo(this.counter('chard_state_checkpoints_total', 'state.db WAL checkpoints run off the event loop, by trigger (the WAL reached its size, or went idle)', ['trigger']), { trigger: parts[2]! })];
      case 'store.blocks.in_log':
      case 'store.blocks.relocated':
        return [
          countTo(
            this.counter('chard_state_blocks_placed_total', 'blocks stored as pointers into their raft log records (in_log), and blocks copied from the log into state.db rows before a compaction dropped their records (relocated)', ['where']),
            { where: parts[2]! },
          ),
        ];
      case 'log.compacted':
      case 'log.compact_failed':
        return [countTo(this.counter('chard_log_compactions_total', 'log compactions behind the durable state, done and failed', ['outcome']), { outcome: parts[1] === 'compacted' ? 'done' : 'failed' })];
      case 'volume.read_from_peer.served':
      case 'volume.read_from_peer.failed':
        return [countTo(this.counter('chard_reads_from_peer_total', 'reads served by a peer because a block failed its checksum here, and those no peer could serve', ['outcome']), { outcome: parts[2]! })];
      case 'volume.forwarded':
        return [countTo(this.counter('chard_forwarded_requests_total', 'writes this follower forwarded to the leader'))];
      case 'volume.forward.abandoned':
        return [countTo(this.counter('chard_forwarded_abandoned_total', 'forwarded writes abandoned because the leader changed (then retried)'))];
      case 'agent.retries':
        return [countTo(this.counter('chard_agent_retried_requests_total', 'extra attempts the attach agent made (other node, new leader)'))];
      case 'agent.leader_moved':
        return [countTo(this.counter('chard_agent_leader_changes_total', 'waiting requests redirected to a new leader'))];
      case 'agent.leader_silent':
        return [countTo(this.counter('chard_agent_silent_leader_total', 'waiting requests moved to the next node because the leader answered no status poll for callTimeoutMs'))];
      case 'volume.write.abandoned':
        return [countTo(this.counter('chard_abandoned_writes_total', 'write-like RPCs dropped from the in-flight queue because their call had ended before they were proposed'))];
      default:
        break;
    }
    if (parts[0] === 'volume' && parts.length === 3) {
      const op = parts[1]!;
      if (parts[2] === 'retry') {
        return [countTo(this.counter('chard_retried_requests_total', 'retries of a read barrier or write on this node, by operation', ['op']), { op })];
      }
      if (parts[2] === 'retried_ok' || parts[2] === 'gave_up') {
        return [countTo(this.counter('chard_retry_outcomes_total', 'operations that needed retries, by outcome', ['op', 'outcome']), { op, outcome: parts[2] })];
      }
    }
    if (parts[0] === 'agent' && parts[1] === 'attempt_failed' && parts.length === 3) {
      return [countTo(this.counter('chard_agent_failed_attempts_total', 'attach agent attempts that failed and were retried (or gave up), by error code', ['code']), { code: parts[2]! })];
    }
    if (parts[0] === 'agent' && parts[2] === 'failed' && parts.length === 3) {
      return [countTo(this.counter('chard_agent_failed_requests_total', 'attach agent requests failed after unavailableTimeoutMs', ['op']), { op: parts[1]! })];
    }
    if (parts[0] === 'grpc' && parts.length === 4) {
      return [countTo(this.counter('chard_grpc_requests_total', 'admin and block RPCs served, by method and outcome', ['method', 'outcome']), { method: `${parts[1]}.${parts[2]}`, outcome: parts[3]! })];
    }
    if (name === 'transport.messages.sent' || name === 'transport.messages.received') {
      return [countTo(this.counter('chard_raft_messages_total', 'raft messages exchanged with peers', ['direction']), { direction: parts[2]! })];
    }
    return undefined;
  }

  set(name: string, value: number): void {
    switch (name) {
      case 'raft.leader':
        if (value !== 0 && value !== this.lastLeader) {
          this.lastLeader = value;
          this.counter('chard_raft_leader_changes_total', leaderChangesHelp).inc();
        }
        return;
      case 'nbd.inflight':
        this.pendingInflight = value; // set twice per request; the scrape sees the latest (flush)
        return;
      case 'store.state_wal_pending_bytes':
        this.gauge('chard_state_wal_pending_bytes', 'bytes of the state.db WAL not yet checkpointed into state.db').set(value);
        return;
      default:
        return; // raft indexes are read from the status at scrape time
    }
  }

  observe(name: string, value: number): void {
    const seconds = value / 1000;
    if (name.startsWith('nbd.') && name.endsWith('_ms')) {
      const command = name.slice(4, -3);
      if ((nbdCommands as readonly string[]).includes(command)) {
        this.histogram('chard_nbd_request_duration_seconds', nbdLatencyHelp, latencyBuckets, ['command']).observe({ command }, seconds);
      }
      return;
    }
    switch (name) {
      case 'raft.propose_ms':
        this.histogram('chard_raft_proposal_duration_seconds', proposalHelp, latencyBuckets).observe(seconds);
        return;
      case 'store.persist_ms':
        this.histogram('chard_raft_fsync_duration_seconds', fsyncHelp, latencyBuckets).observe(seconds);
        return;
      case 'snapshot.create_ms':
        this.histogram('chard_snapshot_create_duration_seconds', snapshotHelp, latencyBuckets).observe(seconds);
        return;
      case 'log.compact_ms':
        this.histogram('chard_log_compact_duration_seconds', compactHelp, latencyBuckets).observe(seconds);
        return;
      case 'agent.stall_ms':
        this.histogram('chard_agent_stall_duration_seconds', agentStallHelp, latencyBuckets).observe(seconds);
        return;
      case 'node.event_loop_delay_ms':
        this.histogram('chard_event_loop_delay_seconds', eventLoopDelayHelp, latencyBuckets).observe(seconds);
        return;
      default:
        return;
    }
  }

  /** text: the Prometheus text exposition of every metric. */
  async text(): Promise<string> {
    this.flush(); // a failure rejects this scrape (the HTTP handler answers 500), never the caller of inc
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}

/**
 * Increment: adds `by` to one metric (a counter with fixed labels, or a histogram's observation).
 * `deferrable`: increments may be summed and applied later as one (counters, not observations).
 */
type Increment = ((by: number) => void) & { deferrable?: boolean };

/** incPlansMax: names whose inc plan PromExporter keeps (far above the names the code counts). */
const incPlansMax = 4096;

function countTo(counter: prom.Counter<string>, labels?: prom.LabelValues<string>): Increment {
  const increment: Increment = labels === undefined ? (by) => counter.inc(by) : (by) => counter.inc(labels, by);
  increment.deferrable = true; // a sum of increments is one increment
  return increment;
}

function observeTo(histogram: prom.Histogram<string>): Increment {
  return (by) => histogram.observe(by);
}

function refusedLabels(name: string): { listener: string; reason: string } | undefined {
  if (!name.startsWith('refused.')) return undefined;
  const [, listener, reason] = name.split('.');
  if (listener === undefined || reason === undefined) return undefined;
  return { listener, reason };
}
