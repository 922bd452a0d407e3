/**
 * guest: a QEMU guest that runs the real Linux NBD client (Debian's nbd.ko + nbd-client) against a
 * server the test starts, all inside a network namespace the test creates.
 *
 * - ensureGuestImage builds (once per kernel version, cached) vmlinuz + initramfs.gz with
 *   scripts/kernel/build-guest.sh.
 * - createNetns makes a fresh namespace `chard-k-<random>` with only loopback up. QEMU's user
 *   networking (slirp) runs inside it, so the guest's gateway 10.0.2.2 is that namespace's
 *   127.0.0.1: servers listening there are reachable, and no packet ever leaves the namespace.
 * - runGuest boots the guest (TCG, never KVM: KVM hangs on these hosts) with a per-run shell script
 *   (and any extra files, e.g. TLS certificates, under /chard/) appended as a second initramfs
 *   archive, streams the serial console line by line (onLine), parses
 *   the `CHARD-RESULT key=value ...` lines, enforces the timeout by killing QEMU, and always removes
 *   its temporary files.
 *
 * Guest line protocol (see /lib/chard.sh in build-guest.sh): CHARD-BOOT, CHARD-READY (modules and
 * network are up; the boot time is measured to here), CHARD-RESULT, CHARD-IOERR (an I/O error seen
 * in the guest), CHARD-LOG, CHARD-DONE rc=N (the script finished; the guest then powers off).
 */

import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants, existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { assert } from '../../src/assert.js';

/** repoRoot: the directory holding scripts/kernel/build-guest.sh (works from test/ and dist/test/). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth < 6; depth++) {
    if (existsSync(join(dir, 'scripts', 'kernel', 'build-guest.sh'))) return dir;
    dir = dirname(dir);
  }
  throw new Error('guest: cannot find scripts/kernel/build-guest.sh above ' + fileURLToPath(import.meta.url));
}

/** defaultCacheDir: $CHARD_KERNEL_CACHE, else <repo>/.cache/kernel. */
export function defaultCacheDir(): string {
  const fromEnv = process.env['CHARD_KERNEL_CACHE'];
  return fromEnv !== undefined && fromEnv !== '' ? resolve(fromEnv) : join(repoRoot(), '.cache', 'kernel');
}

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** run: executes a command (no shell) with a timeout; rejects on failure unless allowFailure. */
export function run(command: string, args: string[], options: { timeoutMs?: number; allowFailure?: boolean } = {}): Promise<RunResult> {
  return new Promise((resolvePromise, reject) => {
    execFile(command, args, { timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      if (error && !options.allowFailure) reject(new Error(`${command} ${args.join(' ')} failed (${code}): ${stderr || error.message}`));
      else resolvePromise({ stdout, stderr, code });
    });
  });
}

const searchPath = (process.env['PATH'] ?? '').split(':').concat(['/usr/sbin', '/sbin', '/usr/bin', '/bin']);

/** findTool: the absolute path of an executable on PATH (plus the sbin directories), or undefined. */
export function findTool(name: string): string | undefined {
  for (const dir of searchPath) {
    if (dir === '') continue;
    const candidate = `${dir}/${name}`;
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

/**
 * missingPrerequisites: what this host lacks to build and boot the guest (empty when ready).
 * Root is needed for `ip netns`.
 */
export function missingPrerequisites(): string[] {
  const missing: string[] = [];
  if (process.platform !== 'linux') missing.push('Linux');
  if (process.getuid?.() !== 0) missing.push('root privileges (ip netns)');
  for (const tool of ['qemu-system-x86_64', 'ip']) if (findTool(tool) === undefined) missing.push(tool);
  // The build script runs on every call (it checks the cache key), so its tools are always needed.
  const buildTools = ['busybox', 'nbd-client', 'mke2fs', 'e2fsck', 'depmod', 'modprobe', 'cpio', 'dpkg-deb', 'apt-get', 'apt-cache', 'flock'];
  for (const tool of buildTools) if (findTool(tool) === undefined) missing.push(tool);
  return missing;
}

export interface GuestImage {
  /** kernel: what QEMU boots: the uncompressed PVH vmlinux when built (faster), else vmlinuz. */
  kernel: string;
  vmlinuz: string;
  initramfs: string;
  kernelVersion: string;
}

/**
 * ensureGuestImage: builds or reuses CACHE_DIR/{vmlinuz,initramfs.gz}. Safe to call from several
 * test processes at once (the build script holds a lock on the cache). Rejects with the build
 * log when the build fails.
 */
export async function ensureGuestImage(cacheDir: string = defaultCacheDir()): Promise<GuestImage> {
  const script = join(repoRoot(), 'scripts', 'kernel', 'build-guest.sh');
  await run('/bin/sh', [script, cacheDir], { timeoutMs: 10 * 60_000 });
  const env = readFileSync(join(cacheDir, 'guest.env'), 'utf8');
  const kernelVersion = /^KERNEL_VERSION=(.*)$/m.exec(env)?.[1] ?? 'unknown';
  const vmlinux = join(cacheDir, 'vmlinux');
  const usePvh = existsSync(vmlinux) && process.env['CHARD_KERNEL_NO_PVH'] !== '1';
  return { kernel: usePvh ? vmlinux : join(cacheDir, 'vmlinuz'), vmlinuz: join(cacheDir, 'vmlinuz'), initramfs: join(cacheDir, 'initramfs.gz'), kernelVersion };
}

/** Netns: a network namespace owned by one test. destroy() kills what spawn() started, then deletes it. */
export interface Netns {
  name: string;
  /** exec: runs a command inside the namespace to completion. */
  exec(command: string, args: string[], options?: { timeoutMs?: number; allowFailure?: boolean }): Promise<RunResult>;
  /** spawn: starts a long-running command inside the namespace; destroy() kills it if still running. */
  spawn(command: string, args: string[], options?: SpawnOptions): ChildProcess;
  /**
   * freePort: a TCP port free on the namespace's 127.0.0.1 (asked from the OS with port 0). No race:
   * the namespace is private to this test, so nothing else can take the port before the server does.
   */
  freePort(): Promise<number>;
  /** destroy: idempotent; kills spawned children (SIGKILL after 2 s) and deletes the namespace. */
  destroy(): Promise<void>;
}

const netnsPrefix = 'chard-k-';

/** createNetns: a fresh namespace `chard-k-<8 hex>` with loopback up and nothing else. */
export async function createNetns(): Promise<Netns> {
  const name = netnsPrefix + randomBytes(4).toString('hex');
  await run('ip', ['netns', 'add', name]);
  try {
    await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  } catch (error) {
    await run('ip', ['netns', 'del', name], { allowFailure: true });
    throw error;
  }
  const children = new Set<ChildProcess>();
  let destroyed = false;
  return {
    name,
    exec(command, args, options = {}) {
      assert(!destroyed, 'netns already destroyed');
      return run('ip', ['netns', 'exec', name, command, ...args], options);
    },
    spawn(command, args, options = {}) {
      assert(!destroyed, 'netns already destroyed');
      // `ip netns exec` execs the command in place, so the child's pid is the command's pid.
      const child = spawn('ip', ['netns', 'exec', name, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'], ...options });
      children.add(child);
      child.once('exit', () => children.delete(child));
      return child;
    },
    async freePort() {
      const probe = "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})";
      const { stdout } = await run('ip', ['netns', 'exec', name, process.execPath, '-e', probe]);
      const port = Number(stdout.trim());
      assert(Number.isInteger(port) && port > 0, `freePort: bad output ${stdout}`);
      return port;
    },
    async destroy() {
      if (destroyed) return;
      destroyed = true;
      await Promise.all([...children].map((child) => killChild(child, 2_000)));
      await run('ip', ['netns', 'del', name], { allowFailure: true });
    },
  };
}

/** killChild: SIGTERM, then SIGKILL after graceMs; resolves once the child has exited. */
export function killChild(child: ChildProcess, graceMs: number): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolvePromise) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(timer);
      resolvePromise();
    });
    child.kill('SIGTERM');
  });
}

/** GuestControl: lets an onLine callback talk to the running guest. */
export interface GuestControl {
  /** send: writes one line to the guest's serial console (e.g. 'stop' for chard_stop_watch). */
  send(line: string): void;
  /** kill: ends QEMU now (the run then reports exitOk=false). */
  kill(): void;
}

export interface GuestEvent {
  /** t: milliseconds since QEMU was spawned (host monotonic clock). */
  t: number;
  line: string;
}

/** GuestFile: one extra file of the per-run archive (RunGuestOptions.files). */
export interface GuestFile {
  path: string;
  data: Buffer;
  mode?: number;
}

/** guestFilesBytesMax: the per-run archive is copied into guest RAM; keep it small. */
export const guestFilesBytesMax = 16 * 1024 * 1024;

/** perRunEntries: the cpio entries of /chard: the script, the extra files and their directories. */
export function perRunEntries(script: string, files: GuestFile[] = []): { path: string; data?: Buffer; mode: number }[] {
  const entries: { path: string; data?: Buffer; mode: number }[] = [{ path: 'chard', mode: 0o040755 }];
  const dirs = new Set<string>(['chard']);
  let bytes = 0;
  for (const file of files) {
    assert(/^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/.test(file.path) && !file.path.split('/').includes('..'), `bad guest file path ${file.path}`);
    assert(file.path !== 'script.sh', 'script.sh is the script itself');
    bytes += file.data.length;
    assert(bytes <= guestFilesBytesMax, `guest files exceed ${guestFilesBytesMax} bytes`);
    const parts = file.path.split('/');
    for (let i = 1; i < parts.length; i++) {
      const dir = ['chard', ...parts.slice(0, i)].join('/');
      if (!dirs.has(dir)) {
        dirs.add(dir);
        entries.push({ path: dir, mode: 0o040755 });
      }
    }
    entries.push({ path: `chard/${file.path}`, mode: 0o100000 | (file.mode ?? 0o644), data: file.data });
  }
  entries.push({ path: 'chard/script.sh', mode: 0o100755, data: Buffer.from(script) });
  return entries;
}

export interface RunGuestOptions {
  netns: Netns;
  /** script: POSIX sh run by the guest's /init as /chard/script.sh, after modules and network are up. */
  script: string;
  /**
   * files: more files for the per-run archive, beside the script (e.g. TLS certificates): `path`
   * is relative to /chard (`tls/ca-cert.pem` becomes /chard/tls/ca-cert.pem; parent directories
   * are made), `mode` defaults to 0644. At most guestFilesBytesMax bytes in all.
   */
  files?: GuestFile[];
  timeoutMs: number;
  /** memoryMb: guest RAM; 512 is plenty for nbd + ext4 and keeps TCG boot fast. */
  memoryMb?: number;
  image?: GuestImage;
  /** kernelArgs: appended to the kernel command line (e.g. 'loglevel=7' to see the whole boot). */
  kernelArgs?: string;
  /** onLine: called for every console line as it arrives (carriage returns stripped). */
  onLine?: (line: string, t: number, guest: GuestControl) => void;
  /** consoleBytesMax: the console transcript kept in memory is cut to its last consoleBytesMax bytes. */
  consoleBytesMax?: number;
}

export interface GuestRun {
  /** exitOk: QEMU exited by itself with status 0 after the guest printed CHARD-DONE rc=0. */
  exitOk: boolean;
  timedOut: boolean;
  /** scriptRc: the guest script's exit status from CHARD-DONE, or undefined if it never finished. */
  scriptRc: number | undefined;
  /** results: one record per CHARD-RESULT line, in order. */
  results: Record<string, string>[];
  /** ioErrors: one record per CHARD-IOERR line, in order. */
  ioErrors: Record<string, string>[];
  console: string;
  events: GuestEvent[];
  /** bootMs: spawn to CHARD-READY (modules loaded, network up), or undefined. */
  bootMs: number | undefined;
  totalMs: number;
  qemuExit: { code: number | null; signal: NodeJS.Signals | null };
}

/** parseFields: `a=1 b=x` -> { a: '1', b: 'x' }; tokens without '=' are ignored. */
export function parseFields(text: string): Record<string, string> {
  const record: Record<string, string> = {};
  for (const token of text.trim().split(/\s+/)) {
    const eq = token.indexOf('=');
    if (eq > 0) record[token.slice(0, eq)] = token.slice(eq + 1);
  }
  return record;
}

/** cpioNewc: a minimal `newc` cpio archive (regular files and directories, owned by root). */
export function cpioNewc(entries: { path: string; data?: Buffer; mode: number }[]): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const pad4 = (n: number) => Buffer.alloc((4 - (n % 4)) % 4);
  const push = (path: string, mode: number, data: Buffer) => {
    const hex = (n: number) => n.toString(16).padStart(8, '0');
    const name = Buffer.from(path + '\0');
    const header = '070701' + [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, name.length, 0].map(hex).join('');
    const head = Buffer.concat([Buffer.from(header, 'ascii'), name]);
    parts.push(head, pad4(head.length), data, pad4(data.length));
  };
  for (const entry of entries) push(entry.path, entry.mode, entry.data ?? Buffer.alloc(0));
  push('TRAILER!!!', 0, Buffer.alloc(0));
  return Buffer.concat(parts);
}

/**
 * runGuest: boots the guest in `netns`, runs `script`, and resolves when QEMU has exited (the guest
 * powers off after the script, or the timeout killed it). Never rejects for guest-side failures:
 * they show in exitOk / results / console. Temporary files are removed in every case.
 */
export async function runGuest(options: RunGuestOptions): Promise<GuestRun> {
  const memoryMb = options.memoryMb ?? 512;
  const consoleBytesMax = options.consoleBytesMax ?? 4 * 1024 * 1024;
  assert(options.timeoutMs > 0, 'timeoutMs must be positive');
  assert(memoryMb >= 128 && memoryMb <= 4096, 'memoryMb out of range');
  const image = options.image ?? (await ensureGuestImage());
  const dir = await mkdtemp(join(tmpdir(), 'chard-guest-'));
  try {
    // The per-run archive is appended to the cached one; the kernel unpacks both in order.
    const scriptArchive = gzipSync(cpioNewc(perRunEntries(options.script, options.files)));
    const initrd = join(dir, 'initrd.img');
    await writeFile(initrd, Buffer.concat([await readFile(image.initramfs), scriptArchive]));
    const args = [
      '-accel', 'tcg', '-cpu', 'max', '-smp', '1', '-m', String(memoryMb),
      '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-serial', 'stdio', '-no-reboot',
      '-kernel', image.kernel, '-initrd', initrd,
      '-append', `console=ttyS0 panic=-1 quiet ${options.kernelArgs ?? ''}`.trim(),
      '-netdev', 'user,id=n0', '-device', 'virtio-net-pci,netdev=n0',
    ];
    return await new Promise<GuestRun>((resolvePromise) => {
      const start = performance.now();
      // setpriv --pdeathsig: QEMU dies with this process even if the test runner is killed.
      const setpriv = findTool('setpriv');
      const qemu = setpriv !== undefined
        ? options.netns.spawn(setpriv, ['--pdeathsig', 'KILL', 'qemu-system-x86_64', ...args], { stdio: ['pipe', 'pipe', 'pipe'] })
        : options.netns.spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] });
      const events: GuestEvent[] = [];
      const results: Record<string, string>[] = [];
      const ioErrors: Record<string, string>[] = [];
      let consoleText = '';
      let pending = '';
      let bootMs: number | undefined;
      let scriptRc: number | undefined;
      let timedOut = false;
      const control: GuestControl = {
        send(line) {
          if (qemu.stdin?.writable) qemu.stdin.write(line + '\n');
        },
        kill() {
          qemu.kill('SIGKILL');
        },
      };
      const append = (text: string) => {
        consoleText += text;
        if (consoleText.length > consoleBytesMax) consoleText = consoleText.slice(consoleText.length - consoleBytesMax);
      };
      const handleLine = (raw: string) => {
        const line = raw.replace(/\r/g, '');
        const t = Math.round(performance.now() - start);
        events.push({ t, line });
        if (line.startsWith('CHARD-RESULT ')) results.push(parseFields(line.slice('CHARD-RESULT '.length)));
        else if (line.startsWith('CHARD-IOERR ')) ioErrors.push(parseFields(line.slice('CHARD-IOERR '.length)));
        else if (line.startsWith('CHARD-READY ')) bootMs ??= t;
        else if (line.startsWith('CHARD-DONE ')) scriptRc = Number(parseFields(line.slice('CHARD-DONE '.length))['rc']);
        try {
          options.onLine?.(line, t, control);
        } catch (error) {
          // A throwing callback must not leave QEMU running behind a dead test.
          append(`\n[guest.ts] onLine threw: ${String(error)}; killing QEMU\n`);
          control.kill();
        }
      };
      qemu.stdout?.setEncoding('utf8');
      qemu.stdout?.on('data', (chunk: string) => {
        append(chunk);
        pending += chunk;
        let newline = pending.indexOf('\n');
        while (newline >= 0) {
          handleLine(pending.slice(0, newline));
          pending = pending.slice(newline + 1);
          newline = pending.indexOf('\n');
        }
      });
      qemu.stderr?.setEncoding('utf8');
      qemu.stderr?.on('data', (chunk: string) => append(`[qemu stderr] ${chunk}`));
      qemu.stdin?.on('error', () => {
        // QEMU gone; nothing to send to.
      });
      const timer = setTimeout(() => {
        timedOut = true;
        append(`\n[guest.ts] timeout after ${options.timeoutMs} ms; killing QEMU\n`);
        qemu.kill('SIGKILL');
      }, options.timeoutMs);
      let finished = false;
      const finish = (code: number | null, signal: NodeJS.Signals | null) => {
        if (finished) return;
        finished = true;
        clearTimeout(timer);
        if (pending !== '') handleLine(pending);
        resolvePromise({
          exitOk: !timedOut && code === 0 && scriptRc === 0,
          timedOut,
          scriptRc,
          results,
          ioErrors,
          console: consoleText,
          events,
          bootMs,
          totalMs: Math.round(performance.now() - start),
          qemuExit: { code, signal },
        });
      };
      qemu.once('error', (error) => {
        append(`[guest.ts] spawn failed: ${String(error)}\n`);
        if (qemu.pid === undefined) finish(null, null);
      });
      qemu.once('close', finish);
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
