// Proves the kernel-test harness end to end: the real Linux NBD client (Debian's nbd.ko driven by
// nbd-client) in a TCG QEMU guest reaches an nbdkit server on a private network namespace's
// 127.0.0.1, and a full filesystem cycle works through it: mkfs.ext4, mount, fsynced writes,
// sha256 sums, umount, fsck.ext4 -fn, remount after dropping caches, sums verified, continuous
// writer (stopped from the host over the serial console), disconnect. The host then re-checks the
// backing file itself (e2fsck -fn, and debugfs reads every file back and matches the guest's
// sha256), so the data provably crossed NBD. A second boot kills the server mid-writer and
// requires the guest to report the failed fsynced writes loudly (CHARD-IOERR).
// Under CI=true missing qemu / root / build tools fail the test; elsewhere it is skipped with a log.

import test, { type ExecutionContext } from 'ava';
import { execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createNetns, ensureGuestImage, findTool, killChild, missingPrerequisites, run, runGuest, type GuestImage, type GuestRun, type Netns } from './guest.js';
import { smokeScript, writerScript, type SmokeFile } from './guest-scripts.js';

const MiB = 1024 * 1024;
const diskBytes = 256 * MiB;

/** ready: true when the host can run the guest; else fails (CI) or logs and skips. */
function ready(t: ExecutionContext): boolean {
  const missing = missingPrerequisites();
  if (findTool('nbdkit') === undefined) missing.push('nbdkit');
  if (findTool('nbdinfo') === undefined) missing.push('nbdinfo (libnbd-bin)');
  if (findTool('debugfs') === undefined) missing.push('debugfs (e2fsprogs)');
  if (missing.length === 0) return true;
  const message = `kernel guest prerequisites missing: ${missing.join(', ')} (see docs/kernel-test.md)`;
  if (process.env['CI'] === 'true') t.fail(message);
  else {
    t.log(`SKIPPED: ${message}`);
    t.pass();
  }
  return false;
}

let imagePromise: Promise<GuestImage> | undefined;
const image = () => (imagePromise ??= ensureGuestImage());

/** startNbdkit: `nbdkit file DISK` on the namespace's 127.0.0.1:port; resolves once it accepts connections. */
async function startNbdkit(netns: Netns, disk: string): Promise<{ port: number; server: ChildProcess }> {
  const port = await netns.freePort();
  const server = netns.spawn('nbdkit', ['--exit-with-parent', '-f', '-i', '127.0.0.1', '-p', String(port), 'file', disk]);
  let stderr = '';
  server.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  for (let attempt = 0; attempt < 100; attempt++) {
    const probe = await netns.exec('nbdinfo', ['--size', `nbd://127.0.0.1:${port}`], { allowFailure: true, timeoutMs: 5_000 });
    if (probe.code === 0) return { port, server };
    if (server.exitCode !== null) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`nbdkit did not come up on port ${port}: ${stderr}`);
}

function steps(result: GuestRun): Map<string, Record<string, string>> {
  const map = new Map<string, Record<string, string>>();
  for (const record of result.results) if (record['step'] !== undefined) map.set(record['step'], record);
  return map;
}

function explain(result: GuestRun): string {
  return `exitOk=${result.exitOk} timedOut=${result.timedOut} scriptRc=${result.scriptRc} qemu=${JSON.stringify(result.qemuExit)}\n--- console (tail) ---\n${result.console.slice(-6000)}`;
}

test.serial('guest smoke: nbd-client, mkfs.ext4, mount, fsync writes, fsck, remount, verify, writer, disconnect', async (t) => {
  t.timeout(170_000);
  if (!ready(t)) return;
  const started = performance.now();
  const guestImage = await image();
  const buildMs = Math.round(performance.now() - started);
  const work = await mkdtemp(join(tmpdir(), 'chard-ksmoke-'));
  const netns = await createNetns();
  try {
    const disk = join(work, 'disk.img');
    await writeFile(disk, '');
    await truncate(disk, diskBytes);
    const { port } = await startNbdkit(netns, disk);
    const files: SmokeFile[] = [
      { name: 'small.bin', bytes: 4096 },
      { name: 'odd.bin', bytes: 12345 },
      { name: 'large.bin', bytes: 1 * MiB },
    ];
    let writesSeen = 0;
    let stopSentAtMs: number | undefined;
    const result = await runGuest({
      netns,
      image: guestImage,
      memoryMb: 512,
      timeoutMs: 150_000,
      script: smokeScript({ port, timeoutSeconds: 30 }, files, { fileBytes: 64 * 1024, count: 0, secondsMax: 60 }),
      onLine: (line, ms, guest) => {
        // React to guest progress: stop the endless writer from the host after 8 writes.
        if (line.startsWith('CHARD-RESULT write=') && ++writesSeen === 8) {
          stopSentAtMs = ms;
          guest.send('stop');
        }
      },
    });
    t.log(`kernel ${guestImage.kernelVersion}; image ready in ${buildMs} ms; boot (spawn to CHARD-READY) ${result.bootMs} ms; guest total ${result.totalMs} ms`);
    t.true(result.exitOk, explain(result));
    t.is(result.ioErrors.length, 0, explain(result));
    const byStep = steps(result);
    const expected = ['connect', 'mkfs', 'mount', ...files.map((f) => `write-${f.name}`), 'umount', 'drop-caches', 'fsck', 'remount', 'verify', 'writer', 'umount2', 'disconnect'];
    for (const name of expected) t.is(byStep.get(name)?.['ok'], '1', `step ${name}: ${JSON.stringify(byStep.get(name))}\n${explain(result)}`);
    t.log('steps (ms): ' + expected.map((name) => `${name}=${byStep.get(name)?.['ms'] ?? '?'}`).join(' '));
    const size = result.results.find((r) => r['size_bytes'] !== undefined);
    t.is(size?.['size_bytes'], String(diskBytes));

    // Continuous writer: consecutive sequence numbers, every write ok, guest timestamps monotonic.
    const writes = result.results.filter((r) => r['write'] !== undefined);
    // The host's stop reached the writer: the guest logged it, and at most the write in progress
    // then completed (the bound was 60 writes in all: how many the guest writes while the stop
    // travels depends on the speed of the guest and of the host, not on the stop working).
    t.true(writes.length >= 8, `writes=${writes.length} (stop sent at ${stopSentAtMs} ms)`);
    const consoleLines = result.console.split(/\r?\n/);
    const stopLine = consoleLines.findIndex((line) => line.includes('CHARD-LOG stop requested'));
    t.true(stopLine >= 0, `the guest saw the stop (sent at ${stopSentAtMs} ms)`);
    const writesAfterStop = consoleLines.slice(stopLine + 1).filter((line) => line.includes('CHARD-RESULT write=')).length;
    t.true(writesAfterStop <= 1, `${writesAfterStop} writes completed after the guest saw the stop`);
    let previousEnd = 0;
    writes.forEach((w, index) => {
      t.is(w['write'], String(index + 1));
      t.is(w['ok'], '1');
      const t0 = Number(w['t0']);
      const t1 = Number(w['t1']);
      t.true(t0 >= previousEnd && t1 >= t0, `write ${w['write']}: t0=${t0} t1=${t1} previous end ${previousEnd}`);
      previousEnd = t1;
    });
    const done = result.results.find((r) => r['writer'] === 'done');
    t.is(done?.['errors'], '0');
    t.log(`writer: ${writes.length} fsynced 64 KiB writes, ms per write: ${writes.map((w) => w['ms']).join(',')}`);

    // Host-side proof that the data crossed NBD: the backing file is a clean ext4 holding the files.
    const sums = new Map(result.results.filter((r) => r['file'] !== undefined).map((r) => [r['file']!, r['sha256']!]));
    t.is(sums.size, files.length);
    const fsck = await run('e2fsck', ['-fn', disk], { allowFailure: true });
    t.is(fsck.code, 0, fsck.stdout + fsck.stderr);
    for (const file of files) {
      const { stdout } = await runBinary('debugfs', ['-R', `cat /${file.name}`, disk]);
      t.is(stdout.length, file.bytes, file.name);
      t.is(createHash('sha256').update(stdout).digest('hex'), sums.get(file.name) ?? 'missing', file.name);
    }
    t.log(`smoke test total ${Math.round(performance.now() - started)} ms`);
  } finally {
    await netns.destroy();
    await rm(work, { recursive: true, force: true });
  }
});

test.serial('guest writer: a dead server makes the fsynced writes fail loudly (CHARD-IOERR)', async (t) => {
  t.timeout(150_000);
  if (!ready(t)) return;
  const started = performance.now();
  const guestImage = await image();
  const work = await mkdtemp(join(tmpdir(), 'chard-kwriter-'));
  const netns = await createNetns();
  try {
    const disk = join(work, 'disk.img');
    await writeFile(disk, '');
    await truncate(disk, 64 * MiB);
    const { port, server } = await startNbdkit(netns, disk);
    let killedAtMs: number | undefined;
    let writesSeen = 0;
    const result = await runGuest({
      netns,
      image: guestImage,
      timeoutMs: 120_000,
      script: writerScript({ port, timeoutSeconds: 5 }, { fileBytes: 16 * 1024, count: 0, secondsMax: 60 }),
      onLine: (line, ms) => {
        if (line.startsWith('CHARD-RESULT write=') && ++writesSeen === 5) {
          killedAtMs = ms;
          server.kill('SIGKILL');
        }
      },
    });
    await killChild(server, 1_000);
    t.not(killedAtMs, undefined, explain(result));
    t.is(result.scriptRc, 0, explain(result)); // the script itself completed; the writer reports the errors
    const byStep = steps(result);
    t.is(byStep.get('writer')?.['ok'], '0', explain(result));
    t.true(result.ioErrors.length > 0, explain(result));
    const firstError = result.events.find((e) => e.line.startsWith('CHARD-IOERR '));
    t.log(`server killed at ${killedAtMs} ms after 5 writes; first CHARD-IOERR at ${firstError?.t} ms; ` +
      `${result.ioErrors.length} failed writes; kernel I/O error lines: ${result.events.filter((e) => /I\/O error|nbd0/.test(e.line)).length}; guest total ${result.totalMs} ms`);
    const done = result.results.find((r) => r['writer'] === 'done');
    t.is(done?.['errors'], String(result.ioErrors.length));
    t.log(`writer test total ${Math.round(performance.now() - started)} ms`);
  } finally {
    await netns.destroy();
    await rm(work, { recursive: true, force: true });
  }
});

/** runBinary: like run, but keeps stdout as bytes (debugfs cat of random data). */
function runBinary(command: string, args: string[]): Promise<{ stdout: Buffer }> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { encoding: 'buffer', maxBuffer: 64 * MiB, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} failed: ${stderr.toString()}`));
      else resolve({ stdout });
    });
  });
}
