// Proves the NBD server answers every malformed or edge-case input with the spec's error (or closes
// only the offending connection), by speaking raw bytes to it over TCP on 127.0.0.1 with the
// RawClient helper: bad magics, oversized / unknown / malformed options, unknown commands and
// flags, out-of-range and read-only requests, DF and REQ_ONE, backend error mapping, and many
// requests in flight completing out of order behind a slow backend wrapper.

import test from 'ava';
import { ErrorCode, InternalError, RemoteError, UsageError } from '../../src/errors.js';
import type { BlockBackend } from '../../src/nbd/backend.js';
import { FaultBackend, type FaultHook } from '../../src/nbd/fault-backend.js';
import { MemoryBackend } from '../../src/nbd/memory-backend.js';
import {
  BlockState,
  ClientFlag,
  Command,
  CommandFlag,
  Errno,
  InfoType,
  Option,
  OptionReply,
  ReplyFlag,
  ReplyType,
  TransmissionFlag,
  encodeInfoRequest,
  encodeMetaContextRequest,
} from '../../src/nbd/protocol.js';
import { NbdServer, baseAllocationContextId, type NbdLimits } from '../../src/nbd/server.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

const MiB = 1024 * 1024;

function memory(): MemoryBackend {
  return new MemoryBackend({
    exports: [
      { name: 'disk', sizeBytes: 8 * MiB, description: 'the disk' },
      { name: 'ro', sizeBytes: 1 * MiB, readOnly: true },
    ],
  });
}

async function serve(backend: BlockBackend = memory(), limits: Partial<NbdLimits> = {}) {
  const server = new NbdServer({ backend, limits });
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in address)) throw new Error('tcp expected');
  const connect = () => RawClient.connect(address.port);
  return { server, connect, port: address.port };
}

/** healthy: a fresh connection can still write and read back (other connections unaffected). */
async function healthy(connect: () => Promise<RawClient>): Promise<boolean> {
  const c = await connect();
  await c.go('disk');
  const data = Buffer.alloc(4096, 0x5a);
  c.request({ type: Command.write, handle: 1, offset: 4096, payload: data });
  const w = await c.reply();
  c.request({ type: Command.read, handle: 2, offset: 4096, lengthBytes: 4096 });
  const chunks = await c.structuredReply();
  c.close();
  return w.errno === 0 && chunks[0]!.type === ReplyType.offsetData && chunks[0]!.payload.subarray(8).equals(data);
}

test('greeting advertises fixed newstyle and no-zeroes; EXPORT_NAME honours NO_ZEROES', async (t) => {
  const { server, connect } = await serve();
  const a = await connect();
  t.is(await a.greet(ClientFlag.fixedNewstyle | ClientFlag.noZeroes), 0b11);
  a.option(Option.exportName, Buffer.from('disk'));
  const reply = await a.read(10);
  t.is(Number(reply.readBigUInt64BE(0)), 8 * MiB);
  const flags = reply.readUInt16BE(8);
  t.truthy(flags & TransmissionFlag.hasFlags && flags & TransmissionFlag.canMultiConn && flags & TransmissionFlag.sendFastZero);
  t.falsy(flags & TransmissionFlag.sendDf, 'no DF without structured replies');
  // without NO_ZEROES: 124 zero bytes follow
  const b = await connect();
  await b.greet(ClientFlag.fixedNewstyle);
  b.option(Option.exportName, Buffer.from(''));
  const full = await b.read(134);
  t.true(full.subarray(10).equals(Buffer.alloc(124)));
  a.close();
  b.close();
  await server.close();
});

test('unknown client flags and bad option magic close only that connection', async (t) => {
  const { server, connect } = await serve();
  const a = await connect();
  await a.greet(0x80);
  t.true(await a.isClosedSoon());
  const b = await connect();
  await b.greet();
  b.write(Buffer.alloc(16, 0x41));
  t.true(await b.isClosedSoon());
  t.true(await healthy(connect));
  t.is(server.counters.protocolViolations, 2);
  await server.close();
});

test('oversized option is skipped and refused with ERR_TOO_BIG; handshake continues', async (t) => {
  const { server, connect } = await serve(memory(), { optionBytesMax: 1024 });
  const c = await connect();
  await c.greet();
  c.option(Option.info, Buffer.alloc(100_000, 7));
  t.is((await c.optionReply()).replyType, OptionReply.errTooBig);
  c.option(Option.list);
  const list = await c.optionReplies();
  t.deepEqual(list.map((r) => r.replyType), [OptionReply.server, OptionReply.server, OptionReply.ack]);
  t.is(list[0]!.data.readUInt32BE(0), 4);
  t.is(list[0]!.data.subarray(4).toString(), 'diskthe disk');
  c.close();
  await server.close();
});

test('unknown option -> ERR_UNSUP, STARTTLS -> ERR_POLICY, bad lengths -> ERR_INVALID, and the handshake continues', async (t) => {
  const { server, connect } = await serve();
  const c = await connect();
  await c.greet();
  c.option(0x1234, Buffer.from('whatever'));
  t.is((await c.optionReply()).replyType, OptionReply.errUnsup);
  c.option(Option.startTls);
  t.is((await c.optionReply()).replyType, OptionReply.errPolicy);
  c.option(Option.list, Buffer.from('x'));
  t.is((await c.optionReply()).replyType, OptionReply.errInvalid);
  c.option(Option.structuredReply, Buffer.from('x'));
  t.is((await c.optionReply()).replyType, OptionReply.errInvalid);
  c.option(Option.setMetaContext, encodeMetaContextRequest('disk', [])); // before structured replies
  t.is((await c.optionReply()).replyType, OptionReply.errInvalid);
  const bad = encodeInfoRequest('disk', [InfoType.name]);
  c.option(Option.go, bad.subarray(0, bad.length - 1)); // lengths do not add up
  t.is((await c.optionReply()).replyType, OptionReply.errInvalid);
  c.option(Option.go, encodeInfoRequest('nope', []));
  t.is((await c.optionReply()).replyType, OptionReply.errUnknown);
  c.option(Option.structuredReply);
  t.is((await c.optionReply()).replyType, OptionReply.ack);
  c.option(Option.structuredReply);
  t.is((await c.optionReply()).replyType, OptionReply.errInvalid, 'negotiated twice');
  c.option(Option.listMetaContext, encodeMetaContextRequest('disk', []));
  const contexts = await c.optionReplies();
  t.is(contexts[0]!.replyType, OptionReply.metaContext);
  t.is(contexts[0]!.data.subarray(4).toString(), 'base:allocation');
  c.option(Option.info, encodeInfoRequest('', [InfoType.name, InfoType.description, InfoType.blockSize]));
  const info = await c.optionReplies();
  const byType = new Map(info.filter((r) => r.replyType === OptionReply.info).map((r) => [r.data.readUInt16BE(0), r.data]));
  t.is(byType.get(InfoType.name)!.subarray(2).toString(), 'disk', 'default export resolved');
  t.is(byType.get(InfoType.description)!.subarray(2).toString(), 'the disk');
  t.is(byType.get(InfoType.blockSize)!.readUInt32BE(10), 32 * MiB);
  c.option(Option.abort);
  t.is((await c.optionReply()).replyType, OptionReply.ack);
  t.true(await c.isClosedSoon());
  await server.close();
});

test('EXPORT_NAME of an unknown export hangs up; too many options hang up', async (t) => {
  const { server, connect } = await serve(memory(), { handshakeOptionsMax: 3 });
  const a = await connect();
  await a.greet();
  a.option(Option.exportName, Buffer.from('missing'));
  t.true(await a.isClosedSoon());
  const b = await connect();
  await b.greet();
  for (let i = 0; i < 3; i++) {
    b.option(0x999);
    t.is((await b.optionReply()).replyType, OptionReply.errUnsup);
  }
  b.option(0x999);
  t.true(await b.isClosedSoon());
  await server.close();
});

test('handshake timeout and connectionsMax close connections', async (t) => {
  const { server, connect } = await serve(memory(), { handshakeTimeoutMs: 200, connectionsMax: 2 });
  const a = await connect();
  const b = await connect();
  const c = await connect();
  t.true(await c.isClosedSoon(1000), 'third connection refused');
  t.true(await a.isClosedSoon(2000), 'idle handshake timed out');
  t.true(await b.isClosedSoon(2000));
  t.is(server.counters.connectionsRejected, 1);
  t.is(server.counters.handshakeTimeouts, 2);
  await server.close();
  t.is(server.connectionCount(), 0);
});

test('unknown command and unknown or misplaced flags -> EINVAL; the connection continues', async (t) => {
  const { server, connect } = await serve();
  const c = await connect();
  await c.go('disk', { structured: false });
  c.request({ type: 42, handle: 1, offset: 0, lengthBytes: 512 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.flush, flags: 0x100, handle: 2 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.flush, flags: CommandFlag.noHole, handle: 3 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.read, flags: CommandFlag.df, handle: 4, offset: 0, lengthBytes: 512 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL, 'DF without structured replies');
  c.request({ type: Command.blockStatus, handle: 5, offset: 0, lengthBytes: 512 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL, 'BLOCK_STATUS without a meta context');
  c.request({ type: Command.flush, handle: 6, offset: 1 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL, 'FLUSH with an offset');
  c.request({ type: Command.read, handle: 7, offset: 0, lengthBytes: 0 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL, 'zero length');
  c.request({ type: Command.flush, flags: CommandFlag.fua, handle: 8 });
  t.is((await c.simpleReply()).errno, 0, 'FUA is accepted on any command');
  c.request({ type: Command.read, handle: 9, offset: 0, lengthBytes: 512 });
  const r = await c.simpleReply(512);
  t.is(r.errno, 0);
  t.true(r.data.equals(Buffer.alloc(512)), 'a hole reads as zeros');
  t.is(r.handle, 9n);
  c.disconnect();
  t.true(await c.isClosedSoon());
  await server.close();
});

test('out-of-range: read -> EINVAL, write/trim/zero -> ENOSPC (payload consumed), huge offsets too', async (t) => {
  const { server, connect } = await serve();
  const c = await connect();
  const { sizeBytes } = await c.go('disk', { structured: false });
  c.request({ type: Command.read, handle: 1, offset: sizeBytes - 511, lengthBytes: 512 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.write, handle: 2, offset: sizeBytes, payload: Buffer.alloc(4096, 1) });
  t.is((await c.simpleReply()).errno, Errno.ENOSPC);
  c.request({ type: Command.trim, handle: 3, offset: sizeBytes - 1, lengthBytes: 2 });
  t.is((await c.simpleReply()).errno, Errno.ENOSPC);
  c.request({ type: Command.writeZeroes, handle: 4, offset: 0xffffffffffffff00n, lengthBytes: 0x1000 });
  t.is((await c.simpleReply()).errno, Errno.ENOSPC);
  c.request({ type: Command.cache, handle: 5, offset: 0xffffffffffffffffn, lengthBytes: 1 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.write, handle: 6, offset: sizeBytes - 4096, payload: Buffer.alloc(4096, 2) });
  t.is((await c.simpleReply()).errno, 0, 'last block is writable and the stream stayed in sync');
  c.close();
  await server.close();
});

test('read-only export: WRITE/TRIM/WRITE_ZEROES -> EPERM, reads fine, flags say READ_ONLY', async (t) => {
  const { server, connect } = await serve();
  const c = await connect();
  const { flags } = await c.go('ro', { structured: false });
  t.truthy(flags & TransmissionFlag.readOnly);
  t.falsy(flags & TransmissionFlag.sendTrim);
  c.request({ type: Command.write, handle: 1, offset: 0, payload: Buffer.alloc(512, 1) });
  t.is((await c.simpleReply()).errno, Errno.EPERM);
  c.request({ type: Command.trim, handle: 2, offset: 0, lengthBytes: 512 });
  t.is((await c.simpleReply()).errno, Errno.EPERM);
  c.request({ type: Command.writeZeroes, handle: 3, offset: 0, lengthBytes: 512 });
  t.is((await c.simpleReply()).errno, Errno.EPERM);
  c.request({ type: Command.read, handle: 4, offset: 0, lengthBytes: 512 });
  t.is((await c.simpleReply(512)).errno, 0);
  c.close();
  await server.close();
});

test('bad request magic closes that connection only', async (t) => {
  const { server, connect } = await serve();
  const c = await connect();
  await c.go('disk');
  c.write(Buffer.alloc(28, 0xee));
  t.true(await c.isClosedSoon());
  t.true(await healthy(connect));
  await server.close();
});

test('structured read: DF gives one OFFSET_DATA with zeros filled in; without DF data and holes are separate chunks', async (t) => {
  const backend = memory();
  backend.export('disk').writeData(8192, Buffer.alloc(4096, 0xab));
  const { server, connect } = await serve(backend);
  const c = await connect();
  const { flags } = await c.go('disk');
  t.truthy(flags & TransmissionFlag.sendDf);
  c.request({ type: Command.read, flags: CommandFlag.df, handle: 1, offset: 4096, lengthBytes: 3 * 4096 });
  const df = await c.structuredReply();
  t.is(df.length, 1);
  t.is(df[0]!.type, ReplyType.offsetData);
  t.is(df[0]!.flags, ReplyFlag.done);
  t.is(Number(df[0]!.payload.readBigUInt64BE(0)), 4096);
  const expected = Buffer.concat([Buffer.alloc(4096), Buffer.alloc(4096, 0xab), Buffer.alloc(4096)]);
  t.true(df[0]!.payload.subarray(8).equals(expected));

  c.request({ type: Command.read, handle: 2, offset: 4096, lengthBytes: 3 * 4096 });
  const chunks = await c.structuredReply();
  t.deepEqual(chunks.map((x) => x.type), [ReplyType.offsetHole, ReplyType.offsetData, ReplyType.offsetHole]);
  t.deepEqual(chunks.map((x) => x.flags), [0, 0, ReplyFlag.done]);
  t.is(chunks[0]!.payload.readUInt32BE(8), 4096);

  c.request({ type: Command.read, flags: CommandFlag.df, handle: 3, offset: 65536, lengthBytes: 65536 });
  const hole = await c.structuredReply();
  t.is(hole.length, 1);
  t.is(hole[0]!.type, ReplyType.offsetHole);

  c.request({ type: Command.read, handle: 4, offset: 8 * MiB, lengthBytes: 1 });
  const err = await c.structuredReply();
  t.is(err[0]!.type, ReplyType.error, 'structured read errors use an error chunk, never a simple reply');
  t.is(err[0]!.errno, Errno.EINVAL);
  c.close();
  await server.close();
});

test('BLOCK_STATUS reports holes and data; REQ_ONE gives one descriptor', async (t) => {
  const backend = memory();
  backend.export('disk').writeData(0, Buffer.alloc(8192, 1));
  backend.export('disk').writeData(16384, Buffer.alloc(4096, 1));
  const { server, connect } = await serve(backend);
  const c = await connect();
  await c.go('disk');
  c.request({ type: Command.blockStatus, handle: 1, offset: 0, lengthBytes: 65536 });
  const [all] = await c.structuredReply();
  t.is(all!.type, ReplyType.blockStatus);
  t.is(all!.payload.readUInt32BE(0), baseAllocationContextId);
  const descriptors = [];
  for (let at = 4; at < all!.payload.length; at += 8) descriptors.push([all!.payload.readUInt32BE(at), all!.payload.readUInt32BE(at + 4)]);
  const hz = BlockState.hole | BlockState.zero;
  t.deepEqual(descriptors, [[8192, 0], [8192, hz], [4096, 0], [65536 - 20480, hz]]);
  c.request({ type: Command.blockStatus, flags: CommandFlag.reqOne, handle: 2, offset: 8192, lengthBytes: 65536 });
  const [one] = await c.structuredReply();
  t.is(one!.payload.length, 12);
  t.is(one!.payload.readUInt32BE(4), 8192);
  t.is(one!.payload.readUInt32BE(8), hz);
  c.close();
  await server.close();
});

test('write larger than requestBytesMax is discarded and refused; the stream stays in sync', async (t) => {
  const { server, connect } = await serve(memory(), { requestBytesMax: 65536 });
  const c = await connect();
  await c.go('disk', { structured: false });
  c.request({ type: Command.write, handle: 1, offset: 0, payload: Buffer.alloc(200_000, 3) });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.read, handle: 2, offset: 0, lengthBytes: 65537 });
  t.is((await c.simpleReply()).errno, Errno.EINVAL);
  c.request({ type: Command.read, handle: 3, offset: 0, lengthBytes: 4096 });
  const r = await c.simpleReply(4096);
  t.true(r.data.equals(Buffer.alloc(4096)), 'the oversized write changed nothing');
  c.close();
  await server.close();
});

test('backend errors map to errno; RemoteError closes the connection without a reply', async (t) => {
  const inner = memory();
  const hook: FaultHook = (ctx) => {
    if (ctx.op === 'writeZeroes' && ctx.flags?.fastZero) throw new UsageError(ErrorCode.FailedPrecondition, 'not fast');
    if (ctx.op === 'read' && ctx.offset === 40960) throw Object.assign(new InternalError(ErrorCode.Corrupt, 'checksum mismatch'), { offset: 45056 });
    if (ctx.op === 'flush' && ctx.exportName === 'disk') throw new RemoteError(ErrorCode.Unavailable, 'no quorum');
    if (ctx.op === 'cache') throw new Error('a bug');
  };
  const { server, connect } = await serve(new FaultBackend(inner, hook));
  const c = await connect();
  await c.go('disk');
  c.request({ type: Command.writeZeroes, flags: CommandFlag.fastZero, handle: 1, offset: 0, lengthBytes: 4096 });
  const [z] = await c.structuredReply();
  t.is(z!.errno, Errno.ENOTSUP);
  c.request({ type: Command.read, handle: 2, offset: 40960, lengthBytes: 8192 });
  const [e] = await c.structuredReply();
  t.is(e!.type, ReplyType.errorOffset);
  t.is(e!.errno, Errno.EIO);
  const messageBytes = e!.payload.readUInt16BE(4);
  t.is(Number(e!.payload.readBigUInt64BE(6 + messageBytes)), 45056);
  c.request({ type: Command.cache, handle: 3, offset: 0, lengthBytes: 4096 });
  t.is((await c.structuredReply())[0]!.errno, Errno.EIO);
  t.is(server.counters.backendBugs, 1);
  const other = await connect();
  await other.go('disk');
  c.request({ type: Command.flush, handle: 4 });
  t.true(await c.isClosedSoon(), 'RemoteError: connection closed');
  other.request({ type: Command.read, handle: 9, offset: 0, lengthBytes: 512 });
  t.is((await other.structuredReply())[0]!.type, ReplyType.offsetHole, 'other connection unaffected');
  t.is(server.counters.remoteErrorDisconnects, 1);
  other.close();
  await server.close();
});

test('many requests in flight complete out of order; inflightRequestsMax bounds the backend', async (t) => {
  let active = 0;
  let activeMax = 0;
  // The first requests wait until the backend holds 16 at once (the bound), so the overlap does
  // not depend on how fast the server reads them (with timers alone, a stalled server could let
  // early requests finish before later ones were read). Then later requests finish sooner:
  // request i (offset i*4096) waits (40 - i) * 3 ms.
  let full!: () => void;
  const filled = new Promise<void>((resolve) => (full = resolve));
  const hook: FaultHook = async (ctx) => {
    active++;
    activeMax = Math.max(activeMax, active);
    if (active >= 16) full();
    await filled;
    await new Promise((r) => setTimeout(r, (40 - ctx.offset / 4096) * 3));
    active--;
  };
  const inner = memory();
  for (let i = 0; i < 40; i++) inner.export('disk').writeData(i * 4096, Buffer.alloc(4096, i + 1));
  const { server, connect } = await serve(new FaultBackend(inner, hook), { inflightRequestsMax: 16 });
  const c = await connect();
  await c.go('disk');
  for (let i = 0; i < 40; i++) c.request({ type: Command.read, handle: 1000 + i, offset: i * 4096, lengthBytes: 4096 });
  const order: number[] = [];
  for (let i = 0; i < 40; i++) {
    const r = await c.reply();
    t.is(r.type, ReplyType.offsetData);
    t.truthy(r.flags & ReplyFlag.done);
    const index = Number(r.handle) - 1000;
    t.true(r.payload.subarray(8).equals(Buffer.alloc(4096, index + 1)), `data of request ${index}`);
    order.push(index);
  }
  t.deepEqual([...order].sort((a, b) => a - b), [...Array(40).keys()]);
  t.notDeepEqual(order, [...Array(40).keys()], 'replies came out of order');
  t.is(activeMax, 16, `the backend saw ${activeMax} concurrent requests (inflightRequestsMax 16)`);
  c.close();
  await server.close();
});

test('DISC waits for in-flight writes, then closes; close() ends everything', async (t) => {
  const inner = memory();
  const hook: FaultHook = async () => {
    await new Promise((r) => setTimeout(r, 50));
  };
  const { server, connect } = await serve(new FaultBackend(inner, hook));
  const c = await connect();
  await c.go('disk');
  c.request({ type: Command.write, handle: 1, offset: 0, payload: Buffer.alloc(4096, 9) });
  c.disconnect();
  t.is((await c.reply()).errno, 0, 'outstanding write answered before close');
  t.true(await c.isClosedSoon());
  t.true(inner.export('disk').readBytes(0, 4096).equals(Buffer.alloc(4096, 9)));
  const d = await connect();
  await d.go('disk');
  await server.close();
  t.true(await d.isClosedSoon());
  t.is(server.connectionCount(), 0);
  t.is(inner.export('disk').openHandles, 0, 'handles closed');
});

/** gatedBackend: reads and writes wait for `open()`; counts how many wait at once. */
function gatedBackend(inner: BlockBackend) {
  const state = { active: 0, activeMax: 0, release: () => undefined as void, gate: Promise.resolve() };
  const close = () => {
    state.gate = new Promise<void>((resolve) => (state.release = resolve));
  };
  close();
  const hook: FaultHook = async (ctx) => {
    if (ctx.op !== 'read' && ctx.op !== 'write') return;
    state.active++;
    state.activeMax = Math.max(state.activeMax, state.active);
    await state.gate;
    state.active--;
  };
  return { backend: new FaultBackend(inner, hook), state, close };
}

async function until(condition: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!condition()) {
    if (performance.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 5));
  }
}

test('inflightBytesMax bounds read and write bytes in flight; a request above the budget runs alone', async (t) => {
  const { backend, state, close } = gatedBackend(memory());
  const { server, connect } = await serve(backend, { inflightBytesMax: 4 * MiB, inflightRequestsMax: 64 });
  const c = await connect();
  await c.go('disk');
  // 8 reads of 1 MiB: only 4 fit the 4 MiB budget.
  for (let i = 0; i < 8; i++) c.request({ type: Command.read, handle: i, offset: i * MiB, lengthBytes: MiB });
  await until(() => state.active === 4);
  await new Promise((r) => setTimeout(r, 50));
  t.is(state.active, 4, 'the fifth read waits for budget');
  state.release();
  for (let i = 0; i < 8; i++) t.is((await c.reply()).errno, 0);
  t.is(state.activeMax, 4);
  // 6 writes of 1 MiB: the payload of the fifth is not even read from the socket until budget frees.
  close();
  state.activeMax = 0;
  for (let i = 0; i < 6; i++) c.request({ type: Command.write, handle: 100 + i, offset: i * MiB, payload: Buffer.alloc(MiB, i + 1) });
  await until(() => state.active === 4);
  await new Promise((r) => setTimeout(r, 50));
  t.is(state.active, 4, 'the fifth write waits for budget');
  state.release();
  for (let i = 0; i < 6; i++) t.is((await c.reply()).errno, 0);
  t.is(state.activeMax, 4);
  // A 6 MiB read exceeds the budget on its own: it runs, but alone.
  close();
  state.activeMax = 0;
  c.request({ type: Command.read, handle: 200, offset: 0, lengthBytes: 6 * MiB });
  c.request({ type: Command.read, handle: 201, offset: 0, lengthBytes: 4096 });
  await until(() => state.active === 1);
  await new Promise((r) => setTimeout(r, 50));
  t.is(state.active, 1, 'the small read waits behind the big one');
  state.release();
  const handles = new Set<bigint>();
  while (handles.size < 2) {
    const r = await c.reply();
    t.is(r.errno, 0);
    if (r.flags & ReplyFlag.done) handles.add(r.handle);
  }
  t.is(state.activeMax, 1);
  c.close();
  await server.close();
});

test('WRITE_ZEROES punches holes unless NO_HOLE; FAST_ZERO succeeds when zeroing is fast', async (t) => {
  const backend = memory();
  backend.export('disk').writeData(0, Buffer.alloc(16384, 7));
  const { server, connect } = await serve(backend);
  const c = await connect();
  const { flags } = await c.go('disk');
  t.truthy(flags & TransmissionFlag.sendWriteZeroes);
  t.truthy(flags & TransmissionFlag.sendFastZero);
  c.request({ type: Command.writeZeroes, handle: 1, offset: 0, lengthBytes: 8192 });
  t.is((await c.reply()).errno, 0);
  c.request({ type: Command.writeZeroes, flags: CommandFlag.noHole | CommandFlag.fastZero | CommandFlag.fua, handle: 2, offset: 8192, lengthBytes: 8192 });
  t.is((await c.reply()).errno, 0);
  c.request({ type: Command.blockStatus, handle: 3, offset: 0, lengthBytes: 16384 });
  const [status] = await c.structuredReply();
  const descriptors = [];
  for (let at = 4; at < status!.payload.length; at += 8) descriptors.push([status!.payload.readUInt32BE(at), status!.payload.readUInt32BE(at + 4)]);
  t.deepEqual(descriptors, [
    [8192, BlockState.hole | BlockState.zero],
    [8192, 0],
  ], 'without NO_HOLE a hole, with NO_HOLE allocated');
  t.true(backend.export('disk').readBytes(0, 16384).equals(Buffer.alloc(16384)), 'both read as zeros');
  t.is(server.counters.writeZeroesRequests, 2);
  t.is(server.counters.fuaRequests, 1);
  c.close();
  await server.close();
});

test('block size constraints: over the maximum -> EINVAL (EOVERFLOW with DF); unaligned -> EINVAL only if the client asked for them', async (t) => {
  const inner = memory();
  // The backend asks for 512-byte alignment and at most 64 KiB per READ / WRITE.
  const constrained: BlockBackend = {
    listExports: () => inner.listExports(),
    defaultExportName: () => inner.defaultExportName(),
    async open(name) {
      const h = await inner.open(name);
      return Object.assign(Object.create(h) as typeof h, { info: () => ({ ...h.info(), blockSizeMin: 512, blockSizeMax: 65536 }) });
    },
  };
  const { server, connect } = await serve(constrained);
  const c = await connect();
  await c.go('disk', { infoTypes: [InfoType.blockSize] });
  const cases: [string, Parameters<RawClient['request']>[0], number][] = [
    ['read over the maximum', { type: Command.read, handle: 1, offset: 0, lengthBytes: 131072 }, Errno.EINVAL],
    ['DF read over the maximum', { type: Command.read, flags: CommandFlag.df, handle: 2, offset: 0, lengthBytes: 131072 }, Errno.EOVERFLOW],
    ['write over the maximum', { type: Command.write, handle: 3, offset: 0, payload: Buffer.alloc(131072, 1) }, Errno.EINVAL],
    ['unaligned offset', { type: Command.read, handle: 4, offset: 100, lengthBytes: 512 }, Errno.EINVAL],
    ['unaligned length', { type: Command.write, handle: 5, offset: 0, payload: Buffer.alloc(1000, 1) }, Errno.EINVAL],
    ['unaligned trim', { type: Command.trim, handle: 6, offset: 512, lengthBytes: 100 }, Errno.EINVAL],
    ['aligned write at the maximum', { type: Command.write, handle: 7, offset: 0, payload: Buffer.alloc(65536, 1) }, 0],
    ['aligned trim beyond the maximum (not bounded by it)', { type: Command.trim, handle: 8, offset: 0, lengthBytes: 1 * MiB }, 0],
  ];
  for (const [what, request, errno] of cases) {
    c.request(request);
    const chunks = await c.structuredReply();
    t.is(chunks[chunks.length - 1]!.errno, errno, what);
  }
  t.true(inner.export('disk').readBytes(0, 65536).equals(Buffer.alloc(65536)), 'refused writes changed nothing; the trim zeroed');
  c.close();
  // A client that never asked for the constraints cannot know them: unaligned requests go through.
  const naive = await connect();
  await naive.go('disk');
  naive.request({ type: Command.write, handle: 1, offset: 100, payload: Buffer.alloc(1000, 9) });
  t.is((await naive.reply()).errno, 0, 'unaligned write from a client that did not ask');
  naive.request({ type: Command.read, handle: 2, offset: 0, lengthBytes: 131072 });
  t.is((await naive.structuredReply())[0]!.errno, Errno.EINVAL, 'the maximum still applies');
  t.true(inner.export('disk').readBytes(100, 1000).equals(Buffer.alloc(1000, 9)));
  naive.close();
  await server.close();
});

test('close() drains: in-flight requests are answered, new ones get ESHUTDOWN, then the connection closes', async (t) => {
  const { backend, state } = gatedBackend(memory());
  const { server, connect } = await serve(backend, { shutdownDrainMs: 5_000 });
  const c = await connect();
  await c.go('disk');
  c.request({ type: Command.write, handle: 1, offset: 0, payload: Buffer.alloc(4096, 4) });
  await until(() => state.active === 1);
  const handshaking = await connect();
  await handshaking.greet();
  let closed = false;
  const closing = server.close().then(() => (closed = true));
  t.true(await handshaking.isClosedSoon(), 'a connection in the handshake is dropped at once');
  c.request({ type: Command.flush, handle: 2 });
  const refused = await c.reply();
  t.is(refused.handle, 2n);
  t.is(refused.errno, Errno.ESHUTDOWN, 'a request after shutdown began');
  t.false(closed, 'close() waits for the write in flight');
  state.release();
  const answered = await c.reply();
  t.is(answered.handle, 1n);
  t.is(answered.errno, 0, 'the write in flight was answered');
  t.true(await c.isClosedSoon(), 'then the connection is closed');
  await closing;
  t.is(server.connectionCount(), 0);
});

test('close() with a backend stuck past drainMs still closes the connection and resolves', async (t) => {
  const { backend, state } = gatedBackend(memory());
  const { server, connect } = await serve(backend, { shutdownDrainMs: 100, lingerMs: 200 });
  const c = await connect();
  await c.go('disk');
  c.request({ type: Command.read, handle: 1, offset: 0, lengthBytes: 4096 });
  await until(() => state.active === 1);
  const started = performance.now();
  await server.close();
  const tookMs = performance.now() - started;
  t.true(tookMs < 2_000, `close() took ${Math.round(tookMs)} ms`);
  t.true(await c.isClosedSoon(), 'the connection is closed without an answer');
  state.release();
});

test('a metadata context set for another export does not carry over to the export chosen by GO', async (t) => {
  const { server, connect } = await serve();
  const c = await connect();
  await c.greet();
  c.option(Option.structuredReply);
  t.is((await c.optionReply()).replyType, OptionReply.ack);
  c.option(Option.setMetaContext, encodeMetaContextRequest('ro', ['base:allocation']));
  const set = await c.optionReplies();
  t.deepEqual(set.map((r) => r.replyType), [OptionReply.metaContext, OptionReply.ack]);
  c.option(Option.go, encodeInfoRequest('disk', []));
  t.is((await c.optionReplies()).at(-1)!.replyType, OptionReply.ack);
  c.request({ type: Command.blockStatus, handle: 1, offset: 0, lengthBytes: 4096 });
  t.is((await c.structuredReply())[0]!.errno, Errno.EINVAL, 'no context negotiated for "disk"');
  c.close();
  const d = await connect();
  await d.go('ro');
  d.request({ type: Command.blockStatus, handle: 1, offset: 0, lengthBytes: 4096 });
  t.is((await d.structuredReply())[0]!.type, ReplyType.blockStatus, 'same export: the context holds');
  d.close();
  await server.close();
});
