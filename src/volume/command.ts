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
import { blockSlab } from '../slab.js';
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

/** twoTo32: splits a safe integer into the two 32-bit halves of its u64 field (no BigInt on the write path). */
const twoTo32 = 2 ** 32;
/** u64HighMax: the high half of Number.MAX_SAFE_INTEGER (2^53 - 1): a larger one is beyond 2^53. */
const u64HighMax = 0x1f_ffff;

/** encodeCommand: the bytes of `command`; throws UsageError(InvalidArgument) for out-of-bounds fields. */
export function encodeCommand(command: Command): Uint8Array {
  const name = command.kind === 'write' || command.kind === 'trim' || command.kind === 'writeZeroes' ? command.volume : command.kind === 'noop' || command.kind === 'closeSession' ? undefined : command.name;
  if (command.kind === 'closeSession' && command.session === undefined) throw bad('closeSession needs its session stamp');
  if (name !== undefined && !isValidVolumeName(name)) throw bad(`invalid volume name ${JSON.stringify(name)}`);
  let sessionIdBytes: number | undefined;
  if (command.session !== undefined) {
    sessionIdBytes = Buffer.byteLength(command.session.id, 'utf8');
    if (sessionIdBytes < 1 || sessionIdBytes > commandLimits.sessionIdBytesMax) throw bad('session id must be 1..64 bytes');
    if (!Number.isSafeInteger(command.session.sequence) || command.session.sequence < 1) throw bad('session sequence must be a positive safe integer');
    const ackedBelow = command.session.ackedBelow;
    if (!Number.isSafeInteger(ackedBelow) || ackedBelow < 0 || ackedBelow > command.session.sequence) throw bad('session ackedBelow must be in 0..sequence');
  }
  if (command.kind === 'write' && command.data.length > commandLimits.writeBytesMax) throw bad(`write of ${command.data.length} bytes exceeds writeBytesMax`);
  const size = 3 + (sessionIdBytes === undefined ? 0 : 1 + sessionIdBytes + 16) + commandBody(command);
  if (size > commandLimits.commandBytesMax) throw bad('command exceeds commandBytesMax');
  // Not zero-filled: every byte is written below, and the size check at the end proves it. From
  // the block slab: an entry's data leaves the raft log's caches in index order (src/slab.ts).
  const out = blockSlab.take(size);
  let at = 0;
  const putU64 = (value: number, what: string) => {
    checkUint(value, what);
    out.writeUInt32BE(Math.floor(value / twoTo32), at);
    out.writeUInt32BE(value >>> 0, at + 4);
    at += 8;
  };
  out[at++] = VERSION;
  out[at++] = kindCode[command.kind];
  out[at++] = sessionIdBytes === undefined ? 0 : FLAG_SESSION;
  if (sessionIdBytes !== undefined) {
    out[at++] = sessionIdBytes;
    at += out.write(command.session!.id, at, sessionIdBytes, 'utf8');
    putU64(command.session!.sequence, 'session sequence');
    putU64(command.session!.ackedBelow, 'session ackedBelow');
  }
  const putName = (n: string) => {
    out[at++] = n.length;
    at += out.write(n, at, 'latin1');
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

/**
 * Cursor: decodeCommand's position in the bytes it parses. Every read checks the length first, so
 * a truncated command is an InvalidArgument, never an out-of-range read. One object per decode
 * instead of a closure per field: decodeCommand runs for every entry a node applies.
 */
class Cursor {
  at = 0;
  constructor(readonly buf: Buffer) {}

  need(n: number, what: string): void {
    if (this.at + n > this.buf.length) throw bad(`truncated ${what}`);
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.at++]!;
  }

  u32(what: string): number {
    this.need(4, what);
    const value = this.buf.readUInt32BE(this.at);
    this.at += 4;
    return value;
  }

  u64(what: string): number {
    this.need(8, what);
    const high = this.buf.readUInt32BE(this.at);
    const low = this.buf.readUInt32BE(this.at + 4);
    this.at += 8;
    if (high > u64HighMax) throw bad(`${what} beyond 2^53`);
    return high * twoTo32 + low;
  }

  name(): string {
    const length = this.u8('name length');
    if (length < 1 || length > commandLimits.volumeNameBytesMax) throw bad('volume name must be 1..64 bytes');
    this.need(length, 'name');
    const text = this.buf.toString('latin1', this.at, this.at + length);
    this.at += length;
    if (!isValidVolumeName(text)) throw bad(`invalid volume name ${JSON.stringify(text)}`);
    return text;
  }

  /** sessionId: `length` bytes of canonical UTF-8 (ids that are not valid UTF-8 would decode to U+FFFD and collide). */
  sessionId(length: number): string {
    this.need(length, 'session id');
    const { buf, at } = this;
    let ascii = true;
    for (let i = at; i < at + length; i++) {
      if (buf[i]! >= 0x80) {
        ascii = false;
        break;
      }
    }
    const id = buf.toString(ascii ? 'latin1' : 'utf8', at, at + length);
    if (!ascii && (Buffer.byteLength(id, 'utf8') !== length || !Buffer.from(id, 'utf8').equals(buf.subarray(at, at + length)))) {
      throw bad('session id is not valid UTF-8');
    }
    this.at += length;
    return id;
  }
}

/** decodeCommand: parses and validates entry data; throws UsageError(InvalidArgument) when malformed. */
export function decodeCommand(data: Uint8Array): Command {
  if (data.length === 0) return { kind: 'noop' };
  if (data.length > commandLimits.commandBytesMax) throw bad(`command of ${data.length} bytes exceeds commandBytesMax`);
  const buf = Buffer.from(data.buffer, data.byteOffset, data.length);
  const c = new Cursor(buf);
  const version = c.u8('version');
  if (version !== VERSION) throw bad(`unknown command version ${version}`);
  const kind = c.u8('kind');
  const flags = c.u8('flags');
  if ((flags & ~FLAG_SESSION) !== 0) throw bad(`unknown flags ${flags}`);
  let session: Session | undefined;
  if ((flags & FLAG_SESSION) !== 0) {
    const length = c.u8('session id length');
    if (length < 1 || length > commandLimits.sessionIdBytesMax) throw bad('session id must be 1..64 bytes');
    const id = c.sessionId(length);
    const sequence = c.u64('sequence');
    if (sequence < 1) throw bad('session sequence must be positive');
    const ackedBelow = c.u64('ackedBelow');
    if (ackedBelow > sequence) throw bad('session ackedBelow beyond its sequence');
    session = { id, sequence, ackedBelow };
  }
  let command: Command;
  switch (kind) {
    case CommandKind.Write: {
      const volume = c.name();
      const offset = c.u64('offset');
      const length = c.u32('data length');
      if (length > commandLimits.writeBytesMax) throw bad(`write of ${length} bytes exceeds writeBytesMax`);
      c.need(length, 'data');
      const payload = new Uint8Array(buf.buffer, buf.byteOffset + c.at, length);
      c.at += length;
      command = { kind: 'write', volume, offset, data: payload };
      break;
    }
    case CommandKind.Trim:
    case CommandKind.WriteZeroes: {
      const volume = c.name();
      const offset = c.u64('offset');
      const length = c.u64('length');
      command = { kind: kind === CommandKind.Trim ? 'trim' : 'writeZeroes', volume, offset, length };
      break;
    }
    case CommandKind.CreateVolume:
    case CommandKind.ResizeVolume: {
      const volumeName = c.name();
      const sizeBytes = c.u64('sizeBytes');
      command = { kind: kind === CommandKind.CreateVolume ? 'createVolume' : 'resizeVolume', name: volumeName, sizeBytes };
      break;
    }
    case CommandKind.DeleteVolume:
      command = { kind: 'deleteVolume', name: c.name() };
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
  if (c.at !== buf.length) throw bad(`${buf.length - c.at} trailing bytes`);
  if (session !== undefined) command.session = session;
  return command;
}
