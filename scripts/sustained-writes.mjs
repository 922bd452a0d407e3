// sustained-writes: write amplification and throughput of a long random-write run, across log
// compactions (which `chard bench`'s 3 s jobs never reach): a fresh 3-node local cluster, fio
// 4 KiB randwrite QD32 over 256 MiB through the leader for SECONDS, then per node the bytes the
// process wrote (/proc/PID/io write_bytes, after the idle checkpoint) over the payload, CPU
// seconds per 1,000 writes, and the leader's blocks kept in the log and relocated.
//
//   npm run build && node scripts/sustained-writes.mjs [SECONDS=40] [DISTRIBUTION]
//
// DISTRIBUTION: fio's random_distribution (e.g. zipf:1.1, a skewed load with hot blocks), drawn
// with --norandommap; without it fio's default: every block once per pass, in random order.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const seconds = Number(process.argv[2] ?? 40);
const distribution = process.argv[3];
if (!Number.isInteger(seconds) || seconds < 1) throw new Error('SECONDS: a positive integer');
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chard-sustained-'));
const cli = (...args) => execFileSync(process.execPath, [path.join(root, 'dist/src/cli/main.js'), ...args], { encoding: 'utf8' });
const io = (pid) => Number(/write_bytes: (\d+)/.exec(fs.readFileSync(`/proc/${pid}/io`, 'utf8'))[1]);
const cpu = (pid) => {
  const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100; // utime + stime, in USER_HZ (100 on Linux)
};

const cluster = JSON.parse(cli('cluster', 'up', '--detach', '--json', '--nodes', '3', '--dir', path.join(dir, 'cluster'), '--volume-size', '1GiB'));
try {
  let leader;
  const deadline = Date.now() + 30_000;
  while (leader === undefined && Date.now() < deadline) {
    try {
      leader = JSON.parse(cli('status', '--dir', path.join(dir, 'cluster'), '--json')).leader;
    } catch {
      // not up yet
    }
    if (leader === undefined) execFileSync('sleep', ['0.2']);
  }
  if (leader === undefined) throw new Error('no leader within 30 s');
  const node = cluster.nodes.find((n) => n.id === leader);
  const written0 = new Map(cluster.nodes.map((n) => [n.id, io(n.pid)]));
  const cpu0 = new Map(cluster.nodes.map((n) => [n.id, cpu(n.pid)]));
  const args = ['--name=sustained', '--ioengine=nbd', `--uri=nbd://${node.nbd}/default`, '--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=256M', '--time_based', `--runtime=${seconds}`, '--output-format=json'];
  if (distribution !== undefined) args.push(`--random_distribution=${distribution}`, '--norandommap');
  const out = execFileSync('fio', args, { encoding: 'utf8', maxBuffer: 64 << 20 });
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0].write;
  execFileSync('sleep', ['4']); // state.db's idle checkpoint (1 s after the last write)
  const writes = job.io_bytes / 4096;
  console.log(`4 KiB randwrite QD32, ${seconds} s, ${distribution ?? 'every block once per pass'}, through leader ${node.id}: ${Math.round(job.iops)} IOPS, ${(job.io_bytes / 2 ** 20).toFixed(0)} MiB`);
  for (const n of cluster.nodes) {
    const amp = (io(n.pid) - written0.get(n.id)) / job.io_bytes;
    const cpuPer1000 = ((cpu(n.pid) - cpu0.get(n.id)) / writes) * 1000;
    console.log(`  node${n.id}: write amplification ${amp.toFixed(2)}x, CPU s per 1,000 writes ${cpuPer1000.toFixed(3)}`);
  }
  if (node.metrics !== undefined) {
    const text = await (await fetch(`http://${node.metrics}/metrics`)).text();
    for (const line of text.split('\n')) if (/^chard_(state_blocks_placed|log_compactions)_total/.test(line)) console.log(`  ${line}`);
  }
} finally {
  try {
    cli('cluster', 'down', '--dir', path.join(dir, 'cluster'));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
