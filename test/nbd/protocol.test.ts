// Proves the NBD codec (src/nbd/protocol.ts) writes the exact byte layouts of doc/proto.md and that
// its decoders reject every malformed input (short buffers, lengths that do not add up, strings
// with NUL, invalid UTF-8 or over 4096 bytes) instead of reading out of bounds: table-driven
// checks plus a fast-check round trip.

import test from 'ava';
import fc from 'fast-check';
import {
  Magic,
  Option,
  OptionReply,
  ReplyType,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequestHeader,
  decodeString,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoRequest,
  encodeMessage,
  encodeMetaContextRequest,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOption,
  encodeOptionReply,
  encodeRequestHeader,
  encodeSimpleReply,
  messageBytesMax,
} from '../../src/nbd/protocol.js';

const handle = Buffer.from('01234567');

test('constants match the spec', (t) => {
  t.is(Magic.init, 0x4e42444d41474943n);
  t.is(Buffer.from('4e42444d41474943', 'hex').toString(), 'NBDMAGIC');
  t.is(Buffer.from(Magic.option.toString(16), 'hex').toString(), 'IHAVEOPT');
  t.is(Option.listMetaContext, 9);
  t.is(Option.setMetaContext, 10);
  t.is<number, number>(OptionReply.errUnsup, 2 ** 31 + 1);
  t.is<number, number>(ReplyType.errorOffset, 2 ** 15 + 2);
});

test('greeting, export-name reply and option reply layouts', (t) => {
  t.is(encodeGreeting(3).toString('hex'), '4e42444d41474943' + '49484156454f5054' + '0003');
  t.is(encodeExportNameReply(1024, 0x0f, true).toString('hex'), '0000000000000400' + '000f');
  t.is(encodeExportNameReply(1024, 0x0f, false).length, 134);
  t.is(encodeOptionReply(7, OptionReply.ack).toString('hex'), '0003e889045565a9' + '00000007' + '00000001' + '00000000');
  t.is(encodeOption(Option.list).toString('hex'), '49484156454f5054' + '00000003' + '00000000');
  t.deepEqual(decodeOptionHeader(encodeOption(Option.go, Buffer.from('abc'))), { magic: Magic.option, option: Option.go, lengthBytes: 3 });
  t.is(decodeOptionHeader(Buffer.alloc(15)), undefined);
});

test('transmission layouts', (t) => {
  const req = encodeRequestHeader({ flags: 1, type: 1, handle: 0x0102030405060708n, offset: 4096n, lengthBytes: 512 });
  t.is(req.toString('hex'), '25609513' + '0001' + '0001' + '0102030405060708' + '0000000000001000' + '00000200');
  const d = decodeRequestHeader(req)!;
  t.is(d.offset, 4096n);
  t.is(d.handle.toString('hex'), '0102030405060708');
  t.is(decodeRequestHeader(req.subarray(0, 27)), undefined);
  t.is(encodeSimpleReply(22, handle).toString('hex'), '67446698' + '00000016' + handle.toString('hex'));
  t.is(encodeOffsetDataHeader(1, handle, 512, 100).toString('hex'), '668e33ef' + '0001' + '0001' + handle.toString('hex') + '0000006c' + '0000000000000200');
  t.is(encodeOffsetHole(0, handle, 0, 4096).subarray(16).toString('hex'), '0000000c' + '0000000000000000' + '00001000');
  const e = encodeErrorChunk(1, handle, 5, 'bad', 4096);
  t.is(e.readUInt16BE(6), ReplyType.errorOffset);
  t.is(e.readUInt32BE(16), 6 + 3 + 8);
  t.is(e.subarray(20).toString('hex'), '00000005' + '0003' + Buffer.from('bad').toString('hex') + '0000000000001000');
  const bs = encodeBlockStatusChunk(1, handle, 1, [{ lengthBytes: 4096, flags: 3 }]);
  t.is(bs.subarray(16).toString('hex'), '0000000c' + '00000001' + '00001000' + '00000003');
  t.throws(() => encodeBlockStatusChunk(1, handle, 1, []));
  t.throws(() => encodeErrorChunk(1, handle, 0, 'x'));
});

test('decodeInfoRequest requires lengths to add up exactly', (t) => {
  const good = encodeInfoRequest('disk', [1, 3]);
  t.deepEqual(decodeInfoRequest(good), { exportName: 'disk', infoTypes: [1, 3] });
  t.is(decodeInfoRequest(good.subarray(0, good.length - 1)), undefined);
  t.is(decodeInfoRequest(Buffer.concat([good, Buffer.alloc(1)])), undefined);
  t.is(decodeInfoRequest(Buffer.alloc(5)), undefined);
  const huge = Buffer.alloc(6);
  huge.writeUInt32BE(0xffffffff, 0);
  t.is(decodeInfoRequest(huge), undefined);
});

test('decodeMetaContextRequest bounds names, counts and queries', (t) => {
  const good = encodeMetaContextRequest('disk', ['base:allocation', 'x-y:z']);
  t.deepEqual(decodeMetaContextRequest(good, 16), { exportName: 'disk', queries: ['base:allocation', 'x-y:z'] });
  t.is(decodeMetaContextRequest(good, 1), undefined, 'too many queries');
  t.is(decodeMetaContextRequest(good.subarray(0, good.length - 1), 16), undefined);
  t.is(decodeMetaContextRequest(Buffer.concat([good, Buffer.alloc(1)]), 16), undefined);
  const lyingCount = encodeMetaContextRequest('', []);
  lyingCount.writeUInt32BE(1_000_000, 4);
  t.is(decodeMetaContextRequest(lyingCount, 2_000_000), undefined);
});

test('decodeString rejects NUL, invalid UTF-8 and over-long strings', (t) => {
  t.is(decodeString(Buffer.from('dïsk')), 'dïsk');
  t.is(decodeString(Buffer.from([0x61, 0])), undefined);
  t.is(decodeString(Buffer.from([0xff, 0xfe])), undefined);
  t.is(decodeString(Buffer.alloc(4097, 0x61)), undefined);
  t.is(decodeString(Buffer.alloc(4096, 0x61))?.length, 4096);
});

test('decoders never throw on arbitrary bytes and round-trip valid input', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      decodeInfoRequest(bytes);
      decodeMetaContextRequest(bytes, 64);
      decodeRequestHeader(bytes);
      decodeOptionHeader(bytes);
      decodeString(bytes);
    }),
    { numRuns: 5000 },
  );
  fc.assert(
    fc.property(fc.string({ maxLength: 100 }).filter((s) => !s.includes('\0')), fc.array(fc.integer({ min: 0, max: 65535 }), { maxLength: 10 }), (name, types) => {
      const d = decodeInfoRequest(encodeInfoRequest(name, types));
      return d !== undefined && d.exportName === name && d.infoTypes.join() === types.join();
    }),
    { numRuns: 2000 },
  );
  t.pass();
});

test('encodeMessage cuts long messages at a UTF-8 character boundary and drops NULs', (t) => {
  t.is(encodeMessage('short').toString('utf8'), 'short');
  t.is(encodeMessage('a\0b').toString('utf8'), 'a?b');
  const long = 'é'.repeat(300); // 2 bytes each: 600 bytes
  const cut = encodeMessage(long);
  t.is(cut.length, messageBytesMax);
  t.is(decodeString(cut), 'é'.repeat(messageBytesMax / 2));
  const odd = encodeMessage('x' + '€'.repeat(200)); // 1 + 3 * 200 bytes; 256 falls inside a '€'
  t.true(odd.length <= messageBytesMax && odd.length > messageBytesMax - 3);
  t.not(decodeString(odd), undefined, 'still valid UTF-8');
});
