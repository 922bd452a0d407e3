// peer-fuzz-child: the victim process of peer-fuzz.test.ts. Runs a real three-node chard cluster
// in one process — per node a BlockStore (SQLite, in a temporary directory), a StreamTransport on
// loopback and a Replica with the production timers — so a crash of any node (an assertion that
// escapes into a timer or a setImmediate) ends this process, which the parent observes.
// While the fuzzer runs, the leader keeps committing a small write every few milliseconds, so the
// nodes are busy in every role. Answers over IPC:
//   {cmd: 'status'}            -> {status: [{id, role, term, commit, applied, lastIndex, leader}]}
//   {cmd: 'write', name}       -> {written: name, index} once a createVolume committed on the leader
//                                 and was applied on every node of `quorumOf` (or {error})
//   {cmd: 'counts'}            -> {counts: {...transport and replica counters of every node}}
// argv: <seed>
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BlockStore } from '../../src/blockstore/index.js';
import { encodeCommand } from '../../src/blockstore/commands.js';
import { systemScheduler } from '../../src/node/clock.js';
import { Counters } from '../../src/node/metrics.js';
import { type MemberAddresses, Replica, type ReplicaOptions } from '../../src/node/replica.js';
import { SeededRandom } from '../../src/raft/random.js';
import { type NodeId } from '../../src/raft/types.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';

const seed = Number(process.argv[2] ?? 1);
if (process.send === undefined) throw new Error('peer-fuzz-child runs forked with IPC');
const send = (value: object) => process.send!(value);

export const fuzzClusterId = 'peer-fuzz';
const ids: NodeId[] = [1, 2, 3];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chard-peer-fuzz-'));
process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));

/**
 * makeReplica: the one place this test builds a Replica (its constructor options may change;
 * adapt here only).
 */
function makeReplica(options: ReplicaOptions): Replica {
  return new Replica(options);
}

interface Node {
  id: NodeId;
  store: BlockStore;
  transport: StreamTransport;
  counters: Counters;
  replica?: Replica;
  warnings: number;
}

const nodes: Node[] = [];
for (const id of ids) {
  const counters = new Counters();
  const options = {
    clusterId: fuzzClusterId,
    nodeId: id,
    listen: '127.0.0.1:0',
    onEvent: counters.onEvent,
    limits: { reconnectBackoffMsMin: 20, reconnectBackoffMsMax: 200 },
    logger: {
      warn: (o: object) => {
        counters.inc('test.transport.warnings');
        if (counters.snapshot().counts['test.transport.warnings'] === 1) process.stderr.write(`node ${id} transport: ${JSON.stringify(o)}\n`);
      },
    },
  };
  const transport = new StreamTransport(options);
  await transport.start();
  nodes.push({ id, store: BlockStore.open(path.join(dir, `node-${id}`)), transport, counters, warnings: 0 });
}
const members = new Map<NodeId, MemberAddresses>(nodes.map((n) => [n.id, { raft: n.transport.address(), admin: '', nbd: '' }]));
for (const node of nodes) {
  node.store.bootstrap(ids, [], members);
  node.replica = makeReplica({
    id: node.id,
    store: node.store,
    transport: node.transport,
    scheduler: systemScheduler,
    random: new SeededRandom(seed * 10 + node.id),
    counters: node.counters,
    logger: {
      info: () => {},
      warn: () => {
        node.warnings++;
      },
      error: (o, m) => process.stderr.write(`node ${node.id} error: ${m ?? ''} ${JSON.stringify(o)}\n`),
    },
  });
  node.replica.start();
}

const leader = () => nodes.find((n) => n.replica!.isLeader());
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// Background load: a small committed write every 20 ms whenever there is a leader.
let background = 0;
setInterval(() => {
  const l = leader();
  if (l === undefined) return;
  l.replica!.propose(encodeCommand({ kind: 'noop' })).then(
    () => background++,
    () => {},
  );
}, 20).unref();

async function write(name: string, timeoutMs: number): Promise<object> {
  const deadline = performance.now() + timeoutMs;
  let lastError = 'no leader';
  while (performance.now() < deadline) {
    const l = leader();
    if (l === undefined) {
      await sleep(20);
      continue;
    }
    try {
      await l.replica!.propose(encodeCommand({ kind: 'createVolume', name, sizeBytes: 1 << 20 }));
      const index = l.replica!.status().commit;
      return { written: name, leader: l.id, index };
    } catch (error) {
      lastError = String(error);
      await sleep(20);
    }
  }
  return { error: `write ${name} did not commit: ${lastError}` };
}

process.on('message', (raw) => {
  const request = raw as { cmd: string; name?: string; timeoutMs?: number };
  if (request.cmd === 'status') {
    send({
      status: nodes.map((n) => {
        const s = n.replica!.status();
        return { id: n.id, role: s.role, term: s.term, commit: s.commit, applied: s.applied, lastIndex: s.lastIndex, leader: s.leader, volumes: n.store.listVolumes().map((v) => v.name) };
      }),
      background,
    });
  } else if (request.cmd === 'write') {
    void write(request.name!, request.timeoutMs ?? 20_000).then(send);
  } else if (request.cmd === 'counts') {
    send({ counts: Object.fromEntries(nodes.map((n) => [n.id, { ...n.counters.snapshot().counts, replicaWarnings: n.warnings }])) });
  }
});

send({ ready: true, nodes: nodes.map((n) => ({ id: n.id, raft: n.transport.address() })), clusterId: fuzzClusterId });
