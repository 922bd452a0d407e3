// paused-peer-child: the peer process of paused-peer.test.ts. Runs one StreamTransport (node 2) that
// answers every App from node 1 and sends its own heartbeat responses every 20 ms, so both of its
// links (client and server side) carry traffic when the test SIGSTOPs and later SIGCONTs it.
// argv: <address of node 1> <keepaliveMs>. Reports its bound address over IPC.
import { message } from '../../src/raft/types.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';

const [peerAddress, keepaliveArg] = process.argv.slice(2);
if (peerAddress === undefined || keepaliveArg === undefined || process.send === undefined) {
  throw new Error('usage: paused-peer-child <node-1 address> <keepaliveMs> (forked with IPC)');
}
const keepaliveMs = Number(keepaliveArg);
const transport = new StreamTransport({
  clusterId: 'paused',
  nodeId: 2,
  listen: '127.0.0.1:0',
  limits: { keepaliveTimeMs: keepaliveMs, keepaliveTimeoutMs: keepaliveMs, reconnectBackoffMsMin: 20, reconnectBackoffMsMax: 200 },
});
transport.onMessage((m) => {
  if (m.type === 'App') transport.send([message({ type: 'AppResp', from: 2, to: 1, term: m.term, index: m.index })]);
});
await transport.start();
transport.addPeer(1, peerAddress);
setInterval(() => transport.send([message({ type: 'HeartbeatResp', from: 2, to: 1, term: 1 })]), 20);
process.send({ address: transport.address() });
