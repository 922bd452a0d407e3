/**
 * status-watch: `chard status --watch` in a child process redraws the table (terminal clear +
 * table) at the interval, marks the leader's row and shows lag, and exits 0 on Ctrl-C (SIGINT).
 * `--json` gives one JSON line per refresh.
 */

import { spawn } from 'node:child_process';
import test from 'ava';
import { cliPath, LocalCluster } from '../helpers/local-cluster.js';

const clear = '\x1b[H\x1b[2J';

function watch(args: string[]) {
  const child = spawn(process.execPath, [cliPath, 'status', '--watch', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (err += c.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    exited,
    output: () => out,
    errors: () => err,
    async until(check: (out: string) => boolean, timeoutMs = 30_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      while (!check(out)) {
        if (Date.now() > deadline) throw new Error(`timed out; output so far:\n${out}\n${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    },
  };
}

test('status --watch redraws with the leader marked and lag shown; Ctrl-C stops it', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3 });
  t.teardown(() => cluster.stop());
  await cluster.leader();

  // A frame names the leader it saw: under load an election may fall between two refreshes (or a
  // refresh may find no leader for a moment), so each frame is checked against its own leader line.
  const w = watch(['--dir', cluster.dir, '--interval', '200']);
  t.teardown(() => {
    w.child.kill('SIGKILL');
  });
  const withLeader = (out: string) => out.split(clear).slice(1, -1).filter((f) => /^leader: \d+$/m.test(f));
  await w.until((out) => withLeader(out).length >= 2); // two complete frames that name a leader
  const frames = withLeader(w.output());
  t.true(frames.length >= 2, 'at least two refreshes captured');
  for (const frame of frames) {
    const leader = Number(/^leader: (\d+)$/m.exec(frame)![1]);
    t.regex(frame, /^id\s+admin\s+role\s+term\s+commit\s+applied\s+lag$/m);
    t.regex(frame, new RegExp(`^${leader} \\*\\s+\\S+\\s+leader\\s`, 'm'), 'the leader row is marked');
    t.is(frame.match(/ \*/g)?.length, 1, 'only one row is marked');
    t.is(frame.trim().split('\n').length, 2 + 1 + 3, 'time line, leader line, header and one row per node');
  }
  w.child.kill('SIGINT');
  t.is(await w.exited, 0, 'Ctrl-C ends the watch with exit 0');

  const j = watch(['--dir', cluster.dir, '--interval', '150', '--json']);
  t.teardown(() => {
    j.child.kill('SIGKILL');
  });
  type Line = { leader: number; nodes: { id: number; reachable: boolean; lag?: number }[] };
  const parsed = (out: string) => out.split('\n').slice(0, -1).map((l) => JSON.parse(l) as Line);
  // Two refreshes in which every node answered (one may time out on a loaded machine: it is then
  // shown unreachable, without lag).
  await j.until((out) => parsed(out).filter((l) => l.nodes.every((n) => n.reachable)).length >= 2);
  const lines = parsed(j.output());
  t.true(lines.length >= 2);
  for (const line of lines) {
    t.true(line.leader === 0 || line.nodes.some((n) => n.id === line.leader), 'the leader is a member (0: none known at that moment)');
    t.true(line.nodes.every((n) => !n.reachable || typeof n.lag === 'number'), 'every node that answered shows its lag');
    t.is(line.nodes.length, 3);
  }
  j.child.kill('SIGINT');
  t.is(await j.exited, 0);
});

test('status --watch refuses a too-short interval', async (t) => {
  const w = watch(['--cluster', '127.0.0.1:1', '--interval', '5']);
  t.is(await w.exited, 2);
  t.regex(w.errors(), /--interval must be 100\.\.3600000 ms/);
});
