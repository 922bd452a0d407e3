// raft-over-stream: proves the transport carries real raft traffic end to end: three Replicas (the
// runtime that ships, src/node/replica.ts, over the simulator's in-memory ReplicaStore and the
// production scheduler) talk only through StreamTransports on loopback, each wrapped in a
// FaultyTransport. They elect a leader and commit 100 proposals while node 3 is partitioned away;
// the leader compacts its log on its own (compactEveryEntries, behind its state, with no snapshot), the
// partition heals, the leader makes a snapshot because node 3 needs one (Ready.snapshotWanted), and
// node 3 catches up through snapshot chunks streamed over the peer transport (more than one chunk) plus the
// entries after it, ending with the same state as the others. Unreachable reports reach
// RawNode.reportUnreachable through Replica's wiring.
import test from 'ava';
import { systemScheduler } from '../../src/node/clock.js';
import { type MemberAddresses, Replica } from '../../src/node/replica.js';
import { SeededRandom } from '../../src/raft/random.js';
import type { NodeId } from '../../src/raft/types.js';
import { Faults, FaultyTransport } from '../../src/transport/faulty.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';
import { MemoryReplicaStore, encodeCommand } from '../sim/memory-store.js';
import { until } from '../helpers/until.js';


interface Node {
  id: NodeId;
  replica: Replica;
  store: MemoryReplicaStore;
  transport: FaultyTransport;
  stream: StreamTransport;
  snapshotsInstalled: number;
}


test('three Replicas replicate and install a chunked snapshot over the stream transport', async (t) => {
  const ids = [1, 2, 3];
  const faults = new Faults(new SeededRandom(11));
  const transports = new Map<NodeId, { stream: StreamTransport; transport: FaultyTransport }>();
  for (const id of ids) {
    const stream = new StreamTransport({ clusterId: 'e2e', nodeId: id, listen: '127.0.0.1:0', limits: { reconnectBackoffMsMin: 20, reconnectBackoffMsMax: 100 } });
    const transport = new FaultyTransport(stream, faults);
    await transport.start();
    transports.set(id, { stream, transport });
  }
  const members = new Map<NodeId, MemberAddresses>(ids.map((id) => [id, { raft: transports.get(id)!.transport.address(), admin: '', nbd: '' }]));
  const nodes = new Map<NodeId, Node>();
  for (const id of ids) {
    const { stream, transport } = transports.get(id)!;
    const store = MemoryReplicaStore.bootstrap(ids, [], members);
    const replica = new Replica({
      id,
      store,
      transport,
      scheduler: systemScheduler,
      random: new SeededRandom(100 + id),
      // Election timeout 1-2 s (it was 100-200 ms): the three replicas share one process, and on a
      // loaded machine a stall of that length deposed the leader between propose() and commit,
      // failing the writes; nothing here is about elections.
      limits: { tickIntervalMs: 10, electionTimeoutTicks: 100, heartbeatIntervalTicks: 2, snapshotChunkBytes: 256, compactEveryEntries: 50 },
    });
    const node: Node = { id, replica, store, transport, stream, snapshotsInstalled: 0 };
    store.hooks = { installed: () => void node.snapshotsInstalled++ };
    nodes.set(id, node);
  }
  const all = [...nodes.values()];
  faults.partition([3], [1, 2]);
  for (const node of all) node.replica.start();
  try {
    const leaderOf = () => all.find((n) => n.replica.isLeader() && n.id !== 3);
    await until(t, 'a leader among 1 and 2', () => leaderOf() !== undefined);
    const leader = leaderOf()!;
    const writes: Promise<Uint8Array>[] = [];
    for (let i = 0; i < 100; i++) writes.push(leader.replica.propose(encodeCommand({ sessionId: 's', sequence: i + 1, key: `k${i}`, value: `write-${i}-${'x'.repeat(20)}` })));
    await Promise.all(writes);
    await until(t, '100 writes applied on 1 and 2', () => nodes.get(1)!.store.machine.kv.size === 100 && nodes.get(2)!.store.machine.kv.size === 100);
    const three = nodes.get(3)!;
    t.is(three.store.machine.kv.size, 0, 'node 3 is cut off');
    t.true(leader.store.logStorage.firstIndex() > 2, 'the leader compacted its log');
    t.is(leader.store.logStorage.snapshot().index, 0, '... with no snapshot: none was needed yet');

    faults.heal();
    await leader.replica.propose(encodeCommand({ sessionId: 's', sequence: 101, key: 'after', value: 'after-heal' }));
    await until(t, 'node 3 catches up', () => three.store.machine.kv.size === 101);
    t.true(three.snapshotsInstalled >= 1, 'node 3 was brought up through a snapshot made on demand');
    const snapshotBytes = leader.store.logStorage.snapshot().sizeBytes;
    t.true(snapshotBytes > 4 * 256, 'the snapshot needs several chunks');
    t.deepEqual([...three.store.machine.kv].sort(), [...leader.store.machine.kv].sort());
    t.is(three.store.machine.kv.get('after'), 'after-heal');
    const frames = leader.stream.counts()['transport.frames.sent'] ?? 0;
    t.true((three.stream.counts()['transport.messages.received'] ?? 0) > 0);
    t.log(`snapshot of ${snapshotBytes} B (${Math.ceil(snapshotBytes / 256)} chunks) installed on node 3; leader sent ${frames} frames in all`);
  } finally {
    for (const node of all) await node.replica.close();
    for (const node of all) await node.transport.close();
  }
});
