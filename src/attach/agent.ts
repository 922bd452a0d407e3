/**
 * agent: the attach agent — a local NBD server (unix socket or loopback port) whose backend is a
 * chard cluster reached over gRPC. The kernel's nbd client (or any NBD client) talks to the
 * agent; the agent finds the leader, follows leader changes, and retries every in-flight request
 * against the new leader with the same client-session sequence, so a write is applied at most
 * once and answered only once committed. The client sees a failover as a pause, never an error.
 *
 * If no node can serve for `unavailableTimeoutMs`, requests fail (the NBD server answers EIO),
 * never silently dropped. Reads go to any reachable node (each serves linearizable reads),
 * preferring the leader.
 */

import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { ChardError, ErrorCode, InternalError, NotLeaderError, RemoteError, UsageError } from '../errors.js';
import { type SessionCommand, renewableIfFirst } from '../volume/command.js';
import { type Extent, type ReadChunk, splitRange } from '../volume/ranges.js';
import { type VolumeInfo, requestLimits } from '../volume/rules.js';
import { NbdServer, type NbdListenAddress } from '../nbd/server.js';
import { ClusterClient, type ClusterTarget } from '../cli/client.js';
import { Counters, meteredBackend, PromExporter } from '../node/metrics.js';
import { type MetricsServerHandle, startMetricsServer } from '../node/metrics-http.js';
import { VolumeBackend, type VolumeService } from '../node/volume-backend.js';
import { setTimeout as sleep } from 'node:timers/promises';

export interface AgentLimits {
  /** unavailableTimeoutMs: how long a request waits for the cluster before it fails with EIO. */
  unavailableTimeoutMs: number;
  /**
   * callTimeoutMs: the deadline of a call that is not a request to the leader (a volume list),
   * and how long a leader may leave every status poll unanswered while a request waits on it
   * before the request is tried elsewhere (a dead or paused node costs at most this).
   */
  callTimeoutMs: number;
  /**
   * leaderCallTimeoutMs: the deadline of a request to the leader (write, read, block status),
   * capped by unavailableTimeoutMs. A healthy leader under load can queue a request behind others
   * for seconds (a node's own write retry bound is 30 s). Abandoning it at a short deadline would
   * re-send it to the back of the same queue — while the abandoned copy, already proposed, still
   * costs the leader its work — so under load an agent with a short deadline acknowledged nothing.
   * The leader watch, not this deadline, tells a slow leader (it answers its status polls) from a
   * deposed one (a majority names another) or a dead or paused one (no answer for callTimeoutMs).
   */
  leaderCallTimeoutMs: number;
  /**
   * leaderCheckAfterMs: a request to the leader unanswered for this long makes the agent ask every
   * node who leads (every `leaderPollMs`, each status call bounded by `leaderPollTimeoutMs`); once
   * a majority names another leader the request is retried there at once, and when the leader
   * itself answers no poll for `callTimeoutMs` the request is retried on the next node (which
   * forwards it to the leader if that is only cut off from the agent).
   */
  leaderCheckAfterMs: number;
  leaderPollMs: number;
  leaderPollTimeoutMs: number;
}

export const defaultAgentLimits: AgentLimits = {
  unavailableTimeoutMs: 120_000,
  callTimeoutMs: 2_000,
  leaderCallTimeoutMs: 30_000,
  leaderCheckAfterMs: 300,
  leaderPollMs: 150,
  leaderPollTimeoutMs: 500,
};


interface LeaderWaiter {
  address: string;
  /** since: when the request began to wait on `address` (performance.now()). */
  since: number;
  reject: (error: Error) => void;
}

/**
 * LeaderWatch: while some request to the leader is slow, polls every node's status and, as soon
 * as a majority of the nodes agree on a leader (same id, same term) other than the node a request
 * waits on, fails that wait with NotLeaderError naming the new leader — ClusterClient then follows
 * the hint. A majority cannot agree on a stale leader in a newer term, so a healthy but slow
 * leader is never abandoned for a deposed one. One poll loop serves every waiting request.
 */
class LeaderWatch {
  private readonly waiters = new Set<LeaderWaiter>();
  private running = false;
  /** heard: when each address last answered a status poll. */
  private readonly heard = new Map<string, number>();

  constructor(
    private readonly client: ClusterClient,
    private readonly limits: AgentLimits,
    private readonly counters: Counters,
  ) {}

  /** after: a wait that rejects (only) when another node is found to lead; cancel() ends it. */
  after(address: string): { promise: Promise<never>; cancel(): void } {
    let waiter: LeaderWaiter | undefined;
    let timer: NodeJS.Timeout | undefined;
    const promise = new Promise<never>((_, reject) => {
      waiter = { address, since: performance.now(), reject };
      timer = setTimeout(() => {
        this.waiters.add(waiter!);
        this.start();
      }, this.limits.leaderCheckAfterMs);
    });
    return {
      promise,
      cancel: () => {
        clearTimeout(timer);
        this.waiters.delete(waiter!);
      },
    };
  }

  private start(): void {
    if (this.running) return;
    this.running = true;
    void (async () => {
      try {
        while (this.waiters.size > 0) {
          await this.round();
          if (this.waiters.size > 0) await sleep(this.limits.leaderPollMs);
        }
      } finally {
        this.running = false;
      }
    })();
  }

  /**
   * round: one status call per node (and per awaited address that is not a listed node, for its
   * liveness only); acts on each answer as it arrives (a paused node never answers), then fails
   * the waits on a leader that has answered no poll for callTimeoutMs.
   */
  private round(): Promise<void> {
    const targets = this.client.targets;
    const majority = Math.floor(targets.length / 2) + 1;
    const votes = new Map<string, number>();
    const addressOf = new Map<number, string>();
    const listed = new Set(targets.map((t) => t.admin));
    const unlisted = [...new Set([...this.waiters].map((w) => w.address))].filter((a) => !listed.has(a));
    this.counters.inc('agent.leader_polls');
    return new Promise<void>((resolve) => {
      let pending = targets.length + unlisted.length;
      const done = () => {
        if (--pending > 0) return;
        this.failSilent();
        resolve();
      };
      for (const address of unlisted) {
        this.client
          .api(address)
          .status(this.limits.leaderPollTimeoutMs)
          .then(
            () => void this.heard.set(address, performance.now()),
            () => undefined,
          )
          .finally(done);
      }
      for (const target of targets) {
        this.client
          .api(target.admin)
          .status(this.limits.leaderPollTimeoutMs)
          .then(
            (s) => {
              this.heard.set(target.admin, performance.now());
              addressOf.set(s.id, target.admin);
              if (s.leader === 0) return;
              const key = `${s.leader}@${s.term}`;
              votes.set(key, (votes.get(key) ?? 0) + 1);
              for (const [agreed, count] of votes) {
                if (count < majority) continue;
                const id = Number(agreed.slice(0, agreed.indexOf('@')));
                const address = addressOf.get(id);
                if (address !== undefined) this.redirect(id, address);
              }
            },
            () => undefined,
          )
          .finally(done);
      }
    });
  }

  /** failSilent: a wait on a node that answered no status poll for callTimeoutMs is tried elsewhere. */
  private failSilent(): void {
    const now = performance.now();
    for (const waiter of this.waiters) {
      const last = Math.max(waiter.since, this.heard.get(waiter.address) ?? Number.NEGATIVE_INFINITY);
      if (now - last < this.limits.callTimeoutMs) continue;
      this.waiters.delete(waiter);
      this.counters.inc('agent.leader_silent');
      waiter.reject(new RemoteError(ErrorCode.Unavailable, `${waiter.address} answered no status poll for ${Math.round(now - last)} ms`));
    }
  }

  private redirect(id: number, address: string): void {
    for (const waiter of this.waiters) {
      if (waiter.address === address) continue;
      this.waiters.delete(waiter);
      this.counters.inc('agent.leader_moved');
      waiter.reject(new NotLeaderError(id, address));
    }
  }
}

/** FailedAttempt: one attempt of a request that failed: the node, the chard error code, its message. */
export interface FailedAttempt {
  address: string;
  code: string;
  message: string;
}

export interface AgentStatus {
  volume: string;
  listen: string;
  leader: string | undefined;
  inflight: number;
  retries: number;
  failovers: number;
  lastFailoverStallMs: number;
  longestStallMs: number;
  stalledSinceMs: number | undefined;
  /** lastAttemptError: the most recent failed attempt and how long ago; a retry may have succeeded since. */
  lastAttemptError: (FailedAttempt & { agoMs: number }) | undefined;
  unavailableTimeoutMs: number;
  counters: Record<string, number>;
}

/** RemoteVolumeService: the VolumeService of the agent, over gRPC with leader following. */
export class RemoteVolumeService implements VolumeService {
  readonly counters = new Counters();
  inflight = 0;
  failovers = 0;
  lastFailoverStallMs = 0;
  longestStallMs = 0;
  /** stalledSince: when the current run of failed attempts began (undefined when healthy). */
  stalledSince: number | undefined;
  lastAttemptError: (FailedAttempt & { at: number }) | undefined;
  private lastLeader: string | undefined;
  private readonly sessionPrefix = `a-${randomBytes(6).toString('hex')}`;
  private sessions = 0;
  private readonly watch: LeaderWatch;

  constructor(
    readonly client: ClusterClient,
    private readonly defaultVolumeName: string,
    readonly limits: AgentLimits,
  ) {
    this.watch = new LeaderWatch(client, limits, this.counters);
  }

  newSessionId(): string {
    return `${this.sessionPrefix}-${(++this.sessions).toString(36)}`;
  }

  defaultVolume(): string {
    return this.defaultVolumeName;
  }

  leader(): string | undefined {
    return this.lastLeader;
  }

  /** run: one operation, retried across nodes and leader changes until unavailableTimeoutMs. */
  private async run<T>(what: string, leaderOnly: boolean, fn: (api: import('../cli/client.js').NodeApi, timeoutMs: number) => Promise<T>): Promise<T> {
    this.inflight++;
    const started = performance.now();
    let attempts = 0;
    try {
      const op = async (api: import('../cli/client.js').NodeApi) => {
        attempts++;
        // A request to the leader races the leader watch: if another node turns out to lead, the
        // request is retried there with the same session stamp (applied at most once) and this
        // call's late outcome is ignored.
        const watch = leaderOnly ? this.watch.after(api.address) : undefined;
        try {
          const call = fn(api, leaderOnly ? this.leaderCallTimeoutMs() : this.limits.callTimeoutMs);
          if (watch !== undefined) call.catch(() => undefined);
          const result = watch === undefined ? await call : await Promise.race([call, watch.promise]);
          if (leaderOnly && what !== 'read' && what !== 'block_status' && api.address !== this.lastLeader) {
            if (this.lastLeader !== undefined) this.failovers++;
            this.lastLeader = api.address;
          }
          return result;
        } catch (error) {
          if (error instanceof RemoteError) this.noteStall();
          const code = error instanceof ChardError ? error.code : 'UNKNOWN';
          this.counters.inc(`agent.attempt_failed.${code}`);
          this.lastAttemptError = { address: api.address, code, message: (error as Error).message, at: performance.now() };
          throw error;
        } finally {
          watch?.cancel();
        }
      };
      const result = leaderOnly
        ? await this.client.leader(op, this.limits.unavailableTimeoutMs, { remember: what !== 'read' && what !== 'block_status' })
        : await this.client.any(op, this.limits.unavailableTimeoutMs);
      this.noteHealthy();
      return result;
    } catch (error) {
      if (error instanceof UsageError) throw error;
      if (error instanceof ChardError && error.code === ErrorCode.Corrupt) throw error;
      this.counters.inc(`agent.${what}.failed`);
      // Not served within the bound: the NBD client gets EIO (InternalError), not a hang.
      throw new InternalError(ErrorCode.Unavailable, `${what}: cluster unavailable for ${Math.round(performance.now() - started)} ms: ${(error as Error).message}`);
    } finally {
      if (attempts > 1) this.counters.inc('agent.retries', attempts - 1);
      this.inflight--;
    }
  }

  private leaderCallTimeoutMs(): number {
    return Math.min(this.limits.leaderCallTimeoutMs, this.limits.unavailableTimeoutMs);
  }

  private noteStall(): void {
    if (this.stalledSince === undefined) this.stalledSince = performance.now();
  }

  private noteHealthy(): void {
    if (this.stalledSince !== undefined) {
      const stall = performance.now() - this.stalledSince;
      this.lastFailoverStallMs = stall;
      this.longestStallMs = Math.max(this.longestStallMs, stall);
      this.counters.observe('agent.stall_ms', stall);
      this.stalledSince = undefined;
    }
  }

  async listVolumes(): Promise<VolumeInfo[]> {
    return this.run('list', false, (api, timeoutMs) => api.volumeList(timeoutMs));
  }

  /**
   * read: a request of up to requestBytesMax (what the agent advertises) as Read RPCs of at most
   * readPieceBytes (what a node's Block service serves), in parallel. Each piece is a
   * linearizable read; NBD does not promise that a read is atomic against concurrent writes.
   */
  async read(volume: string, offset: number, length: number): Promise<ReadChunk[]> {
    const pieces = splitRange(offset, length, requestLimits.readPieceBytes);
    return Promise.all(
      pieces.map(async (p) => ({ offset: p.offset, length: p.length, data: await this.run('read', true, (api, timeoutMs) => api.read(volume, p.offset, p.length, { timeoutMs })) })),
    );
  }

  async blockStatus(volume: string, offset: number, length: number): Promise<Extent[]> {
    return this.run('block_status', true, async (api, timeoutMs) => {
      const r = await api.call<{ extents: Extent[] }>('block', 'BlockStatus', { volume, offset, length }, timeoutMs);
      return r.extents.map((e) => ({ length: e.length, hole: e.hole, zero: e.zero }));
    });
  }

  async submit(command: SessionCommand): Promise<void> {
    let attempts = 0;
    try {
      await this.run(command.kind, true, (api, timeoutMs) => {
        attempts++;
        return api.submit(command, timeoutMs);
      });
    } catch (error) {
      throw renewableIfFirst(error, attempts);
    }
  }
}

export interface AgentOptions {
  cluster: ClusterTarget[];
  volume: string;
  listen: NbdListenAddress;
  limits?: Partial<AgentLimits>;
  credentials?: grpc.ChannelCredentials;
  logger?: { info(o: object, m?: string): void; warn(o: object, m?: string): void; error(o: object, m?: string): void; debug(o: object, m?: string): void };
  /** metrics: HOST:PORT of a Prometheus /metrics listener for this agent (none when absent). */
  metrics?: string;
}

export class AttachAgent {
  private constructor(
    readonly service: RemoteVolumeService,
    private readonly server: NbdServer,
    readonly address: NbdListenAddress,
    private readonly volume: string,
    private readonly metrics: MetricsServerHandle | undefined,
  ) {}

  /** metricsAddress: where this agent serves /metrics (undefined without `metrics`). */
  get metricsAddress(): string | undefined {
    return this.metrics?.address;
  }

  static async start(options: AgentOptions): Promise<AttachAgent> {
    const limits = { ...defaultAgentLimits, ...options.limits };
    const client = new ClusterClient(options.cluster, options.credentials, {
      callTimeoutMs: limits.callTimeoutMs,
      operationTimeoutMs: limits.unavailableTimeoutMs,
      retryBackoffMs: 10,
      retryBackoffMaxMs: 100,
    });
    const service = new RemoteVolumeService(client, options.volume, limits);
    // Fail fast on a wrong volume name or an unreachable cluster at start-up.
    const volumes = await client.any((api) => api.volumeList(), Math.min(limits.unavailableTimeoutMs, 30_000));
    if (!volumes.some((v) => v.name === options.volume)) {
      client.close();
      throw new UsageError(ErrorCode.NotFound, `no volume named "${options.volume}" (volumes: ${volumes.map((v) => v.name).join(', ') || 'none'})`);
    }
    const server = new NbdServer({
      backend: meteredBackend(new VolumeBackend(service), service.counters, options.logger),
      limits: { requestBytesMax: requestLimits.requestBytesMax },
      ...(options.logger ? { logger: options.logger } : {}),
      onEvent: (event, amount) => service.counters.inc(`nbd.${event}`, amount),
    });
    const address = await server.listen(options.listen);
    let metrics: MetricsServerHandle | undefined;
    if (options.metrics !== undefined) {
      const exporter = new PromExporter({ labels: { agent: options.volume } });
      service.counters.attach(exporter);
      try {
        metrics = await startMetricsServer({ listen: options.metrics, exporter, ...(options.logger ? { logger: options.logger } : {}), onRefused: () => service.counters.inc('refused.metrics.connections_max') });
      } catch (error) {
        await server.close();
        client.close();
        throw error;
      }
    }
    return new AttachAgent(service, server, address, options.volume, metrics);
  }

  status(): AgentStatus {
    const s = this.service;
    return {
      volume: this.volume,
      listen: 'path' in this.address ? this.address.path : `${this.address.host}:${this.address.port}`,
      leader: s.leader(),
      inflight: s.inflight,
      retries: s.counters.snapshot().counts['agent.retries'] ?? 0,
      failovers: s.failovers,
      lastFailoverStallMs: Math.round(s.lastFailoverStallMs),
      longestStallMs: Math.round(s.longestStallMs),
      stalledSinceMs: s.stalledSince === undefined ? undefined : Math.round(performance.now() - s.stalledSince),
      lastAttemptError: s.lastAttemptError === undefined ? undefined : (({ at, ...attempt }) => ({ ...attempt, agoMs: Math.round(performance.now() - at) }))(s.lastAttemptError),
      unavailableTimeoutMs: s.limits.unavailableTimeoutMs,
      counters: s.counters.snapshot().counts,
    };
  }

  async close(): Promise<void> {
    await this.metrics?.close();
    await this.server.close();
    this.service.client.close();
  }
}

export { NotLeaderError };
