/**
 * local-cluster: a real local chard cluster for integration tests — started with the real CLI
 * (`chard cluster up --detach`) in a temporary directory, node processes killed with real
 * signals and restarted with `chard node start --dir`. Also a small block client that records
 * what was acknowledged, so tests can check that nothing acknowledged is ever lost.
 */

import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ClusterClient, NodeApi } from '../../src/cli/client.js';
import type { ClusterFile } from '../../src/cli/cluster-file.js';
import { isAlive } from '../../src/cli/processes.js';
import type { NodeConfig } from '../../src/node/config.js';
import type { SessionStamp } from '../../src/node/volume-backend.js';

const execFileAsync = promisify(execFile);
export const cliPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** chard: run the CLI; never throws for a non-zero exit (the result says). */
export async function chard(args: string[], timeoutMs = 120_000): Promise<CliResult> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [cliPath, ...args], { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : 1, stdout: e.stdout ?? '', stderr: e.stderr ?? String(error) };
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export class LocalCluster {
  readonly client: ClusterClient;
  private constructor(
    readonly dir: string,
    public file: ClusterFile,
  ) {
    this.client = new ClusterClient(file.nodes.map((n) => ({ id: n.id, admin: n.admin })), undefined, { operationTimeoutMs: 20_000 });
  }

  static async start(options: { nodes?: number; volumeSize?: string; nodeOptions?: Partial<NodeConfig> } = {}): Promise<LocalCluster> {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-it-'));
    const args = ['cluster', 'up', '--detach', '--json', '--nodes', String(options.nodes ?? 3), '--dir', dir, '--volume-size', options.volumeSize ?? '64MiB'];
    if (options.nodeOptions !== undefined) args.push('--node-options', JSON.stringify(options.nodeOptions));
    const result = await chard(args);
    if (result.code !== 0) {
      const logs = readLogs(dir);
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`cluster up failed (${result.code}): ${result.stderr}\n${logs}`);
    }
    return new LocalCluster(dir, JSON.parse(result.stdout) as ClusterFile);
  }

  reload(): void {
    this.file = JSON.parse(readFileSync(path.join(this.dir, 'cluster.json'), 'utf8')) as ClusterFile;
  }

  node(id: number) {
    const n = this.file.nodes.find((x) => x.id === id);
    if (n === undefined) throw new Error(`no node ${id}`);
    return n;
  }

  api(id: number): NodeApi {
    return this.client.api(this.node(id).admin);
  }

  async leader(timeoutMs = 10_000): Promise<number> {
    return this.client.waitForLeader(timeoutMs);
  }

  kill(id: number, signal: NodeJS.Signals = 'SIGKILL'): void {
    const n = this.node(id);
    process.kill(n.pid, signal);
  }

  async waitDead(id: number): Promise<void> {
    const pid = this.node(id).pid;
    while (isAlive(pid)) await sleep(10);
  }

  async restart(id: number): Promise<void> {
    const result = await chard(['node', 'start', '--dir', this.dir, '--id', String(id)]);
    if (result.code !== 0) throw new Error(`node start ${id} failed: ${result.stderr}`);
    this.reload();
  }

  /**
   * waitRejoined: wait until node `id` is back in the cluster: it follows a leader that counts it
   * as replicating, and it has everything up to the leader's commit index as first seen (a
   * writer may keep committing meanwhile; the restarted node need not win that race). `node
   * start` returns once the node serves, not once it caught up, so a test that kills the next
   * leader right after restart() may kill it while the restarted node is still behind, and
   * measure a double failure. The deadline is one only a hang reaches.
   */
  async waitRejoined(id: number, timeoutMs = 60_000): Promise<void> {
    const deadline = performance.now() + timeoutMs;
    let target: number | undefined;
    let last = 'no status yet';
    for (;;) {
      try {
        const own = await this.api(id).status(2_000);
        if (own.leader !== 0 && own.leader !== id) {
          const leader = await this.api(own.leader).status(2_000);
          target ??= leader.role === 'leader' ? leader.commitIndex : undefined;
          const progress = leader.progress.find((p) => p.id === id);
          if (target !== undefined && leader.role === 'leader' && progress !== undefined && progress.state === 'replicate' && progress.match >= target) {
            const now = await this.api(id).status(2_000);
            if (now.appliedIndex >= target) return;
          }
          last = `leader ${own.leader}: ${JSON.stringify(progress)}, target ${target}, node applied ${own.appliedIndex}`;
        } else {
          last = `node ${id} is ${own.role} and knows leader ${own.leader}`;
        }
      } catch (error) {
        last = String(error);
      }
      if (performance.now() > deadline) throw new Error(`node ${id} did not rejoin within ${timeoutMs} ms (${last})`);
      await sleep(20);
    }
  }

  alive(): number[] {
    return this.file.nodes.filter((n) => isAlive(n.pid)).map((n) => n.id);
  }

  async verify(timeoutMs = 30_000): Promise<CliResult> {
    return chard(['verify', '--dir', this.dir, '--json', '--timeout', String(timeoutMs)]);
  }

  logs(): string {
    return readLogs(this.dir);
  }

  /** warnings: every node's log lines at warn level and above, plus connection closes (first 40). */
  warnings(): string {
    const out: string[] = [];
    for (const n of this.file.nodes) {
      try {
        for (const line of readFileSync(path.join(this.dir, `n${n.id}`, 'node.log'), 'utf8').split('\n')) {
          if (/"level":(40|50|60)|closing connection/.test(line)) out.push(line.slice(0, 400));
        }
      } catch {
        /* no log */
      }
    }
    return out.slice(0, 40).join('\n');
  }

  async stop(keep = false): Promise<void> {
    this.client.close();
    await chard(['cluster', 'down', '--dir', this.dir]);
    if (!keep) rmSync(this.dir, { recursive: true, force: true });
  }
}

function readLogs(dir: string): string {
  const out: string[] = [];
  for (let id = 1; id <= 9; id++) {
    try {
      const text = readFileSync(path.join(dir, `n${id}`, 'node.log'), 'utf8');
      out.push(`--- n${id}/node.log (tail)\n${text.split('\n').slice(-25).join('\n')}`);
    } catch {
      /* no such node */
    }
  }
  return out.join('\n');
}

/**
 * AckedWriter: writes 4 KiB blocks through the cluster (following the leader, retrying with the
 * same session stamp) and remembers every write that was acknowledged, for later checking.
 */
export class AckedWriter {
  readonly acked = new Map<number, Buffer>();
  private sequence = 0;
  readonly sessionId = `test-${process.pid}-${Math.floor(performance.now())}`;
  constructor(
    private readonly client: ClusterClient,
    private readonly volume = 'default',
  ) {}

  async write(block: number, data: Buffer, timeoutMs = 20_000): Promise<void> {
    const sequence = ++this.sequence;
    const session: SessionStamp = { id: this.sessionId, sequence, ackedBelow: sequence };
    await this.client.leader((api) => api.submit({ kind: 'write', volume: this.volume, offset: block * 4096, data, session }), timeoutMs);
    this.acked.set(block, data);
  }

  /** check: every acknowledged block reads back identically from node `api`. */
  async check(api: NodeApi): Promise<string[]> {
    const problems: string[] = [];
    for (const [block, data] of this.acked) {
      const got = await retrying(() => api.read(this.volume, block * 4096, 4096));
      if (!got.equals(data)) problems.push(`block ${block}: read ${got.subarray(0, 8).toString('hex')}… expected ${data.subarray(0, 8).toString('hex')}…`);
    }
    return problems;
  }
}

/** retrying: run `fn` until it succeeds or `timeoutMs` passes (a restarted node's channel reconnects). */
export async function retrying<T>(fn: () => Promise<T>, timeoutMs = 15_000): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return await fn();
    } catch (error) {
      if (performance.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

export function block(tag: string): Buffer {
  const b = Buffer.alloc(4096);
  for (let i = 0; i < 4096; i += tag.length + 1) b.write(`${tag}|`, i);
  return b;
}

export function quantile(values: number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? 0;
}
