/**
 * certs: `chard certs init` — a cluster certificate authority and the certificates signed by it,
 * in the directory layout qemu (tls-creds-x509 dir=), nbdkit (--tls-certificates) and libnbd
 * (tls-certificates=) read:
 *
 *   DIR/ca-cert.pem    the cluster CA (every node and client trusts exactly this)
 *   DIR/ca-key.pem     the CA's private key (0600; needed only to issue more certificates)
 *   DIR/server-cert.pem, DIR/server-key.pem   a node's certificate (serverAuth + clientAuth)
 *   DIR/client-cert.pem, DIR/client-key.pem   a client's certificate (clientAuth)
 *
 * With `--node ID` the node and client certificates go to DIR/node-ID/ (with a copy of
 * ca-cert.pem, so that directory alone is what host ID needs), named by `--host` (DNS names and
 * IP addresses, the subjectAltNames peers and clients check). The keys and certificates are made
 * by the openssl command (ECDSA P-256, SHA-256); nothing here parses or builds ASN.1.
 */

import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, RemoteError, UsageError } from '../errors.js';
import { certFileNames } from '../transport/tls.js';

export interface CertsInitOptions {
  dir: string;
  /** node: issue the node certificates into DIR/node-ID/ instead of DIR. */
  node?: number;
  /** hosts: DNS names / IP addresses the node certificate is valid for (default localhost, 127.0.0.1, ::1). */
  hosts?: string[];
  /** days: validity of new certificates. */
  days?: number;
  /** force: replace existing node and client certificates (the CA is never replaced). */
  force?: boolean;
}

export interface CertsInitResult {
  dir: string;
  caCreated: boolean;
  written: string[];
  hosts: string[];
}

export const defaultCertDays = 825;
export const caDays = 3650;
const defaultHosts = ['localhost', '127.0.0.1', '::1'];
const hostNamePattern = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;

function openssl(args: string[]): void {
  try {
    execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8' });
  } catch (error) {
    const e = error as { code?: string; stderr?: string; message: string };
    if (e.code === 'ENOENT') {
      throw new UsageError(ErrorCode.FailedPrecondition, 'the openssl command is needed to make certificates; install it (Debian: apt-get install openssl)');
    }
    throw new RemoteError(ErrorCode.Unavailable, `openssl ${args[0]} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

/** subjectAltName: the SAN extension value for `hosts` (IP: for addresses, DNS: for names). */
export function subjectAltName(hosts: string[]): string {
  return hosts.map((h) => (isIP(h) !== 0 ? `IP:${h}` : `DNS:${h}`)).join(',');
}

export function validateHosts(hosts: string[]): string[] {
  const out: string[] = [];
  for (const raw of hosts.flatMap((h) => h.split(','))) {
    const h = raw.trim().replace(/^\[|\]$/g, '');
    if (h === '') continue;
    if (isIP(h) === 0 && !hostNamePattern.test(h)) {
      throw new UsageError(ErrorCode.InvalidArgument, `--host "${raw}" is neither an IP address nor a DNS name`);
    }
    if (!out.includes(h)) out.push(h);
  }
  return out;
}

const keyArgs = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-sha256'];

/** issue: a key + certificate signed by the CA in `caDir`, written atomically (temp dir, then rename-free copy). */
function issue(caDir: string, work: string, name: string, subject: string, extensions: string[], days: number): { cert: string; key: string } {
  const cert = path.join(work, `${name}-cert.pem`);
  const key = path.join(work, `${name}-key.pem`);
  openssl([
    'req', '-x509', ...keyArgs,
    '-CA', path.join(caDir, certFileNames.ca), '-CAkey', path.join(caDir, certFileNames.caKey),
    '-keyout', key, '-out', cert, '-days', String(days), '-subj', subject,
    ...extensions.flatMap((e) => ['-addext', e]),
  ]);
  return { cert, key };
}

/** certsInit: see the module comment. Existing leaf files are refused unless `force`. */
export function certsInit(options: CertsInitOptions): CertsInitResult {
  const dir = path.resolve(options.dir);
  const days = options.days ?? defaultCertDays;
  if (!Number.isInteger(days) || days < 1 || days > 36500) throw new UsageError(ErrorCode.InvalidArgument, `--days must be 1..36500, got ${options.days}`);
  if (options.node !== undefined && (!Number.isInteger(options.node) || options.node < 1)) {
    throw new UsageError(ErrorCode.InvalidArgument, `--node must be a positive integer, got ${options.node}`);
  }
  const hosts = validateHosts(options.hosts ?? []);
  const sanHosts = hosts.length > 0 ? hosts : defaultHosts;
  const target = options.node === undefined ? dir : path.join(dir, `node-${options.node}`);
  const leafFiles = [certFileNames.serverCert, certFileNames.serverKey, certFileNames.clientCert, certFileNames.clientKey];
  const existing = leafFiles.filter((f) => existsSync(path.join(target, f)));
  if (existing.length > 0 && options.force !== true) {
    throw new UsageError(ErrorCode.AlreadyExists, `${target} already has ${existing.join(', ')}; use --force to replace them (the CA is kept)`);
  }
  mkdirSync(target, { recursive: true, mode: 0o700 });
  const written: string[] = [];
  const caCert = path.join(dir, certFileNames.ca);
  const caKey = path.join(dir, certFileNames.caKey);
  let caCreated = false;
  if (!existsSync(caCert) || !existsSync(caKey)) {
    if (existsSync(caCert) || existsSync(caKey)) {
      throw new UsageError(ErrorCode.FailedPrecondition, `${dir} has only one of ${certFileNames.ca} and ${certFileNames.caKey}; restore the other or remove both`);
    }
    openssl([
      'req', '-x509', ...keyArgs, '-keyout', caKey, '-out', caCert, '-days', String(caDays),
      '-subj', `/O=chard/CN=chard cluster CA ${path.basename(dir)}`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    chmodSync(caKey, 0o600);
    caCreated = true;
    written.push(caCert, caKey);
  }
  const work = mkdtempSync(path.join(os.tmpdir(), 'chard-certs-'));
  try {
    const who = options.node === undefined ? 'chard node' : `chard node ${options.node}`;
    const leaf = ['basicConstraints=critical,CA:FALSE', 'keyUsage=critical,digitalSignature,keyEncipherment'];
    const server = issue(dir, work, 'server', `/O=chard/OU=node/CN=${who}`, [...leaf, 'extendedKeyUsage=serverAuth,clientAuth', `subjectAltName=${subjectAltName(sanHosts)}`], days);
    const clientName = options.node === undefined ? 'chard client' : `chard client ${options.node}`;
    const client = issue(dir, work, 'client', `/O=chard/OU=client/CN=${clientName}`, [...leaf, 'extendedKeyUsage=clientAuth'], days);
    const place = (from: string, name: string, mode: number) => {
      const to = path.join(target, name);
      copyFileSync(from, to);
      chmodSync(to, mode);
      written.push(to);
    };
    place(server.cert, certFileNames.serverCert, 0o644);
    place(server.key, certFileNames.serverKey, 0o600);
    place(client.cert, certFileNames.clientCert, 0o644);
    place(client.key, certFileNames.clientKey, 0o600);
    if (target !== dir) place(caCert, certFileNames.ca, 0o644);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  return { dir, caCreated, written, hosts: sanHosts };
}

/** ensureCerts: the certificates of a local cluster in `dir`, made when absent (`cluster up --tls`). */
export function ensureCerts(dir: string): { created: boolean } {
  const files = [certFileNames.ca, certFileNames.serverCert, certFileNames.serverKey, certFileNames.clientCert, certFileNames.clientKey];
  if (files.every((f) => existsSync(path.join(dir, f)))) return { created: false };
  certsInit({ dir });
  return { created: true };
}
