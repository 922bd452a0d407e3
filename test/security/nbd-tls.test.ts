// nbd-tls: NBD_OPT_STARTTLS with X.509 client certificates, against real clients (nbdinfo from
// libnbd, qemu-io) and the raw byte-level client:
//  - required (FORCEDTLS): nbds:// with the cluster's certificates is served; plaintext nbd:// is
//    refused (every option but STARTTLS/ABORT gets NBD_REP_ERR_TLS_REQD, EXPORT_NAME hangs up);
//    a client certificate of another CA, a self-signed one, or none at all is refused;
//  - qemu-io with tls-creds-x509 writes and reads back a pattern;
//  - optional: plaintext and TLS both served; STARTTLS twice is NBD_REP_ERR_INVALID;
//  - data sent after STARTTLS before the handshake is a violation (the connection is dropped).
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as tls from 'node:tls';
import test from 'ava';
import { certsInit } from '../../src/cli/certs.js';
import { MemoryBackend } from '../../src/nbd/memory-backend.js';
import { Command, Option, OptionReply, ReplyType, encodeInfoRequest } from '../../src/nbd/protocol.js';
import { NbdServer, type NbdTlsMode } from '../../src/nbd/server.js';
import { loadCerts } from '../../src/transport/tls.js';
import { RawClient } from '../helpers/nbd-raw-client.js';
import { requireTools, run } from '../helpers/nbd-tools.js';

const MiB = 1024 * 1024;
const root = mkdtempSync(path.join(os.tmpdir(), 'chard-sec-nbdtls-'));
const cluster = path.join(root, 'cluster');
const foreign = path.join(root, 'foreign');
/** foreignClient: trusts the cluster CA (so the server verifies), presents a client cert of another CA. */
const foreignClient = path.join(root, 'foreign-client');
/** selfSigned: trusts the cluster CA, presents a self-signed client certificate. */
const selfSigned = path.join(root, 'self-signed');
/** noCert: trusts the cluster CA, has no client certificate. */
const noCert = path.join(root, 'no-cert');

test.before(() => {
  certsInit({ dir: cluster });
  certsInit({ dir: foreign });
  for (const d of [foreignClient, selfSigned, noCert]) {
    mkdirSync(d);
    copyFileSync(path.join(cluster, 'ca-cert.pem'), path.join(d, 'ca-cert.pem'));
  }
  copyFileSync(path.join(foreign, 'client-cert.pem'), path.join(foreignClient, 'client-cert.pem'));
  copyFileSync(path.join(foreign, 'client-key.pem'), path.join(foreignClient, 'client-key.pem'));
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '30',
    '-subj', '/CN=chard client', '-addext', 'extendedKeyUsage=clientAuth',
    '-keyout', path.join(selfSigned, 'client-key.pem'), '-out', path.join(selfSigned, 'client-cert.pem'),
  ], { stdio: 'ignore' });
});
test.after.always(() => rmSync(root, { recursive: true, force: true }));

async function serve(mode: NbdTlsMode) {
  const backend = new MemoryBackend({ exports: [{ name: 'disk', sizeBytes: 8 * MiB }] });
  const server = new NbdServer({ backend, tls: { mode, ...loadCerts(cluster, 'server') } });
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  if (!('port' in address)) throw new Error('tcp expected');
  return { server, port: address.port };
}

const nbdinfo = (uri: string) => run('nbdinfo', ['--json', uri], { allowFailure: true, timeoutMs: 30_000 });

test.serial('required: nbds:// with the cluster certificates is served; plaintext nbd:// is refused', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const { server, port } = await serve('required');
  try {
    const ok = await nbdinfo(`nbds://127.0.0.1:${port}/disk?tls-certificates=${cluster}`);
    t.is(ok.code, 0, ok.stderr);
    t.is(JSON.parse(ok.stdout).exports[0]['export-size'], 8 * MiB);
    t.is(server.counters.tlsHandshakes, 1);
    const plain = await nbdinfo(`nbd://127.0.0.1:${port}/disk`);
    t.not(plain.code, 0);
    t.true(server.counters.tlsRequired >= 1);
    t.is(server.counters.handshakesCompleted, 1, 'only the TLS client reached transmission');
  } finally {
    await server.close();
  }
});

test.serial('required: a client certificate of another CA, a self-signed one, or none is refused', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const { server, port } = await serve('required');
  try {
    for (const dir of [foreignClient, selfSigned, noCert]) {
      const before = server.counters.tlsHandshakeFailures;
      const r = await nbdinfo(`nbds://127.0.0.1:${port}/disk?tls-certificates=${dir}`);
      t.not(r.code, 0, `${path.basename(dir)} must be refused`);
      t.is(server.counters.tlsHandshakeFailures, before + 1, path.basename(dir));
    }
    t.is(server.counters.handshakesCompleted, 0);
    t.is(server.counters.tlsHandshakes, 0);
  } finally {
    await server.close();
  }
});

test.serial('qemu-io over TLS (tls-creds-x509) writes and reads back a pattern', async (t) => {
  if (!requireTools(t, ['qemu-io'])) return;
  const { server, port } = await serve('required');
  try {
    const r = await run('qemu-io', [
      '--object', `tls-creds-x509,id=tls0,dir=${cluster},endpoint=client`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk,tls-creds=tls0`,
      '-c', 'write -P 0xab 0 1M', '-c', 'read -P 0xab 0 1M',
    ], { allowFailure: true, timeoutMs: 60_000 });
    t.is(r.code, 0, r.stderr + r.stdout);
    t.notRegex(r.stdout, /Pattern verification failed/);
    t.regex(r.stdout, /read 1048576\/1048576 bytes/);
    t.is(server.counters.tlsHandshakes, 1);
    t.true(server.counters.bytesWritten >= MiB);
  } finally {
    await server.close();
  }
});

test.serial('optional: plaintext and TLS both served', async (t) => {
  if (!requireTools(t, ['nbdinfo'])) return;
  const { server, port } = await serve('optional');
  try {
    const plain = await nbdinfo(`nbd://127.0.0.1:${port}/disk`);
    t.is(plain.code, 0, plain.stderr);
    const secure = await nbdinfo(`nbds://127.0.0.1:${port}/disk?tls-certificates=${cluster}`);
    t.is(secure.code, 0, secure.stderr);
    t.is(server.counters.tlsHandshakes, 1);
    t.is(server.counters.tlsRequired, 0);
  } finally {
    await server.close();
  }
});

/** upgrade: STARTTLS on a raw client, then a RawClient over the TLS socket. */
async function upgrade(c: RawClient, certDir: string): Promise<RawClient> {
  c.option(Option.startTls);
  const ack = await c.optionReply();
  if (ack.replyType !== OptionReply.ack) throw new Error(`STARTTLS answered ${ack.replyType}`);
  const socket = tls.connect({
    socket: c.stream as import('node:net').Socket,
    ca: loadCerts(certDir, 'client').ca,
    cert: loadCerts(certDir, 'client').cert,
    key: loadCerts(certDir, 'client').key,
    servername: 'localhost',
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', resolve);
    socket.once('error', reject);
  });
  return new RawClient(socket);
}

test.serial('raw: TLS_REQD for every option but STARTTLS and ABORT; EXPORT_NAME hangs up; state resets; STARTTLS twice is INVALID', async (t) => {
  const { server, port } = await serve('required');
  try {
    const c = await RawClient.connect(port);
    await c.greet();
    for (const option of [Option.list, Option.structuredReply, Option.go, Option.info, 99]) {
      c.option(option, option === Option.go || option === Option.info ? Buffer.alloc(6) : undefined);
      const r = await c.optionReply();
      t.is(r.replyType, OptionReply.errTlsReqd, `option ${option}`);
    }
    const s = await upgrade(c, cluster);
    s.option(Option.startTls);
    t.is((await s.optionReply()).replyType, OptionReply.errInvalid, 'STARTTLS twice');
    await goGreeted(s, 'disk', true);
    s.request({ type: Command.write, handle: 1, offset: 0, payload: Buffer.alloc(4096, 7) });
    t.is((await s.reply()).errno, 0);
    s.request({ type: Command.read, handle: 2, offset: 0, lengthBytes: 4096 });
    const read = await s.structuredReply();
    t.is(read[0]!.type, ReplyType.offsetData);
    t.true(read[0]!.payload.subarray(8).equals(Buffer.alloc(4096, 7)));
    s.close();

    const e = await RawClient.connect(port);
    await e.greet();
    e.option(Option.exportName, Buffer.from('disk'));
    t.true(await e.isClosedSoon(5000), 'EXPORT_NAME before STARTTLS hangs up');

    const a = await RawClient.connect(port);
    await a.greet();
    a.option(Option.abort);
    t.is((await a.optionReply()).replyType, OptionReply.ack, 'ABORT is answered without TLS');
    a.close();
  } finally {
    await server.close();
  }
});

test.serial('raw: plaintext bytes after STARTTLS before the handshake close the connection', async (t) => {
  const { server, port } = await serve('optional');
  try {
    const c = await RawClient.connect(port);
    await c.greet();
    // STARTTLS and, without waiting for the ACK, another option in plaintext.
    c.write(Buffer.concat([encodeOptionBytes(Option.startTls), encodeOptionBytes(Option.list)]));
    t.is((await c.optionReply()).replyType, OptionReply.ack);
    t.true(await c.isClosedSoon(5000));
    t.is(server.counters.protocolViolations, 1);
    t.is(server.counters.tlsHandshakes, 0);
  } finally {
    await server.close();
  }
});

/** goGreeted: GO on a client past the greeting (after STARTTLS), optionally with structured replies. */
async function goGreeted(c: RawClient, exportName: string, structured: boolean): Promise<void> {
  if (structured) {
    c.option(Option.structuredReply);
    if ((await c.optionReply()).replyType !== OptionReply.ack) throw new Error('structured replies refused');
  }
  c.option(Option.go, encodeInfoRequest(exportName, []));
  const replies = await c.optionReplies();
  if (replies[replies.length - 1]!.replyType !== OptionReply.ack) throw new Error('GO refused');
}

test.serial('raw: options negotiated in plaintext do not carry over into the TLS session', async (t) => {
  const { server, port } = await serve('optional');
  try {
    const c = await RawClient.connect(port);
    await c.greet();
    c.option(Option.structuredReply);
    t.is((await c.optionReply()).replyType, OptionReply.ack);
    const s = await upgrade(c, cluster);
    await goGreeted(s, 'disk', false);
    s.request({ type: Command.read, handle: 1, offset: 0, lengthBytes: 512 });
    const reply = await s.simpleReply(512);
    t.is(reply.errno, 0, 'a simple reply: structured replies were forgotten at STARTTLS');
    s.close();
  } finally {
    await server.close();
  }
});

function encodeOptionBytes(option: number): Buffer {
  const b = Buffer.alloc(16);
  b.write('IHAVEOPT', 0, 'latin1');
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(0, 12);
  return b;
}
