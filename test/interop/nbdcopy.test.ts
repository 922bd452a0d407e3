// Proves bulk data survives a round trip through the chard NBD server with a real multi-connection
// client: nbdcopy (libnbd) copies a 256 MiB random image in and back out over 4 connections each,
// and both the copy and the server's own view are byte-identical (sha256) to the source.

import test from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startTarget } from '../helpers/nbd-target.js';
import { requireTools, run, timed } from '../helpers/nbd-tools.js';

const MiB = 1024 * 1024;
const imageBytes = 256 * MiB;

async function sha256File(path: string, bytes: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path, { start: 0, end: bytes - 1 })) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

async function writeRandomImage(path: string): Promise<void> {
  // Deterministic pseudo-random content (xorshift), 1 MiB at a time.
  const f = await open(path, 'w');
  let x = 0x9e3779b9;
  const block = Buffer.alloc(MiB);
  for (let written = 0; written < imageBytes; written += MiB) {
    for (let i = 0; i < MiB; i += 4) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      block.writeInt32LE(x | 0, i);
    }
    await f.write(block, 0, MiB);
  }
  await f.close();
}

/**
 * copyWithConnections runs nbdcopy with 4 connections and returns how many it says it used.
 * nbdcopy caps connections at --threads (default: the number of cores, 2 here), and drops to one
 * connection unless the server advertises CAN_MULTI_CONN; `-v` prints the number it settled on.
 */
async function copyWithConnections(from: string, to: string): Promise<number> {
  const { stderr } = await run('nbdcopy', ['-v', '--threads=4', '--connections=4', '--requests=16', from, to], { timeoutMs: 90_000 });
  const m = /^nbdcopy: connections=(\d+) /m.exec(stderr);
  if (!m) throw new Error(`nbdcopy -v did not report its connections:\n${stderr}`);
  return Number(m[1]);
}

test('nbdcopy 256 MiB in and out over 4 connections is byte-identical', async (t) => {
  if (!requireTools(t, ['nbdcopy'])) return;
  const dir = await mkdtemp(join(tmpdir(), 'chard-nbdcopy-'));
  const target = await startTarget();
  try {
    const source = join(dir, 'source.img');
    const back = join(dir, 'back.img');
    await writeRandomImage(source);
    const expected = await sha256File(source, imageBytes);
    const handshakes = () => target.counters?.().handshakesCompleted ?? 0;
    const before = handshakes();
    const connectionsIn = await timed(t, 'nbdcopy in (256 MiB, 4 connections)', () => copyWithConnections(source, target.uri('disk')));
    const afterIn = handshakes();
    const connectionsOut = await timed(t, 'nbdcopy out (512 MiB export, 4 connections)', () => copyWithConnections(target.uri('disk'), back));
    // nbdcopy uses 1 connection when CAN_MULTI_CONN is missing (checked by hand against
    // `nbdkit --filter=multi-conn memory 512M multi-conn-mode=disable`: connections=1).
    t.is(connectionsIn, 4, 'multi-conn used for writing');
    t.is(connectionsOut, 4, 'multi-conn used for reading');
    if (target.counters) {
      t.is(afterIn - before, 4, 'the server saw 4 connections for the copy in');
      t.is(handshakes() - afterIn, 4, 'the server saw 4 connections for the copy out');
    }
    t.is(await sha256File(back, imageBytes), expected, 'copied back byte-identical');
    if (target.backend) {
      const hash = createHash('sha256');
      const exp = target.backend.export('disk');
      for (let at = 0; at < imageBytes; at += 16 * MiB) hash.update(exp.readBytes(at, 16 * MiB));
      t.is(hash.digest('hex'), expected, 'server holds the same bytes');
    }
  } finally {
    await target.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
