// Proves that the real Linux NBD client attaches a chard volume over TLS, and that it is refused
// without the right certificates. How: in a fresh network namespace, `chard certs init --host
// 10.0.2.2 --host 127.0.0.1 --host localhost` makes the cluster CA and certificates (the server
// certificate names the address the guest dials), a second `chard certs init` makes a foreign CA,
// and `chard cluster up --certs DIR` starts a 3-node cluster with mutual TLS and NBD TLS
// `required`. One TCG QEMU guest boot (the certificates ride in the per-run archive beside the
// script) then runs against the leader's NBD port at 10.0.2.2:
//   1. plaintext `nbd-client` (no -x): must fail with the server's NBD_REP_ERR_TLS_REQD message;
//   2. `-x` with a client certificate of the foreign CA: the server must refuse the handshake;
//   3. `-x -A` the foreign CA: the client must refuse the server's certificate;
//   4. `-x -H` a name the server certificate does not carry: the client must refuse it;
//   after each, /dev/nbd0 must still be unattached (`nbd-client -c`);
//   5. `nbd-client -x -F client-cert.pem -K client-key.pem -A ca-cert.pem` attaches /dev/nbd0;
//      mkfs.ext4, mount, fsynced files with their sha256, umount, drop caches, fsck.ext4 -fn,
//      remount, sha256sum -c, umount, disconnect.
// On the host the node log must show each refusal (TLS required, handshake failures) and a TLS
// handshake for the attach, and the volume, read back through a follower over nbds:// with
// nbdcopy, must be a clean ext4 (e2fsck -fn) whose files (debugfs cat) match the guest's sha256.
// Under CI=true missing qemu / root / build tools fail the test; elsewhere it is skipped with a log.

import test, { type ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createNetns, ensureGuestImage, findTool, missingPrerequisites, run, runGuest, type GuestFile, type GuestRun, type Netns } from './guest.js';
import { gatewayAddress, tlsScript, type NbdConnectOptions, type NbdTlsFiles, type RefusedConnect, type SmokeFile } from './guest-scripts.js';
import { NetnsCluster, runCli } from './cluster-in-netns.js';

const MiB = 1024 * 1024;
const volumeBytes = 64 * MiB;
const guestTimeoutMs = 240_000;
const testTimeoutMs = 330_000;
/** clockSkewSecondsMax: the guest clock (QEMU's RTC = host time) must be this close for certificates to be valid. */
const clockSkewSecondsMax = 120;

/** ready: true when the host can run the guest; else fails (CI) or logs and skips. */
function ready(t: ExecutionContext): boolean {
  const missing = missingPrerequisites();
  for (const [tool, pkg] of [['openssl', 'openssl'], ['nbdcopy', 'libnbd-bin'], ['nbdinfo', 'libnbd-bin'], ['debugfs', 'e2fsprogs'], ['e2fsck', 'e2fsprogs']]) {
    if (findTool(tool!) === undefined) missing.push(`${tool} (${pkg})`);
  }
  if (missing.length === 0) return true;
  const message = `kernel guest prerequisites missing: ${missing.join(', ')} (see docs/kernel-test.md)`;
  if (process.env['CI'] === 'true') t.fail(message);
  else {
    t.log(`SKIPPED: ${message}`);
    t.pass();
  }
  return false;
}

function explain(result: GuestRun): string {
  return `exitOk=${result.exitOk} timedOut=${result.timedOut} scriptRc=${result.scriptRc} qemu=${JSON.stringify(result.qemuExit)}\n--- console (tail) ---\n${result.console.slice(-8000)}`;
}

/** stepOutput: the console lines chard_step printed for step NAME (prefixed `  NAME: `). */
function stepOutput(result: GuestRun, name: string): string {
  const prefix = `  ${name}: `;
  return result.events.filter((e) => e.line.startsWith(prefix)).map((e) => e.line.slice(prefix.length)).join('\n');
}

/** logRecords: the records of a node's pino log whose message is `msg`, in order. */
function logRecords(logText: string, msg: string): Record<string, unknown>[] {
  const records: Record<string, unknown>[] = [];
  for (const line of logText.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const record = JSON.parse(line) as Record<string, unknown>;
      if (record['msg'] === msg) records.push(record);
    } catch {
      // not a log record
    }
  }
  return records;
}

/** runBinary: like run, but keeps stdout as bytes (debugfs cat of random data). */
function runBinary(command: string, args: string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { encoding: 'buffer', maxBuffer: 64 * MiB, timeout: 60_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${command} ${args.join(' ')} failed: ${stderr.toString()}`));
      else resolve(stdout);
    });
  });
}

async function certsInit(dir: string, hosts: string[]): Promise<void> {
  const result = await runCli(undefined, ['certs', 'init', '--dir', dir, ...hosts.flatMap((h) => ['--host', h])], { timeoutMs: 60_000 });
  if (result.code !== 0) throw new Error(`chard certs init --dir ${dir} failed (${result.code}): ${result.stderr}`);
}

/** guestTls: the guest paths of a certificate directory copied to /chard/NAME/. */
function guestTls(name: string, hostDir: string): { files: GuestFile[]; paths: NbdTlsFiles } {
  const pick = (file: string, mode: number): GuestFile => ({ path: `${name}/${file}`, data: readFileSync(path.join(hostDir, file)), mode });
  return {
    files: [pick('ca-cert.pem', 0o644), pick('client-cert.pem', 0o644), pick('client-key.pem', 0o600)],
    paths: { certFile: `/chard/${name}/client-cert.pem`, keyFile: `/chard/${name}/client-key.pem`, caFile: `/chard/${name}/ca-cert.pem` },
  };
}

test.serial('kernel NBD over TLS: nbd-client -x attaches ext4 with the cluster certificates; plaintext, a foreign CA and a wrong name are refused', async (t) => {
  t.timeout(testTimeoutMs);
  if (!ready(t)) return;
  const started = performance.now();
  const image = await ensureGuestImage();
  const dir = mkdtempSync(path.join(tmpdir(), 'chard-ktls-'));
  let netns: Netns | undefined;
  let cluster: NetnsCluster | undefined;
  let keepDir = false;
  try {
    const certs = path.join(dir, 'certs');
    const foreign = path.join(dir, 'foreign');
    await certsInit(certs, [gatewayAddress, '127.0.0.1', 'localhost']);
    await certsInit(foreign, [gatewayAddress, '127.0.0.1', 'localhost']);
    netns = await createNetns();
    cluster = await NetnsCluster.up(netns, path.join(dir, 'cluster'), { nodes: 3, volumeSize: `${volumeBytes / MiB}MiB`, certs });
    const leader = await cluster.leader();
    const nbd = cluster.node(leader).nbd;
    const port = Number(nbd.slice(nbd.lastIndexOf(':') + 1));
    const follower = cluster.file().nodes.find((n) => n.id !== leader)!;
    const setupMs = Math.round(performance.now() - started);

    const good = guestTls('tls', certs);
    const bad = guestTls('foreign', foreign);
    const base: NbdConnectOptions = { port, exportName: 'default', timeoutSeconds: 30 };
    const refused: RefusedConnect[] = [
      { name: 'plain', connect: base },
      { name: 'foreign-client', connect: { ...base, tls: { ...good.paths, certFile: bad.paths.certFile, keyFile: bad.paths.keyFile } } },
      { name: 'foreign-ca', connect: { ...base, tls: { ...good.paths, caFile: bad.paths.caFile } } },
      { name: 'wrong-name', connect: { ...base, tls: { ...good.paths, hostname: 'not-this-node.example' } } },
    ];
    const files: SmokeFile[] = [
      { name: 'small.bin', bytes: 4096 },
      { name: 'large.bin', bytes: 1 * MiB },
    ];
    const hostSeconds = Math.floor(Date.now() / 1000);
    const result = await runGuest({
      netns,
      image,
      memoryMb: 512,
      timeoutMs: guestTimeoutMs,
      files: [...good.files, ...bad.files],
      script: `chard_clock=$(date +%s); echo "CHARD-RESULT clock=$chard_clock"\n` + tlsScript({ ...base, tls: good.paths }, refused, files),
    });
    const steps = new Map(result.results.filter((r) => r['step'] !== undefined).map((r) => [r['step']!, r]));
    t.log(`kernel ${image.kernelVersion}; setup (certs, netns, 3-node TLS cluster) ${setupMs} ms; boot ${result.bootMs} ms; guest total ${result.totalMs} ms`);
    t.log(`guest steps (ms): ${[...steps].map(([name, r]) => `${name} ${r['ms']}${r['ok'] === '1' ? '' : ` FAILED rc=${r['rc']}`}`).join(', ')}`);

    const problems: string[] = [];
    const guestClock = Number(result.results.find((r) => r['clock'] !== undefined)?.['clock']);
    if (!(Math.abs(guestClock - hostSeconds) <= clockSkewSecondsMax)) {
      problems.push(`the guest clock (${guestClock}) is not within ${clockSkewSecondsMax} s of the host's (${hostSeconds}): certificates would not be valid there`);
    }
    if (!result.exitOk) problems.push(`the guest script failed: ${explain(result)}`);

    // Every refused attach: nbd-client itself failed (rc 1, not a hang cut by `timeout`) and the device stayed free.
    for (const attempt of refused) {
      const step = steps.get(`refuse-${attempt.name}`);
      if (step?.['ok'] !== '0' || step['rc'] !== '1') problems.push(`refuse-${attempt.name} must fail with nbd-client's status 1: ${JSON.stringify(step ?? 'missing')}\n${stepOutput(result, `refuse-${attempt.name}`)}`);
      if (steps.get(`detached-${attempt.name}`)?.['ok'] !== '1') problems.push(`/dev/nbd0 attached after refuse-${attempt.name}: ${JSON.stringify(steps.get(`detached-${attempt.name}`) ?? 'missing')}`);
      t.log(`refuse-${attempt.name}: rc ${step?.['rc']} in ${step?.['ms']} ms: ${stepOutput(result, `refuse-${attempt.name}`).replace(/\s+/g, ' ').slice(-200)}`);
    }
    // The plaintext client was told why: the server's NBD_REP_ERR_TLS_REQD message.
    if (!/requires TLS/.test(stepOutput(result, 'refuse-plain'))) problems.push(`refuse-plain did not report the server's TLS-required answer:\n${stepOutput(result, 'refuse-plain')}`);

    for (const name of ['connect', 'mkfs', 'mount', ...files.map((f) => `write-${f.name}`), 'umount', 'drop-caches', 'fsck', 'remount', 'verify', 'umount2', 'disconnect']) {
      if (steps.get(name)?.['ok'] !== '1') problems.push(`guest step ${name}: ${JSON.stringify(steps.get(name) ?? 'missing')}`);
    }
    const size = result.results.find((r) => r['size_bytes'] !== undefined)?.['size_bytes'];
    if (size !== String(volumeBytes)) problems.push(`/dev/nbd0 size ${size}, expected ${volumeBytes}`);
    if (result.ioErrors.length > 0 || /I\/O error|EXT4-fs error/.test(result.console)) problems.push('the guest saw I/O errors');

    // The server's side of each refusal and of the attach, from the leader's log.
    const log = readFileSync(path.join(cluster.node(leader).data, 'node.log'), 'utf8');
    const tlsRequired = logRecords(log, 'nbd option refused: TLS is required');
    const failures = logRecords(log, 'nbd TLS handshake failed; closing');
    t.log(`leader ${leader} log: ${tlsRequired.length} option(s) refused for TLS required; failed TLS handshakes: ${failures.map((f) => String(f['reason'])).join(' | ')}`);
    if (tlsRequired.length < 1) problems.push('the leader did not log the plaintext option refused for TLS required');
    // In order: foreign-client (the server refuses: GnuTLS does not even offer a certificate whose
    // issuer is not among the server's CAs, so OpenSSL reports no certificate), then foreign-ca
    // and wrong-name (the client drops the connection during the handshake).
    if (failures.length !== 3) problems.push(`the leader logged ${failures.length} failed TLS handshakes, expected 3 (foreign client certificate, foreign CA, wrong name)`);
    else if (!/^ERR_SSL_/.test(String(failures[0]!['reason']))) problems.push(`the foreign client certificate was not refused by the server's verification: ${JSON.stringify(failures[0])}`);

    // Host side, through the cluster: the volume over nbds:// from a follower (which forwards to
    // the leader) is a clean ext4 holding exactly what the guest wrote.
    const dump = path.join(dir, 'volume.img');
    const copy = await netns.exec('nbdcopy', [`nbds://${follower.nbd}/default?tls-certificates=${certs}`, dump], { allowFailure: true, timeoutMs: 120_000 });
    if (copy.code !== 0) problems.push(`nbdcopy from node ${follower.id} over nbds:// failed (${copy.code}): ${copy.stderr}`);
    else {
      const fsck = await run('e2fsck', ['-fn', dump], { allowFailure: true });
      if (fsck.code !== 0) problems.push(`e2fsck -fn of the volume read over nbds:// failed (${fsck.code}): ${fsck.stdout}${fsck.stderr}`);
      const sums = new Map(result.results.filter((r) => r['file'] !== undefined).map((r) => [r['file']!, r['sha256']!]));
      for (const file of files) {
        const bytes = await runBinary('debugfs', ['-R', `cat /${file.name}`, dump]).catch((error: unknown) => Buffer.from(String(error)));
        const sum = createHash('sha256').update(bytes).digest('hex');
        if (bytes.length !== file.bytes || sum !== sums.get(file.name)) {
          problems.push(`${file.name} read over nbds:// from node ${follower.id}: ${bytes.length} bytes sha256 ${sum}, the guest wrote ${file.bytes} bytes sha256 ${sums.get(file.name)}`);
        }
      }
      t.log(`host: ${volumeBytes / MiB} MiB volume read through follower ${follower.id} over nbds:// (nbdcopy); e2fsck -fn exit ${fsck.code}; ${sums.size} files compared`);
    }
    const plainHost = await netns.exec('nbdinfo', ['--size', `nbd://${nbd}/default`], { allowFailure: true, timeoutMs: 30_000 });
    if (plainHost.code === 0) problems.push(`plaintext nbdinfo from the host was served: ${plainHost.stdout}`);
    t.log(`total wall time ${Math.round(performance.now() - started)} ms`);

    if (problems.length > 0) {
      keepDir = true;
      t.log(`kept ${dir} for inspection\n${cluster.logTails(40)}`);
      t.fail(problems.join('\n\n'));
    } else {
      t.pass();
    }
  } finally {
    await cluster?.destroy();
    await netns?.destroy();
    if (!keepDir) rmSync(dir, { recursive: true, force: true });
  }
});
