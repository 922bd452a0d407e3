/**
 * whole-device-trim (issue 11 h): what mkfs does first — a TRIM of a whole 4 GiB device, then a
 * WRITE_ZEROES of all of it — on a real 3-node cluster whose volume holds 64 MiB of dense blocks,
 * while a reader keeps reading through the leader: every read is answered without error, and the
 * device reads as zeros afterwards; whether the leader kept its term is logged.
 * Before the fix each was one apply deleting every row of the range on every replica at once. With
 * 64 MiB of data that one apply is ~60 ms, too short to cost a leadership: the failure needs a
 * device full of blocks (a million rows), which takes minutes to write, so the test that fails on
 * the old code is volume-zero-pieces (one command per 64 MiB of range, 16 for 1 GiB, 1 before);
 * this one checks the behaviour end to end on a real cluster.
 */
import test from 'ava';
import { Command } from '../../src/nbd/protocol.js';
import { LocalCluster } from '../helpers/local-cluster.js';
import { RawClient } from '../helpers/nbd-raw-client.js';

const MiB = 1024 * 1024;
const deviceBytes = 4096 * MiB;

function port(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

test('a whole-device TRIM and WRITE_ZEROES keep the leader and every concurrent read answered', async (t) => {
  const cluster = await LocalCluster.start({ volumeSize: '4GiB' });
  t.teardown(() => cluster.stop());
  const leader = await cluster.leader();
  const nbdPort = port(cluster.node(leader).nbd);
  const writer = await RawClient.connect(nbdPort);
  await writer.go('default', { structured: false });
  for (let i = 0; i < 64; i++) writer.request({ type: Command.write, handle: i + 1, offset: i * MiB, payload: Buffer.alloc(MiB, 0x6d) });
  for (let i = 0; i < 64; i++) t.is((await writer.reply()).errno, 0);
  const termBefore = (await cluster.api(leader).status()).term;

  const reader = await RawClient.connect(nbdPort);
  await reader.go('default', { structured: false });
  let reading = true;
  const latencies: number[] = [];
  const errors: number[] = [];
  const readLoop = (async () => {
    for (let handle = 1; reading; handle++) {
      const started = performance.now();
      reader.request({ type: Command.read, handle, offset: (handle % 16384) * 4096, lengthBytes: 4096 });
      const r = await reader.simpleReply(4096);
      latencies.push(performance.now() - started);
      if (r.errno !== 0) errors.push(r.errno);
    }
  })();

  const started = performance.now();
  // NBD lengths are 32-bit: the whole device is two requests of 2 GiB each, as mkfs may send.
  for (const [type, name] of [
    [Command.trim, 'TRIM'],
    [Command.writeZeroes, 'WRITE_ZEROES'],
  ] as const) {
    for (let half = 0; half < 2; half++) {
      writer.request({ type, handle: 1000 + half, offset: half * (deviceBytes / 2), lengthBytes: deviceBytes / 2 });
      t.is((await writer.read(16, 120_000)).readUInt32BE(4), 0, `${name} of half ${half} succeeded`);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  reading = false;
  await readLoop;

  // Leadership is reported, not asserted: on a loaded 2-core CI machine an election can happen
  // during any 10 s window (one CI run saw node 2 take over here), and this test cannot yet tell
  // such an election from one the trim caused (see the issue 11 note).
  const status = await cluster.api(leader).status();
  t.log(`leader before ${leader} (term ${termBefore}), after ${await cluster.leader()} (term ${status.term})`);
  t.deepEqual(errors, [], 'every concurrent read was answered without error');
  t.true(latencies.length > 0);
  latencies.sort((a, b) => a - b);
  t.log(`whole-device TRIM + WRITE_ZEROES of 4 GiB in ${seconds.toFixed(1)} s; ${latencies.length} concurrent reads, p50 ${latencies[Math.floor(latencies.length / 2)]!.toFixed(1)} ms, max ${latencies[latencies.length - 1]!.toFixed(1)} ms`);
  writer.request({ type: Command.read, handle: 2000, offset: 10 * MiB, lengthBytes: 4096 });
  const r = await writer.simpleReply(4096);
  t.true(r.errno === 0 && r.data.every((b) => b === 0), 'the device reads as zeros');
  writer.close();
  reader.close();
});
