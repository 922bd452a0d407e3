/**
 * config: NodeConfig, everything one chard node process needs to start, read from a JSON file
 * (`chard node start --config FILE`) and validated before anything is opened. `chard cluster up`
 * writes one such file per node into `DIR/nI/node.json`; a real deployment writes its own.
 *
 * ```json
 * { "clusterId": "c-4f2a", "id": 1, "dataDir": "/var/lib/chard",
 *   "listen": { "raft": "10.0.0.1:7401", "admin": "10.0.0.1:7402", "nbd": "10.0.0.1:10809" },
 *   "initialMembers": { "1": { "raft": "...", "admin": "...", "nbd": "..." }, "2": { ... } } }
 * ```
 * `initialMembers` is used only the first time the node starts with an empty data directory
 * (bootstrap); a node that joins an existing cluster later starts with `"join": true` and no
 * initial members, and waits to be added with `chard member add`.
 */

import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, UsageError } from '../errors.js';
import type { BlockStoreLimits } from '../blockstore/index.js';
import type { MemberAddresses, ReplicaLimits } from './replica.js';

export interface NodeConfig {
  clusterId: string;
  id: number;
  dataDir: string;
  listen: MemberAddresses;
  /** advertise: addresses peers and clients use to reach this node (defaults to `listen`). */
  advertise?: MemberAddresses;
  initialMembers?: Record<string, MemberAddresses>;
  /** join: start empty and wait to be added by `chard member add` (no bootstrap). */
  join?: boolean;
  /**
   * peers: with `join`, the current members' addresses (etcd's initial-cluster with
   * state=existing), so the new node can answer the leader before it has learned the membership
   * from the log or a snapshot.
   */
  peers?: Record<string, MemberAddresses>;
  limits?: Partial<ReplicaLimits>;
  /** store: limits of the block store (snapshot trailing entries, caches). */
  store?: Partial<BlockStoreLimits>;
  /** logLevel: pino level (default info). */
  logLevel?: string;
  /** tls: mutual TLS on every gRPC listener and client, STARTTLS on NBD (docs/security.md). */
  tls?: NodeTlsConfig;
  /** testing: fault injection and deliberately broken behaviour for the chaos harness's own tests. */
  testing?: NodeTesting;
}

// ---- tls (one block: the fields, their validation)

/** NodeTlsConfig: `"tls": { "certs": DIR, "nbd": "required" }` (DIR as `chard certs init` writes it). */
export interface NodeTlsConfig {
  /** certs: ca-cert.pem, server-cert.pem, server-key.pem (the node's own, also its client certificate). */
  certs: string;
  /** nbd: NBD STARTTLS mode; 'off' leaves NBD plaintext (gRPC stays mutual TLS). Default 'required'. */
  nbd: 'off' | 'optional' | 'required';
}

export const nbdTlsModes = ['off', 'optional', 'required'] as const;
const tlsKeys = new Set(['certs', 'nbd']);

function validateTls(value: unknown, baseDir: string): NodeTlsConfig {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad('tls must be an object {"certs": DIR, "nbd": "off"|"optional"|"required"}');
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) if (!tlsKeys.has(key)) throw bad(`tls.${key} is not a field (tls has certs and nbd)`);
  if (typeof v.certs !== 'string' || v.certs.length === 0) throw bad('tls.certs must be the path of a certificate directory (chard certs init --dir DIR)');
  const certs = path.resolve(baseDir, v.certs);
  for (const file of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) {
    if (!existsSync(path.join(certs, file))) throw bad(`tls.certs: ${certs} has no ${file} (make it with: chard certs init --dir ${certs})`);
  }
  const nbd = v.nbd ?? 'required';
  if (typeof nbd !== 'string' || !(nbdTlsModes as readonly string[]).includes(nbd)) throw bad(`tls.nbd must be one of ${nbdTlsModes.join(', ')}, got ${JSON.stringify(v.nbd)}`);
  return { certs, nbd: nbd as NodeTlsConfig['nbd'] };
}

// ---- end tls

export interface NodeTesting {
  /**
   * faultsFile: a JSON file `{"blocked": [[from, to], ...], "dropProbability": 0.1}` polled every
   * 100 ms; the peer transport drops messages on blocked directed links (non-root chaos mode).
   */
  faultsFile?: string;
  /** unsafeLocalReads: serve reads from local state WITHOUT a linearizable barrier (broken on purpose). */
  unsafeLocalReads?: boolean;
}

/** nodeIdMax: node ids are small positive integers (they travel as uint64; kept in safe range). */
export const nodeIdMax = 2 ** 31 - 1;
export const clusterIdPattern = /^[A-Za-z0-9._-]{1,64}$/;
const hostPortPattern = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

function bad(message: string): UsageError {
  return new UsageError(ErrorCode.InvalidArgument, message);
}

/** parseHostPort: "host:port" → parts; port 0..65535. Throws INVALID_ARGUMENT. */
export function parseHostPort(text: string, what: string): { host: string; port: number } {
  const match = hostPortPattern.exec(text);
  if (match === null) throw bad(`${what}: "${text}" is not host:port`);
  const port = Number(match[2]);
  if (port > 65535) throw bad(`${what}: port ${port} is out of range`);
  return { host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

export function validateNodeId(id: unknown, what = 'node id'): number {
  if (typeof id !== 'number' || !Number.isInteger(id) || id < 1 || id > nodeIdMax) {
    throw bad(`${what} must be an integer in 1..${nodeIdMax}, got ${JSON.stringify(id)}`);
  }
  return id;
}

function validateAddresses(value: unknown, what: string): MemberAddresses {
  if (typeof value !== 'object' || value === null) throw bad(`${what} must be an object with raft, admin and nbd addresses`);
  const v = value as Record<string, unknown>;
  for (const key of ['raft', 'admin', 'nbd'] as const) {
    if (typeof v[key] !== 'string') throw bad(`${what}.${key} must be a "host:port" string`);
    parseHostPort(v[key] as string, `${what}.${key}`);
  }
  return { raft: v.raft as string, admin: v.admin as string, nbd: v.nbd as string };
}

function plainObject(value: unknown, what: string): Record<string, number | string> {
  if (value === undefined) return {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw bad(`${what} must be an object`);
  for (const [key, v] of Object.entries(value)) {
    if (typeof v !== 'number' && typeof v !== 'string') throw bad(`${what}.${key} must be a number or a string`);
  }
  return value as Record<string, number | string>;
}

function validateTesting(value: unknown, baseDir: string): NodeTesting {
  if (typeof value !== 'object' || value === null) throw bad('testing must be an object');
  const v = value as Record<string, unknown>;
  const out: NodeTesting = {};
  if (v.faultsFile !== undefined) {
    if (typeof v.faultsFile !== 'string') throw bad('testing.faultsFile must be a path');
    out.faultsFile = path.resolve(baseDir, v.faultsFile);
  }
  if (v.unsafeLocalReads !== undefined) out.unsafeLocalReads = v.unsafeLocalReads === true;
  return out;
}

/** validateNodeConfig: checks every field; returns a normalized copy (absolute dataDir). */
export function validateNodeConfig(value: unknown, baseDir = process.cwd()): NodeConfig {
  if (typeof value !== 'object' || value === null) throw bad('node config must be a JSON object');
  const v = value as Record<string, unknown>;
  if (typeof v.clusterId !== 'string' || !clusterIdPattern.test(v.clusterId)) {
    throw bad('clusterId must be 1..64 characters of [A-Za-z0-9._-]');
  }
  const id = validateNodeId(v.id);
  if (typeof v.dataDir !== 'string' || v.dataDir.length === 0) throw bad('dataDir must be a directory path');
  const listen = validateAddresses(v.listen, 'listen');
  const advertise = v.advertise === undefined ? undefined : validateAddresses(v.advertise, 'advertise');
  let initialMembers: Record<string, MemberAddresses> | undefined;
  if (v.initialMembers !== undefined) {
    if (typeof v.initialMembers !== 'object' || v.initialMembers === null) throw bad('initialMembers must be an object');
    initialMembers = {};
    for (const [key, addresses] of Object.entries(v.initialMembers as Record<string, unknown>)) {
      validateNodeId(Number(key), `initialMembers key "${key}"`);
      initialMembers[key] = validateAddresses(addresses, `initialMembers.${key}`);
    }
    if (!(String(id) in initialMembers)) throw bad(`initialMembers must include this node (${id})`);
  }
  const join = v.join === true;
  let peers: Record<string, MemberAddresses> | undefined;
  if (v.peers !== undefined) {
    if (!join) throw bad('peers is only for a joining node ("join": true); initial members use initialMembers');
    if (typeof v.peers !== 'object' || v.peers === null) throw bad('peers must be an object');
    peers = {};
    for (const [key, addresses] of Object.entries(v.peers as Record<string, unknown>)) {
      validateNodeId(Number(key), `peers key "${key}"`);
      peers[key] = validateAddresses(addresses, `peers.${key}`);
    }
  }
  if (!join && initialMembers === undefined) throw bad('either initialMembers (bootstrap) or "join": true is required');
  if (join && initialMembers !== undefined) throw bad('"join": true and initialMembers exclude each other');
  return {
    clusterId: v.clusterId,
    id,
    dataDir: path.resolve(baseDir, v.dataDir),
    listen,
    ...(advertise ? { advertise } : {}),
    ...(initialMembers ? { initialMembers } : {}),
    join,
    ...(peers ? { peers } : {}),
    limits: plainObject(v.limits, 'limits') as Partial<ReplicaLimits>,
    store: plainObject(v.store, 'store') as Partial<BlockStoreLimits>,
    logLevel: typeof v.logLevel === 'string' ? v.logLevel : 'info',
    ...(v.tls !== undefined ? { tls: validateTls(v.tls, baseDir) } : {}),
    ...(v.testing !== undefined ? { testing: validateTesting(v.testing, baseDir) } : {}),
  };
}

export function loadNodeConfig(file: string): NodeConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new UsageError(ErrorCode.NotFound, `cannot read node config ${file}: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw bad(`${file} is not valid JSON`);
  }
  return validateNodeConfig(parsed, path.dirname(path.resolve(file)));
}
