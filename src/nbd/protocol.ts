/**
 * protocol: the NBD wire format (fixed newstyle handshake + transmission), as constants and pure
 * encode/decode helpers.
 *
 * Values follow NetworkBlockDevice/nbd doc/proto.md. Every decoder checks its input length before
 * reading and returns `undefined` (or throws nothing) on malformed input, so the server can answer
 * with the protocol's error instead of crashing. Encoders assert their preconditions: they are fed
 * by the server itself, never by the network.
 */

import { assert } from '../assert.js';

/** Magic numbers. 64-bit ones are bigint because they exceed 2^53. */
export const Magic = {
  /** 'NBDMAGIC': first 8 bytes the server sends. */
  init: 0x4e42444d41474943n,
  /** 'IHAVEOPT': newstyle magic, also the prefix of every client option. */
  option: 0x49484156454f5054n,
  /** Prefix of every option reply. */
  optionReply: 0x3e889045565a9n,
  /** NBD_REQUEST_MAGIC. */
  request: 0x25609513,
  /** NBD_SIMPLE_REPLY_MAGIC. */
  simpleReply: 0x67446698,
  /** NBD_STRUCTURED_REPLY_MAGIC. */
  structuredReply: 0x668e33ef,
} as const;

/** HandshakeFlag: 16-bit flags the server sends after IHAVEOPT. */
export const HandshakeFlag = {
  fixedNewstyle: 1 << 0,
  noZeroes: 1 << 1,
} as const;

/** ClientFlag: 32-bit flags the client answers with. Any other bit makes the server hang up. */
export const ClientFlag = {
  fixedNewstyle: 1 << 0,
  noZeroes: 1 << 1,
} as const;
export const clientFlagsKnown = ClientFlag.fixedNewstyle | ClientFlag.noZeroes;

/** Option: option codes of the handshake phase. */
export const Option = {
  exportName: 1,
  abort: 2,
  list: 3,
  peekExport: 4,
  startTls: 5,
  info: 6,
  go: 7,
  structuredReply: 8,
  listMetaContext: 9,
  setMetaContext: 10,
  extendedHeaders: 11,
} as const;

/** OptionReply: option reply types. Errors have bit 31 set. */
export const OptionReply = {
  ack: 1,
  server: 2,
  info: 3,
  metaContext: 4,
  errUnsup: 0x80000001,
  errPolicy: 0x80000002,
  errInvalid: 0x80000003,
  errPlatform: 0x80000004,
  errTlsReqd: 0x80000005,
  errUnknown: 0x80000006,
  errShutdown: 0x80000007,
  errBlockSizeReqd: 0x80000008,
  errTooBig: 0x80000009,
} as const;

/** InfoType: NBD_INFO_* items of NBD_REP_INFO (answers to NBD_OPT_INFO / NBD_OPT_GO). */
export const InfoType = {
  export: 0,
  name: 1,
  description: 2,
  blockSize: 3,
} as const;

/** TransmissionFlag: 16-bit per-export flags sent at the end of the handshake. */
export const TransmissionFlag = {
  hasFlags: 1 << 0,
  readOnly: 1 << 1,
  sendFlush: 1 << 2,
  sendFua: 1 << 3,
  rotational: 1 << 4,
  sendTrim: 1 << 5,
  sendWriteZeroes: 1 << 6,
  sendDf: 1 << 7,
  canMultiConn: 1 << 8,
  sendResize: 1 << 9,
  sendCache: 1 << 10,
  sendFastZero: 1 << 11,
} as const;

/** Command: request types of the transmission phase. */
export const Command = {
  read: 0,
  write: 1,
  disc: 2,
  flush: 3,
  trim: 4,
  cache: 5,
  writeZeroes: 6,
  blockStatus: 7,
} as const;
export type Command = (typeof Command)[keyof typeof Command];

/** CommandFlag: 16-bit request flags. */
export const CommandFlag = {
  fua: 1 << 0,
  noHole: 1 << 1,
  df: 1 << 2,
  reqOne: 1 << 3,
  fastZero: 1 << 4,
} as const;

/** ReplyFlag: structured reply chunk flags. */
export const ReplyFlag = {
  done: 1 << 0,
} as const;

/** ReplyType: structured reply chunk types. Error chunks have bit 15 set. */
export const ReplyType = {
  none: 0,
  offsetData: 1,
  offsetHole: 2,
  blockStatus: 5,
  error: 0x8001,
  errorOffset: 0x8002,
} as const;

/** Errno: the only error values NBD allows on the wire. */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export type Errno = (typeof Errno)[keyof typeof Errno];

/** BlockState: flags of the base:allocation metadata context. */
export const BlockState = {
  hole: 1 << 0,
  zero: 1 << 1,
} as const;

/** metaContextBaseAllocation is the only metadata context this server knows. */
export const metaContextBaseAllocation = 'base:allocation';

/** stringBytesMax: the spec's hard limit on any string (export names, queries, messages). */
export const stringBytesMax = 4096;

/** messageBytesMax: error messages are cut to the spec's SHOULD length for strings. */
export const messageBytesMax = 256;

/**
 * encodeMessage: `text` as UTF-8 of at most `bytesMax` bytes, cut at a character boundary (never
 * in the middle of a multi-byte sequence, so the result stays valid UTF-8), NULs replaced by '?'.
 */
export function encodeMessage(text: string, bytesMax = messageBytesMax): Buffer {
  const bytes = Buffer.from(text.replaceAll('\0', '?'), 'utf8');
  if (bytes.length <= bytesMax) return bytes;
  let end = bytesMax;
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--; // bytes[end] continues a character
  return bytes.subarray(0, end);
}

export const requestHeaderBytes = 28;
export const optionHeaderBytes = 16;
export const simpleReplyHeaderBytes = 16;
export const structuredReplyHeaderBytes = 20;
export const optionReplyHeaderBytes = 20;

// ---------------------------------------------------------------------------------------------
// Handshake

/** encodeGreeting: NBDMAGIC, IHAVEOPT, handshake flags (18 bytes). */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const out = Buffer.alloc(18);
  out.writeBigUInt64BE(Magic.init, 0);
  out.writeBigUInt64BE(Magic.option, 8);
  out.writeUInt16BE(handshakeFlags, 16);
  return out;
}

export interface OptionHeader {
  magic: bigint;
  option: number;
  lengthBytes: number;
}

/** decodeOptionHeader reads the 16-byte option header; the caller checks the magic. */
export function decodeOptionHeader(buf: Uint8Array): OptionHeader | undefined {
  if (buf.length < optionHeaderBytes) return undefined;
  const b = toBuffer(buf);
  return { magic: b.readBigUInt64BE(0), option: b.readUInt32BE(8), lengthBytes: b.readUInt32BE(12) };
}

/** encodeOption builds a client option (used by test clients). */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  const out = Buffer.alloc(optionHeaderBytes + data.length);
  out.writeBigUInt64BE(Magic.option, 0);
  out.writeUInt32BE(option >>> 0, 8);
  out.writeUInt32BE(data.length, 12);
  out.set(data, optionHeaderBytes);
  return out;
}

/** encodeOptionReply builds one fixed-newstyle option reply. */
export function encodeOptionReply(option: number, replyType: number, data: Uint8Array = new Uint8Array(0)): Buffer {
  assert(data.length <= 0xffffffff, 'option reply too long');
  const out = Buffer.alloc(optionReplyHeaderBytes + data.length);
  out.writeBigUInt64BE(Magic.optionReply, 0);
  out.writeUInt32BE(option >>> 0, 8);
  out.writeUInt32BE(replyType >>> 0, 12);
  out.writeUInt32BE(data.length, 16);
  out.set(data, optionReplyHeaderBytes);
  return out;
}

export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  replyType: number;
  lengthBytes: number;
}

export function decodeOptionReplyHeader(buf: Uint8Array): OptionReplyHeader | undefined {
  if (buf.length < optionReplyHeaderBytes) return undefined;
  const b = toBuffer(buf);
  return {
    magic: b.readBigUInt64BE(0),
    option: b.readUInt32BE(8),
    replyType: b.readUInt32BE(12),
    lengthBytes: b.readUInt32BE(16),
  };
}

/** encodeExportNameReply: answer to NBD_OPT_EXPORT_NAME (size, flags, optional 124 zero bytes). */
export function encodeExportNameReply(sizeBytes: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, 'export size');
  const out = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  out.writeBigUInt64BE(BigInt(sizeBytes), 0);
  out.writeUInt16BE(transmissionFlags, 8);
  return out;
}

/** encodeServerReplyData: payload of NBD_REP_SERVER (name length, name, description). */
export function encodeServerReplyData(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description, 'utf8');
  const out = Buffer.alloc(4 + nameBytes.length + descriptionBytes.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  descriptionBytes.copy(out, 4 + nameBytes.length);
  return out;
}

/** encodeInfoExport: NBD_INFO_EXPORT payload (type, size, transmission flags). */
export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, 'export size');
  const out = Buffer.alloc(12);
  out.writeUInt16BE(InfoType.export, 0);
  out.writeBigUInt64BE(BigInt(sizeBytes), 2);
  out.writeUInt16BE(transmissionFlags, 10);
  return out;
}

/** encodeInfoString: NBD_INFO_NAME / NBD_INFO_DESCRIPTION payload. */
export function encodeInfoString(infoType: number, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const out = Buffer.alloc(2 + bytes.length);
  out.writeUInt16BE(infoType, 0);
  bytes.copy(out, 2);
  return out;
}

/** encodeInfoBlockSize: NBD_INFO_BLOCK_SIZE payload (min, preferred, max). */
export function encodeInfoBlockSize(minBytes: number, preferredBytes: number, maxBytes: number): Buffer {
  const out = Buffer.alloc(14);
  out.writeUInt16BE(InfoType.blockSize, 0);
  out.writeUInt32BE(minBytes, 2);
  out.writeUInt32BE(preferredBytes, 6);
  out.writeUInt32BE(maxBytes, 10);
  return out;
}

/** encodeMetaContextReplyData: NBD_REP_META_CONTEXT payload (id, name). */
export function encodeMetaContextReplyData(contextId: number, name: string): Buffer {
  const bytes = Buffer.from(name, 'utf8');
  const out = Buffer.alloc(4 + bytes.length);
  out.writeUInt32BE(contextId >>> 0, 0);
  bytes.copy(out, 4);
  return out;
}

export interface InfoRequest {
  exportName: string;
  infoTypes: number[];
}

/**
 * decodeInfoRequest parses the data of NBD_OPT_INFO / NBD_OPT_GO:
 * u32 name length, name, u16 count, count * u16 info type. The lengths must add up exactly.
 */
export function decodeInfoRequest(data: Uint8Array): InfoRequest | undefined {
  const b = toBuffer(data);
  if (b.length < 6) return undefined;
  const nameBytes = b.readUInt32BE(0);
  if (nameBytes > stringBytesMax || nameBytes > b.length - 6) return undefined;
  const exportName = decodeString(b.subarray(4, 4 + nameBytes));
  if (exportName === undefined) return undefined;
  const count = b.readUInt16BE(4 + nameBytes);
  if (b.length !== 6 + nameBytes + 2 * count) return undefined;
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(b.readUInt16BE(6 + nameBytes + 2 * i));
  return { exportName, infoTypes };
}

export function encodeInfoRequest(exportName: string, infoTypes: number[]): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const out = Buffer.alloc(6 + name.length + 2 * infoTypes.length);
  out.writeUInt32BE(name.length, 0);
  name.copy(out, 4);
  out.writeUInt16BE(infoTypes.length, 4 + name.length);
  infoTypes.forEach((t, i) => out.writeUInt16BE(t, 6 + name.length + 2 * i));
  return out;
}

export interface MetaContextRequest {
  exportName: string;
  queries: string[];
}

/**
 * decodeMetaContextRequest parses NBD_OPT_LIST/SET_META_CONTEXT data:
 * u32 name length, name, u32 query count, then per query u32 length + string. Exact fit required.
 */
export function decodeMetaContextRequest(data: Uint8Array, queriesMax: number): MetaContextRequest | undefined {
  const b = toBuffer(data);
  if (b.length < 8) return undefined;
  const nameBytes = b.readUInt32BE(0);
  if (nameBytes > stringBytesMax || nameBytes > b.length - 8) return undefined;
  const exportName = decodeString(b.subarray(4, 4 + nameBytes));
  if (exportName === undefined) return undefined;
  let at = 4 + nameBytes;
  const count = b.readUInt32BE(at);
  at += 4;
  // Each query needs at least 4 bytes; this bounds count by the (already bounded) data length.
  if (count > queriesMax || count > (b.length - at) / 4) return undefined;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (b.length - at < 4) return undefined;
    const queryBytes = b.readUInt32BE(at);
    at += 4;
    if (queryBytes > stringBytesMax || queryBytes > b.length - at) return undefined;
    const query = decodeString(b.subarray(at, at + queryBytes));
    if (query === undefined) return undefined;
    queries.push(query);
    at += queryBytes;
  }
  if (at !== b.length) return undefined;
  return { exportName, queries };
}

export function encodeMetaContextRequest(exportName: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const name = Buffer.from(exportName, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(name.length, 0);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(head, name, count);
  for (const q of queries) {
    const qb = Buffer.from(q, 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32BE(qb.length, 0);
    parts.push(len, qb);
  }
  return Buffer.concat(parts);
}

/** decodeString: UTF-8 without NUL, at most stringBytesMax bytes; undefined if invalid. */
export function decodeString(bytes: Uint8Array): string | undefined {
  if (bytes.length > stringBytesMax) return undefined;
  if (bytes.includes(0)) return undefined;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Transmission

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  /** handle: the client's 8 opaque bytes, echoed verbatim. */
  handle: Buffer;
  /** offset: u64 from the wire; may exceed 2^53, hence bigint. */
  offset: bigint;
  lengthBytes: number;
}

/** decodeRequestHeader reads a 28-byte request header; the caller checks the magic. */
export function decodeRequestHeader(buf: Uint8Array): RequestHeader | undefined {
  if (buf.length < requestHeaderBytes) return undefined;
  const b = toBuffer(buf);
  return {
    magic: b.readUInt32BE(0),
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    handle: Buffer.from(b.subarray(8, 16)),
    offset: b.readBigUInt64BE(16),
    lengthBytes: b.readUInt32BE(24),
  };
}

export function encodeRequestHeader(r: { flags: number; type: number; handle: bigint; offset: bigint | number; lengthBytes: number }): Buffer {
  const out = Buffer.alloc(requestHeaderBytes);
  out.writeUInt32BE(Magic.request, 0);
  out.writeUInt16BE(r.flags, 4);
  out.writeUInt16BE(r.type, 6);
  out.writeBigUInt64BE(r.handle, 8);
  out.writeBigUInt64BE(BigInt(r.offset), 16);
  out.writeUInt32BE(r.lengthBytes, 24);
  return out;
}

/** encodeSimpleReply: simple reply header (data, if any, follows separately). */
export function encodeSimpleReply(errno: number, handle: Uint8Array): Buffer {
  assert(handle.length === 8, 'handle is 8 bytes');
  const out = Buffer.alloc(simpleReplyHeaderBytes);
  out.writeUInt32BE(Magic.simpleReply, 0);
  out.writeUInt32BE(errno >>> 0, 4);
  out.set(handle, 8);
  return out;
}

/** encodeStructuredHeader: structured reply chunk header; `lengthBytes` of payload follow. */
export function encodeStructuredHeader(flags: number, type: number, handle: Uint8Array, lengthBytes: number): Buffer {
  assert(handle.length === 8, 'handle is 8 bytes');
  assert(lengthBytes >= 0 && lengthBytes <= 0xffffffff, 'chunk length');
  const out = Buffer.alloc(structuredReplyHeaderBytes);
  out.writeUInt32BE(Magic.structuredReply, 0);
  out.writeUInt16BE(flags, 4);
  out.writeUInt16BE(type, 6);
  out.set(handle, 8);
  out.writeUInt32BE(lengthBytes, 16);
  return out;
}

/** encodeOffsetDataHeader: chunk header + 8-byte offset; `dataBytes` of data follow. */
export function encodeOffsetDataHeader(flags: number, handle: Uint8Array, offset: number, dataBytes: number): Buffer {
  assert(dataBytes >= 1, 'OFFSET_DATA carries at least one byte');
  const out = Buffer.alloc(structuredReplyHeaderBytes + 8);
  encodeStructuredHeader(flags, ReplyType.offsetData, handle, 8 + dataBytes).copy(out, 0);
  out.writeBigUInt64BE(BigInt(offset), structuredReplyHeaderBytes);
  return out;
}

/** encodeOffsetHole: complete OFFSET_HOLE chunk. */
export function encodeOffsetHole(flags: number, handle: Uint8Array, offset: number, holeBytes: number): Buffer {
  assert(holeBytes >= 1 && holeBytes <= 0xffffffff, 'hole size');
  const out = Buffer.alloc(structuredReplyHeaderBytes + 12);
  encodeStructuredHeader(flags, ReplyType.offsetHole, handle, 12).copy(out, 0);
  out.writeBigUInt64BE(BigInt(offset), structuredReplyHeaderBytes);
  out.writeUInt32BE(holeBytes, structuredReplyHeaderBytes + 8);
  return out;
}

/** encodeErrorChunk: complete ERROR (or ERROR_OFFSET when offset is given) chunk. */
export function encodeErrorChunk(flags: number, handle: Uint8Array, errno: number, message: string, offset?: number): Buffer {
  assert(errno !== 0, 'error chunk needs an errno');
  const msg = encodeMessage(message);
  const tail = offset === undefined ? 0 : 8;
  const payloadBytes = 6 + msg.length + tail;
  const out = Buffer.alloc(structuredReplyHeaderBytes + payloadBytes);
  encodeStructuredHeader(flags, offset === undefined ? ReplyType.error : ReplyType.errorOffset, handle, payloadBytes).copy(out, 0);
  out.writeUInt32BE(errno >>> 0, structuredReplyHeaderBytes);
  out.writeUInt16BE(msg.length, structuredReplyHeaderBytes + 4);
  msg.copy(out, structuredReplyHeaderBytes + 6);
  if (offset !== undefined) out.writeBigUInt64BE(BigInt(offset), structuredReplyHeaderBytes + 6 + msg.length);
  return out;
}

export interface StatusDescriptor {
  lengthBytes: number;
  flags: number;
}

/** encodeBlockStatusChunk: complete BLOCK_STATUS chunk for one metadata context. */
export function encodeBlockStatusChunk(flags: number, handle: Uint8Array, contextId: number, descriptors: StatusDescriptor[]): Buffer {
  assert(descriptors.length >= 1, 'at least one descriptor');
  const payloadBytes = 4 + 8 * descriptors.length;
  const out = Buffer.alloc(structuredReplyHeaderBytes + payloadBytes);
  encodeStructuredHeader(flags, ReplyType.blockStatus, handle, payloadBytes).copy(out, 0);
  out.writeUInt32BE(contextId >>> 0, structuredReplyHeaderBytes);
  descriptors.forEach((d, i) => {
    assert(d.lengthBytes >= 1 && d.lengthBytes <= 0xffffffff, 'descriptor length');
    out.writeUInt32BE(d.lengthBytes, structuredReplyHeaderBytes + 4 + 8 * i);
    out.writeUInt32BE(d.flags >>> 0, structuredReplyHeaderBytes + 8 + 8 * i);
  });
  return out;
}

export interface StructuredChunkHeader {
  magic: number;
  flags: number;
  type: number;
  handle: Buffer;
  lengthBytes: number;
}

export function decodeStructuredHeader(buf: Uint8Array): StructuredChunkHeader | undefined {
  if (buf.length < structuredReplyHeaderBytes) return undefined;
  const b = toBuffer(buf);
  return {
    magic: b.readUInt32BE(0),
    flags: b.readUInt16BE(4),
    type: b.readUInt16BE(6),
    handle: Buffer.from(b.subarray(8, 16)),
    lengthBytes: b.readUInt32BE(16),
  };
}

function toBuffer(buf: Uint8Array): Buffer {
  return Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
}
