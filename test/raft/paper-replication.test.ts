// paper-replication: log replication and commitment (Raft paper §5.3, §5.4.2, §5.5) and the
// per-follower flow control of the core (inflight window, probe state, append and uncommitted
// byte limits). Clusters are built with the harness, sometimes from hand-made logs (Figure 7,
// Figure 8); messages are delivered, dropped or counted explicitly so each rule is observed.
import test from 'ava';
import { ChardError } from '../../src/errors.js';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { type Entry, EntryType, type Message, type NodeId, message } from '../../src/raft/types.js';
import { Cluster, type NodeOptions, bytes, cluster, outbox, run, text, tickRun } from './harness.js';

function entries(terms: number[], firstIndex: number): Entry[] {
  return terms.map((term, i) => ({ term, index: firstIndex + i, type: EntryType.Normal, data: new Uint8Array([term, i]) }));
}

/** storageWith: a bootstrapped storage (index 1) followed by entries of the given terms from index 2. */
function storageWith(voters: NodeId[], terms: number[], term: number): MemoryStorage {
  const storage = MemoryStorage.bootstrap(voters);
  storage.append(entries(terms, 2));
  storage.setHardState({ term, vote: 0, commit: 1 });
  return storage;
}

/** logTerms: the terms of a node's durable log from index 2 on. */
function logTerms(c: Cluster, id: NodeId): number[] {
  const storage = c.node(id).storage;
  return storage.entries(2, storage.lastIndex() + 1, Number.MAX_SAFE_INTEGER).map((e) => e.term);
}

const status = (c: Cluster, id: NodeId) => c.node(id).raw.status();

// ---------------------------------------------------------------- §5.3

test('§5.3 the leader appends a proposal to its log and replicates it to every follower', (t) => {
  const c = cluster(3);
  c.campaign(1);
  const index = c.node(1).raw.propose(bytes('a'));
  t.is(index, status(c, 1).lastIndex);
  const apps = outbox(c, 1).filter((m) => m.type === 'App');
  t.deepEqual(apps.map((m) => m.to).sort(), [2, 3]);
  for (const m of apps) {
    t.is(m.entries.length, 1);
    t.is(m.entries[0]!.index, index);
    t.is(m.entries[0]!.term, status(c, 1).term);
    t.is(m.index, index - 1);
    t.is(m.logTerm, status(c, 1).term);
  }
});

test('§5.3 an entry is committed once a majority stores it, then applied everywhere in order', (t) => {
  const c = cluster(5);
  c.campaign(1);
  const committed = status(c, 1).commit;
  for (const id of [3, 4, 5]) c.cutLink(1, id);
  const index = c.propose(1, 'a');
  t.is(status(c, 1).commit, committed, 'stored by 2 of 5: not committed');
  t.deepEqual(c.appliedData(1), []);
  c.heal();
  for (const id of [4, 5]) c.isolate(id);
  c.tickAll(2);
  t.is(status(c, 1).commit, index, 'stored by 3 of 5: committed');
  for (const id of [1, 2, 3]) t.deepEqual(c.appliedData(id), ['a']);
  t.deepEqual(c.appliedData(4), []);
  c.heal();
  c.propose(1, 'b');
  c.tickAll(3);
  for (const id of [1, 2, 3, 4, 5]) {
    t.deepEqual(c.appliedData(id), ['a', 'b']);
    const applied = c.node(id).applied.map((e) => e.index);
    t.deepEqual(applied, applied.slice().sort((a, b) => a - b), `node ${id} applies in log order`);
  }
});

test('§5.3 a follower rejects an append whose previous entry does not match, with a backtracking hint', (t) => {
  const c = new Cluster({ nodeOptions: { checkQuorum: false } });
  c.startNode(1, storageWith([1, 2, 3], [1, 1, 2], 2), 1); // indexes 2,3 term 1; 4 term 2
  const raw = c.node(1).raw;
  const cases: Array<{ index: number; logTerm: number; hint: number; hintTerm: number }> = [
    { index: 6, logTerm: 3, hint: 4, hintTerm: 2 }, // beyond our log: the hint is our last entry
    { index: 3, logTerm: 2, hint: 3, hintTerm: 1 }, // term mismatch: the last index with term <= 2
    { index: 4, logTerm: 3, hint: 4, hintTerm: 2 },
  ];
  for (const { index, logTerm, hint, hintTerm } of cases) {
    raw.step(message({ type: 'App', from: 2, to: 1, term: 3, index, logTerm, entries: entries([3], index + 1) }));
    const replies = outbox(c, 1);
    t.is(replies.length, 1);
    t.true(replies[0]!.reject, `App after (${index}, t${logTerm}) is rejected`);
    t.is(replies[0]!.index, index);
    t.is(replies[0]!.rejectHint, hint);
    t.is(replies[0]!.rejectTerm, hintTerm);
    t.is(status(c, 1).lastIndex, 4, 'the log is untouched');
  }
});

test('§5.3 a follower deletes a conflicting suffix and keeps a matching one (appends are idempotent)', (t) => {
  const c = new Cluster({ nodeOptions: { checkQuorum: false } });
  c.startNode(1, storageWith([1, 2, 3], [1, 1, 2, 2], 2), 1); // indexes 2..5
  const raw = c.node(1).raw;
  // Entries that are already there do not truncate what follows (a delayed, duplicated append).
  raw.step(message({ type: 'App', from: 2, to: 1, term: 2, index: 2, logTerm: 1, entries: entries([1], 3) }));
  let replies = outbox(c, 1);
  t.false(replies[0]!.reject);
  t.is(replies[0]!.index, 3);
  t.deepEqual(logTerms(c, 1), [1, 1, 2, 2]);
  // A conflicting entry at index 4 removes 4 and 5 and replaces them.
  raw.step(message({ type: 'App', from: 2, to: 1, term: 3, index: 3, logTerm: 1, entries: entries([3], 4), commit: 4 }));
  replies = outbox(c, 1);
  t.false(replies[0]!.reject);
  t.is(replies[0]!.index, 4);
  t.deepEqual(logTerms(c, 1), [1, 1, 3]);
  t.is(status(c, 1).commit, 4);
});

test('§5.3 a follower never commits beyond what it knows matches the leader', (t) => {
  const c = new Cluster({ nodeOptions: { checkQuorum: false } });
  c.startNode(1, storageWith([1, 2, 3], [1, 1, 2, 2], 2), 1);
  // The leader says commit 9 but only proves a match up to index 3.
  c.node(1).raw.step(message({ type: 'App', from: 2, to: 1, term: 2, index: 3, logTerm: 1, commit: 9 }));
  outbox(c, 1);
  t.is(status(c, 1).commit, 3);
  // A heartbeat's commit is capped at the log's end too.
  c.node(1).raw.step(message({ type: 'Heartbeat', from: 2, to: 1, term: 2, commit: 9 }));
  outbox(c, 1);
  t.is(status(c, 1).commit, 5);
});

// Figure 7 of the paper: the leader of term 8 and six possible follower logs (a)-(f). Paper index
// i is our index i + 1 (index 1 holds the bootstrap configuration).
const figure7Leader = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
const figure7Followers: Record<string, number[]> = {
  a: [1, 1, 1, 4, 4, 5, 5, 6, 6],
  b: [1, 1, 1, 4],
  c: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
  d: [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
  e: [1, 1, 1, 4, 4, 4, 4],
  f: [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
};

for (const [name, follower] of Object.entries(figure7Followers)) {
  test(`§5.3 Figure 7 (${name}): the leader brings the follower's log in line with its own`, (t) => {
    const c = new Cluster({ nodeOptions: { checkQuorum: false } });
    c.startNode(1, storageWith([1, 2, 3], figure7Leader, 7), 1);
    c.startNode(2, storageWith([1, 2, 3], follower, 7), 1);
    c.startNode(3, storageWith([1, 2, 3], figure7Leader, 7), 1);
    let rejects = 0;
    c.node(1).raw.campaign();
    run(c, (m) => {
      if (m.type === 'AppResp' && m.from === 2 && m.reject) rejects++;
      return true;
    });
    t.is(status(c, 1).role, 'leader');
    t.is(status(c, 1).term, 8);
    const expected = [...figure7Leader, 8];
    t.deepEqual(logTerms(c, 1), expected);
    t.deepEqual(logTerms(c, 2), expected);
    t.is(status(c, 2).commit, figure7Leader.length + 2);
    // Fast backtracking: one rejection per differing term at most, never one per entry.
    t.true(rejects <= 2, `${rejects} rejections`);
  });
}

test('§5.3 fast backtracking finds a long conflict in O(terms) round trips, not O(entries)', (t) => {
  const common = [1, 1];
  const leaderLog = [...common, ...Array<number>(100).fill(3)];
  const followerLog = [...common, ...Array<number>(60).fill(2), ...Array<number>(60).fill(2)];
  const c = new Cluster({ nodeOptions: { checkQuorum: false } });
  c.startNode(1, storageWith([1, 2, 3], leaderLog, 3), 1);
  c.startNode(2, storageWith([1, 2, 3], followerLog, 3), 1);
  c.startNode(3, storageWith([1, 2, 3], leaderLog, 3), 1);
  let rejects = 0;
  c.node(1).raw.campaign();
  run(c, (m) => {
    if (m.type === 'AppResp' && m.from === 2 && m.reject) rejects++;
    return true;
  });
  t.is(status(c, 1).role, 'leader');
  t.deepEqual(logTerms(c, 2), [...leaderLog, 4]);
  t.true(rejects <= 2, `${rejects} rejections for 120 divergent entries`);
});

test('§5.3 the leader never overwrites or deletes its own entries (Leader Append-Only)', (t) => {
  const c = new Cluster({ nodeOptions: { checkQuorum: false } });
  c.startNode(1, storageWith([1, 2, 3], [1, 1, 2], 2), 1);
  c.startNode(2, storageWith([1, 2, 3], [1, 1], 2), 1);
  c.startNode(3, storageWith([1, 2, 3], [1, 1], 2), 1);
  c.node(1).raw.campaign();
  run(c);
  t.is(status(c, 1).role, 'leader');
  const before = logTerms(c, 1);
  t.deepEqual(before, [1, 1, 2, 3]);
  // An append from a deposed leader of an older term with a different suffix is refused.
  c.node(1).raw.step(message({ type: 'App', from: 2, to: 1, term: 2, index: 3, logTerm: 1, entries: entries([2, 2, 2], 4), commit: 6 }));
  run(c);
  t.is(status(c, 1).role, 'leader');
  t.deepEqual(logTerms(c, 1), before);
  c.propose(1, 'x');
  t.deepEqual(logTerms(c, 1), [...before, 3]);
  for (const id of [2, 3]) t.deepEqual(logTerms(c, id), [...before, 3], `node ${id} follows the leader`);
});

// ---------------------------------------------------------------- §5.4.2 Figure 8

/**
 * figure8: builds Figure 8 (a)-(c) with 5 nodes. Indexes are the paper's + 1 and terms are one
 * lower (our first election is term 1). Returns when S1, leader of term 3, has replicated its
 * term-1 entry at index 2 to a majority (S1, S2, S3) but not yet its own term-3 entry.
 */
function figure8(t: { is: (a: unknown, b: unknown, m?: string) => void }, extra: NodeOptions = {}): Cluster {
  // appendBytesMax 1: every App carries a single entry, so index 2 and 3 travel separately.
  const c = cluster(5, { preVote: false, checkQuorum: false, appendBytesMax: 1, ...extra });
  const votes = (m: Message) => m.type === 'Vote' || m.type === 'VoteResp';
  // (a) S1 leads term 1 and replicates index 2 to S2 only.
  c.node(1).raw.campaign();
  run(c, (m) => votes(m) || ((m.type === 'App' || m.type === 'AppResp') && (m.to === 2 || m.from === 2)));
  t.is(status(c, 1).role, 'leader');
  t.is(status(c, 1).commit, 1);
  // (b) S1 crashes; S5 is elected for term 2 by S3, S4, S5 and appends index 2 (term 2) alone.
  c.isolate(1);
  c.node(5).raw.campaign();
  run(c, votes);
  t.is(status(c, 5).role, 'leader');
  t.is(status(c, 5).term, 2);
  // (c) S5 crashes; S1 restarts and is elected for term 3 (after losing term 2), then
  // replicates index 2 (term 1) to S3. Index 3 (its term-3 no-op) goes nowhere.
  c.heal();
  c.isolate(5);
  c.restart(5);
  c.restart(1);
  // Appends to S2/S3 pass, but index 3 never arrives: an App carrying it loses its entries (as if
  // they had travelled in a separate, lost message), so S2 and S3 acknowledge index 2 only.
  const toS2S3 = (m: Message) => (m.type === 'App' || m.type === 'AppResp') && (m.to === 2 || m.to === 3 || m.from === 2 || m.from === 3);
  for (let attempt = 0; attempt < 3 && status(c, 1).role !== 'leader'; attempt++) {
    c.node(1).raw.campaign();
    run(c, (m) => {
      if (m.type === 'App') m.entries = m.entries.filter((e) => e.index <= 2);
      return votes(m) || toS2S3(m);
    });
  }
  t.is(status(c, 1).role, 'leader');
  t.is(status(c, 1).term, 3);
  return c;
}

test('§5.4.2 Figure 8: an entry of an earlier term stored on a majority is not committed by counting', (t) => {
  const c = figure8(t);
  for (const id of [1, 2, 3]) t.is(c.node(id).storage.term(2), 1, `S${id} holds (2, t1)`);
  t.is(status(c, 1).progress.get(2)?.match, 2);
  t.is(status(c, 1).progress.get(3)?.match, 2);
  t.is(status(c, 1).commit, 1, 'a majority holds index 2, yet it is of term 1 and stays uncommitted');
  // (d) S1 crashes again; S5 can still win (S2, S3, S4 vote: its last term 2 beats their 1) and
  // overwrites index 2 everywhere. That is safe only because index 2 was never committed.
  c.heal();
  c.isolate(1);
  for (let attempt = 0; attempt < 3 && status(c, 5).role !== 'leader'; attempt++) {
    c.node(5).raw.campaign();
    run(c);
  }
  t.is(status(c, 5).role, 'leader');
  for (const id of [2, 3, 4, 5]) t.is(c.node(id).storage.term(2), 2, `S${id} now holds (2, t2)`);
  for (const node of c.nodes.values()) {
    t.false(node.applied.some((e) => e.index === 2 && e.term === 1), `S${node.id} never applied the overwritten entry`);
  }
});

test('§5.4.2 Figure 8 is sensitive: with the commitOldTermEntries knob the leader commits index 2 by counting', (t) => {
  const c = figure8(t, { testing: { commitOldTermEntries: true } });
  t.is(status(c, 1).commit, 2, 'the broken rule commits an entry that S5 could still overwrite');
});

test('§5.4.2 Figure 8 (e): once the leader commits an entry of its own term, earlier ones commit with it', (t) => {
  const c = figure8(t);
  // S1 replicates its term-3 entry to S2 and S3: index 3 commits, and index 2 indirectly.
  run(c, (m) => !(m.from === 5 || m.to === 5 || m.from === 4 || m.to === 4));
  c.tickAll(1);
  t.is(status(c, 1).commit, 3);
  t.true(c.node(1).applied.some((e) => e.index === 2 && e.term === 1));
  // Now S5 cannot be elected: S2 and S3 hold a later last term than S5 does.
  c.heal();
  c.isolate(1);
  for (let attempt = 0; attempt < 4; attempt++) {
    c.node(5).raw.campaign();
    c.stabilize();
    t.not(status(c, 5).role, 'leader');
  }
  for (const id of [2, 3]) t.is(c.node(id).storage.term(2), 1, `S${id} keeps the committed entry`);
});

// ---------------------------------------------------------------- §5.5

test('§5.5 a crashed follower is retried indefinitely and catches up after restarting', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(3);
  c.propose(1, 'a');
  c.propose(1, 'b');
  c.tickAll(25);
  const restarted = c.restart(3);
  t.deepEqual(c.appliedData(3), []);
  t.is(restarted.raw.status().lastIndex, 2);
  c.heal();
  c.tickAll(5);
  t.deepEqual(c.appliedData(3), ['a', 'b']);
  t.is(c.leader()?.id, 1);
});

test('§5.5 a lost append is resent after the next heartbeat response', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.isolate(3); // no commit to announce: only the heartbeat can reveal the loss
  let dropped = 0;
  c.node(1).raw.propose(bytes('a'));
  run(c, (m) => {
    if (m.type === 'App' && m.to === 2 && m.entries.length > 0 && dropped === 0) {
      dropped++;
      return false;
    }
    return true;
  });
  t.is(dropped, 1);
  t.deepEqual(c.appliedData(2), []);
  tickRun(c, 2);
  t.deepEqual(c.appliedData(2), ['a']);
});

test('§5.5 a follower that restarts keeps its durable term, vote and log', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.propose(1, 'a');
  const before = status(c, 2);
  const restarted = c.restart(2).raw.status();
  t.is(restarted.term, before.term);
  t.is(restarted.vote, before.vote);
  t.is(restarted.lastIndex, before.lastIndex);
  t.is(restarted.commit, before.commit);
  t.is(restarted.role, 'follower');
});

// ---------------------------------------------------------------- flow control

test('a turn\'s proposals beyond appendBytesMax still all leave at once, in several appends', (t) => {
  const c = cluster(3, { appendBytesMax: 1000 });
  c.campaign(1);
  for (let i = 0; i < 10; i++) c.node(1).raw.propose(bytes(String(i).repeat(400)));
  const apps = outbox(c, 1).filter((m) => m.type === 'App' && m.to === 2);
  t.true(apps.length >= 4, `${apps.length} appends`);
  t.is(apps.reduce((n, m) => n + m.entries.length, 0), 10, 'every entry went out, none waits for an answer');
  for (const m of apps) t.true(m.entries.length === 1 || m.entries.reduce((n, e) => n + e.data.length, 0) <= 1000);
});

test('proposals made while a Ready is in flight leave with takeMessagesInFlight, during the leader\'s persist', (t) => {
  const c = cluster(3);
  c.campaign(1);
  const raw = c.node(1).raw;
  raw.propose(bytes('x'));
  const rd = raw.ready(); // in flight: its persist has not completed
  t.true(rd.entries.length > 0);
  raw.propose(bytes('y'));
  const early = raw.takeMessagesInFlight().filter((m) => m.type === 'App');
  t.deepEqual(early.map((m) => m.to).sort(), [2, 3]);
  for (const m of early) t.true(m.entries.some((e) => text(e.data) === 'y'), 'the append of y left before the persist of x completed');
});

/** proposeAlone: a proposal in a turn of its own: hasReady() sends the appends it asked for before the next one. */
function proposeAlone(c: Cluster, id: NodeId, value: string): void {
  c.node(id).raw.propose(bytes(value));
  c.node(id).raw.hasReady();
}

test('one turn\'s proposals travel in one append per follower, and several commit advances in one broadcast', (t) => {
  const c = cluster(3);
  c.campaign(1);
  for (let i = 0; i < 5; i++) c.node(1).raw.propose(bytes(`p${i}`));
  const apps = outbox(c, 1).filter((m) => m.type === 'App');
  t.deepEqual(apps.map((m) => [m.to, m.entries.length]).sort(), [[2, 5], [3, 5]], 'one append per follower, all five entries');
  for (const m of apps) c.node(m.to).raw.step(m);
  const acks = [...outbox(c, 2), ...outbox(c, 3)].filter((m) => m.type === 'AppResp');
  t.is(acks.length, 2, 'one answer per follower');
  for (const m of acks) c.node(1).raw.step(m);
  const commits = outbox(c, 1).filter((m) => m.type === 'App');
  t.deepEqual(commits.map((m) => m.to).sort(), [2, 3], 'the commit index goes out once per follower, after both answers');
  for (const m of commits) t.is(m.commit, status(c, 1).commit);
  for (const m of commits) c.node(m.to).raw.step(m);
  run(c);
  t.deepEqual(c.appliedData(2), ['p0', 'p1', 'p2', 'p3', 'p4']);
});

test('flow control: inflightMessagesMax bounds the appends in flight to a follower in replicate state', (t) => {
  const c = cluster(3, { inflightMessagesMax: 2 });
  c.campaign(1);
  t.is(status(c, 1).progress.get(2)?.state, 'replicate');
  // Each proposal in its own turn (hasReady sends what it asked for; one turn's proposals share one append).
  for (let i = 0; i < 5; i++) proposeAlone(c, 1, `p${i}`);
  const apps = outbox(c, 1).filter((m) => m.type === 'App' && m.to === 2);
  t.is(apps.length, 2);
  t.is(status(c, 1).progress.get(2)?.inflight, 2);
  // Acknowledging frees the window and the rest follows.
  for (const m of apps) c.node(2).raw.step(m);
  run(c);
  t.deepEqual(c.appliedData(2), ['p0', 'p1', 'p2', 'p3', 'p4']);
});

test('flow control: a full window whose appends were all lost recovers after a heartbeat', (t) => {
  const c = cluster(3, { inflightMessagesMax: 2 });
  c.campaign(1);
  for (let i = 0; i < 4; i++) proposeAlone(c, 1, `p${i}`);
  // Every append to node 2 is lost; node 3 keeps the cluster committing.
  run(c, (m) => !(m.type === 'App' && m.to === 2));
  t.is(status(c, 1).progress.get(2)?.inflight, 2);
  t.deepEqual(c.appliedData(2), []);
  tickRun(c, 3);
  t.deepEqual(c.appliedData(2), ['p0', 'p1', 'p2', 'p3']);
  t.is(status(c, 1).progress.get(2)?.state, 'replicate');
});

test('flow control: inflightBytesMax bounds the bytes in flight to a follower', (t) => {
  const c = cluster(3, { inflightBytesMax: 200 });
  c.campaign(1);
  for (let i = 0; i < 4; i++) proposeAlone(c, 1, 'x'.repeat(100));
  const sent = outbox(c, 1);
  const apps = sent.filter((m) => m.type === 'App' && m.to === 2);
  t.is(apps.length, 2, '124 bytes, then 248 >= 200: paused');
  c.queue.push(...sent);
  run(c);
  t.is(c.appliedData(2).length, 4);
});

test('flow control: a follower in probe state gets one append at a time', (t) => {
  const c = cluster(3);
  c.campaign(1);
  c.node(1).raw.reportUnreachable(2);
  t.is(status(c, 1).progress.get(2)?.state, 'probe');
  for (let i = 0; i < 3; i++) proposeAlone(c, 1, `p${i}`);
  const apps = outbox(c, 1).filter((m) => m.type === 'App' && m.to === 2);
  t.is(apps.length, 1);
  t.is(apps[0]!.entries.length, 1, 'the probe carries what was there when it was sent');
  c.node(2).raw.step(apps[0]!);
  run(c);
  t.is(status(c, 1).progress.get(2)?.state, 'replicate', 'an acknowledged probe returns to replicate');
  t.deepEqual(c.appliedData(2), ['p0', 'p1', 'p2']);
});

test('flow control: appendBytesMax splits a long catch-up into several appends', (t) => {
  const c = cluster(3, { appendBytesMax: 250 });
  c.campaign(1);
  c.isolate(3);
  for (let i = 0; i < 6; i++) c.propose(1, String(i).repeat(100));
  c.heal();
  const sizes: number[][] = [];
  tickRun(c, 5, (m) => {
    if (m.type === 'App' && m.to === 3 && m.entries.length > 0) sizes.push(m.entries.map((e) => e.data.length + 24));
    return true;
  });
  t.is(c.appliedData(3).length, 6);
  t.true(sizes.length >= 3, `${sizes.length} appends`);
  for (const batch of sizes) t.true(batch.length === 1 || batch.reduce((a, b) => a + b, 0) <= 250, `batch ${batch}`);
});

test('flow control: uncommittedBytesMax makes propose throw BUSY until entries commit', (t) => {
  const c = cluster(3, { uncommittedBytesMax: 300 });
  c.campaign(1);
  c.cutLink(1, 2);
  c.cutLink(1, 3);
  const raw = c.node(1).raw;
  raw.propose(bytes('x'.repeat(100)));
  raw.propose(bytes('x'.repeat(100)));
  const error = t.throws(() => raw.propose(bytes('x'.repeat(100))));
  t.is((error as ChardError).code, 'BUSY');
  c.heal();
  c.tickAll(3);
  t.is(c.appliedData(1).length, 2);
  t.notThrows(() => raw.propose(bytes('y')));
  // A single proposal larger than the limit is accepted when nothing is uncommitted (no livelock).
  c.stabilize();
  t.notThrows(() => c.propose(1, 'z'.repeat(1000)));
});

test('flow control: committedBytesPerReadyMax splits committed entries over several Readys', (t) => {
  const storage = MemoryStorage.bootstrap([1]);
  storage.append(Array.from({ length: 5 }, (_, i) => ({ term: 1, index: 2 + i, type: EntryType.Normal, data: new Uint8Array(100) })));
  storage.setHardState({ term: 1, vote: 1, commit: 6 });
  const raw = new RawNode({ id: 1, storage, random: new SeededRandom(1), applied: 1, committedBytesPerReadyMax: 300 });
  const batches: number[][] = [];
  for (let i = 0; i < 10 && raw.hasReady(); i++) {
    const rd = raw.ready();
    if (rd.committedEntries.length > 0) batches.push(rd.committedEntries.map((e) => e.index));
    raw.advance();
  }
  t.deepEqual(batches, [[2, 3], [4, 5], [6]]);
  t.is(raw.status().applied, 6);
});
