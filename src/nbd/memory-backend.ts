/**
 * memory-backend: a sparse in-memory BlockBackend. Blocks of `blockBytes` (4 KiB) live in a Map;
 * an absent block is a hole and reads as zeros; TRIM deletes whole blocks (and zeroes partial ones);
 * WRITE_ZEROES without NO_HOLE punches holes the same way, with NO_HOLE it allocates zeroed blocks.
 *
 * Used by tests and as the baseline the replicated backend is measured against. Every handle of an
 * export shares the same blocks, so effects are visible across connections at once (multi-conn safe).
 * Reads copy block contents, so a reply being written never changes under a later write.
 */

import { assert } from '../assert.js';
import { ErrorCode, UsageError } from '../errors.js';
import type { BlockBackend, ExportHandle, ExportInfo, Extent, ReadChunk } from './backend.js';
import { ChunkRuns, ExtentRuns, blockPieces } from '../volume/ranges.js';

export interface MemoryExportOptions {
  name: string;
  sizeBytes: number;
  description?: string;
  readOnly?: boolean;
  /** blockSizeMaxBytes: advertised maximum request size (default 32 MiB). */
  blockSizeMaxBytes?: number;
}

export interface MemoryBackendOptions {
  exports: MemoryExportOptions[];
  /** defaultExport: the export "" selects (default: the first). */
  defaultExport?: string;
  /** blockBytes: allocation granularity, a power of two (default 4096). */
  blockBytes?: number;
  /** exportSizeBytesMax: refuse exports larger than this (default 2^50) so offsets stay exact. */
  exportSizeBytesMax?: number;
}

/** MemoryExport: the shared state of one export. Public for tests (inspect / resize). */
export class MemoryExport {
  readonly name: string;
  readonly description: string;
  readonly readOnly: boolean;
  readonly blockBytes: number;
  readonly blockSizeMaxBytes: number;
  sizeBytes: number;
  readonly blocks = new Map<number, Uint8Array>();
  openHandles = 0;

  constructor(o: MemoryExportOptions, blockBytes: number) {
    this.name = o.name;
    this.description = o.description ?? '';
    this.readOnly = o.readOnly ?? false;
    this.sizeBytes = o.sizeBytes;
    this.blockBytes = blockBytes;
    this.blockSizeMaxBytes = o.blockSizeMaxBytes ?? 32 * 1024 * 1024;
  }

  info(): ExportInfo {
    return {
      name: this.name,
      description: this.description,
      sizeBytes: this.sizeBytes,
      readOnly: this.readOnly,
      blockSizeMin: 1,
      blockSizePreferred: this.blockBytes,
      blockSizeMax: this.blockSizeMaxBytes,
    };
  }

  /** readBytes: a dense copy of [offset, offset+length), for tests. */
  readBytes(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    for (const c of this.readChunks(offset, length)) if (c.data) out.set(c.data, c.offset - offset);
    return out;
  }

  /** allocatedBlockCount: how many blocks hold data. */
  allocatedBlockCount(): number {
    return this.blocks.size;
  }

  resize(sizeBytes: number): void {
    assert(Number.isSafeInteger(sizeBytes) && sizeBytes >= 0, 'size');
    // Drop blocks beyond the new end and zero the tail of the last partial block, so growing
    // again exposes zeros, never stale data.
    for (const index of [...this.blocks.keys()]) if (index * this.blockBytes >= sizeBytes) this.blocks.delete(index);
    const tail = sizeBytes % this.blockBytes;
    const last = this.blocks.get(Math.floor(sizeBytes / this.blockBytes));
    if (tail !== 0 && last) last.fill(0, tail);
    this.sizeBytes = sizeBytes;
  }

  checkRange(offset: number, length: number): void {
    assert(Number.isSafeInteger(offset) && offset >= 0, 'offset');
    assert(Number.isSafeInteger(length) && length >= 0, 'length');
    if (offset + length > this.sizeBytes) throw new UsageError(ErrorCode.OutOfRange, `range ${offset}+${length} beyond export size ${this.sizeBytes}`);
  }

  checkWritable(): void {
    if (this.readOnly) throw new UsageError(ErrorCode.ReadOnly, `export ${this.name} is read-only`);
  }

  readChunks(offset: number, length: number): ReadChunk[] {
    // Copy each data run into one buffer: one chunk per run, and later writes cannot alter it.
    const runs = new ChunkRuns(offset, true);
    for (const p of blockPieces(offset, length, this.blockBytes)) {
      const block = this.blocks.get(p.block);
      if (block === undefined) runs.hole(p.to);
      else runs.data(block.subarray(p.from - p.blockStart, p.to - p.blockStart));
    }
    return runs.finish(offset + length);
  }

  writeData(offset: number, data: Uint8Array): void {
    for (const p of blockPieces(offset, data.length, this.blockBytes)) {
      let block = this.blocks.get(p.block);
      if (!block) {
        block = new Uint8Array(this.blockBytes);
        this.blocks.set(p.block, block);
      }
      block.set(data.subarray(p.from - offset, p.to - offset), p.from - p.blockStart);
    }
  }

  /** zeroRange: whole blocks become holes (or zeroed blocks if noHole), partial blocks are zeroed in place. */
  zeroRange(offset: number, length: number, noHole: boolean): void {
    for (const p of blockPieces(offset, length, this.blockBytes)) {
      const whole = p.to - p.from === this.blockBytes;
      const block = this.blocks.get(p.block);
      if (whole && !noHole) this.blocks.delete(p.block);
      else if (block) block.fill(0, p.from - p.blockStart, p.to - p.blockStart);
      else if (noHole) this.blocks.set(p.block, new Uint8Array(this.blockBytes));
    }
  }

  extents(offset: number, length: number, extentsMax: number): Extent[] {
    const runs = new ExtentRuns(offset, extentsMax);
    for (const p of blockPieces(offset, length, this.blockBytes)) {
      if (!runs.push(p.to, !this.blocks.has(p.block))) break;
    }
    return runs.extents();
  }
}

class MemoryHandle implements ExportHandle {
  private closed = false;
  constructor(private readonly exp: MemoryExport) {}

  info(): ExportInfo {
    return this.exp.info();
  }

  async read(offset: number, length: number): Promise<ReadChunk[]> {
    this.checkOpen();
    this.exp.checkRange(offset, length);
    return this.exp.readChunks(offset, length);
  }

  async write(offset: number, data: Uint8Array, _flags: { fua: boolean }): Promise<void> {
    this.checkOpen();
    this.exp.checkWritable();
    this.exp.checkRange(offset, data.length);
    this.exp.writeData(offset, data);
  }

  async trim(offset: number, length: number, _flags: { fua: boolean }): Promise<void> {
    this.checkOpen();
    this.exp.checkWritable();
    this.exp.checkRange(offset, length);
    this.exp.zeroRange(offset, length, false);
  }

  async writeZeroes(offset: number, length: number, flags: { fua: boolean; noHole: boolean; fastZero: boolean }): Promise<void> {
    this.checkOpen();
    this.exp.checkWritable();
    this.exp.checkRange(offset, length);
    this.exp.zeroRange(offset, length, flags.noHole);
  }

  async flush(): Promise<void> {
    this.checkOpen();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.checkOpen();
    this.exp.checkRange(offset, length);
  }

  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    this.checkOpen();
    this.exp.checkRange(offset, length);
    assert(length > 0, 'block status of an empty range');
    return this.exp.extents(offset, length, 4096);
  }

  async close(): Promise<void> {
    assert(!this.closed, 'handle closed twice');
    this.closed = true;
    this.exp.openHandles--;
  }

  private checkOpen(): void {
    assert(!this.closed, 'handle used after close');
  }
}

/** MemoryBackend: several sparse in-memory exports. */
export class MemoryBackend implements BlockBackend {
  private readonly exports = new Map<string, MemoryExport>();
  private readonly defaultName: string;

  constructor(options: MemoryBackendOptions) {
    const blockBytes = options.blockBytes ?? 4096;
    const sizeMax = options.exportSizeBytesMax ?? 2 ** 50;
    assert(blockBytes > 0 && (blockBytes & (blockBytes - 1)) === 0, 'blockBytes is a power of two');
    assert(options.exports.length > 0, 'at least one export');
    for (const e of options.exports) {
      if (!Number.isSafeInteger(e.sizeBytes) || e.sizeBytes < 0 || e.sizeBytes > sizeMax) {
        throw new UsageError(ErrorCode.InvalidArgument, `export ${e.name}: bad size ${e.sizeBytes}`);
      }
      if (this.exports.has(e.name)) throw new UsageError(ErrorCode.AlreadyExists, `export ${e.name} defined twice`);
      this.exports.set(e.name, new MemoryExport(e, blockBytes));
    }
    this.defaultName = options.defaultExport ?? options.exports[0]!.name;
    assert(this.exports.has(this.defaultName), 'default export exists');
  }

  /** export: the shared state of a named export (for tests). */
  export(name: string): MemoryExport {
    const e = this.exports.get(name);
    if (!e) throw new UsageError(ErrorCode.NotFound, `no export ${name}`);
    return e;
  }

  async listExports(): Promise<ExportInfo[]> {
    return [...this.exports.values()].map((e) => e.info());
  }

  defaultExportName(): string {
    return this.defaultName;
  }

  async open(name: string): Promise<ExportHandle> {
    const e = this.exports.get(name);
    if (!e) throw new UsageError(ErrorCode.NotFound, `no export named ${JSON.stringify(name)}`);
    e.openHandles++;
    return new MemoryHandle(e);
  }
}
