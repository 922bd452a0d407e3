// processes: the node processes the CLI starts run with nodeProcessFlags. The young-generation cap
// bounds what it claims: a process started with those flags that allocates a long-lived array of
// two million objects keeps its new space at most 2 x 4 MiB (Node 20's default grows it to
// 2 x 16 MiB and keeps it; 32 MiB resident per node after the bench). NODE_OPTIONS that names
// the flag wins over ours.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test from 'ava';
import net from 'node:net';
import { ephemeralPortRange, freePorts, nodeProcessFlags, nodeProcessV8Flags } from '../../src/cli/processes.js';

const execFileAsync = promisify(execFile);
const MiB = 1024 * 1024;

const newSpaceScript = `
const v8 = require('node:v8');
const keep = [];
for (let i = 0; i < 2e6; i++) keep.push({ i });
console.log(v8.getHeapSpaceStatistics().find((s) => s.space_name === 'new_space').space_size);
`;

async function newSpaceBytes(flags: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const { stdout } = await execFileAsync(process.execPath, [...flags, '-e', newSpaceScript], { env, timeout: 60_000 });
  return Number(stdout.trim());
}

test('a node process keeps its young generation within 2 x 4 MiB', async (t) => {
  const env = { ...process.env, NODE_OPTIONS: '' };
  const capped = await newSpaceBytes(nodeProcessFlags(env), env);
  t.true(capped <= 8 * MiB, `new space ${capped} bytes`);
  // The same allocation without the flags: what the cap saves (Node 20: 32 MiB).
  const uncapped = await newSpaceBytes([], env);
  t.true(uncapped > capped, `uncapped ${uncapped} bytes, capped ${capped}`);
});

test('NODE_OPTIONS naming a flag wins over nodeProcessV8Flags', (t) => {
  t.deepEqual(nodeProcessFlags({}), [...nodeProcessV8Flags]);
  t.deepEqual(nodeProcessFlags({ NODE_OPTIONS: '--max-semi-space-size=16' }), []);
  t.deepEqual(nodeProcessFlags({ NODE_OPTIONS: '--inspect=0' }), [...nodeProcessV8Flags]);
});

test('freePorts picks distinct ports below the kernel\'s ephemeral range, so an outgoing connection never takes a stopped node\'s port', async (t) => {
  const [low] = ephemeralPortRange();
  const ports = await freePorts(30);
  t.is(new Set(ports).size, 30);
  for (const port of ports) t.true(port >= 10_000 && port < low, `port ${port} below the ephemeral range starting at ${low}`);
  // and each is free: it can be bound again at once
  const servers = await Promise.all(
    ports.map(
      (port) =>
        new Promise<net.Server>((resolve, reject) => {
          const s = net.createServer();
          s.once('error', reject);
          s.listen(port, '127.0.0.1', () => resolve(s));
        }),
    ),
  );
  await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
});

test('ephemeralPortRange reads the kernel file, and falls back to Linux\'s default', (t) => {
  t.deepEqual(ephemeralPortRange('/nonexistent/ip_local_port_range'), [32_768, 60_999]);
  const [low, high] = ephemeralPortRange();
  t.true(low > 0 && high >= low);
});
