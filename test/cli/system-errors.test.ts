/**
 * system-errors: an operating-system error met by a CLI command (a --dir that is a file, a path
 * without permission, an address in use) is reported as a coded usage error naming the call and
 * the path, with exit status 2 — never as "internal error" with a stack trace.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { ErrorCode, UsageError, fromSystemError } from '../../src/errors.js';

const main = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'cli', 'main.js');

test('cluster up with --dir naming a file: ALREADY_EXISTS naming the path, exit 2, no stack', (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-syserr-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'not-a-dir');
  writeFileSync(file, 'x');
  const run = spawnSync(process.execPath, [main, 'cluster', 'up', '--nodes', '1', '--dir', file], { encoding: 'utf8', timeout: 60_000 });
  t.is(run.status, 2, run.stderr);
  t.regex(run.stderr, new RegExp(`^chard: ALREADY_EXISTS: cannot mkdir ${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: a file of that name exists`));
  t.false(run.stderr.includes('internal error'));
  t.false(run.stderr.includes('    at '));
});

test('fromSystemError maps errno errors and leaves every other error alone', (t) => {
  const enoent = Object.assign(new Error('ENOENT: no such file'), { code: 'ENOENT', syscall: 'open', path: '/x/y' });
  const mapped = fromSystemError(enoent);
  t.true(mapped instanceof UsageError);
  t.is(mapped?.code, ErrorCode.NotFound);
  t.is(mapped?.message, 'cannot open /x/y: no such file or directory (ENOENT)');
  const inUse = fromSystemError(Object.assign(new Error('listen EADDRINUSE'), { code: 'EADDRINUSE', syscall: 'listen' }));
  t.is(inUse?.code, ErrorCode.FailedPrecondition);
  t.regex(inUse?.message ?? '', /^cannot listen: the address is in use/);
  t.is(fromSystemError(new Error('plain')), undefined);
  t.is(fromSystemError(Object.assign(new Error('x'), { code: 'ERR_ASSERTION' })), undefined);
  t.is(fromSystemError('ENOENT'), undefined);
});
