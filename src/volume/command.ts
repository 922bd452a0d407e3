/**
 * command: the one block command type of chard — what the NBD layer builds, the Block RPC
 * carries, a follower forwards, and the state machine applies — and its binary codec, carried
 * as the data of Normal raft entries.
 *
 * Layout (big-endian), every length validated on decode before anything is allocated:
 *   u8  version (1)
 *   u8  kind (CommandKind)
 *   u8  flags (bit 0: a client session follows)
 *   [session]  u8 sessionIdBytes (1..sessionIdBytesMax), sessionId (UTF-8), u64 sequence (1..2^53-1),
 *              u64 ackedBelow (0..sequence)
 *   body by kind:
 *     write        name, u64 offset, u32 dataBytes (<= writeBytesMax), data
 *     trim         name, u64 offset, u64 length
 *     writeZeroes  name, u64 offset, u64 length
 *     createVolume name, u64 sizeBytes
 *     resizeVolume name, u64 sizeBytes
 *     deleteVolume name
 *     noop         (nothing)
 *     closeSession (nothing; the session stamp is required: the session that ends)
 *   name = u8 nameBytes (1..64) + ASCII [A-Za-z0-9._-]
 * Trailing bytes are an error. An EMPTY entry (the no-op a new leader appends) decodes as noop.
 *
 * decodeCommand is the wire validation: it throws UsageError(InvalidArgument) for anything
 * malformed, so a node can refuse a bad client request before proposing it, and the state
 * machine turns the same error into a deterministic per-entry result (every replica agrees).
 */

import { type ChardError, ErrorCode, UsageError } from '../errors.js';
import { blockBytes, isValidVolumeName, reapBlocksPerEntry, volumeNameBytesMax } from './rules.js';

export const CommandKind = {
  Write: 1,
  Trim: 2,
  WriteZeroes: 3,
  CreateVolume: 4,
  ResizeVolume: 5,
  DeleteVolume: 6,
  Noop: 7,
  CloseSession: 8,
} as const;
export type CommandKind = (typeof CommandKind)[keyof typeof CommandKind];

/**
 * Session: a client session stamp for at-most-once application (src/blockstore/sessions.ts).
 * `ackedBelow`: every sequence below it has been answered to the client.
 */
export interface Session {
  id: string;
  sequence: number;
  ackedBelow: number;
}

/** DataCommand: the commands of a client's block requests. */
export type DataCommand =
  | { kind: 'write'; volume: string; offset: number; data: Uint8Array; session?: Session }
  | { kind: 'trim'; volume: string; offset: number; length: number; session?: Session }
  | { kind: 'writeZeroes'; volume: string; offset: number; length: number; session?: Session };

/** BlockCommand: a data command as a client submits it, always with its session stamp. */
export type BlockCommand = DataCommand & { session: Session };

/** SessionCommand: what a client's session submits: its block commands and, at the end, its close. */
export type SessionCommand = BlockCommand | { kind: 'closeSession'; session: Session };

/**
 * SessionRenewable: SESSION_EXPIRED as the answer to the FIRST and only attempt of a command.
 * The state machine answered without applying it, and no earlier attempt exists that could have
 * been applied, so the client may send it again in a new session without applying it twice. A
 * SESSION_EXPIRED after a retry stays a plain UsageError: an earlier attempt may have been
 * applied before the session was evicted, and a re-send could apply it a second time.
 */
export class SessionRenewable extends UsageError {
  constructor(cause: ChardError) {
    super(ErrorCode.SessionExpired, cause.message, { cause });
  }
}

/**
 * applyRows: the block rows applying `command` may store or delete — its apply work, which the
 * entry's byte size does not show for a trim or a write of zeroes (61 bytes, up to 4,096 rows).
 * A range that starts and ends inside blocks touches one more block than its length covers. An
 * empty entry (noop) reaps up to reapBlocksPerEntry rows of deleted volumes and shrunk tails.
 */
export function applyRows(command: Command): number {
  switch (command.kind) {
    case 'noop':
      return reapBlocksPerEntry + 1;
    case 'write':
      return Math.ceil(command.data.length / blockBytes) + 1;
    case 'trim':
    case 'writeZeroes':
      return Math.ceil(command.length / blockBytes) + 1;
    default:
      return 1;
  }
}

/** renewableIfFirst: the error a service throws for `error` after `attempts` attempts of one command. */
export function renewableIfFirst(error: unknown, attempts: number): unknown {
  if (attempts === 1 && error instanceof UsageError && error.code === ErrorCode.SessionExpired && !(error instanceof SessionRenewable)) return new SessionRenewable(error);
  return error;
}

export type Command =
  | DataCommand
  | { kind: 'createVolume'; name: string; sizeBytes: number; session?: Session }
  | { kind: 'resizeVolume'; name: string; sizeBytes: number; session?: Session }
  | { kind: 'deleteVolume'; name: string; session?: Session }
  | { kind: 'noop'; session?: Session }
  /** closeSession: the client of `session` is gone; its id is retired (src/blockstore/sessions.ts). */
  | { kind: 'closeSession'; session: Session };

/** commandLimits: the bounds every encoded command respects (checked on encode and decode). */
export const commandLimits = {
  /** writeBytesMax: payload of one write command; the node splits larger client writes. */
  writeBytesMax: 4 * 1024 * 1024,
  /** commandBytesMax: a whole encoded command (largest write + headers). */
  commandBytesMax: 4 * 1024 * 1024 + 256,
  /** volumeNameBytesMax: names are 1..64 ASCII characters (rules.ts). */
  volumeNameBytesMax,
  /** sessionIdBytesMax: matches defaultSessionLimits.sessionIdBytesMax. */
  sessionIdBytesMax: 64,
} as const;

const VERSION = 1;
const FLAG_SESSION = 1;

function bad(message: string): UsageError {
  return new UsageError(ErrorCode.InvalidArgument, `command: ${message}`);
}

function checkUint(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) throw bad(`${what} must be a non-negative safe integer`);
}

function commandBody(command: Command): number {
  switch (command.kind) {
    case 'write':
      return 1 + command.volume.length + 8 + 4 + command.data.length;
    case 'trim':
    case 'writeZeroes':
      return 1 + command.volume.length + 16;
    case 'createVolume':
    case 'resizeVolume':
      return 1 + command.name.length + 8;
    case 'deleteVolume':
      return 1 + command.name.length;
    case 'noop':
    case 'closeSession':
      return 0;
  }
}

const kindCode = {
  write: CommandKind.Write,
  trim: CommandKind.Trim,
  writeZeroes: CommandKind.WriteZeroes,
  createVolume: CommandKind.CreateVolume,
  resizeVolume: CommandKind.ResizeVolume,
  deleteVolume: CommandKind.DeleteVolume,
  noop: CommandKind.Noop,
  closeSession: CommandKind.CloseSession,
} as const;

/** encodeCommand: the bytes of `command`; throws UsageError(InvalidArgument) for out-of-bounds fields. */
export function encodeCommand(command: Command): Uint8Array {
  const name = command.kind === 'write' || command.kind === 'trim' || command.kind === 'writeZeroes' ? command.volume : command.kind === 'noop' || command.kind === 'closeSession' ? undefined : command.name;
  if (command.kind === 'closeSession' && command.session === undefined) throw bad('closeSession needs its session stamp');
  if (name !== undefined && !isValidVolumeName(name)) throw bad(`invalid volume name ${JSON.stringify(name)}`);
  let sessionId: Buffer | undefined;
  if (command.session !== undefined) {
    sessionId = Buffer.from(command.session.id, 'utf8');
    if (sessionId.length < 1 || sessionId.length > commandLimits.sessionIdBytesMax) throw bad('session id must be 1..64 bytes');
    if (!Number.isSafeInteger(command.session.sequence) || command.session.sequence < 1) throw bad('session sequence must be a positive safe integer');
    const ackedBelow = command.session.ackedBelow;
    if (!Number.isSafeInteger(ackedBelow) || ackedBelow < 0 || ackedBelow > command.session.sequence) throw bad('session ackedBelow must be in 0..sequence');
  }
  if (command.kind === 'write' && command.data.length > commandLimits.writeBytesMax) throw bad(`write of ${command.data.length} bytes exceeds writeBytesMax`);
  const size = 3 + (sessionId === undefined ? 0 : 1 + sessionId.length + 16) + commandBody(command);
  if (size > commandLimits.commandBytesMax) throw bad('command exceeds commandBytesMax');
  const out = Buffer.alloc(size);
  let at = 0;
  out[at++] = VERSION;
  out[at++] = kindCode[command.kind];
  out[at++] = sessionId === undefined ? 0 : FLAG_SESSION;
  if (sessionId !== undefined) {
    out[at++] = sessionId.length;
    sessionId.copy(out, at);
    at += sessionId.length;
    out.writeBigUInt64BE(BigInt(command.session!.sequence), at);
    at += 8;
    out.writeBigUInt64BE(BigInt(command.session!.ackedBelow), at);
    at += 8;
  }
  const putName = (n: string) => {
    out[at++] = n.length;
    at += out.write(n, at, 'latin1');
  };
  const putU64 = (value: number, what: string) => {
    checkUint(value, what);
    out.writeBigUInt64BE(BigInt(value), at);
    at += 8;
  };
  switch (command.kind) {
    case 'write':
      putName(command.volume);
      putU64(command.offset, 'offset');
      out.writeUInt32BE(command.data.length, at);
      at += 4;
      out.set(command.data, at);
      at += command.data.length;
      break;
    case 'trim':
    case 'writeZeroes':
      putName(command.volume);
      putU64(command.offset, 'offset');
      putU64(command.length, 'length');
      break;
    case 'createVolume':
    case 'resizeVolume':
      putName(command.name);
      putU64(command.sizeBytes, 'sizeBytes');
      break;
    case 'deleteVolume':
      putName(command.name);
      break;
    case 'noop':
    case 'closeSession':
      break;
  }
  if (at !== size) throw bad('internal size mismatch');
  return new Uint8Array(out.buffer, out.byteOffset, out.length);
}

/** decodeCommand: parses and validates entry data; throws UsageError(InvalidArgument) when malformed. */
export function decodeCommand(data: Uint8Array): Command {
  if (data.length === 0) return { kind: 'noop' };
  if (data.length > commandLimits.commandBytesMax) throw bad(`command of ${data.length} bytes exceeds commandBytesMax`);
  const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
  let at = 0;
  const need = (n: number, what: string) => {
    if (at + n > buf.length) throw bad(`truncated ${what}`);
  };
  const u8 = (what: string) => {
    need(1, what);
    return buf[at++]!;
  };
  const u64 = (what: string) => {
    need(8, what);
    const value = buf.readBigUInt64BE(at);
    at += 8;
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw bad(`${what} beyond 2^53`);
    return Number(value);
  };
  const name = () => {
    const length = u8('name length');
    if (length < 1 || length > commandLimits.volumeNameBytesMax) throw bad('volume name must be 1..64 bytes');
    need(length, 'name');
    const text = buf.toString('latin1', at, at + length);
    at += length;
    if (!isValidVolumeName(text)) throw bad(`invalid volume name ${JSON.stringify(text)}`);
    return text;
  };
  const version = u8('version');
  if (version !== VERSION) throw bad(`unknown command version ${version}`);
  const kind = u8('kind');
  const flags = u8('flags');
  if ((flags & ~FLAG_SESSION) !== 0) throw bad(`unknown flags ${flags}`);
  let session: Session | undefined;
  if ((flags & FLAG_SESSION) !== 0) {
    const length = u8('session id length');
    if (length < 1 || length > commandLimits.sessionIdBytesMax) throw bad('session id must be 1..64 bytes');
    need(length, 'session id');
    const sessionId = buf.toString('utf8', at, at + length);
    // Canonical: ids that are not valid UTF-8 would decode to U+FFFD and collide.
    if (Buffer.byteLength(sessionId, 'utf8') !== length || !Buffer.from(sessionId, 'utf8').equals(buf.subarray(at, at + length))) {
      throw bad('session id is not valid UTF-8');
    }
    at += length;
    const sequence = u64('sequence');
    if (sequence < 1) throw bad('session sequence must be positive');
    const ackedBelow = u64('ackedBelow');
    if (ackedBelow > sequence) throw bad('session ackedBelow beyond its sequence');
    session = { id: sessionId, sequence, ackedBelow };
  }
  let command: Command;
  switch (kind) {
    case CommandKind.Write: {
      const volume = name();
      const offset = u64('offset');
      need(4, 'data length');
      const length = buf.readUInt32BE(at);
      at += 4;
      if (length > commandLimits.writeBytesMax) throw bad(`write of ${length} bytes exceeds writeBytesMax`);
      need(length, 'data');
      const payload = new Uint8Array(buf.buffer, buf.byteOffset + at, length);
      at += length;
      command = { kind: 'write', volume, offset, data: payload };
      break;
    }
    case CommandKind.Trim:
    case CommandKind.WriteZeroes: {
      const volume = name();
      const offset = u64('offset');
      const length = u64('length');
      command = { kind: kind === CommandKind.Trim ? 'trim' : 'writeZeroes', volume, offset, length };
      break;
    }
    case CommandKind.CreateVolume:
    case CommandKind.ResizeVolume: {
      const volumeName = name();
      const sizeBytes = u64('sizeBytes');
      command = { kind: kind === CommandKind.CreateVolume ? 'createVolume' : 'resizeVolume', name: volumeName, sizeBytes };
      break;
    }
    case CommandKind.DeleteVolume:
      command = { kind: 'deleteVolume', name: name() };
      break;
    case CommandKind.Noop:
      command = { kind: 'noop' };
      break;
    case CommandKind.CloseSession:
      if (session === undefined) throw bad('closeSession without a session stamp');
      command = { kind: 'closeSession', session };
      break;
    default:
      throw bad(`unknown command kind ${kind}`);
  }
  if (at !== buf.length) throw bad(`${buf.length - at} trailing bytes`);
  if (session !== undefined) command.session = session;
  return command;
}
