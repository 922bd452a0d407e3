/**
 * commands: proves the state-machine command codec round-trips every kind (with and without a
 * session stamp), and refuses malformed
 * input with UsageError(INVALID_ARGUMENT) — never another exception — for every truncation of a
 * valid encoding, random byte flips (fast-check), bad names, and over-long lengths.
 */

import test from 'ava';
import fc from 'fast-check';
import { type BlockCommand, type Command, commandLimits, decodeCommand, encodeCommand } from '../../src/volume/command.js';
import { ErrorCode, UsageError } from '../../src/errors.js';

const session = { id: 'conn-7', sequence: 42, ackedBelow: 40 };
const samples: Command[] = [
  { kind: 'write', volume: 'vol-1', offset: 4095, data: new Uint8Array([1, 2, 3]), session },
  { kind: 'write', volume: 'a', offset: 0, data: new Uint8Array(0) },
  { kind: 'trim', volume: 'v.2_x', offset: 2 ** 40, length: 8192, session },
  { kind: 'writeZeroes', volume: 'v', offset: 1, length: 2 ** 52 },
  { kind: 'createVolume', name: 'x'.repeat(64), sizeBytes: 1 << 30 },
  { kind: 'resizeVolume', name: 'x', sizeBytes: 512, session: { id: 's', sequence: 1, ackedBelow: 0 } },
  { kind: 'deleteVolume', name: 'gone' },
  { kind: 'noop' },
  { kind: 'noop', session },
  { kind: 'closeSession', session },
];

function isInvalid(fn: () => unknown): boolean {
  try {
    fn();
    return false;
  } catch (error) {
    if (error instanceof UsageError && error.code === ErrorCode.InvalidArgument) return true;
    throw error;
  }
}

test('every kind round-trips', (t) => {
  for (const command of samples) {
    const decoded = decodeCommand(encodeCommand(command));
    if (command.kind === 'write' && decoded.kind === 'write') {
      t.deepEqual([...decoded.data], [...command.data]);
      t.deepEqual({ ...decoded, data: null }, { ...command, data: null });
    } else {
      t.deepEqual(decoded, command);
    }
  }
  t.deepEqual(decodeCommand(new Uint8Array(0)), { kind: 'noop' }, 'the empty entry of a new leader is a noop');
});

test('a BlockCommand of the NBD layer is a Command: no mapping between them', (t) => {
  const block: BlockCommand = { kind: 'writeZeroes', volume: 'v', offset: 10, length: 20, session };
  t.deepEqual(decodeCommand(encodeCommand(block)), block);
  const write = decodeCommand(encodeCommand({ kind: 'write', volume: 'v', offset: 3, data: new Uint8Array([9]), session }));
  t.is(write.kind, 'write');
  t.deepEqual(write.session, session);
});

test('every truncation and any trailing byte is refused', (t) => {
  for (const command of samples) {
    const bytes = encodeCommand(command);
    for (let n = 1; n < bytes.length; n++) t.true(isInvalid(() => decodeCommand(bytes.subarray(0, n))), `${command.kind} cut at ${n}`);
    const longer = new Uint8Array(bytes.length + 1);
    longer.set(bytes);
    t.true(isInvalid(() => decodeCommand(longer)));
  }
});

test('encode refuses out-of-bounds fields', (t) => {
  t.true(isInvalid(() => encodeCommand({ kind: 'createVolume', name: 'bad name', sizeBytes: 1 })));
  t.true(isInvalid(() => encodeCommand({ kind: 'createVolume', name: 'x'.repeat(65), sizeBytes: 1 })));
  t.true(isInvalid(() => encodeCommand({ kind: 'deleteVolume', name: '' })));
  t.true(isInvalid(() => encodeCommand({ kind: 'trim', volume: 'v', offset: -1, length: 1 })));
  t.true(isInvalid(() => encodeCommand({ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(commandLimits.writeBytesMax + 1) })));
  t.true(isInvalid(() => encodeCommand({ kind: 'noop', session: { id: '', sequence: 1, ackedBelow: 0 } })));
  t.true(isInvalid(() => encodeCommand({ kind: 'noop', session: { id: 's', sequence: 0, ackedBelow: 0 } })));
  t.true(isInvalid(() => encodeCommand({ kind: 'noop', session: { id: 's', sequence: 3, ackedBelow: 4 } })));
  t.true(isInvalid(() => decodeCommand(new Uint8Array(commandLimits.commandBytesMax + 1))));
});

test('decode of arbitrary or mutated bytes is a valid command or INVALID_ARGUMENT, never a crash', (t) => {
  const encoded = samples.map((c) => encodeCommand(c));
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      try {
        decodeCommand(bytes);
      } catch (error) {
        return error instanceof UsageError && error.code === ErrorCode.InvalidArgument;
      }
      return true;
    }),
    { numRuns: 2000, seed: 1 },
  );
  fc.assert(
    fc.property(fc.nat(encoded.length - 1), fc.nat(), fc.integer({ min: 0, max: 255 }), (which, at, value) => {
      const bytes = encoded[which]!.slice();
      bytes[at % bytes.length] = value;
      try {
        const decoded = decodeCommand(bytes);
        // whatever decodes re-encodes to the same bytes (the codec is canonical)
        return Buffer.compare(encodeCommand(decoded), bytes) === 0;
      } catch (error) {
        return error instanceof UsageError && error.code === ErrorCode.InvalidArgument;
      }
    }),
    { numRuns: 3000, seed: 2 },
  );
  t.pass();
});
