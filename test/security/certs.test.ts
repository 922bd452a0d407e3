// certs: `chard certs init` makes a CA and certificates that openssl verifies against it, with the
// subjectAltNames asked for, private keys readable by the owner only; a second run refuses to
// replace them (exit 2, ALREADY_EXISTS) and a per-node run reuses the CA.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { certsInit } from '../../src/cli/certs.js';

const main = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');
const tmp = () => mkdtempSync(path.join(os.tmpdir(), 'chard-sec-certs-'));
const text = (file: string) => execFileSync('openssl', ['x509', '-in', file, '-noout', '-text'], { encoding: 'utf8' });

test('certs init: CA + node + client certificates in the qemu/libnbd layout, verified by openssl', (t) => {
  const dir = tmp();
  try {
    const result = certsInit({ dir });
    t.true(result.caCreated);
    for (const f of ['ca-cert.pem', 'ca-key.pem', 'server-cert.pem', 'server-key.pem', 'client-cert.pem', 'client-key.pem']) {
      t.true(result.written.includes(path.join(dir, f)), f);
    }
    for (const key of ['ca-key.pem', 'server-key.pem', 'client-key.pem']) t.is(statSync(path.join(dir, key)).mode & 0o777, 0o600, key);
    const verified = execFileSync('openssl', ['verify', '-CAfile', path.join(dir, 'ca-cert.pem'), path.join(dir, 'server-cert.pem'), path.join(dir, 'client-cert.pem')], { encoding: 'utf8' });
    t.regex(verified, /server-cert.pem: OK/);
    t.regex(verified, /client-cert.pem: OK/);
    const server = text(path.join(dir, 'server-cert.pem'));
    t.regex(server, /IP Address:127\.0\.0\.1/);
    t.regex(server, /DNS:localhost/);
    t.regex(server, /TLS Web Server Authentication/);
    t.regex(text(path.join(dir, 'client-cert.pem')), /TLS Web Client Authentication/);
    t.regex(text(path.join(dir, 'ca-cert.pem')), /CA:TRUE/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('certs init --node --host: per-node directory signed by the same CA; existing certificates are not replaced', (t) => {
  const dir = tmp();
  try {
    certsInit({ dir });
    const cli = (args: string[]) => spawnSync(process.execPath, [main, 'certs', 'init', '--dir', dir, ...args], { encoding: 'utf8' });
    const again = cli([]);
    t.is(again.status, 2);
    t.regex(again.stderr, /ALREADY_EXISTS/);
    const node = cli(['--node', '2', '--host', '10.9.8.7', '--host', 'n2.example', '--json']);
    t.is(node.status, 0, node.stderr);
    const report = JSON.parse(node.stdout) as { caCreated: boolean; hosts: string[] };
    t.false(report.caCreated);
    t.deepEqual(report.hosts, ['10.9.8.7', 'n2.example']);
    const nodeDir = path.join(dir, 'node-2');
    const server = text(path.join(nodeDir, 'server-cert.pem'));
    t.regex(server, /IP Address:10\.9\.8\.7/);
    t.regex(server, /DNS:n2\.example/);
    t.notRegex(server, /127\.0\.0\.1/);
    t.false(existsSync(path.join(nodeDir, 'ca-key.pem')), 'the CA key stays out of the per-node directory');
    const verified = execFileSync('openssl', ['verify', '-CAfile', path.join(nodeDir, 'ca-cert.pem'), path.join(nodeDir, 'server-cert.pem')], { encoding: 'utf8' });
    t.regex(verified, /OK/);
    const bad = cli(['--node', '3', '--host', 'not a host!']);
    t.is(bad.status, 2);
    t.regex(bad.stderr, /INVALID_ARGUMENT: --host/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
