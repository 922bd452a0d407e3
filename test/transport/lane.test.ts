// lane: a transport Lane (one peer's bounded send queue) holds only what waits to be sent. A
// message taken for a frame leaves the queue's array at once, so an idle lane keeps no sent App
// message — and no entry data — alive (before, up to 1,024 sent messages per peer stayed reachable
// until the array was next compacted, which an idle lane never reached: tens of MiB of 1 MiB
// entries after a sequential write job). Order and the compaction of a long queue are kept.
import test from 'ava';
import { EntryType, type Message, message } from '../../src/raft/types.js';
import { Lane } from '../../src/transport/transport.js';

function app(index: number, bytes: number): Message {
  return message({ type: 'App', from: 1, to: 2, term: 1, index: index - 1, logTerm: 1, entries: [{ index, term: 1, type: EntryType.Normal, data: new Uint8Array(bytes) }] });
}

const reachable = (lane: Lane, m: Message) => lane.queue.includes(m);

test('a taken message is no longer reachable from its lane, idle or not', (t) => {
  const lane = new Lane('regular', 8192, 64 * 1024 * 1024, 512, 4 * 1024 * 1024, Number.MAX_SAFE_INTEGER);
  const sent: Message[] = [];
  for (let i = 1; i <= 100; i++) lane.push(app(i, 1024), 1024);
  for (let i = 0; i < 60; i++) sent.push(lane.shift());
  t.is(lane.length, 40);
  for (const m of sent) t.false(reachable(lane, m));
  t.is(lane.peek(), lane.queue[lane.head]);
  t.is(lane.peek()!.entries[0]!.index, 61, 'order is kept');
  while (lane.length > 0) sent.push(lane.shift());
  t.is(sent.length, 100);
  t.deepEqual(sent.map((m) => m.entries[0]!.index), Array.from({ length: 100 }, (_, i) => i + 1));
  for (const m of sent) t.false(reachable(lane, m));
  t.is(lane.queue.length, 0, 'an emptied lane keeps no slots');
  t.is(lane.head, 0);
});

test('a long queue is compacted as it drains and keeps its order', (t) => {
  const lane = new Lane('regular', 8192, 64 * 1024 * 1024, 512, 4 * 1024 * 1024, Number.MAX_SAFE_INTEGER);
  for (let i = 1; i <= 5000; i++) lane.push(app(i, 0), 0);
  const order: number[] = [];
  for (let i = 0; i < 3000; i++) order.push(lane.shift().entries[0]!.index);
  t.true(lane.queue.length < 5000, 'compacted');
  t.is(lane.length, 2000);
  t.true(lane.queue.slice(0, lane.head).every((m) => m === undefined));
  lane.push(app(5001, 0), 0);
  while (lane.length > 0) order.push(lane.shift().entries[0]!.index);
  t.deepEqual(order, Array.from({ length: 5001 }, (_, i) => i + 1));
});
