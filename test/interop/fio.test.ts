// Proves the chard NBD server serves concurrent random writes correctly: fio with ioengine=nbd runs
// 2 jobs (each its own connection and 32 MiB region) of 4 KiB random writes at iodepth 16 with
// verify=crc32c, which reads every block back and checks its checksum. Also runs the fio baseline
// of src/bench/fio.ts (1 s per job) against `nbdkit file` and the chard target: no timing asserted,
// only that every job moved data without an error; the figures are logged for the lead.

import test from 'ava';
import { startTarget } from '../helpers/nbd-target.js';
import { fioFigures, fioJobs, formatFigures, startNbdkitFile } from '../../src/bench/fio.js';
import { requireTools, run, timed } from '../helpers/nbd-tools.js';

test('fio ioengine=nbd randwrite + verify=crc32c, 2 jobs', async (t) => {
  if (!requireTools(t, ['fio'])) return;
  const target = await startTarget();
  try {
    const args = [
      '--name=chard',
      '--ioengine=nbd',
      `--uri=${target.uri('small')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=16',
      '--numjobs=2',
      '--size=32M',
      '--offset_increment=32M',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_fatal=1',
      '--group_reporting',
      '--output-format=json',
    ];
    const { stdout } = await timed(t, 'fio randwrite+verify (2 jobs x 32 MiB)', () => run('fio', args, { timeoutMs: 110_000 }));
    const report = JSON.parse(stdout.slice(stdout.indexOf('{')));
    const job = report.jobs[0];
    t.is(job.error, 0);
    t.is(job.write.io_bytes, 2 * 32 * 1024 * 1024, 'all blocks written');
    t.is(job.read.io_bytes, 2 * 32 * 1024 * 1024, 'all blocks read back for verification');
    t.log(`fio write ${Math.round(job.write.iops)} IOPS, verify read ${Math.round(job.read.iops)} IOPS`);
  } finally {
    await target.stop();
  }
});

test('fio baseline figures (src/bench/fio.ts, 1 s per job): nbdkit file and the chard target', async (t) => {
  if (!requireTools(t, ['fio', 'nbdkit'])) return;
  const nbdkit = await startNbdkitFile();
  try {
    const figures = await timed(t, 'fio baseline against nbdkit file', () => fioFigures(nbdkit.uri, { runtimeSeconds: 1 }));
    t.log(formatFigures('nbdkit file', figures));
    t.deepEqual(figures.map((f) => f.job), fioJobs.map((j) => j.name));
    for (const f of figures) t.true(f.iops > 0 && f.ioBytes > 0, `${f.job} moved data`);
  } finally {
    await nbdkit.stop();
  }
  const target = await startTarget();
  try {
    const figures = await timed(t, 'fio baseline against the chard target', () => fioFigures(target.uri('disk'), { runtimeSeconds: 1 }));
    t.log(formatFigures('chard target', figures));
    for (const f of figures) t.true(f.iops > 0 && f.ioBytes > 0, `${f.job} moved data`);
  } finally {
    await target.stop();
  }
});
