/**
 * rpc: the gRPC face of a node on its admin address — chard.v1.Admin (operator operations,
 * NodeAdmin) and chard.v1.Block (client block operations: what a follower forwards to the leader
 * and what the attach agent calls) — plus BlockForwarder, the follower's side of forwarding.
 *
 * Input is validated here (the wire) before it reaches NodeAdmin or the volume service: names,
 * safe integers, sizes within limits, a session stamp on every write-like request. Errors leave
 * as gRPC status codes with the ChardError code in the `chard-code` trailer and, for NOT_LEADER,
 * the leader hint (`chard-leader-id`, `chard-leader-addr`), as proto/chard.proto documents.
 */

import * as grpc from '@grpc/grpc-js';
import { type BlockCommand, type Session, type SessionCommand, commandLimits, encodeCommand } from '../volume/command.js';
import { checkVolumeName, requestLimits } from '../volume/rules.js';
import { ChardError, ErrorCode, NotLeaderError, RemoteError, UsageError } from '../errors.js';
import type { NodeId } from '../raft/types.js';
import { NodeApi, defaultClientLimits } from './api-client.js';
import type { TransportCredentials } from '../transport/transport.js';
import { errorToStatus } from '../transport/grpc-server.js';
import { serviceDefinition } from '../transport/proto.js';
import type { NodeAdmin } from './admin.js';
import type { Counters } from './metrics.js';
import { parseHostPort } from './config.js';
import type { LeaderForwarder, LocalVolumeService } from './volume-service.js';

/** encodeBlockCommand: what the node proposes for a client's block command. */
export const encodeBlockCommand = (command: SessionCommand): Uint8Array => encodeCommand(command);

/** rpcLimits: bounds of the admin/block server. */
export const rpcLimits = {
  /** messageBytesMax: largest request or response (a write of writeBytesMax plus headers). */
  messageBytesMax: commandLimits.writeBytesMax + 64 * 1024,
  /** readBytesMax: largest Read range (a client splits larger reads: requestLimits.readPieceBytes). */
  readBytesMax: requestLimits.readPieceBytes,
} as const;

function bad(message: string): UsageError {
  return new UsageError(ErrorCode.InvalidArgument, message);
}

function uint(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) throw bad(`${what} must be a non-negative integer below 2^53`);
  return value;
}

function volumeName(value: unknown): string {
  if (typeof value !== 'string') throw bad('volume name missing');
  checkVolumeName(value);
  return value;
}

function sessionStamp(value: unknown): Session {
  if (typeof value !== 'object' || value === null) throw bad('a write-like request needs a session stamp');
  const v = value as { session_id?: unknown; sequence?: unknown; acked_below?: unknown };
  if (typeof v.session_id !== 'string' || v.session_id.length < 1 || Buffer.byteLength(v.session_id) > commandLimits.sessionIdBytesMax) {
    throw bad(`session id must be 1..${commandLimits.sessionIdBytesMax} bytes`);
  }
  const sequence = uint(v.sequence, 'session sequence');
  if (sequence < 1) throw bad('session sequence starts at 1');
  const ackedBelow = uint(v.acked_below, 'session acked_below');
  if (ackedBelow > sequence) throw bad('session acked_below must not exceed the sequence');
  return { id: v.session_id, sequence, ackedBelow };
}

/** zeroLength: the range of one trim / write-zeroes command; clients split larger ones (issue 11 h). */
function zeroLength(value: unknown): number {
  const length = uint(value, 'length');
  if (length > requestLimits.zeroPieceBytes) throw new UsageError(ErrorCode.TooLarge, `range of ${length} bytes exceeds ${requestLimits.zeroPieceBytes} (split it)`);
  return length;
}

/** optionalSession: the stamp of an admin request, when the client sent one. */
function optionalSession(value: unknown): Session | undefined {
  return value === undefined || value === null ? undefined : sessionStamp(value);
}

/**
 * Handler: one RPC. `signal` aborts when the call ends before its answer (the client's deadline
 * passed, it cancelled, its connection closed): a write still waiting for the in-flight budget
 * then leaves the queue instead of being proposed for a client that is no longer there (which
 * would retry it, so each abandoned attempt would otherwise cost the leader a duplicate).
 */
type Handler = (request: Record<string, any>, metadata: grpc.Metadata, signal: AbortSignal) => Promise<object> | object;

function unary(handler: Handler): grpc.handleUnaryCall<Record<string, any>, object> {
  return (call, callback) => {
    const ended = new AbortController();
    call.once('cancelled', () => ended.abort());
    Promise.resolve()
      .then(() => handler(call.request, call.metadata, ended.signal))
      .then(
        (response) => callback(null, response),
        (error: unknown) => callback(errorToStatus(error) as grpc.ServiceError),
      );
  };
}

function confStateOut(cs: { voters: number[]; votersOutgoing: number[]; learners: number[]; learnersNext: number[]; autoLeave: boolean }) {
  return { voters: cs.voters, voters_outgoing: cs.votersOutgoing, learners: cs.learners, learners_next: cs.learnersNext, auto_leave: cs.autoLeave };
}

export interface RpcServerOptions {
  listen: string;
  clusterId: string;
  admin: NodeAdmin;
  volumes: LocalVolumeService;
  credentials?: TransportCredentials;
  counters?: Counters;
}

export interface RpcServerHandle {
  address: string;
  close(): Promise<void>;
}

export async function startNodeRpcServer(options: RpcServerOptions): Promise<RpcServerHandle> {
  const { admin, volumes, clusterId } = options;
  const checkCluster = (metadata: grpc.Metadata) => {
    const claimed = metadata.get('chard-cluster')[0];
    if (claimed !== undefined && String(claimed) !== clusterId) {
      throw new ChardError(ErrorCode.WrongCluster, `request for cluster ${String(claimed)} reached cluster ${clusterId}`);
    }
  };
  const guarded = (handler: Handler): grpc.handleUnaryCall<Record<string, any>, object> =>
    unary((request, metadata, signal) => {
      checkCluster(metadata);
      return handler(request, metadata, signal);
    });

  const server = new grpc.Server({
    'grpc.max_receive_message_length': rpcLimits.messageBytesMax,
    'grpc.max_send_message_length': rpcLimits.messageBytesMax,
  });
  server.addService(serviceDefinition('chard.proto', 'chard.v1.Admin'), {
    Status: guarded(() => {
      const s = admin.status();
      const leader = admin.leaderHint();
      const replica = admin.replicaStatus();
      return {
        cluster_id: clusterId,
        node_id: s.id,
        role: s.role,
        term: s.term,
        vote: replica.vote,
        leader_id: s.leader,
        leader_address: leader === 0 ? '' : (admin.addressOf(leader)?.admin ?? ''),
        commit_index: s.commitIndex,
        applied_index: s.appliedIndex,
        last_index: s.lastIndex,
        snapshot_index: replica.snapshotIndex,
        conf_state: confStateOut(replica.confState),
        progress: s.progress.map((p) => ({
          id: p.id,
          match: p.match,
          next: p.next,
          state: p.state,
          recent_active: p.recentActive,
          learner: p.learner,
          snapshot_sent: p.snapshotSent,
          snapshot_acked: p.snapshotAcked,
        })),
        lead_transferee: replica.leadTransferee,
        volumes: [],
        removed: s.removed,
        lease_valid: s.leaseValid,
        snapshot_bytes: s.snapshotBytes,
      };
    }),
    VolumeCreate: guarded(async (r) => {
      const v = await admin.volumeCreate(volumeName(r.name), uint(r.size_bytes, 'size_bytes'), optionalSession(r.session));
      return { volume: { name: v.name, size_bytes: v.sizeBytes } };
    }),
    VolumeList: guarded(async () => ({ volumes: (await admin.volumeList()).map((v) => ({ name: v.name, size_bytes: v.sizeBytes })) })),
    VolumeResize: guarded(async (r) => {
      const v = await admin.volumeResize(volumeName(r.name), uint(r.size_bytes, 'size_bytes'), optionalSession(r.session));
      return { volume: { name: v.name, size_bytes: v.sizeBytes } };
    }),
    VolumeDelete: guarded(async (r) => {
      await admin.volumeDelete(volumeName(r.name), optionalSession(r.session));
      return {};
    }),
    MemberList: guarded(() => {
      const members = admin.memberList();
      const leader = admin.leaderHint();
      return {
        members: members.map((m) => ({
          id: m.id,
          raft_address: m.raft,
          admin_address: m.admin,
          nbd_address: m.nbd,
          learner: m.role === 'learner',
          voter: m.role === 'voter',
          leader: m.id === leader,
          match: m.match,
          state: m.state,
          snapshot_sent: m.snapshotSent,
          snapshot_acked: m.snapshotAcked,
        })),
        conf_state: confStateOut(admin.replicaStatus().confState),
      };
    }),
    MemberAdd: guarded(async (r) => {
      const addresses = { raft: String(r.raft_address ?? ''), admin: String(r.admin_address ?? ''), nbd: String(r.nbd_address ?? '') };
      for (const [key, value] of Object.entries(addresses)) if (value !== '') parseHostPort(value, `${key} address`);
      await admin.memberAdd(uint(r.id, 'id'), addresses, r.learner === true);
      return { conf_state: confStateOut(admin.replicaStatus().confState) };
    }),
    MemberPromote: guarded(async (r) => {
      await admin.memberPromote(uint(r.id, 'id'));
      return { conf_state: confStateOut(admin.replicaStatus().confState) };
    }),
    MemberRemove: guarded(async (r) => {
      await admin.memberRemove(uint(r.id, 'id'));
      return { conf_state: confStateOut(admin.replicaStatus().confState) };
    }),
    LeaderTransfer: guarded(async (r) => {
      await admin.leaderTransfer(uint(r.to, 'to'));
      return { leader_id: admin.leaderHint() };
    }),
    Metrics: guarded(() => {
      const m = process.memoryUsage();
      return { json: JSON.stringify(options.counters?.snapshot() ?? {}), rss_bytes: m.rss, heap_used_bytes: m.heapUsed, heap_total_bytes: m.heapTotal, external_bytes: m.external, array_buffers_bytes: m.arrayBuffers };
    }),
    Verify: guarded(() => {
      const v = admin.verify();
      return { node_id: v.id, applied_index: v.appliedIndex, state_hash: Buffer.from(v.hash, 'hex') };
    }),
  });

  const range = (r: Record<string, any>, lengthMax: number) => {
    const offset = uint(r.offset, 'offset');
    const length = uint(r.length, 'length');
    if (length > lengthMax) throw new UsageError(ErrorCode.TooLarge, `range of ${length} bytes exceeds ${lengthMax}`);
    return { offset, length };
  };
  server.addService(serviceDefinition('chard.proto', 'chard.v1.Block'), {
    OpenSession: guarded(async (r) => {
      const name = volumeName(r.volume);
      const found = (await volumes.listVolumes()).find((v) => v.name === name);
      if (found === undefined) throw new UsageError(ErrorCode.NotFound, `no volume named "${name}"`);
      return { session_id: volumes.newSessionId(), volume: { name: found.name, size_bytes: found.sizeBytes } };
    }),
    Read: guarded(async (r) => {
      const { offset, length } = range(r, rpcLimits.readBytesMax);
      const chunks = await volumes.read(volumeName(r.volume), offset, length, { local: r.local === true });
      return { chunks: chunks.map((c) => ({ offset: c.offset, length: c.length, data: c.data ?? Buffer.alloc(0), zero: c.data === undefined })) };
    }),
    Write: guarded(async (r, _metadata, signal) => {
      const data: Buffer = r.data ?? Buffer.alloc(0);
      if (data.length > commandLimits.writeBytesMax) throw new UsageError(ErrorCode.TooLarge, `write of ${data.length} bytes exceeds ${commandLimits.writeBytesMax}`);
      const command: BlockCommand = { kind: 'write', volume: volumeName(r.volume), offset: uint(r.offset, 'offset'), data, session: sessionStamp(r.session) };
      await volumes.submitLocal(command, signal);
      return { applied_index: 0 };
    }),
    Trim: guarded(async (r, _metadata, signal) => {
      const command: BlockCommand = { kind: 'trim', volume: volumeName(r.volume), offset: uint(r.offset, 'offset'), length: zeroLength(r.length), session: sessionStamp(r.session) };
      await volumes.submitLocal(command, signal);
      return { applied_index: 0 };
    }),
    WriteZeroes: guarded(async (r, _metadata, signal) => {
      const command: BlockCommand = { kind: 'writeZeroes', volume: volumeName(r.volume), offset: uint(r.offset, 'offset'), length: zeroLength(r.length), session: sessionStamp(r.session) };
      await volumes.submitLocal(command, signal);
      return { applied_index: 0 };
    }),
    Flush: guarded(() => ({})),
    CloseSession: guarded(async (r, _metadata, signal) => {
      await volumes.submitLocal({ kind: 'closeSession', session: sessionStamp(r.session) }, signal);
      return {};
    }),
    BlockStatus: guarded(async (r) => {
      // No data travels: the store answers a prefix (blockStatusBlocksMax), whatever the length.
      const { offset, length } = range(r, Number.MAX_SAFE_INTEGER);
      const extents = await volumes.blockStatus(volumeName(r.volume), offset, length);
      return { extents: extents.map((e) => ({ length: e.length, hole: e.hole, zero: e.zero })) };
    }),
  });

  const listen = parseHostPort(options.listen, 'listen.admin');
  const credentials = options.credentials?.server ?? grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(`${listen.host.includes(':') ? `[${listen.host}]` : listen.host}:${listen.port}`, credentials, (error, bound) => (error ? reject(error) : resolve(bound)));
  });
  return {
    address: `${listen.host}:${port}`,
    close: () =>
      new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}

/** BlockForwarder: a follower's forwarding of write-like commands to the leader's Block service, and reads of a peer's own state (a block that failed its checksum here). */
export class BlockForwarder implements LeaderForwarder {
  private readonly apis = new Map<string, NodeApi>();
  constructor(
    private readonly adminAddressOf: (id: NodeId) => string | undefined,
    private readonly clusterId: string,
    private readonly credentials?: TransportCredentials,
  ) {}

  async submit(leader: NodeId, command: SessionCommand): Promise<void> {
    const address = this.adminAddressOf(leader);
    if (address === undefined || address === '') throw new NotLeaderError(leader);
    await this.api(address).submit(command);
  }

  async readFrom(peer: NodeId, volume: string, offset: number, length: number, timeoutMs: number): Promise<Uint8Array> {
    const address = this.adminAddressOf(peer);
    if (address === undefined || address === '') throw new RemoteError(ErrorCode.Unavailable, `no address known for node ${peer}`);
    return this.api(address).read(volume, offset, length, { local: true, timeoutMs });
  }

  private api(address: string): NodeApi {
    let api = this.apis.get(address);
    if (api === undefined) {
      api = new NodeApi(address, this.credentials?.client ?? grpc.credentials.createInsecure(), defaultClientLimits, this.clusterId);
      this.apis.set(address, api);
    }
    return api;
  }

  close(): void {
    for (const api of this.apis.values()) api.close();
    this.apis.clear();
  }
}
