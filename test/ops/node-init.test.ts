/**
 * node-init: `chard node init --out FILE` writes the config of a node that has its host to itself;
 * without an explicit NBD port it uses NBD's usual port 10809 (and the well-known raft, admin and
 * metrics ports), the file passes the node config validation, and missing flags are named.
 */

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { validateNodeConfig } from '../../src/node/config.js';
import { chard } from '../helpers/local-cluster.js';

test('node init --out: NBD on 10809 by default, every member on the same ports', async (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-ops-init-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'node.json');
  const r = await chard(['node', 'init', '--out', file, '--id', '2', '--cluster-id', 'chard-prod', '--host', 'host-b', '--members', '1=host-a,2=host-b,3=10.0.0.3']);
  t.is(r.code, 0, r.stderr);
  const config = validateNodeConfig(JSON.parse(readFileSync(file, 'utf8')));
  t.deepEqual(config.listen, { raft: 'host-b:7401', admin: 'host-b:7402', nbd: 'host-b:10809' });
  t.is(config.metrics, 'host-b:9101');
  t.is(config.initialMembers?.['3']?.nbd, '10.0.0.3:10809');
  t.is(config.dataDir, '/var/lib/chard');

  const again = await chard(['node', 'init', '--out', file, '--id', '2', '--cluster-id', 'chard-prod', '--host', 'host-b', '--members', '1=host-a']);
  t.is(again.code, 2, 'an existing file is not overwritten');

  const joining = path.join(dir, 'join.json');
  const j = await chard(['node', 'init', '--out', joining, '--id', '4', '--cluster-id', 'chard-prod', '--host', 'host-d', '--members', '1=host-a,2=host-b,3=10.0.0.3', '--join', '--nbd-port', '10810']);
  t.is(j.code, 0, j.stderr);
  const jc = validateNodeConfig(JSON.parse(readFileSync(joining, 'utf8')));
  t.true(jc.join);
  t.is(jc.listen.nbd, 'host-d:10810', 'an explicit --nbd-port wins');
  t.is(jc.peers?.['1']?.raft, 'host-a:7401');

  const missing = await chard(['node', 'init', '--out', path.join(dir, 'x.json'), '--id', '1', '--host', 'h', '--members', '1=h']);
  t.is(missing.code, 2);
  t.regex(missing.stderr, /needs --cluster-id/);
  const bad = await chard(['node', 'init', '--out', path.join(dir, 'y.json'), '--id', '1', '--cluster-id', 'c', '--host', 'h', '--members', '1=h', '--nbd-port', '99999']);
  t.regex(bad.stderr, /--nbd-port must be a port 1\.\.65535/);
});
