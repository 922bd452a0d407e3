#!/usr/bin/env node
/**
 * main: the `chard` command line. Every command has --help; every command that reports has --json.
 * Errors print `chard: CODE: message` on stderr and exit 2 for usage errors (bad input, unknown
 * volume: nothing changed), 1 for everything else (cluster unavailable, divergence found).
 */

import { Command, Option } from 'commander';
import { ChardError, ErrorCode, UsageError } from '../errors.js';
import { ClusterClient, clusterTargets } from './client.js';
import { formatSize, parseSize, table } from './cluster-file.js';
import { clusterDown, clusterUp, nodeInit, nodeStartFromDir } from './cluster.js';

const program = new Command();
program
  .name('chard')
  .description('chard: a Raft-replicated block store served over NBD')
  .version('0.1.0')
  .showHelpAfterError('(run with --help for usage)');

interface TargetOptions {
  dir?: string;
  cluster?: string;
  json?: boolean;
}

function targetOptions(cmd: Command): Command {
  return cmd
    .option('--dir <dir>', 'directory of a local cluster (reads DIR/cluster.json)')
    .option('--cluster <addrs>', 'admin addresses HOST:PORT,... of a cluster (instead of --dir)')
    .option('--json', 'print JSON');
}

async function withClient<T>(options: TargetOptions, run: (client: ClusterClient) => Promise<T>): Promise<T> {
  const client = new ClusterClient(clusterTargets(options));
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

// ------------------------------------------------------------------ node

const node = program.command('node').description('run one node');
node
  .command('start')
  .description('run a node in the foreground (--config FILE), or restart node ID of a local cluster (--dir DIR --id ID)')
  .option('--config <file>', 'node configuration file (JSON, see docs/operations.md)')
  .option('--dir <dir>', 'directory of a local cluster')
  .option('--id <id>', 'node id within --dir')
  .option('--foreground', 'with --dir: run in this process instead of detaching')
  .option('--json', 'with --dir: print {"id", "pid"}')
  .action(async (options) => {
    if (options.config !== undefined) {
      const { runNodeProcess } = await import('../node/process.js');
      await runNodeProcess(options.config);
      return;
    }
    if (options.dir === undefined || options.id === undefined) {
      throw new UsageError(ErrorCode.InvalidArgument, 'node start needs --config FILE, or --dir DIR and --id ID');
    }
    const result = await nodeStartFromDir(options.dir, parseId(options.id), options.foreground === true);
    if (result !== undefined) print(options, { id: parseId(options.id), pid: result.pid }, () => `node ${options.id} started (pid ${result.pid})`);
  });

node
  .command('init')
  .description('prepare a new (joining) node ID in the local cluster DIR; then start it and `chard member add` it')
  .requiredOption('--dir <dir>', 'directory of a local cluster')
  .requiredOption('--id <id>', 'id of the new node')
  .option('--json', 'print JSON')
  .action(async (options) => {
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

targetOptions(program.command('status').description('leader, and per node: role, term, commit and applied index, lag, reachable')).action(
  async (options: TargetOptions) => {
    await withClient(options, async (client) => {
      const report = await client.clusterStatus();
      print(options, report, () => {
        const rows = report.nodes.map((n) => [
          n.id,
          n.address,
          n.reachable ? (n.role ?? '') : 'unreachable',
          n.term ?? '',
          n.commitIndex ?? '',
          n.appliedIndex ?? '',
          n.lag ?? '',
        ]);
        return `leader: ${report.leader === 0 ? 'none' : report.leader}\n${table(['id', 'admin', 'role', 'term', 'commit', 'applied', 'lag'], rows)}`;
      });
      if (report.leader === 0) process.exitCode = 1;
    });
  },
);

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
      const result = await client.verify(Number(options.timeout));
      print(options, result, () =>
        [`${result.equal ? 'equal' : 'DIVERGED'} at applied index ${result.appliedIndex}`, ...result.replicas.map((r) => `node ${r.id}: ${r.hash}`)].join('\n'),
      );
      if (!result.equal) process.exitCode = 1;
    });
  });

// ------------------------------------------------------------------ bench

program
  .command('bench')
  .description('measure fio figures of a local 3-node cluster next to nbdkit file (same run), group commit and memory')
  .option('--runtime <s>', 'seconds per fio job', '5')
  .option('--nodes <n>', 'cluster size', '3')
  .option('--keep', 'keep the cluster directory')
  .option('--json', 'print JSON')
  .action(async (options) => {
    const { runBench, formatBench } = await import('../bench/bench.js');
    const runtimeSeconds = Number(options.runtime);
    if (!(runtimeSeconds > 0 && runtimeSeconds <= 600)) throw new UsageError(ErrorCode.InvalidArgument, '--runtime must be 1..600 seconds');
    const result = await runBench({ runtimeSeconds, nodes: Number(options.nodes), json: options.json === true, keep: options.keep === true });
    print(options, result, () => formatBench(result));
  });

// ------------------------------------------------------------------ attach

program
  .command('attach')
  .description('run a local NBD agent for a volume that follows the leader across failovers; with --device, attach /dev/nbdX to it')
  .option('--cluster <addrs>', 'admin addresses HOST:PORT,... of the cluster')
  .option('--dir <dir>', 'directory of a local cluster (instead of --cluster)')
  .option('--volume <name>', 'volume to serve', 'default')
  .option('--socket <path>', 'serve on this unix socket (default: one in the runtime directory)')
  .option('--port <n>', 'serve on 127.0.0.1:N instead of a unix socket')
  .option('--device <dev>', 'attach this kernel device (e.g. /dev/nbd0) with nbd-client')
  .option('--connections <n>', 'kernel connections (the agent advertises CAN_MULTI_CONN)', '2')
  .option('--timeout <ms>', 'how long requests wait for an unreachable cluster before failing with EIO', '120000')
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
              ['pid', 'volume', 'listen', 'device', 'leader', 'inflight', 'retries', 'failovers', 'last stall ms', 'waiting ms'],
              statuses.map((s) => [s.pid, s.volume, s.listen, s.device ?? '', s.leader ?? '', s.inflight, s.retries, s.failovers, s.lastFailoverStallMs, s.stalledSinceMs ?? '']),
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
  .option('--snapshot-every <n>', "nodes' snapshot interval in entries (0: node default)", '2000')
  .option('--unsafe-local-reads', 'start every node with testing.unsafeLocalReads (a deliberately broken backend)')
  .option('--json', 'print a JSON summary instead of the verdict line')
  .addOption(new Option('--inside-lab <file>', 'internal: run inside the lab described by FILE').hideHelp())
  .action(async (options) => {
    const { chaos } = await import('../chaos/command.js');
    await chaos(options);
    process.exit(process.exitCode ?? 0);
  });

program.addOption(new Option('--log-level <level>', 'log level').hideHelp());

program.parseAsync(process.argv).catch((error: unknown) => {
  if (error instanceof ChardError) {
    console.error(`chard: ${error.code}: ${error.message}`);
    process.exit(error instanceof UsageError ? 2 : 1);
  }
  console.error('chard: internal error:', error);
  process.exit(1);
});
