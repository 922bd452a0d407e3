/**
 * state-volume-cache: BlockStateMachine keeps the volume rows it looked up in memory (every read
 * and write names its volume). The cache must follow every change of a volume row — create,
 * resize, delete, a re-create under the same name — and a batch that rolls back.
 */

import path from 'node:path';
import test from 'ava';
import { BlockStateMachine, blockBytes } from '../../src/blockstore/state-store.js';
import { CorruptError, ErrorCode, UsageError } from '../../src/errors.js';
import { EntryType, emptyConfState } from '../../src/raft/types.js';
import { type Command, encodeCommand } from '../../src/volume/command.js';
import { tempDir } from './helpers.js';

test('volume lookups follow create, resize, delete, re-create and a rolled-back batch', (t) => {
  const tmp = tempDir('volume-cache');
  const sm = BlockStateMachine.open(path.join(tmp.dir, 'state.db'));
  let index = 0;
  const apply = (...commands: Command[]) =>
    [...sm.apply(commands.map((c) => ({ index: ++index, term: 1, type: EntryType.Normal, data: encodeCommand(c) })), () => emptyConfState()).values()];
  const readErr = (offset: number) => {
    try {
      sm.read('v', offset, blockBytes);
      return undefined;
    } catch (error) {
      return (error as UsageError).code;
    }
  };
  try {
    apply({ kind: 'createVolume', name: 'v', sizeBytes: 16 * blockBytes });
    apply({ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(blockBytes).fill(1) });
    t.is(readErr(0), undefined);
    t.is(readErr(20 * blockBytes), ErrorCode.OutOfRange, 'beyond the end');
    apply({ kind: 'resizeVolume', name: 'v', sizeBytes: 32 * blockBytes });
    t.is(readErr(20 * blockBytes), undefined, 'a grow is seen at once');
    t.true(apply({ kind: 'write', volume: 'v', offset: 20 * blockBytes, data: new Uint8Array(blockBytes).fill(2) })[0]!.ok);
    apply({ kind: 'resizeVolume', name: 'v', sizeBytes: 8 * blockBytes });
    t.is(readErr(20 * blockBytes), ErrorCode.OutOfRange, 'a shrink is seen at once');
    const createdFirst = sm.volume('v')!.createdIndex;
    apply({ kind: 'deleteVolume', name: 'v' });
    t.is(readErr(0), ErrorCode.NotFound);
    apply({ kind: 'createVolume', name: 'v', sizeBytes: 16 * blockBytes });
    t.not(sm.volume('v')!.createdIndex, createdFirst, 'the re-created volume is another one');
    t.is(sm.read('v', 0, blockBytes)[0]!.data, undefined, 'and reads zeros');
    // A batch that creates w, writes it, then fails on a rotted block rolls back whole: no w.
    apply({ kind: 'write', volume: 'v', offset: 0, data: new Uint8Array(blockBytes).fill(3) });
    sm.database().prepare('UPDATE blocks SET crc = crc + 1').run();
    t.throws(
      () => apply({ kind: 'createVolume', name: 'w', sizeBytes: 16 * blockBytes }, { kind: 'write', volume: 'w', offset: 0, data: new Uint8Array(blockBytes).fill(4) }, { kind: 'write', volume: 'v', offset: 10, data: new Uint8Array(5) }),
      { instanceOf: CorruptError },
    );
    t.is(sm.volume('w'), undefined, 'the rolled-back create is forgotten');
    t.throws(() => sm.read('w', 0, blockBytes), { instanceOf: UsageError });
  } finally {
    sm.close();
    tmp.cleanup();
  }
});
