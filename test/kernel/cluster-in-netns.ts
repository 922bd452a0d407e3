/**
 * cluster-in-netns: a real chard cluster (node processes started by the real CLI) and a real attach
 * agent, all inside a network namespace a test created (test/kernel/guest.ts createNetns), so the
 * QEMU guest of that namespace reaches them as 10.0.2.2 and no traffic leaves the namespace.
 *
 * Every CLI call runs as `ip netns exec NS node dist/src/cli/main.js ...`; the nodes it detaches
 * stay in the namespace. Signals go by pid from the host (same pid namespace). `destroy()` always
 * leaves nothing running: `cluster down`, then SIGKILL for any pid of cluster.json still alive
 * (a node restarted by `node start` is detached from us, so the namespace cannot kill it for us).
 */

import { execFile, type ChildProcess } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync, type WriteStream } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { assert } from '../../src/assert.js';
import type { ClusterFile } from '../../src/cli/cluster-file.js';
import { isAlive, stopProcess } from '../../src/cli/processes.js';
import { killChild, type Netns } from './guest.js';

/** cliPath: the compiled CLI (dist/src/cli/main.js), found relative to this compiled file. */
export const cliPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

export interface NodeStatus {
  id: number;
  reachable: boolean;
  role?: string;
  term?: number;
  commitIndex?: number;
  appliedIndex?: number;
  lag?: number;
}

export interface ClusterStatus {
  leader: number;
  nodes: NodeStatus[];
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** runCli: `ip netns exec NS node main.js ARGS` (or on the host when ns is undefined); never rejects. */
export function runCli(ns: string | undefined, args: string[], options: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<CliResult> {
  const started = performance.now();
  const [command, argv] = ns === undefined ? [process.execPath, [cliPath, ...args]] : ['ip', ['netns', 'exec', ns, process.execPath, cliPath, ...args]];
  return new Promise((resolve) => {
    execFile(
      command,
      argv,
      { timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8', env: { ...process.env, ...options.env } },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
        const note = error !== null && error.killed ? `\n[killed after ${options.timeoutMs ?? 60_000} ms]` : '';
        resolve({ code, stdout, stderr: stderr + note, ms: Math.round(performance.now() - started) });
      },
    );
  });
}

/** NetnsCluster: a local chard cluster (`chard cluster up --dir DIR`) whose processes live in `netns`. */
export class NetnsCluster {
  private agent: ChildProcess | undefined;
  private agentLog: WriteStream | undefined;
  private destroyed = false;

  private constructor(
    readonly netns: Netns,
    readonly dir: string,
    readonly runDir: string,
  ) {}

  /**
   * up: `chard cluster up --nodes N --dir DIR --detach --json [--certs CERTS]` inside the namespace; resolves once a
   * leader is elected and the default volume exists (what the CLI guarantees). On failure the
   * partial cluster is torn down and the error carries the node logs.
   */
  static async up(netns: Netns, dir: string, options: { nodes: number; volumeSize: string; nodeOptions?: object; certs?: string }): Promise<NetnsCluster> {
    assert(options.nodes >= 1 && options.nodes <= 7, 'nodes out of range');
    mkdirSync(dir, { recursive: true });
    const cluster = new NetnsCluster(netns, dir, path.join(dir, 'run'));
    mkdirSync(cluster.runDir, { recursive: true });
    const args = ['cluster', 'up', '--nodes', String(options.nodes), '--dir', dir, '--detach', '--json', '--volume-size', options.volumeSize];
    if (options.nodeOptions !== undefined) args.push('--node-options', JSON.stringify(options.nodeOptions));
    // --certs: mutual TLS on every link and NBD TLS `required`, with the certificates in that directory.
    if (options.certs !== undefined) args.push('--certs', options.certs);
    const result = await cluster.cli(args, 60_000);
    if (result.code !== 0) {
      const logs = cluster.logTails();
      await cluster.destroy();
      throw new Error(`cluster up failed (${result.code}): ${result.stderr}\n${logs}`);
    }
    return cluster;
  }

  /** cli: one CLI command inside the namespace (CHARD_RUN_DIR set to this cluster's run directory). */
  cli(args: string[], timeoutMs = 60_000): Promise<CliResult> {
    return runCli(this.netns.name, args, { timeoutMs, env: { CHARD_RUN_DIR: this.runDir } });
  }

  file(): ClusterFile {
    return JSON.parse(readFileSync(path.join(this.dir, 'cluster.json'), 'utf8')) as ClusterFile;
  }

  node(id: number): ClusterFile['nodes'][number] {
    const entry = this.file().nodes.find((n) => n.id === id);
    assert(entry !== undefined, `no node ${id} in cluster.json`);
    return entry;
  }

  /** status: `chard status --json` (exit 1 only means "no leader": the report is still parsed). */
  async status(): Promise<ClusterStatus> {
    const result = await this.cli(['status', '--dir', this.dir, '--json'], 20_000);
    try {
      return JSON.parse(result.stdout) as ClusterStatus;
    } catch {
      throw new Error(`chard status failed (${result.code}): ${result.stderr}`);
    }
  }

  /** waitFor: polls `chard status` until `ok` holds, at most timeoutMs; returns the last report. */
  async waitFor(what: string, ok: (status: ClusterStatus) => boolean, timeoutMs: number): Promise<ClusterStatus> {
    const deadline = performance.now() + timeoutMs;
    let last: ClusterStatus | undefined;
    let lastError = '';
    while (performance.now() < deadline) {
      try {
        last = await this.status();
        if (ok(last)) return last;
      } catch (error) {
        lastError = String(error);
      }
      await sleep(100);
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last status ${JSON.stringify(last)} ${lastError}`);
  }

  /** leader: the current leader's id (waits for one, bounded). */
  async leader(timeoutMs = 20_000): Promise<number> {
    return (await this.waitFor('a leader', (s) => s.leader > 0, timeoutMs)).leader;
  }

  /** killNode: SIGKILL node `id` (a real crash) and wait until the process is gone. */
  async killNode(id: number, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const pid = this.node(id).pid;
    assert(isAlive(pid), `node ${id} (pid ${pid}) is not running`);
    process.kill(pid, signal);
    const deadline = performance.now() + 20_000;
    while (isAlive(pid)) {
      if (performance.now() > deadline) throw new Error(`node ${id} (pid ${pid}) survived ${signal} for 20 s`);
      await sleep(10);
    }
  }

  /** stopNode: SIGTERM, then SIGKILL after the grace period; resolves once the process is gone. */
  async stopNode(id: number): Promise<void> {
    await stopProcess(this.node(id).pid, 10_000);
  }

  /** startNode: `chard node start --dir DIR --id ID` (detached, inside the namespace). */
  startNode(id: number): Promise<CliResult> {
    // node start waits until the node serves; its own deadline (--wait) inside the CLI's, so a slow start is a TIMEOUT naming the log.
    return this.cli(['node', 'start', '--dir', this.dir, '--id', String(id), '--wait', '25000'], 30_000);
  }

  /**
   * wipeForRejoin: delete everything in DIR/nID except node.json, and rewrite node.json as a
   * joining node (`"join": true`, no initialMembers), keeping its id, addresses and limits.
   */
  wipeForRejoin(id: number): { raft: string; admin: string; nbd: string } {
    const nodeDir = path.join(this.dir, `n${id}`);
    for (const name of readdirSync(nodeDir)) if (name !== 'node.json') rmSync(path.join(nodeDir, name), { recursive: true, force: true });
    const configPath = path.join(nodeDir, 'node.json');
    const config = JSON.parse(readFileSync(configPath, 'utf8')) as Record<string, unknown> & { listen: { raft: string; admin: string; nbd: string } };
    const members = config['initialMembers'];
    delete config['initialMembers'];
    config['join'] = true;
    // The current members, so the rejoining node can answer the leader (NodeConfig.peers).
    if (members !== undefined) config['peers'] = members;
    writeFileSync(configPath, `${JSON.stringify(config, null, 2)}\n`);
    return config.listen;
  }

  /**
   * startAgent: `chard attach --dir DIR --volume VOLUME --port PORT --json` inside the namespace;
   * resolves once it printed where it serves. Its output goes to DIR/agent.log (drained, so the
   * agent never blocks on a full pipe).
   */
  async startAgent(volume: string, port: number): Promise<void> {
    assert(this.agent === undefined, 'agent already started');
    const log = createWriteStream(path.join(this.dir, 'agent.log'));
    this.agentLog = log;
    const agent = this.netns.spawn(process.execPath, [cliPath, 'attach', '--dir', this.dir, '--volume', volume, '--port', String(port), '--json'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, CHARD_RUN_DIR: this.runDir },
    });
    this.agent = agent;
    let firstLine = '';
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`attach agent did not start within 30 s; see ${path.join(this.dir, 'agent.log')}`)), 30_000);
      agent.stdout?.on('data', (chunk: Buffer) => {
        log.write(chunk);
        if (firstLine.includes('\n')) return;
        firstLine += chunk.toString();
        if (/"listen"/.test(firstLine)) {
          clearTimeout(timer);
          resolve();
        }
      });
      agent.stderr?.on('data', (chunk: Buffer) => log.write(chunk));
      agent.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`attach agent exited (${code ?? signal}) before serving: ${firstLine}; see ${path.join(this.dir, 'agent.log')}`));
      });
    });
  }

  /** agentStatus: `chard attach --status --json` for this cluster's run directory. */
  async agentStatus(): Promise<Record<string, unknown>[]> {
    const result = await runCli(undefined, ['attach', '--status', '--json'], { env: { CHARD_RUN_DIR: this.runDir }, timeoutMs: 20_000 });
    if (result.code !== 0) throw new Error(`attach --status failed (${result.code}): ${result.stderr}`);
    return JSON.parse(result.stdout) as Record<string, unknown>[];
  }

  /**
   * transportCounters: the `transport.*` and `raft.message*` counters of the node whose admin
   * address is `admin` (its metrics RPC, called from inside the namespace): evidence for reports.
   */
  async transportCounters(admin: string): Promise<Record<string, number>> {
    const clientModule = path.resolve(path.dirname(cliPath), 'client.js');
    const script =
      `const { ClusterClient } = await import(${JSON.stringify(clientModule)});` +
      `const c = new ClusterClient([{ id: 0, admin: ${JSON.stringify(admin)} }]);` +
      `try { const m = await c.api(${JSON.stringify(admin)}).metrics();` +
      `console.log(JSON.stringify(Object.fromEntries(Object.entries(m.counts).filter(([k]) => /^(transport|raft\\.message)/.test(k))))); } finally { c.close(); }`;
    const result = await new Promise<{ stdout: string; stderr: string; error: Error | null }>((resolve) =>
      execFile('ip', ['netns', 'exec', this.netns.name, process.execPath, '--input-type=module', '-e', script], { timeout: 15_000, encoding: 'utf8' }, (error, stdout, stderr) =>
        resolve({ stdout, stderr, error }),
      ),
    );
    if (result.error !== null) throw new Error(`metrics of ${admin}: ${result.stderr || result.error.message}`);
    return JSON.parse(result.stdout) as Record<string, number>;
  }

  /** logTails: the last lines of every node.log and of agent.log, for failure reports. */
  logTails(lines = 30): string {
    const out: string[] = [];
    const files = existsSync(this.dir)
      ? readdirSync(this.dir)
          .filter((name) => /^n\d+$/.test(name))
          .map((name) => path.join(this.dir, name, 'node.log'))
      : [];
    files.push(path.join(this.dir, 'agent.log'));
    for (const file of files) {
      try {
        const text = readFileSync(file, 'utf8').trimEnd().split('\n');
        out.push(`--- ${file} (last ${Math.min(lines, text.length)} of ${text.length} lines)\n${text.slice(-lines).join('\n')}`);
      } catch {
        // no such log
      }
    }
    return out.join('\n');
  }

  /** destroy: idempotent; stops the agent and every node (cluster down, then SIGKILL what is left). */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    if (this.agent !== undefined) await killChild(this.agent, 3_000);
    this.agentLog?.end();
    if (!existsSync(path.join(this.dir, 'cluster.json'))) return;
    await this.cli(['cluster', 'down', '--dir', this.dir], 30_000);
    for (const node of this.file().nodes) {
      if (!isAlive(node.pid)) continue;
      try {
        process.kill(node.pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
  }
}
