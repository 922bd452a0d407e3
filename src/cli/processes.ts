/**
 * processes: starting and stopping the node processes of a local cluster (`chard cluster up`,
 * `chard cluster down`, `chard node start --dir`). Each node is a real OS process running
 * `chard node start --config DIR/nI/node.json`, in its own process group, with its output
 * appended to `DIR/nI/node.log`.
 */

import { type ChildProcess, spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ErrorCode, InternalError, RemoteError, UsageError } from '../errors.js';
import { type NodeConfig, nodeReadyMessage } from '../node/config.js';
import type { MemberAddresses } from '../node/replica.js';

/** mainScript: the compiled CLI entry point (dist/src/cli/main.js). */
export const mainScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'main.js');

export function nodeDir(dir: string, id: number): string {
  return path.join(dir, `n${id}`);
}

export function nodeConfigPath(dir: string, id: number): string {
  return path.join(nodeDir(dir, id), 'node.json');
}

/** EPHEMERAL_RANGE_FILE: the kernel's range of local ports for outgoing connections (Linux). */
const EPHEMERAL_RANGE_FILE = '/proc/sys/net/ipv4/ip_local_port_range';
/** listenPortsFrom: the lowest port freePorts picks from (below it, well-known and registered services). */
const listenPortsFrom = 10_000;

/** ephemeralPortRange: [low, high] of the kernel's ephemeral ports (Linux's default when unreadable). */
export function ephemeralPortRange(file = EPHEMERAL_RANGE_FILE): [number, number] {
  try {
    const [low, high] = readFileSync(file, 'utf8').trim().split(/\s+/).map(Number);
    if (Number.isInteger(low) && Number.isInteger(high) && low! > 0 && high! >= low!) return [low!, high!];
  } catch {
    // not Linux, or no procfs: the default below
  }
  return [32_768, 60_999];
}

/**
 * freePorts: `count` distinct free loopback ports for nodes to listen on, chosen BELOW the
 * kernel's ephemeral range. A port the OS hands out for port 0 is an ephemeral one: once the node
 * that listened on it is killed, any process's outgoing connection may take it as its local
 * port, and the node's restart fails with EADDRINUSE (seen in a clean CI run: a killed node's
 * admin port taken before its restart). Ports are drawn at random from [10000, ephemeral low)
 * and bound once to check them; without room below the range, the OS picks (port 0).
 */
export async function freePorts(count: number, host = '127.0.0.1'): Promise<number[]> {
  const [ephemeralLow] = ephemeralPortRange();
  const below = ephemeralLow - listenPortsFrom;
  const servers: net.Server[] = [];
  const ports: number[] = [];
  const tryListen = (port: number) =>
    new Promise<number | undefined>((resolve) => {
      const server = net.createServer();
      server.once('error', () => resolve(undefined));
      server.listen(port, host, () => {
        servers.push(server);
        resolve((server.address() as net.AddressInfo).port);
      });
    });
  try {
    for (let attempts = 0; ports.length < count && attempts < count * 50 && below >= count * 10; attempts++) {
      const port = await tryListen(listenPortsFrom + randomInt(below));
      if (port !== undefined && !ports.includes(port)) ports.push(port);
    }
    while (ports.length < count) {
      const port = await tryListen(0);
      if (port === undefined) throw new InternalError(ErrorCode.Unavailable, `no free port on ${host}`);
      ports.push(port);
    }
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }
  return ports;
}

/** planAddresses: raft/admin/nbd addresses for nodes 1..n (base port, or free ports when 0). */
export async function planAddresses(ids: number[], basePort: number, host = '127.0.0.1'): Promise<Map<number, MemberAddresses>> {
  if (!Number.isInteger(basePort) || basePort < 0 || basePort + ids.length * 3 > 65535) {
    throw new UsageError(ErrorCode.InvalidArgument, `--base-port ${basePort} leaves no room for ${ids.length} nodes (3 ports each)`);
  }
  const ports = basePort === 0 ? await freePorts(ids.length * 3, host) : ids.map((_, i) => [0, 1, 2].map((k) => basePort + i * 3 + k)).flat();
  const result = new Map<number, MemberAddresses>();
  ids.forEach((id, i) => {
    result.set(id, { raft: `${host}:${ports[i * 3]}`, admin: `${host}:${ports[i * 3 + 1]}`, nbd: `${host}:${ports[i * 3 + 2]}` });
  });
  return result;
}

/** writeNodeConfig: DIR/nI/node.json (created once; an existing one is kept). */
export function writeNodeConfig(dir: string, config: NodeConfig): void {
  mkdirSync(nodeDir(dir, config.id), { recursive: true });
  writeFileSync(nodeConfigPath(dir, config.id), `${JSON.stringify(config, null, 2)}\n`);
}

export function readNodeConfigFile(dir: string, id: number): NodeConfig {
  const file = nodeConfigPath(dir, id);
  if (!existsSync(file)) throw new UsageError(ErrorCode.NotFound, `node ${id} has no configuration in ${file}`);
  return JSON.parse(readFileSync(file, 'utf8')) as NodeConfig;
}

/**
 * nodeProcessV8Flags: V8 flags of every node process this CLI starts (docs/operations.md, "Memory").
 * `--max-semi-space-size=4` caps the young generation at 2 × 4 MiB. Node 20 lets it grow to
 * 2 × 16 MiB, which a node reaches under load and keeps (it shrinks only on a memory-reducing
 * GC, which an idle node never runs): 32 MiB resident, 1-5 MiB of it live after the bench. The
 * write path's garbage is short-lived (frames, decoded messages, Buffer views), so a smaller
 * nursery costs scavenges that find little to copy.
 */
export const nodeProcessV8Flags: readonly string[] = ['--max-semi-space-size=4'];

/** nodeProcessFlags: nodeProcessV8Flags less those that NODE_OPTIONS in `env` names (those win). */
export function nodeProcessFlags(env: NodeJS.ProcessEnv): string[] {
  const nodeOptions = env.NODE_OPTIONS ?? '';
  return nodeProcessV8Flags.filter((flag) => !nodeOptions.includes(flag.split('=')[0]!));
}

/**
 * spawnNode: start `chard node start --config FILE` detached, with nodeProcessFlags; returns its
 * pid. With CHARD_NODE_CPU_PROF_DIR set (`chard bench --profile DIR`), the node runs under
 * `node --cpu-prof` and writes its profile there when it stops (node refuses --cpu-prof in
 * NODE_OPTIONS).
 */
export function spawnNode(dir: string, id: number, extraEnv: Record<string, string> = {}): number {
  const child = spawnNodeProcess(dir, id, extraEnv, false);
  child.unref();
  return child.pid!;
}

/**
 * startNodeWaiting: spawnNode with an IPC channel on which the node says it serves (every
 * listener bound, the replica running: nodeReadyMessage, sent by src/node/process.ts). `recordPid` runs
 * at once with the new pid, before the wait. Resolves once the node said so; rejects with
 * UNAVAILABLE naming its log when it exits first (a port in use, a damaged store), and with
 * TIMEOUT when it still starts after `waitMs` (it is left running). The channel is let go either way.
 */
export function startNodeWaiting(dir: string, id: number, waitMs: number, recordPid: (pid: number) => void): Promise<number> {
  const child = spawnNodeProcess(dir, id, {}, true);
  const pid = child.pid!;
  const log = path.join(nodeDir(dir, id), 'node.log');
  recordPid(pid);
  return new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      settle(new RemoteError(ErrorCode.Timeout, `node ${id} (pid ${pid}) is still starting after ${waitMs} ms; it keeps running; see ${log}`));
    }, waitMs);
    const onMessage = (message: unknown) => {
      if (typeof message === 'object' && message !== null && (message as { kind?: unknown }).kind === nodeReadyMessage) settle(undefined);
    };
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => {
      settle(new RemoteError(ErrorCode.Unavailable, `node ${id} (pid ${pid}) exited during start-up (${signal ?? `status ${code}`}); see ${log}`));
    };
    let settled = false;
    const settle = (error: Error | undefined) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      child.off('message', onMessage);
      child.off('exit', onExit);
      if (child.connected) child.disconnect();
      child.unref();
      if (error === undefined) resolve(pid);
      else reject(error);
    };
    child.on('message', onMessage);
    child.on('exit', onExit);
    child.on('error', (error) => settle(new RemoteError(ErrorCode.Unavailable, `node ${id}: ${error.message}`)));
  });
}

function spawnNodeProcess(dir: string, id: number, extraEnv: Record<string, string>, ipc: boolean): ChildProcess {
  const log = openSync(path.join(nodeDir(dir, id), 'node.log'), 'a');
  const profileDir = process.env.CHARD_NODE_CPU_PROF_DIR;
  const profileFlags = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=node${id}-${Date.now()}.cpuprofile`] : [];
  const env = { ...process.env, ...extraEnv };
  try {
    const child = spawn(process.execPath, [...nodeProcessFlags(env), ...profileFlags, mainScript, 'node', 'start', '--config', nodeConfigPath(dir, id)], {
      detached: true,
      stdio: ipc ? ['ignore', log, log, 'ipc'] : ['ignore', log, log],
      env,
    });
    if (child.pid === undefined) throw new RemoteError(ErrorCode.Unavailable, `could not start node ${id}`);
    return child;
  } finally {
    closeSync(log);
  }
}

/** isAlive: the process exists and runs a chard node (not a recycled pid). */
export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    if (cmdline.length > 0 && !cmdline.includes('node\0start')) return false;
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z';
  } catch {
    // /proc/PID went away between the signal check and these reads: the process (a zombie) was
    // reaped meanwhile, so it is gone. Only if it still answers a signal is it counted alive (a
    // read that failed for another reason). A full-cluster restart after kill -9 saw "node 2 is
    // already running" here once in a clean CI run.
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  }
}

/** stopProcess: SIGTERM, wait up to `graceMs`, then SIGKILL. Resolves when it is gone. */
export async function stopProcess(pid: number, graceMs = 15_000): Promise<'stopped' | 'killed' | 'absent'> {
  if (!isAlive(pid)) return 'absent';
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return 'absent';
  }
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline) {
    if (!isAlive(pid)) return 'stopped';
    await new Promise((r) => setTimeout(r, 50));
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone meanwhile */
  }
  while (isAlive(pid)) await new Promise((r) => setTimeout(r, 20));
  return 'killed';
}
