/**
 * nbd-target: the single seam through which every interop test (test/interop/*.test.ts) gets "an
 * NBD target" to run real clients against. Nothing in test/interop starts a server any other way,
 * so pointing this one function at a real 3-node chard cluster runs the same tests against it.
 *
 * Contract of `startTarget(options)` (what the tests rely on; any implementation must keep it):
 *  1. It resolves once the target accepts NBD connections (fixed newstyle) on `host:port`, which
 *     must be on 127.0.0.0/8 (or inside a network namespace the caller created).
 *  2. The target offers exactly the exports of `options.exports ?? standardExports`, with those
 *     names, sizes, descriptions and read-only flags; the empty name selects the first ("disk").
 *  3. Each call returns an independent target whose exports start sparse: every byte reads as
 *     zero and BLOCK_STATUS reports holes (tests run in parallel and assume nobody else writes).
 *  4. It serves the full feature set checked by nbdinfo.test.ts: structured replies,
 *     base:allocation, FLUSH, FUA, TRIM, WRITE_ZEROES, FAST_ZERO, CACHE, DF and CAN_MULTI_CONN on
 *     every connection; block_size_preferred 4096.
 *  5. `stop()` closes every connection and frees every resource; it is called exactly once, also
 *     when the test failed.
 *  6. Optional introspection, used only when present (tests skip those assertions otherwise):
 *     `counters()` returns the server's event counters (NbdCounters of src/nbd/server.ts) summed
 *     over every node that served this target; `backend` is the in-process MemoryBackend.
 *
 * Implementations, chosen by environment:
 *  - default: an in-process NbdServer over a MemoryBackend on 127.0.0.1, port chosen by the OS.
 *  - CHARD_NBD_TARGET_MODULE=/abs/path/module.js: that module's exported `startTarget(options)` is
 *    used instead (e.g. one that boots a 3-node chard cluster per call and returns the leader's
 *    NBD address, with `counters` summed over the nodes). It must honour this contract.
 *  - CHARD_NBD_TARGET=host:port: an already running target (manual runs only). It is shared by
 *    every test, so item 3 does not hold: run one test file at a time against fresh exports
 *    (`npx ava --serial dist/test/interop/<name>.test.js`); stop() does nothing.
 */

import { MemoryBackend, type MemoryExportOptions } from '../../src/nbd/memory-backend.js';
import { NbdServer, type NbdCounters, type NbdLimits } from '../../src/nbd/server.js';

const MiB = 1024 * 1024;

/** standardExports: what every target offers. "disk" is the default export. */
export const standardExports: MemoryExportOptions[] = [
  { name: 'disk', sizeBytes: 512 * MiB, description: 'chard test disk' },
  { name: 'small', sizeBytes: 64 * MiB, description: 'small test disk' },
  { name: 'ro', sizeBytes: 16 * MiB, description: 'read-only test disk', readOnly: true },
];

export interface TargetOptions {
  exports?: MemoryExportOptions[];
  /** limits: server limits; only the in-process target honours them. */
  limits?: Partial<NbdLimits>;
}

export interface Target {
  host: string;
  port: number;
  /** uri: nbd://host:port/name (libnbd / qemu syntax). */
  uri(exportName?: string): string;
  stop(): Promise<void>;
  /** counters: event counters summed over the serving nodes (contract item 6); optional. */
  counters?: () => NbdCounters;
  /** backend / server: only for the in-process target. */
  backend?: MemoryBackend;
  server?: NbdServer;
}

export type StartTarget = (options?: TargetOptions) => Promise<Target>;

const uriFor = (host: string, port: number) => (exportName = 'disk') => `nbd://${host}:${port}/${encodeURIComponent(exportName)}`;

/** startTarget: starts (or connects to) the target selected by the environment; see the contract above. */
export async function startTarget(options: TargetOptions = {}): Promise<Target> {
  const module = process.env['CHARD_NBD_TARGET_MODULE'];
  if (module) {
    const loaded = (await import(module)) as { startTarget?: StartTarget };
    if (typeof loaded.startTarget !== 'function') throw new Error(`${module} does not export startTarget`);
    return loaded.startTarget(options);
  }
  const external = process.env['CHARD_NBD_TARGET'];
  if (external) {
    const at = external.lastIndexOf(':');
    const host = external.slice(0, at);
    const port = Number(external.slice(at + 1));
    if (!(at > 0 && Number.isInteger(port) && port > 0 && port < 65536)) throw new Error(`CHARD_NBD_TARGET=${external} is not host:port`);
    return { host, port, uri: uriFor(host, port), stop: async () => undefined };
  }
  return startInProcessTarget(options);
}

/** startInProcessTarget: the default implementation (an NbdServer over a MemoryBackend in this process). */
export async function startInProcessTarget(options: TargetOptions = {}): Promise<Target> {
  const backend = new MemoryBackend({ exports: options.exports ?? standardExports });
  const server = new NbdServer({ backend, limits: options.limits ?? {} });
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in address)) throw new Error('expected a TCP address');
  return {
    host: address.host,
    port: address.port,
    uri: uriFor(address.host, address.port),
    stop: () => server.close(),
    counters: () => ({ ...server.counters }),
    backend,
    server,
  };
}
