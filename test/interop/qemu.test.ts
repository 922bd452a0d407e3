// Proves QEMU's NBD client (qemu-io, qemu-img) works against the chard NBD server: a qemu-io script
// of pattern writes, write-zeroes, discard, FUA writes and flush reads back exactly what was
// written (the server's counters confirm WRITE_ZEROES, TRIM, FUA and FLUSH really went over the
// wire), and `qemu-img map --output=json` shows data where written and zero holes elsewhere.

import test from 'ava';
import { startTarget } from '../helpers/nbd-target.js';
import { requireTools, run, timed } from '../helpers/nbd-tools.js';

const MiB = 1024 * 1024;

test('qemu-io script: write -P, write -z, discard, write -f, flush, read -P', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const target = await startTarget();
  try {
    const commands = [
      'write -P 0xab 0 1M',
      'write -z 1M 1M',
      'write -P 0x11 2M 256k',
      'discard 2M 128k',
      'write -f -P 0xcd 4M 64k',
      'write -P 0xee 5M 512',
      'flush',
      'read -P 0xab 0 1M',
      'read -P 0 1M 1M',
      'read -P 0 2M 128k',
      // The 256 KiB write at 2M ends at 2304k; its undiscarded half is [2176k, 2304k).
      'read -P 0x11 2176k 128k',
      'read -P 0 2304k 128k',
      'read -P 0xcd 4M 64k',
      'read -P 0xee 5M 512',
      'read -P 0 5243392 512',
    ];
    const { stdout } = await timed(t, 'qemu-io script', () =>
      run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), target.uri('small')], { timeoutMs: 60_000 }),
    );
    t.notRegex(stdout, /Pattern verification failed|error|failed/i, stdout);
    t.is((stdout.match(/^read /gm) ?? []).length, 8, stdout);
    if (target.backend) {
      const e = target.backend.export('small');
      t.true(e.readBytes(4 * MiB, 65536).equals(Buffer.alloc(65536, 0xcd)));
    }
    if (target.counters) {
      // qemu really used the NBD commands (rather than emulating them with plain writes).
      const c = target.counters();
      t.true(c.writeZeroesRequests >= 1, 'write -z sent NBD_CMD_WRITE_ZEROES');
      t.true(c.trimRequests >= 1, 'discard sent NBD_CMD_TRIM');
      t.true(c.fuaRequests >= 1, 'write -f sent NBD_CMD_FLAG_FUA');
      t.true(c.flushRequests >= 1, 'flush sent NBD_CMD_FLUSH');
    }
  } finally {
    await target.stop();
  }
});

test('qemu-img map --output=json shows holes and data', async (t) => {
  if (!requireTools(t, ['qemu-io', 'qemu-img'])) return;
  const target = await startTarget();
  try {
    await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 1M', '-c', 'write -P 2 8M 64k', target.uri('small')], { timeoutMs: 60_000 });
    const { stdout } = await timed(t, 'qemu-img map', () => run('qemu-img', ['map', '--output=json', '-f', 'raw', target.uri('small')], { timeoutMs: 60_000 }));
    const map = JSON.parse(stdout) as { start: number; length: number; data: boolean; zero: boolean }[];
    const simplified = map.map((m) => [m.start, m.length, m.data, m.zero]);
    t.deepEqual(simplified, [
      [0, 1 * MiB, true, false],
      [1 * MiB, 7 * MiB, false, true],
      [8 * MiB, 65536, true, false],
      [8 * MiB + 65536, 64 * MiB - 8 * MiB - 65536, false, true],
    ]);
  } finally {
    await target.stop();
  }
});
