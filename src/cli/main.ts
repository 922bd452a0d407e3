#!/usr/bin/env node
/**
 * main: the `chard` command line. Every command has --help; every command that reports has --json.
 * Errors print `chard: CODE: message` on stderr and exit 2 for usage errors (bad input, unknown
 * volume: nothing changed), 1 for everything else (cluster unavailable, divergence found).
 */

import path from 'node:path';
import { Command, Option } from 'commander';
import { ChardError, ErrorCode, UsageError, fromSystemError } from '../errors.js';
import { ClusterClient, clusterCredentials, clusterTargets } from './client.js';
import { formatSize, parseIntOption, parseSize, table } from './cluster-file.js';
import { clusterDown, clusterUp, nodeInit, nodeStartFromDir, nodeStartWaitMsDefault } from './cluster.js';
import { hostNodeConfig, hostPorts, parseMembers, validateLogLevel } from '../node/config.js';

// grpc-js hands an IP target to TLS as the server name, which Node flags (DEP0123) on every TLS
// call to 127.0.0.1 or 10.0.0.x; the certificate is still checked against the IP address SAN.
const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
process.emitWarning = ((...args: unknown[]) => {
  if (args[2] === 'DEP0123' || (args[1] as { code?: string } | undefined)?.code === 'DEP0123') return;
  emitWarning(...args);
}) as typeof process.emitWarning;

const program = new Command();
program
  .name('chard')
  .description('chard: a Raft-replicated block store served over NBD')
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)');

interface TargetOptions {
  dir?: string;
  cluster?: string;
  certs?: string;
  json?: boolean;
}

function targetOptions(cmd: Command): Command {
  return cmd
    .option('--dir <dir>', 'directory of a local cluster (reads DIR/cluster.json)')
    .option('--cluster <addrs>', 'admin addresses HOST:PORT,... of a cluster (instead of --dir)')
    .option('--certs <dir>', 'mutual TLS with DIR/ca-cert.pem, client-cert.pem, client-key.pem (default: as DIR/cluster.json says)')
    .option('--json', 'print JSON');
}

async function withClient<T>(options: TargetOptions, run: (client: ClusterClient) => Promise<T>): Promise<T> {
  const client = new ClusterClient(clusterTargets(options), clusterCredentials(options));
  try {
    return await run(client);
  } finally {
    client.close();
  }
}

function print(options: { json?: boolean }, value: unknown, text: () => string): void {
  if (options.json) console.log(JSON.stringify(value, null, 2));
  else console.log(text());
}

function parseId(text: string): number {
  const id = Number(text);
  if (!Number.isInteger(id) || id < 1) throw new UsageError(ErrorCode.InvalidArgument, `bad node id "${text}": a positive integer`);
  return id;
}

// ------------------------------------------------------------------ cluster

const cluster = program.command('cluster').description('run a local cluster of node processes');
cluster
  .command('up')
  .description('start N node processes in DIR, create the default volume, write DIR/cluster.json')
  .option('--nodes <n>', 'number of nodes (1..7)', '3')
  .option('--dir <dir>', 'data directory', './data')
  .option('--base-port <port>', 'first port (3 per node: raft, admin, nbd); 0 = any free ports', '0')
  .option('--volume-size <size>', 'size of the default volume', '1GiB')
  .option('--detach', 'return once a leader is elected (default: run in the foreground until Ctrl-C)')
  .option('--log-level <level>', "the nodes' log level, written to each node.json (fatal, error, warn, info, debug, trace, silent)")
  .option('--tls', 'mutual TLS on every link, NBD TLS required (certificates made in --certs if absent)')
  .option('--certs <dir>', 'certificate directory for --tls (default DIR/certs); implies --tls')
  .option('--json', 'print the cluster file as JSON')
  .addOption(new Option('--node-options <json>', 'extra node.json fields for every node (limits, store)').hideHelp())
  .action(async (options) => {
    let nodeOptions: object | undefined;
    if (options.nodeOptions !== undefined) {
      try {
        nodeOptions = JSON.parse(options.nodeOptions) as object;
      } catch {
        throw new UsageError(ErrorCode.InvalidArgument, '--node-options must be JSON');
      }
    }
    await clusterUp({
      ...(nodeOptions ? { nodeOptions } : {}),
      nodes: Number(options.nodes),
      dir: options.dir,
      basePort: Number(options.basePort),
      volumeSizeBytes: parseSize(options.volumeSize),
      detach: options.detach === true,
      json: options.json === true,
      ...(options.logLevel !== undefined ? { logLevel: validateLogLevel(options.logLevel, '--log-level') } : {}),
      ...(options.tls === true || options.certs !== undefined ? { tls: { certs: options.certs ?? path.join(options.dir, 'certs') } } : {}),
    });
  });
cluster
  .command('down')
  .description('stop every node of the local cluster in DIR (SIGTERM, then SIGKILL after a grace period)')
  .option('--dir <dir>', 'data directory', './data')
  .option('--json', 'print JSON')
  .action(async (options) => {
    const stopped = await clusterDown(options.dir);
    print(options, stopped, () => stopped.map((s) => `node ${s.id}: ${s.result}`).join('\n'));
  });

// ------------------------------------------------------------------ certs

const certs = program.command('certs').description('TLS certificates of a cluster (openssl)');
certs
  .command('init')
  .description('make a cluster CA (if DIR has none) and node + client certificates in the layout qemu, nbdkit and libnbd read')
  .requiredOption('--dir <dir>', 'certificate directory (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem)')
  .option('--node <id>', 'issue the certificates of node ID into DIR/node-ID/ (for a multi-host cluster)')
  .option('--host <name...>', 'DNS name or IP address the node certificate is valid for (repeatable; default localhost, 127.0.0.1, ::1)')
  .option('--days <n>', 'validity of the new certificates in days', '825')
  .option('--force', 'replace existing node and client certificates (the CA is kept)')
  .option('--json', 'print JSON')
  .action(async (options) => {
    const { certsInit } = await import('./certs.js');
    const result = certsInit({
      dir: options.dir,
      ...(options.node !== undefined ? { node: parseId(options.node) } : {}),
      ...(options.host !== undefined ? { hosts: options.host as string[] } : {}),
      days: Number(options.days),
      force: options.force === true,
    });
    print(options, result, () =>
      [`${result.caCreated ? 'created the cluster CA in' : 'used the cluster CA in'} ${result.dir}`, `node certificate valid for: ${result.hosts.join(', ')}`, ...result.written.map((f) => `  wrote ${f}`)].join('\n'),
    );
  });

// ------------------------------------------------------------------ node

const node = program.command('node').description('run one node');
node
  .command('start')
  .description('run a node in the foreground (--config FILE), or restart node ID of a local cluster (--dir DIR --id ID)')
  .option('--config <file>', 'node configuration file (JSON, see docs/operations.md)')
  .option('--dir <dir>', 'directory of a local cluster')
  .option('--id <id>', 'node id within --dir')
  .option('--foreground', 'with --dir: run in this process instead of detaching')
  .option('--log-level <level>', 'with --config or --foreground: log level (fatal, error, warn, info, debug, trace, silent); overrides the config file')
  .option('--json', 'with --dir: print {"id", "pid"}')
  .option('--wait <ms>', 'with --dir: wait until the node serves, every listener bound (0: return once it is spawned)', String(nodeStartWaitMsDefault))
  .action(async (options) => {
    if (options.config !== undefined) {
      const { runNodeProcess } = await import('../node/process.js');
      await runNodeProcess(options.config, options.logLevel !== undefined ? { logLevel: options.logLevel } : {});
      return;
    }
    if (options.dir === undefined || options.id === undefined) {
      throw new UsageError(ErrorCode.InvalidArgument, 'node start needs --config FILE, or --dir DIR and --id ID');
    }
    const waitMs = parseIntOption(options.wait, '--wait', 0, 3_600_000);
    const result = await nodeStartFromDir(options.dir, parseId(options.id), options.foreground === true, options.logLevel, waitMs);
    if (result !== undefined) print(options, { id: parseId(options.id), pid: result.pid }, () => `node ${options.id} ${waitMs > 0 ? 'started' : 'spawned'} (pid ${result.pid})`);
  });

node
  .command('init')
  .description(
    'with --dir: prepare a new (joining) node ID in the local cluster DIR; then start it and `chard member add` it. ' +
      'With --out: write the node.json of a node that has a host to itself (NBD on 10809; see docs/deploy.md)',
  )
  .option('--dir <dir>', 'directory of a local cluster')
  .requiredOption('--id <id>', 'id of the new node')
  .option('--out <file>', 'write a one-node-per-host config to FILE (instead of --dir)')
  .option('--cluster-id <id>', 'with --out: the cluster id (the same on every host)')
  .option('--host <addr>', 'with --out: name or IP this node listens on and the others dial')
  .option('--members <list>', 'with --out: ID=HOST,... of the initial members (or, with --join, of the current members)')
  .option('--join', 'with --out: a node that joins a running cluster (then `chard member add`)')
  .option('--data-dir <dir>', 'with --out: data directory', '/var/lib/chard')
  .option('--nbd-port <port>', 'with --out: NBD port', String(hostPorts.nbd))
  .option('--raft-port <port>', 'with --out: raft port', String(hostPorts.raft))
  .option('--admin-port <port>', 'with --out: admin port', String(hostPorts.admin))
  .option('--metrics-port <port>', 'with --out: Prometheus metrics port', String(hostPorts.metrics))
  .option('--json', 'print JSON')
  .action(async (options) => {
    if (options.out !== undefined) {
      if (options.dir !== undefined) throw new UsageError(ErrorCode.InvalidArgument, 'give --dir or --out, not both');
      for (const flag of ['clusterId', 'host', 'members'] as const) {
        if (options[flag] === undefined) throw new UsageError(ErrorCode.InvalidArgument, `node init --out needs --${flag.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`);
      }
      const port = (flag: string, text: string) => {
        const n = Number(text);
        if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(ErrorCode.InvalidArgument, `--${flag} must be a port 1..65535, got "${text}"`);
        return n;
      };
      const config = hostNodeConfig({
        clusterId: options.clusterId,
        id: parseId(options.id),
        host: options.host,
        members: parseMembers(options.members),
        join: options.join === true,
        dataDir: options.dataDir,
        ports: { nbd: port('nbd-port', options.nbdPort), raft: port('raft-port', options.raftPort), admin: port('admin-port', options.adminPort), metrics: port('metrics-port', options.metricsPort) },
      });
      const { existsSync, writeFileSync } = await import('node:fs');
      if (existsSync(options.out)) throw new UsageError(ErrorCode.AlreadyExists, `${options.out} exists; not overwriting it`);
      writeFileSync(options.out, `${JSON.stringify(config, null, 2)}\n`);
      print(options, config, () => `wrote ${options.out} (node ${config.id}: nbd ${config.listen.nbd}, raft ${config.listen.raft}, admin ${config.listen.admin}, metrics ${config.metrics}); start it with: chard node start --config ${options.out}`);
      return;
    }
    if (options.dir === undefined) throw new UsageError(ErrorCode.InvalidArgument, 'node init needs --dir DIR (a local cluster) or --out FILE (a node on its own host)');
    const entry = await nodeInit(options.dir, parseId(options.id));
    print(options, entry, () =>
      [
        `node ${entry.id} prepared in ${entry.data} (raft ${entry.raft}, admin ${entry.admin}, nbd ${entry.nbd}); next:`,
        `  chard node start --dir ${options.dir} --id ${entry.id}`,
        `  chard member add ${entry.id} --raft ${entry.raft} --admin ${entry.admin} --nbd ${entry.nbd} --learner --wait --dir ${options.dir}`,
        `  chard member promote ${entry.id} --dir ${options.dir}`,
      ].join('\n'),
    );
  });

// ------------------------------------------------------------------ status

/** statusText: the status table; the leader's row is marked with `*`, lag is entries behind the leader's commit. */
function statusText(report: Awaited<ReturnType<ClusterClient['clusterStatus']>>): string {
  const rows = report.nodes.map((n) => [
    `${n.id}${n.id === report.leader ? ' *' : ''}`,
    n.address,
    n.reachable ? (n.role ?? '') : 'unreachable',
    n.term ?? '',
    n.commitIndex ?? '',
    n.appliedIndex ?? '',
    n.lag ?? '',
  ]);
  return `leader: ${report.leader === 0 ? 'none' : report.leader}\n${table(['id', 'admin', 'role', 'term', 'commit', 'applied', 'lag'], rows)}`;
}

/** watchIntervalMin: the fastest --watch refresh (each round asks every node). */
const watchIntervalMin = 100;
const clearScreen = '\x1b[H\x1b[2J';

targetOptions(program.command('status').description('leader, and per node: role, term, commit and applied index, lag, reachable'))
  .option('--watch', 'refresh until Ctrl-C (clears the terminal and redraws; with --json one line per refresh)')
  .option('--interval <ms>', 'with --watch: refresh interval', '1000')
  .action(async (options: TargetOptions & { watch?: boolean; interval: string }) => {
    await withClient(options, async (client) => {
      if (options.watch !== true) {
        const report = await client.clusterStatus();
        print(options, report, () => statusText(report));
        if (report.leader === 0) process.exitCode = 1;
        return;
      }
      const interval = Number(options.interval);
      if (!Number.isInteger(interval) || interval < watchIntervalMin || interval > 3_600_000) {
        throw new UsageError(ErrorCode.InvalidArgument, `--interval must be ${watchIntervalMin}..3600000 ms, got "${options.interval}"`);
      }
      let stopped = false;
      let wake: (() => void) | undefined;
      let timer: NodeJS.Timeout | undefined;
      const stop = () => {
        stopped = true;
        clearTimeout(timer);
        wake?.();
      };
      process.once('SIGINT', stop);
      process.once('SIGTERM', stop);
      while (!stopped) {
        const started = Date.now();
        // The call deadline is the one-shot status's 2 s, not the interval: with --interval 150 a
        // node whose answer took 150 ms on a loaded machine was shown unreachable. A slow answer
        // delays that redraw instead.
        const report = await client.clusterStatus();
        if (stopped) break;
        if (options.json) process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), ...report })}\n`);
        else process.stdout.write(`${clearScreen}${new Date().toISOString()}  every ${interval} ms, Ctrl-C stops\n${statusText(report)}\n`);
        await new Promise<void>((resolve) => {
          wake = resolve;
          timer = setTimeout(resolve, Math.max(0, interval - (Date.now() - started)));
        });
      }
    });
  });

// ------------------------------------------------------------------ volume

const volume = program.command('volume').description('create, list, resize and delete volumes');
targetOptions(volume.command('create <name>').description('create a volume').requiredOption('--size <size>', 'size, e.g. 1GiB')).action(
  async (name: string, options: TargetOptions & { size: string }) => {
    const size = parseSize(options.size);
    await withClient(options, async (client) => {
      const created = await client.volumeCreate(name, size);
      print(options, created, () => `created volume ${name} (${formatSize(size)})`);
    });
  },
);
targetOptions(volume.command('list').description('list volumes')).action(async (options: TargetOptions) => {
  await withClient(options, async (client) => {
    const volumes = await client.any((api) => api.volumeList());
    print(options, volumes, () => table(['name', 'size'], volumes.map((v) => [v.name, formatSize(v.sizeBytes)])));
  });
});
targetOptions(volume.command('resize <name>').description('change the size of a volume').requiredOption('--size <size>', 'new size')).action(
  async (name: string, options: TargetOptions & { size: string }) => {
    const size = parseSize(options.size);
    await withClient(options, async (client) => {
      const resized = await client.volumeResize(name, size);
      print(options, resized, () => `resized volume ${name} to ${formatSize(size)}`);
    });
  },
);
targetOptions(volume.command('delete <name>').description('delete a volume and its blocks')).action(async (name: string, options: TargetOptions) => {
  await withClient(options, async (client) => {
    await client.volumeDelete(name);
    print(options, { deleted: name }, () => `deleted volume ${name}`);
  });
});

// ------------------------------------------------------------------ member

const member = program.command('member').description('list, add, promote and remove cluster members');
targetOptions(member.command('list').description('voters and learners with their addresses and replication progress')).action(
  async (options: TargetOptions) => {
    await withClient(options, async (client) => {
      const members = await client.leader((api) => api.memberList());
      print(options, members, () => table(['id', 'role', 'raft', 'admin', 'nbd', 'match', 'state'], members.map((m) => [m.id, m.role, m.raft, m.admin, m.nbd, m.match, m.state])));
    });
  },
);
targetOptions(
  member
    .command('add <id>')
    .description('add a node (as a learner with --learner; a learner catches up, then `member promote`)')
    .requiredOption('--raft <addr>', 'raft address HOST:PORT of the new node')
    .option('--admin <addr>', 'admin address HOST:PORT of the new node', '')
    .option('--nbd <addr>', 'NBD address HOST:PORT of the new node', '')
    .option('--learner', 'add as a non-voting learner (recommended: promote once caught up)')
    .option('--wait', 'with --learner: wait until it has caught up, showing progress'),
).action(async (idText: string, options: TargetOptions & { raft: string; admin: string; nbd: string; learner?: boolean; wait?: boolean }) => {
  const id = parseId(idText);
  await withClient(options, async (client) => {
    await client.change((api) => api.memberAdd(id, { raft: options.raft, admin: options.admin, nbd: options.nbd }, options.learner === true), [ErrorCode.AlreadyExists]);
    if (options.wait) await client.waitCaughtUp(id, options.json !== true);
    print(options, { added: id, learner: options.learner === true }, () => `added node ${id}${options.learner ? ' as a learner' : ''}`);
  });
});
targetOptions(member.command('promote <id>').description('make a caught-up learner a voter')).action(async (idText: string, options: TargetOptions) => {
  const id = parseId(idText);
  await withClient(options, async (client) => {
    try {
      await client.leader((api) => api.memberPromote(id));
    } catch (error) {
      // A learner that still lags: show its progress until it has caught up, then promote.
      if (!(error instanceof UsageError) || error.code !== ErrorCode.FailedPrecondition || !/behind/.test(error.message)) throw error;
      await client.waitCaughtUp(id, options.json !== true);
      await client.leader((api) => api.memberPromote(id));
    }
    print(options, { promoted: id }, () => `promoted node ${id} to voter`);
  });
});
targetOptions(member.command('remove <id>').description('remove a member (the leader may remove itself; it hands over first)')).action(
  async (idText: string, options: TargetOptions) => {
    const id = parseId(idText);
    await withClient(options, async (client) => {
      await client.change((api) => api.memberRemove(id), [ErrorCode.NotFound]);
      print(options, { removed: id }, () => `removed node ${id}`);
    });
  },
);

// ------------------------------------------------------------------ leader

const leader = program.command('leader').description('leadership');
targetOptions(leader.command('transfer <id>').description('hand leadership to voter ID')).action(async (idText: string, options: TargetOptions) => {
  const id = parseId(idText);
  await withClient(options, async (client) => {
    await client.leader((api) => api.leaderTransfer(id));
    print(options, { leader: id }, () => `node ${id} is the leader`);
  });
});

// ------------------------------------------------------------------ verify

targetOptions(program.command('verify').description('compare a hash of every replica at the same applied index; exit 1 on divergence'))
  .option('--timeout <ms>', 'how long to wait for replicas to reach the same applied index', '30000')
  .action(async (options: TargetOptions & { timeout: string }) => {
    await withClient(options, async (client) => {
      const result = await client.verify(parseIntOption(options.timeout, '--timeout', 1, 3_600_000));
      print(options, result, () =>
        [`${result.equal ? 'equal' : 'DIVERGED'} at applied index ${result.appliedIndex}`, ...result.replicas.map((r) => `node ${r.id}: ${r.hash}`)].join('\n'),
      );
      if (!result.equal) process.exitCode = 1;
    });
  });

// ------------------------------------------------------------------ bench

program
  .command('bench')
  .description('measure a local cluster with fio next to the local disk, nbdkit file and nbdkit file forcing FUA (same run): figures, ratios, targets, write amplification, CPU, memory (docs/benchmarks.md)')
  .option('--runtime <s>', 'seconds per fio job', '5')
  .option('--quick', 'a short run (1 s per job, 64 MiB region) that only shows the bench works')
  .option('--nodes <n>', 'cluster size', '3')
  .option('--dir <dir>', 'where the servers keep their data (default: the system temp directory)')
  .option('--results <file>', "write the figures as JSON here ('' for none)", 'results.json')
  .option('--profile <dir>', 'run the nodes under node --cpu-prof and write their profiles to DIR')
  .option('--keep', 'keep the data directory')
  .option('--json', 'print JSON')
  .action(async (options) => {
    if (options.profile !== undefined) process.env.CHARD_NODE_CPU_PROF_DIR = path.resolve(String(options.profile));
    const { runBench, formatBench } = await import('../bench/bench.js');
    const runtimeSeconds = Number(options.runtime);
    if (!(runtimeSeconds > 0 && runtimeSeconds <= 600)) throw new UsageError(ErrorCode.InvalidArgument, '--runtime must be 1..600 seconds');
    const nodes = Number(options.nodes);
    if (!(Number.isInteger(nodes) && nodes >= 1 && nodes <= 7)) throw new UsageError(ErrorCode.InvalidArgument, '--nodes must be 1..7');
    const result = await runBench({
      runtimeSeconds,
      nodes,
      quick: options.quick === true,
      dir: options.dir as string | undefined,
      resultsFile: String(options.results),
      json: options.json === true,
      keep: options.keep === true,
    });
    print(options, result, () => formatBench(result));
  });

// ------------------------------------------------------------------ attach

program
  .command('attach')
  .description('run a local NBD agent for a volume that follows the leader across failovers; with --device, attach /dev/nbdX to it')
  .option('--cluster <addrs>', 'admin addresses HOST:PORT,... of the cluster')
  .option('--dir <dir>', 'directory of a local cluster (instead of --cluster)')
  .option('--certs <dir>', 'mutual TLS to the cluster with DIR/client-cert.pem (default: as DIR/cluster.json says)')
  .option('--volume <name>', 'volume to serve', 'default')
  .option('--socket <path>', 'serve on this unix socket (default: one in the runtime directory)')
  .option('--port <n>', 'serve on 127.0.0.1:N instead of a unix socket')
  .option('--device <dev>', 'attach this kernel device (e.g. /dev/nbd0) with nbd-client')
  .option('--connections <n>', 'kernel connections (the agent advertises CAN_MULTI_CONN)', '2')
  .option('--timeout <ms>', 'how long requests wait for an unreachable cluster before failing with EIO', '120000')
  .option('--metrics <addr>', 'serve Prometheus metrics on HOST:PORT (GET /metrics)')
  .option('--log-level <level>', 'agent log level on stderr (fatal, error, warn, info, debug, trace, silent)', 'info')
  .option('--status', 'print the state of the running agents and exit')
  .option('--json', 'print JSON')
  .action(async (options) => {
    const { attach, readStatuses } = await import('../attach/command.js');
    if (options.status) {
      const statuses = readStatuses();
      print(options, statuses, () =>
        statuses.length === 0
          ? 'no attach agent is running'
          : table(
              ['pid', 'volume', 'listen', 'device', 'leader', 'inflight', 'retries', 'failovers', 'last stall ms', 'waiting ms', 'last failed attempt'],
              statuses.map((s) => [
                s.pid,
                s.volume,
                s.listen,
                s.device ?? '',
                s.leader ?? '',
                s.inflight,
                s.retries,
                s.failovers,
                s.lastFailoverStallMs,
                s.stalledSinceMs ?? '',
                s.lastAttemptError === undefined ? '' : `${s.lastAttemptError.code} at ${s.lastAttemptError.address}, ${Math.round(s.lastAttemptError.agoMs / 1000)} s ago`,
              ]),
            ),
      );
      return;
    }
    await attach(options);
    process.exit(0);
  });

program
  .command('detach <device>')
  .description('disconnect a kernel nbd device attached by `chard attach --device` and stop its agent')
  .option('--json', 'print JSON')
  .action(async (device: string, options: { json?: boolean }) => {
    const { detach } = await import('../attach/command.js');
    await detach(device);
    print(options, { detached: device }, () => `detached ${device}`);
  });

// ------------------------------------------------------------------ chaos

program
  .command('chaos')
  .description('Jepsen-style run: start a local cluster, run clients, inject seeded faults, heal, check; exit 0 only when valid')
  .option('--nodes <n>', 'cluster size', '5')
  .option('--duration <d>', 'workload duration (e.g. 60s, 2m, 30m)', '60s')
  .option('--seed <n>', 'seed of the fault schedule and the workload (default: random, printed)')
  .option('--faults <list>', 'kill,pause,partition,partition-oneway,member,transfer,all,none', 'all')
  .option('--clients <n>', 'workload clients (client 0 goes through the attach agent)', '4')
  .option('--out <dir>', 'output directory (report.html, history.jsonl, results.json, node logs)')
  .option('--mode <mode>', 'auto | netns (root: namespaces + nftables) | local (fault-injecting transport)', 'auto')
  .option('--keys <n>', 'registers (4 KiB blocks) the clients contend on', '24')
  .option('--op-timeout <ms>', 'an op unanswered this long is recorded as unknown', '5000')
  .option('--compact-every <n>', "nodes' log compaction interval in entries: a follower left behind it needs a snapshot made on demand (0: node default)", '2000')
  .option('--unsafe-local-reads', 'start every node with testing.unsafeLocalReads (a deliberately broken backend)')
  .option('--json', 'print a JSON summary instead of the verdict line')
  .option('--recheck <dir>', "no run: judge a finished run again from DIR's history.jsonl and results.json alone")
  .addOption(new Option('--inside-lab <file>', 'internal: run inside the lab described by FILE').hideHelp())
  .action(async (options) => {
    const { chaos } = await import('../chaos/command.js');
    await chaos(options);
    process.exit(process.exitCode ?? 0);
  });


program.parseAsync(process.argv).catch((error: unknown) => {
  if (error instanceof ChardError) {
    console.error(`chard: ${error.code}: ${error.message}`);
    process.exit(error instanceof UsageError ? 2 : 1);
  }
  const system = fromSystemError(error);
  if (system !== undefined) {
    console.error(`chard: ${system.code}: ${system.message}`);
    process.exit(2);
  }
  console.error('chard: internal error:', error);
  process.exit(1);
});
