/**
 * api-client: NodeApi, the gRPC client of one node's Admin and Block services. The CLI's
 * ClusterClient (src/cli/client.ts) builds on it to follow the leader across a cluster; a
 * follower's forwarder (src/node/rpc.ts) uses it to send a write to the leader. It lives here, in
 * the node layer, so that the node never imports the CLI.
 */
import * as grpc from '@grpc/grpc-js';
import { ErrorCode, RemoteError } from '../errors.js';
import type { MemberReport, NodeStatusReport, VerifyReport } from './admin.js';
import type { MemberAddresses } from './replica.js';
import type { Session, SessionCommand } from '../volume/command.js';
import type { VolumeInfo } from '../volume/rules.js';
import { clientChannelOptions, statusToError } from '../transport/grpc-server.js';
import { clientConstructor } from '../transport/proto.js';

/** ProcessMemory: a node process's resident set and the parts of it its main isolate can name. */
export interface ProcessMemory {
  rssBytes: number;
  heapUsedBytes: number;
  heapTotalBytes: number;
  externalBytes: number;
  arrayBuffersBytes: number;
}

export interface ClientLimits {
  /** callTimeoutMs: deadline of one RPC. */
  callTimeoutMs: number;
  /** operationTimeoutMs: how long an operation is retried across leader changes. */
  operationTimeoutMs: number;
  retryBackoffMs: number;
  retryBackoffMaxMs: number;
  /** messageBytesMax: largest gRPC message (a 4 MiB write plus headers). */
  messageBytesMax: number;
}

export const defaultClientLimits: ClientLimits = {
  callTimeoutMs: 15_000,
  operationTimeoutMs: 30_000,
  retryBackoffMs: 20,
  // A retry at most every 100 ms: a failover is noticed within 100 ms of the new leader, at the
  // cost of a few cheap calls per second while there is none.
  retryBackoffMaxMs: 100,
  messageBytesMax: 8 * 1024 * 1024,
};

type Unary = (request: object, metadata: grpc.Metadata, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: unknown) => void) => void;

/** NodeApi: the typed operations of one node. */
export class NodeApi {
  private readonly admin: grpc.Client;
  private readonly block: grpc.Client;
  constructor(
    readonly address: string,
    credentials: grpc.ChannelCredentials,
    private readonly limits: ClientLimits,
    private readonly clusterId?: string,
  ) {
    const options = clientChannelOptions(limits.messageBytesMax);
    const Admin = clientConstructor('chard.proto', 'chard.v1.Admin');
    const Block = clientConstructor('chard.proto', 'chard.v1.Block');
    this.admin = new Admin(address, credentials, options);
    this.block = new Block(address, credentials, options);
  }

  call<T>(service: 'admin' | 'block', method: string, request: object, timeoutMs = this.limits.callTimeoutMs): Promise<T> {
    const client = service === 'admin' ? this.admin : this.block;
    const fn = (client as unknown as Record<string, Unary>)[method];
    if (fn === undefined) throw new Error(`no RPC ${method}`);
    return new Promise<T>((resolve, reject) => {
      const metadata = new grpc.Metadata();
      if (this.clusterId !== undefined) metadata.set('chard-cluster', this.clusterId);
      fn.call(client, request, metadata, { deadline: Date.now() + timeoutMs }, (error, response) => {
        if (error) reject(statusToError(error));
        else resolve(response as T);
      });
    });
  }

  close(): void {
    this.admin.close();
    this.block.close();
  }

  async status(timeoutMs?: number): Promise<NodeStatusReport> {
    const r = await this.call<Record<string, any>>('admin', 'Status', {}, timeoutMs);
    const cs = r.conf_state ?? {};
    return {
      id: r.node_id,
      role: r.role,
      term: r.term,
      leader: r.leader_id,
      commitIndex: r.commit_index,
      appliedIndex: r.applied_index,
      lastIndex: r.last_index,
      removed: r.removed === true,
      leaseValid: r.lease_valid === true,
      voters: [...new Set<number>([...(cs.voters ?? []), ...(cs.voters_outgoing ?? [])])].sort((a, b) => a - b),
      learners: [...new Set<number>([...(cs.learners ?? []), ...(cs.learners_next ?? [])])].sort((a, b) => a - b),
      joint: (cs.voters_outgoing ?? []).length > 0,
      snapshotBytes: r.snapshot_bytes ?? 0,
      progress: (r.progress ?? []).map((p: Record<string, any>) => ({
        id: p.id,
        match: p.match,
        next: p.next,
        state: p.state,
        learner: p.learner,
        recentActive: p.recent_active,
        snapshotSent: p.snapshot_sent ?? 0,
        snapshotAcked: p.snapshot_acked ?? 0,
      })),
    };
  }

  async volumeCreate(name: string, sizeBytes: number, session?: Session): Promise<VolumeInfo> {
    const r = await this.call<{ volume: { name: string; size_bytes: number } }>('admin', 'VolumeCreate', { name, size_bytes: sizeBytes, session: wireSession(session) });
    return { name: r.volume.name, sizeBytes: r.volume.size_bytes };
  }

  async volumeList(timeoutMs?: number): Promise<VolumeInfo[]> {
    const r = await this.call<{ volumes: { name: string; size_bytes: number }[] }>('admin', 'VolumeList', {}, timeoutMs);
    return r.volumes.map((v) => ({ name: v.name, sizeBytes: v.size_bytes }));
  }

  async volumeResize(name: string, sizeBytes: number, session?: Session): Promise<VolumeInfo> {
    const r = await this.call<{ volume: { name: string; size_bytes: number } }>('admin', 'VolumeResize', { name, size_bytes: sizeBytes, session: wireSession(session) });
    return { name: r.volume.name, sizeBytes: r.volume.size_bytes };
  }

  async volumeDelete(name: string, session?: Session): Promise<void> {
    await this.call('admin', 'VolumeDelete', { name, session: wireSession(session) });
  }

  async memberList(): Promise<MemberReport[]> {
    const r = await this.call<{ members: Record<string, any>[] }>('admin', 'MemberList', {});
    return r.members.map((m) => ({
      id: m.id,
      role: m.learner ? 'learner' : 'voter',
      raft: m.raft_address,
      admin: m.admin_address,
      nbd: m.nbd_address,
      match: m.match ?? 0,
      state: m.state ?? '',
      snapshotSent: m.snapshot_sent ?? 0,
      snapshotAcked: m.snapshot_acked ?? 0,
    }));
  }

  async memberAdd(id: number, addresses: MemberAddresses, learner: boolean): Promise<void> {
    await this.call('admin', 'MemberAdd', { id, raft_address: addresses.raft, admin_address: addresses.admin, nbd_address: addresses.nbd, learner });
  }

  async memberPromote(id: number): Promise<void> {
    await this.call('admin', 'MemberPromote', { id });
  }

  async memberRemove(id: number): Promise<void> {
    await this.call('admin', 'MemberRemove', { id });
  }

  async leaderTransfer(to: number): Promise<void> {
    await this.call('admin', 'LeaderTransfer', { to });
  }

  async metrics(): Promise<{ counts: Record<string, number>; gauges: Record<string, number>; quantiles: Record<string, { p50: number; p99: number; max: number; count: number }>; rssBytes: number; memory: ProcessMemory }> {
    const r = await this.call<{ json: string; rss_bytes: number; heap_used_bytes: number; heap_total_bytes: number; external_bytes: number; array_buffers_bytes: number }>('admin', 'Metrics', {});
    const parsed = JSON.parse(r.json || '{}') as { counts?: Record<string, number>; gauges?: Record<string, number>; quantiles?: Record<string, { p50: number; p99: number; max: number; count: number }> };
    return { counts: parsed.counts ?? {}, gauges: parsed.gauges ?? {}, quantiles: parsed.quantiles ?? {}, rssBytes: r.rss_bytes, memory: { rssBytes: Number(r.rss_bytes), heapUsedBytes: Number(r.heap_used_bytes ?? 0), heapTotalBytes: Number(r.heap_total_bytes ?? 0), externalBytes: Number(r.external_bytes ?? 0), arrayBuffersBytes: Number(r.array_buffers_bytes ?? 0) } };
  }

  async verify(): Promise<VerifyReport> {
    const r = await this.call<{ node_id: number; applied_index: number; state_hash: Buffer }>('admin', 'Verify', {});
    return { id: r.node_id, appliedIndex: r.applied_index, hash: Buffer.from(r.state_hash).toString('hex') };
  }

  /**
   * read: a linearizable read of a volume range served by this node; holes come back as zeros.
   * `local`: from the node's own state only (it fails with CORRUPT rather than ask a peer).
   */
  async read(volume: string, offset: number, length: number, options: { local?: boolean; timeoutMs?: number } = {}): Promise<Buffer> {
    const r = await this.call<{ chunks: { offset: number; length: number; data: Buffer; zero: boolean }[] }>('block', 'Read', { volume, offset, length, local: options.local === true }, options.timeoutMs);
    const out = Buffer.alloc(length);
    for (const c of r.chunks) {
      if (c.offset < offset || c.offset + c.length > offset + length) throw new RemoteError(ErrorCode.Internal, `${this.address}: read chunk out of range`);
      if (!c.zero) Buffer.from(c.data).copy(out, c.offset - offset, 0, c.length);
    }
    return out;
  }

  /** submit: one write-like block command (or a session's close) on this node (it must lead); `timeoutMs`: its deadline (default callTimeoutMs). */
  async submit(command: SessionCommand, timeoutMs?: number): Promise<void> {
    const session = wireSession(command.session);
    switch (command.kind) {
      case 'write':
        await this.call('block', 'Write', { volume: command.volume, session, offset: command.offset, data: command.data }, timeoutMs);
        return;
      case 'trim':
        await this.call('block', 'Trim', { volume: command.volume, session, offset: command.offset, length: command.length }, timeoutMs);
        return;
      case 'writeZeroes':
        await this.call('block', 'WriteZeroes', { volume: command.volume, session, offset: command.offset, length: command.length }, timeoutMs);
        return;
      case 'closeSession':
        await this.call('block', 'CloseSession', { session }, timeoutMs);
        return;
    }
  }
}

export function wireSession(session: Session | undefined): { session_id: string; sequence: number; acked_below: number } | undefined {
  return session === undefined ? undefined : { session_id: session.id, sequence: session.sequence, acked_below: session.ackedBelow };
}

