/**
 * command: `chard attach` / `chard detach` — run the attach agent in the foreground, optionally
 * attaching a kernel nbd device to it, and report its state (`chard attach --status`).
 *
 * The agent publishes its status every second in a JSON file in the runtime directory
 * (`$CHARD_RUN_DIR`, else `$XDG_RUNTIME_DIR/chard`, else `/tmp/chard-run`), one file per agent,
 * so `--status` and `detach` work from any shell.
 */

import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { destination, pino } from 'pino';
import { ErrorCode, RemoteError, UsageError } from '../errors.js';
import { clusterCredentials, clusterTargets } from '../cli/client.js';
import { validateLogLevel } from '../node/config.js';
import { AttachAgent, type AgentStatus } from './agent.js';

const execFileAsync = promisify(execFile);

export function runDir(): string {
  return process.env.CHARD_RUN_DIR ?? (process.env.XDG_RUNTIME_DIR ? path.join(process.env.XDG_RUNTIME_DIR, 'chard') : '/tmp/chard-run');
}

export interface AttachOptions {
  cluster?: string;
  dir?: string;
  /** certs: mutual TLS to the cluster with DIR/client-cert.pem (default: as DIR/cluster.json says). */
  certs?: string;
  volume: string;
  socket?: string;
  port?: string;
  device?: string;
  connections: string;
  timeout: string;
  json?: boolean;
  /** metrics: HOST:PORT for the agent's Prometheus /metrics listener. */
  metrics?: string;
  /** logLevel: pino level of the agent's JSON log on stderr (default info). */
  logLevel?: string;
}

export interface PublishedStatus extends AgentStatus {
  pid: number;
  device: string | undefined;
  updatedAt: string;
}

/** nbdModuleAvailable: can this host attach /dev/nbdX at all? */
export async function nbdModuleAvailable(): Promise<{ ok: boolean; reason?: string }> {
  if (existsSync('/sys/module/nbd')) return { ok: true };
  try {
    await execFileAsync('modprobe', ['nbd']);
    if (existsSync('/sys/module/nbd')) return { ok: true };
  } catch (error) {
    return { ok: false, reason: `the nbd kernel module is not available (modprobe nbd: ${(error as { stderr?: string }).stderr?.trim() || (error as Error).message})` };
  }
  return { ok: false, reason: 'the nbd kernel module is not loaded' };
}

export async function attach(options: AttachOptions): Promise<void> {
  const targets = clusterTargets(options);
  const credentials = clusterCredentials(options);
  const connections = Number(options.connections);
  if (!Number.isInteger(connections) || connections < 1 || connections > 16) throw new UsageError(ErrorCode.InvalidArgument, '--connections must be 1..16');
  const timeoutMs = Number(options.timeout);
  if (!Number.isInteger(timeoutMs) || timeoutMs < 1000) throw new UsageError(ErrorCode.InvalidArgument, '--timeout must be at least 1000 ms');
  if (options.socket !== undefined && options.port !== undefined) throw new UsageError(ErrorCode.InvalidArgument, 'give --socket or --port, not both');
  mkdirSync(runDir(), { recursive: true });
  const name = `${options.volume}-${process.pid}`;
  const socket = options.socket ?? (options.port === undefined ? path.join(runDir(), `${name}.sock`) : undefined);
  if (options.device !== undefined) {
    const available = await nbdModuleAvailable();
    if (!available.ok) {
      throw new UsageError(
        ErrorCode.FailedPrecondition,
        `cannot attach ${options.device}: ${available.reason}.\n` +
          'Without the module, run the agent without --device and use a FUSE file + loop device instead:\n' +
          `  chard attach --volume ${options.volume} --socket /tmp/${options.volume}.sock &\n` +
          `  nbdfuse /mnt/${options.volume} 'nbd+unix:///${options.volume}?socket=/tmp/${options.volume}.sock' &\n` +
          `  losetup -f --show /mnt/${options.volume}/nbd`,
      );
    }
  }
  const logger = pino({ level: validateLogLevel(options.logLevel ?? 'info', '--log-level'), base: { agent: options.volume, pid: process.pid } }, destination(2));
  const listen = socket !== undefined ? { path: socket } : { host: '127.0.0.1', port: Number(options.port) };
  if (socket !== undefined) rmSync(socket, { force: true });
  const agent = await AttachAgent.start({ cluster: targets, credentials, volume: options.volume, listen, limits: { unavailableTimeoutMs: timeoutMs }, logger, ...(options.metrics !== undefined ? { metrics: options.metrics } : {}) });
  const where = 'path' in agent.address ? agent.address.path : `${agent.address.host}:${agent.address.port}`;
  const uri = 'path' in agent.address ? `nbd+unix:///${options.volume}?socket=${agent.address.path}` : `nbd://${where}/${options.volume}`;
  const statusFile = path.join(runDir(), `${name}.json`);
  let device: string | undefined;
  const publish = () => {
    const status: PublishedStatus = { ...agent.status(), pid: process.pid, device, updatedAt: new Date().toISOString() };
    if (status.stalledSinceMs !== undefined) logger.warn({ stalledMs: status.stalledSinceMs, inflight: status.inflight }, 'cluster not answering; requests are waiting');
    writeFileSync(`${statusFile}.tmp`, JSON.stringify(status));
    renameSync(`${statusFile}.tmp`, statusFile);
  };
  publish();
  const timer = setInterval(publish, 1000);
  console.log(options.json ? JSON.stringify({ pid: process.pid, listen: where, uri, statusFile, ...(agent.metricsAddress ? { metrics: agent.metricsAddress } : {}) }) : `chard attach: serving volume ${options.volume} at ${uri} (pid ${process.pid})`);

  if (options.device !== undefined) {
    const args = ['-b', '4096', '-t', String(Math.ceil(timeoutMs / 1000) + 30), '-C', String(connections), '-N', options.volume];
    const full = 'path' in agent.address ? ['-unix', agent.address.path, options.device, ...args] : [agent.address.host, String(agent.address.port), options.device, ...args];
    try {
      await execFileAsync('nbd-client', full);
    } catch (error) {
      clearInterval(timer);
      await agent.close();
      rmSync(statusFile, { force: true });
      throw new RemoteError(ErrorCode.Unavailable, `nbd-client ${full.join(' ')} failed: ${(error as { stderr?: string }).stderr?.trim() || (error as Error).message}`);
    }
    device = options.device;
    publish();
    console.log(`attached ${options.device} (${connections} connection${connections > 1 ? 's' : ''}); detach with: chard detach ${options.device}`);
  }

  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  clearInterval(timer);
  if (device !== undefined) await execFileAsync('nbd-client', ['-d', device]).catch(() => undefined);
  await agent.close();
  rmSync(statusFile, { force: true });
}

export function readStatuses(): PublishedStatus[] {
  const dir = runDir();
  if (!existsSync(dir)) return [];
  const out: PublishedStatus[] = [];
  for (const file of readdirSync(dir)) {
    if (!file.endsWith('.json')) continue;
    try {
      const status = JSON.parse(readFileSync(path.join(dir, file), 'utf8')) as PublishedStatus;
      try {
        process.kill(status.pid, 0);
        out.push(status);
      } catch {
        rmSync(path.join(dir, file), { force: true }); // the agent is gone
      }
    } catch {
      /* being rewritten */
    }
  }
  return out;
}

/** detach: disconnect a kernel device attached by an agent, and stop that agent. */
export async function detach(device: string): Promise<void> {
  const status = readStatuses().find((s) => s.device === device);
  try {
    await execFileAsync('nbd-client', ['-d', device]);
  } catch (error) {
    if (status === undefined) throw new UsageError(ErrorCode.NotFound, `${device} is not attached by a chard agent (nbd-client -d: ${(error as Error).message})`);
  }
  if (status !== undefined) process.kill(status.pid, 'SIGTERM');
}
