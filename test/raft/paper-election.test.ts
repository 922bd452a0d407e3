// paper-election: the election rules of the Raft paper (§5.1, §5.2, §5.4.1) and of Ongaro's thesis
// (§9.6 PreVote, §6.2 CheckQuorum / leader stickiness, restart quiet period). Each test builds a
// small deterministic cluster with the harness (or one RawNode), feeds it hand-made messages or
// ticks, and checks the role, term, vote and the messages it emits against the rule it cites.
import test from 'ava';
import { NotLeaderError } from '../../src/errors.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { type Entry, EntryType, type NodeId, type Role, message } from '../../src/raft/types.js';
import { Cluster, cluster, outbox, run } from './harness.js';

const TRANSFER = new TextEncoder().encode('transfer');

function entries(terms: number[], firstIndex: number): Entry[] {
  return terms.map((term, i) => ({ term, index: firstIndex + i, type: EntryType.Normal, data: new Uint8Array([i]) }));
}

const role = (c: Cluster, id: NodeId) => c.node(id).raw.status().role;
const term = (c: Cluster, id: NodeId) => c.node(id).raw.status().term;

// ---------------------------------------------------------------- §5.1

test('§5.1 a follower that sees a higher term adopts it and follows the sender', (t) => {
  const c = cluster(3);
  c.node(1).raw.step(message({ type: 'App', from: 2, to: 1, term: 5, index: 1, logTerm: 0 }));
  const s = c.node(1).raw.status();
  t.is(s.term, 5);
  t.is(s.role, 'follower');
  t.is(s.leader, 2);
  t.is(s.vote, 0);
});

test('§5.1 a candidate that sees a higher term steps down to follower', (t) => {
  const c = cluster(3, { preVote: false });
  c.node(1).raw.campaign();
  t.is(role(c, 1), 'candidate');
  t.is(term(c, 1), 1);
  c.node(1).raw.step(message({ type: 'Heartbeat', from: 3, to: 1, term: 2 }));
  t.is(role(c, 1), 'follower');
  t.is(term(c, 1), 2);
  t.is(c.node(1).raw.status().leader, 3);
});

test('§5.1 a node with a higher term makes a leader step down', (t) => {
  const c = cluster(3);
  c.campaign(1);
  t.is(role(c, 1), 'leader');
  const leaderTerm = term(c, 1);
  c.node(1).raw.step(message({ type: 'App', from: 2, to: 1, term: leaderTerm + 1, index: 1, logTerm: 0 }));
  t.is(role(c, 1), 'follower');
  t.is(term(c, 1), leaderTerm + 1);
});

test('§5.1 a stale leader learns the new term from the reply to its append and steps down', (t) => {
  const c = cluster(3);
  c.campaign(1);
  const oldTerm = term(c, 1);
  // Node 2 moves to a later term (as if it heard of a newer election).
  c.node(2).raw.step(message({ type: 'Heartbeat', from: 3, to: 2, term: oldTerm + 3 }));
  outbox(c, 2);
  // A message from the stale leader is refused and answered with the newer term.
  c.node(2).raw.step(message({ type: 'App', from: 1, to: 2, term: oldTerm, index: 2, logTerm: oldTerm }));
  const replies = outbox(c, 2);
  t.is(replies.length, 1);
  t.is(replies[0]!.type, 'AppResp');
  t.is(replies[0]!.term, oldTerm + 3);
  c.node(1).raw.step(replies[0]!);
  t.is(role(c, 1), 'follower');
  t.is(term(c, 1), oldTerm + 3);
});

// ---------------------------------------------------------------- §5.2

test('§5.2 election timeouts are randomized in [electionTimeout, 2 * electionTimeout)', (t) => {
  const electionTimeoutTicks = 10;
  const seen = new Set<number>();
  for (let seed = 1; seed <= 60; seed++) {
    const raw = new RawNode({
      id: 1,
      storage: MemoryStorage.bootstrap([1, 2, 3]),
      random: new SeededRandom(seed),
      applied: 1,
      electionTimeoutTicks,
      heartbeatIntervalTicks: 1,
    });
    let ticks = 0;
    while (raw.status().role === 'follower' && ticks < 100) {
      raw.tick();
      ticks++;
    }
    t.true(ticks >= electionTimeoutTicks && ticks < 2 * electionTimeoutTicks, `seed ${seed}: ${ticks} ticks`);
    seen.add(ticks);
  }
  t.true(seen.size >= 5, `only ${seen.size} distinct timeouts: ${[...seen].join(',')}`);
});

test('§5.2 a follower that hears nothing starts an election: term + 1, votes for itself, asks every voter', (t) => {
  const c = cluster(3, { preVote: false });
  c.tickElection(1);
  t.is(role(c, 1), 'candidate');
  t.is(term(c, 1), 1);
  t.is(c.node(1).raw.status().vote, 1);
  const votes = outbox(c, 1).filter((m) => m.type === 'Vote');
  t.deepEqual(votes.map((m) => m.to).sort(), [2, 3]);
  for (const m of votes) {
    t.is(m.term, 1);
    t.is(m.index, 1); // last index: the bootstrap entry
    t.is(m.logTerm, 0);
  }
});

test('§5.2 a candidate wins with votes from a majority, loses with rejections from a majority', (t) => {
  const cases: Array<{ granted: NodeId[]; rejected: NodeId[]; expect: Role }> = [
    { granted: [], rejected: [], expect: 'candidate' },
    { granted: [2], rejected: [], expect: 'candidate' },
    { granted: [2, 3], rejected: [], expect: 'leader' },
    { granted: [2], rejected: [3, 4], expect: 'candidate' },
    { granted: [], rejected: [2, 3, 4], expect: 'follower' },
    { granted: [2, 3, 4, 5], rejected: [], expect: 'leader' },
  ];
  for (const { granted, rejected, expect } of cases) {
    const c = cluster(5, { preVote: false });
    c.node(1).raw.campaign();
    for (const from of granted) c.node(1).raw.step(message({ type: 'VoteResp', from, to: 1, term: 1 }));
    for (const from of rejected) c.node(1).raw.step(message({ type: 'VoteResp', from, to: 1, term: 1, reject: true }));
    t.is(role(c, 1), expect, `granted ${granted} rejected ${rejected}`);
    t.is(term(c, 1), 1);
  }
});

test('§5.2 a cluster elects exactly one leader and every node learns it', (t) => {
  const c = cluster(5);
  c.campaign(3);
  t.is(c.leader()?.id, 3);
  for (const id of [1, 2, 3, 4, 5]) {
    t.is(c.node(id).raw.status().leader, 3);
    t.is(term(c, id), 1);
  }
  t.is([...c.nodes.keys()].filter((id) => role(c, id) === 'leader').length, 1);
});

test('§5.2 a split vote leads to a new election in a later term', (t) => {
  const c = cluster(4, { preVote: false });
  c.node(1).raw.campaign();
  c.node(2).raw.campaign();
  // 3 votes for 1, 4 votes for 2: two votes each, three needed.
  run(c, (m) => (m.type === 'Vote' ? (m.from === 1 && m.to === 3) || (m.from === 2 && m.to === 4) : m.type === 'VoteResp'));
  t.is(role(c, 1), 'candidate');
  t.is(role(c, 2), 'candidate');
  t.is(c.node(3).raw.status().vote, 1);
  t.is(c.node(4).raw.status().vote, 2);
  // Nobody wins term 1; an election timeout later somebody starts term 2 and wins it.
  for (let i = 0; i < 40 && c.leader() === undefined; i++) c.tickAll();
  const leader = c.leader();
  t.truthy(leader);
  t.true(term(c, leader!.id) >= 2);
});

test('§5.2 a candidate whose election times out starts a new one with a higher term', (t) => {
  const c = cluster(3, { preVote: false });
  c.node(1).raw.campaign();
  t.is(term(c, 1), 1);
  outbox(c, 1);
  c.tickElection(1);
  t.is(role(c, 1), 'candidate');
  t.is(term(c, 1), 2);
  t.deepEqual(outbox(c, 1).filter((m) => m.type === 'Vote').map((m) => m.term), [2, 2]);
});

test('§5.2 a node grants at most one vote per term (first come, first served)', (t) => {
  const c = cluster(3);
  const voter = c.node(1).raw;
  voter.step(message({ type: 'Vote', from: 2, to: 1, term: 1, index: 1, logTerm: 0 }));
  voter.step(message({ type: 'Vote', from: 3, to: 1, term: 1, index: 1, logTerm: 0 }));
  voter.step(message({ type: 'Vote', from: 2, to: 1, term: 1, index: 1, logTerm: 0 })); // a retry
  const replies = outbox(c, 1).filter((m) => m.type === 'VoteResp');
  t.deepEqual(
    replies.map((m) => [m.to, m.reject]),
    [
      [2, false],
      [3, true],
      [2, false],
    ],
  );
  t.is(voter.status().vote, 2);
  // The vote is durable: it is in the hard state handed to the application.
  t.is(c.node(1).storage.hardState.vote, 2);
  t.is(c.node(1).storage.hardState.term, 1);
});

test('§5.2 a candidate steps down on an AppendEntries of its own term', (t) => {
  const c = cluster(3, { preVote: false });
  c.node(1).raw.campaign();
  t.is(role(c, 1), 'candidate');
  c.node(1).raw.step(message({ type: 'App', from: 2, to: 1, term: 1, index: 1, logTerm: 0 }));
  t.is(role(c, 1), 'follower');
  t.is(term(c, 1), 1);
  t.is(c.node(1).raw.status().leader, 2);
  const acks = outbox(c, 1).filter((m) => m.type === 'AppResp');
  t.is(acks.length, 1);
  t.false(acks[0]!.reject);
});

test('§5.2 a candidate steps down on a heartbeat or snapshot of its own term too', (t) => {
  for (const type of ['Heartbeat', 'Snap'] as const) {
    const c = cluster(3, { preVote: false });
    c.node(1).raw.campaign();
    c.node(1).raw.step(message({ type, from: 3, to: 1, term: 1 }));
    t.is(role(c, 1), 'follower', type);
    t.is(c.node(1).raw.status().leader, 3);
  }
  // A pre-candidate too, and it keeps its term (PreVote never bumps it).
  const c = cluster(3);
  c.node(1).raw.campaign();
  t.is(role(c, 1), 'pre-candidate');
  c.node(1).raw.step(message({ type: 'App', from: 2, to: 1, term: 0 + 1, index: 1, logTerm: 0 }));
  t.is(role(c, 1), 'follower');
});

test('§5.2 a pre-vote response arriving after the pre-vote round is ignored', (t) => {
  const c = cluster(3);
  c.node(1).raw.campaign(); // pre-candidate for term 1
  t.is(role(c, 1), 'pre-candidate');
  c.node(1).raw.step(message({ type: 'PreVoteResp', from: 2, to: 1, term: 1 }));
  t.is(role(c, 1), 'candidate', 'pre-vote won: now a real candidate');
  c.node(1).raw.step(message({ type: 'PreVoteResp', from: 3, to: 1, term: 1 }));
  t.is(role(c, 1), 'candidate');
  t.is(term(c, 1), 1);
});

test('§5.1 a stale pre-vote is refused and told the current term', (t) => {
  const c = cluster(3, { checkQuorum: false });
  c.campaign(1);
  c.node(2).raw.step(message({ type: 'Heartbeat', from: 1, to: 2, term: 5 }));
  outbox(c, 2);
  c.node(2).raw.step(message({ type: 'PreVote', from: 3, to: 2, term: 3, index: 9, logTerm: 2 }));
  const replies = outbox(c, 2);
  t.deepEqual(replies.map((m) => [m.type, m.reject, m.term]), [['PreVoteResp', true, 5]]);
  // Other stale messages are dropped silently.
  c.node(2).raw.step(message({ type: 'Vote', from: 3, to: 2, term: 3, index: 9, logTerm: 2 }));
  t.deepEqual(outbox(c, 2), []);
});

test('§5.2 a leader sends heartbeats every heartbeat interval to every follower', (t) => {
  const c = cluster(3, { heartbeatIntervalTicks: 3 });
  c.campaign(1);
  for (let i = 0; i < 2; i++) {
    c.tick(1);
    t.deepEqual(outbox(c, 1).filter((m) => m.type === 'Heartbeat'), [], 'no heartbeat before the interval');
  }
  c.tick(1);
  const beats = outbox(c, 1).filter((m) => m.type === 'Heartbeat');
  t.deepEqual(beats.map((m) => m.to).sort(), [2, 3]);
  const commit = c.node(1).raw.status().commit;
  for (const m of beats) {
    t.is(m.term, term(c, 1));
    t.is(m.commit, commit); // both followers acknowledged everything: they may learn the full commit index
  }
});

test('§5.2 a follower receiving heartbeats never starts an election', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.tickAll(100);
  t.is(c.leader()?.id, 1);
  t.is(term(c, 2), 1);
  t.is(term(c, 3), 1);
});

test('§5.2 proposals to a follower or candidate are refused with the leader hint', (t) => {
  const c = cluster(3);
  c.campaign(1);
  const error = t.throws(() => c.node(2).raw.propose(new Uint8Array([1])), { instanceOf: NotLeaderError });
  t.is((error as NotLeaderError).leaderId, 1);
  const d = cluster(3, { preVote: false });
  d.node(1).raw.campaign();
  const noLeader = t.throws(() => d.node(1).raw.propose(new Uint8Array([1])), { instanceOf: NotLeaderError });
  t.is((noLeader as NotLeaderError).leaderId, 0);
});

// ---------------------------------------------------------------- §5.4.1

test('§5.4.1 a vote is granted only to a candidate whose log is at least as up to date', (t) => {
  // Voter log: bootstrap (index 1, term 0), then terms 2, 2 at indexes 2, 3. Last entry (3, term 2).
  const cases: Array<{ index: number; logTerm: number; grant: boolean }> = [
    { index: 3, logTerm: 2, grant: true }, // same last entry
    { index: 4, logTerm: 2, grant: true }, // same last term, longer
    { index: 2, logTerm: 2, grant: false }, // same last term, shorter
    { index: 2, logTerm: 3, grant: true }, // later last term wins even when shorter
    { index: 9, logTerm: 1, grant: false }, // earlier last term loses even when longer
    { index: 1, logTerm: 0, grant: false },
  ];
  for (const { index, logTerm, grant } of cases) {
    const storage = MemoryStorage.bootstrap([1, 2, 3]);
    storage.append(entries([2, 2], 2));
    storage.setHardState({ term: 2, vote: 0, commit: 1 });
    const c = new Cluster({ nodeOptions: { checkQuorum: false } });
    c.startNode(1, storage, 1);
    c.node(1).raw.step(message({ type: 'Vote', from: 2, to: 1, term: 3, index, logTerm }));
    const replies = outbox(c, 1).filter((m) => m.type === 'VoteResp');
    t.is(replies.length, 1);
    t.is(replies[0]!.reject, !grant, `candidate last entry (${index}, t${logTerm})`);
    t.is(c.node(1).raw.status().term, 3, 'the term is adopted either way');
    t.is(c.node(1).raw.status().vote, grant ? 2 : 0);
  }
});

test('§5.4.1 a node with a stale log cannot become leader', (t) => {
  const c = cluster(3, { preVote: false });
  c.campaign(1);
  c.isolate(3);
  c.propose(1, 'x');
  c.heal();
  // Node 3 missed 'x': nobody votes for it although its term is higher.
  c.node(3).raw.campaign();
  c.stabilize();
  t.not(role(c, 3), 'leader');
  for (let i = 0; i < 60 && c.leader()?.id !== 1 && c.leader()?.id !== 2; i++) c.tickAll();
  const leader = c.leader()!;
  t.not(leader.id, 3);
  c.tickAll(20);
  t.deepEqual(c.appliedData(3), ['x']);
});

// ---------------------------------------------------------------- thesis §9.6 PreVote

test('thesis §9.6 PreVote: a partitioned node rejoining does not disrupt the leader (term unchanged)', (t) => {
  const c = cluster(3);
  c.campaign(1);
  const before = term(c, 1);
  c.isolate(3);
  for (let i = 0; i < 100; i++) c.tickAll();
  t.is(term(c, 3), before, 'a pre-candidate never bumps its term');
  t.not(role(c, 3), 'leader');
  c.heal();
  c.tickAll(30);
  t.is(c.leader()?.id, 1);
  t.is(term(c, 1), before);
  t.is(term(c, 3), before);
  t.is(c.node(3).raw.status().leader, 1);
});

test('thesis §9.6 without PreVote (and CheckQuorum) the same rejoin forces a new election', (t) => {
  const c = cluster(3, { preVote: false, checkQuorum: false });
  c.campaign(1);
  const before = term(c, 1);
  c.isolate(3);
  for (let i = 0; i < 100; i++) c.tickAll();
  t.true(term(c, 3) > before + 1, 'the isolated node kept bumping its term');
  c.heal();
  c.tickAll(60);
  t.true(term(c, c.leader()!.id) > before, 'the old leader was deposed');
});

test('thesis §9.6 a pre-vote is granted without changing term or vote, and rejected for a stale log', (t) => {
  const c = cluster(3);
  const voter = c.node(1).raw;
  voter.step(message({ type: 'PreVote', from: 2, to: 1, term: 1, index: 1, logTerm: 0 }));
  voter.step(message({ type: 'PreVote', from: 3, to: 1, term: 1, index: 1, logTerm: 0 }));
  const replies = outbox(c, 1);
  t.deepEqual(
    replies.map((m) => [m.type, m.to, m.reject, m.term]),
    [
      ['PreVoteResp', 2, false, 1],
      ['PreVoteResp', 3, false, 1],
    ],
  );
  t.is(voter.status().term, 0);
  t.is(voter.status().vote, 0);
  // At a later term, a candidate with a shorter log is refused (and told our term).
  const d = cluster(3, { checkQuorum: false });
  d.campaign(1);
  d.node(2).raw.step(message({ type: 'PreVote', from: 3, to: 2, term: 2, index: 1, logTerm: 0 }));
  const refused = outbox(d, 2);
  t.deepEqual(refused.map((m) => [m.type, m.reject, m.term]), [['PreVoteResp', true, 1]]);
  t.is(term(d, 2), 1);
});

// Fixed core bug (kept as a regression test): a node still at term 0 that rejects a PreVote (candidate log shorter than its own)
// answers with term 0, and Raft.send asserts "PreVoteResp must carry a term": a peer message
// crashes the node instead of being answered (step() promises never to throw for a well-formed
// message). Reproduction: fresh bootstrap node, step PreVote{term 1, index 0, logTerm 0}.
test('thesis §9.6 a node at term 0 rejects a pre-vote from a shorter log without crashing', (t) => {
  const c = cluster(3);
  c.node(1).raw.step(message({ type: 'PreVote', from: 3, to: 1, term: 1, index: 0, logTerm: 0 }));
  const replies = outbox(c, 1);
  t.deepEqual(replies.map((m) => [m.type, m.reject]), [['PreVoteResp', true]]);
});

// ---------------------------------------------------------------- §6.2 CheckQuorum

test('§6.2 CheckQuorum: a leader that loses contact with a quorum steps down within two election timeouts', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(1);
  let ticks = 0;
  while (role(c, 1) === 'leader' && ticks < 100) {
    c.tick(1);
    outbox(c, 1);
    ticks++;
  }
  t.is(role(c, 1), 'follower');
  t.true(ticks <= 2 * 10, `stepped down after ${ticks} ticks`);
});

test('§6.2 CheckQuorum: a leader in contact with a quorum stays leader', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(3);
  c.tickAll(60);
  t.is(c.leader()?.id, 1);
  t.is(term(c, 1), 1);
});

test('§6.2 followers ignore vote requests while they hear from a leader', (t) => {
  const c = cluster(3);
  c.campaign(1);
  const now = term(c, 2);
  for (const type of ['Vote', 'PreVote'] as const) {
    c.node(2).raw.step(message({ type, from: 3, to: 2, term: now + 1, index: 100, logTerm: now }));
    t.deepEqual(outbox(c, 2), [], `${type} ignored`);
    t.is(term(c, 2), now);
    t.is(c.node(2).raw.status().leader, 1);
  }
  // A leadership-transfer campaign is the exception: it is meant to depose the leader.
  c.node(2).raw.step(message({ type: 'Vote', from: 3, to: 2, term: now + 1, index: 100, logTerm: now, context: TRANSFER }));
  const replies = outbox(c, 2);
  t.is(replies.length, 1);
  t.false(replies[0]!.reject);
  t.is(term(c, 2), now + 1);
});

test('§6.2 once the leader is silent for an election timeout, votes are considered again', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(1);
  c.tick(2, 10); // electionElapsed reaches the timeout (node 2 may itself start a pre-vote: fine)
  outbox(c, 2);
  c.node(2).raw.step(message({ type: 'Vote', from: 3, to: 2, term: 2, index: 100, logTerm: 1 }));
  const replies = outbox(c, 2).filter((m) => m.type === 'VoteResp');
  t.is(replies.length, 1);
  t.false(replies[0]!.reject);
});

test('thesis §6.4.1 a restarted node refuses votes for one election timeout', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.propose(1, 'a');
  c.restart(2);
  const now = term(c, 2);
  const vote = () => message({ type: 'Vote', from: 3, to: 2, term: now + 1, index: 100, logTerm: now });
  c.node(2).raw.step(vote());
  t.deepEqual(outbox(c, 2), [], 'refused right after the restart');
  t.is(term(c, 2), now);
  c.tick(2, 9);
  outbox(c, 2);
  c.node(2).raw.step(vote());
  t.deepEqual(outbox(c, 2).filter((m) => m.type === 'VoteResp'), [], 'still refused before one election timeout');
  c.tick(2, 1);
  outbox(c, 2);
  c.node(2).raw.step(vote());
  const replies = outbox(c, 2).filter((m) => m.type === 'VoteResp');
  t.is(replies.length, 1, 'answered after one election timeout');
  t.false(replies[0]!.reject);
});

test('local message types cannot be stepped in from a peer', (t) => {
  const c = cluster(3);
  for (const type of ['Hup', 'Beat', 'CheckQuorum', 'Unreachable', 'Propose'] as const) {
    t.throws(() => c.node(1).raw.step(message({ type, from: 2, to: 1 })), { code: 'INVALID_ARGUMENT' });
  }
  t.throws(() => c.node(1).raw.step(message({ type: 'App', from: 1, to: 1 })), { code: 'INVALID_ARGUMENT' });
  t.throws(() => c.node(1).raw.step(message({ type: 'App', from: 0, to: 1 })), { code: 'INVALID_ARGUMENT' });
});
