// faulty: proves the fault-injection wrapper and the in-memory hub do what tests and `chard chaos`
// rely on: a one-way partition (block 1 -> 2) stops exactly that direction while 2 -> 1 still
// flows, on the in-memory hub and on real stream transports; healing restores it; wrapping only one
// node still cuts both of its chosen directions (inbound filtering); drop and duplicate
// probabilities follow the seeded Random (the same seed gives the same decisions); delay defers
// delivery; and the memory hub delivers in order, asynchronously, and reports unreachable peers.
import test, { type ExecutionContext } from 'ava';
import { SeededRandom } from '../../src/raft/random.js';
import type { Message, NodeId } from '../../src/raft/types.js';
import { Faults, FaultyTransport } from '../../src/transport/faulty.js';
import { MemoryHub } from '../../src/transport/memory.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';
import type { Transport } from '../../src/transport/transport.js';
import { until, heartbeat as hb } from '../helpers/until.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const afterFlush = () => new Promise<void>((resolve) => setImmediate(resolve));


interface Wired {
  transports: Map<NodeId, Transport>;
  inbox: Map<NodeId, Message[]>;
}

async function wire(make: (id: NodeId) => Transport, ids: NodeId[], faults: Faults, wrap: (id: NodeId) => boolean = () => true): Promise<Wired> {
  const transports = new Map<NodeId, Transport>();
  const inbox = new Map<NodeId, Message[]>();
  for (const id of ids) {
    const inner = make(id);
    const transport = wrap(id) ? new FaultyTransport(inner, faults) : inner;
    const received: Message[] = [];
    transport.onMessage((m) => received.push(m));
    await transport.start();
    transports.set(id, transport);
    inbox.set(id, received);
  }
  for (const [id, transport] of transports) for (const [peer, other] of transports) if (peer !== id) transport.addPeer(peer, other.address());
  return { transports, inbox };
}

async function oneWayPartition(t: ExecutionContext, w: Wired, faults: Faults): Promise<void> {
  const [one, two] = [w.transports.get(1)!, w.transports.get(2)!];
  faults.block(1, 2);
  for (let i = 1; i <= 20; i++) {
    one.send([hb(1, 2, i)]);
    two.send([hb(2, 1, i)]);
  }
  await until(t, '2 -> 1 traffic', () => w.inbox.get(1)!.length === 20);
  await sleep(50);
  t.is(w.inbox.get(2)!.length, 0, '1 -> 2 is cut');
  t.deepEqual(w.inbox.get(1)!.map((m) => m.index), Array.from({ length: 20 }, (_, i) => i + 1), '2 -> 1 flows, in order');
  faults.heal();
  one.send([hb(1, 2, 99)]);
  await until(t, 'healed 1 -> 2', () => w.inbox.get(2)!.length === 1);
  t.is(w.inbox.get(2)![0]!.index, 99);
}

test('one-way partition blocks exactly one direction (memory hub)', async (t) => {
  const hub = new MemoryHub();
  const faults = new Faults(new SeededRandom(1));
  const w = await wire((id) => hub.transport(id), [1, 2], faults);
  await oneWayPartition(t, w, faults);
  t.is(faults.counts.blocked, 20);
});

test('one-way partition blocks exactly one direction (stream transport on loopback)', async (t) => {
  const faults = new Faults(new SeededRandom(1));
  const w = await wire((id) => new StreamTransport({ clusterId: 'c', nodeId: id, listen: '127.0.0.1:0' }), [1, 2], faults);
  try {
    await oneWayPartition(t, w, faults);
  } finally {
    for (const transport of w.transports.values()) await transport.close();
  }
});

test('wrapping only one node still cuts the chosen inbound direction', async (t) => {
  const hub = new MemoryHub();
  const faults = new Faults(new SeededRandom(1));
  // Only node 2 is wrapped; block 1 -> 2 is then enforced on 2's receiving side.
  const w = await wire((id) => hub.transport(id), [1, 2], faults, (id) => id === 2);
  await oneWayPartition(t, w, faults);
});

test('drop and duplicate follow the seeded Random', async (t) => {
  const run = async (seed: number) => {
    const hub = new MemoryHub();
    const faults = new Faults(new SeededRandom(seed), { dropProbability: 0.3, duplicateProbability: 0.2 });
    const w = await wire((id) => hub.transport(id), [1, 2], faults);
    for (let i = 1; i <= 1000; i++) w.transports.get(1)!.send([hb(1, 2, i)]);
    // The hub delivers everything queued in one setImmediate flush; an immediate queued after it
    // runs after it (a 20 ms sleep did not always: a loaded machine may run the expired timer first).
    await afterFlush();
    return { indexes: w.inbox.get(2)!.map((m) => m.index), counts: { ...faults.counts } };
  };
  const first = await run(7);
  const again = await run(7);
  const other = await run(8);
  t.deepEqual(first, again, 'the same seed replays the same faults');
  t.notDeepEqual(first.indexes, other.indexes);
  t.true(first.counts.dropped > 230 && first.counts.dropped < 370, `dropped ${first.counts.dropped} of 1000`);
  t.is(first.indexes.length, 1000 - first.counts.dropped + first.counts.duplicated);
});

test('delay defers delivery; a link cut while in flight stays cut', async (t) => {
  const hub = new MemoryHub();
  const faults = new Faults(new SeededRandom(3), { delayMsMin: 40, delayMsMax: 60 });
  const w = await wire((id) => hub.transport(id), [1, 2, 3], faults);
  const sentAt = performance.now();
  w.transports.get(1)!.send([hb(1, 2, 1), hb(1, 3, 1)]);
  faults.block(1, 3);
  await until(t, 'delayed delivery', () => w.inbox.get(2)!.length === 1);
  t.true(performance.now() - sentAt >= 35, 'not delivered before the delay');
  await sleep(50);
  t.is(w.inbox.get(3)!.length, 0);
  t.is(faults.counts.delayed, 2);
});

test('memory hub: in order, asynchronous, unreachable for closed peers, bounded per link', async (t) => {
  const hub = new MemoryHub({ linkQueueMessagesMax: 100 });
  const a = hub.transport(1);
  const b = hub.transport(2);
  const got: number[] = [];
  const unreachable: NodeId[] = [];
  b.onMessage((m) => got.push(m.index));
  a.onUnreachable((peer) => unreachable.push(peer));
  await a.start();
  await b.start();
  a.addPeer(2, b.address());
  for (let i = 1; i <= 150; i++) a.send([hb(1, 2, i)]);
  t.deepEqual(got, [], 'nothing is delivered inside send()');
  // The hub flushes in a setImmediate; an immediate queued after it runs after it (a 10 ms timer
  // did not always: on a loaded machine Node may run a just-expired timer first).
  await afterFlush();
  t.deepEqual(got, Array.from({ length: 100 }, (_, i) => i + 1));
  t.is(unreachable.length, 50, 'overflow reported');
  await b.close();
  a.send([hb(1, 2, 151)]);
  await afterFlush();
  t.is(unreachable.length, 51, 'a closed peer is unreachable');
  t.is(hub.delivered, 100);
});
