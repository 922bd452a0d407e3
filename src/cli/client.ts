/**
 * client: ClusterClient, the gRPC client of a chard cluster used by the CLI, by a follower that
 * forwards writes, and by the attach agent. It knows a list of admin addresses, follows the
 * NOT_LEADER hints nodes give (`chard-leader-id` / `chard-leader-addr`), and retries operations
 * that failed for a retryable reason (no leader yet, node down, timeout) until a deadline.
 * Usage errors come back unchanged, with their code, at once.
 */

import * as grpc from '@grpc/grpc-js';
import { ChardError, ErrorCode, NotLeaderError, RemoteError, UsageError } from '../errors.js';
import type { NodeStatusReport, VerifyReport } from '../node/admin.js';
import { randomBytes } from 'node:crypto';
import type { Session } from '../volume/command.js';
import type { VolumeInfo } from '../volume/rules.js';
import { clientCredentials } from '../transport/tls.js';
import { readClusterFile } from './cluster-file.js';
import { setTimeout as sleep } from 'node:timers/promises';

export interface ClusterTarget {
  id?: number;
  admin: string;
}

/** clusterTargets: admin addresses from --cluster A,B,C or --dir DIR (default ./data). */
export function clusterTargets(options: { dir?: string; cluster?: string }): ClusterTarget[] {
  if (options.cluster !== undefined) {
    const list = options.cluster.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
    if (list.length === 0) throw new UsageError(ErrorCode.InvalidArgument, '--cluster needs HOST:PORT[,HOST:PORT...]');
    return list.map((admin) => ({ admin }));
  }
  const file = readClusterFile(options.dir ?? './data');
  return file.nodes.map((n) => ({ id: n.id, admin: n.admin }));
}

/**
 * clusterCredentials: the gRPC credentials for --certs DIR (mutual TLS with DIR/client-cert.pem),
 * else those of the local cluster in --dir when its cluster.json says it runs TLS, else plaintext.
 */
export function clusterCredentials(options: { dir?: string; cluster?: string; certs?: string }): grpc.ChannelCredentials {
  if (options.certs !== undefined) return clientCredentials(options.certs);
  if (options.cluster === undefined) {
    const file = readClusterFile(options.dir ?? './data');
    if (file.tls !== undefined) return clientCredentials(file.tls.certs);
  }
  return grpc.credentials.createInsecure();
}

export { NodeApi, type ClientLimits, defaultClientLimits } from '../node/api-client.js';
import { NodeApi, type ClientLimits, defaultClientLimits } from '../node/api-client.js';

export interface ClusterStatusReport {
  leader: number;
  nodes: { id: number; address: string; reachable: boolean; role?: string; term?: number; commitIndex?: number; appliedIndex?: number; lag?: number; error?: string }[];
}

export class ClusterClient {
  private readonly apis = new Map<string, NodeApi>();
  private leaderAddress: string | undefined;
  readonly limits: ClientLimits;
  /** adminSession: this client's session for volume changes: one stamp per operation, kept by its retries. */
  private readonly adminSession = { id: `c-${randomBytes(8).toString('hex')}`, next: 1 };
  constructor(
    readonly targets: ClusterTarget[],
    private readonly credentials: grpc.ChannelCredentials = grpc.credentials.createInsecure(),
    limits: Partial<ClientLimits> = {},
  ) {
    if (targets.length === 0) throw new UsageError(ErrorCode.InvalidArgument, 'no cluster addresses given');
    this.limits = { ...defaultClientLimits, ...limits };
  }

  api(address: string): NodeApi {
    let api = this.apis.get(address);
    if (api === undefined) {
      api = new NodeApi(address, this.credentials, this.limits);
      this.apis.set(address, api);
    }
    return api;
  }

  close(): void {
    for (const api of this.apis.values()) api.close();
    this.apis.clear();
  }

  /**
   * leader: run `fn` on the leader, following NOT_LEADER hints and retrying retryable failures
   * (each target in turn) until `operationTimeoutMs`.
   */
  async leader<T>(
    fn: (api: NodeApi) => Promise<T>,
    timeoutMs = this.limits.operationTimeoutMs,
    options: { remember?: boolean } = {},
  ): Promise<T> {
    return this.leaderRetrying(fn, timeoutMs, options.remember !== false, []);
  }

  /** adminStamp: the next stamp of this client's admin session (one request at a time: ackedBelow = sequence). */
  private adminStamp(): Session {
    const sequence = this.adminSession.next++;
    return { id: this.adminSession.id, sequence, ackedBelow: sequence };
  }

  /**
   * volumeCreate / volumeResize / volumeDelete: on the leader, retried with ONE session stamp, so a
   * retry after a lost answer returns the first attempt's result (not ALREADY_EXISTS / NOT_FOUND).
   */
  volumeCreate(name: string, sizeBytes: number): Promise<VolumeInfo> {
    const session = this.adminStamp();
    return this.leader((api) => api.volumeCreate(name, sizeBytes, session));
  }

  volumeResize(name: string, sizeBytes: number): Promise<VolumeInfo> {
    const session = this.adminStamp();
    return this.leader((api) => api.volumeResize(name, sizeBytes, session));
  }

  volumeDelete(name: string): Promise<void> {
    const session = this.adminStamp();
    return this.leader((api) => api.volumeDelete(name, session));
  }

  /**
   * change: leader() for a membership change. A change retried after its answer was lost may find
   * its own earlier success (a leader that removed itself steps down before it answers); then the
   * refusal codes in `doneCodes` (e.g. NOT_FOUND for a removal) mean "already done", not failure.
   */
  async change(fn: (api: NodeApi) => Promise<void>, doneCodes: readonly string[], timeoutMs = this.limits.operationTimeoutMs): Promise<void> {
    await this.leaderRetrying(fn, timeoutMs, true, doneCodes);
  }

  private async leaderRetrying<T>(fn: (api: NodeApi) => Promise<T>, timeoutMs: number, remember: boolean, doneCodes: readonly string[]): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let backoff = this.limits.retryBackoffMs;
    let turn = 0;
    let last: ChardError | undefined;
    // inTransit: an earlier attempt failed without a definite answer, so it may have been applied.
    let inTransit = false;
    // failedThisRound: every node is tried once before backing off (a dead node fails fast; the
    // new leader may be the next one).
    let failedThisRound = 0;
    for (;;) {
      const address = this.leaderAddress ?? this.targets[turn++ % this.targets.length]!.admin;
      try {
        const result = await fn(this.api(address));
        // A read also succeeds on a follower: only operations that need the leader teach us who it is.
        if (remember) this.leaderAddress = address;
        return result;
      } catch (error) {
        // Only reachable through change(), whose T is void.
        if (error instanceof UsageError && inTransit && doneCodes.includes(error.code)) return undefined as T;
        if (!(error instanceof ChardError) || error instanceof UsageError) throw error;
        if (!(error instanceof NotLeaderError)) inTransit = true;
        last = error;
        this.leaderAddress = undefined;
        if (error instanceof NotLeaderError && error.leaderAddress !== undefined && error.leaderAddress !== address) {
          this.leaderAddress = error.leaderAddress;
          continue;
        }
      }
      if (++failedThisRound < this.targets.length && Date.now() < deadline) continue;
      failedThisRound = 0;
      if (Date.now() + backoff > deadline) {
        throw new RemoteError(ErrorCode.Unavailable, `no leader answered within ${timeoutMs} ms (last error: ${last?.code}: ${last?.message})`);
      }
      await sleep(backoff);
      backoff = Math.min(backoff * 2, this.limits.retryBackoffMaxMs);
    }
  }

  /** any: run `fn` on the first node that answers (retrying like leader()). */
  async any<T>(fn: (api: NodeApi) => Promise<T>, timeoutMs = this.limits.operationTimeoutMs): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    let turn = 0;
    let last: ChardError | undefined;
    for (;;) {
      const address = this.targets[turn++ % this.targets.length]!.admin;
      try {
        return await fn(this.api(address));
      } catch (error) {
        if (!(error instanceof ChardError) || error instanceof UsageError) throw error;
        last = error;
      }
      if (Date.now() > deadline) throw new RemoteError(ErrorCode.Unavailable, `no node answered within ${timeoutMs} ms (last error: ${last?.code}: ${last?.message})`);
      if (turn % this.targets.length === 0) await sleep(this.limits.retryBackoffMs * 5);
    }
  }

  /** clusterStatus: every target's status (in parallel, short deadline), and the leader. */
  async clusterStatus(timeoutMs = 2000): Promise<ClusterStatusReport> {
    const results = await Promise.all(
      this.targets.map(async (t) => {
        try {
          return { target: t, status: await this.api(t.admin).status(timeoutMs) };
        } catch (error) {
          return { target: t, error: error instanceof Error ? error.message : String(error) };
        }
      }),
    );
    const leaders = results.filter((r) => r.status?.role === 'leader').map((r) => r.status!);
    leaders.sort((a, b) => b.term - a.term);
    const leader = leaders[0];
    return {
      leader: leader?.id ?? 0,
      nodes: results.map((r) =>
        r.status
          ? {
              id: r.status.id,
              address: r.target.admin,
              reachable: true,
              role: r.status.role,
              term: r.status.term,
              commitIndex: r.status.commitIndex,
              appliedIndex: r.status.appliedIndex,
              lag: leader ? Math.max(0, leader.commitIndex - r.status.appliedIndex) : 0,
            }
          : { id: r.target.id ?? 0, address: r.target.admin, reachable: false, error: r.error },
      ),
    };
  }

  /** waitForLeader: until some node reports itself leader (calls `check` each round). */
  async waitForLeader(timeoutMs: number, check: () => void = () => {}): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      check();
      const report = await this.clusterStatus(1000);
      if (report.leader !== 0) {
        this.leaderAddress = report.nodes.find((n) => n.id === report.leader)?.address;
        return report.leader;
      }
      await sleep(100);
    }
    throw new RemoteError(ErrorCode.Timeout, `no leader elected within ${timeoutMs} ms`);
  }

  /** leaderStatus: the status report of the current leader (it alone knows followers' progress). */
  leaderStatus(): Promise<NodeStatusReport> {
    return this.leader(async (api) => {
      const status = await api.status();
      if (status.role !== 'leader') throw new NotLeaderError(status.leader);
      return status;
    });
  }

  /** waitCaughtUp: until member `id`'s match index reaches the leader's commit; prints progress. */
  async waitCaughtUp(id: number, showProgress: boolean, timeoutMs = 30 * 60_000, lagMax = 16): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let lastLine = '';
    let firstSnapshot: { at: number; acked: number } | undefined;
    let lastSnapshot: { at: number; acked: number } | undefined;
    for (;;) {
      const status = await this.leaderStatus();
      const p = status.progress.find((x) => x.id === id);
      if (p === undefined) throw new UsageError(ErrorCode.NotFound, `node ${id} is not a member`);
      const lag = Math.max(0, status.commitIndex - p.match);
      if (showProgress) {
        let line: string;
        if (p.state === 'snapshot') {
          const seen = { at: performance.now(), acked: p.snapshotAcked };
          firstSnapshot ??= seen;
          lastSnapshot = seen;
        }
        if (p.state === 'snapshot' && p.snapshotSent > 0) {
          const width = 30;
          const total = Math.max(status.snapshotBytes, p.snapshotSent, 1);
          const done = Math.min(width, Math.round((p.snapshotAcked / total) * width));
          line = `node ${id}: snapshot [${'#'.repeat(done)}${'.'.repeat(width - done)}] ${(p.snapshotAcked / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB received`;
        } else {
          line = `node ${id}: ${p.state}, ${lag} entries behind`;
        }
        if (line !== lastLine) process.stderr.write(`${line}\n`);
        lastLine = line;
      }
      if (lag <= lagMax && p.state === 'replicate') {
        if (showProgress && firstSnapshot !== undefined && lastSnapshot !== undefined && lastSnapshot.at > firstSnapshot.at) {
          const mib = (lastSnapshot.acked - firstSnapshot.acked) / 1048576;
          const seconds = (lastSnapshot.at - firstSnapshot.at) / 1000;
          process.stderr.write(`node ${id}: snapshot transfer observed at ${(mib / seconds).toFixed(1)} MiB/s (${mib.toFixed(1)} MiB in ${seconds.toFixed(1)} s)\n`);
        }
        if (showProgress) process.stderr.write(`node ${id}: caught up (match ${p.match}, commit ${status.commitIndex})\n`);
        return;
      }
      if (Date.now() > deadline) throw new RemoteError(ErrorCode.Timeout, `node ${id} did not catch up within ${timeoutMs} ms (${lag} entries behind)`);
      await sleep(100);
    }
  }

  /**
   * verify: the state hash of every replica once they all report the same applied index. Under
   * a steady write load indexes may never meet; it then fails with TIMEOUT rather than compare
   * states at different indexes.
   */
  async verify(timeoutMs: number): Promise<{ equal: boolean; appliedIndex: number; replicas: VerifyReport[]; unreachable: string[] }> {
    const deadline = Date.now() + timeoutMs;
    let lastSeen = '';
    for (;;) {
      const reports = await Promise.all(
        this.targets.map(async (t) => {
          try {
            return await this.api(t.admin).verify();
          } catch (error) {
            return { address: t.admin, error: String(error) };
          }
        }),
      );
      const ok = reports.filter((r): r is VerifyReport => 'hash' in r);
      const unreachable = reports.filter((r): r is { address: string; error: string } => 'error' in r).map((r) => r.address);
      const indexes = new Set(ok.map((r) => r.appliedIndex));
      if (ok.length > 0 && indexes.size === 1 && unreachable.length === 0) {
        const hashes = new Set(ok.map((r) => r.hash));
        return { equal: hashes.size === 1, appliedIndex: ok[0]!.appliedIndex, replicas: ok, unreachable };
      }
      lastSeen = `applied indexes ${[...indexes].join(', ')}${unreachable.length ? `; unreachable: ${unreachable.join(', ')}` : ''}`;
      if (Date.now() > deadline) throw new RemoteError(ErrorCode.Timeout, `replicas did not reach the same applied index within ${timeoutMs} ms (${lastSeen})`);
      await sleep(100);
    }
  }
}
