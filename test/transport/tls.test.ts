// tls: proves the TLS seam: two StreamTransports with mutual TLS (test-only certificates in
// fixtures/, signed by a throwaway CA) exchange messages; a plaintext transport and a TLS client
// without a certificate are refused in the handshake (messages never arrive, the peer is reported
// unreachable, no Hello is answered), and the admin RPC plumbing serves and calls over TLS too.
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import type { Message } from '../../src/raft/types.js';
import { buildChardServer, callUnary, createChardClient, listen } from '../../src/transport/grpc-server.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';
import type { CertSet } from '../../src/transport/tls.js';
import type { TransportCredentials } from '../../src/transport/transport.js';
import { RawPeer } from './raw-peer.js';
import { until, heartbeat as hb } from '../helpers/until.js';

const fixtures = new URL('../../../test/transport/fixtures/', import.meta.url);
const read = (name: string) => readFileSync(new URL(name, fixtures));
const ca = read('ca.crt');

function mutual(node: 'node1' | 'node2'): TransportCredentials {
  const key = read(`${node}.key`);
  const cert = read(`${node}.crt`);
  return {
    server: grpc.ServerCredentials.createSsl(ca, [{ private_key: key, cert_chain: cert }], true),
    client: grpc.credentials.createSsl(ca, key, cert),
  };
}

function certs(node: 'node1' | 'node2'): CertSet {
  return { ca, key: read(`${node}.key`), cert: read(`${node}.crt`) };
}



test.serial('mutual TLS between transports; a peer without a client certificate is refused', async (t) => {
  const one = new StreamTransport({ clusterId: 'c', nodeId: 1, listen: '127.0.0.1:0', tls: certs('node1') });
  const two = new StreamTransport({ clusterId: 'c', nodeId: 2, listen: '127.0.0.1:0', tls: certs('node2') });
  // Plaintext: no TLS at all.
  const plain = new StreamTransport({ clusterId: 'c', nodeId: 3, listen: '127.0.0.1:0' });
  const got: Message[] = [];
  two.onMessage((m) => got.push(m));
  const unreachable: number[] = [];
  plain.onUnreachable((peer) => unreachable.push(peer));
  try {
    await Promise.all([one.start(), two.start(), plain.start()]);
    one.addPeer(2, two.address());
    one.send([hb(1, 2, 1), hb(1, 2, 2)]);
    await until(t, 'delivery over TLS', () => got.length === 2);
    t.deepEqual(got.map((m) => m.index), [1, 2]);

    plain.addPeer(2, two.address());
    plain.send([hb(3, 2, 1)]);
    await until(t, 'refusal', () => unreachable.length > 0);
    t.deepEqual(unreachable, [2]);

    // Trusts the CA but presents no client certificate: the handshake fails, no Hello is answered.
    const anonymous = RawPeer.tls(two.address(), { ca });
    anonymous.hello('c', 3, 2);
    await anonymous.closed;
    t.is(anonymous.frames.length, 0);
    t.is(got.length, 2, 'nothing from a peer without a certificate');
    t.is(two.counts()['transport.stream.accepted'], 2, 'only node 1 said Hello (one connection per lane)');
    t.true((two.counts()['transport.tls.refused'] ?? 0) >= 2, JSON.stringify(two.counts()));
  } finally {
    await Promise.all([one.close(), two.close(), plain.close()]);
  }
});

test.serial('a connection stalled in the TLS handshake is closed by close() at once, and after probeTimeoutMs anyway', async (t) => {
  const two = new StreamTransport({ clusterId: 'c', nodeId: 2, listen: '127.0.0.1:0', tls: certs('node2'), limits: { probeTimeoutMs: 500 } });
  await two.start();
  // Plain TCP that never starts the handshake.
  const stalled = new RawPeer(two.address());
  await stalled.connected;
  const started = performance.now();
  await stalled.closed;
  const ms = performance.now() - started;
  t.true(ms < 30_000, `the handshake timed out after ${ms.toFixed(0)} ms`);
  await two.close();
  // close() with a stalled handshake: on a transport whose probe timeout (120 s) cannot be what
  // ends it, so the bound below is a generous one. (It was 400 ms against a 500 ms probe timeout:
  // a loaded machine could take that long for close() itself.)
  const probeTimeoutMs = 120_000;
  const three = new StreamTransport({ clusterId: 'c', nodeId: 3, listen: '127.0.0.1:0', tls: certs('node2'), limits: { probeTimeoutMs } });
  await three.start();
  const another = new RawPeer(three.address());
  await another.connected;
  const closing = performance.now();
  await three.close();
  const closeMs = performance.now() - closing;
  t.true(closeMs < probeTimeoutMs / 4, `close() does not wait for the stalled handshake (took ${closeMs.toFixed(0)} ms)`);
  await another.closed;
});

test.serial('admin RPC over TLS', async (t) => {
  const credentials = mutual('node1');
  const server = buildChardServer({ Admin: { Status: () => ({ node_id: 1 }) } });
  const address = await listen(server, '127.0.0.1:0', credentials.server);
  const client = createChardClient('Admin', address, { credentials: mutual('node2').client });
  try {
    const status = await callUnary<{ node_id: number }>(client, 'Status', {});
    t.is(status.node_id, 1);
  } finally {
    client.close();
    server.forceShutdown();
  }
});
