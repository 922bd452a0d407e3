/**
 * guest-scripts: builders for the shell scripts runGuest hands to the guest. They use the helpers
 * of /lib/chard.sh (chard_step, chard_writer, chard_stop_watch, chard_result) so every step reports
 * `CHARD-RESULT step=NAME ok=0|1 rc=N ms=N`, and they stop at the first failed step (`|| exit 1`)
 * so a broken device never leaves the guest running into the harness timeout.
 */

import { assert } from '../../src/assert.js';

/** gatewayAddress: the guest's view of the namespace's 127.0.0.1 (QEMU user networking). */
export const gatewayAddress = '10.0.2.2';

/** shellQuote: single-quotes a value for POSIX sh. */
export function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

export interface NbdConnectOptions {
  /** port: TCP port on the namespace's 127.0.0.1 (reached as 10.0.2.2). */
  port: number;
  /** exportName: NBD export name; '' uses the server's default export. */
  exportName?: string;
  device?: string;
  /** blockBytes: logical block size nbd-client sets (512..4096). */
  blockBytes?: number;
  /** timeoutSeconds: nbd-client -t: the kernel fails a request not answered in this time. */
  timeoutSeconds?: number;
  /** connections: nbd-client -C (multi-connection; the server must allow it). */
  connections?: number;
  /**
   * tls: nbd-client -x -certfile CERT -K KEY -A CA [-H NAME]: NBD_OPT_STARTTLS, X.509 with a
   * client certificate, the server's certificate checked against CA and against NAME
   * (nbd-client's default NAME is the host it dials, 10.0.2.2). Paths are the guest's (absolute).
   * `-certfile`, not `-F`: nbd-client 3.24 (Debian 12) lost the -F short option (upstream fixed
   * it in 3.26); its long option works there and in every later version.
   */
  tls?: NbdTlsFiles;
}

export interface NbdTlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
  hostname?: string;
}

/** nbdConnectCommand: the nbd-client invocation (Debian 12's 3.24 syntax) for these options. */
export function nbdConnectCommand(options: NbdConnectOptions): string {
  const device = options.device ?? '/dev/nbd0';
  assert(Number.isInteger(options.port) && options.port > 0 && options.port < 65536, 'port out of range');
  const args = ['nbd-client', gatewayAddress, String(options.port), device, '-b', String(options.blockBytes ?? 4096)];
  if (options.timeoutSeconds !== undefined) args.push('-t', String(options.timeoutSeconds));
  if (options.connections !== undefined) args.push('-C', String(options.connections));
  if (options.exportName !== undefined && options.exportName !== '') args.push('-N', shellQuote(options.exportName));
  if (options.tls !== undefined) {
    const { certFile, keyFile, caFile, hostname } = options.tls;
    // nbd-client's TLS proxy daemonizes (chdir /): only absolute paths reach the files.
    for (const file of [certFile, keyFile, caFile]) assert(file.startsWith('/'), `TLS file ${file} must be an absolute guest path`);
    args.push('-x', '-certfile', shellQuote(certFile), '-K', shellQuote(keyFile), '-A', shellQuote(caFile));
    if (hostname !== undefined) args.push('-H', shellQuote(hostname));
  }
  return args.join(' ');
}

export interface SmokeFile {
  /** name: a plain file name (letters, digits, '.', '-', '_'). */
  name: string;
  /** bytes: written as one dd block of random data, fsynced. At most 4 MiB. */
  bytes: number;
}

export interface WriterOptions {
  /** fileBytes: size of each fsynced write. */
  fileBytes: number;
  /** count: number of writes; 0 = until the host sends 'stop', secondsMax passes, or 20 errors in a row. */
  count: number;
  secondsMax: number;
}

function checkName(name: string): void {
  assert(/^[A-Za-z0-9._-]+$/.test(name), `bad file name ${name}`);
}

function writerLines(writer: WriterOptions, dir: string): string[] {
  assert(writer.fileBytes > 0 && writer.fileBytes <= 4 * 1024 * 1024, 'fileBytes out of range');
  assert(Number.isInteger(writer.count) && writer.count >= 0, 'count must be a non-negative integer');
  assert(writer.secondsMax > 0, 'secondsMax must be positive');
  return [
    'chard_stop_watch',
    '_wm0=$(chard_ms)',
    `chard_writer ${dir} ${writer.count} ${writer.fileBytes} ${Math.ceil(writer.secondsMax)}`,
    '_wrc=$?',
    '_wms=$(( $(chard_ms) - _wm0 ))',
    'if [ $_wrc -eq 0 ]; then chard_result step=writer ok=1 rc=0 ms=$_wms; else chard_result step=writer ok=0 rc=$_wrc ms=$_wms; fi',
  ];
}

/**
 * smokeScript: connect, mkfs.ext4, mount, write `files` (fsync each), record their sha256, umount,
 * drop caches, fsck.ext4 -fn, remount, verify the sums, optionally run the continuous writer,
 * umount, disconnect. Each file's checksum is reported as `CHARD-RESULT file=NAME sha256=HEX`.
 */
export function smokeScript(connect: NbdConnectOptions, files: SmokeFile[], writer?: WriterOptions): string {
  return ['. /lib/chard.sh', ...smokeLines(connect, files, writer)].join('\n') + '\n';
}

function smokeLines(connect: NbdConnectOptions, files: SmokeFile[], writer?: WriterOptions): string[] {
  const device = connect.device ?? '/dev/nbd0';
  assert(files.length > 0, 'smokeScript needs at least one file');
  const lines = [
    `chard_step connect ${nbdConnectCommand(connect)} || exit 1`,
    `chard_result device=${device} size_bytes=$(blockdev --getsize64 ${device})`,
    `chard_step mkfs mkfs.ext4 -q -F ${device} || exit 1`,
    `chard_step mount mount -t ext4 ${device} /mnt || exit 1`,
  ];
  for (const file of files) {
    checkName(file.name);
    assert(file.bytes > 0 && file.bytes <= 4 * 1024 * 1024, 'file bytes out of range');
    lines.push(`chard_step write-${file.name} dd if=/dev/urandom of=/mnt/${file.name} bs=${file.bytes} count=1 conv=fsync || exit 1`);
  }
  const names = files.map((file) => file.name).join(' ');
  lines.push(
    `(cd /mnt && sha256sum ${names}) > /tmp/sums || exit 1`,
    `while read -r sum name; do chard_result file=$name sha256=$sum; done < /tmp/sums`,
    'chard_step umount umount /mnt || exit 1',
    // Drop the page cache so the re-read below really comes over NBD from the server.
    `chard_step drop-caches sh -c 'sync; echo 3 > /proc/sys/vm/drop_caches' || exit 1`,
    `chard_step fsck fsck.ext4 -fn ${device} || exit 1`,
    `chard_step remount mount -t ext4 ${device} /mnt || exit 1`,
    `chard_step verify sh -c 'cd /mnt && sha256sum -c /tmp/sums' || exit 1`,
  );
  if (writer !== undefined) lines.push(...writerLines(writer, '/mnt/writer'));
  lines.push('chard_step umount2 umount /mnt || exit 1', `chard_step disconnect nbd-client -d ${device} || exit 1`);
  return lines;
}

export interface RefusedConnect {
  /** name: the step is reported as `refuse-NAME` (then `detached-NAME`). */
  name: string;
  connect: NbdConnectOptions;
}

/** refuseSecondsMax: a refused attach is over in seconds; a hang is cut here (and is not a refusal). */
export const refuseSecondsMax = 60;

/**
 * tlsScript: the guest side of the kernel TLS test, in one boot. First every `refused` attach is
 * tried and must fail: `CHARD-RESULT step=refuse-NAME ok=0 rc=N` (nbd-client's own failure is
 * rc=1; a hang is killed after refuseSecondsMax and shows as another rc), and `detached-NAME`
 * checks with `nbd-client -c` that the device stayed unattached (else it disconnects and stops).
 * Then the smoke cycle of smokeScript over `connect`: connect, mkfs.ext4, mount, fsynced files
 * with their sha256, umount, drop caches, fsck.ext4 -fn, remount, verify, umount, disconnect.
 */
export function tlsScript(connect: NbdConnectOptions, refused: RefusedConnect[], files: SmokeFile[]): string {
  const lines = ['. /lib/chard.sh'];
  for (const attempt of refused) {
    checkName(attempt.name);
    const device = attempt.connect.device ?? '/dev/nbd0';
    lines.push(
      `chard_step refuse-${attempt.name} timeout ${refuseSecondsMax} ${nbdConnectCommand(attempt.connect)}`,
      `chard_step detached-${attempt.name} sh -c '! nbd-client -c ${device}' || { nbd-client -d ${device}; exit 1; }`,
    );
  }
  lines.push(...smokeLines(connect, files));
  return lines.join('\n') + '\n';
}

/**
 * writerScript: connect, mkfs.ext4, mount, then the continuous writer only (for failover tests):
 * one `CHARD-RESULT write=SEQ ok=1 t0=UPTIME t1=UPTIME ms=N` per completed fsynced write and one
 * `CHARD-IOERR write=SEQ ...` per failed write. It does not unmount: after I/O errors the device
 * may be gone, and the guest powers off anyway.
 */
export function writerScript(connect: NbdConnectOptions, writer: WriterOptions): string {
  const device = connect.device ?? '/dev/nbd0';
  return [
    '. /lib/chard.sh',
    `chard_step connect ${nbdConnectCommand(connect)} || exit 1`,
    `chard_step mkfs mkfs.ext4 -q -F ${device} || exit 1`,
    `chard_step mount mount -t ext4 ${device} /mnt || exit 1`,
    ...writerLines(writer, '/mnt/writer'),
  ].join('\n') + '\n';
}

export interface FailoverWriterOptions {
  /** fileBytes: size of each fsynced file (keep small under TCG: 64 KiB). */
  fileBytes: number;
  /** secondsMax: the writer stops by itself after this long (the host normally sends 'stop'). */
  secondsMax: number;
  /** consecutiveErrorsMax: the writer gives up after this many failed writes in a row (each is loud). */
  consecutiveErrorsMax?: number;
}

/**
 * failoverScript: the guest side of the kernel failover test. Connect (the connect options should
 * carry a long `-t` so the kernel outlasts a failover, and `-C 2`), mkfs.ext4, mount, then a
 * continuous writer: one new file per iteration written with `dd conv=fsync`, and for each completed
 * write one line
 *   CHARD-RESULT write=SEQ ok=1 t0=UPTIME t1=UPTIME ms=N sha256=HEX
 * (the checksum of what was written, taken after the fsync returned), or a loud
 *   CHARD-IOERR write=SEQ rc=N t0=… t1=… msg=…
 * for a failed one. On 'stop' from the host (or after secondsMax): sync, umount, drop caches,
 * `fsck.ext4 -fn`, remount read-only, `sha256sum -c` of every completed write, and one
 *   CHARD-RESULT readback=NAME sha256=HEX
 * per file found on the remounted filesystem (the host compares both sets), umount, disconnect.
 * The script exits non-zero if any step failed or the writer saw any I/O error.
 */
export function failoverScript(connect: NbdConnectOptions, writer: FailoverWriterOptions): string {
  const device = connect.device ?? '/dev/nbd0';
  assert(writer.fileBytes > 0 && writer.fileBytes <= 4 * 1024 * 1024, 'fileBytes out of range');
  assert(writer.secondsMax > 0 && writer.secondsMax <= 3600, 'secondsMax out of range');
  const consecutiveErrorsMax = writer.consecutiveErrorsMax ?? 5;
  assert(Number.isInteger(consecutiveErrorsMax) && consecutiveErrorsMax >= 1, 'consecutiveErrorsMax must be >= 1');
  return [
    '. /lib/chard.sh',
    `chard_step connect ${nbdConnectCommand(connect)} || exit 1`,
    `chard_result device=${device} size_bytes=$(blockdev --getsize64 ${device})`,
    `chard_step mkfs mkfs.ext4 -q -F ${device} || exit 1`,
    `chard_step mount mount -t ext4 ${device} /mnt || exit 1`,
    'mkdir -p /mnt/w || exit 1',
    ': > /tmp/sums',
    'chard_stop_watch',
    `_deadline=$(( $(chard_ms) + ${Math.ceil(writer.secondsMax)} * 1000 ))`,
    '_seq=0; _ok=0; _errs=0; _consec=0',
    'chard_result writer=started uptime=$(chard_now)',
    'while :; do',
    '  [ -e /chard/stop ] && break',
    '  [ "$(chard_ms)" -ge "$_deadline" ] && break',
    '  _seq=$((_seq + 1))',
    '  _t0=$(chard_now); _m0=$(chard_ms)',
    `  if dd if=/dev/urandom of=/mnt/w/f$_seq bs=${writer.fileBytes} count=1 conv=fsync 2>/tmp/dd.err; then`,
    '    _t1=$(chard_now); _m1=$(chard_ms)',
    '    _sum=$(sha256sum /mnt/w/f$_seq); _sum=${_sum%% *}',
    '    echo "$_sum  f$_seq" >> /tmp/sums',
    '    echo "CHARD-RESULT write=$_seq ok=1 t0=$_t0 t1=$_t1 ms=$((_m1 - _m0)) sha256=$_sum"',
    '    _ok=$((_ok + 1)); _consec=0',
    '  else',
    '    _rc=$?; _t1=$(chard_now)',
    '    _errs=$((_errs + 1)); _consec=$((_consec + 1))',
    `    echo "CHARD-IOERR write=$_seq rc=$_rc t0=$_t0 t1=$_t1 msg=$(tr -s ' \\n' '__' < /tmp/dd.err)"`,
    `    [ "$_consec" -ge ${consecutiveErrorsMax} ] && break`,
    '    sleep 0.2',
    '  fi',
    'done',
    'chard_result writer=done writes=$_ok errors=$_errs uptime=$(chard_now)',
    'chard_step sync sync || exit 1',
    'chard_step umount umount /mnt || exit 1',
    // Drop the page cache so the checks below read what the cluster holds, over NBD.
    `chard_step drop-caches sh -c 'echo 3 > /proc/sys/vm/drop_caches' || exit 1`,
    `chard_step fsck fsck.ext4 -fn ${device} || exit 1`,
    `chard_step remount mount -t ext4 -o ro ${device} /mnt || exit 1`,
    `chard_step verify sh -c 'cd /mnt/w && sha256sum -c -s /tmp/sums' || exit 1`,
    `(cd /mnt/w && for f in *; do [ -f "$f" ] && sha256sum "$f"; done) | while read -r sum name; do chard_result readback=$name sha256=$sum; done`,
    'chard_step umount2 umount /mnt || exit 1',
    `chard_step disconnect nbd-client -d ${device} || exit 1`,
    '[ "$_errs" -eq 0 ]',
  ].join('\n') + '\n';
}
