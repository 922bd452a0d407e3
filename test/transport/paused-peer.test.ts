// paused-peer: a peer process stopped (SIGSTOP) for longer than the keepalive timeout and then
// continued must reconnect and carry traffic again with bounded memory. While it is stopped, the
// sender's links to it fall silent and fail by keepalive (ping after keepaliveTimeMs, fail after
// keepaliveTimeMs + keepaliveTimeoutMs), its queue and socket buffers stay bounded, and
// reconnects time out at the Hello; on resume the child's own timers find its links silent, tear
// them down and reconnect. Found by `chard chaos --faults pause` against the former gRPC
// transport, where cancelling a stream inside grpc-js's teardown made Node 20's HTTP/2 session
// loop in SendPendingData (100 % CPU, resident memory growing by hundreds of MiB per second): the
// child's memory bound and the answers after the resume are what this test checks.
import { fork } from 'node:child_process';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { type Message, message } from '../../src/raft/types.js';
import { StreamTransport } from '../../src/transport/stream-transport.js';
import { until } from '../helpers/until.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const childScript = fileURLToPath(new URL('./paused-peer-child.js', import.meta.url));
/** rssMaxMiB: far above the child's ~100 MiB; the runaway passes it within a second or two. */
const rssMaxMiB = 600;

function rssMiB(pid: number): number {
  const match = /VmRSS:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return match ? Number(match[1]) / 1024 : 0;
}

for (const pauseMs of [3000, 6000]) {
  test.serial(`a peer paused ${pauseMs} ms (keepalive 1 s) reconnects with bounded memory`, async (t) => {
    const keepaliveMs = 1000;
    const transport = new StreamTransport({
      clusterId: 'paused',
      nodeId: 1,
      listen: '127.0.0.1:0',
      limits: { keepaliveTimeMs: keepaliveMs, keepaliveTimeoutMs: keepaliveMs, reconnectBackoffMsMin: 20, reconnectBackoffMsMax: 200 },
    });
    const received: Message[] = [];
    transport.onMessage((m) => received.push(m));
    await transport.start();
    const child = fork(childScript, [transport.address(), String(keepaliveMs)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    t.teardown(async () => {
      child.kill('SIGKILL');
      await transport.close();
    });
    const { address } = await new Promise<{ address: string }>((resolve, reject) => {
      child.once('message', (m) => resolve(m as { address: string }));
      child.once('exit', (code) => reject(new Error(`child exited with ${code}`)));
    });
    transport.addPeer(2, address);
    let index = 0;
    const data = new Uint8Array(4096);
    const sender = setInterval(() => {
      const batch: Message[] = [];
      for (let i = 0; i < 20; i++) {
        index++;
        batch.push(message({ type: 'App', from: 1, to: 2, term: 1, index, entries: [{ term: 1, index: index + 1, type: 0, data }] }));
      }
      transport.send(batch);
    }, 5);
    t.teardown(() => clearInterval(sender));

    // Wait for traffic (a fixed 1.5 s had to be enough for the child to connect back on a loaded
    // machine); the deadline is only for a hang.
    await until(t, 'traffic before the pause', () => received.length > 100, 60_000);
    const beforePause = received.length;
    t.true(beforePause > 100, `traffic flows before the pause (${beforePause} answers)`);
    const pid = child.pid!;
    process.kill(pid, 'SIGSTOP');
    await sleep(pauseMs);
    process.kill(pid, 'SIGCONT');
    const resumed = received.length;

    // Watch the child's memory for 6 s after SIGCONT (the runaway passed the bound within a second
    // or two), and on until 1000 answers came back: how many arrive in a fixed 6 s depended on the
    // machine's speed. The deadline is only for a hang.
    let peakMiB = 0;
    const resumedAt = performance.now();
    while (performance.now() < resumedAt + 6000 || (received.length - resumed <= 1000 && performance.now() < resumedAt + 60_000)) {
      await sleep(200);
      peakMiB = Math.max(peakMiB, rssMiB(pid));
      if (peakMiB > rssMaxMiB) break;
    }
    const after = received.length - resumed;
    t.log(`pause ${pauseMs} ms: ${beforePause} answers before, ${after} in the ${((performance.now() - resumedAt) / 1000).toFixed(1)} s after SIGCONT, child peak RSS ${peakMiB.toFixed(0)} MiB`);
    t.true(peakMiB <= rssMaxMiB, `child resident memory stays bounded (peak ${peakMiB.toFixed(0)} MiB)`);
    t.true(after > 1000, `answers flow again after the resume (${after})`);
  });
}
