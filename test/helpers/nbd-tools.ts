/**
 * nbd-tools: running real NBD clients from tests.
 *
 * `run` is asynchronous on purpose: the target usually runs in the test's own process, so a
 * synchronous spawn would block the server and deadlock. `requireTools` implements the skip rule:
 * a missing tool fails the test under CI=true and is logged + skipped otherwise.
 */

import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import type { ExecutionContext } from 'ava';

export interface RunResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** run: executes a command with a timeout; rejects on a non-zero exit with stderr in the message. */
export function run(command: string, args: string[], options: { timeoutMs?: number; allowFailure?: boolean; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = execFile(command, args, { timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, encoding: 'utf8' }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      if (error && !options.allowFailure) reject(new Error(`${command} ${args.join(' ')} failed (${code}): ${stderr || error.message}`));
      else resolve({ stdout, stderr, code });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** startDaemon: spawns a long-running child (e.g. nbdfuse) and returns it. */
export function startDaemon(command: string, args: string[]): ChildProcess {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout?.resume();
  child.stderr?.resume();
  return child;
}

const searchPath = (process.env['PATH'] ?? '').split(':').concat(['/usr/sbin', '/sbin']);

export function findTool(name: string): string | undefined {
  for (const dir of searchPath) {
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
 * requireTools: true if every tool exists. Otherwise fails the test under CI=true, or logs and
 * passes (skip) outside CI, and returns false so the test returns early.
 */
export function requireTools(t: ExecutionContext, tools: string[], extra: { root?: boolean; paths?: string[] } = {}): boolean {
  const missing = tools.filter((tool) => findTool(tool) === undefined);
  if (extra.root && process.getuid?.() !== 0) missing.push('root privileges');
  for (const p of extra.paths ?? []) {
    try {
      accessSync(p);
    } catch {
      missing.push(p);
    }
  }
  if (missing.length === 0) return true;
  const message = `missing ${missing.join(', ')} (Debian: libnbd-bin nbdfuse nbd-client qemu-utils fio nbdkit fuse3 e2fsprogs)`;
  if (process.env['CI'] === 'true') t.fail(`CI=true and ${message}`);
  else {
    t.log(`SKIPPED: ${message}`);
    t.pass();
  }
  return false;
}

/** timed: runs f and logs how long it took (the interop timings the lead reports). */
export async function timed<T>(t: ExecutionContext, label: string, f: () => Promise<T>): Promise<T> {
  const started = performance.now();
  try {
    return await f();
  } finally {
    t.log(`${label}: ${((performance.now() - started) / 1000).toFixed(2)} s`);
  }
}
