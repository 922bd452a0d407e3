// peer-tls: mutual TLS on the peer transport with the certificates `chard certs init` makes
// (peerCerts): a peer of the same CA is delivered to; a peer whose certificate another CA
// signed, one without a certificate, and a plaintext one are refused in the TLS handshake — the
// receiver accepts no stream and sees no message — and a peer of the same CA but another cluster
// id is still refused by the cluster-id check, and a client certificate of the cluster CA (OU=client)
// is refused on the raft port (peerUnit 'node').
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { certsInit } from '../../src/cli/certs.js';
import type { Message } from '../../src/raft/types.js';
import { FrameKind } from '../../src/transport/framing.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';
import { type CertSet, loadCerts, peerCerts } from '../../src/transport/tls.js';
import { json, RawPeer } from '../transport/raw-peer.js';
import { until, heartbeat as hb } from '../helpers/until.js';

const root = mkdtempSync(path.join(os.tmpdir(), 'chard-sec-grpc-'));
const cluster = path.join(root, 'cluster');
const foreign = path.join(root, 'foreign');
test.before(() => {
  certsInit({ dir: cluster });
  certsInit({ dir: foreign });
});
test.after.always(() => rmSync(root, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

test.serial('peer transport: only peers with a certificate of the cluster CA (and the right cluster id) get a message through', async (t) => {
  const receiver = new StreamTransport({ clusterId: 'c', nodeId: 2, listen: '127.0.0.1:0', tls: peerCerts(cluster), peerUnit: 'node' });
  const got: Message[] = [];
  receiver.onMessage((m) => got.push(m));
  const clusterCa = loadCerts(cluster, 'server').ca;
  const foreignCerts = loadCerts(foreign, 'server');
  const senders: { name: string; clusterId: string; tls?: CertSet }[] = [
    // Trusts the cluster CA (so it would accept the receiver) but presents another CA's certificate.
    { name: 'foreign CA', clusterId: 'c', tls: { ca: clusterCa, cert: foreignCerts.cert, key: foreignCerts.key } },
    { name: 'plaintext', clusterId: 'c' },
    { name: 'other cluster id', clusterId: 'other', tls: peerCerts(cluster) },
    // A client certificate of the cluster CA (OU=client: the CLI's, an attach host's) is not a node's.
    { name: 'client certificate', clusterId: 'c', tls: loadCerts(cluster, 'client') },
  ];
  const good = new StreamTransport({ clusterId: 'c', nodeId: 1, listen: '127.0.0.1:0', tls: peerCerts(cluster) });
  const bad = senders.map((s, i) => ({
    ...s,
    transport: new StreamTransport({ clusterId: s.clusterId, nodeId: 10 + i, listen: '127.0.0.1:0', ...(s.tls ? { tls: s.tls } : {}) }),
    unreachable: 0,
  }));
  try {
    await Promise.all([receiver.start(), good.start(), ...bad.map((b) => b.transport.start())]);
    for (const b of bad) {
      b.transport.onUnreachable(() => b.unreachable++);
      b.transport.addPeer(2, receiver.address());
      b.transport.send([hb(b.transport.nodeId, 2, 1)]);
    }
    await until(t, 'every stranger refused', () => bad.every((b) => b.unreachable > 0));
    // Keep trying for a while: a refused peer reconnects after its backoff and must be refused again.
    for (let i = 0; i < 5; i++) {
      for (const b of bad) b.transport.send([hb(b.transport.nodeId, 2, 2 + i)]);
      await sleep(100);
    }
    const counts = receiver.counts();
    t.is(got.length, 0, 'no message from a stranger');
    t.is(counts['transport.messages.received'] ?? 0, 0);
    // Only the same-CA peer with the wrong cluster id got as far as a call (its probe was refused).
    t.true((counts['transport.probe.refused'] ?? 0) >= 1, JSON.stringify(counts));
    t.is(counts['transport.stream.accepted'] ?? 0, 0, 'no stranger opened a stream');
    t.true((counts['transport.peer.refused.certificate'] ?? 0) >= 1, 'the client certificate was refused as a raft peer');
    // No certificate at all: the handshake fails; a client certificate gets a Refusal frame.
    const anonymous = RawPeer.tls(receiver.address(), { ca: clusterCa });
    anonymous.hello('c', 30, 2);
    await anonymous.closed;
    t.is(anonymous.frames.length, 0, 'no answer without a certificate');
    const client = loadCerts(cluster, 'client');
    const unit = RawPeer.tls(receiver.address(), { ca: clusterCa, cert: client.cert, key: client.key });
    unit.hello('c', 31, 2);
    const refusal = await unit.frame(FrameKind.Refusal);
    t.is(json(refusal)['code'], 'FAILED_PRECONDITION');
    t.is(unit.frames.filter((f) => f.kind === FrameKind.HelloOk).length, 0);
    t.is(receiver.counts()['transport.stream.accepted'] ?? 0, 0, 'no stranger opened a stream');

    good.addPeer(2, receiver.address());
    good.send([hb(1, 2, 1)]);
    await until(t, 'delivery from the cluster peer', () => got.length === 1);
    t.is(got[0]!.from, 1);
  } finally {
    await Promise.all([receiver.close(), good.close(), ...bad.map((b) => b.transport.close())]);
  }
});
