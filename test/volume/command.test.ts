/**
 * command: the block command codec (src/volume/command.ts), the wire validation of every Normal
 * entry a node proposes or applies. Every kind round-trips, with and without a session stamp and
 * at the edges of its fields (offsets up to 2^53 - 1, 1- and 64-byte session ids, non-ASCII
 * UTF-8); every malformed encoding is an InvalidArgument UsageError, never a wrong command or a
 * crash: each truncation of every kind, a u64 one past 2^53 - 1, trailing bytes, unknown
 * version/kind/flags, a session id that is not canonical UTF-8, out-of-range lengths.
 */

import test from 'ava';
import { ErrorCode, UsageError } from '../../src/errors.js';
import { type Command, decodeCommand, encodeCommand } from '../../src/volume/command.js';

const session = (id: string, sequence: number, ackedBelow: number) => ({ id, sequence, ackedBelow });
const maxSafe = Number.MAX_SAFE_INTEGER;

const samples: Command[] = [
  { kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(0) },
  { kind: 'write', volume: 'default', offset: 4096, data: new Uint8Array(4096).fill(7), session: session('c1a2b3c4-5d6e', 1, 0) },
  { kind: 'write', volume: 'a'.repeat(64), offset: maxSafe, data: Uint8Array.from([1, 2, 3]), session: session('é-ü-日本', maxSafe, maxSafe) },
  { kind: 'trim', volume: 'v.1_x-y', offset: 2 ** 32, length: 2 ** 32 - 1, session: session('s'.repeat(64), 2 ** 32, 2 ** 31) },
  { kind: 'writeZeroes', volume: 'v', offset: 2 ** 32 - 1, length: maxSafe },
  { kind: 'createVolume', name: 'vol', sizeBytes: 2 ** 40 },
  { kind: 'resizeVolume', name: 'vol', sizeBytes: 4096, session: session('x', 3, 2) },
  { kind: 'deleteVolume', name: 'vol' },
  { kind: 'noop', session: session('x', 9, 9) },
  { kind: 'closeSession', session: session('ü', 5, 4) },
];

const plain = (c: Command) => JSON.parse(JSON.stringify(c, (_k, v: unknown) => (v instanceof Uint8Array ? Array.from(v) : v))) as unknown;

function invalid(t: import('ava').ExecutionContext, bytes: Uint8Array, why: string): void {
  const error = t.throws(() => decodeCommand(bytes), { instanceOf: UsageError }, why);
  t.is(error?.code, ErrorCode.InvalidArgument, why);
}

test('every kind round-trips, at the edges of its fields', (t) => {
  for (const command of samples) t.deepEqual(plain(decodeCommand(encodeCommand(command))), plain(command), command.kind);
  t.deepEqual(decodeCommand(new Uint8Array(0)), { kind: 'noop' });
});

test('every truncation and every trailing byte is an InvalidArgument', (t) => {
  for (const command of samples) {
    const bytes = encodeCommand(command);
    for (let n = 1; n < bytes.length; n++) invalid(t, bytes.subarray(0, n), `${command.kind} cut to ${n} of ${bytes.length} bytes`);
    const longer = new Uint8Array(bytes.length + 1);
    longer.set(bytes);
    invalid(t, longer, `${command.kind} with a trailing byte`);
  }
});

test('a u64 field one past 2^53 - 1 is refused, not rounded', (t) => {
  const bytes = Buffer.from(encodeCommand({ kind: 'trim', volume: 'v', offset: maxSafe, length: 1 }));
  const offsetAt = 3 + 1 + 1; // version, kind, flags, name length, name
  t.is(bytes.readUInt32BE(offsetAt), 0x1f_ffff);
  bytes.writeUInt32BE(0x20_0000, offsetAt);
  bytes.writeUInt32BE(0, offsetAt + 4); // exactly 2^53
  invalid(t, bytes, 'offset 2^53');
  const sequenceAt = 3 + 1 + 1;
  const stamped = Buffer.from(encodeCommand({ kind: 'noop', session: session('x', maxSafe, 0) }));
  stamped.writeUInt32BE(0xffff_ffff, sequenceAt);
  invalid(t, stamped, 'sequence 2^64 - 1');
});

test('unknown version, kind or flags, and out-of-range lengths are refused', (t) => {
  const base = Buffer.from(encodeCommand({ kind: 'write', volume: 'v', offset: 0, data: Uint8Array.from([1]) }));
  const patched = (at: number, value: number) => {
    const copy = Buffer.from(base);
    copy[at] = value;
    return copy;
  };
  invalid(t, patched(0, 2), 'version 2');
  invalid(t, patched(1, 0), 'kind 0');
  invalid(t, patched(1, 9), 'kind 9');
  invalid(t, patched(2, 2), 'unknown flag');
  invalid(t, patched(3, 0), 'empty volume name');
  invalid(t, patched(3, 65), '65-byte volume name');
  invalid(t, patched(4, 0x2f), "volume name '/'");
  const sessionLength = Buffer.from(encodeCommand({ kind: 'noop', session: session('x', 1, 0) }));
  sessionLength[3] = 0;
  invalid(t, sessionLength, 'empty session id');
  sessionLength[3] = 65;
  invalid(t, sessionLength, '65-byte session id');
  const acked = Buffer.from(encodeCommand({ kind: 'noop', session: session('x', 5, 5) }));
  acked.writeUInt32BE(6, 3 + 2 + 8 + 4); // ackedBelow 6 > sequence 5
  invalid(t, acked, 'ackedBelow beyond sequence');
  invalid(t, Buffer.from(encodeCommand({ kind: 'closeSession', session: session('x', 1, 0) })).fill(0, 2, 3).subarray(0, 3), 'closeSession without its stamp');
});

test('a session id must be canonical UTF-8: an invalid sequence is refused, not read as U+FFFD', (t) => {
  const bytes = Buffer.from(encodeCommand({ kind: 'noop', session: session('ab', 1, 0) }));
  t.is(bytes[3], 2);
  bytes[4] = 0xc3; // a lead byte followed by 'b' (not a continuation byte)
  invalid(t, bytes, 'broken two-byte sequence');
  bytes[4] = 0xff;
  invalid(t, bytes, 'a byte no UTF-8 has');
  bytes[4] = 0x80;
  invalid(t, bytes, 'a lone continuation byte');
  const wide = decodeCommand(encodeCommand({ kind: 'noop', session: session('ü'.repeat(32), 1, 0) }));
  t.is(wide.session?.id, 'ü'.repeat(32), '64 bytes of two-byte characters');
});

test('encode refuses what decode would refuse', (t) => {
  const refused = (c: Command, why: string) => t.throws(() => encodeCommand(c), { instanceOf: UsageError }, why);
  refused({ kind: 'write', volume: 'v', offset: -1, data: new Uint8Array(0) }, 'negative offset');
  refused({ kind: 'write', volume: 'v', offset: 2 ** 53, data: new Uint8Array(0) }, 'offset 2^53');
  refused({ kind: 'trim', volume: 'v', offset: 0, length: 0.5 }, 'fractional length');
  refused({ kind: 'noop', session: session('', 1, 0) }, 'empty session id');
  refused({ kind: 'noop', session: session('ü'.repeat(33), 1, 0) }, '66-byte session id');
  refused({ kind: 'noop', session: session('x', 0, 0) }, 'sequence 0');
  refused({ kind: 'noop', session: session('x', 1, 2) }, 'ackedBelow beyond sequence');
  refused({ kind: 'createVolume', name: 'a/b', sizeBytes: 1 }, 'bad volume name');
});

test('encoded commands share no bytes with each other', (t) => {
  const encoded = Array.from({ length: 200 }, (_, i) => encodeCommand({ kind: 'write', volume: 'v', offset: i * 4096, data: new Uint8Array(4096).fill(i) }));
  encoded.forEach((bytes, i) => t.is(decodeCommand(bytes).kind === 'write' && (decodeCommand(bytes) as { data: Uint8Array }).data.every((b) => b === (i & 0xff)), true, `command ${i}`));
});
