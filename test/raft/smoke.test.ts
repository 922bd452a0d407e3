// smoke: the core elects a leader, replicates and commits in a healthy 3-node cluster,
// survives a leader partition, and catches a lagging node up through a snapshot.
import test from 'ava';
import { Cluster } from './harness.js';

test('3 nodes elect, commit, fail over, and snapshot-catch-up', (t) => {
  const c = new Cluster();
  c.addNodes([1, 2, 3], [1, 2, 3]);
  c.campaign(1);
  t.is(c.leader()?.id, 1);
  c.propose(1, 'a');
  c.propose(1, 'b');
  for (const id of [1, 2, 3]) t.deepEqual(c.appliedData(id), ['a', 'b']);
  c.isolate(1);
  c.tickAll(50);
  const leader = c.leader();
  t.truthy(leader);
  const newLeader = [...c.nodes.values()].find((n) => n.raw.status().role === 'leader' && n.id !== 1);
  t.truthy(newLeader, c.log.join('\n'));
  c.propose(newLeader!.id, 'c');
  c.compact(newLeader!.id);
  c.propose(newLeader!.id, 'd');
  c.heal();
  c.tickAll(30);
  for (const id of [1, 2, 3]) t.deepEqual(c.appliedData(id), ['a', 'b', 'c', 'd'], `node ${id}: ${c.log.join('\n')}`);
});
