/**
 * backend: the one interface between the NBD server (src/nbd/server.ts) and whatever stores blocks
 * (src/nbd/memory-backend.ts today, the replicated cluster later).
 *
 * Bounds contract: the server validates every request at the wire (offset + length within the
 * export size, length > 0, READ / WRITE length within min(`blockSizeMax`, the server's
 * `requestBytesMax`), flags known, export writable)
 * before calling a method here; implementations assert the same facts again and never see a
 * request the protocol forbids. TRIM / WRITE_ZEROES / CACHE / BLOCK_STATUS lengths are only bounded
 * by the export size (up to 4 GiB - 1 per request): a backend splits them as it needs.
 * Alignment to `blockSizeMin` is enforced only for clients that asked for the block size
 * constraints (NBD_INFO_BLOCK_SIZE); a backend must therefore accept any byte offset and length.
 *
 * Error contract: methods throw ChardError (src/errors.ts). The server maps them as follows:
 *  - UsageError(OutOfRange)         -> ENOSPC for write / trim / write-zeroes,
 *                                      EINVAL for read / cache / block-status
 *  - UsageError(InvalidArgument)    -> EINVAL
 *  - UsageError(NotFound)           -> EINVAL in transmission; from open(): NBD_REP_ERR_UNKNOWN
 *                                      (or a hard disconnect after NBD_OPT_EXPORT_NAME)
 *  - UsageError(ReadOnly)           -> EPERM
 *  - UsageError(TooLarge)           -> EOVERFLOW for a DF read, EINVAL otherwise
 *  - UsageError(FailedPrecondition) -> ENOTSUP (a FAST_ZERO write-zeroes that cannot be fast)
 *  - any other UsageError           -> EINVAL
 *  - InternalError (Corrupt, ...)   -> EIO (logged). If the error carries a numeric `offset` inside
 *                                      the request, a structured read reply reports it with
 *                                      NBD_REPLY_TYPE_ERROR_OFFSET.
 *  - RemoteError (NotLeader, Unavailable, Timeout, Closed, ...) means "this node cannot serve it
 *    right now": the server sends NO reply and closes that one connection, so that a client agent
 *    reconnects (possibly elsewhere) and retries. Other connections are unaffected.
 *  - anything else (a bug)          -> EIO, logged and counted (`backendBugs`).
 *
 * Durability contract: a write / trim / write-zeroes resolves only once it is as durable as the
 * export promises (for chard: committed on a quorum), so FUA costs nothing extra and `flush()` is a
 * barrier; effects are visible to every handle of the same export (CAN_MULTI_CONN).
 */

/** ExportInfo describes one export. `sizeBytes` may change after a resize; the server re-reads it per request. */
export interface ExportInfo {
  name: string;
  description: string;
  sizeBytes: number;
  readOnly: boolean;
  /** blockSizeMin: a power of two in [1, 65536]. */
  blockSizeMin: number;
  /** blockSizePreferred: a power of two >= max(blockSizeMin, 512). */
  blockSizePreferred: number;
  /** blockSizeMax: largest request the backend wants; the server clamps it to requestBytesMax. */
  blockSizeMax: number;
}

/** ReadChunk / Extent: the answers of READ and BLOCK_STATUS (the volume layer's range types). */
import type { Extent, ReadChunk } from '../volume/ranges.js';
export type { Extent, ReadChunk };

/** ExportHandle: one client's open export. */
export interface ExportHandle {
  /** info: current export description (size may change after a resize). */
  info(): ExportInfo;
  /** read: chunks cover [offset, offset+length) exactly, in order, without gaps or overlap. */
  read(offset: number, length: number): Promise<ReadChunk[]>;
  write(offset: number, data: Uint8Array, flags: { fua: boolean }): Promise<void>;
  /** trim: the range may afterwards read as anything; chard's backends make it read as zeros. */
  trim(offset: number, length: number, flags: { fua: boolean }): Promise<void>;
  /** writeZeroes: `noHole` forbids punching holes; `fastZero` fails with FailedPrecondition if it would be slow. */
  writeZeroes(offset: number, length: number, flags: { fua: boolean; noHole: boolean; fastZero: boolean }): Promise<void>;
  /** flush: resolves once every write that resolved before it was called is durable. */
  flush(): Promise<void>;
  /** cache: a prefetch hint; may do nothing. */
  cache(offset: number, length: number): Promise<void>;
  /** blockStatus: extents cover a non-empty prefix of [offset, offset+length), in order. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  /** close: releases the handle; no other method is called afterwards. */
  close(): Promise<void>;
}

/** BlockBackend: the set of exports a server offers. */
export interface BlockBackend {
  listExports(): Promise<ExportInfo[]>;
  /** defaultExportName: the export the empty name "" selects. */
  defaultExportName(): string;
  /** open: throws UsageError(NotFound) for an unknown export. */
  open(name: string): Promise<ExportHandle>;
}
