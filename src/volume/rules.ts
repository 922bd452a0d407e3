/**
 * rules: the validation rules of a chard volume, one copy used by every layer — the admin
 * operations and the Block RPC (validate at the wire), the NBD backend (split requests) and the
 * state machine (refuse at apply, deterministically). A rule that is checked in two places is
 * the same function here, so a request the admin accepts is never refused by apply for a reason
 * the admin could have seen.
 */

import { ErrorCode, UsageError } from '../errors.js';

/** blockBytes: the unit of storage, checksumming and read-modify-write in the state machine. */
export const blockBytes = 4096;

/** volumeSizeAlignmentBytes: volume sizes are multiples of a sector (any NBD client can use them). */
export const volumeSizeAlignmentBytes = 512;

/** volumeBytesMax: the largest volume, 16 TiB: block numbers stay below 2^32. */
export const volumeBytesMax = 2 ** 44;

/** volumeNameBytesMax: names are 1..64 characters of [A-Za-z0-9._-]. */
export const volumeNameBytesMax = 64;

const volumeNamePattern = /^[A-Za-z0-9._-]{1,64}$/;

/** VolumeInfo: what a client sees of a volume. */
export interface VolumeInfo {
  name: string;
  sizeBytes: number;
}

/** isValidVolumeName: 1..64 characters of [A-Za-z0-9._-]. */
export function isValidVolumeName(name: string): boolean {
  return volumeNamePattern.test(name);
}

/** volumeNameProblem / volumeSizeProblem: why a name or size is refused, or undefined when valid. */
export function volumeNameProblem(name: string): string | undefined {
  return isValidVolumeName(name) ? undefined : `bad volume name ${JSON.stringify(name)}: 1..${volumeNameBytesMax} characters of [A-Za-z0-9._-]`;
}

export function volumeSizeProblem(sizeBytes: number): string | undefined {
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes <= 0 || sizeBytes > volumeBytesMax || sizeBytes % volumeSizeAlignmentBytes !== 0) {
    return `bad volume size ${sizeBytes}: a positive multiple of ${volumeSizeAlignmentBytes} bytes up to ${volumeBytesMax} (16 TiB)`;
  }
  return undefined;
}

/** checkVolumeName / checkVolumeSize: the rules above as UsageError(InvalidArgument). */
export function checkVolumeName(name: string): void {
  const problem = volumeNameProblem(name);
  if (problem !== undefined) throw new UsageError(ErrorCode.InvalidArgument, problem);
}

export function checkVolumeSize(sizeBytes: number): void {
  const problem = volumeSizeProblem(sizeBytes);
  if (problem !== undefined) throw new UsageError(ErrorCode.InvalidArgument, problem);
}

/** rangeProblem: the range check of a data request against a volume of `sizeBytes`. */
export function rangeProblem(offset: number, length: number, sizeBytes: number): { code: ErrorCode; message: string } | undefined {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    return { code: ErrorCode.InvalidArgument, message: `bad range offset ${offset} length ${length}` };
  }
  if (offset + length > sizeBytes) {
    return { code: ErrorCode.OutOfRange, message: `range [${offset}, ${offset + length}) beyond the end of the volume (${sizeBytes} bytes)` };
  }
  return undefined;
}

/**
 * requestLimits: how big a client request may be, and the pieces it is split into below.
 * Every server that serves a volume (a node's NBD server, the attach agent) advertises
 * `requestBytesMax` as its maximum block size and serves it, whatever layer is underneath.
 */
export const requestLimits = {
  /** requestBytesMax: the largest NBD READ / WRITE (nbdkit's maximum, 64 MiB). */
  requestBytesMax: 64 * 1024 * 1024,
  /** writePieceBytes: a write larger than this becomes several replicated write commands. */
  writePieceBytes: 1024 * 1024,
  /** readPieceBytes: a read larger than this is several Read RPCs / barrier-served pieces. */
  readPieceBytes: 4 * 1024 * 1024,
  /**
   * zeroPieceBytes: the range of one trim / write-zeroes command (zeroPieceBlocksMax blocks). A
   * larger one is split, so that one command's apply deletes at most 4,096 block rows on each
   * replica (a 4 GiB mkfs discard is 256 such commands, each a ~61-byte log entry). With 4 pieces
   * in flight per request (zeroPiecesInflightMax), the apply batch of a replica that keeps up then
   * deletes at most 16,384 rows: measured 50-100 ms on a loaded 2-core machine, against an election
   * timeout of 300 ms. At 64 MiB a batch of 4 pieces of a full device was 65,536 rows (4 times that:
   * an estimate, not measured).
   * (A replica that lags applies up to applyEntriesPerTurnMax entries per turn; see issue 11 h.)
   */
  zeroPieceBytes: 16 * 1024 * 1024,
} as const;

/** zeroPieceBlocksMax: the block rows one trim / write-zeroes command may delete (its apply's bound). */
export const zeroPieceBlocksMax = requestLimits.zeroPieceBytes / blockBytes;
/**
 * reapBlocksPerEntry: the rows of a deleted volume (or a shrunk volume's tail) one empty entry
 * reaps — as many as a zero piece deletes, so reaping costs an apply turn what a TRIM piece does.
 */
export const reapBlocksPerEntry = zeroPieceBlocksMax;

/** volumeBlockSizes: the block size constraints every volume export advertises (NBD_INFO_BLOCK_SIZE). */
export const volumeBlockSizes = { blockSizeMin: 1, blockSizePreferred: blockBytes, blockSizeMax: requestLimits.requestBytesMax } as const;
