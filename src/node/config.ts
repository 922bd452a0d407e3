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
import { type BlockStoreLimits, defaultBlockStoreLimits } from '../blockstore/index.js';
import { ReadOnlyOption } from '../raft/config.js';
import { defaultReplicaLimits, type MemberAddresses, type ReplicaLimits } from './replica.js';

/** nodeReadyMessage: the `kind` of the IPC message a node process sends the CLI that spawned it once it serves (cli/processes.ts startNodeWaiting). */
export const nodeReadyMessage = 'chard.node.ready';

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
  /** metrics: HOST:PORT of the Prometheus /metrics listener (none when absent). */
  metrics?: string;
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

/** nodeIdMax: node ids are 1..nodeIdMax (the raft layer's one rule, re-exported for the config). */
import { nodeIdMax } from '../raft/types.js';

export { nodeIdMax };
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

/** onlyKnown: refuses a field that is not in `known` (a typo would otherwise be ignored silently). */
function onlyKnown(value: Record<string, unknown>, known: readonly string[], what: string): void {
  for (const key of Object.keys(value)) {
    if (!known.includes(key)) throw bad(`${what === '' ? '' : `${what}.`}${key} is not a known field (known: ${known.join(', ')})`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * validateAddresses: raft, admin and nbd "host:port". `listen` may ask for port 0 (any free port);
 * an address others dial (advertise, members, peers) needs a real port.
 */
function validateAddresses(value: unknown, what: string, portZeroAllowed = false): MemberAddresses {
  if (!isObject(value)) throw bad(`${what} must be an object with raft, admin and nbd addresses`);
  const v = value;
  onlyKnown(v, ['raft', 'admin', 'nbd'], what);
  for (const key of ['raft', 'admin', 'nbd'] as const) {
    if (typeof v[key] !== 'string') throw bad(`${what}.${key} must be a "host:port" string`);
    const { port } = parseHostPort(v[key] as string, `${what}.${key}`);
    if (port === 0 && !portZeroAllowed) throw bad(`${what}.${key}: port 0 is only allowed in listen (others must dial a real port)`);
  }
  return { raft: v.raft as string, admin: v.admin as string, nbd: v.nbd as string };
}

function validateListen(value: unknown, what: string): string {
  if (typeof value !== 'string') throw bad(`${what} must be a "host:port" string`);
  parseHostPort(value, what);
  return value;
}

/** logLevels: pino's levels. */
export const logLevels = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export function validateLogLevel(value: unknown, what = 'logLevel'): string {
  if (typeof value !== 'string' || !(logLevels as readonly string[]).includes(value)) {
    throw bad(`${what} must be one of ${logLevels.join(', ')}, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** renamedFields: fields of an earlier release, refused with their new name (a silent default would change what the operator set). */
const renamedFields: Record<string, { name: string; why: string }> = {
  'limits.snapshotEveryEntries': {
    name: 'limits.compactEveryEntries',
    why: 'the log is compacted behind the node\'s durable state, and a snapshot is made only when a follower needs one',
  },
  'limits.snapshotEveryLogBytes': {
    name: 'limits.compactEveryLogBytes',
    why: 'the log is compacted behind the node\'s durable state, and a snapshot is made only when a follower needs one',
  },
  'store.checkpointIntervalMs': {
    name: 'store.checkpointWalBytes and store.checkpointIdleMs',
    why: 'state.db\'s WAL is checkpointed once it holds checkpointWalBytes, or once it was idle for checkpointIdleMs, not on a fixed period',
  },
};

/** positiveFields: numbers for which 0 has no meaning (a period, a size that triggers work): at least 1. */
const positiveFields = new Set(['store.checkpointWalBytes', 'store.checkpointIdleMs', 'store.checkpointPollMs']);
/** fieldMaxima: upper bounds (a timer period above 2^31 - 1 ms would fire every millisecond). */
const fieldMaxima: Record<string, number> = { 'store.checkpointPollMs': 60_000, 'store.checkpointIdleMs': 3_600_000 };

/**
 * validateLimits: every key must be one the defaults have, with the same shape: a non-negative
 * safe integer for a number, one of the allowed values for a string, recursively for an object.
 */
function validateLimits(value: unknown, defaults: object, what: string): Record<string, unknown> {
  if (value === undefined) return {};
  if (!isObject(value)) throw bad(`${what} must be an object`);
  const known = defaults as Record<string, unknown>;
  for (const key of Object.keys(value)) {
    const renamed = renamedFields[`${what}.${key}`];
    if (renamed !== undefined) throw bad(`${what}.${key} was renamed ${renamed.name}: ${renamed.why}`);
  }
  onlyKnown(value, Object.keys(known), what);
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    const d = known[key];
    const field = `${what}.${key}`;
    if (typeof d === 'number') {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(`${field} must be a non-negative integer, got ${JSON.stringify(v)}`);
      if (positiveFields.has(field) && v < 1) throw bad(`${field} must be at least 1, got ${v}`);
      const max = fieldMaxima[field];
      if (max !== undefined && v > max) throw bad(`${field} must be at most ${max}, got ${v}`);
    } else if (key === 'readOnlyOption') {
      const allowed = Object.values(ReadOnlyOption) as string[];
      if (typeof v !== 'string' || !allowed.includes(v)) throw bad(`${field} must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
    } else if (isObject(d)) {
      out[key] = { ...d, ...validateLimits(v, d, field) };
      continue;
    } else if (typeof v !== typeof d) {
      throw bad(`${field} must be a ${typeof d}`);
    }
    out[key] = v;
  }
  return out;
}

function validateTesting(value: unknown, baseDir: string): NodeTesting {
  if (!isObject(value)) throw bad('testing must be an object');
  const v = value;
  onlyKnown(v, ['faultsFile', 'unsafeLocalReads'], 'testing');
  const out: NodeTesting = {};
  if (v.faultsFile !== undefined) {
    if (typeof v.faultsFile !== 'string' || v.faultsFile.length === 0 || v.faultsFile.includes('\0')) throw bad('testing.faultsFile must be a file path');
    out.faultsFile = path.resolve(baseDir, v.faultsFile);
  }
  if (v.unsafeLocalReads !== undefined) {
    if (typeof v.unsafeLocalReads !== 'boolean') throw bad('testing.unsafeLocalReads must be true or false');
    out.unsafeLocalReads = v.unsafeLocalReads;
  }
  return out;
}

/** nodeConfigFields: the top-level fields of a node config (docs/operations.md describes each). */
export const nodeConfigFields = ['clusterId', 'id', 'dataDir', 'listen', 'advertise', 'initialMembers', 'join', 'peers', 'limits', 'store', 'metrics', 'logLevel', 'tls', 'testing'] as const;

/** validateNodeConfig: checks every field; returns a normalized copy (absolute dataDir). */
export function validateNodeConfig(value: unknown, baseDir = process.cwd()): NodeConfig {
  if (!isObject(value)) throw bad('node config must be a JSON object');
  const v = value;
  onlyKnown(v, nodeConfigFields, '');
  if (typeof v.clusterId !== 'string' || !clusterIdPattern.test(v.clusterId)) {
    throw bad('clusterId must be 1..64 characters of [A-Za-z0-9._-]');
  }
  const id = validateNodeId(v.id, 'id');
  if (typeof v.dataDir !== 'string' || v.dataDir.length === 0 || v.dataDir.includes('\0')) throw bad('dataDir must be a directory path');
  if (v.join !== undefined && typeof v.join !== 'boolean') throw bad('join must be true or false');
  const listen = validateAddresses(v.listen, 'listen', true);
  const advertise = v.advertise === undefined ? undefined : validateAddresses(v.advertise, 'advertise');
  let initialMembers: Record<string, MemberAddresses> | undefined;
  if (v.initialMembers !== undefined) {
    if (!isObject(v.initialMembers)) throw bad('initialMembers must be an object');
    initialMembers = {};
    for (const [key, addresses] of Object.entries(v.initialMembers as Record<string, unknown>)) {
      if (!/^[1-9]\d*$/.test(key)) throw bad(`initialMembers key "${key}" must be a node id`);
      validateNodeId(Number(key), `initialMembers key "${key}"`);
      initialMembers[key] = validateAddresses(addresses, `initialMembers.${key}`);
    }
    if (!(String(id) in initialMembers)) throw bad(`initialMembers must include this node (${id})`);
  }
  const join = v.join === true;
  let peers: Record<string, MemberAddresses> | undefined;
  if (v.peers !== undefined) {
    if (!join) throw bad('peers is only for a joining node ("join": true); initial members use initialMembers');
    if (!isObject(v.peers)) throw bad('peers must be an object');
    peers = {};
    for (const [key, addresses] of Object.entries(v.peers as Record<string, unknown>)) {
      if (!/^[1-9]\d*$/.test(key)) throw bad(`peers key "${key}" must be a node id`);
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
    limits: validateLimits(v.limits, defaultReplicaLimits, 'limits') as Partial<ReplicaLimits>,
    store: validateLimits(v.store, defaultBlockStoreLimits, 'store') as Partial<BlockStoreLimits>,
    ...(v.metrics !== undefined ? { metrics: validateListen(v.metrics, 'metrics') } : {}),
    logLevel: v.logLevel === undefined ? 'info' : validateLogLevel(v.logLevel),
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
  try {
    return validateNodeConfig(parsed, path.dirname(path.resolve(file)));
  } catch (error) {
    if (error instanceof UsageError) throw bad(`${file}: ${error.message}`);
    throw error;
  }
}

/**
 * Well-known ports of a node that has its host to itself (one node per host): NBD's IANA port
 * 10809, and fixed raft / admin / metrics ports so every host's config looks the same.
 */
export const hostPorts = { raft: 7401, admin: 7402, nbd: 10809, metrics: 9101 } as const;

export interface HostNodeConfigOptions {
  clusterId: string;
  id: number;
  /** host: the name or IP address this node listens on and the others dial. */
  host: string;
  /** members: id → host of every initial member (bootstrap), or with `join` the current members. */
  members: Record<string, string>;
  join?: boolean;
  dataDir?: string;
  ports?: Partial<Record<keyof typeof hostPorts, number>>;
  logLevel?: string;
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * hostNodeConfig: the node.json of one node on its own host (`chard node init --out FILE`):
 * every member on the same well-known ports, NBD on 10809 unless told otherwise. The result is
 * validated like any config file.
 */
export function hostNodeConfig(options: HostNodeConfigOptions): NodeConfig {
  const ports = { ...hostPorts, ...options.ports };
  const addressesOf = (host: string): MemberAddresses => ({ raft: hostPort(host, ports.raft), admin: hostPort(host, ports.admin), nbd: hostPort(host, ports.nbd) });
  const members = Object.fromEntries(Object.entries(options.members).map(([id, host]) => [id, addressesOf(host)]));
  const config: Record<string, unknown> = {
    clusterId: options.clusterId,
    id: options.id,
    dataDir: options.dataDir ?? '/var/lib/chard',
    listen: addressesOf(options.host),
    metrics: hostPort(options.host, ports.metrics),
    ...(options.logLevel !== undefined ? { logLevel: options.logLevel } : {}),
  };
  if (options.join === true) {
    config.join = true;
    config.peers = members;
  } else {
    config.initialMembers = { ...members, [String(options.id)]: addressesOf(options.host) };
  }
  validateNodeConfig(config, '/');
  return config as unknown as NodeConfig;
}

/** parseMembers: "1=10.0.0.1,2=host-b,3=[fd00::3]" → { "1": "10.0.0.1", ... } (INVALID_ARGUMENT naming the flag). */
export function parseMembers(text: string, what = '--members'): Record<string, string> {
  const out: Record<string, string> = {};
  for (const part of text.split(',').filter((p) => p.trim() !== '')) {
    const m = /^\s*([1-9]\d*)=(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)\s*$/.exec(part);
    if (m === null) throw bad(`${what}: "${part}" is not ID=HOST`);
    validateNodeId(Number(m[1]), `${what} id`);
    if (m[1]! in out) throw bad(`${what}: node ${m[1]} is listed twice`);
    out[m[1]!] = m[2]!.replace(/^\[|\]$/g, '');
  }
  if (Object.keys(out).length === 0) throw bad(`${what} lists no member`);
  return out;
}
