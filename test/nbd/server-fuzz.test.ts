// Proves no input stream can crash the NBD server, make it send anything but spec messages, or
// disturb another connection: fast-check generates (and mutates: flips, truncations, insertions)
// >= 100,000 byte streams in total for the handshake and the transmission phase, drives each through
// NbdServer.handleStream over an in-memory duplex pair (fast, no TCP), parses every byte the server
// sends back, and meanwhile a healthy TCP connection keeps writing and reading its own export and a
// read-only export must stay byte-identical. Backend assertion failures / bugs are counted and must
// stay at zero (the wire validation must catch everything first).

import test from 'ava';
import fc from 'fast-check';
import { MemoryBackend } from '../../src/nbd/memory-backend.js';
import {
  ClientFlag,
  Command,
  Errno,
  InfoType,
  Magic,
  Option,
  OptionReply,
  ReplyType,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequestHeader,
} from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import { RawClient, duplexPair } from '../helpers/nbd-raw-client.js';

const KiB = 1024;
const fuzzSizeBytes = 1024 * KiB;
const roSizeBytes = 256 * KiB;
const handshakeRuns = Number(process.env['NBD_FUZZ_HANDSHAKE_RUNS'] ?? 100_000);
const transmissionRuns = Number(process.env['NBD_FUZZ_TRANSMISSION_RUNS'] ?? 100_000);
const seed = Number(process.env['NBD_FUZZ_SEED'] ?? 20261124);

const roPattern = Buffer.alloc(roSizeBytes);
for (let i = 0; i < roPattern.length; i++) roPattern[i] = (i * 31 + 7) & 0xff;

function makeServer() {
  const backend = new MemoryBackend({
    exports: [
      { name: 'fuzz', sizeBytes: fuzzSizeBytes },
      { name: 'ro', sizeBytes: roSizeBytes, readOnly: true },
      { name: 'guard', sizeBytes: 64 * KiB },
    ],
  });
  backend.export('ro').writeData(0, roPattern); // writeData is the test backdoor; the export is read-only on the wire
  const server = new NbdServer({
    backend,
    limits: { lingerMs: 5, handshakeTimeoutMs: 5_000, optionBytesMax: 8 * KiB, requestBytesMax: 256 * KiB, inflightRequestsMax: 8 },
  });
  return { backend, server };
}

/** runStream: one connection fed `input` then EOF; returns everything the server sent. */
async function runStream(server: NbdServer, input: Uint8Array): Promise<Buffer> {
  const [client, serverSide] = duplexPair();
  const out: Buffer[] = [];
  client.on('data', (c: Buffer) => out.push(c));
  client.on('error', () => undefined);
  const done = server.handleStream(serverSide);
  client.end(input);
  await done;
  await new Promise((r) => setImmediate(r));
  return Buffer.concat(out);
}

const knownReplyTypes = new Set<number>(Object.values(OptionReply));
const allowedErrnos = new Set<number>([Errno.EPERM, Errno.EINVAL, Errno.ENOSPC, Errno.EOVERFLOW, Errno.ENOTSUP]);

/** checkHandshakeOutput: greeting, then well-formed option replies; returns the offset where they end. */
function checkHandshakeOutput(out: Buffer, stopAfterGoAck: boolean): number {
  if (out.length < 18) throw new Error(`short greeting (${out.length} bytes)`);
  if (out.readBigUInt64BE(0) !== Magic.init || out.readBigUInt64BE(8) !== Magic.option || out.readUInt16BE(16) !== 3) throw new Error('bad greeting');
  let at = 18;
  while (out.length - at >= 8 && out.readBigUInt64BE(at) === Magic.optionReply) {
    if (out.length - at < 20) throw new Error('truncated option reply header');
    const option = out.readUInt32BE(at + 8);
    const replyType = out.readUInt32BE(at + 12);
    const lengthBytes = out.readUInt32BE(at + 16);
    if (!knownReplyTypes.has(replyType)) throw new Error(`unknown option reply type ${replyType.toString(16)}`);
    if (out.length - at - 20 < lengthBytes) throw new Error('truncated option reply data');
    at += 20 + lengthBytes;
    if (stopAfterGoAck && option === Option.go && replyType === OptionReply.ack) return at;
  }
  return at;
}

/** checkTransmissionOutput: with structured replies on, every reply is context-free; all must parse exactly. */
function checkTransmissionOutput(out: Buffer, from: number): void {
  let at = from;
  while (at < out.length) {
    if (out.length - at < 4) throw new Error('truncated reply magic');
    const magic = out.readUInt32BE(at);
    if (magic === Magic.simpleReply) {
      if (out.length - at < 16) throw new Error('truncated simple reply');
      const errno = out.readUInt32BE(at + 4);
      if (errno !== 0) throw new Error(`simple reply with errno ${errno} although structured replies were negotiated`);
      at += 16;
      continue;
    }
    if (magic !== Magic.structuredReply) throw new Error(`bad reply magic ${magic.toString(16)} at ${at}`);
    if (out.length - at < 20) throw new Error('truncated chunk header');
    const type = out.readUInt16BE(at + 6);
    const lengthBytes = out.readUInt32BE(at + 16);
    if (out.length - at - 20 < lengthBytes) throw new Error('truncated chunk payload');
    const p = out.subarray(at + 20, at + 20 + lengthBytes);
    switch (type) {
      case ReplyType.offsetData:
        if (p.length < 9) throw new Error('short OFFSET_DATA');
        break;
      case ReplyType.offsetHole:
        if (p.length !== 12 || p.readUInt32BE(8) === 0) throw new Error('bad OFFSET_HOLE');
        break;
      case ReplyType.blockStatus:
        if (p.length < 12 || (p.length - 4) % 8 !== 0) throw new Error('bad BLOCK_STATUS');
        break;
      case ReplyType.error:
      case ReplyType.errorOffset: {
        const errno = p.readUInt32BE(0);
        if (!allowedErrnos.has(errno)) throw new Error(`unexpected errno ${errno}: ${p.subarray(6, 6 + p.readUInt16BE(4)).toString()}`);
        break;
      }
      default:
        throw new Error(`unknown chunk type ${type}`);
    }
    at += 20 + lengthBytes;
  }
}

// ---- generators -------------------------------------------------------------------------

const exportNameArb = fc.constantFrom('', 'fuzz', 'ro', 'guard-not', 'missing', 'a'.repeat(5000), 'x\0y');
const optionCodeArb = fc.oneof(
  fc.constantFrom<number>(...Object.values(Option), 0, 0xffffffff, 0x80000000),
  fc.integer({ min: 0, max: 0xffffffff }),
);
const optionArb = fc.oneof(
  fc.record({ code: optionCodeArb, data: fc.uint8Array({ maxLength: 64 }) }).map(({ code, data }) => encodeOption(code, data)),
  fc.record({ name: exportNameArb, types: fc.array(fc.integer({ min: 0, max: 5 }), { maxLength: 4 }), go: fc.boolean() }).map(({ name, types, go }) =>
    encodeOption(go ? Option.go : Option.info, encodeInfoRequest(name, types)),
  ),
  fc.record({ name: exportNameArb, queries: fc.array(fc.constantFrom('base:allocation', 'base:', 'x-a:b', 'nocolon', ''), { maxLength: 3 }), set: fc.boolean() }).map(
    ({ name, queries, set }) => encodeOption(set ? Option.setMetaContext : Option.listMetaContext, encodeMetaContextRequest(name, queries)),
  ),
  fc.constantFrom(
    encodeOption(Option.structuredReply),
    encodeOption(Option.list),
    encodeOption(Option.startTls),
    encodeOption(Option.abort),
    encodeOption(Option.exportName, Buffer.from('fuzz')),
    encodeOption(Option.exportName, Buffer.from('ro')),
  ),
  // an option header that claims a huge length
  fc.integer({ min: 8 * KiB + 1, max: 0xffffffff }).map((n) => {
    const o = encodeOption(Option.info);
    o.writeUInt32BE(n, 12);
    return o;
  }),
);

const offsetArb = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: roSizeBytes - 1 }).map(BigInt), weight: 4 },
  fc.constantFrom(0n, 512n, 4096n, BigInt(fuzzSizeBytes - 4096), BigInt(fuzzSizeBytes - 1), BigInt(fuzzSizeBytes), BigInt(roSizeBytes - 1), 2n ** 53n, 2n ** 64n - 1n),
  fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  fc.integer({ min: 0, max: fuzzSizeBytes + 8192 }).map(BigInt),
);
const lengthArb = fc.oneof({ arbitrary: fc.integer({ min: 1, max: 16 * KiB }), weight: 4 }, fc.constantFrom(0, 1, 512, 4096, 65536, 256 * KiB, 256 * KiB + 1, fuzzSizeBytes, 0xffffffff), fc.integer({ min: 0, max: 0xffffffff }), fc.integer({ min: 0, max: 70_000 }));
const requestArb = fc
  .record({
    type: fc.oneof({ arbitrary: fc.integer({ min: 0, max: 8 }), weight: 8 }, { arbitrary: fc.integer({ min: 0, max: 0xffff }), weight: 1 }),
    flags: fc.oneof({ arbitrary: fc.constant(0), weight: 4 }, { arbitrary: fc.integer({ min: 0, max: 31 }), weight: 4 }, { arbitrary: fc.integer({ min: 0, max: 0xffff }), weight: 1 }),
    handle: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    offset: offsetArb,
    lengthBytes: lengthArb,
    payloadBytes: fc.integer({ min: 0, max: 8192 }),
  })
  .map((r) => {
    if (r.type === Command.disc) r.type = Command.read; // DISC would end most streams early
    const header = encodeRequestHeader(r);
    if (r.type !== Command.write) return header;
    // Writes: send the payload the header announces when it is small; otherwise a truncated one.
    const payload = Buffer.alloc(r.lengthBytes <= 70_000 ? r.lengthBytes : r.payloadBytes, 0xa5);
    return Buffer.concat([header, payload]);
  });

/** mutate: applies byte flips, truncation and random insertions to a valid stream. */
const mutationArb = fc.array(
  fc.oneof(
    fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }),
    fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
    fc.record({ kind: fc.constant('insert' as const), at: fc.nat(), bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }) }),
  ),
  { maxLength: 3 },
);

function mutate(stream: Buffer, mutations: { kind: 'flip' | 'truncate' | 'insert'; at: number; value?: number; bytes?: Uint8Array }[]): Buffer {
  let s = stream;
  for (const m of mutations) {
    if (s.length === 0) break;
    const at = m.at % s.length;
    if (m.kind === 'flip') {
      s = Buffer.from(s);
      s[at] = m.value!;
    } else if (m.kind === 'truncate') s = s.subarray(0, at);
    else s = Buffer.concat([s.subarray(0, at), m.bytes!, s.subarray(at)]);
  }
  return s;
}

function clientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** prefix: a valid handshake to transmission on `exportName` with structured replies and base:allocation. */
function transmissionPrefix(exportName: string): Buffer {
  return Buffer.concat([
    clientFlags(ClientFlag.fixedNewstyle | ClientFlag.noZeroes),
    encodeOption(Option.structuredReply),
    encodeOption(Option.setMetaContext, encodeMetaContextRequest(exportName, ['base:allocation'])),
    encodeOption(Option.go, encodeInfoRequest(exportName, [InfoType.blockSize])),
  ]);
}

// ---- the property test ------------------------------------------------------------------

test('random and mutated streams: no crash, only spec replies, other connections and data unaffected', async (t) => {
  t.timeout(110_000);
  const started = performance.now();
  const { backend, server } = makeServer();
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in address)) throw new Error('tcp expected');
  const healthyClient = await RawClient.connect(address.port);
  await healthyClient.go('guard');
  let healthyRound = 0;
  const checkHealthy = async (): Promise<void> => {
    healthyRound++;
    const data = Buffer.alloc(4096, healthyRound & 0xff);
    const offset = (healthyRound % 16) * 4096;
    healthyClient.request({ type: Command.write, handle: healthyRound * 2, offset, payload: data });
    const w = await healthyClient.reply();
    healthyClient.request({ type: Command.read, handle: healthyRound * 2 + 1, offset, lengthBytes: 4096 });
    const r = await healthyClient.reply();
    if (w.errno !== 0 || r.type !== ReplyType.offsetData || !r.payload.subarray(8).equals(data)) throw new Error('healthy connection disturbed');
  };

  let cases = 0;
  const everyCase = async (): Promise<void> => {
    cases++;
    if (cases % 2500 === 0) await checkHealthy();
  };

  // Phase 1: the handshake. Random client flags (mostly valid), options, optional trailing requests.
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(fc.constant(3), fc.constant(1), fc.integer({ min: 0, max: 0xffffffff })),
      fc.array(optionArb, { maxLength: 6 }),
      fc.array(requestArb, { maxLength: 3 }),
      mutationArb,
      fc.uint8Array({ maxLength: 64 }),
      fc.boolean(),
      async (flags, options, requests, mutations, randomBytes, pureRandom) => {
        const valid = Buffer.concat([clientFlags(flags), ...options, ...requests]);
        const input = pureRandom ? Buffer.from(randomBytes) : mutate(valid, mutations);
        const out = await runStream(server, input);
        checkHandshakeOutput(out, false);
        await everyCase();
      },
    ),
    { numRuns: handshakeRuns, seed },
  );
  const handshakeDone = performance.now();

  // Phase 2: transmission. A valid handshake, then generated requests (mutated or raw random bytes).
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom('fuzz', 'ro', ''),
      fc.array(requestArb, { minLength: 1, maxLength: 8 }),
      mutationArb,
      fc.uint8Array({ maxLength: 96 }),
      fc.constantFrom('valid', 'mutated', 'random'),
      async (exportName, requests, mutations, randomBytes, mode) => {
        const body = Buffer.concat(requests);
        const tail = mode === 'valid' ? body : mode === 'mutated' ? mutate(body, mutations) : Buffer.from(randomBytes);
        const out = await runStream(server, Buffer.concat([transmissionPrefix(exportName), tail]));
        const at = checkHandshakeOutput(out, true);
        checkTransmissionOutput(out, at);
        await everyCase();
      },
    ),
    { numRuns: transmissionRuns, seed: seed + 1 },
  );
  const transmissionDone = performance.now();

  await checkHealthy();
  t.true(backend.export('ro').readBytes(0, roSizeBytes).equals(roPattern), 'read-only export unchanged');
  t.is(backend.export('fuzz').sizeBytes, fuzzSizeBytes);
  t.is(server.counters.backendBugs, 0, 'no backend assertion tripped: the wire validation caught everything');
  t.is(server.counters.internalErrors, 0);
  t.is(server.connectionCount(), 1, 'only the healthy connection is left');
  t.true(server.counters.protocolViolations > 0 && server.counters.replyErrors > 0 && server.counters.handshakesCompleted > 0, 'the generators reach all phases');
  t.log(
    `cases=${cases} handshake=${handshakeRuns} in ${((handshakeDone - started) / 1000).toFixed(1)}s, transmission=${transmissionRuns} in ${((transmissionDone - handshakeDone) / 1000).toFixed(1)}s; counters ${JSON.stringify(server.counters)}`,
  );
  t.true(cases >= 100_000 || process.env['NBD_FUZZ_HANDSHAKE_RUNS'] !== undefined, 'at least 100,000 cases by default');
  healthyClient.close();
  await server.close();
});
