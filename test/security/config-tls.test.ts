// config-tls: the node config's tls block is validated before anything starts, with errors that
// name the field; a valid block resolves the directory and defaults nbd to 'required'.
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { certsInit } from '../../src/cli/certs.js';
import { validateNodeConfig } from '../../src/node/config.js';

const base = { clusterId: 'c', id: 1, dataDir: '.', listen: { raft: '127.0.0.1:1', admin: '127.0.0.1:2', nbd: '127.0.0.1:3' }, initialMembers: { '1': { raft: '127.0.0.1:1', admin: '127.0.0.1:2', nbd: '127.0.0.1:3' } } };

test('tls block: defaults, relative paths, and errors naming the field', (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-sec-config-'));
  try {
    certsInit({ dir: path.join(dir, 'certs') });
    const ok = validateNodeConfig({ ...base, tls: { certs: 'certs' } }, dir);
    t.deepEqual(ok.tls, { certs: path.join(dir, 'certs'), nbd: 'required' });
    t.is(validateNodeConfig({ ...base, tls: { certs: 'certs', nbd: 'off' } }, dir).tls?.nbd, 'off');
    t.is(validateNodeConfig(base, dir).tls, undefined, 'no tls block: plaintext');
    const cases: [unknown, RegExp][] = [
      ['yes', /^tls must be an object/],
      [{ nbd: 'required' }, /^tls\.certs must be/],
      [{ certs: 'missing' }, /^tls\.certs: .*missing has no ca-cert\.pem/],
      [{ certs: 'certs', nbd: 'on' }, /^tls\.nbd must be one of off, optional, required/],
      [{ certs: 'certs', cert: 'x' }, /^tls\.cert is not a field/],
    ];
    for (const [tls, message] of cases) t.throws(() => validateNodeConfig({ ...base, tls }, dir), { message }, JSON.stringify(tls));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
