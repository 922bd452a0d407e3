/**
 * raft-integration: proves BlockStore works under the real raft core exactly as the node's Ready
 * loop uses it (persist -> installSnapshot -> send -> apply with applyConfChange -> advance).
 * Three in-process RawNodes over three BlockStores with in-memory, deterministic message delivery:
 * the bootstrap entry establishes the configuration, writes replicate to equal stateHashes, a
 * follower cut off while the leader snapshots and compacts catches up through raft's chunked
 * InstallSnapshot (staged and installed by the store), and a restarted node resumes from its
 * durable applied index and converges again.
 */

import test from 'ava';
import { BlockStore } from '../../src/blockstore/index.js';
import { type Command, encodeCommand } from '../../src/blockstore/commands.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import type { Message, NodeId } from '../../src/raft/types.js';
import { Prng, tempDir } from './helpers.js';

interface Member {
  id: NodeId;
  dir: string;
  store: BlockStore;
  node: RawNode;
}

function startNode(id: NodeId, dir: string): Member {
  const store = BlockStore.open(dir, { limits: { compactionTrailingEntries: 2 } });
  const node = new RawNode({
    id,
    storage: store.logStorage,
    random: new SeededRandom(id),
    applied: store.appliedIndex(),
    electionTimeoutTicks: 10,
    heartbeatIntervalTicks: 1,
    snapshotChunkBytes: 16 * 1024,
  });
  return { id, dir, store, node };
}

class Cluster {
  readonly members = new Map<NodeId, Member>();
  readonly cut = new Set<NodeId>();
  private queue: Message[] = [];
  snapshotsInstalled = 0;
  chunksStaged = 0;

  handle(m: Member): void {
    while (m.node.hasReady()) {
      const rd = m.node.ready();
      this.queue.push(...rd.messagesEarly);
      m.store.persist(rd);
      this.chunksStaged += rd.snapshotChunks.length;
      if (rd.snapshot !== undefined) {
        m.store.installSnapshot(rd.snapshot);
        this.snapshotsInstalled++;
      }
      this.queue.push(...rd.messages);
      if (rd.committedEntries.length > 0) m.store.apply(rd.committedEntries, (cc) => m.node.applyConfChange(cc));
      m.node.advance();
    }
  }

  stabilize(): void {
    for (let round = 0; round < 10_000; round++) {
      for (const m of this.members.values()) this.handle(m);
      if (this.queue.length === 0) return;
      const batch = this.queue;
      this.queue = [];
      for (const msg of batch) {
        if (this.cut.has(msg.from) || this.cut.has(msg.to)) continue;
        this.members.get(msg.to)?.node.step(msg);
      }
    }
    throw new Error('cluster did not stabilize');
  }

  tick(times: number): void {
    for (let i = 0; i < times; i++) {
      for (const m of this.members.values()) m.node.tick();
      this.stabilize();
    }
  }

  leader(): Member {
    const leaders = [...this.members.values()].filter((m) => m.node.raft.role === 'leader');
    if (leaders.length !== 1) throw new Error(`expected one leader, got ${leaders.length}`);
    return leaders[0]!;
  }

  propose(commands: Command[]): void {
    const leader = this.leader();
    for (const c of commands) leader.node.propose(encodeCommand(c));
    this.stabilize();
  }
}

test('three RawNodes over BlockStores: replication, snapshot catch-up of a cut-off follower, restart', (t) => {
  const dirs = [1, 2, 3].map((id) => tempDir(`raft-${id}`));
  const cluster = new Cluster();
  try {
    for (const id of [1, 2, 3]) {
      const dir = dirs[id - 1]!.dir;
      const boot = BlockStore.open(dir);
      boot.bootstrap([1, 2, 3]);
      boot.close();
      cluster.members.set(id, startNode(id, dir));
    }
    cluster.stabilize(); // apply the bootstrap entry (raft refuses to campaign with unapplied conf changes)
    cluster.members.get(1)!.node.campaign();
    cluster.stabilize();
    t.is(cluster.leader().id, 1);
    const rng = new Prng(11);
    cluster.propose([{ kind: 'createVolume', name: 'v', sizeBytes: 1024 * 1024 }]);
    cluster.propose(Array.from({ length: 20 }, (_, i) => ({ kind: 'write' as const, volume: 'v', offset: i * 5000, data: rng.bytes(3000) })));
    const hashes = () => [...cluster.members.values()].map((m) => m.store.stateHash());
    t.is(new Set(hashes().map((h) => `${h.appliedIndex}:${h.hash}`)).size, 1, 'all replicas equal');
    t.deepEqual(cluster.members.get(3)!.store.state.confState().voters, [1, 2, 3]);

    // cut node 3 off; the leader writes, snapshots and compacts past what node 3 has
    cluster.cut.add(3);
    cluster.propose(Array.from({ length: 30 }, (_, i) => ({ kind: 'write' as const, volume: 'v', offset: 200_000 + i * 7000, data: rng.bytes(6000) })));
    const leader = cluster.leader();
    const metadata = leader.store.createSnapshot()!;
    t.true(leader.store.logStorage.firstIndex() > cluster.members.get(3)!.store.logStorage.lastIndex() + 1, 'node 3 needs the snapshot');
    cluster.cut.delete(3);
    cluster.tick(30);
    t.true(cluster.snapshotsInstalled >= 1, 'a snapshot was installed through raft');
    t.true(cluster.chunksStaged > 1, `snapshot of ${metadata.sizeBytes} bytes came in ${cluster.chunksStaged} chunks`);
    t.log(`snapshot at ${metadata.index}: ${metadata.sizeBytes} bytes in ${cluster.chunksStaged} chunks`);
    let all = hashes();
    t.is(new Set(all.map((h) => `${h.appliedIndex}:${h.hash}`)).size, 1, 'node 3 caught up');

    // restart node 2 from its directory; it resumes at its durable applied index
    const two = cluster.members.get(2)!;
    two.store.close();
    cluster.members.set(2, startNode(2, two.dir));
    cluster.propose([{ kind: 'trim', volume: 'v', offset: 0, length: 100_000 }, { kind: 'createVolume', name: 'w', sizeBytes: 4096 }]);
    cluster.tick(5);
    all = hashes();
    t.is(new Set(all.map((h) => `${h.appliedIndex}:${h.hash}`)).size, 1, 'converged after restart');
    t.deepEqual(cluster.members.get(2)!.store.listVolumes().map((v) => v.name), ['v', 'w']);
  } finally {
    for (const m of cluster.members.values()) m.store.close();
    for (const d of dirs) d.cleanup();
  }
});
