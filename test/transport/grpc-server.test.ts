// grpc-server: proves the admin/client RPC plumbing over loopback: chard.proto loads with every
// Admin and Block method; a handler's response reaches callUnary (uint64 fields as numbers); a
// thrown NotLeaderError arrives as UNAVAILABLE + chard-code NOT_LEADER and is rebuilt as a
// NotLeaderError carrying the leader id and address; usage, remote, corrupt and unknown errors
// keep their class and code; a method without a handler answers UNIMPLEMENTED; a dead address
// becomes a RemoteError (UNAVAILABLE), never a raw gRPC error.
import * as grpc from '@grpc/grpc-js';
import test from 'ava';
import {
  ChardError,
  CorruptError,
  ErrorCode,
  InternalError,
  NotLeaderError,
  RemoteError,
  UsageError,
} from '../../src/errors.js';
import {
  adminMethods,
  blockMethods,
  buildChardServer,
  callUnary,
  createChardClient,
  errorToStatus,
  listen,
  statusToError,
  wireInteger,
} from '../../src/transport/grpc-server.js';
import { loadProto } from '../../src/transport/proto.js';

test('chard.proto defines every Admin and Block method', (t) => {
  const definition = loadProto('chard.proto');
  t.deepEqual(Object.keys(definition['chard.v1.Admin'] as object).sort(), [...adminMethods].sort());
  t.deepEqual(Object.keys(definition['chard.v1.Block'] as object).sort(), [...blockMethods].sort());
});

test('responses and ChardErrors cross the wire with class, code and leader hint', async (t) => {
  const internalErrors: unknown[] = [];
  const events: string[] = [];
  const server = buildChardServer(
    {
      Admin: {
        Status: () => ({ cluster_id: 'c1', node_id: 3, role: 'leader', term: 7, commit_index: 2 ** 40 }),
        VolumeCreate: () => {
          throw new NotLeaderError(2, '127.0.0.1:7001');
        },
        VolumeDelete: async () => {
          throw new UsageError(ErrorCode.NotFound, 'no volume "v9"');
        },
        VolumeList: () => {
          throw new RemoteError(ErrorCode.Timeout, 'slow quorum');
        },
        Verify: () => {
          throw new CorruptError('block 7 checksum');
        },
        MemberList: () => {
          throw new TypeError('a bug');
        },
        LeaderTransfer: () => {
          throw new NotLeaderError(0);
        },
      },
      Block: {
        Write: (request: { session: { session_id: string; sequence: number }; data: Uint8Array }) => ({
          applied_index: request.session.sequence + request.data.length,
        }),
      },
    },
    { onInternalError: (error) => internalErrors.push(error), onEvent: (name) => events.push(name) },
  );
  const address = await listen(server, '127.0.0.1:0');
  const admin = createChardClient('Admin', address);
  const block = createChardClient('Block', address);
  try {
    const status = await callUnary<{ node_id: number; role: string; commit_index: number }>(admin, 'Status', {});
    t.is(status.node_id, 3);
    t.is(status.role, 'leader');
    t.is(status.commit_index, 2 ** 40);

    const write = await callUnary<{ applied_index: number }>(block, 'Write', {
      volume: 'v',
      session: { session_id: 's1', sequence: 5 },
      offset: 0,
      data: new Uint8Array(4096),
    });
    t.is(write.applied_index, 5 + 4096);

    const notLeader = await t.throwsAsync(callUnary(admin, 'VolumeCreate', { name: 'v', size_bytes: 1 }), { instanceOf: NotLeaderError });
    t.is(notLeader?.leaderId, 2);
    t.is(notLeader?.leaderAddress, '127.0.0.1:7001');
    t.is(notLeader?.code, ErrorCode.NotLeader);

    const unknownLeader = await t.throwsAsync(callUnary(admin, 'LeaderTransfer', {}), { instanceOf: NotLeaderError });
    t.is(unknownLeader?.leaderId, 0);
    t.is(unknownLeader?.leaderAddress, undefined);

    const notFound = await t.throwsAsync(callUnary(admin, 'VolumeDelete', { name: 'v9' }), { instanceOf: UsageError });
    t.is(notFound?.code, ErrorCode.NotFound);
    t.regex(notFound?.message ?? '', /no volume "v9"/);

    const timeout = await t.throwsAsync(callUnary(admin, 'VolumeList', {}), { instanceOf: RemoteError });
    t.is(timeout?.code, ErrorCode.Timeout);

    const corrupt = await t.throwsAsync(callUnary(admin, 'Verify', {}), { instanceOf: CorruptError });
    t.is(corrupt?.code, ErrorCode.Corrupt);

    const internal = await t.throwsAsync(callUnary(admin, 'MemberList', {}), { instanceOf: InternalError });
    t.is(internal?.code, ErrorCode.Internal);
    t.notRegex(internal?.message ?? '', /a bug/, 'no internal detail on the wire');
    t.is(internalErrors.length, 1);

    const unimplemented = await t.throwsAsync(callUnary(admin, 'MemberAdd', { id: 4 }), { instanceOf: UsageError });
    t.is(unimplemented?.code, ErrorCode.FailedPrecondition);
    t.true(events.includes('grpc.Admin.Status.ok') && events.includes('grpc.Admin.VolumeCreate.error'));
  } finally {
    admin.close();
    block.close();
    server.forceShutdown();
  }
});

test('a dead address is a RemoteError, not a raw gRPC error', async (t) => {
  // Bind then shut down a server, so the port is known to be closed (no fixed port).
  const server = buildChardServer({ Admin: {} });
  const address = await listen(server, '127.0.0.1:0');
  server.forceShutdown();
  const admin = createChardClient('Admin', address);
  try {
    const error = await t.throwsAsync(callUnary(admin, 'Status', {}, { timeoutMs: 2000 }), { instanceOf: RemoteError });
    t.true(error?.code === ErrorCode.Unavailable || error?.code === ErrorCode.Timeout, error?.code);
  } finally {
    admin.close();
  }
});

test('error mapping is its own inverse for every ErrorCode', (t) => {
  for (const code of Object.values(ErrorCode)) {
    const original = code === ErrorCode.NotLeader ? new NotLeaderError(5, 'h:1') : new ChardError(code, `x ${code}`);
    const status = errorToStatus(original);
    const back = statusToError(Object.assign(new Error(status.details), status) as grpc.ServiceError);
    t.is(back.code, code, code);
    t.true(back instanceof ChardError);
  }
  t.is(wireInteger(7, 'f'), 7);
  t.throws(() => wireInteger(-1, 'f'), { instanceOf: UsageError });
  t.throws(() => wireInteger(2 ** 60, 'f'), { instanceOf: UsageError });
});

test('a client channel retries a dead address at the raft link backoff, not at grpc-js defaults', async (t) => {
  // The port stays ours through the outage: a plain TCP server that drops every connection, so
  // each of the channel's attempts fails and its backoff grows, as toward a dead node; the
  // server counts the attempts. grpc-js's own backoff (1 s growing by 1.6x to 120 s, jitter 20 %)
  // tries at about 0, 1, 2.6, 5.2, 9.4, 16, 27 and 44 s: its 8th attempt comes after 34 s at the
  // earliest, and after a 10 s outage a client first reached a restarted node 3-12 s late. With
  // clientChannelOptions (50 ms growing 1.6x to 500 ms) the 8th attempt comes after ~2 s. The
  // outage lasts until 8 attempts were counted, which must take well under those 34 s (it was a
  // fixed 5 s outage that had to hold 8 attempts: a count that a loaded machine could miss). Then a
  // chard server takes the port and a call succeeds.
  const { createServer } = await import('node:net');
  let attempts = 0;
  const dropper = createServer((socket) => {
    attempts++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => dropper.listen(0, '127.0.0.1', resolve));
  const port = (dropper.address() as { port: number }).port;
  const admin = createChardClient('Admin', `127.0.0.1:${port}`);
  const server = buildChardServer({ Admin: { Status: () => ({ cluster_id: 'c1', node_id: 1 }) } });
  const retry = () => new Promise((resolve) => setTimeout(resolve, 100));
  try {
    const attemptsWanted = 8;
    const outageMsMax = 20_000;
    const started = performance.now();
    while (attempts < attemptsWanted && performance.now() - started < 2 * outageMsMax) {
      await callUnary(admin, 'Status', {}, { timeoutMs: 500 }).then(
        () => t.fail('a call succeeded during the outage'),
        () => undefined,
      );
      await retry();
    }
    const outageMs = performance.now() - started;
    const during = attempts;
    await new Promise<void>((resolve) => dropper.close(() => resolve()));
    await listen(server, `127.0.0.1:${port}`);
    const upAt = performance.now();
    let ok = false;
    while (!ok) {
      ok = await callUnary(admin, 'Status', {}, { timeoutMs: 500 }).then(
        () => true,
        () => false,
      );
      if (!ok && performance.now() - upAt > 30_000) throw new Error('no reconnect within 30 s');
      if (!ok) await retry();
    }
    t.log(`${during} connection attempts in a ${outageMs.toFixed(0)} ms outage; first success ${(performance.now() - upAt).toFixed(0)} ms after the server was back`);
    t.true(during >= attemptsWanted && outageMs < outageMsMax, `${during} connection attempts in ${outageMs.toFixed(0)} ms (grpc-js defaults need 34 s or more for ${attemptsWanted})`);
  } finally {
    admin.close();
    server.forceShutdown();
    dropper.close();
  }
});
