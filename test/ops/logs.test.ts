/**
 * logs: the node processes and the attach agent log pino JSON lines; every node line carries the
 * node and cluster ids and, once the replica exists, the current term; with `--log-level debug`
 * every NBD request is logged with a request id. A bad `--log-level` is refused naming the flag.
 */

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import type { ClusterFile } from '../../src/cli/cluster-file.js';
import { Command } from '../../src/nbd/protocol.js';
import { chard, cliPath } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';
import { scrape, value } from './prom-text.js';

async function writeOne(port: number): Promise<void> {
  const client = await RawClient.connect(port);
  try {
    await client.go('default', { structured: false });
    client.request({ type: Command.write, handle: 7, offset: 0, payload: Buffer.alloc(4096, 0x5a) });
    const reply = await client.simpleReply();
    if (reply.errno !== 0) throw new Error(`errno ${reply.errno}`);
  } finally {
    client.close();
  }
}

function jsonLines(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function until<T>(what: string, fn: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('cluster up --log-level debug: JSON lines with node, cluster, term and NBD request ids; the agent logs too', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-ops-logs-'));
  const up = await chard(['cluster', 'up', '--detach', '--json', '--nodes', '1', '--dir', dir, '--volume-size', '16MiB', '--log-level', 'debug']);
  t.teardown(async () => {
    await chard(['cluster', 'down', '--dir', dir]);
    rmSync(dir, { recursive: true, force: true });
  });
  t.is(up.code, 0, up.stderr);
  const cluster = JSON.parse(up.stdout) as ClusterFile;
  const node = cluster.nodes[0]!;
  t.is(JSON.parse(readFileSync(path.join(dir, 'n1', 'node.json'), 'utf8')).logLevel, 'debug', 'written to node.json');
  await writeOne(Number(node.nbd.slice(node.nbd.lastIndexOf(':') + 1)));

  const logFile = path.join(dir, 'n1', 'node.log');
  const request = await until('a logged NBD request', () => jsonLines(readFileSync(logFile, 'utf8')).find((l) => l.msg === 'nbd request' && l.command === 'write'));
  t.regex(String(request.req), /^c\d+\.\d+$/, 'request id c<conn>.<n>');
  const lines = jsonLines(readFileSync(logFile, 'utf8'));
  for (const line of lines) {
    t.is(line.node, 1, `every line names the node: ${JSON.stringify(line)}`);
    t.is(line.cluster, cluster.clusterId);
  }
  const started = lines.find((l) => l.msg === 'node started');
  t.truthy(started, 'node started logged');
  t.is(typeof request.term, 'number', 'lines carry the term');
  t.true((request.term as number) >= 1);

  // The agent: JSON logs on stderr (stdout keeps the one JSON line), metrics from --metrics.
  const agent = spawn(process.execPath, [cliPath, 'attach', '--dir', dir, '--volume', 'default', '--port', '0', '--json', '--log-level', 'debug', '--metrics', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, CHARD_RUN_DIR: path.join(dir, 'run') },
  });
  let stdout = '';
  let stderr = '';
  agent.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  agent.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  t.teardown(() => {
    agent.kill('SIGTERM');
  });
  const first = await until('the agent line', () => (stdout.includes('\n') ? (JSON.parse(stdout.split('\n')[0]!) as { listen: string; metrics: string }) : undefined));
  t.regex(first.metrics, /^127\.0\.0\.1:\d+$/);
  await writeOne(Number(first.listen.slice(first.listen.lastIndexOf(':') + 1)));
  const agentRequest = await until('an agent request log', () => jsonLines(stderr).find((l) => l.msg === 'nbd request' && l.command === 'write'));
  t.is(agentRequest.agent, 'default');
  t.regex(String(agentRequest.req), /^c\d+\.\d+$/);
  const s = await scrape(first.metrics);
  t.true(value(s.families, 'chard_nbd_requests_total', { command: 'write' })! >= 1, 'the agent counted the write');
});

test('a bad --log-level is refused, naming the flag', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-ops-logs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const up = await chard(['cluster', 'up', '--detach', '--nodes', '1', '--dir', dir, '--log-level', 'loud']);
  t.is(up.code, 2);
  t.regex(up.stderr, /--log-level must be one of fatal, error, warn, info, debug, trace, silent/);
});
