// processes: the node processes the CLI starts run with nodeProcessFlags. The young-generation cap
// bounds what it claims: a process started with those flags that allocates a long-lived array of
// two million objects keeps its new space at most 2 x 4 MiB (Node 20's default grows it to
// 2 x 16 MiB and keeps it; 32 MiB resident per node after the bench). NODE_OPTIONS that names
// the flag wins over ours.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import test from 'ava';
import { nodeProcessFlags, nodeProcessV8Flags } from '../../src/cli/processes.js';

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
