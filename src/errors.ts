/**
 * errors: the one error hierarchy of chard.
 *
 * Every error that crosses a layer boundary is a ChardError with a stable `code` (a string from
 * ErrorCode). Three kinds are kept apart, because callers must treat them differently:
 *  - UsageError:    the caller asked for something invalid (bad size, unknown volume). Retrying the
 *                   same request cannot succeed. Maps to gRPC INVALID_ARGUMENT / NOT_FOUND /
 *                   ALREADY_EXISTS / FAILED_PRECONDITION and to NBD EINVAL / ENOSPC / EPERM.
 *  - RemoteError:   something outside this process failed or is not (yet) able to serve: no leader,
 *                   a peer unreachable, a timeout. Retrying may succeed. NotLeaderError carries the
 *                   hint of who the leader is, so a client can go there.
 *  - InternalError: a broken invariant or corrupted data (a checksum mismatch). Never retried
 *                   silently; always logged.
 * Programmer errors inside a layer are assertion failures (see assert.ts) and crash the process.
 */

export const ErrorCode = {
  // usage
  InvalidArgument: 'INVALID_ARGUMENT',
  NotFound: 'NOT_FOUND',
  AlreadyExists: 'ALREADY_EXISTS',
  FailedPrecondition: 'FAILED_PRECONDITION',
  OutOfRange: 'OUT_OF_RANGE',
  ReadOnly: 'READ_ONLY',
  TooLarge: 'TOO_LARGE',
  // remote / availability
  NotLeader: 'NOT_LEADER',
  Unavailable: 'UNAVAILABLE',
  Timeout: 'TIMEOUT',
  Busy: 'BUSY',
  ProposalDropped: 'PROPOSAL_DROPPED',
  WrongCluster: 'WRONG_CLUSTER',
  Closed: 'CLOSED',
  // the request ended (deadline or client gone) before it was proposed
  Cancelled: 'CANCELLED',
  // internal
  Corrupt: 'CORRUPT',
  Internal: 'INTERNAL',
  // raft storage
  Compacted: 'COMPACTED',
  SnapshotOutOfDate: 'SNAPSHOT_OUT_OF_DATE',
  LogUnavailable: 'LOG_UNAVAILABLE',
  // sessions (appended by blockstore)
  SessionExpired: 'SESSION_EXPIRED',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** ChardError is the base of every error chard raises on purpose. `code` is stable across versions. */
export class ChardError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** UsageError: the request itself is wrong; retrying it unchanged cannot succeed. */
export class UsageError extends ChardError {}

/** RemoteError: the cluster or a peer cannot serve right now; a retry (elsewhere) may succeed. */
export class RemoteError extends ChardError {}

/** InternalError: an invariant broke or stored data is corrupt. */
export class InternalError extends ChardError {}

/** NotLeaderError: this node is not the leader. `leaderId` is 0 when no leader is known. */
export class NotLeaderError extends RemoteError {
  readonly leaderId: number;
  readonly leaderAddress: string | undefined;
  constructor(leaderId: number, leaderAddress?: string) {
    super(ErrorCode.NotLeader, leaderId === 0 ? 'no leader is known' : `not the leader; leader is node ${leaderId}`);
    this.leaderId = leaderId;
    this.leaderAddress = leaderAddress;
  }
}

/** CorruptError: a stored checksum did not match its data. The data is never served. */
export class CorruptError extends InternalError {
  constructor(message: string) {
    super(ErrorCode.Corrupt, message);
  }
}

/** isChardError narrows an unknown thrown value. */
export function isChardError(error: unknown): error is ChardError {
  return error instanceof ChardError;
}

/**
 * fromSystemError: an operating-system error (a Node fs or net error: `code` ENOENT, EEXIST,
 * EACCES, ...) as the UsageError an operator can act on, naming the call and the path; undefined
 * for anything else. The CLI reports these instead of an "internal error" with a stack: a --dir
 * that is a file, a directory without write permission or a full disk is the operator's to fix.
 */
export function fromSystemError(error: unknown): UsageError | undefined {
  if (!(error instanceof Error)) return undefined;
  const e = error as NodeJS.ErrnoException;
  if (typeof e.code !== 'string' || !/^E[A-Z]+$/.test(e.code) || typeof e.syscall !== 'string') return undefined;
  const what = e.path !== undefined ? `${e.syscall} ${e.path}` : e.syscall;
  const reasons: Record<string, [ErrorCode, string]> = {
    ENOENT: [ErrorCode.NotFound, 'no such file or directory'],
    EEXIST: [ErrorCode.AlreadyExists, 'a file of that name exists (a directory is needed)'],
    ENOTDIR: [ErrorCode.InvalidArgument, 'a part of the path is a file, not a directory'],
    EISDIR: [ErrorCode.InvalidArgument, 'it is a directory (a file is needed)'],
    EACCES: [ErrorCode.FailedPrecondition, 'permission denied'],
    EPERM: [ErrorCode.FailedPrecondition, 'operation not permitted'],
    EROFS: [ErrorCode.ReadOnly, 'the file system is read-only'],
    ENOSPC: [ErrorCode.FailedPrecondition, 'no space left on the device'],
    EADDRINUSE: [ErrorCode.FailedPrecondition, 'the address is in use (another process listens there)'],
    EADDRNOTAVAIL: [ErrorCode.InvalidArgument, 'the address is not one of this machine'],
  };
  const [code, reason] = reasons[e.code] ?? [ErrorCode.FailedPrecondition, e.message];
  return new UsageError(code, `cannot ${what}: ${reason} (${e.code})`, { cause: error });
}
