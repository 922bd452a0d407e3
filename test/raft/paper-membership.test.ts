// paper-membership: cluster membership changes (Raft paper §6, thesis §4: learners, joint
// consensus that is left automatically, one change at a time, removing the leader) and leadership
// transfer (thesis §3.10). Harness clusters propose ConfChanges and transfers; the tests check the
// configurations every node applies, who votes and counts for quorum, and who ends up leading.
import test from 'ava';
import { ChardError, NotLeaderError } from '../../src/errors.js';
import { decodeConfChange } from '../../src/raft/confchange.js';
import { type ConfChange, type ConfChangeSingle, EntryType, type Message, type NodeId, message } from '../../src/raft/types.js';
import { Cluster, type NodeOptions, bytes, outbox, run } from './harness.js';

function cluster(voters: NodeId[], learners: NodeId[] = [], options: NodeOptions = {}): Cluster {
  const c = new Cluster({ nodeOptions: options });
  c.addNodes([...voters, ...learners], voters, learners);
  return c;
}

function cc(...changes: ConfChangeSingle[]): ConfChange {
  return { changes, context: new Uint8Array(0) };
}
const addLearner = (nodeId: NodeId): ConfChangeSingle => ({ type: 'add-learner', nodeId });
const addNode = (nodeId: NodeId): ConfChangeSingle => ({ type: 'add-node', nodeId });
const removeNode = (nodeId: NodeId): ConfChangeSingle => ({ type: 'remove-node', nodeId });

/** appliedConfChanges: the ConfChanges a node applied, in order (the bootstrap one excluded). */
function appliedConfChanges(c: Cluster, id: NodeId): ConfChange[] {
  return c
    .node(id)
    .applied.filter((e) => e.type === EntryType.ConfChange && e.index > 1)
    .map((e) => decodeConfChange(e.data));
}

const status = (c: Cluster, id: NodeId) => c.node(id).raw.status();

// ---------------------------------------------------------------- §6 / thesis §4

test('thesis §4.2.1 a learner added to the cluster receives the log and applies it', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.propose(1, 'a');
  c.proposeConfChange(1, cc(addLearner(4)));
  c.addEmptyNode(4);
  c.propose(1, 'b');
  c.tickAll(3);
  t.deepEqual(c.appliedData(4), ['a', 'b']);
  for (const id of [1, 2, 3, 4]) t.deepEqual(c.node(id).confState.learners, [4], `node ${id}`);
  t.deepEqual(status(c, 1).confState.voters, [1, 2, 3]);
  t.true(status(c, 1).progress.get(4)?.learner);
});

test('thesis §4.2.1 a learner never campaigns and is never asked for a vote', (t) => {
  const c = cluster([1, 2, 3], [4]);
  c.campaign(1);
  const term = status(c, 4).term;
  c.isolate(4);
  c.tickElection(4);
  c.tick(4, 50);
  t.is(status(c, 4).role, 'follower');
  t.is(status(c, 4).term, term);
  // A candidate asks voters only.
  const d = cluster([1, 2, 3], [4], { preVote: false });
  d.node(1).raw.campaign();
  t.deepEqual(outbox(d, 1).filter((m) => m.type === 'Vote').map((m) => m.to).sort(), [2, 3]);
});

test('thesis §4.2.1 learners are not counted in the commit quorum', (t) => {
  const c = cluster([1, 2], [3, 4]);
  c.campaign(1);
  const commit = status(c, 1).commit;
  c.isolate(2);
  c.propose(1, 'a');
  c.tickAll(3);
  t.is(status(c, 1).commit, commit, 'leader + two learners are not a majority of {1, 2}');
  t.is(status(c, 3).lastIndex, status(c, 1).lastIndex, 'the learners do store the entry');
  c.heal();
  c.tickAll(3);
  t.true(status(c, 1).commit > commit);
});

test('thesis §4.3 promoting a learner goes through a joint configuration that is left automatically', (t) => {
  const c = cluster([1, 2, 3], [4]);
  c.campaign(1);
  c.proposeConfChange(1, cc(addNode(4)));
  c.tickAll(2);
  const changes = appliedConfChanges(c, 1);
  t.is(changes.length, 2, 'enter joint, then leave joint');
  t.deepEqual(changes[0]!.changes, [addNode(4)]);
  t.deepEqual(changes[1]!.changes, [], 'the leader proposed the empty change that leaves the joint config');
  for (const id of [1, 2, 3, 4]) {
    const cs = c.node(id).confState;
    t.deepEqual(cs.voters, [1, 2, 3, 4], `node ${id}`);
    t.deepEqual(cs.votersOutgoing, []);
    t.deepEqual(cs.learners, []);
  }
  // Node 4 now counts: with 3 and 4 cut off, 1 and 2 alone cannot commit (3 of 4 needed).
  c.isolate(3);
  c.isolate(4);
  const commit = status(c, 1).commit;
  c.propose(1, 'a');
  c.tickAll(2);
  t.is(status(c, 1).commit, commit, '2 of 4 voters are not a majority');
  c.heal();
  c.tickAll(3);
  t.deepEqual(c.appliedData(4), ['a']);
});

test('thesis §4.3 while joint, decisions need a majority of both the old and the new voters', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.addEmptyNode(4);
  c.addEmptyNode(5);
  // Replace 2 and 3 by 4 and 5 in one change: joint {1,4,5} & {1,2,3}.
  c.isolate(2);
  c.isolate(3);
  c.node(1).raw.proposeConfChange(cc(addNode(4), addNode(5), removeNode(2), removeNode(3)));
  c.tickAll(5);
  t.deepEqual(c.node(1).confState.voters, [1, 2, 3], 'not even entering joint commits without the old majority');
  c.heal();
  c.tickAll(5);
  const joint = appliedConfChanges(c, 1);
  t.is(joint.length, 2);
  t.deepEqual(c.node(1).confState.voters, [1, 4, 5]);
  t.deepEqual(c.node(1).confState.votersOutgoing, []);
  t.deepEqual(c.node(4).confState.voters, [1, 4, 5]);
});

test('§6 removing a follower: the rest commit without it and it no longer counts', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.proposeConfChange(1, cc(removeNode(3)));
  c.tickAll(2);
  t.deepEqual(c.node(1).confState.voters, [1, 2]);
  t.false(status(c, 1).progress.has(3));
  c.isolate(3);
  c.propose(1, 'a');
  t.deepEqual(c.appliedData(2), ['a']);
  t.deepEqual(c.appliedData(1), ['a']);
  // Responses from the removed node are ignored.
  t.notThrows(() => c.node(1).raw.step(message({ type: 'AppResp', from: 3, to: 1, term: status(c, 1).term, index: 99 })));
});

test('§6 the leader removing itself steps down and hands over with TimeoutNow to a caught-up voter', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  const term = status(c, 1).term;
  c.node(1).raw.proposeConfChange(cc(removeNode(1)));
  const timeoutNow: Message[] = [];
  run(c, (m) => {
    if (m.type === 'TimeoutNow') timeoutNow.push(m);
    return true;
  });
  t.is(timeoutNow.length, 1);
  t.is(timeoutNow[0]!.from, 1);
  t.not(status(c, 1).role, 'leader');
  const leader = c.leader();
  t.truthy(leader, 'a new leader without waiting for an election timeout');
  t.is(leader!.id, timeoutNow[0]!.to);
  t.is(status(c, leader!.id).term, term + 1);
  t.deepEqual(c.node(leader!.id).confState.voters, [2, 3]);
  c.propose(leader!.id, 'after');
  t.deepEqual(c.appliedData(2), ['after']);
});

test('§6 a leader being removed refuses proposals once it is out of the configuration', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.proposeConfChange(1, cc(removeNode(1)));
  t.throws(() => c.node(1).raw.propose(bytes('x')), { instanceOf: NotLeaderError });
});

test('thesis §4.1 one change at a time: a second proposal while one is pending is refused', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.cutLink(1, 2);
  c.cutLink(1, 3);
  c.node(1).raw.proposeConfChange(cc(addLearner(4)));
  const error = t.throws(() => c.node(1).raw.proposeConfChange(cc(addLearner(5))));
  t.is((error as ChardError).code, 'FAILED_PRECONDITION');
  c.heal();
  c.tickAll(3);
  t.notThrows(() => c.node(1).raw.proposeConfChange(cc(addLearner(5))));
  c.tickAll(3);
  t.deepEqual(c.node(2).confState.learners, [4, 5]);
});

test('thesis §4.3 no other change while joint: only leaving is allowed', (t) => {
  const c = cluster([1, 2, 3], [], {});
  c.campaign(1);
  c.addEmptyNode(4);
  c.node(1).raw.proposeConfChange(cc(addNode(4)));
  // The enter-joint entry commits; the leader's own leave entry never reaches anyone.
  const isLeave = (m: Message) =>
    m.type === 'App' && m.entries.some((e) => e.type === EntryType.ConfChange && decodeConfChange(e.data).changes.length === 0);
  run(c, (m) => !isLeave(m));
  t.deepEqual(status(c, 1).confState.votersOutgoing, [1, 2, 3], 'joint');
  t.throws(() => c.node(1).raw.proposeConfChange(cc(addLearner(5))), { code: 'FAILED_PRECONDITION' });
  t.throws(() => c.node(1).raw.proposeConfChange(cc()), { code: 'FAILED_PRECONDITION' });
});

test('thesis §4 removing the last voter is refused; invalid changes are usage errors', (t) => {
  const c = cluster([1]);
  c.campaign(1);
  t.is(status(c, 1).role, 'leader');
  t.throws(() => c.node(1).raw.proposeConfChange(cc(removeNode(1))), { code: 'FAILED_PRECONDITION' });
  t.throws(() => c.node(1).raw.proposeConfChange(cc(addNode(2), removeNode(2))), { code: 'FAILED_PRECONDITION' });
  t.throws(() => c.node(1).raw.proposeConfChange(cc()), { code: 'FAILED_PRECONDITION' }, 'not joint: nothing to leave');
  const d = cluster([1, 2, 3]);
  d.campaign(1);
  t.throws(() => d.node(2).raw.proposeConfChange(cc(addLearner(4))), { instanceOf: NotLeaderError });
});

test('thesis §4.1 a node with a committed but unapplied configuration change defers its campaign until applied', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.node(1).raw.proposeConfChange(cc(addLearner(4)));
  // Node 2 receives and learns the commit of the change but does not handle its Ready yet.
  for (let round = 0; round < 50; round++) {
    for (const id of [1, 3]) while (c.handleReady(id)) {}
    if (c.deliver() === 0 && c.queue.length === 0) break;
  }
  c.tick(1);
  for (const id of [1, 3]) while (c.handleReady(id)) {}
  c.deliver();
  const s2 = status(c, 2);
  t.true(s2.commit > s2.applied, 'committed, not applied');
  // TimeoutNow (a transfer) cannot start a campaign on a configuration older than a committed one.
  c.node(2).raw.step(message({ type: 'TimeoutNow', from: 1, to: 2, term: status(c, 1).term }));
  t.is(status(c, 2).role, 'follower');
  c.node(2).raw.campaign();
  t.is(status(c, 2).role, 'follower');
  // Applying it releases the deferred transfer campaign.
  while (c.handleReady(2)) {}
  t.is(status(c, 2).role, 'candidate');
  c.stabilize();
  t.is(c.leader()?.id, 2);
});

test('thesis §4.3 demoting a voter to learner goes through a joint configuration', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.proposeConfChange(1, cc(addLearner(3)));
  c.tickAll(2);
  for (const id of [1, 2, 3]) {
    t.deepEqual(c.node(id).confState.voters, [1, 2]);
    t.deepEqual(c.node(id).confState.learners, [3]);
  }
  t.true(status(c, 1).progress.get(3)?.learner);
});

// ---------------------------------------------------------------- thesis §3.10

test('thesis §3.10 leadership transfer to an up-to-date follower', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  const term = status(c, 1).term;
  c.node(1).raw.transferLeadership(2);
  c.stabilize();
  t.is(c.leader()?.id, 2);
  t.is(status(c, 2).term, term + 1);
  t.is(status(c, 1).role, 'follower');
  t.is(status(c, 1).leader, 2);
});

test('thesis §3.10 leadership transfer to a lagging follower: it catches up first, then takes over', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  c.propose(1, 'a');
  c.propose(1, 'b');
  c.heal();
  const order: string[] = [];
  c.node(1).raw.transferLeadership(3);
  t.is(status(c, 1).leadTransferee, 3);
  for (let i = 0; i < 5 && c.leader()?.id !== 3; i++) {
    for (const node of c.nodes.values()) node.raw.tick();
    run(c, (m) => {
      if (m.from === 1 && m.to === 3 && (m.type === 'TimeoutNow' || (m.type === 'App' && m.entries.length > 0))) order.push(m.type);
      return true;
    });
  }
  t.is(c.leader()?.id, 3);
  t.deepEqual(c.appliedData(3), ['a', 'b']);
  t.true(order.indexOf('App') >= 0 && order.indexOf('App') < order.indexOf('TimeoutNow'), order.join(','));
});

test('thesis §3.10 proposals are refused during a transfer, which is aborted after an election timeout when the target is down', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.isolate(3);
  c.propose(1, 'a');
  c.node(1).raw.transferLeadership(3);
  t.is(status(c, 1).leadTransferee, 3);
  const error = t.throws(() => c.node(1).raw.propose(bytes('x')));
  t.is((error as ChardError).code, 'PROPOSAL_DROPPED');
  c.tickAll(10);
  t.is(status(c, 1).leadTransferee, 0, 'aborted');
  t.is(c.leader()?.id, 1);
  t.notThrows(() => c.propose(1, 'b'));
  t.deepEqual(c.appliedData(2), ['a', 'b']);
});

test('thesis §3.10 a transfer to a learner is ignored; to self or twice is harmless', (t) => {
  const c = cluster([1, 2, 3], [4]);
  c.campaign(1);
  c.node(1).raw.transferLeadership(4);
  t.is(status(c, 1).leadTransferee, 0);
  c.node(1).raw.transferLeadership(1);
  t.is(status(c, 1).leadTransferee, 0);
  t.is(c.leader()?.id, 1);
  t.throws(() => c.node(1).raw.transferLeadership(9), { code: 'NOT_FOUND' });
  // Asking twice for the same target keeps one transfer; another target replaces it.
  c.isolate(3);
  c.isolate(2);
  c.node(1).raw.transferLeadership(2);
  c.node(1).raw.transferLeadership(2);
  t.is(status(c, 1).leadTransferee, 2);
  c.node(1).raw.transferLeadership(3);
  t.is(status(c, 1).leadTransferee, 3);
});

test('thesis §3.10 a transfer requested at a follower is forwarded to the leader', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.node(3).raw.transferLeadership(3);
  c.stabilize();
  t.is(c.leader()?.id, 3);
  const d = cluster([1, 2, 3]);
  t.throws(() => d.node(2).raw.transferLeadership(3), { instanceOf: NotLeaderError }, 'no leader known');
});

test('thesis §3.10 the transfer campaign overrides leader stickiness (CheckQuorum)', (t) => {
  const c = cluster([1, 2, 3]);
  c.campaign(1);
  c.tickAll(2);
  c.node(1).raw.transferLeadership(2);
  const messages: string[] = [];
  run(c, (m) => {
    messages.push(`${m.type} ${m.from}>${m.to}`);
    return true;
  });
  t.true(messages.includes('TimeoutNow 1>2'));
  t.true(messages.includes('Vote 2>3'), 'a real vote, no pre-vote, for a transfer');
  t.false(messages.some((m) => m.startsWith('PreVote 2>')));
  t.is(c.leader()?.id, 2);
});
