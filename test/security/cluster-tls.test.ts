// cluster-tls: a real local cluster started with `chard cluster up --tls` (certificates made in
// DIR/certs): status over mutual TLS, a volume written and read back over nbds:// by qemu-io,
// plaintext NBD refused, admin calls without a client certificate of the cluster CA refused
// (plaintext, no certificate, another CA's certificate), and a node whose certificates another CA
// signed cannot join: added as a learner, it never receives a single entry.
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { mkdtempSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import { certsInit } from '../../src/cli/certs.js';
import { AttachAgent } from '../../src/attach/agent.js';
import { NodeApi, defaultClientLimits } from '../../src/cli/client.js';
import type { ClusterFile } from '../../src/cli/cluster-file.js';
import { ErrorCode } from '../../src/errors.js';
import { clientCredentials, loadCerts } from '../../src/transport/tls.js';
import { chard } from '../helpers/local-cluster.js';
import { requireTools, run } from '../helpers/nbd-tools.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

test.serial('cluster up --tls: status, nbds:// write + read, strangers refused on admin and NBD, a foreign-CA node cannot join', async (t) => {
  if (!requireTools(t, ['qemu-io', 'nbdinfo'])) return;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-sec-cluster-'));
  const foreign = path.join(dir, 'foreign-certs');
  try {
    const up = await chard(['cluster', 'up', '--tls', '--detach', '--json', '--nodes', '3', '--dir', dir, '--volume-size', '64MiB']);
    t.is(up.code, 0, up.stderr);
    const file = JSON.parse(up.stdout) as ClusterFile;
    const certs = path.join(dir, 'certs');
    t.deepEqual(file.tls, { certs });
    const nodeConfig = JSON.parse(readFileSync(path.join(dir, 'n1', 'node.json'), 'utf8')) as { tls?: unknown };
    t.deepEqual(nodeConfig.tls, { certs, nbd: 'required' });

    // status over mutual TLS names a leader (exit 1 while none is known: wait for one, as an
    // election may be under way on a loaded machine; the deadline is only for a real hang).
    const statusDeadline = Date.now() + 60_000;
    let status = await chard(['status', '--dir', dir, '--json']);
    while (status.code !== 0 && Date.now() < statusDeadline) {
      await sleep(200);
      status = await chard(['status', '--dir', dir, '--json']);
    }
    t.is(status.code, 0, status.stderr);
    t.true((JSON.parse(status.stdout) as { leader: number }).leader > 0);

    const n2 = file.nodes[1]!;
    const [host, port] = [n2.nbd.slice(0, n2.nbd.lastIndexOf(':')), n2.nbd.slice(n2.nbd.lastIndexOf(':') + 1)];
    const io = await run('qemu-io', [
      '--object', `tls-creds-x509,id=tls0,dir=${certs},endpoint=client`,
      '--image-opts', `driver=nbd,host=${host},port=${port},export=default,tls-creds=tls0`,
      '-c', 'write -P 0x5c 1M 1M', '-c', 'read -P 0x5c 1M 1M',
    ], { allowFailure: true, timeoutMs: 60_000 });
    t.is(io.code, 0, io.stderr + io.stdout);
    t.regex(io.stdout, /read 1048576\/1048576 bytes/);
    // Read back through another node, over nbds:// with libnbd.
    const n3 = file.nodes[2]!;
    const back = await run('qemu-io', [
      '--object', `tls-creds-x509,id=tls0,dir=${certs},endpoint=client`,
      '--image-opts', `driver=nbd,host=127.0.0.1,port=${n3.nbd.split(':')[1]},export=default,tls-creds=tls0`,
      '-c', 'read -P 0x5c 1M 1M',
    ], { allowFailure: true, timeoutMs: 60_000 });
    t.is(back.code, 0, back.stderr + back.stdout);
    t.notRegex(back.stdout, /Pattern verification failed/);
    const info = await run('nbdinfo', [`nbds://${n3.nbd}/default?tls-certificates=${certs}`], { allowFailure: true });
    t.is(info.code, 0, info.stderr);
    const plain = await run('nbdinfo', [`nbd://${n3.nbd}/default`], { allowFailure: true });
    t.not(plain.code, 0, 'plaintext NBD refused');

    // The attach agent reaches the TLS cluster with --certs (its client credentials) and serves
    // the volume locally; what qemu-io wrote over nbds:// reads back through it.
    const agent = await AttachAgent.start({
      cluster: file.nodes.map((n) => ({ id: n.id, admin: n.admin })),
      credentials: clientCredentials(certs),
      volume: 'default',
      listen: { host: '127.0.0.1', port: 0 },
    });
    try {
      const where = agent.address as { host: string; port: number };
      const viaAgent = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5c 1M 1M', `nbd://127.0.0.1:${where.port}/default`], { allowFailure: true, timeoutMs: 60_000 });
      t.is(viaAgent.code, 0, viaAgent.stderr + viaAgent.stdout);
      t.notRegex(viaAgent.stdout, /Pattern verification failed/);
    } finally {
      await agent.close();
    }

    // Admin RPC without a client certificate of the cluster CA: refused.
    certsInit({ dir: foreign });
    const ca = loadCerts(certs, 'client').ca;
    const other = loadCerts(foreign, 'client');
    const strangers: [string, grpc.ChannelCredentials][] = [
      ['plaintext', grpc.credentials.createInsecure()],
      ['no client certificate', grpc.credentials.createSsl(ca)],
      ['another CA', grpc.credentials.createSsl(ca, other.key, other.cert)],
    ];
    for (const [name, credentials] of strangers) {
      const api = new NodeApi(file.nodes[0]!.admin, credentials, defaultClientLimits);
      try {
        const error = await t.throwsAsync(api.status(3000), undefined, name);
        t.true(error?.message !== undefined && ([ErrorCode.Unavailable, ErrorCode.Timeout] as string[]).includes((error as { code?: ErrorCode }).code!), `${name}: ${error?.message}`);
      } finally {
        api.close();
      }
    }
    const trusted = new NodeApi(file.nodes[0]!.admin, clientCredentials(certs), defaultClientLimits);
    t.is((await trusted.status(5000)).id, 1);
    trusted.close();
    const noCerts = await chard(['status', '--cluster', file.nodes[0]!.admin, '--json']);
    t.is(JSON.parse(noCerts.stdout).nodes[0].reachable, false, 'the CLI without --certs does not get in');
    const withCerts = await chard(['status', '--cluster', file.nodes[0]!.admin, '--certs', certs, '--json']);
    t.is(JSON.parse(withCerts.stdout).nodes[0].reachable, true, withCerts.stderr);

    // A node with another CA's certificates: added as a learner, it never receives an entry.
    const init = await chard(['node', 'init', '--dir', dir, '--id', '4', '--json']);
    t.is(init.code, 0, init.stderr);
    const n4 = JSON.parse(init.stdout) as { raft: string; admin: string; nbd: string };
    const n4Config = path.join(dir, 'n4', 'node.json');
    const config = JSON.parse(readFileSync(n4Config, 'utf8')) as { tls: { certs: string } };
    t.is(config.tls.certs, certs, 'node init copies the tls block');
    config.tls.certs = foreign;
    writeFileSync(n4Config, JSON.stringify(config));
    t.is((await chard(['node', 'start', '--dir', dir, '--id', '4'])).code, 0);
    const add = await chard(['member', 'add', '4', '--raft', n4.raft, '--admin', n4.admin, '--nbd', n4.nbd, '--learner', '--dir', dir]);
    t.is(add.code, 0, add.stderr);
    await sleep(3000);
    const members = await chard(['member', 'list', '--dir', dir, '--json']);
    t.is(members.code, 0, members.stderr);
    const learner = (JSON.parse(members.stdout) as { id: number; match: number }[]).find((m) => m.id === 4);
    t.is(learner?.match, 0, 'the foreign node received nothing');
    const n4Api = new NodeApi(n4.admin, clientCredentials(foreign), defaultClientLimits);
    const n4Status = await n4Api.status(5000);
    n4Api.close();
    t.is(n4Status.lastIndex, 0, 'its log is empty');
    t.is(n4Status.leader, 0, 'it never heard from the leader');
  } finally {
    await chard(['cluster', 'down', '--dir', dir]);
    rmSync(dir, { recursive: true, force: true });
  }
});
