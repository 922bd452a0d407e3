/**
 * tls: one certificate directory (the layout `chard certs init` writes, which is also the one
 * qemu, nbdkit and libnbd read) turned into every credential chard uses:
 *  - nodeCredentials: the gRPC server (peer, admin and block RPC) with the node certificate and
 *    client certificates REQUIRED and verified against the cluster CA, and the node's own gRPC
 *    client (to peers, to the leader) presenting its certificate;
 *  - peerCerts: the raw node certificate set of the raft peer transport (stream-transport.ts),
 *    which does the TLS handshake itself (node:tls, client certificates required both ways);
 *  - clientCredentials: the CLI's and the attach agent's gRPC client (client certificate);
 *  - nbdSecureContext: the NBD server's STARTTLS context (node certificate + cluster CA).
 * A missing or unreadable file is a UsageError that names the file.
 */

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { createSecureContext, type SecureContext } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { ErrorCode, UsageError } from '../errors.js';
import type { TransportCredentials } from './transport.js';

export const certFileNames = {
  ca: 'ca-cert.pem',
  caKey: 'ca-key.pem',
  serverCert: 'server-cert.pem',
  serverKey: 'server-key.pem',
  clientCert: 'client-cert.pem',
  clientKey: 'client-key.pem',
} as const;

function readPem(dir: string, name: string, what: string): Buffer {
  const file = path.join(dir, name);
  try {
    return readFileSync(file);
  } catch (error) {
    throw new UsageError(ErrorCode.NotFound, `${what}: cannot read ${file} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); make it with: chard certs init --dir ${dir}`);
  }
}

export interface CertSet {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/** loadCerts: the CA plus the server (node) or client certificate and key of `dir`. */
export function loadCerts(dir: string, role: 'server' | 'client', what = 'certificates'): CertSet {
  const ca = readPem(dir, certFileNames.ca, what);
  const cert = readPem(dir, role === 'server' ? certFileNames.serverCert : certFileNames.clientCert, what);
  const key = readPem(dir, role === 'server' ? certFileNames.serverKey : certFileNames.clientKey, what);
  return { ca, cert, key };
}

/** nodeCredentials: mutual TLS for every gRPC listener and client of a node. */
export function nodeCredentials(dir: string): TransportCredentials {
  const server = loadCerts(dir, 'server', 'tls.certs');
  return {
    // checkClientCertificate = true: the TLS handshake fails without a client certificate signed
    // by the cluster CA, before any HTTP/2 frame (let alone a message) is read.
    server: grpc.ServerCredentials.createSsl(server.ca, [{ private_key: server.key, cert_chain: server.cert }], true),
    // The node certificate carries clientAuth too: a node talks to its peers as itself.
    client: grpc.credentials.createSsl(server.ca, server.key, server.cert),
  };
}

/**
 * peerCerts: the node certificate, its key and the cluster CA, for the raft peer transport. The node
 * certificate carries serverAuth and clientAuth: a node listens and connects to its peers as itself.
 */
export function peerCerts(dir: string): CertSet {
  return loadCerts(dir, 'server', 'tls.certs');
}

/** clientCredentials: the gRPC client credentials of the CLI and the attach agent. */
export function clientCredentials(dir: string): grpc.ChannelCredentials {
  const client = loadCerts(dir, 'client', '--certs');
  return grpc.credentials.createSsl(client.ca, client.key, client.cert);
}

/** nbdSecureContext: the STARTTLS context of an NBD server (node certificate, cluster CA). */
export function nbdSecureContext(dir: string): SecureContext {
  const server = loadCerts(dir, 'server', 'tls.certs');
  try {
    return createSecureContext({ ca: server.ca, cert: server.cert, key: server.key, minVersion: 'TLSv1.2' });
  } catch (error) {
    throw new UsageError(ErrorCode.InvalidArgument, `tls.certs: the certificates in ${dir} are not usable: ${(error as Error).message}`);
  }
}
