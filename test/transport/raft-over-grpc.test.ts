// raft-over-grpc: proves the transport carries real raft traffic end to end: three RawNodes
// (MemoryStorage, the Ready loop of types.ts) talk only through GrpcTransports on loopback, one
// of them wrapped in a FaultyTransport. They elect a leader and commit 100 proposals while node 3
// is partitioned away; the leader then snapshots and compacts its log, the partition heals, and
// node 3 catches up through snapshot chunks streamed over gRPC (more than one chunk) plus the
// entries after it, ending with the same applied state as the others. Unreachable reports reach
// RawNode.reportUnreachable as the node layer will wire them.
import test, { type ExecutionContext } from 'ava';
import { decodeConfChange } from '../../src/raft/confchange.js';
import { SeededRandom } from '../../src/raft/random.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { type ConfState, EntryType, type NodeId } from '../../src/raft/types.js';
import { Faults, FaultyTransport } from '../../src/transport/faulty.js';
import { GrpcTransport, type Transport } from '../../src/transport/transport.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface Replica {
  id: NodeId;
  raw: RawNode;
  storage: MemoryStorage;
  transport: Transport;
  grpc: GrpcTransport;
  data: string[];
  applied: number;
  confState: ConfState;
  snapshotsInstalled: number;
}

function handleReady(r: Replica): void {
  while (r.raw.hasReady()) {
    const rd = r.raw.ready();
    if (rd.messagesEarly.length > 0) r.transport.send(rd.messagesEarly);
    for (const chunk of rd.snapshotChunks) r.storage.stageSnapshotChunk(chunk.metadata, chunk.offset, chunk.data);
    if (rd.snapshot !== undefined) {
      const data = r.storage.takeStagedSnapshot(rd.snapshot);
      r.storage.applySnapshot(rd.snapshot, data);
      r.data = JSON.parse(decoder.decode(data)) as string[];
      r.applied = rd.snapshot.index;
      r.confState = structuredClone(rd.snapshot.confState);
      r.snapshotsInstalled++;
    }
    r.storage.append(rd.entries);
    if (rd.hardState !== undefined) r.storage.setHardState(rd.hardState);
    if (rd.messages.length > 0) r.transport.send(rd.messages);
    for (const entry of rd.committedEntries) {
      if (entry.type === EntryType.ConfChange) {
        r.confState = r.raw.applyConfChange(decodeConfChange(entry.data));
        r.storage.confState = structuredClone(r.confState);
      } else if (entry.data.length > 0) {
        r.data.push(decoder.decode(entry.data));
      }
      r.applied = entry.index;
    }
    r.raw.advance();
  }
}

async function until(t: ExecutionContext, what: string, condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) {
      t.fail(`timed out waiting for ${what}`);
      throw new Error(`timed out waiting for ${what}`);
    }
    await sleep(10);
  }
}

test('three RawNodes replicate and install a chunked snapshot over gRPC', async (t) => {
  const ids = [1, 2, 3];
  const faults = new Faults(new SeededRandom(11));
  const replicas = new Map<NodeId, Replica>();
  for (const id of ids) {
    const storage = MemoryStorage.bootstrap(ids);
    const grpc = new GrpcTransport({ clusterId: 'e2e', nodeId: id, listen: '127.0.0.1:0', limits: { reconnectBackoffMsMin: 20, reconnectBackoffMsMax: 100 } });
    const transport = new FaultyTransport(grpc, faults);
    const raw = new RawNode({
      id,
      storage,
      random: new SeededRandom(100 + id),
      applied: 1,
      electionTimeoutTicks: 10,
      heartbeatIntervalTicks: 2,
      preVote: true,
      checkQuorum: true,
      snapshotChunkBytes: 256,
    });
    const r: Replica = { id, raw, storage, transport, grpc, data: [], applied: 1, confState: structuredClone(storage.confState), snapshotsInstalled: 0 };
    transport.onMessage((m) => {
      r.raw.step(m);
      handleReady(r);
    });
    transport.onUnreachable((peer) => r.raw.reportUnreachable(peer));
    await transport.start();
    replicas.set(id, r);
  }
  const all = [...replicas.values()];
  for (const r of all) for (const other of all) if (other.id !== r.id) r.transport.addPeer(other.id, other.transport.address());
  faults.partition([3], [1, 2]);
  const ticker = setInterval(() => {
    for (const r of all) {
      r.raw.tick();
      handleReady(r);
    }
  }, 10);
  try {
    const leaderOf = () => all.find((r) => r.raw.status().role === 'leader' && r.id !== 3);
    await until(t, 'a leader among 1 and 2', () => leaderOf() !== undefined);
    const leader = leaderOf()!;
    for (let i = 0; i < 100; i++) {
      leader.raw.propose(encoder.encode(`write-${i}-${'x'.repeat(20)}`));
      handleReady(leader);
    }
    await until(t, '100 writes applied on 1 and 2', () => replicas.get(1)!.data.length === 100 && replicas.get(2)!.data.length === 100);
    t.is(replicas.get(3)!.data.length, 0, 'node 3 is cut off');

    // Snapshot the leader's state at its applied index and compact the log behind it.
    const snapshotData = encoder.encode(JSON.stringify(leader.data));
    const metadata = leader.storage.createSnapshot(leader.applied, leader.confState, snapshotData);
    leader.storage.compact(metadata.index);
    t.true(snapshotData.length > 4 * 256, 'the snapshot needs several chunks');

    faults.heal();
    leader.raw.propose(encoder.encode('after-heal'));
    handleReady(leader);
    const three = replicas.get(3)!;
    await until(t, 'node 3 catches up', () => three.data.length === 101);
    t.is(three.snapshotsInstalled, 1, 'node 3 was brought up through the snapshot');
    t.deepEqual(three.data, leader.data);
    t.is(three.data[100], 'after-heal');
    const snapFrames = leader.grpc.counts()['transport.frames.sent'] ?? 0;
    t.true((three.grpc.counts()['transport.messages.received'] ?? 0) > 0);
    t.log(`snapshot of ${snapshotData.length} B (${Math.ceil(snapshotData.length / 256)} chunks) installed on node 3; leader sent ${snapFrames} frames in all`);
  } finally {
    clearInterval(ticker);
    for (const r of all) await r.transport.close();
  }
});
