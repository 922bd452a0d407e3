// Proves a real Linux filesystem lives on a chard NBD export and survives a full client restart:
// nbdfuse (libnbd, multi-conn) exposes the export as a file, losetup puts a loop device on it,
// mkfs.ext4 + mount + files written with fsync + umount; then the whole client stack (mount, loop,
// FUSE) is torn down and rebuilt from scratch, so nothing can come from a client-side cache:
// `fsck.ext4 -fn` finds the filesystem clean, and the remounted files have the same sha256.
// Every mount, loop device and nbdfuse process is released in t.teardown, even on failure.
// Needs root, /dev/fuse, /dev/loop-control (Debian: nbdfuse, fuse3, e2fsprogs, mount, util-linux).

import test, { type ExecutionContext } from 'ava';
import type { ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTarget } from '../helpers/nbd-target.js';
import { LocalCluster } from '../helpers/local-cluster.js';
import type { NbdCounters } from '../../src/nbd/server.js';
import { requireTools, run, startDaemon, timed } from '../helpers/nbd-tools.js';

const tools = ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount', 'umount', 'sha256sum', 'dd'];

/** files: name -> MiB, written from /dev/urandom with conv=fsync. */
const files: [string, number][] = [
  ['a.bin', 8],
  ['b.bin', 1],
  ['dir/c.bin', 3],
];

/**
 * ClientStack: nbdfuse -> loop device -> ext4 mount. Every step records what it created, and
 * `release` undoes whatever exists, in reverse order, never throwing (it runs in teardown).
 * Note: nothing here may touch the FUSE file or the mount synchronously: the NBD server runs in
 * this process, so a blocking syscall on them would deadlock the event loop that must answer it.
 */
class ClientStack {
  private fuse: ChildProcess | undefined;
  loop: string | undefined;
  mounted = false;
  readonly fuseDir: string;
  readonly image: string;
  readonly mountDir: string;

  constructor(
    private readonly t: ExecutionContext,
    readonly dir: string,
    readonly name: string,
  ) {
    this.fuseDir = join(dir, `${name}-fuse`);
    this.image = join(this.fuseDir, 'disk.img');
    this.mountDir = join(dir, `${name}-mnt`);
  }

  async attach(uri: string): Promise<void> {
    await mkdir(this.fuseDir);
    await mkdir(this.mountDir);
    const pidFile = join(this.dir, `${this.name}.pid`);
    this.fuse = startDaemon('nbdfuse', ['-P', pidFile, this.image, uri]);
    const exited = new Promise<never>((_, reject) => this.fuse!.once('exit', (code) => reject(new Error(`nbdfuse exited early (${code})`))));
    exited.catch(() => undefined);
    await Promise.race([waitForFile(pidFile, 15_000), exited]);
    this.loop = (await run('losetup', ['--find', '--show', this.image], { timeoutMs: 30_000 })).stdout.trim();
    this.t.regex(this.loop, /^\/dev\/loop\d+$/);
  }

  async mount(): Promise<void> {
    await run('mount', ['-t', 'ext4', this.loop!, this.mountDir], { timeoutMs: 30_000 });
    this.mounted = true;
  }

  async umount(): Promise<void> {
    await run('umount', [this.mountDir], { timeoutMs: 30_000 });
    this.mounted = false;
  }

  /** release: umount, detach the loop device, unmount FUSE, stop nbdfuse. Best effort, in order. */
  async release(): Promise<void> {
    if (this.mounted) {
      const r = await run('umount', [this.mountDir], { timeoutMs: 30_000, allowFailure: true });
      if (r.code !== 0) await run('umount', ['-l', this.mountDir], { timeoutMs: 30_000, allowFailure: true });
      this.mounted = false;
    }
    if (this.loop) {
      await run('losetup', ['-d', this.loop], { timeoutMs: 30_000, allowFailure: true });
      this.loop = undefined;
    }
    const fuse = this.fuse;
    this.fuse = undefined;
    if (fuse) {
      const gone = fuse.exitCode !== null || fuse.signalCode !== null ? Promise.resolve() : new Promise<void>((resolve) => fuse.once('exit', () => resolve()));
      const r = await run('fusermount3', ['-u', this.fuseDir], { timeoutMs: 30_000, allowFailure: true });
      if (r.code !== 0) await run('fusermount3', ['-u', '-z', this.fuseDir], { timeoutMs: 30_000, allowFailure: true });
      const timeout = new Promise<'timeout'>((resolve) => setTimeout(() => resolve('timeout'), 5_000).unref());
      if ((await Promise.race([gone, timeout])) === 'timeout') fuse.kill('SIGKILL');
    }
  }
}

async function waitForFile(path: string, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const text = await readFile(path, 'utf8').catch(() => '');
    if (text.trim() !== '') return;
    if (performance.now() > deadline) throw new Error(`${path} did not appear within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function checksums(root: string): Promise<string[]> {
  const { stdout } = await run('sha256sum', files.map(([name]) => join(root, name)), { timeoutMs: 60_000 });
  return stdout
    .trim()
    .split('\n')
    .map((line) => line.split(/\s+/)[0]!);
}

test('ext4 on nbdfuse + loop: mkfs, write with fsync, full client restart, fsck clean, same checksums', async (t) => {
  if (!requireTools(t, tools, { root: true, paths: ['/dev/fuse', '/dev/loop-control'] })) return;
  const target = await startTarget();
  t.teardown(() => target.stop());
  await ext4Scenario(t, target.uri('disk'), target.counters);
});

test('ext4 on a follower of a real 3-node cluster, the leader killed while files are written', async (t) => {
  if (!requireTools(t, tools, { root: true, paths: ['/dev/fuse', '/dev/loop-control'] })) return;
  const cluster = await LocalCluster.start({ nodes: 3, volumeSize: '256MiB' });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leader();
  const follower = cluster.file.nodes.find((n) => n.id !== leader)!;
  let killed = 0;
  await ext4Scenario(t, `nbd://${follower.nbd}/default`, undefined, async () => {
    killed = await cluster.leader();
    cluster.kill(killed);
    await cluster.waitDead(killed);
  });
  t.log(`killed leader ${killed} between the writes; node ${follower.id} served the filesystem`);
  await cluster.restart(killed);
  const verify = await cluster.verify();
  t.is(verify.code, 0, verify.stderr + verify.stdout);
});

/** ext4Scenario: mkfs, write fsynced files (calling `midway` after the first), full client restart, fsck, compare. */
async function ext4Scenario(t: ExecutionContext, uri: string, counters: (() => NbdCounters) | undefined, midway?: () => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'chard-ext4-'));
  const first = new ClientStack(t, dir, 'first');
  const second = new ClientStack(t, dir, 'second');
  t.teardown(async () => {
    await first.release();
    await second.release();
    await rm(dir, { recursive: true, force: true });
  });

  const written = await timed(t, 'attach + mkfs.ext4 + mount + write 12 MiB with fsync + umount + detach', async () => {
    await first.attach(uri);
    await run('mkfs.ext4', ['-q', '-F', first.loop!], { timeoutMs: 60_000 });
    await first.mount();
    await mkdir(join(first.mountDir, 'dir'));
    let index = 0;
    for (const [name, mib] of files) {
      await run('dd', ['if=/dev/urandom', `of=${join(first.mountDir, name)}`, 'bs=1M', `count=${mib}`, 'conv=fsync', 'status=none'], { timeoutMs: 120_000 });
      if (index++ === 0 && midway !== undefined) await midway();
    }
    const sums = await checksums(first.mountDir);
    await first.umount();
    await first.release();
    return sums;
  });
  t.is(written.length, files.length);
  if (counters) {
    const c = counters();
    t.true(c.writeRequests > 0, 'writes reached the server');
    t.true(c.flushRequests > 0, 'fsync reached the server as NBD_CMD_FLUSH');
    t.true(c.handshakesCompleted > 1, 'nbdfuse used more than one connection (CAN_MULTI_CONN)');
    t.log(`server counters after the first client: ${JSON.stringify(c)}`);
  }

  await timed(t, 'fresh attach + fsck.ext4 -fn + mount + sha256', async () => {
    await second.attach(uri);
    const fsck = await run('fsck.ext4', ['-fn', second.loop!], { timeoutMs: 60_000, allowFailure: true });
    t.is(fsck.code, 0, `fsck.ext4 -fn is clean:\n${fsck.stdout}\n${fsck.stderr}`);
    await second.mount();
    t.deepEqual(await checksums(second.mountDir), written, 'files read back through a fresh client stack are identical');
    await second.umount();
  });
}
