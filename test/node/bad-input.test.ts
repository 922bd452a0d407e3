/**
 * bad-input: the operator interface refuses bad requests with a clear message, a stable error
 * code and exit status 2, and changes nothing — checked by comparing the volume list, the member
 * list and every replica's state hash before and after the whole series of bad requests.
 */

import test from 'ava';
import { LocalCluster, chard } from '../helpers/local-cluster.js';

test('bad input gets a coded error and changes nothing', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 3 });
  t.teardown(() => cluster.stop());
  const dir = ['--dir', cluster.dir];
  t.is((await chard(['volume', 'create', 'data1', '--size', '8MiB', ...dir])).code, 0);
  const before = {
    volumes: (await chard(['volume', 'list', '--json', ...dir])).stdout,
    members: JSON.parse((await chard(['member', 'list', '--json', ...dir])).stdout).map((m: { id: number; role: string }) => `${m.id}:${m.role}`),
    verify: JSON.parse((await cluster.verify()).stdout),
  };

  const cases: { args: string[]; code: string }[] = [
    { args: ['volume', 'resize', 'nope', '--size', '8MiB'], code: 'NOT_FOUND' },
    { args: ['volume', 'delete', 'nope'], code: 'NOT_FOUND' },
    { args: ['volume', 'create', 'data1', '--size', '8MiB'], code: 'ALREADY_EXISTS' },
    { args: ['volume', 'create', 'bad/name', '--size', '8MiB'], code: 'INVALID_ARGUMENT' },
    { args: ['volume', 'create', 'x'.repeat(65), '--size', '8MiB'], code: 'INVALID_ARGUMENT' },
    { args: ['volume', 'create', 'odd', '--size', '1000'], code: 'INVALID_ARGUMENT' },
    { args: ['volume', 'create', 'zero', '--size', '0'], code: 'INVALID_ARGUMENT' },
    { args: ['volume', 'create', 'huge', '--size', '9999TiB'], code: 'INVALID_ARGUMENT' },
    { args: ['volume', 'create', 'words', '--size', 'lots'], code: 'INVALID_ARGUMENT' },
    { args: ['member', 'add', '2', '--raft', '127.0.0.1:1'], code: 'ALREADY_EXISTS' },
    { args: ['member', 'add', '9', '--raft', 'not-an-address'], code: 'INVALID_ARGUMENT' },
    { args: ['member', 'add', '-3', '--raft', '127.0.0.1:1'], code: 'INVALID_ARGUMENT' },
    { args: ['member', 'promote', '2'], code: 'ALREADY_EXISTS' },
    { args: ['member', 'promote', '9'], code: 'NOT_FOUND' },
    { args: ['member', 'remove', '9'], code: 'NOT_FOUND' },
    { args: ['leader', 'transfer', '9'], code: 'FAILED_PRECONDITION' },
  ];
  for (const c of cases) {
    const result = await chard([...c.args, ...dir]);
    t.is(result.code, 2, `${c.args.join(' ')}: exit ${result.code} ${result.stderr}`);
    t.regex(result.stderr, new RegExp(`^chard: ${c.code}: .+`, 'm'), `${c.args.join(' ')}: ${result.stderr}`);
  }
  // An unknown cluster directory is a clear NOT_FOUND too.
  const missing = await chard(['status', '--dir', `${cluster.dir}/nowhere`]);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /NOT_FOUND: no cluster in/);

  const after = {
    volumes: (await chard(['volume', 'list', '--json', ...dir])).stdout,
    members: JSON.parse((await chard(['member', 'list', '--json', ...dir])).stdout).map((m: { id: number; role: string }) => `${m.id}:${m.role}`),
    verify: JSON.parse((await cluster.verify()).stdout),
  };
  t.is(after.volumes, before.volumes);
  t.deepEqual(after.members, before.members);
  t.true(after.verify.equal);
  t.deepEqual(
    after.verify.replicas.map((r: { hash: string }) => r.hash)[0],
    before.verify.replicas.map((r: { hash: string }) => r.hash)[0],
    'state hash unchanged by refused requests',
  );
});

test('removing the last voter is refused', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 1 });
  t.teardown(() => cluster.stop());
  const result = await chard(['member', 'remove', '1', '--dir', cluster.dir]);
  t.is(result.code, 2, result.stderr);
  t.regex(result.stderr, /^chard: FAILED_PRECONDITION: .+/m);
  const status = JSON.parse((await chard(['status', '--json', '--dir', cluster.dir])).stdout);
  t.is(status.leader, 1);
});
