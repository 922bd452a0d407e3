// Proves: a leader's messagesEarly (appends sent before its own fsync) never carry a term that is
// not durable yet. A voter that is a quorum alone (one voter, learners) becomes leader in the very
// Ready that raises its term; were its appends early and that persist lost in a crash, the
// restarted node could lead the same term again with other entries, and a learner holding the
// first ones would keep them (log matching broken: the simulator's seed 3382 of 2001-4000).
import test from 'ava';
import { RawNode } from '../../src/raft/rawnode.js';
import { SeededRandom } from '../../src/raft/random.js';
import { MemoryStorage } from '../../src/raft/storage.js';
import { MessageType, message } from '../../src/raft/types.js';

test('a single voter that just won its term sends its first appends only after the term is persisted', (t) => {
  const storage = MemoryStorage.bootstrap([1], [2]);
  const raw = new RawNode({ id: 1, storage, random: new SeededRandom(1), applied: 1 });
  raw.campaign();
  t.is(raw.basicStatus().role, 'leader');
  raw.propose(new TextEncoder().encode('w')); // a client write in the same turn (as in seed 3382)
  const first = raw.ready();
  t.is(first.hardState?.term, 1, 'the Ready raises the term');
  t.deepEqual(first.messagesEarly.filter((m) => m.type === MessageType.App), [], 'no append before the new term is durable');
  t.true(first.messages.some((m) => m.type === MessageType.App && m.to === 2), 'the append waits for the persist');
  storage.append(first.entries);
  storage.setHardState(first.hardState!);
  raw.advance();
  // The learner acknowledges the first append (its probe is answered), then a new write comes.
  raw.step(message({ type: MessageType.AppResp, from: 2, to: 1, term: 1, index: first.entries[first.entries.length - 1]!.index }));
  raw.propose(new TextEncoder().encode('x'));
  const second = raw.ready();
  t.true(second.messagesEarly.some((m) => m.type === MessageType.App && m.to === 2), 'once the term is durable, appends leave early again');
});
