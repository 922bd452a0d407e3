// framing: the peer wire's frames (framing.ts). A stream of frames split at every byte boundary
// (and into single bytes) decodes to the same frames in order; an announced length above the
// kind's limit is refused from the 5 header bytes alone, before any payload is buffered (a 4 GiB
// announcement allocates nothing); an unknown kind is refused; a decoder that refused stays refused.
import test from 'ava';
import {
  ackFrameBytes,
  controlFrameBytesMax,
  encodeAck,
  encodeControl,
  encodeFrame,
  type Frame,
  FrameDecoder,
  frameHeader,
  frameHeaderBytes,
  FrameKind,
  FramingError,
} from '../../src/transport/framing.js';

const limits = { envelopeBytesMax: 1024 };

function sample(): Buffer {
  return Buffer.concat([
    encodeControl(FrameKind.Hello, { cluster_id: 'c', from: 1, to: 2, lane: 'regular' }),
    encodeFrame(FrameKind.Envelope, Buffer.from([1, 2, 3, 4, 5, 6, 7])),
    encodeFrame(FrameKind.Ping),
    encodeFrame(FrameKind.Envelope, new Uint8Array(1024).fill(9)),
    encodeAck(300),
    encodeFrame(FrameKind.Pong),
    encodeFrame(FrameKind.Envelope, new Uint8Array(0)),
  ]);
}

const shape = (frames: Frame[]) => frames.map((f) => [f.kind, f.payload.toString('hex')]);

test('frames split at every byte boundary decode to the same frames in order', (t) => {
  const bytes = sample();
  const whole = new FrameDecoder(limits).push(bytes);
  t.is(whole.length, 7);
  t.deepEqual(
    whole.map((f) => f.kind),
    [FrameKind.Hello, FrameKind.Envelope, FrameKind.Ping, FrameKind.Envelope, FrameKind.Ack, FrameKind.Pong, FrameKind.Envelope],
  );
  t.is(whole[4]!.payload.readUInt32BE(0), 300);
  t.is(JSON.parse(whole[0]!.payload.toString())['lane'], 'regular');
  for (let cut = 0; cut <= bytes.length; cut++) {
    const decoder = new FrameDecoder(limits);
    const frames = [...decoder.push(bytes.subarray(0, cut)), ...decoder.push(bytes.subarray(cut))];
    t.deepEqual(shape(frames), shape(whole), `cut at ${cut}`);
    t.is(decoder.bufferedBytes, 0);
  }
  // Two cuts, and byte by byte.
  for (let a = 0; a < bytes.length; a += 7) {
    for (let b = a; b <= bytes.length; b += 13) {
      const decoder = new FrameDecoder(limits);
      const frames = [...decoder.push(bytes.subarray(0, a)), ...decoder.push(bytes.subarray(a, b)), ...decoder.push(bytes.subarray(b))];
      t.deepEqual(shape(frames), shape(whole), `cuts at ${a}, ${b}`);
    }
  }
  const decoder = new FrameDecoder(limits);
  const single: Frame[] = [];
  for (let i = 0; i < bytes.length; i++) single.push(...decoder.push(bytes.subarray(i, i + 1)));
  t.deepEqual(shape(single), shape(whole));
});

test('an oversize length is refused from the header, before the payload is buffered', (t) => {
  for (const [kind, max] of [
    [FrameKind.Envelope, limits.envelopeBytesMax],
    [FrameKind.Hello, controlFrameBytesMax],
    [FrameKind.HelloOk, controlFrameBytesMax],
    [FrameKind.Refusal, controlFrameBytesMax],
    [FrameKind.Ack, ackFrameBytes],
    [FrameKind.Ping, 0],
    [FrameKind.Pong, 0],
  ] as const) {
    // At the limit: accepted (waits for the payload; an empty one is there at once).
    const ok = new FrameDecoder(limits);
    t.is(ok.push(frameHeader(kind, max)).length, max === 0 ? 1 : 0);
    t.is(ok.bufferedBytes, 0, 'the header is consumed; nothing else is held');
    // One above: refused with the header alone.
    const decoder = new FrameDecoder(limits);
    const error = t.throws(() => decoder.push(frameHeader(kind, max + 1)), { instanceOf: FramingError });
    t.is(error?.reason, 'oversize');
    t.throws(() => decoder.push(Buffer.alloc(1)), { message: /after a framing error/ });
  }
  // 4 GiB - 1 announced: refused at once, nothing allocated for it.
  const decoder = new FrameDecoder(limits);
  const before = process.memoryUsage().arrayBuffers;
  const error = t.throws(() => decoder.push(Buffer.from([0xff, 0xff, 0xff, 0xff, FrameKind.Envelope, 1, 2, 3])), { instanceOf: FramingError });
  t.is(error?.reason, 'oversize');
  t.true(process.memoryUsage().arrayBuffers - before < 1024 * 1024);
  // The header split over two pushes is refused as soon as it is whole.
  const split = new FrameDecoder(limits);
  t.deepEqual(split.push(Buffer.from([0xff, 0xff])), []);
  t.throws(() => split.push(Buffer.from([0xff, 0xff, FrameKind.Envelope])), { instanceOf: FramingError });
});

test('an unknown kind is refused', (t) => {
  for (const kind of [0, 8, 99, 255]) {
    const decoder = new FrameDecoder(limits);
    const bytes = Buffer.alloc(frameHeaderBytes);
    bytes[4] = kind;
    const error = t.throws(() => decoder.push(bytes), { instanceOf: FramingError });
    t.is(error?.reason, 'unknown-kind', `kind ${kind}`);
  }
  // A good frame before the bad one in the same chunk: the push throws, the connection is dropped whole.
  const decoder = new FrameDecoder(limits);
  t.throws(() => decoder.push(Buffer.concat([encodeFrame(FrameKind.Ping), Buffer.from([0, 0, 0, 0, 42])])), { instanceOf: FramingError });
});

test('a payload in one chunk is a view, not a copy', (t) => {
  const bytes = encodeFrame(FrameKind.Envelope, Buffer.from([5, 6, 7]));
  const [frame] = new FrameDecoder(limits).push(bytes);
  t.is(frame!.payload.buffer, bytes.buffer);
  t.deepEqual([...frame!.payload], [5, 6, 7]);
  t.throws(() => encodeControl(FrameKind.Hello, { x: 'y'.repeat(controlFrameBytesMax) }), { instanceOf: RangeError });
});
