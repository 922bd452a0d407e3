// Proves real Debian NBD clients negotiate with the chard NBD server: nbdinfo (libnbd) sees the
// flags, the base:allocation context, sizes and the export list; nbd-client -l lists the exports
// (it needs no kernel module for listing). Target from test/helpers/nbd-target.ts on 127.0.0.1.

import test from 'ava';
import { startTarget } from '../helpers/nbd-target.js';
import { requireTools, run, timed } from '../helpers/nbd-tools.js';

test('nbdinfo --json reports flags, base:allocation and size', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const target = await startTarget();
  try {
    await timed(t, 'nbdinfo', async () => {
      const { stdout } = await run('nbdinfo', ['--json', target.uri('disk')], { timeoutMs: 30_000 });
      const info = JSON.parse(stdout);
      t.is(info.protocol, 'newstyle-fixed');
      t.true(info.structured);
      const e = info.exports[0];
      t.is(e['export-name'], 'disk');
      t.is(e['export-size'], 512 * 1024 * 1024);
      t.deepEqual(e.contexts, ['base:allocation']);
      for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_fast_zero', 'can_multi_conn', 'can_cache', 'can_df']) t.true(e[flag], flag);
      t.false(e.is_read_only);
      t.is(e.block_size_preferred, 4096);

      const ro = JSON.parse((await run('nbdinfo', ['--json', target.uri('ro')], { timeoutMs: 30_000 })).stdout).exports[0];
      t.true(ro.is_read_only);
      t.false(ro.can_trim);

      const list = JSON.parse((await run('nbdinfo', ['--json', '--list', `nbd://${target.host}:${target.port}`], { timeoutMs: 30_000 })).stdout);
      t.deepEqual(list.exports.map((x: { 'export-name': string }) => x['export-name']).sort(), ['disk', 'ro', 'small']);

      const missing = await run('nbdinfo', [target.uri('missing')], { timeoutMs: 30_000, allowFailure: true });
      t.not(missing.code, 0, 'an unknown export is refused');
    });
  } finally {
    await target.stop();
  }
});

test('nbd-client -l lists the exports', async (t) => {
  if (!requireTools(t, ['nbd-client'])) return;
  const target = await startTarget();
  try {
    await timed(t, 'nbd-client -l', async () => {
      const { stdout } = await run('nbd-client', ['-l', target.host, String(target.port)], { timeoutMs: 30_000 });
      for (const name of ['disk', 'small', 'ro']) t.regex(stdout, new RegExp(`^${name}`, 'm'));
      t.regex(stdout, /disk: chard test disk/);
    });
  } finally {
    await target.stop();
  }
});
