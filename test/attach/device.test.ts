/**
 * device: `chard attach --device /dev/nbd0` on the host. Where the nbd kernel module cannot be
 * loaded (these CI hosts), it must refuse with FAILED_PRECONDITION, say why, and show the
 * FUSE + loop alternative; nothing keeps running. Where the module exists, it must really attach
 * the device (the kernel reports a client pid for it) and `chard detach` must undo it.
 */

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import test from 'ava';
import { nbdModuleAvailable } from '../../src/attach/command.js';
import { LocalCluster, chard, cliPath } from '../helpers/local-cluster.js';

test('attach --device: a clear refusal without the nbd module, a real attach with it', async (t) => {
  const cluster = await LocalCluster.start({ nodes: 1, volumeSize: '16MiB' });
  t.teardown(() => cluster.stop());
  const module = await nbdModuleAvailable();
  if (!module.ok) {
    const result = await chard(['attach', '--dir', cluster.dir, '--volume', 'default', '--device', '/dev/nbd0']);
    t.is(result.code, 2, result.stderr);
    t.regex(result.stderr, /^chard: FAILED_PRECONDITION: cannot attach \/dev\/nbd0: .*nbd kernel module/m);
    t.regex(result.stderr, /nbdfuse/);
    t.regex(result.stderr, /losetup/);
    t.log(`no nbd module here (${module.reason}); the refusal names the alternative`);
    return;
  }
  const agent = spawn(process.execPath, [cliPath, 'attach', '--dir', cluster.dir, '--volume', 'default', '--device', '/dev/nbd0', '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.teardown(() => {
    agent.kill('SIGTERM');
  });
  const deadline = Date.now() + 30_000;
  while (!existsSync('/sys/block/nbd0/pid') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  t.true(existsSync('/sys/block/nbd0/pid'), 'the kernel attached /dev/nbd0');
  t.log(`nbd0 client pid ${readFileSync('/sys/block/nbd0/pid', 'utf8').trim()}`);
  const detached = await chard(['detach', '/dev/nbd0']);
  t.is(detached.code, 0, detached.stderr);
});
