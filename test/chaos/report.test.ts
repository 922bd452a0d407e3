// report: renderReport produces one self-contained HTML file (no scripts, no external resources,
// hostile strings escaped) with the verdict, fault windows, leader marks, stall table and the
// violation's ops; and the file renders in headless Chromium to a non-blank screenshot (decoded
// here with node:zlib: size, pixel variety, the red FAIL banner), saved under artifacts/chaos/.
// Chromium is Debian's `chromium`; when it is missing the test fails under CI=true, else skips.
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { inflateSync } from 'node:zlib';
import { checkHistory } from '../../src/chaos/linearizability.js';
import { appendFinalReads, checkConvergence, checkLeaders, checkNoAckedWriteLost, failoverStalls } from '../../src/chaos/checks.js';
import { renderReport, type ReportResults } from '../../src/chaos/report.js';
import type { HistoryEvent } from '../../src/chaos/history.js';
import { HistoryBuilder, xorshift32 } from './builder.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifactsDir = path.resolve(here, '../../../artifacts/chaos');

/**
 * runHistory: 20 s of 8 processes writing/reading 30 keys, a partition (5–8 s) during which ops
 * time out or fail, a leader kill (12–13 s) with a 600 ms stall, leader changes, and one stale read.
 */
function runHistory(): { events: HistoryEvent[]; finalReads: { key: string; value: string | null }[] } {
  const random = xorshift32(11);
  const h = new HistoryBuilder();
  const latest = new Map<string, string>();
  let tag = 0;
  h.leader(1, 1, 0).fault('partition', 5000, 8000, 'n1 | n2 n3 <script>').leader(2, 2, 5600).fault('kill-leader', 12000, 13000, 'node 2').leader(3, 3, 12600);
  // Ops are generated in global call order and take effect at their call time (a valid
  // linearization): a write sets the register, a read returns it; failed and timed-out writes
  // are not applied.
  const nextTime = Array.from({ length: 8 }, () => random() * 20);
  for (;;) {
    const p = nextTime.indexOf(Math.min(...nextTime));
    const time = nextTime[p]!;
    if (time >= 20000) break;
    const key = `vol0/${Math.floor(random() * 30)}`;
    const inPartition = time > 5000 && time < 5600;
    const inKill = time > 12000 && time < 12600;
    const latency = inPartition || inKill ? 300 + random() * 400 : 2 + random() * 10;
    const end = time + latency;
    const outcome = inPartition ? (random() < 0.5 ? 'info' : 'fail') : inKill ? 'fail' : 'ok';
    if (random() < 0.5) {
      const value = `p${p}-${tag++}`;
      h.write(p, key, value, time, end, outcome);
      if (outcome === 'ok') latest.set(key, value);
    } else {
      h.read(p, key, outcome === 'ok' ? (latest.get(key) ?? null) : null, time, end, outcome);
    }
    nextTime[p] = end + random() * 30;
  }
  // One stale read: after a write to vol0/99 completed, a read returns the initial value.
  h.write('x', 'vol0/99', 'fresh', 15000, 15005).read('x', 'vol0/99', null, 15010, 15012);
  latest.set('vol0/99', 'fresh');
  return { events: h.build(), finalReads: [...latest].map(([key, value]) => ({ key, value })) };
}

function results(events: HistoryEvent[], finalReads: { key: string; value: string | null }[]): ReportResults {
  return {
    title: 'chaos: partition + leader kill (test fixture)',
    notes: ['seed=11 nodes=3'],
    linearizability: checkHistory(events),
    ackedWrites: checkNoAckedWriteLost(appendFinalReads(events, finalReads)),
    leaders: checkLeaders(events),
    stalls: failoverStalls(events),
    convergence: checkConvergence([
      { node: 1, appliedIndex: 900, hash: 'ab12' },
      { node: 2, appliedIndex: 900, hash: 'ab12' },
      { node: 3, appliedIndex: 900, hash: 'ab12' },
    ]),
  };
}

test('the HTML is self-contained and carries the verdict, faults, stalls and the violation', (t) => {
  const { events, finalReads } = runHistory();
  const r = results(events, finalReads);
  t.is(r.linearizability.verdict, 'violation');
  t.deepEqual(r.linearizability.keys.filter((k) => k.verdict !== 'ok').map((k) => k.key), ['vol0/99']);
  const html = renderReport(events, r);
  t.true(html.startsWith('<!DOCTYPE html>'));
  t.false(/<script|<link|<img|<iframe|@import|url\(/i.test(html), 'no scripts, no external resources');
  t.deepEqual([...new Set(html.match(/https?:\/\/[^"'\s<>]+/g) ?? [])], ['http://www.w3.org/2000/svg'], 'only the SVG namespace URI appears');
  t.true(/class="verdict fail"><div class="big">FAIL</.test(html), '/class="verdict fail"><div class="big">FAIL</');
  t.true(/>partition</.test(html), '/>partition</');
  t.true(/>kill-leader</.test(html), '/>kill-leader</');
  t.true(/n1 \| n2 n3 &lt;script&gt;/.test(html), 'fault details are escaped');
  t.true(/n3 t3/.test(html), 'leader change marked');
  t.true(/stale read: /.test(html), '/stale read: /');
  t.true(/<h2>Failover stalls<\/h2>\s*<table>/.test(html), '/<h2>Failover stalls<\\/h2>\\s*<table>/');
  t.is((html.match(/<svg /g) ?? []).length, 3, 'timeline, latency, throughput');
  const good = renderReport(
    new HistoryBuilder().write(1, 'k', 'a', 0, 1).read(1, 'k', 'a', 2, 3).build(),
    { linearizability: checkHistory(new HistoryBuilder().write(1, 'k', 'a', 0, 1).read(1, 'k', 'a', 2, 3).build()) },
  );
  t.true(/class="verdict pass"><div class="big">PASS</.test(good), '/class="verdict pass"><div class="big">PASS</');
  const unknown = renderReport(events.slice(0, 50), { linearizability: { ...checkHistory(events.slice(0, 50)), verdict: 'unknown' } });
  t.true(/class="verdict unknown"><div class="big">UNKNOWN</.test(unknown), '/class="verdict unknown"><div class="big">UNKNOWN</');
});

interface Png {
  width: number;
  height: number;
  channels: number;
  pixels: Uint8Array;
}

/** decodePng: 8-bit RGB/RGBA, non-interlaced (what Chromium writes); enough for this test. */
function decodePng(buffer: Buffer): Png {
  if (!buffer.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]))) throw new Error('not a PNG');
  let offset = 8;
  let width = 0;
  let height = 0;
  let channels = 0;
  const idat: Buffer[] = [];
  while (offset < buffer.length) {
    const length = buffer.readUInt32BE(offset);
    const type = buffer.toString('latin1', offset + 4, offset + 8);
    const data = buffer.subarray(offset + 8, offset + 8 + length);
    if (type === 'IHDR') {
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      const depth = data[8]!;
      const colorType = data[9]!;
      if (depth !== 8 || (colorType !== 2 && colorType !== 6) || data[12] !== 0) throw new Error(`unsupported PNG depth=${depth} color=${colorType}`);
      channels = colorType === 6 ? 4 : 3;
    } else if (type === 'IDAT') idat.push(data);
    offset += 12 + length;
  }
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * channels;
  const pixels = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)]!;
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? pixels[y * stride + x - channels]! : 0;
      const b = y > 0 ? pixels[(y - 1) * stride + x]! : 0;
      const c = x >= channels && y > 0 ? pixels[(y - 1) * stride + x - channels]! : 0;
      let predictor = 0;
      if (filter === 1) predictor = a;
      else if (filter === 2) predictor = b;
      else if (filter === 3) predictor = (a + b) >> 1;
      else if (filter === 4) {
        const p = a + b - c;
        const pa = Math.abs(p - a);
        const pb = Math.abs(p - b);
        const pc = Math.abs(p - c);
        predictor = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      pixels[y * stride + x] = (line[x]! + predictor) & 0xff;
    }
  }
  return { width, height, channels, pixels };
}

function findChromium(): string | null {
  for (const candidate of ['/usr/bin/chromium', '/usr/bin/chromium-browser']) if (existsSync(candidate)) return candidate;
  return null;
}

test('the report renders in headless Chromium to a non-blank screenshot', async (t) => {
  const chromium = findChromium();
  if (!chromium) {
    if (process.env.CI === 'true') t.fail('chromium is not installed (apt-get install -y chromium); required under CI');
    else t.log('SKIPPED: chromium is not installed (apt-get install -y chromium)');
    if (process.env.CI !== 'true') t.pass();
    return;
  }
  const { events, finalReads } = runHistory();
  mkdirSync(artifactsDir, { recursive: true });
  const htmlPath = path.join(artifactsDir, 'report.html');
  const pngPath = path.join(artifactsDir, 'report.png');
  rmSync(pngPath, { force: true });
  writeFileSync(htmlPath, renderReport(events, results(events, finalReads)));
  const profile = mkdtempSync(path.join(tmpdir(), 'chard-chromium-'));
  try {
    const args = [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--hide-scrollbars', `--user-data-dir=${profile}`,
      `--screenshot=${pngPath}`, '--window-size=1400,1000', `file://${htmlPath}`,
    ];
    const started = Date.now(); // measurement only
    await new Promise<void>((resolve, reject) => {
      execFile(chromium, args, { timeout: 90_000 }, (error, _stdout, stderr) => {
        if (error && !existsSync(pngPath)) reject(new Error(`chromium failed: ${error.message}\n${stderr.slice(-2000)}`));
        else resolve();
      });
    });
    t.log(`chromium screenshot in ${Date.now() - started} ms -> ${pngPath}`);
  } finally {
    rmSync(profile, { recursive: true, force: true });
  }
  t.true(existsSync(pngPath), 'screenshot written');
  const buffer = readFileSync(pngPath);
  t.true(buffer.length > 20_000, `screenshot is ${buffer.length} bytes`);
  const png = decodePng(buffer);
  t.is(png.width, 1400);
  t.is(png.height, 1000);
  const colors = new Set<number>();
  let nonWhite = 0;
  let bannerRed = 0;
  let sampled = 0;
  for (let y = 0; y < png.height; y += 3) {
    for (let x = 0; x < png.width; x += 3) {
      const o = (y * png.width + x) * png.channels;
      const [r, g, b] = [png.pixels[o]!, png.pixels[o + 1]!, png.pixels[o + 2]!];
      sampled++;
      colors.add((r << 16) | (g << 8) | b);
      if (r < 245 || g < 245 || b < 245) nonWhite++;
      if (Math.abs(r - 0xc6) < 12 && Math.abs(g - 0x28) < 12 && Math.abs(b - 0x28) < 12) bannerRed++;
    }
  }
  t.log(`${colors.size} distinct colours, ${((100 * nonWhite) / sampled).toFixed(1)} % non-white, ${bannerRed} banner-red samples`);
  t.true(colors.size > 50, 'not a blank or flat page');
  t.true(nonWhite / sampled > 0.05, 'the page has content');
  t.true(bannerRed > 500, 'the red FAIL banner is visible');
});
