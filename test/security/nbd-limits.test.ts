// nbd-limits: every abuse limit of the NBD server is enforced, counted under its own event, and
// logged (once per connection) with the peer's address: connections per server, handshake
// timeout, idle timeout, option count, option size, requests and bytes in flight per connection.
// Raw sockets on 127.0.0.1; the in-memory backend (behind a slow hook where requests must pile up).
import test from 'ava';
import { FaultBackend } from '../../src/nbd/fault-backend.js';
import { MemoryBackend } from '../../src/nbd/memory-backend.js';
import { Command, Option, OptionReply } from '../../src/nbd/protocol.js';
import type { BlockBackend } from '../../src/nbd/backend.js';
import { NbdServer, type NbdLimits, type NbdLogger } from '../../src/nbd/server.js';
import { RawClient } from '../helpers/nbd-raw-client.js';
import { until } from '../helpers/until.js';

const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

interface LogLine {
  level: string;
  obj: Record<string, unknown>;
  msg: string | undefined;
}

async function serve(limits: Partial<NbdLimits>, backend: BlockBackend = new MemoryBackend({ exports: [{ name: 'disk', sizeBytes: 8 * MiB }] })) {
  const lines: LogLine[] = [];
  const logger: NbdLogger = {
    debug: (obj, msg) => lines.push({ level: 'debug', obj: obj as Record<string, unknown>, msg }),
    info: (obj, msg) => lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    warn: (obj, msg) => lines.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
    error: (obj, msg) => lines.push({ level: 'error', obj: obj as Record<string, unknown>, msg }),
  };
  const server = new NbdServer({ backend, limits, logger });
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in address)) throw new Error('tcp expected');
  const port = address.port;
  /** limitLines: log lines of the limit `name`, each naming a 127.0.0.1 peer. */
  const limitLines = (name: string) => lines.filter((l) => l.obj['limit'] === name && /^127\.0\.0\.1:\d+$/.test(String(l.obj['peer'])));
  return { server, port, connect: () => RawClient.connect(port), limitLines };
}

test('connectionsMax: the connection over the limit is closed at once, counted, logged with its address', async (t) => {
  const { server, connect, limitLines } = await serve({ connectionsMax: 2 });
  const a = await connect();
  const b = await connect();
  await a.greet();
  await b.greet();
  const c = await connect();
  t.true(await c.isClosedSoon(5000));
  t.is(server.counters.connectionsLimited, 1);
  t.is(limitLines('connectionsLimited').length, 1);
  a.close();
  b.close();
  await server.close();
});

test('handshakeTimeoutMs: a client that never finishes the handshake is closed', async (t) => {
  const { server, connect, limitLines } = await serve({ handshakeTimeoutMs: 300 });
  const c = await connect();
  await c.greet();
  t.true(await c.isClosedSoon(10_000));
  t.is(server.counters.handshakeTimeouts, 1);
  t.is(limitLines('handshakeTimeouts').length, 1);
  await server.close();
});

test('idleTimeoutMs: off by default; when set, an idle connection in transmission is closed, a busy one is not', async (t) => {
  {
    const { server, connect } = await serve({});
    const c = await connect();
    await c.go('disk');
    t.false(await c.isClosedSoon(600), 'no idle timeout by default');
    c.close();
    await server.close();
  }
  // A slow backend: a request in flight for longer than the idle timeout keeps the connection.
  const backend = new FaultBackend(new MemoryBackend({ exports: [{ name: 'disk', sizeBytes: 8 * MiB }] }), async () => sleep(700));
  const { server, connect, limitLines } = await serve({ idleTimeoutMs: 300 }, backend);
  const busy = await connect();
  await busy.go('disk');
  busy.request({ type: Command.read, handle: 1, offset: 0, lengthBytes: 4096 });
  t.is((await busy.reply()).errno, 0, 'a request slower than the idle timeout is answered');
  t.is(server.counters.idleTimeouts, 0);
  t.true(await busy.isClosedSoon(10_000), 'then, idle, it is closed');
  t.is(server.counters.idleTimeouts, 1);
  t.is(limitLines('idleTimeouts').length, 1);
  await server.close();
});

test('handshakeOptionsMax: the option over the limit hangs up', async (t) => {
  const { server, connect, limitLines } = await serve({ handshakeOptionsMax: 5 });
  const c = await connect();
  await c.greet();
  for (let i = 0; i < 5; i++) {
    c.option(Option.list);
    await c.optionReplies();
  }
  c.option(Option.list);
  t.true(await c.isClosedSoon(5000));
  t.is(server.counters.optionsTooMany, 1);
  t.is(limitLines('optionsTooMany').length, 1);
  await server.close();
});

test('optionBytesMax: an oversized option is skipped unread and refused; EXPORT_NAME over it hangs up', async (t) => {
  const { server, connect, limitLines } = await serve({ optionBytesMax: 1024 });
  const c = await connect();
  await c.greet();
  c.option(Option.info, Buffer.alloc(4096));
  t.is((await c.optionReply()).replyType, OptionReply.errTooBig);
  c.option(Option.list);
  t.is((await c.optionReplies()).at(-1)!.replyType, OptionReply.ack, 'the handshake goes on');
  const e = await connect();
  await e.greet();
  e.option(Option.exportName, Buffer.alloc(2048, 0x61));
  t.true(await e.isClosedSoon(5000));
  t.is(server.counters.optionsTooLarge, 2);
  t.is(limitLines('optionsTooLarge').length, 2, 'logged once per connection');
  c.close();
  await server.close();
});

test('inflightRequestsMax and inflightBytesMax: backpressure is counted and logged, every request still answered', async (t) => {
  let active = 0;
  let activeMax = 0;
  // The backend holds every request until the test opens the gate, once the limit was hit: with a
  // 20 ms sleep instead, a server that read the requests slowly (a loaded machine) could see the
  // first ones finish before the later ones arrived and never hit the limit.
  let open = () => {};
  let gate = Promise.resolve();
  const closeGate = () => (gate = new Promise<void>((resolve) => (open = resolve)));
  const backend = new FaultBackend(new MemoryBackend({ exports: [{ name: 'disk', sizeBytes: 8 * MiB }] }), async () => {
    active++;
    activeMax = Math.max(activeMax, active);
    await gate;
    active--;
  });
  const { server, connect, limitLines } = await serve({ inflightRequestsMax: 4, inflightBytesMax: 256 * 1024 }, backend);
  const c = await connect();
  await c.go('disk');
  closeGate();
  for (let i = 0; i < 16; i++) c.request({ type: Command.read, handle: i, offset: i * 4096, lengthBytes: 4096 });
  await until(t, 'the request limit hit', () => server.counters.inflightRequestsLimited >= 1);
  open();
  for (let i = 0; i < 16; i++) t.is((await c.reply()).errno, 0);
  t.true(activeMax <= 4, `backend saw ${activeMax} at once`);
  t.true(server.counters.inflightRequestsLimited >= 1);
  t.is(limitLines('inflightRequestsLimited').length, 1);
  closeGate();
  for (let i = 0; i < 8; i++) c.request({ type: Command.write, handle: 100 + i, offset: i * 128 * 1024, payload: Buffer.alloc(128 * 1024, i) });
  await until(t, 'the byte limit hit', () => server.counters.inflightBytesLimited >= 1);
  open();
  for (let i = 0; i < 8; i++) t.is((await c.reply()).errno, 0);
  t.true(server.counters.inflightBytesLimited >= 1);
  t.is(limitLines('inflightBytesLimited').length, 1);
  c.close();
  await server.close();
});
