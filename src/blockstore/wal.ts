/**
 * wal: SegmentedLog, an append-only, checksummed, segmented raft log file whose writes never block
 * the event loop — the storage half of issue 12's pipelined Ready loop (etcd's `server/storage/wal`
 * and tikv/raft-engine are the models; etcd-io/raft's AsyncStorageWrites is the contract it serves).
 *
 * `append(records)` encodes the records, updates the in-memory index at once (so `entries()` and
 * `term()` see them, as etcd's MemoryStorage does on its storage thread) and returns a promise that
 * resolves when they are durable. Any number of appends may be in flight; one writer loop takes
 * everything queued, writes it with one `writev` (on this thread when small: inlineWriteBytesMax)
 * and one `fdatasync` through libuv's thread pool, and resolves every append of that batch (group
 * commit across event-loop turns). Raft must count an entry as persisted only when its append
 * resolved: `durableIndex()` says how far that is.
 *
 * On disk: files `wal-SEQUENCE.log` (16 decimal digits) in one directory, each at most
 * `segmentBytesMax` (a record never spans two files). A record is
 *   u32 payloadLength | u32 crc32(type byte + payload) | u8 type | payload
 * with three types: ENTRIES (u32 count, then per entry u48 index, u48 term, u8 type, u32 length,
 * data), HARD_STATE (u48 term, u32 vote, u48 commit) and COMPACT (u48 firstIndex, u48 term of
 * firstIndex - 1; if the log holds firstIndex - 1 with another term — a snapshot from the leader
 * that disagrees with this log — the entries after it are discarded too). An ENTRIES record whose first index is at or below the last index replaces the
 * suffix from there (raft's conflict rule), exactly as it does in memory.
 *
 * Recovery (`open`) reads every segment in order. A record that is cut short or fails its checksum
 * in the LAST segment is a torn write of a batch that was never acknowledged: the file is truncated
 * there (and synced). Anywhere else it is corruption, and open throws CorruptError naming the file
 * and offset — a log that lost acknowledged records must never be served.
 *
 * Errors: a failed write or fdatasync fails the log for good (every pending and later append
 * rejects with InternalError): after a failed fsync the kernel may have dropped the dirty pages,
 * so retrying it could report success for data that is gone.
 */

import { closeSync, constants, fdatasyncSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, writeSync, writevSync } from 'node:fs';
import { type FileHandle, open as openAsync, unlink as unlinkAsync } from 'node:fs/promises';
import path from 'node:path';
import { crc32 } from 'node:zlib';
import { assert } from '../assert.js';
import { CorruptError, ErrorCode, InternalError } from '../errors.js';
import { blockSlab } from '../slab.js';
import { type Entry, type EntryType, type HardState, emptyHardState, entryBytes, indexMax, nodeIdMax, termMax } from '../raft/types.js';

export interface WalLimits {
  /** segmentBytesMax: a new segment file is started before a record would pass this size. */
  segmentBytesMax: number;
  /** recordBytesMax: the largest record (one batch of entries), checked on append and on read. */
  recordBytesMax: number;
  /** batchBytesMax: the most bytes one writev + fdatasync carries. */
  batchBytesMax: number;
  /**
   * inlineWriteBytesMax: a batch up to this size is written (into the page cache, no fsync) on the
   * calling thread, and only its fdatasync goes to the thread pool; a larger batch's writev goes
   * there too. 0: every writev on the thread pool.
   */
  inlineWriteBytesMax: number;
  /** cacheBytesMax: entry data kept in memory (newest first); older data is read from the file. */
  cacheBytesMax: number;
}

export const defaultWalLimits: WalLimits = {
  segmentBytesMax: 64 * 1024 * 1024,
  recordBytesMax: 80 * 1024 * 1024,
  batchBytesMax: 16 * 1024 * 1024,
  inlineWriteBytesMax: 256 * 1024,
  cacheBytesMax: 8 * 1024 * 1024,
};

export const WalRecordType = { Entries: 1, HardState: 2, Compact: 3 } as const;

/** WalRecord: what one append carries (entries, a hard state, or a compaction point). */
export type WalRecord =
  | { type: typeof WalRecordType.Entries; entries: Entry[] }
  | { type: typeof WalRecordType.HardState; hardState: HardState }
  | { type: typeof WalRecordType.Compact; firstIndex: number; termBefore: number };

const headerBytes = 9;
/** entryOverheadBytes: what entryBytes (raft/types.ts) adds to an entry's data; entries() counts the same. */
const entryOverheadBytes = entryBytes({ index: 0, term: 0, type: 0, data: new Uint8Array(0) });
const entryHeaderBytes = 6 + 6 + 1 + 4;
const segmentPattern = /^wal-(\d{16})\.log$/;

/** IndexedEntry: where an entry lives; `data` while it is in the cache. */
interface IndexedEntry {
  index: number;
  term: number;
  type: EntryType;
  segment: number;
  dataOffset: number;
  length: number;
  data: Uint8Array | undefined;
  /** appendSequence: the append that wrote it (0 when recovered); non-decreasing along the log. */
  appendSequence: number;
}

interface Segment {
  sequence: number;
  file: string;
  /** bytes: the size the segment has once every queued write is done. */
  bytes: number;
  /** lastIndex: the highest entry index any record of this segment holds (0 if none). */
  lastIndex: number;
  readFd: number | undefined;
  /** onDisk: the file exists (recovered, or created and its directory synced). */
  onDisk: boolean;
  /** unsynced: bytes were written to it without an fdatasync (appends with `sync: false`). */
  unsynced: boolean;
}

interface Pending {
  segment: Segment;
  position: number;
  /** parts / bytes: the records of one append, as writev buffers (see EncodedRecord). */
  parts: Uint8Array[];
  bytes: number;
  appendSequence: number;
  /** sync: the append resolves only once fdatasynced (false: once written; see append()). */
  sync: boolean;
  resolve(): void;
  reject(error: Error): void;
}

/** syncFile: fdatasync of an existing file, on this thread. */
function syncFile(file: string): void {
  const fd = openSync(file, 'r+');
  try {
    fdatasyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** segmentName: the file name of segment `sequence` (a block row that points into the log names its segment by sequence). */
export function segmentName(sequence: number): string {
  return `wal-${String(sequence).padStart(16, '0')}.log`;
}

function checksum(type: number, payload: Uint8Array): number {
  return crc32(payload, crc32(Buffer.of(type))) >>> 0;
}

/**
 * EncodedRecord: one record as the buffers a writev takes, in file order: the record header, then
 * the payload's pieces. Entry data is referenced, never copied (a 1 MiB write was copied twice
 * more here, and each copy was a fresh 1 MiB ArrayBuffer: V8 ran a mark-compact every few MiB
 * written, for "external memory pressure").
 */
export interface EncodedRecord {
  parts: Uint8Array[];
  bytes: number;
}

/** encodeRecordParts: see EncodedRecord; the checksum runs over the pieces in order. */
export function encodeRecordParts(record: WalRecord): EncodedRecord {
  if (record.type === WalRecordType.Entries) {
    const entries = record.entries;
    // One small buffer holds every header: the record's, the entry count, each entry's.
    const head = Buffer.allocUnsafe(headerBytes + 4 + entryHeaderBytes * entries.length);
    head.writeUInt32LE(entries.length, headerBytes);
    const parts: Uint8Array[] = [head.subarray(0, headerBytes + 4)];
    let payloadBytes = 4;
    let crc = crc32(head.subarray(headerBytes, headerBytes + 4), crc32(Buffer.of(record.type)));
    let at = headerBytes + 4;
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (i > 0) assert(e.index === entries[i - 1]!.index + 1, 'wal: entries of a record must be contiguous');
      assert(e.index <= indexMax && e.term <= termMax, `entry ${e.index}/${e.term} fits the record (validated at the wire)`);
      head.writeUIntLE(e.index, at, 6);
      head.writeUIntLE(e.term, at + 6, 6);
      head.writeUInt8(e.type, at + 12);
      head.writeUInt32LE(e.data.length, at + 13);
      const entryHead = head.subarray(at, at + entryHeaderBytes);
      at += entryHeaderBytes;
      parts.push(entryHead);
      crc = crc32(entryHead, crc);
      if (e.data.length > 0) {
        parts.push(e.data);
        crc = crc32(e.data, crc);
      }
      payloadBytes += entryHeaderBytes + e.data.length;
    }
    head.writeUInt32LE(payloadBytes, 0);
    head.writeUInt32LE(crc >>> 0, 4);
    head.writeUInt8(record.type, 8);
    return { parts, bytes: headerBytes + payloadBytes };
  }
  const out = Buffer.allocUnsafe(headerBytes + (record.type === WalRecordType.HardState ? 16 : 12));
  const payload = out.subarray(headerBytes);
  if (record.type === WalRecordType.HardState) {
    const hs = record.hardState;
    assert(hs.term <= termMax && hs.commit <= indexMax && hs.vote <= nodeIdMax, `hard state ${hs.term}/${hs.vote}/${hs.commit} fits the record (validated at the wire)`);
    payload.writeUIntLE(hs.term, 0, 6);
    payload.writeUInt32LE(hs.vote, 6);
    payload.writeUIntLE(hs.commit, 10, 6);
  } else {
    assert(record.firstIndex <= indexMax && record.termBefore <= termMax, `compaction point ${record.firstIndex}/${record.termBefore} fits the record`);
    payload.writeUIntLE(record.firstIndex, 0, 6);
    payload.writeUIntLE(record.termBefore, 6, 6);
  }
  out.writeUInt32LE(payload.length, 0);
  out.writeUInt32LE(checksum(record.type, payload), 4);
  out.writeUInt8(record.type, 8);
  return { parts: [out], bytes: out.length };
}

/** encodeRecord: one record as one buffer (tests and tools that craft a log file). */
export function encodeRecord(record: WalRecord): Buffer {
  const { parts, bytes } = encodeRecordParts(record);
  return Buffer.concat(parts, bytes);
}

/**
 * writeLogSync: writes a new log of `records` into the empty directory `dir` on this thread (the
 * block store's migration of a log kept in SQLite): in order, a new segment before one would pass
 * segmentBytesMax, each segment fdatasynced, then the directory. SegmentedLog.open reads it back.
 */
export function writeLogSync(dir: string, records: WalRecord[], limits: Partial<WalLimits> = {}): void {
  const { segmentBytesMax, recordBytesMax } = { ...defaultWalLimits, ...limits };
  mkdirSync(dir, { recursive: true });
  let sequence = 0;
  let fd: number | undefined;
  let bytes = 0;
  const finish = (): void => {
    if (fd === undefined) return;
    fdatasyncSync(fd);
    closeSync(fd);
    fd = undefined;
  };
  try {
    for (const record of records) {
      const buffer = encodeRecord(record);
      assert(buffer.length <= recordBytesMax, `wal: record of ${buffer.length} bytes exceeds recordBytesMax ${recordBytesMax}`);
      if (fd === undefined || (bytes > 0 && bytes + buffer.length > segmentBytesMax)) {
        finish();
        sequence += 1;
        fd = openSync(path.join(dir, segmentName(sequence)), 'wx');
        bytes = 0;
      }
      let at = 0;
      while (at < buffer.length) at += writeSync(fd, buffer, at, buffer.length - at, bytes + at);
      bytes += buffer.length;
    }
    finish();
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
  const dirFd = openSync(dir, 'r');
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}

/** SegmentedLog: see the file comment. Open with SegmentedLog.open(dir). */
export class SegmentedLog {
  readonly dir: string;
  readonly limits: WalLimits;
  private readonly segments: Segment[] = [];
  private log: IndexedEntry[] = [];
  private first = 1;
  private termBeforeFirst = 0;
  private hard: HardState = { ...emptyHardState };
  private appendSequence = 0;
  /** compactPending: during recovery, the log began after `first` (deleted segments) and awaits its COMPACT record. */
  private compactPending: number | undefined;
  private durableSequence = 0;
  private cacheBytes = 0;
  /** cacheFrom: position in `log` of the oldest entry whose data is still cached. */
  private cacheFrom = 0;
  private queue: Pending[] = [];
  /** inFlight: the batch the writer loop is writing now (closeSync writes it again, synchronously). */
  private inFlight: Pending[] = [];
  /** closed: closeSync() ran; the writer loop stops and the log takes no more appends. */
  private closed = false;
  /** unlinking: the chain of compacted segments' unlinks (oldest first, across compactions). */
  private unlinking: Promise<void> = Promise.resolve();
  private unlinkFailed = false;
  /** unlinkFile: how a compacted segment's file is removed (tests observe the order through it). */
  static unlinkFile: (file: string) => Promise<void> = (file) => unlinkAsync(file);
  /** writing: the latest writer loop (close() waits for it); looping: one is running now. */
  private writing: Promise<void> | undefined;
  private looping = false;
  private failure: Error | undefined;
  private handle: { segment: Segment; fh: FileHandle } | undefined;
  /**
   * stats: appends and bytes written, the fdatasyncs that made them durable (`batches`; appends
   * per sync = group commit), the batches written without one (`unsyncedBatches`) and the
   * fdatasyncs of such bytes when the log moved on to a new segment (`rotationSyncs`), and the
   * batches written on the calling thread (`inlineWrites`, see inlineWriteBytesMax).
   */
  readonly stats = { appends: 0, batches: 0, bytes: 0, unsyncedBatches: 0, rotationSyncs: 0, inlineWrites: 0 };

  private constructor(dir: string, limits: WalLimits) {
    this.dir = dir;
    this.limits = limits;
  }

  /** open: recover the log in `dir` (created if missing); see the file comment for torn tails. */
  static open(dir: string, limits: Partial<WalLimits> = {}): SegmentedLog {
    mkdirSync(dir, { recursive: true });
    const wal = new SegmentedLog(dir, { ...defaultWalLimits, ...limits });
    const sequences = readdirSync(dir)
      .map((name) => segmentPattern.exec(name)?.[1])
      .filter((s): s is string => s !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
    for (let i = 0; i < sequences.length; i++) wal.recoverSegment(sequences[i]!, i === sequences.length - 1);
    // The last process may have left records written without an fdatasync (append's `sync:
    // false`) at the end of the last segment: make them durable before anything lands after them.
    const last = wal.segments[wal.segments.length - 1];
    if (last !== undefined) syncFile(last.file);
    if (wal.compactPending !== undefined) throw new CorruptError(`wal ${dir}: the log starts at ${wal.compactPending} but no compaction record covers the entries before it`);
    return wal;
  }

  private recoverSegment(sequence: number, last: boolean): void {
    const file = path.join(this.dir, segmentName(sequence));
    let bytes: Buffer;
    try {
      bytes = readFileSync(file);
    } catch (error) {
      // Listed, then gone: an unlink of a compacted segment by an earlier instance in this process
      // was still running. Those go oldest first, so only files before every one read can vanish.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' && this.segments.length === 0 && !last) return;
      throw error;
    }
    const segment: Segment = { sequence, file, bytes: 0, lastIndex: 0, readFd: undefined, onDisk: true, unsynced: false };
    this.segments.push(segment);
    let at = 0;
    while (at < bytes.length) {
      const bad = (why: string): never => {
        throw new CorruptError(`wal ${file}: ${why} at offset ${at}`);
      };
      const torn = at + headerBytes > bytes.length || at + headerBytes + bytes.readUInt32LE(at) > bytes.length;
      const length = torn ? 0 : bytes.readUInt32LE(at);
      const type = torn ? 0 : bytes.readUInt8(at + 8);
      const payload = bytes.subarray(at + headerBytes, at + headerBytes + length);
      const valid = !torn && length <= this.limits.recordBytesMax && bytes.readUInt32LE(at + 4) === checksum(type, payload);
      if (!valid) {
        if (!last) bad(torn ? 'record cut short' : 'checksum mismatch');
        // A torn tail: the batch was never acknowledged (its fdatasync did not return). Cut it off.
        const fd = openSync(file, 'r+');
        try {
          ftruncateSync(fd, at);
          fsyncSync(fd);
        } finally {
          closeSync(fd);
        }
        break;
      }
      this.replay(type, payload, segment, at + headerBytes, bad);
      at += headerBytes + length;
    }
    segment.bytes = at;
  }

  private replay(type: number, payload: Buffer, segment: Segment, payloadOffset: number, bad: (why: string) => never): void {
    if (type === WalRecordType.HardState) {
      if (payload.length !== 16) bad('hard state record of wrong size');
      this.hard = { term: payload.readUIntLE(0, 6), vote: payload.readUInt32LE(6), commit: payload.readUIntLE(10, 6) };
    } else if (type === WalRecordType.Compact) {
      if (payload.length !== 12) bad('compact record of wrong size');
      const firstIndex = payload.readUIntLE(0, 6);
      const termBefore = payload.readUIntLE(6, 6);
      if (this.compactPending !== undefined) {
        // A point below where the kept segments begin: an older compaction whose record was
        // appended after the entries it sits among (the block store relocates before it compacts,
        // while the log grows); a later record deleted the segments before. It moves nothing. The
        // record that allowed the deletion comes later, or open() refuses. (Before, this refused at
        // once; found by test/blockstore/pointer-crash.)
        if (firstIndex < this.compactPending) return;
        this.compactPending = undefined;
        if (firstIndex === this.first) {
          // The compaction point is exactly where the kept segments begin: the entry before it went
          // with the deleted segments, so its term is this record's (not a conflict to discard the
          // log for). Before, this refused to open (found by test/blockstore/pointer-crash; a
          // compaction point on a segment's first entry: 1 in 64 with 1 MiB writes).
          this.termBeforeFirst = termBefore;
          return;
        }
      }
      this.dropBefore(firstIndex, termBefore);
    } else if (type === WalRecordType.Entries) {
      if (payload.length < 4) bad('entries record of wrong size');
      const count = payload.readUInt32LE(0);
      let at = 4;
      const entries: IndexedEntry[] = [];
      for (let i = 0; i < count; i++) {
        if (at + entryHeaderBytes > payload.length) bad('entry header beyond its record');
        const length = payload.readUInt32LE(at + 13);
        if (at + entryHeaderBytes + length > payload.length) bad('entry data beyond its record');
        const entry: IndexedEntry = {
          index: payload.readUIntLE(at, 6),
          term: payload.readUIntLE(at + 6, 6),
          type: payload.readUInt8(at + 12) as EntryType,
          segment: segment.sequence,
          dataOffset: payloadOffset + at + entryHeaderBytes,
          length,
          data: undefined,
          appendSequence: 0,
        };
        if (i > 0 && entry.index !== entries[i - 1]!.index + 1) bad('entries of a record are not contiguous');
        entries.push(entry);
        at += entryHeaderBytes + length;
      }
      if (entries.length > 0) {
        if (this.log.length === 0 && this.compactPending === undefined && entries[0]!.index > this.first) {
          // The oldest segments were deleted by a compaction: the log starts here, and the COMPACT
          // record that allowed the deletion comes later (it is appended before any deletion).
          this.compactPending = entries[0]!.index;
          this.first = entries[0]!.index;
        }
        if (entries[0]!.index > this.lastIndex() + 1) bad(`entries start at ${entries[0]!.index} after last index ${this.lastIndex()}`);
        this.place(entries);
        segment.lastIndex = Math.max(segment.lastIndex, entries[entries.length - 1]!.index);
      }
    } else {
      bad(`unknown record type ${type}`);
    }
  }

  /** place: put contiguous entries into the index, replacing any suffix they overlap. */
  private place(entries: IndexedEntry[]): void {
    const from = entries[0]!.index;
    if (from < this.first) {
      // Entries at or below the compaction point carry nothing new (they are in the snapshot).
      entries = entries.filter((e) => e.index >= this.first);
      if (entries.length === 0) return;
    }
    const keep = entries[0]!.index - this.first;
    for (let i = keep; i < this.log.length; i++) this.uncache(this.log[i]!);
    this.log.length = Math.min(this.log.length, keep);
    this.cacheFrom = Math.min(this.cacheFrom, this.log.length);
    for (const e of entries) this.log.push(e);
  }

  private uncache(e: IndexedEntry): void {
    if (e.data !== undefined) {
      this.cacheBytes -= e.data.length;
      e.data = undefined;
    }
  }

  /**
   * dropBefore: the log now starts at `firstIndex`, entry `firstIndex - 1` having `termBefore`. If
   * the log holds `firstIndex - 1` with another term (a snapshot from the leader that disagrees
   * with this log), everything after it goes too: the log is empty at the snapshot's position.
   */
  private dropBefore(firstIndex: number, termBefore: number): void {
    if (firstIndex < this.first) return;
    const at = firstIndex - 1;
    if (at >= this.first - 1 && at <= this.lastIndex() && this.term(at) !== termBefore) {
      for (let i = Math.max(0, at + 1 - this.first); i < this.log.length; i++) this.uncache(this.log[i]!);
      this.log.length = Math.max(0, Math.min(this.log.length, at + 1 - this.first));
      this.cacheFrom = Math.min(this.cacheFrom, this.log.length);
    }
    if (firstIndex === this.first) {
      this.termBeforeFirst = termBefore;
      return;
    }
    const drop = Math.min(firstIndex - this.first, this.log.length);
    for (let i = 0; i < drop; i++) this.uncache(this.log[i]!);
    this.log = this.log.slice(drop);
    this.cacheFrom = Math.max(0, this.cacheFrom - drop);
    this.first = firstIndex;
    this.termBeforeFirst = termBefore;
  }

  // ---------------------------------------------------------------- reads (synchronous, for raft)

  firstIndex(): number {
    return this.first;
  }

  /** lastIndex: the last entry appended (durable or still in flight). */
  lastIndex(): number {
    return this.first + this.log.length - 1;
  }

  /**
   * durableIndex: every entry up to here is on disk (its append resolved). Append sequences are
   * non-decreasing along the log (a replaced suffix is always newer than the prefix it follows), so
   * this is the last entry whose append is at or below the last durable one: a binary search.
   */
  durableIndex(): number {
    let lo = 0;
    let hi = this.log.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.log[mid]!.appendSequence <= this.durableSequence) lo = mid + 1;
      else hi = mid;
    }
    return this.first + lo - 1;
  }

  /** hardState: the latest hard state appended (durable once its append resolved). */
  hardState(): HardState {
    return { ...this.hard };
  }

  term(index: number): number {
    if (index === this.first - 1) return this.termBeforeFirst;
    assert(index >= this.first && index <= this.lastIndex(), `wal: term of ${index} outside [${this.first - 1}, ${this.lastIndex()}]`);
    return this.log[index - this.first]!.term;
  }

  /**
   * bytesFrom: the bytes of segment file the log keeps from entry `index` on (from its data to the
   * end of the last segment; 0 beyond the last entry): what compacting just before `index` keeps.
   */
  bytesFrom(index: number): number {
    if (index > this.lastIndex()) return 0;
    const e = this.log[Math.max(index, this.first) - this.first]!;
    let bytes = -e.dataOffset;
    for (const segment of this.segments) if (segment.sequence >= e.segment) bytes += segment.bytes;
    return Math.max(0, bytes);
  }

  /** entries: [lo, hi), at least one entry if lo < hi, then at most `maxBytes` in total (entryBytes: data + 24, as LogStorage counts). */
  entries(lo: number, hi: number, maxBytes: number): Entry[] {
    assert(lo >= this.first && hi <= this.lastIndex() + 1 && lo <= hi, `wal: entries [${lo}, ${hi}) outside [${this.first}, ${this.lastIndex() + 1})`);
    const out: Entry[] = [];
    let bytes = 0;
    for (let index = lo; index < hi; index++) {
      const e = this.log[index - this.first]!;
      if (out.length > 0 && bytes + e.length + entryOverheadBytes > maxBytes) break;
      bytes += e.length + entryOverheadBytes;
      out.push({ index: e.index, term: e.term, type: e.type, data: e.data ?? this.readData(e) });
    }
    return out;
  }

  /**
   * locate: where the data of entry `index` lies on disk — its segment's sequence and the file
   * offset of its first byte — if the entry is in the log and durable (its append resolved);
   * otherwise undefined. BlockStateMachine keeps a block that is a whole piece of a durable write
   * as a pointer to these bytes instead of a copy (docs/blockstore.md, "Blocks in the log").
   */
  locate(index: number): { segment: number; dataOffset: number; length: number } | undefined {
    if (index < this.first || index > this.durableIndex()) return undefined;
    const e = this.log[index - this.first]!;
    return { segment: e.segment, dataOffset: e.dataOffset, length: e.length };
  }

  /**
   * readAt: `length` bytes at `offset` of segment `sequence` (the bytes a block row points at).
   * A segment that is no longer part of the log, or bytes cut short, are CorruptError: a pointer
   * is only ever made into a durable record and moved out before its segment is deleted.
   */
  readAt(sequence: number, offset: number, length: number): Buffer {
    const segment = this.segments.find((s) => s.sequence === sequence);
    if (segment === undefined) throw new CorruptError(`wal: segment ${sequence} is not part of the log (a block points into it)`);
    if (offset < 0 || offset + length > segment.bytes) throw new CorruptError(`wal ${segment.file}: ${length} bytes at ${offset} lie beyond its ${segment.bytes} bytes`);
    segment.readFd ??= openSync(segment.file, 'r');
    const data = blockSlab.take(length); // a block read's bytes live until its reply is written
    const read = readSync(segment.readFd, data, 0, length, offset);
    if (read !== length) throw new CorruptError(`wal ${segment.file}: ${length} bytes at ${offset} cut short`);
    return data;
  }

  private readData(e: IndexedEntry): Uint8Array {
    return this.readAt(e.segment, e.dataOffset, e.length);
  }

  // ---------------------------------------------------------------- writes (asynchronous)

  /**
   * append: add `records` to the log; resolves once they are durable. The in-memory view changes
   * at once. Records of one call are written together and in call order with every other append.
   *
   * `sync: false` (only for records whose loss is harmless: a hard state that only advances the
   * commit index, etcd's mustSync rule) resolves once the bytes are written, without an fdatasync
   * of their own: the next synced batch to the same file makes them durable, and a segment is
   * fdatasynced before the log moves on to the next one, so a record lost in a power cut can only
   * be the torn tail of the LAST segment, which recovery cuts off. Such an append must carry no
   * entries (durableIndex() would count them).
   */
  append(records: WalRecord[], options: { sync?: boolean } = {}): Promise<void> {
    const sync = options.sync !== false;
    assert(sync || records.every((r) => r.type === WalRecordType.HardState), 'wal: only a hard state may be appended without an fdatasync');
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new InternalError(ErrorCode.Internal, `wal ${this.dir}: append after close`));
    const encoded = records.map(encodeRecordParts);
    const size = encoded.reduce((n, r) => n + r.bytes, 0);
    if (size > this.limits.recordBytesMax) return Promise.reject(new InternalError(ErrorCode.Internal, `wal: append of ${size} bytes exceeds recordBytesMax ${this.limits.recordBytesMax}`));
    let segment = this.segments[this.segments.length - 1];
    if (segment === undefined || (segment.bytes > 0 && segment.bytes + size > this.limits.segmentBytesMax)) {
      const sequence = (segment?.sequence ?? 0) + 1;
      segment = { sequence, file: path.join(this.dir, segmentName(sequence)), bytes: 0, lastIndex: 0, readFd: undefined, onDisk: false, unsynced: false };
      this.segments.push(segment);
    }
    const position = segment.bytes;
    segment.bytes += size;
    const appendSequence = ++this.appendSequence;
    // Update the in-memory view in record order; entry data stays cached (the very arrays the parts reference).
    let offset = position;
    for (let r = 0; r < records.length; r++) {
      const record = records[r]!;
      if (record.type === WalRecordType.HardState) this.hard = { ...record.hardState };
      else if (record.type === WalRecordType.Compact) this.dropBefore(record.firstIndex, record.termBefore);
      else if (record.entries.length > 0) {
        let at = offset + headerBytes + 4;
        const indexed = record.entries.map((e) => {
          const ie: IndexedEntry = { index: e.index, term: e.term, type: e.type, segment: segment!.sequence, dataOffset: at + entryHeaderBytes, length: e.data.length, data: e.data, appendSequence };
          at += entryHeaderBytes + e.data.length;
          return ie;
        });
        assert(indexed[0]!.index <= this.lastIndex() + 1, `wal: append of ${indexed[0]!.index} leaves a gap after ${this.lastIndex()}`);
        this.place(indexed);
        for (const e of indexed) this.cacheBytes += e.length;
        segment.lastIndex = Math.max(segment.lastIndex, indexed[indexed.length - 1]!.index);
      }
      offset += encoded[r]!.bytes;
    }
    this.trimCache();
    const parts = encoded.length === 1 ? encoded[0]!.parts : encoded.flatMap((r) => r.parts);
    const done = new Promise<void>((resolve, reject) => this.queue.push({ segment: segment!, position, parts, bytes: size, appendSequence, sync, resolve, reject }));
    // `looping` is cleared synchronously as the loop returns: an append made by code that its last
    // resolved batch woke (a microtask before `writing` settles) must start a new loop, not wait
    // for one that has already left.
    if (!this.looping) {
      this.looping = true;
      this.writing = this.writeLoop();
    }
    return done;
  }

  /**
   * trimCache: drops the oldest cached entry data beyond cacheBytesMax — only of durable entries
   * (data still in flight is not in the file yet, so it cannot be read back): the cache may pass
   * the limit by what is in flight, and is trimmed again when a batch becomes durable.
   */
  private trimCache(): void {
    while (
      this.cacheBytes > this.limits.cacheBytesMax &&
      this.cacheFrom < this.log.length &&
      this.log[this.cacheFrom]!.appendSequence <= this.durableSequence
    ) {
      this.uncache(this.log[this.cacheFrom++]!);
    }
  }

  private async writeLoop(): Promise<void> {
    try {
      await this.writeQueued();
    } finally {
      this.looping = false; // already false on a normal exit; here for an unexpected throw
    }
    if (this.closed) await this.releaseHandle();
  }

  /** writeQueued: clears `looping` in the same synchronous step in which it finds nothing left to write. */
  private async writeQueued(): Promise<void> {
    for (;;) {
      if (this.queue.length === 0 || this.failure !== undefined || this.closed) {
        this.looping = false;
        return;
      }
      // One batch: contiguous writes to one segment, up to batchBytesMax.
      const segment = this.queue[0]!.segment;
      const batch: Pending[] = [];
      let bytes = 0;
      while (this.queue.length > 0 && this.queue[0]!.segment === segment && (batch.length === 0 || bytes + this.queue[0]!.bytes <= this.limits.batchBytesMax)) {
        const p = this.queue.shift()!;
        batch.push(p);
        bytes += p.bytes;
      }
      this.inFlight = batch;
      try {
        const fh = await this.fileFor(segment);
        if (this.closed) continue; // closeSync wrote and synced this batch itself
        // libuv writes every buffer (in IOV_MAX slices, resuming after a short write), on this
        // thread for a small batch: a buffered write costs microseconds, the thread pool's round
        // trip 0.1-0.25 ms of a 4 KiB write's latency on a loaded node (docs/wal.md). The
        // fdatasync, which waits for the disk, always runs on the thread pool.
        const parts = batch.length === 1 ? batch[0]!.parts : batch.flatMap((p) => p.parts);
        let bytesWritten: number;
        if (bytes <= this.limits.inlineWriteBytesMax) {
          bytesWritten = writevSync(fh.fd, parts, batch[0]!.position);
          this.stats.inlineWrites++;
        } else bytesWritten = (await fh.writev(parts, batch[0]!.position)).bytesWritten;
        if (bytesWritten !== bytes) throw new Error(`short write: ${bytesWritten} of ${bytes} bytes`);
        if (this.closed) continue;
        if (batch.some((p) => p.sync)) {
          await fh.datasync();
          segment.unsynced = false;
          this.stats.batches++;
        } else {
          // Only records whose loss is harmless (append's `sync: false`): made durable by the
          // next fdatasync of this file, or before the log moves to the next segment (fileFor).
          segment.unsynced = true;
          this.stats.unsyncedBatches++;
        }
        this.stats.appends += batch.length;
        this.stats.bytes += bytes;
      } catch (error) {
        if (this.closed) continue; // closeSync settled this batch (durable, or rejected with its own error)
        this.failure = new InternalError(ErrorCode.Internal, `wal: write to ${segment.file} failed; the log takes no more appends until restart: ${String(error)}`, { cause: error });
        for (const p of [...batch, ...this.queue]) p.reject(this.failure);
        this.queue = [];
        continue;
      }
      this.inFlight = [];
      this.durableSequence = batch[batch.length - 1]!.appendSequence;
      this.trimCache();
      for (const p of batch) p.resolve();
    }
  }

  private async releaseHandle(): Promise<void> {
    const handle = this.handle;
    this.handle = undefined;
    if (handle !== undefined) await handle.fh.close().catch(() => undefined);
  }

  private async fileFor(segment: Segment): Promise<FileHandle> {
    if (this.handle?.segment === segment) return this.handle.fh;
    if (this.handle !== undefined) {
      // A torn record anywhere but in the last segment is corruption (recovery refuses it): bytes
      // written without an fdatasync must be durable before anything is written after them.
      if (this.handle.segment.unsynced) {
        await this.handle.fh.datasync();
        this.handle.segment.unsynced = false;
        this.stats.rotationSyncs++;
      }
      await this.handle.fh.close();
    }
    this.handle = undefined;
    const fh = await openAsync(segment.file, segment.onDisk ? 'r+' : 'wx');
    if (!segment.onDisk) {
      // A new file is durable only once its directory entry is.
      const dir = await openAsync(this.dir, 'r');
      try {
        await dir.sync();
      } finally {
        await dir.close();
      }
      segment.onDisk = true;
    }
    this.handle = { segment, fh };
    return fh;
  }

  /**
   * compact: entries below `firstIndex` are no longer needed (a durable snapshot holds them). The
   * compaction point and the current hard state are appended first (so no older segment is needed
   * for either), then every segment whose entries all lie below `firstIndex` is deleted. For a
   * snapshot received from the leader, `firstIndex` may lie beyond the log (snapshot index + 1):
   * pass `snapshotTerm`, and the whole log is replaced by the snapshot's position.
   */
  async compact(firstIndex: number, snapshotTerm?: number): Promise<void> {
    if (firstIndex <= this.first) return;
    // Beyond the log only for an installed snapshot, whose term the caller knows. Entries still in
    // flight may be compacted: their records precede the COMPACT record in the file, so it is never
    // durable without them, and segments are deleted only once it is durable.
    assert(snapshotTerm !== undefined || firstIndex <= this.lastIndex() + 1, `wal: compact to ${firstIndex} beyond last index ${this.lastIndex()}`);
    const termBefore = snapshotTerm ?? this.term(firstIndex - 1);
    const appended = this.append([
      { type: WalRecordType.HardState, hardState: this.hard },
      { type: WalRecordType.Compact, firstIndex, termBefore },
    ]);
    // The segment the COMPACT record went to (append picks it at once). Only segments before it
    // may go: appends while it became durable may have moved the log on to newer segments, and a
    // segment holding nothing but older entries and this record would otherwise go with it — the
    // record that says why the log starts where it does (found by test/blockstore/pointer-crash).
    const holding = this.segments[this.segments.length - 1]!;
    await appended;
    const gone = this.segments.filter((segment) => segment.sequence < holding.sequence && segment.lastIndex < firstIndex);
    for (const segment of gone) {
      if (segment.readFd !== undefined) closeSync(segment.readFd);
      this.segments.splice(this.segments.indexOf(segment), 1);
    }
    // On the thread pool, oldest first, one at a time, across every compaction of this log (one
    // chain: a later compaction's segments wait for an earlier one's): freeing a 64 MiB segment's
    // extents took ~31 ms here, on the event loop for each segment (a profile of the bench found
    // it). In order, so a crash part-way leaves a contiguous run of segments (ext4 journals the
    // unlinks in order), which open() reads and the durable COMPACT record drops, as it always
    // could. After a failed unlink none follows (a newer file gone with an older one left would be
    // a gap open() refuses); what is left goes at the first compaction after the next open.
    const done = this.unlinking.then(async () => {
      for (const segment of gone) {
        if (this.unlinkFailed) return;
        try {
          await SegmentedLog.unlinkFile(segment.file);
        } catch {
          this.unlinkFailed = true;
        }
      }
    });
    this.unlinking = done;
    await done;
  }

  /** segmentFiles: the files the log spans now (for tests and status). */
  segmentFiles(): string[] {
    return this.segments.map((s) => s.file);
  }

  /** close: wait for queued appends, then release every file (fdatasynced). */
  async close(): Promise<void> {
    await this.writing;
    await this.unlinking;
    if (this.handle !== undefined) {
      if (this.handle.segment.unsynced && this.failure === undefined) await this.handle.fh.datasync();
      this.handle.segment.unsynced = false;
      await this.handle.fh.close();
    }
    this.handle = undefined;
    this.closed = true;
    this.closeReadFds();
  }

  /**
   * closeSync: close() for a caller that cannot wait (BlockStore.close). Every append still queued
   * or in flight is written again on this thread — the same bytes at the same positions the writer
   * loop uses, so a write the thread pool is still doing lands identical bytes — then each touched
   * segment is fdatasynced (and the directory, for a new segment), and those appends resolve. The
   * writer loop stops at its next step and closes its file in the background. Afterwards the log
   * takes no appends. If the synchronous write fails, the appends reject as for a failed fdatasync.
   */
  closeSync(): void {
    if (this.closed) return;
    this.closed = true;
    const pending = [...this.inFlight, ...this.queue];
    this.inFlight = [];
    this.queue = [];
    if (this.failure === undefined && pending.length > 0) {
      const fds = new Map<Segment, number>();
      let newFile = false;
      try {
        for (const p of pending) {
          let fd = fds.get(p.segment);
          if (fd === undefined) {
            fd = openSync(p.segment.file, constants.O_RDWR | constants.O_CREAT, 0o644);
            fds.set(p.segment, fd);
            if (!p.segment.onDisk) newFile = true;
          }
          let position = p.position;
          for (const part of p.parts) {
            let at = 0;
            while (at < part.length) at += writeSync(fd, part, at, part.length - at, position + at);
            position += part.length;
          }
        }
        for (const fd of fds.values()) fdatasyncSync(fd);
        for (const segment of fds.keys()) segment.unsynced = false;
        if (newFile) {
          const dirFd = openSync(this.dir, 'r');
          try {
            fsyncSync(dirFd);
          } finally {
            closeSync(dirFd);
          }
        }
        for (const segment of fds.keys()) segment.onDisk = true;
        this.durableSequence = pending[pending.length - 1]!.appendSequence;
        this.trimCache();
        this.stats.batches++;
        this.stats.appends += pending.length;
        this.stats.bytes += pending.reduce((n, p) => n + p.bytes, 0);
        for (const p of pending) p.resolve();
      } catch (error) {
        this.failure = new InternalError(ErrorCode.Internal, `wal: synchronous flush on close of ${this.dir} failed: ${String(error)}`, { cause: error });
        for (const p of pending) p.reject(this.failure);
      } finally {
        for (const fd of fds.values()) closeSync(fd);
      }
    } else if (this.failure !== undefined) {
      for (const p of pending) p.reject(this.failure);
    }
    // Bytes an earlier batch wrote without an fdatasync (append's `sync: false`).
    for (const segment of this.segments) {
      if (!segment.unsynced || this.failure !== undefined) continue;
      try {
        syncFile(segment.file);
        segment.unsynced = false;
      } catch {
        // Harmless records only; a lost one is a torn tail that the next open cuts off.
      }
    }
    if (!this.looping) void this.releaseHandle();
    this.closeReadFds();
  }

  /** pendingAppends: appends not yet durable (queued or being written). */
  pendingAppends(): number {
    return this.inFlight.length + this.queue.length;
  }

  private closeReadFds(): void {
    for (const s of this.segments) {
      if (s.readFd !== undefined) closeSync(s.readFd);
      s.readFd = undefined;
    }
  }
}
