/**
 * grpc-server: the generic plumbing of chard's admin and client RPC (proto/chard.proto, package
 * chard.v1) for the node layer and the CLI — a server built from a plain handler object, a
 * client, and one error mapping in each direction.
 *
 * Error contract (the same on every RPC, documented in chard.proto): a handler throws (or rejects
 * with) a ChardError; the caller receives a gRPC status chosen from its code (`statusOfCode`), the
 * ChardError code in trailing metadata `chard-code`, and for NotLeaderError the leader hint in
 * `chard-leader-id` / `chard-leader-addr`. `callUnary` turns that back into the same ChardError
 * class (NotLeaderError with its hint), so a caller on the other side of the wire handles errors
 * exactly as a local caller would. Anything else thrown is answered INTERNAL (and handed to
 * `onInternalError` for logging) — never a stack trace on the wire.
 *
 * TLS: `credentials` on both the server and the client (default insecure; tls.ts builds the
 * mutual-TLS ones from a certificate directory).
 */

import * as grpc from '@grpc/grpc-js';
import {
  ChardError,
  CorruptError,
  ErrorCode,
  InternalError,
  isChardError,
  NotLeaderError,
  RemoteError,
  UsageError,
} from '../errors.js';
import { clientConstructor, serviceDefinition } from './proto.js';
import { defaultTransportLimits } from './transport.js';

export const adminMethods = [
  'Status',
  'VolumeCreate',
  'VolumeList',
  'VolumeResize',
  'VolumeDelete',
  'MemberList',
  'MemberAdd',
  'MemberPromote',
  'MemberRemove',
  'LeaderTransfer',
  'Verify',
  'Metrics',
] as const;
export type AdminMethod = (typeof adminMethods)[number];

export const blockMethods = ['OpenSession', 'CloseSession', 'Read', 'Write', 'Trim', 'WriteZeroes', 'Flush', 'BlockStatus'] as const;
export type BlockMethod = (typeof blockMethods)[number];

export const chardServices = { Admin: 'chard.v1.Admin', Block: 'chard.v1.Block' } as const;
export type ChardService = keyof typeof chardServices;

/** metadataKeys: the trailing-metadata keys of the error contract. */
export const metadataKeys = {
  code: 'chard-code',
  leaderId: 'chard-leader-id',
  leaderAddress: 'chard-leader-addr',
} as const;

/**
 * UnaryHandler: answers one request; throws ChardError for refusals. Requests and responses are
 * the proto objects of chard.proto (snake_case, see proto.ts), typed by the node layer.
 */
export type UnaryHandler = (request: any, call: grpc.ServerUnaryCall<any, any>) => unknown | Promise<unknown>;

export interface ChardHandlers {
  Admin?: Partial<Record<AdminMethod, UnaryHandler>>;
  Block?: Partial<Record<BlockMethod, UnaryHandler>>;
}

export interface ChardServerOptions {
  /** messageBytesMax: largest request or response (gRPC message) accepted or sent. */
  messageBytesMax?: number;
  /** onInternalError: sees every non-ChardError a handler threw (answered as INTERNAL). */
  onInternalError?: (error: unknown, method: string) => void;
  /** onEvent: counts `grpc.<Service>.<Method>.ok|error`. */
  onEvent?: (name: string, value?: number) => void;
}

/** defaultMessageBytesMax: a 32 MiB block plus headroom (volumeBlockSizes.blockSizeMax). */
export const defaultMessageBytesMax = 33 * 1024 * 1024;

/**
 * statusOfCode: the gRPC status a ChardError code travels as. A code appended to ErrorCode later
 * and not listed here travels by its error class (usage: FAILED_PRECONDITION, remote: UNAVAILABLE,
 * else INTERNAL) — see statusOfError.
 */
export const statusOfCode: Partial<Record<ErrorCode, grpc.status>> = {
  [ErrorCode.InvalidArgument]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.NotFound]: grpc.status.NOT_FOUND,
  [ErrorCode.AlreadyExists]: grpc.status.ALREADY_EXISTS,
  [ErrorCode.FailedPrecondition]: grpc.status.FAILED_PRECONDITION,
  [ErrorCode.OutOfRange]: grpc.status.OUT_OF_RANGE,
  [ErrorCode.ReadOnly]: grpc.status.PERMISSION_DENIED,
  [ErrorCode.TooLarge]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.NotLeader]: grpc.status.UNAVAILABLE,
  [ErrorCode.Unavailable]: grpc.status.UNAVAILABLE,
  [ErrorCode.Timeout]: grpc.status.DEADLINE_EXCEEDED,
  [ErrorCode.Busy]: grpc.status.RESOURCE_EXHAUSTED,
  [ErrorCode.ProposalDropped]: grpc.status.UNAVAILABLE,
  [ErrorCode.WrongCluster]: grpc.status.FAILED_PRECONDITION,
  [ErrorCode.Closed]: grpc.status.UNAVAILABLE,
  [ErrorCode.Cancelled]: grpc.status.CANCELLED,
  [ErrorCode.Corrupt]: grpc.status.DATA_LOSS,
  [ErrorCode.Internal]: grpc.status.INTERNAL,
  [ErrorCode.Compacted]: grpc.status.INTERNAL,
  [ErrorCode.SnapshotOutOfDate]: grpc.status.INTERNAL,
  [ErrorCode.LogUnavailable]: grpc.status.INTERNAL,
  // A client whose session the state machine forgot must open a new one: not retryable as is.
  [ErrorCode.SessionExpired]: grpc.status.FAILED_PRECONDITION,
};

function statusOfError(error: ChardError): grpc.status {
  const listed = statusOfCode[error.code];
  if (listed !== undefined) return listed;
  if (error instanceof UsageError) return grpc.status.FAILED_PRECONDITION;
  if (error instanceof RemoteError) return grpc.status.UNAVAILABLE;
  return grpc.status.INTERNAL;
}

const usageCodes: ReadonlySet<string> = new Set([
  ErrorCode.InvalidArgument,
  ErrorCode.NotFound,
  ErrorCode.AlreadyExists,
  ErrorCode.FailedPrecondition,
  ErrorCode.OutOfRange,
  ErrorCode.ReadOnly,
  ErrorCode.TooLarge,
  ErrorCode.SessionExpired,
]);
const remoteCodes: ReadonlySet<string> = new Set([
  ErrorCode.NotLeader,
  ErrorCode.Unavailable,
  ErrorCode.Timeout,
  ErrorCode.Busy,
  ErrorCode.ProposalDropped,
  ErrorCode.WrongCluster,
  ErrorCode.Closed,
  ErrorCode.Cancelled,
]);
const internalCodes: ReadonlySet<string> = new Set([
  ErrorCode.Corrupt,
  ErrorCode.Internal,
  ErrorCode.Compacted,
  ErrorCode.SnapshotOutOfDate,
  ErrorCode.LogUnavailable,
]);
const usageStatuses: ReadonlySet<grpc.status> = new Set([
  grpc.status.INVALID_ARGUMENT,
  grpc.status.NOT_FOUND,
  grpc.status.ALREADY_EXISTS,
  grpc.status.FAILED_PRECONDITION,
  grpc.status.OUT_OF_RANGE,
  grpc.status.PERMISSION_DENIED,
  grpc.status.UNIMPLEMENTED,
]);
const remoteStatuses: ReadonlySet<grpc.status> = new Set([
  grpc.status.UNAVAILABLE,
  grpc.status.DEADLINE_EXCEEDED,
  grpc.status.RESOURCE_EXHAUSTED,
  grpc.status.CANCELLED,
  grpc.status.ABORTED,
]);
const knownCodes: ReadonlySet<string> = new Set(Object.values(ErrorCode));

/** errorToStatus: the status, details and metadata a thrown value is answered with. */
export function errorToStatus(error: unknown): grpc.StatusObject {
  const metadata = new grpc.Metadata();
  if (!isChardError(error)) {
    metadata.set(metadataKeys.code, ErrorCode.Internal);
    return { code: grpc.status.INTERNAL, details: 'internal error', metadata };
  }
  metadata.set(metadataKeys.code, error.code);
  if (error instanceof NotLeaderError) {
    metadata.set(metadataKeys.leaderId, String(error.leaderId));
    if (error.leaderAddress !== undefined) metadata.set(metadataKeys.leaderAddress, error.leaderAddress);
  }
  return { code: statusOfError(error), details: error.message, metadata };
}

function firstString(metadata: grpc.Metadata | undefined, key: string): string | undefined {
  const value = metadata?.get(key)[0];
  return typeof value === 'string' ? value : undefined;
}

/** codeOfStatus: the ErrorCode of a status that came without chard-code (channel failures etc.). */
function codeOfStatus(code: grpc.status): ErrorCode {
  switch (code) {
    case grpc.status.INVALID_ARGUMENT:
      return ErrorCode.InvalidArgument;
    case grpc.status.NOT_FOUND:
      return ErrorCode.NotFound;
    case grpc.status.ALREADY_EXISTS:
      return ErrorCode.AlreadyExists;
    case grpc.status.FAILED_PRECONDITION:
    case grpc.status.UNIMPLEMENTED:
      return ErrorCode.FailedPrecondition;
    case grpc.status.OUT_OF_RANGE:
      return ErrorCode.OutOfRange;
    case grpc.status.PERMISSION_DENIED:
      return ErrorCode.ReadOnly;
    case grpc.status.DEADLINE_EXCEEDED:
      return ErrorCode.Timeout;
    case grpc.status.RESOURCE_EXHAUSTED:
      return ErrorCode.Busy;
    case grpc.status.UNAVAILABLE:
    case grpc.status.CANCELLED:
    case grpc.status.ABORTED:
      return ErrorCode.Unavailable;
    case grpc.status.DATA_LOSS:
      return ErrorCode.Corrupt;
    default:
      return ErrorCode.Internal;
  }
}

/** statusToError: the ChardError a failed call stands for (inverse of errorToStatus). */
export function statusToError(error: grpc.ServiceError): ChardError {
  const metadataCode = firstString(error.metadata, metadataKeys.code);
  const code: ErrorCode =
    metadataCode !== undefined && knownCodes.has(metadataCode) ? (metadataCode as ErrorCode) : codeOfStatus(error.code);
  const details = error.details || error.message;
  if (code === ErrorCode.NotLeader) {
    const leaderId = Number(firstString(error.metadata, metadataKeys.leaderId) ?? '0');
    const safeLeaderId = Number.isSafeInteger(leaderId) && leaderId >= 0 ? leaderId : 0;
    return new NotLeaderError(safeLeaderId, firstString(error.metadata, metadataKeys.leaderAddress));
  }
  if (code === ErrorCode.Corrupt) return new CorruptError(details);
  if (usageCodes.has(code)) return new UsageError(code, details, { cause: error });
  if (remoteCodes.has(code)) return new RemoteError(code, details, { cause: error });
  if (!internalCodes.has(code)) {
    // A code this build does not classify (appended later): classify by the status it came with.
    if (usageStatuses.has(error.code)) return new UsageError(code, details, { cause: error });
    if (remoteStatuses.has(error.code)) return new RemoteError(code, details, { cause: error });
  }
  return new InternalError(code, details, { cause: error });
}

/**
 * buildChardServer: a grpc Server offering the given handlers. A method without a handler answers
 * UNIMPLEMENTED (chard-code FAILED_PRECONDITION). Call `listen` to bind it.
 */
export function buildChardServer(handlers: ChardHandlers, options: ChardServerOptions = {}): grpc.Server {
  const messageBytesMax = options.messageBytesMax ?? defaultMessageBytesMax;
  const server = new grpc.Server({
    'grpc.max_receive_message_length': messageBytesMax,
    'grpc.max_send_message_length': messageBytesMax,
  });
  const add = (service: ChardService, methods: readonly string[], table: Partial<Record<string, UnaryHandler>> | undefined) => {
    if (table === undefined) return;
    const implementation: grpc.UntypedServiceImplementation = {};
    for (const method of methods) {
      const handler = table[method];
      const name = `grpc.${service}.${method}`;
      implementation[method] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
        if (handler === undefined) {
          const metadata = new grpc.Metadata();
          metadata.set(metadataKeys.code, ErrorCode.FailedPrecondition);
          callback({ code: grpc.status.UNIMPLEMENTED, details: `${service}.${method} is not implemented`, metadata });
          return;
        }
        Promise.resolve()
          .then(() => handler(call.request, call))
          .then(
            (response) => {
              options.onEvent?.(`${name}.ok`);
              callback(null, response ?? {});
            },
            (error: unknown) => {
              options.onEvent?.(`${name}.error`);
              if (!isChardError(error)) options.onInternalError?.(error, `${service}.${method}`);
              callback(errorToStatus(error));
            },
          );
      };
    }
    server.addService(serviceDefinition('chard.proto', chardServices[service]), implementation);
  };
  add('Admin', adminMethods, handlers.Admin);
  add('Block', blockMethods, handlers.Block);
  return server;
}

/** listen: bind `server` to host:port (port 0: the OS picks) and return the bound host:port. */
export async function listen(server: grpc.Server, address: string, credentials?: grpc.ServerCredentials): Promise<string> {
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, credentials ?? grpc.ServerCredentials.createInsecure(), (error, boundPort) =>
      error ? reject(error) : resolve(boundPort),
    ),
  );
  return `${address.slice(0, address.lastIndexOf(':'))}:${port}`;
}

export interface ChardClientOptions {
  credentials?: grpc.ChannelCredentials;
  messageBytesMax?: number;
}

/**
 * clientChannelOptions: the options of every gRPC client channel chard opens (the CLI's, the
 * attach agent's, a follower's write forwarder). The reconnect backoff has the raft link's bounds
 * (reconnectBackoffMsMin, growing by grpc-js's 1.6x with jitter, to reconnectBackoffMsMax): grpc-js's own starts at 1 s and
 * grows by 1.6× to 120 s, so a client that had tried a node through a 10 s outage first
 * reconnected 3-12 s after the node was back (the agent test's "first write after the restart").
 * A dead node now costs one refused connect per half second per channel.
 */
export function clientChannelOptions(messageBytesMax: number): grpc.ChannelOptions {
  return {
    'grpc.max_receive_message_length': messageBytesMax,
    'grpc.max_send_message_length': messageBytesMax,
    'grpc.initial_reconnect_backoff_ms': defaultTransportLimits.reconnectBackoffMsMin,
    'grpc.max_reconnect_backoff_ms': defaultTransportLimits.reconnectBackoffMsMax,
  };
}

/** createChardClient: a client of one chard.v1 service at host:port. */
export function createChardClient(service: ChardService, address: string, options: ChardClientOptions = {}): grpc.Client {
  const messageBytesMax = options.messageBytesMax ?? defaultMessageBytesMax;
  const Client = clientConstructor('chard.proto', chardServices[service]);
  return new Client(address, options.credentials ?? grpc.credentials.createInsecure(), clientChannelOptions(messageBytesMax));
}

export interface CallOptions {
  /** timeoutMs: the call's deadline from now (default 10 s). */
  timeoutMs?: number;
}

/**
 * callUnary: call `method` on `client`; resolves with the response object or rejects with the
 * ChardError the server raised (NotLeaderError with its hint), see statusToError.
 */
export function callUnary<Response = Record<string, unknown>>(
  client: grpc.Client,
  method: AdminMethod | BlockMethod,
  request: object,
  options: CallOptions = {},
): Promise<Response> {
  const fn = (client as unknown as Record<string, unknown>)[method];
  if (typeof fn !== 'function') return Promise.reject(new UsageError(ErrorCode.InvalidArgument, `no method ${method} on this client`));
  const deadline = new Date(Date.now() + (options.timeoutMs ?? 10_000));
  return new Promise<Response>((resolve, reject) => {
    (fn as (req: object, opts: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r?: Response) => void) => void).call(
      client,
      request,
      { deadline },
      (error, response) => {
        if (error !== null) reject(statusToError(error));
        else resolve(response as Response);
      },
    );
  });
}

/** wireInteger: a uint64 request field as a safe integer, or UsageError INVALID_ARGUMENT. */
export function wireInteger(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new UsageError(ErrorCode.InvalidArgument, `${field} must be an integer in [0, 2^53)`);
  }
  return value;
}
