/**
 * fault-backend: a BlockBackend wrapper that runs a hook before every export operation, so tests
 * (and later `chard chaos`) can delay, block or fail requests (nbdkit's delay / error filters).
 * The hook sees the operation, its range and the handle's sequence number; it may await (delay,
 * gate) or throw (any ChardError, which the server then maps per backend.ts).
 */

import type { BlockBackend, ExportHandle, ExportInfo, Extent, ReadChunk } from './backend.js';

export const BackendOp = {
  read: 'read',
  write: 'write',
  trim: 'trim',
  writeZeroes: 'writeZeroes',
  flush: 'flush',
  cache: 'cache',
  blockStatus: 'blockStatus',
} as const;
export type BackendOp = (typeof BackendOp)[keyof typeof BackendOp];

export interface FaultContext {
  op: BackendOp;
  exportName: string;
  offset: number;
  length: number;
  flags?: { fua: boolean; noHole?: boolean; fastZero?: boolean };
}

export type FaultHook = (context: FaultContext) => Promise<void> | void;

class FaultHandle implements ExportHandle {
  constructor(
    private readonly inner: ExportHandle,
    private readonly hook: FaultHook,
  ) {}
  private get name(): string {
    return this.inner.info().name;
  }
  info(): ExportInfo {
    return this.inner.info();
  }
  async read(offset: number, length: number): Promise<ReadChunk[]> {
    await this.hook({ op: BackendOp.read, exportName: this.name, offset, length });
    return this.inner.read(offset, length);
  }
  async write(offset: number, data: Uint8Array, flags: { fua: boolean }): Promise<void> {
    await this.hook({ op: BackendOp.write, exportName: this.name, offset, length: data.length, flags });
    return this.inner.write(offset, data, flags);
  }
  async trim(offset: number, length: number, flags: { fua: boolean }): Promise<void> {
    await this.hook({ op: BackendOp.trim, exportName: this.name, offset, length, flags });
    return this.inner.trim(offset, length, flags);
  }
  async writeZeroes(offset: number, length: number, flags: { fua: boolean; noHole: boolean; fastZero: boolean }): Promise<void> {
    await this.hook({ op: BackendOp.writeZeroes, exportName: this.name, offset, length, flags });
    return this.inner.writeZeroes(offset, length, flags);
  }
  async flush(): Promise<void> {
    await this.hook({ op: BackendOp.flush, exportName: this.name, offset: 0, length: 0 });
    return this.inner.flush();
  }
  async cache(offset: number, length: number): Promise<void> {
    await this.hook({ op: BackendOp.cache, exportName: this.name, offset, length });
    return this.inner.cache(offset, length);
  }
  async blockStatus(offset: number, length: number): Promise<Extent[]> {
    await this.hook({ op: BackendOp.blockStatus, exportName: this.name, offset, length });
    return this.inner.blockStatus(offset, length);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** FaultBackend: wraps `inner`; every export operation first awaits `hook`. */
export class FaultBackend implements BlockBackend {
  constructor(
    private readonly inner: BlockBackend,
    private readonly hook: FaultHook,
  ) {}
  listExports(): Promise<ExportInfo[]> {
    return this.inner.listExports();
  }
  defaultExportName(): string {
    return this.inner.defaultExportName();
  }
  async open(name: string): Promise<ExportHandle> {
    return new FaultHandle(await this.inner.open(name), this.hook);
  }
}
