/**
 * cluster: `chard cluster up | down` and `chard node start --dir DIR --id N` — a local cluster of
 * real node processes that share one directory: `DIR/cluster.json` (who runs where) and one
 * `DIR/nI/` per node (its node.json, SQLite files and node.log).
 *
 * `cluster up` on a directory that already holds a stopped cluster restarts it with its existing
 * configuration and data (so `npm start` twice keeps what was written); on a running one it
 * refuses. The default volume is created only when the cluster is new.
 */

import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { ErrorCode, RemoteError, UsageError } from '../errors.js';
import type { NodeConfig } from '../node/config.js';
import type { MemberAddresses } from '../node/replica.js';
import { ensureCerts } from './certs.js';
import { ClusterClient, clusterCredentials } from './client.js';
import { type ClusterFile, clusterFilePath, formatSize, readClusterFile, table, writeClusterFile } from './cluster-file.js';
import { freePorts, isAlive, nodeDir, planAddresses, readNodeConfigFile, spawnNode, startNodeWaiting, stopProcess, writeNodeConfig } from './processes.js';

export const clusterNodesMax = 7;
export const defaultVolumeName = 'default';

export interface ClusterUpOptions {
  nodes: number;
  dir: string;
  basePort: number;
  volumeSizeBytes: number;
  detach: boolean;
  json: boolean;
  /** nodeOptions: extra node.json fields for every node (limits, store) — tests and tuning. */
  nodeOptions?: Partial<NodeConfig>;
  /** leaderTimeoutMs: how long to wait for the first leader. */
  leaderTimeoutMs?: number;
  /** tls: run mutual TLS everywhere with the certificates in `certs` (made there when absent). */
  tls?: { certs: string };
  /** logLevel: the nodes' pino level (node.json `logLevel`). */
  logLevel?: string;
}

/**
 * planMetrics: a loopback /metrics address per node — after the 3 ports per node of
 * `--base-port` (base + 3n + i), or free ports when the base is 0.
 */
async function planMetrics(ids: number[], basePort: number, taken: Map<number, MemberAddresses>, host = '127.0.0.1'): Promise<Map<number, string>> {
  // Free ports are asked for again after planAddresses released its own: skip any it chose.
  const used = new Set([...taken.values()].flatMap((a) => [a.raft, a.admin, a.nbd]).map((a) => Number(a.slice(a.lastIndexOf(':') + 1))));
  const ports = basePort === 0 ? (await freePorts(ids.length + used.size, host)).filter((p) => !used.has(p)).slice(0, ids.length) : ids.map((_, i) => basePort + ids.length * 3 + i);
  if (ports.length < ids.length) throw new RemoteError(ErrorCode.Unavailable, 'no free ports for the metrics listeners');
  if (ports.some((p) => p > 65535)) throw new UsageError(ErrorCode.InvalidArgument, `--base-port ${basePort} leaves no room for ${ids.length} metrics ports`);
  return new Map(ids.map((id, i) => [id, `${host}:${ports[i]}`]));
}

/** startAttemptsMax: start-ups of a fresh cluster on OS-chosen ports (a port can be taken between choosing and binding it). */
export const startAttemptsMax = 3;

/** logSays: whether a node's log contains `text` (false when there is no log). */
function logSays(dataDir: string, text: string): boolean {
  try {
    return readFileSync(path.join(dataDir, 'node.log'), 'utf8').includes(text);
  } catch {
    return false;
  }
}

export async function clusterUp(options: ClusterUpOptions): Promise<ClusterFile> {
  if (!Number.isInteger(options.nodes) || options.nodes < 1 || options.nodes > clusterNodesMax) {
    throw new UsageError(ErrorCode.InvalidArgument, `--nodes must be 1..${clusterNodesMax}, got ${options.nodes}`);
  }
  const dir = path.resolve(options.dir);
  mkdirSync(dir, { recursive: true });
  let cluster: ClusterFile;
  for (let attempt = 1; ; attempt++) {
    let fresh = false;
    if (existsSync(clusterFilePath(dir))) {
      cluster = readClusterFile(dir);
      const running = cluster.nodes.filter((n) => isAlive(n.pid));
      if (running.length > 0) {
        throw new UsageError(
          ErrorCode.FailedPrecondition,
          `the cluster in ${dir} is already running (node ${running.map((n) => `${n.id} pid ${n.pid}`).join(', ')}); stop it with: chard cluster down --dir ${options.dir}`,
        );
      }
      if (!options.json) console.error(`restarting the existing ${cluster.nodes.length}-node cluster in ${dir}`);
      for (const n of cluster.nodes) n.pid = spawnNode(dir, n.id);
    } else {
      fresh = true;
      const ids = Array.from({ length: options.nodes }, (_, i) => i + 1);
      const addresses = await planAddresses(ids, options.basePort);
      const metrics = await planMetrics(ids, options.basePort, addresses);
      const clusterId = `chard-${randomBytes(4).toString('hex')}`;
      const initialMembers = Object.fromEntries([...addresses].map(([id, a]) => [String(id), a]));
      const certs = options.tls === undefined ? undefined : path.resolve(options.tls.certs);
      if (certs !== undefined && ensureCerts(certs).created && !options.json) console.error(`made a cluster CA and certificates in ${certs}`);
      for (const id of ids) {
        const config: NodeConfig = {
          ...options.nodeOptions,
          clusterId,
          id,
          dataDir: '.',
          listen: addresses.get(id)!,
          initialMembers,
          metrics: metrics.get(id)!,
          ...(options.logLevel !== undefined ? { logLevel: options.logLevel } : {}),
          ...(certs !== undefined ? { tls: { certs, nbd: 'required' as const } } : {}),
        };
        writeNodeConfig(dir, config);
      }
      cluster = {
        clusterId,
        nodes: ids.map((id) => ({ id, pid: spawnNode(dir, id), ...addresses.get(id)!, metrics: metrics.get(id)!, data: nodeDir(dir, id) })),
        ...(certs !== undefined ? { tls: { certs } } : {}),
      };
    }
    writeClusterFile(dir, cluster);

    const client = new ClusterClient(cluster.nodes.map((n) => ({ id: n.id, admin: n.admin })), clusterCredentials({ dir }));
    try {
      await client.waitForLeader(options.leaderTimeoutMs ?? 30_000, () => {
        for (const n of cluster.nodes) {
          if (!isAlive(n.pid)) throw new RemoteError(ErrorCode.Unavailable, `node ${n.id} exited during start-up; see ${path.join(n.data, 'node.log')}`);
        }
      });
      if (fresh) await client.leader((api) => api.volumeCreate(defaultVolumeName, options.volumeSizeBytes));
      const volumes = await client.any((api) => api.volumeList());
      if (options.json) console.log(JSON.stringify(cluster, null, 2));
      else printWelcome(dir, cluster, volumes);
    } catch (error) {
      const portTaken = fresh && options.basePort === 0 && attempt < startAttemptsMax && cluster.nodes.some((n) => logSays(n.data, 'EADDRINUSE'));
      if (!options.detach || portTaken) await clusterDown(dir);
      if (!portTaken) throw error;
      // Another process took a port between choosing it and binding it: start again on new ports.
      if (!options.json) console.error(`a port was taken during start-up; retrying on new ports (attempt ${attempt + 1} of ${startAttemptsMax})`);
      for (const n of cluster.nodes) rmSync(n.data, { recursive: true, force: true });
      rmSync(clusterFilePath(dir), { force: true });
      continue;
    } finally {
      client.close();
    }
    break;
  }
  if (options.detach) return cluster;

  // Foreground: stay until Ctrl-C / SIGTERM, reporting nodes that exit, then stop them all.
  await new Promise<void>((resolve) => {
    const reported = new Set<number>();
    const watch = setInterval(() => {
      for (const n of cluster.nodes) {
        if (!reported.has(n.id) && !isAlive(n.pid)) {
          reported.add(n.id);
          console.error(`node ${n.id} (pid ${n.pid}) is not running; restart it with: chard node start --dir ${options.dir} --id ${n.id}`);
        }
      }
    }, 1000);
    const stop = () => {
      clearInterval(watch);
      resolve();
    };
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  console.error('stopping the cluster...');
  const stopped = await clusterDown(dir);
  for (const s of stopped) console.error(`node ${s.id}: ${s.result}`);
  return cluster;
}

function printWelcome(dir: string, cluster: ClusterFile, volumes: { name: string; sizeBytes: number }[]): void {
  const rows = cluster.nodes.map((n) => [n.id, n.pid, n.raft, n.admin, n.nbd, n.metrics ?? '']);
  const first = cluster.nodes[0]!;
  const lines = [
    `chard: ${cluster.nodes.length}-node cluster ${cluster.clusterId} running in ${dir}`,
    table(['node', 'pid', 'raft', 'admin', 'nbd', 'metrics'], rows),
    '',
    `volumes: ${volumes.map((v) => `${v.name} (${formatSize(v.sizeBytes)})`).join(', ') || 'none'}`,
    'NBD exports (every node serves every volume; a write is answered once committed on a quorum):',
    ...cluster.nodes.map((n) => `  ${nbdUri(cluster, n.nbd)}`),
    '',
    'try:',
    `  nbdinfo '${nbdUri(cluster, first.nbd)}'`,
    cluster.tls === undefined
      ? `  qemu-io -f raw -c 'write -P 0xab 0 1M' -c 'read -P 0xab 0 1M' nbd://${first.nbd}/${defaultVolumeName}`
      : `  qemu-io --object tls-creds-x509,id=tls0,dir=${cluster.tls.certs},endpoint=client --image-opts driver=nbd,host=${first.nbd.slice(0, first.nbd.lastIndexOf(':'))},port=${first.nbd.slice(first.nbd.lastIndexOf(':') + 1)},export=${defaultVolumeName},tls-creds=tls0 -c 'read 0 1M'`,
    `  npx chard status --dir ${dir}      (npx chard --help for every command)`,
    'a block device without the nbd kernel module (root):',
    `  mkdir -p /tmp/chard-fuse && nbdfuse /tmp/chard-fuse/disk nbd://${first.nbd}/${defaultVolumeName} &`,
    '  losetup -f --show /tmp/chard-fuse/disk      # then mkfs.ext4 / mount the loop device',
    "with the nbd kernel module: npx chard attach --device /dev/nbd0 (follows the leader across failovers) — see docs/operations.md",
    '',
    'Ctrl-C stops the cluster (data stays in the directory; run the same command to restart it).',
  ];
  console.log(lines.join('\n'));
}

/** nbdUri: the NBD URI of a node's export (nbds:// with the certificate directory on a TLS cluster). */
export function nbdUri(cluster: ClusterFile, nbd: string, volume = defaultVolumeName): string {
  return cluster.tls === undefined ? `nbd://${nbd}/${volume}` : `nbds://${nbd}/${volume}?tls-certificates=${cluster.tls.certs}`;
}

export async function clusterDown(dirOption: string): Promise<{ id: number; result: string }[]> {
  const dir = path.resolve(dirOption);
  const cluster = readClusterFile(dir);
  const results = await Promise.all(cluster.nodes.map(async (n) => ({ id: n.id, result: await stopProcess(n.pid) })));
  return results;
}

/** nodeStartWaitMsDefault: how long `node start --dir` waits for the node to serve (opening a large log can take a while). */
export const nodeStartWaitMsDefault = 60_000;

/**
 * nodeStartFromDir: (re)start node `id` of the local cluster in `dir`. Detached, it returns once
 * the node says it serves (every listener bound: startNodeWaiting), so that
 * "started" means started: a node that exits during start-up (a port in use, a damaged store)
 * is an error naming its log, not a success. `waitMs` 0 returns at the spawn.
 */
export async function nodeStartFromDir(dirOption: string, id: number, foreground: boolean, logLevel?: string, waitMs = nodeStartWaitMsDefault): Promise<{ pid: number } | undefined> {
  const dir = path.resolve(dirOption);
  const cluster = readClusterFile(dir);
  const entry = cluster.nodes.find((n) => n.id === id);
  readNodeConfigFile(dir, id); // clear error when the node has no configuration
  if (entry !== undefined && isAlive(entry.pid)) {
    throw new UsageError(ErrorCode.FailedPrecondition, `node ${id} is already running (pid ${entry.pid})`);
  }
  if (foreground) {
    const { runNodeProcess } = await import('../node/process.js');
    await runNodeProcess(path.join(nodeDir(dir, id), 'node.json'), logLevel !== undefined ? { logLevel } : {});
    return undefined;
  }
  if (entry === undefined) throw new UsageError(ErrorCode.NotFound, `node ${id} is not listed in ${clusterFilePath(dir)}`);
  const recordPid = (pid: number) => {
    const updated = readClusterFile(dir);
    const target = updated.nodes.find((n) => n.id === id);
    if (target !== undefined) target.pid = pid;
    writeClusterFile(dir, updated);
  };
  if (waitMs === 0) {
    const pid = spawnNode(dir, id);
    recordPid(pid);
    return { pid };
  }
  return { pid: await startNodeWaiting(dir, id, waitMs, recordPid) };
}

/**
 * nodeInit: prepare a NEW node for the local cluster in `dir` (a joining node: no bootstrap),
 * with free ports, and list it in cluster.json (not running yet). The operator then starts it and
 * adds it with `chard member add`.
 */
export async function nodeInit(dirOption: string, id: number, basePort = 0): Promise<{ id: number; raft: string; admin: string; nbd: string; data: string }> {
  const dir = path.resolve(dirOption);
  const cluster = readClusterFile(dir);
  if (cluster.nodes.some((n) => n.id === id) || existsSync(path.join(nodeDir(dir, id), 'node.json'))) {
    throw new UsageError(ErrorCode.AlreadyExists, `node ${id} already exists in ${dir}`);
  }
  const addresses = (await planAddresses([id], basePort)).get(id)!;
  const metrics = (await planMetrics([id], 0, new Map([[id, addresses]]))).get(id)!;
  const template = readNodeConfigFile(dir, cluster.nodes[0]!.id);
  const peers = Object.fromEntries(cluster.nodes.map((n) => [String(n.id), { raft: n.raft, admin: n.admin, nbd: n.nbd }]));
  const config: NodeConfig = {
    clusterId: cluster.clusterId,
    id,
    dataDir: '.',
    listen: addresses,
    join: true,
    peers,
    metrics,
    ...(template.logLevel !== undefined ? { logLevel: template.logLevel } : {}),
    ...(template.limits ? { limits: template.limits } : {}),
    ...(template.store ? { store: template.store } : {}),
    ...(template.tls ? { tls: template.tls } : {}),
  };
  writeNodeConfig(dir, config);
  const entry = { id, pid: 0, ...addresses, metrics, data: nodeDir(dir, id) };
  cluster.nodes.push(entry);
  writeClusterFile(dir, cluster);
  return entry;
}
