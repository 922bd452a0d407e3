/**
 * cluster-file: the `DIR/cluster.json` of a local cluster — which nodes exist, where each listens,
 * its process id and data directory. `chard cluster up` writes it; every other command that takes
 * `--dir` reads it. Writes are atomic (write a temporary file, fsync, rename).
 */

import { closeSync, fsyncSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, UsageError } from '../errors.js';

export interface ClusterNodeEntry {
  id: number;
  pid: number;
  raft: string;
  admin: string;
  nbd: string;
  /** metrics: HOST:PORT of the node's Prometheus /metrics listener (absent in older files). */
  metrics?: string;
  data: string;
}

export interface ClusterFile {
  clusterId: string;
  nodes: ClusterNodeEntry[];
  /** tls: the cluster runs mutual TLS; `certs` is the certificate directory the CLI uses (client-cert.pem). */
  tls?: { certs: string };
}

export function clusterFilePath(dir: string): string {
  return path.join(dir, 'cluster.json');
}

export function readClusterFile(dir: string): ClusterFile {
  const file = clusterFilePath(dir);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    throw new UsageError(ErrorCode.NotFound, `no cluster in ${dir} (missing ${file}); start one with: chard cluster up --dir ${dir}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new UsageError(ErrorCode.InvalidArgument, `${file} is not valid JSON`);
  }
  const value = parsed as Partial<ClusterFile>;
  if (typeof value.clusterId !== 'string' || !Array.isArray(value.nodes)) {
    throw new UsageError(ErrorCode.InvalidArgument, `${file} lacks clusterId or nodes`);
  }
  if (value.tls !== undefined && (typeof value.tls !== 'object' || value.tls === null || typeof value.tls.certs !== 'string')) {
    throw new UsageError(ErrorCode.InvalidArgument, `${file} has a malformed tls entry (expected {"certs": DIR})`);
  }
  for (const node of value.nodes) {
    if (!Number.isInteger(node.id) || typeof node.raft !== 'string' || typeof node.admin !== 'string' || typeof node.nbd !== 'string') {
      throw new UsageError(ErrorCode.InvalidArgument, `${file} has a malformed node entry`);
    }
  }
  return value as ClusterFile;
}

export function writeClusterFile(dir: string, cluster: ClusterFile): void {
  const file = clusterFilePath(dir);
  const temporary = `${file}.tmp`;
  const fd = openSync(temporary, 'w');
  try {
    writeSync(fd, `${JSON.stringify(cluster, null, 2)}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(temporary, file);
}

/** parseIntOption: an integer option in min..max, or a coded usage error naming it (the CLI's one rule for integer options). */
export function parseIntOption(text: string, name: string, min: number, max: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(ErrorCode.InvalidArgument, `${name} must be an integer in ${min}..${max}, got "${text}"`);
  return n;
}

/** parseSize: "1GiB", "512MiB", "4096", "1G" → bytes; throws INVALID_ARGUMENT with the reason. */
export function parseSize(text: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$/i.exec(text);
  if (match === null) throw new UsageError(ErrorCode.InvalidArgument, `bad size "${text}" (examples: 1GiB, 512MiB, 1048576)`);
  const value = Number(match[1]);
  const unit = (match[2] ?? 'B').toUpperCase().replace(/I?B$/, '');
  const factor = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 }[unit as '' | 'K' | 'M' | 'G' | 'T'];
  if (factor === undefined) throw new UsageError(ErrorCode.InvalidArgument, `bad size unit in "${text}"`);
  const bytes = Math.round(value * factor);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) throw new UsageError(ErrorCode.InvalidArgument, `size "${text}" is out of range`);
  return bytes;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1 && value % 1024 === 0) {
    value /= 1024;
    unit++;
  }
  return `${value}${units[unit]}`;
}

/** table: render rows as an aligned text table. */
export function table(headers: string[], rows: (string | number | boolean)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const widths = headers.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? '').length)));
  return cells.map((r) => r.map((c, i) => (c ?? '').padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}
