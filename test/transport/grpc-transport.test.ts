// grpc-transport: proves GrpcTransport's guarantees over real gRPC on loopback (port 0 only):
// 10k messages each way between two transports arrive complete and in order per link (and prints
// the measured messages/s); a peer of another cluster is refused at the probe and a raw frame of
// another cluster / for another node ends its stream, both counted, nothing delivered; a bad frame
// is dropped and counted while the stream goes on; a restarted receiver is reconnected to and
// delivery resumes in order; queue overflow (a black-hole peer, and a receiver that stops reading
// so HTTP/2 flow control pushes back) drops, reports unreachable and keeps the queue within its
// bounds; and a flood of 1 MiB snapshot chunks does not delay heartbeats beyond a bound (latency
// measured and printed). Serial, because two of them measure time.
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import test, { type ExecutionContext } from 'ava';
import { type Message, message, type NodeId } from '../../src/raft/types.js';
import { encodeEnvelope, type WireEnvelope } from '../../src/transport/codec.js';
import { clientConstructor, serviceDefinition } from '../../src/transport/proto.js';
import { GrpcTransport, type TransportLimits } from '../../src/transport/transport.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function until(t: ExecutionContext, what: string, condition: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) t.fail(`timed out waiting for ${what}`);
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

interface Node {
  transport: GrpcTransport;
  received: Message[];
  unreachable: NodeId[];
}

async function node(id: NodeId, options: { clusterId?: string; listen?: string; limits?: Partial<TransportLimits> } = {}): Promise<Node> {
  const transport = new GrpcTransport({
    clusterId: options.clusterId ?? 'c1',
    nodeId: id,
    listen: options.listen ?? '127.0.0.1:0',
    limits: { reconnectBackoffMsMin: 20, reconnectBackoffMsMax: 200, ...options.limits },
  });
  const n: Node = { transport, received: [], unreachable: [] };
  transport.onMessage((m) => n.received.push(m));
  transport.onUnreachable((peer) => n.unreachable.push(peer));
  await transport.start();
  return n;
}

function app(from: NodeId, to: NodeId, index: number, dataBytes = 64): Message {
  return message({ type: 'App', from, to, term: 1, index, entries: [{ term: 1, index: index + 1, type: 0, data: new Uint8Array(dataBytes) }] });
}

/** pump: send `count` messages made by `make`, keeping the peer's queue below `queuedMax`. */
async function pump(from: Node, to: NodeId, count: number, make: (i: number) => Message, queuedMax = 4000): Promise<void> {
  let sent = 0;
  while (sent < count) {
    if ((from.transport.peerStats(to)?.queuedMessages ?? 0) < queuedMax) {
      const batch: Message[] = [];
      while (sent < count && batch.length < 500) batch.push(make(++sent));
      from.transport.send(batch);
    }
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

function inOrder(messages: Message[], from: NodeId): boolean {
  const indexes = messages.filter((m) => m.from === from).map((m) => m.index);
  return indexes.every((index, i) => index === i + 1);
}

test.serial('10k messages each way arrive complete and in order per link; messages/s measured', async (t) => {
  const a = await node(1);
  const b = await node(2);
  try {
    a.transport.addPeer(2, b.transport.address());
    b.transport.addPeer(1, a.transport.address());
    const count = 10_000;
    const started = performance.now();
    await Promise.all([pump(a, 2, count, (i) => app(1, 2, i)), pump(b, 1, count, (i) => app(2, 1, i))]);
    await until(t, 'all messages', () => a.received.length === count && b.received.length === count, 60_000);
    const seconds = (performance.now() - started) / 1000;
    t.true(inOrder(b.received, 1), 'a -> b in order');
    t.true(inOrder(a.received, 2), 'b -> a in order');
    t.deepEqual(a.unreachable, []);
    t.deepEqual(b.unreachable, []);
    const counts = b.transport.counts();
    t.is(counts['transport.messages.received'], count);
    t.true((counts['transport.frames.received'] ?? count) < count / 10, 'messages are batched into frames');
    t.log(
      `loopback: ${2 * count} messages (64 B entries) in ${seconds.toFixed(2)} s = ${Math.round((2 * count) / seconds)} messages/s ` +
        `(${counts['transport.frames.received']} frames a->b)`,
    );
  } finally {
    await a.transport.close();
    await b.transport.close();
  }
});

test.serial('a peer of another cluster is refused and counted; nothing is delivered', async (t) => {
  const a = await node(1, { clusterId: 'c1' });
  const x = await node(2, { clusterId: 'c2' });
  try {
    a.transport.addPeer(2, x.transport.address());
    a.transport.send([app(1, 2, 1)]);
    await until(t, 'refusal', () => a.unreachable.length > 0);
    t.deepEqual(a.unreachable, [2]);
    t.true((a.transport.counts()['transport.peer.refused.wrong-cluster'] ?? 0) >= 1);
    t.true((x.transport.counts()['transport.probe.refused'] ?? 0) >= 1);
    t.is(x.received.length, 0);
    // While backing off, further sends wait (bounded) for the next attempt, which is refused again:
    // still nothing reaches the other cluster.
    a.transport.send([app(1, 2, 2)]);
    t.true((a.transport.counts()['transport.send.queued.disconnected'] ?? 0) >= 1);
    await sleep(1200);
    t.is(x.received.length, 0);
    t.true((a.transport.counts()['transport.peer.refused.wrong-cluster'] ?? 0) >= 2);
  } finally {
    await a.transport.close();
    await x.transport.close();
  }
});

test.serial('raw frames: wrong cluster or node ends the stream; a bad frame is dropped and counted', async (t) => {
  const b = await node(2, { clusterId: 'c1' });
  const Client = clientConstructor('raft.proto', 'chard.raft.RaftPeer');
  const client = new Client(b.transport.address(), grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    Stream(): grpc.ClientDuplexStream<WireEnvelope, unknown>;
  };
  const ended = (stream: grpc.ClientDuplexStream<WireEnvelope, unknown>) =>
    new Promise<grpc.ServiceError>((resolve) => {
      stream.on('data', () => {});
      stream.on('error', resolve);
    });
  try {
    // Another cluster.
    let stream = client.Stream();
    let status = ended(stream);
    stream.write(encodeEnvelope('c2', 1, 2, [app(1, 2, 1)]));
    let error = await status;
    t.is(error.code, grpc.status.FAILED_PRECONDITION);
    t.is(error.metadata.get('chard-code')[0], 'WRONG_CLUSTER');
    t.is(b.transport.counts()['transport.frame.wrong-cluster'], 1);

    // Right cluster, another node.
    stream = client.Stream();
    status = ended(stream);
    stream.write(encodeEnvelope('c1', 1, 9, [app(1, 9, 1)]));
    error = await status;
    t.is(error.code, grpc.status.FAILED_PRECONDITION);
    t.is(b.transport.counts()['transport.frame.wrong-node'], 1);

    // A bad frame (a negative term) is dropped; the next good frame on the same stream arrives.
    stream = client.Stream();
    stream.on('data', () => {});
    stream.on('error', () => {});
    const bad = encodeEnvelope('c1', 1, 2, [app(1, 2, 1)]);
    bad.messages[0]!.type = 'MSG_NOT_A_TYPE';
    stream.write(bad);
    stream.write(encodeEnvelope('c1', 1, 2, [app(1, 2, 7)]));
    await until(t, 'good frame', () => b.received.length === 1);
    t.is(b.received[0]!.index, 7);
    t.is(b.transport.counts()['transport.frame.rejected'], 1);
    t.is(b.transport.counts()['transport.frame.rejected.unknown-type'], 1);
    stream.cancel();
  } finally {
    client.close();
    await b.transport.close();
  }
});

test.serial('a restarted receiver is reconnected to and delivery resumes in order', async (t) => {
  const a = await node(1);
  let b = await node(2);
  try {
    const address = b.transport.address();
    a.transport.addPeer(2, address);
    let index = 0;
    const beat = () => a.transport.send([app(1, 2, ++index)]);
    for (let i = 0; i < 50; i++) beat();
    await until(t, 'first delivery', () => b.received.length === 50);
    const failuresBefore = a.transport.peerStats(2)!.failures;

    await b.transport.close();
    const restartedAt = performance.now();
    // While it is down: keep sending (a leader's heartbeats); the link fails and backs off.
    for (let i = 0; i < 20; i++) {
      beat();
      await sleep(10);
    }
    b = await node(2, { listen: address }); // the same address, as a restarted process would
    let firstIndexAfterRestart = 0;
    b.transport.onMessage((m) => {
      if (firstIndexAfterRestart === 0) firstIndexAfterRestart = m.index;
      b.received.push(m);
    });
    const timer = setInterval(beat, 10);
    try {
      await until(t, 'delivery after restart', () => b.received.length >= 20, 20_000);
    } finally {
      clearInterval(timer);
    }
    const seconds = (performance.now() - restartedAt) / 1000;
    t.true(a.unreachable.length >= 1 && a.unreachable.every((id) => id === 2), 'the failure was reported (once per failed attempt)');
    t.true(a.transport.peerStats(2)!.failures >= failuresBefore, 'failures counted');
    t.true((a.transport.counts()['transport.peer.connected'] ?? 0) >= 2, 'reconnected');
    const indexes = b.received.map((m) => m.index);
    t.true(indexes.every((x, i) => i === 0 || x > indexes[i - 1]!), 'in order after the restart');
    t.true(firstIndexAfterRestart > 50);
    t.log(`delivery resumed ${seconds.toFixed(2)} s after the receiver went down (${a.transport.counts()['transport.peer.failed.stream-regular-error'] ?? 0} stream errors)`);
  } finally {
    await a.transport.close();
    await b.transport.close();
  }
});

test.serial('addPeer with a new address moves the link there; removePeer stops it', async (t) => {
  const a = await node(1);
  const old = await node(2);
  const moved = await node(2);
  try {
    a.transport.addPeer(2, old.transport.address());
    a.transport.send([app(1, 2, 1)]);
    await until(t, 'delivery to the old address', () => old.received.length === 1);
    a.transport.addPeer(2, old.transport.address()); // same address: a no-op, the link stays up
    t.is(a.transport.peerStats(2)!.state, 'streaming');
    a.transport.addPeer(2, moved.transport.address());
    a.transport.send([app(1, 2, 2)]);
    await until(t, 'delivery to the new address', () => moved.received.length === 1);
    t.is(old.received.length, 1);
    a.transport.removePeer(2);
    t.is(a.transport.peerStats(2), undefined);
    a.transport.send([app(1, 2, 3)]);
    t.is(a.transport.counts()['transport.send.dropped.unknown-peer'], 1);
  } finally {
    await a.transport.close();
    await old.transport.close();
    await moved.transport.close();
  }
});

test.serial('overflow toward a black-hole peer drops, reports unreachable, and stays bounded', async (t) => {
  // A TCP server that accepts and never answers: the probe hangs, so messages pile up.
  const sockets = new Set<net.Socket>();
  const hole = net.createServer((socket) => sockets.add(socket));
  await new Promise<void>((resolve) => hole.listen(0, '127.0.0.1', resolve));
  const port = (hole.address() as net.AddressInfo).port;
  const a = await node(1, { limits: { peerQueueMessagesMax: 1000, peerQueueBytesMax: 1024 * 1024, probeTimeoutMs: 60_000 } });
  try {
    a.transport.addPeer(2, `127.0.0.1:${port}`);
    for (let i = 1; i <= 20_000; i++) a.transport.send([app(1, 2, i)]);
    const stats = a.transport.peerStats(2)!;
    t.is(stats.state, 'probing');
    t.is(stats.queuedMessages, 1000);
    t.true(stats.queuedBytes <= 1024 * 1024);
    t.is(a.transport.counts()['transport.send.dropped.overflow'], 19_000);
    t.deepEqual(a.unreachable, [2], 'reported once per episode, not once per message');
    // Bytes bound: large messages stop at peerQueueBytesMax even below the message count bound.
    a.transport.removePeer(2);
    a.transport.addPeer(2, `127.0.0.1:${port}`);
    for (let i = 1; i <= 100; i++) a.transport.send([app(1, 2, i, 64 * 1024)]);
    const big = a.transport.peerStats(2)!;
    t.true(big.queuedBytes <= 1024 * 1024 && big.queuedMessages < 20, `queued ${big.queuedMessages} / ${big.queuedBytes} B`);
  } finally {
    await a.transport.close();
    for (const socket of sockets) socket.destroy();
    await new Promise<void>((resolve) => hole.close(() => resolve()));
  }
});

test.serial('a receiver that stops reading pushes back through HTTP/2 into the bounded queue', async (t) => {
  // A raw RaftPeer server: answers the probe correctly, accepts streams, then never reads.
  const server = new grpc.Server();
  let framesRead = 0;
  server.addService(serviceDefinition('raft.proto', 'chard.raft.RaftPeer'), {
    Probe: (_call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => callback(null, { cluster_id: 'c1', node_id: 2 }),
    Stream: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
      call.write({ frames: 0 });
      call.on('data', () => {
        framesRead++;
        call.pause();
      });
      call.on('error', () => {});
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const limits = { peerQueueMessagesMax: 100_000, peerQueueBytesMax: 2 * 1024 * 1024, streamInflightBytesMax: 512 * 1024, frameMessagesMax: 16 };
  const a = await node(1, { limits });
  try {
    a.transport.addPeer(2, `127.0.0.1:${port}`);
    const entryBytes = 16 * 1024;
    let maxQueued = 0;
    let maxInflight = 0;
    for (let round = 0; round < 200; round++) {
      const batch: Message[] = [];
      for (let i = 0; i < 10; i++) batch.push(app(1, 2, round * 10 + i + 1, entryBytes));
      a.transport.send(batch); // 32 MiB in total, far more than the bounds
      const stats = a.transport.peerStats(2)!;
      maxQueued = Math.max(maxQueued, stats.queuedBytes);
      maxInflight = Math.max(maxInflight, stats.inflightBytes);
      await sleep(2);
    }
    const counts = a.transport.counts();
    t.log(`framesRead=${framesRead} max queued ${maxQueued} B, max in flight ${maxInflight} B, dropped ${counts['transport.send.dropped.overflow']}`);
    t.true(maxQueued <= limits.peerQueueBytesMax);
    t.true(maxInflight <= limits.streamInflightBytesMax + limits.frameMessagesMax * (entryBytes + 256));
    t.true((counts['transport.send.dropped.overflow'] ?? 0) > 1000, 'most of the flood was dropped');
    t.deepEqual(a.unreachable, [2]);
  } finally {
    await a.transport.close();
    server.forceShutdown();
  }
});

test.serial('a flood of snapshot chunks does not delay heartbeats beyond a bound', async (t) => {
  const a = await node(1);
  const b = await node(2);
  const sentAt = new Map<number, number>();
  const latencies: number[] = [];
  let snapBytes = 0;
  b.transport.onMessage((m) => {
    if (m.type === 'Heartbeat') latencies.push(performance.now() - sentAt.get(m.index)!);
    else if (m.type === 'Snap') snapBytes += m.snapshot!.data.length;
  });
  try {
    a.transport.addPeer(2, b.transport.address());
    const chunkBytes = 1024 * 1024;
    const chunk = new Uint8Array(chunkBytes);
    const snap = (i: number) =>
      message({
        type: 'Snap',
        from: 1,
        to: 2,
        term: 1,
        snapshot: {
          metadata: { index: 100, term: 1, confState: { voters: [1, 2], votersOutgoing: [], learners: [], learnersNext: [], autoLeave: false }, sizeBytes: 2 ** 40 },
          offset: i * chunkBytes,
          data: chunk,
          last: false,
        },
      });
    let heartbeats = 0;
    const heartbeat = () => {
      sentAt.set(++heartbeats, performance.now());
      a.transport.send([message({ type: 'Heartbeat', from: 1, to: 2, term: 1, index: heartbeats })]);
    };
    // Baseline without the flood.
    for (let i = 0; i < 20; i++) {
      heartbeat();
      await sleep(10);
    }
    await until(t, 'baseline heartbeats', () => latencies.length === 20);
    const baseline = [...latencies].sort((x, y) => x - y);
    latencies.length = 0;

    // Flood: keep the snapshot lane full (the transport drops what does not fit) for ~2 s.
    let chunks = 0;
    const started = performance.now();
    const flood = setInterval(() => {
      for (let i = 0; i < 4; i++) a.transport.send([snap(chunks++)]);
    }, 5);
    const beats = setInterval(heartbeat, 20);
    await sleep(2000);
    clearInterval(flood);
    clearInterval(beats);
    const floodSeconds = (performance.now() - started) / 1000;
    await until(t, 'flood heartbeats', () => latencies.length === heartbeats - 20, 20_000);
    const sorted = [...latencies].sort((x, y) => x - y);
    const at = (xs: number[], q: number) => xs[Math.min(xs.length - 1, Math.floor(q * xs.length))]!;
    const boundMs = 500;
    t.log(
      `heartbeat latency without flood p50 ${at(baseline, 0.5).toFixed(1)} ms max ${at(baseline, 1).toFixed(1)} ms; ` +
        `during a ${(snapBytes / floodSeconds / 2 ** 20).toFixed(0)} MiB/s snapshot flood (${Math.round(snapBytes / chunkBytes)} chunks delivered): ` +
        `p50 ${at(sorted, 0.5).toFixed(1)} ms, p99 ${at(sorted, 0.99).toFixed(1)} ms, max ${at(sorted, 1).toFixed(1)} ms (bounds: p50 100 ms, p99 ${boundMs} ms)`,
    );
    t.true(snapBytes > 8 * chunkBytes, 'the flood really flowed');
    t.true(sorted.length >= 50, 'heartbeats kept flowing');
    // Without the separate snapshot lane, heartbeats queue behind megabytes of chunks: p50 was
    // ~500 ms in that experiment; with it, p50 stays near the no-flood baseline.
    t.true(at(sorted, 0.5) < 100, `median heartbeat latency ${at(sorted, 0.5)} ms under the flood`);
    t.true(at(sorted, 0.99) < boundMs, `p99 heartbeat latency ${at(sorted, 0.99)} ms under the flood`);
    t.is(b.transport.counts()['transport.frame.rejected'] ?? 0, 0);
    t.true(a.unreachable.length >= 1 && a.unreachable.every((id) => id === 2), 'snapshot-lane overflow reported the peer');
  } finally {
    await a.transport.close();
    await b.transport.close();
  }
});
