/**
 * report: renderReport(history, results) turns a chaos run into ONE self-contained HTML file.
 *
 * Everything is generated here as plain HTML + inline CSS + inline SVG: no script, no fonts, no
 * network, so the file reads the same offline, in a CI artifact viewer, or years later. Contents,
 * top to bottom: the verdict (prominent), run summary, a timeline (x = time since the first event)
 * with fault windows shaded and labelled, leader changes marked, and each operation as a short bar
 * in its process's row coloured ok / failed / unknown; latency and throughput over the same time
 * axis; the per-fault stall table; leaders per term; violations with the ops that explain them;
 * replica convergence.
 *
 * Bounded output: at most `processRowsMax` rows and `opsDrawnMax` op bars are drawn (failed,
 * unknown and violating ops first, then an even sample of the rest); the charts use `bucketCount`
 * time buckets. The report says when it sampled.
 */

import { pairOperations, historyTimeRange, type HistoryEvent, type Operation } from './history.js';
import { describe, type LinearizabilityResult } from './linearizability.js';
import type { AckedWriteCheck, ConvergenceCheck, FaultStall, LeaderCheck } from './checks.js';

export const processRowsMax = 40;
export const opsDrawnMax = 6000;
export const bucketCount = 120;
export const violationsListedMax = 20;

export interface ReportResults {
  title?: string;
  /** notes: free lines shown under the title (seed, cluster size, command line). */
  notes?: string[];
  linearizability: LinearizabilityResult;
  ackedWrites?: AckedWriteCheck;
  leaders?: LeaderCheck;
  stalls?: FaultStall[];
  convergence?: ConvergenceCheck;
}

export type OverallVerdict = 'pass' | 'fail' | 'unknown';

/** overallVerdict: fail if any check failed; unknown if linearizability is unknown; else pass. */
export function overallVerdict(results: ReportResults): OverallVerdict {
  const failed =
    results.linearizability.verdict === 'violation' ||
    (results.ackedWrites !== undefined && !results.ackedWrites.ok && results.ackedWrites.result.verdict !== 'unknown') ||
    (results.leaders !== undefined && !results.leaders.ok) ||
    (results.convergence !== undefined && !results.convergence.ok);
  if (failed) return 'fail';
  if (results.linearizability.verdict === 'unknown' || (results.ackedWrites !== undefined && !results.ackedWrites.ok)) return 'unknown';
  return 'pass';
}

function esc(s: unknown): string {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

function fmt(n: number, digits = 1): string {
  if (!Number.isFinite(n)) return n > 0 ? '∞' : '–';
  return n.toFixed(digits);
}

const colors = {
  ok: '#2e9d4f',
  fail: '#d64541',
  info: '#e0a030',
  violation: '#7b1fa2',
  leader: '#1f5fbf',
  grid: '#e3e3e3',
  axis: '#666',
};
const faultPalette = ['#f4a6a6', '#a6c8f4', '#c9a6f4', '#f4d9a6', '#a6f4d2', '#f4a6e0', '#bdbdbd'];

/** Layout: one shared time axis for every chart. */
const width = 1300;
const marginLeft = 70;
const marginRight = 20;
const plotWidth = width - marginLeft - marginRight;

interface Axis {
  t0: number;
  t1: number;
  x(t: number): number;
}

function makeAxis(t0: number, t1: number): Axis {
  const span = Math.max(t1 - t0, 1);
  return { t0, t1: t0 + span, x: (t) => marginLeft + ((Math.min(Math.max(t, t0), t0 + span) - t0) / span) * plotWidth };
}

function niceStep(span: number, target: number): number {
  const raw = span / target;
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

function timeGrid(axis: Axis, top: number, bottom: number, labels: boolean): string {
  const step = niceStep(axis.t1 - axis.t0, 12);
  let out = '';
  for (let t = Math.ceil(axis.t0 / step) * step; t <= axis.t1; t += step) {
    const x = axis.x(t).toFixed(1);
    out += `<line x1="${x}" x2="${x}" y1="${top}" y2="${bottom}" stroke="${colors.grid}"/>`;
    if (labels) out += `<text x="${x}" y="${bottom + 14}" text-anchor="middle" class="tick">${fmt((t - axis.t0) / 1000, step < 1000 ? 2 : 1)}s</text>`;
  }
  return out;
}

interface FaultWindow {
  fault: string;
  detail: string | undefined;
  start: number;
  stop: number;
  open: boolean;
  color: string;
}

function faultWindows(events: readonly HistoryEvent[], end: number): FaultWindow[] {
  const names: string[] = [];
  const windows: FaultWindow[] = [];
  const openByName = new Map<string, FaultWindow[]>();
  for (const e of [...events].sort((a, b) => a.time - b.time)) {
    if (e.type !== 'fault') continue;
    if (!names.includes(e.fault)) names.push(e.fault);
    const color = faultPalette[names.indexOf(e.fault) % faultPalette.length]!;
    const open = openByName.get(e.fault) ?? [];
    if (e.phase === 'start') {
      const w: FaultWindow = { fault: e.fault, detail: e.detail, start: e.time, stop: end, open: true, color };
      windows.push(w);
      open.push(w);
      openByName.set(e.fault, open);
    } else {
      const w = open.shift();
      if (w) {
        w.stop = e.time;
        w.open = false;
      }
    }
  }
  return windows;
}

function faultShading(windows: readonly FaultWindow[], axis: Axis, top: number, bottom: number): string {
  return windows
    .map((w) => {
      const x0 = axis.x(w.start);
      const x1 = Math.max(axis.x(w.stop), x0 + 2);
      return `<rect x="${x0.toFixed(1)}" y="${top}" width="${(x1 - x0).toFixed(1)}" height="${bottom - top}" fill="${w.color}" opacity="0.35"><title>${esc(w.fault)}${w.detail ? ': ' + esc(w.detail) : ''} ${fmt((w.start - axis.t0) / 1000, 2)}s – ${w.open ? 'end (never stopped)' : fmt((w.stop - axis.t0) / 1000, 2) + 's'}</title></rect>`;
    })
    .join('');
}

function leaderMarks(events: readonly HistoryEvent[], axis: Axis, top: number, bottom: number, labels: boolean): string {
  let out = '';
  let n = 0;
  for (const e of events) {
    if (e.type !== 'leader') continue;
    const x = axis.x(e.time).toFixed(1);
    out += `<line x1="${x}" x2="${x}" y1="${top}" y2="${bottom}" stroke="${colors.leader}" stroke-width="1.5" stroke-dasharray="4 3"/>`;
    if (labels) {
      const y = top + 12 + (n++ % 3) * 12;
      out += `<text x="${Number(x) + 3}" y="${y}" class="leader">n${esc(e.node)} t${esc(e.term)}</text>`;
    }
  }
  return out;
}

function statusColor(op: Operation): string {
  return op.status === 'ok' ? colors.ok : op.status === 'fail' ? colors.fail : colors.info;
}

function pickOps(ops: readonly Operation[], violating: Set<number>): { drawn: Operation[]; sampled: boolean } {
  if (ops.length <= opsDrawnMax) return { drawn: [...ops], sampled: false };
  const important = ops.filter((op) => violating.has(op.index) || op.status !== 'ok').slice(0, Math.floor(opsDrawnMax / 2));
  const taken = new Set(important.map((op) => op.index));
  const rest = ops.filter((op) => !taken.has(op.index));
  const room = opsDrawnMax - important.length;
  const stride = rest.length / room;
  const sample: Operation[] = [];
  for (let k = 0; k < room && Math.floor(k * stride) < rest.length; k++) sample.push(rest[Math.floor(k * stride)]!);
  return { drawn: [...sample, ...important], sampled: true };
}

function timeline(events: readonly HistoryEvent[], ops: readonly Operation[], axis: Axis, windows: readonly FaultWindow[], violating: Set<number>): string {
  const processes: string[] = [];
  const rowOf = new Map<string, number>();
  for (const op of ops) {
    const p = String(op.process);
    if (!rowOf.has(p)) {
      rowOf.set(p, processes.length);
      processes.push(p);
    }
  }
  processes.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  processes.forEach((p, row) => rowOf.set(p, row));
  const shown = processes.slice(0, processRowsMax);
  const rowHeight = shown.length > 20 ? 9 : 14;
  const labelBand = 48;
  const top = labelBand;
  const bottom = top + Math.max(shown.length, 1) * rowHeight + 4;
  const height = bottom + 22;
  const { drawn, sampled } = pickOps(
    ops.filter((op) => (rowOf.get(String(op.process)) ?? processRowsMax) < processRowsMax),
    violating,
  );
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`;
  svg += timeGrid(axis, top, bottom, true);
  svg += faultShading(windows, axis, 0, bottom);
  // Fault labels in the band above the rows, staggered so overlapping windows stay readable.
  windows.forEach((w, n) => {
    const x = axis.x(w.start) + 2;
    svg += `<text x="${x.toFixed(1)}" y="${12 + (n % 2) * 13}" class="fault">${esc(w.fault)}${w.open ? ' (no stop)' : ''}</text>`;
  });
  shown.forEach((p, row) => {
    const y = top + row * rowHeight;
    if (row % 2 === 1) svg += `<rect x="${marginLeft}" y="${y}" width="${plotWidth}" height="${rowHeight}" fill="#000" opacity="0.03"/>`;
    svg += `<text x="${marginLeft - 6}" y="${y + rowHeight - 2}" text-anchor="end" class="tick"${rowHeight < 14 ? ' style="font-size:8px"' : ''}>${esc(p.length > 10 ? p.slice(0, 9) + '…' : p)}</text>`;
  });
  for (const op of drawn) {
    const row = rowOf.get(String(op.process))!;
    const y = top + row * rowHeight + 2;
    const x0 = axis.x(op.callTime);
    const end = op.returnTime === Infinity ? (op.completionTime ?? axis.t1) : op.returnTime;
    const x1 = Math.max(axis.x(end), x0 + 1.5);
    const bad = violating.has(op.index);
    const h = rowHeight - 4;
    svg += `<rect x="${x0.toFixed(1)}" y="${y}" width="${(x1 - x0).toFixed(1)}" height="${h}" fill="${statusColor(op)}"${op.status === 'info' ? ' opacity="0.8"' : ''}${bad ? ` stroke="${colors.violation}" stroke-width="2"` : ''}><title>${esc(op.key)}: ${esc(describe(op))}</title></rect>`;
  }
  svg += leaderMarks(events, axis, top - 40, bottom, true);
  svg += `<line x1="${marginLeft}" x2="${width - marginRight}" y1="${bottom}" y2="${bottom}" stroke="${colors.axis}"/>`;
  svg += '</svg>';
  const notes: string[] = [];
  if (processes.length > shown.length) notes.push(`showing ${shown.length} of ${processes.length} processes`);
  if (sampled) notes.push(`showing ${drawn.length} of ${ops.length} ops (all failed/unknown/violating first, then an even sample)`);
  return svg + (notes.length ? `<p class="note">${esc(notes.join('; '))}</p>` : '');
}

function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
}

function charts(events: readonly HistoryEvent[], ops: readonly Operation[], axis: Axis, windows: readonly FaultWindow[]): string {
  const bucketMs = (axis.t1 - axis.t0) / bucketCount;
  const latencies: number[][] = Array.from({ length: bucketCount }, () => []);
  const done = { ok: new Array<number>(bucketCount).fill(0), fail: new Array<number>(bucketCount).fill(0), info: new Array<number>(bucketCount).fill(0) };
  const bucketOf = (t: number): number => Math.min(bucketCount - 1, Math.max(0, Math.floor((t - axis.t0) / bucketMs)));
  for (const op of ops) {
    if (op.completionTime === null) continue;
    const b = bucketOf(op.completionTime);
    done[op.status][b]!++;
    if (op.status === 'ok') latencies[b]!.push(op.returnTime - op.callTime);
  }
  const p50: number[] = [];
  const p99: number[] = [];
  const max: number[] = [];
  for (const l of latencies) {
    l.sort((a, b) => a - b);
    p50.push(quantile(l, 0.5));
    p99.push(quantile(l, 0.99));
    max.push(l.length ? l[l.length - 1]! : NaN);
  }
  const height = 185;
  const top = 26;
  const bottom = height - 25;
  const frame = (yMax: number, unit: string): string => {
    let s = timeGrid(axis, top, bottom, true) + faultShading(windows, axis, top, bottom) + leaderMarks(events, axis, top, bottom, false);
    for (let k = 0; k <= 4; k++) {
      const y = bottom - ((bottom - top) * k) / 4;
      s += `<line x1="${marginLeft}" x2="${width - marginRight}" y1="${y}" y2="${y}" stroke="${colors.grid}"/>`;
      s += `<text x="${marginLeft - 6}" y="${y + 4}" text-anchor="end" class="tick">${fmt((yMax * k) / 4, yMax < 10 ? 1 : 0)}${unit}</text>`;
    }
    return s + `<line x1="${marginLeft}" x2="${width - marginRight}" y1="${bottom}" y2="${bottom}" stroke="${colors.axis}"/>`;
  };
  const bx = (b: number): number => axis.x(axis.t0 + (b + 0.5) * bucketMs);
  // Latency (ms) of ok ops by completion bucket: p50, p99, max.
  const latMax = Math.max(1, ...max.filter(Number.isFinite));
  const ly = (v: number): number => bottom - (Math.min(v, latMax) / latMax) * (bottom - top);
  const line = (vals: number[], color: string, dash = ''): string => {
    let d = '';
    let pen = false;
    vals.forEach((v, b) => {
      if (!Number.isFinite(v)) {
        pen = false;
        return;
      }
      d += `${pen ? 'L' : 'M'}${bx(b).toFixed(1)},${ly(v).toFixed(1)}`;
      pen = true;
    });
    return `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"${dash ? ` stroke-dasharray="${dash}"` : ''}/>`;
  };
  let lat = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`;
  lat += frame(latMax, 'ms') + line(max, '#bbbbbb', '3 2') + line(p99, '#e67e22') + line(p50, '#2c3e50');
  lat += `<text x="${width - marginRight}" y="14" text-anchor="end" class="legend"><tspan fill="#2c3e50">━ p50</tspan>  <tspan fill="#e67e22">━ p99</tspan>  <tspan fill="#999">┅ max</tspan> latency of ok ops, by completion time</text></svg>`;
  // Throughput (completions per second), stacked ok / fail / info.
  const perSecond = 1000 / bucketMs;
  const totals = done.ok.map((v, b) => (v + done.fail[b]! + done.info[b]!) * perSecond);
  const tpMax = Math.max(1, ...totals);
  const ty = (v: number): number => ((v * perSecond) / tpMax) * (bottom - top);
  let tp = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">`;
  tp += frame(tpMax, '/s');
  const barWidth = Math.max(1, plotWidth / bucketCount - 1);
  for (let b = 0; b < bucketCount; b++) {
    let y = bottom;
    for (const [kind, color] of [['ok', colors.ok], ['fail', colors.fail], ['info', colors.info]] as const) {
      const h = ty(done[kind][b]!);
      if (h <= 0) continue;
      y -= h;
      tp += `<rect x="${(bx(b) - barWidth / 2).toFixed(1)}" y="${y.toFixed(1)}" width="${barWidth.toFixed(1)}" height="${h.toFixed(1)}" fill="${color}"/>`;
    }
  }
  tp += `<text x="${width - marginRight}" y="14" text-anchor="end" class="legend"><tspan fill="${colors.ok}">■ ok</tspan>  <tspan fill="${colors.fail}">■ failed</tspan>  <tspan fill="${colors.info}">■ unknown</tspan> completions per second</text></svg>`;
  return `<h2>Latency</h2>${lat}<h2>Throughput</h2>${tp}`;
}

function table(headers: string[], rows: string[][], cls = ''): string {
  if (rows.length === 0) return '<p class="note">none</p>';
  return `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${headers.map((h) => `<th>${esc(h)}</th>`).join('')}</tr></thead><tbody>${rows.map((r) => `<tr>${r.map((c) => `<td>${c}</td>`).join('')}</tr>`).join('')}</tbody></table>`;
}

/**
 * renderReport returns the complete HTML document. `history` is the raw event list (as parsed from
 * history.jsonl); `results` are the checker outputs for it.
 */
export function renderReport(history: readonly HistoryEvent[], results: ReportResults): string {
  const ops = pairOperations(history);
  const [start, end] = historyTimeRange(history);
  const axis = makeAxis(start, end);
  const windows = faultWindows(history, end);
  const verdict = overallVerdict(results);
  const lin = results.linearizability;
  const violating = new Set<number>();
  for (const k of lin.keys) for (const op of k.explanation?.ops ?? []) violating.add(op.index);
  const count = (s: string): number => ops.filter((op) => op.status === s).length;
  const verdictText = { pass: 'PASS', fail: 'FAIL', unknown: 'UNKNOWN' }[verdict];
  const verdictWhy: string[] = [];
  verdictWhy.push(`linearizability: ${lin.verdict} (${lin.counts.ok} keys ok, ${lin.counts.violation} violating, ${lin.counts.unknown} unknown)`);
  if (results.ackedWrites) verdictWhy.push(`acknowledged writes after heal: ${results.ackedWrites.ok ? 'none lost' : `${results.ackedWrites.result.verdict}${results.ackedWrites.unreadKeys.length ? `, ${results.ackedWrites.unreadKeys.length} written keys without a final read` : ''}`}`);
  if (results.leaders) verdictWhy.push(`leaders: ${results.leaders.ok ? `at most one per term (${results.leaders.termCount} terms)` : `${results.leaders.conflicts.length} terms with two leaders`}`);
  if (results.convergence) verdictWhy.push(`replicas: ${results.convergence.ok ? (results.convergence.converged ? 'converged' : 'consistent at equal applied index, not all caught up') : 'DIVERGED at equal applied index'}`);

  const parts: string[] = [];
  parts.push(`<h1>${esc(results.title ?? 'chard chaos run')}</h1>`);
  for (const n of results.notes ?? []) parts.push(`<p class="note">${esc(n)}</p>`);
  parts.push(`<div class="verdict ${verdict}"><div class="big">${verdictText}</div><ul>${verdictWhy.map((w) => `<li>${esc(w)}</li>`).join('')}</ul></div>`);
  parts.push(
    `<p class="summary">${ops.length} ops (${count('ok')} ok, ${count('fail')} failed, ${count('info')} unknown) on ${lin.keyCount} keys by ${new Set(ops.map((o) => String(o.process))).size} processes over ${fmt((end - start) / 1000, 2)} s; ` +
      `${windows.length} fault window${windows.length === 1 ? "" : "s"}; ${history.filter((e) => e.type === "leader").length} leader change events; ${lin.steps} search steps.</p>`,
  );
  parts.push(`<h2>Timeline</h2><p class="note">Bars: one op per bar in its process's row — <b style="color:${colors.ok}">ok</b>, <b style="color:${colors.fail}">failed</b>, <b style="color:${colors.info}">unknown</b> (drawn to its timeout), <b style="color:${colors.violation}">outlined</b> if part of a violation. Shaded: fault windows. Dashed blue: a new leader (node, term).</p>`);
  parts.push(timeline(history, ops, axis, windows, violating));
  parts.push(charts(history, ops, axis, windows));

  parts.push('<h2>Failover stalls</h2>');
  parts.push(
    table(
      ['fault', 'detail', 'start', 'stop', 'first ok after', 'longest gap without ok', 'ok', 'failed', 'unknown'],
      (results.stalls ?? []).map((s) => [
        esc(s.fault),
        esc(s.detail ?? ''),
        `${fmt((s.startTime - start) / 1000, 2)} s`,
        s.stopTime === null ? 'never' : `${fmt((s.stopTime - start) / 1000, 2)} s`,
        s.firstOkAfterMs === null ? '<b>none</b>' : `${fmt(s.firstOkAfterMs, 0)} ms`,
        `<b>${fmt(s.longestGapMs, 0)} ms</b> from ${fmt((s.longestGapStartTime - start) / 1000, 2)} s`,
        String(s.okCount),
        String(s.failCount),
        String(s.infoCount),
      ]),
    ),
  );

  parts.push('<h2>Linearizability</h2>');
  const bad = lin.keys.filter((k) => k.verdict !== 'ok');
  const ackBad = results.ackedWrites ? results.ackedWrites.result.keys.filter((k) => k.verdict !== 'ok') : [];
  // Final-read violations on keys that already violate in the main history would repeat them.
  const badKeys = new Set(bad.map((k) => k.key));
  const ackOnly = ackBad.filter((k) => !badKeys.has(k.key)).map((k) => ({ ...k, key: `${k.key} (final read)` }));
  const listed = [...bad, ...ackOnly].slice(0, violationsListedMax);
  if (listed.length === 0) parts.push(`<p>All ${lin.keyCount} keys are linearizable.</p>`);
  for (const k of listed) {
    parts.push(`<div class="key ${k.verdict}"><h3>${esc(k.key)}: ${esc(k.verdict)}</h3>`);
    if (k.verdict === 'unknown') parts.push(`<p>search stopped after ${k.steps} steps (${k.searchedOpCount} ops searched): the key is neither proven ok nor violating.</p>`);
    if (k.explanation) {
      parts.push(`<p>${esc(k.explanation.message)}</p>`);
      parts.push(
        table(
          ['process', 'op', 'f', 'status', 'value', 'call', 'return'],
          k.explanation.ops.map((op) => [
            esc(op.process),
            esc(op.opId),
            op.f,
            op.status,
            esc(JSON.stringify(op.f === 'write' ? op.input : op.output)),
            `${fmt((op.callTime - start) / 1000, 3)} s`,
            op.returnTime === Infinity ? 'never (unknown)' : `${fmt((op.returnTime - start) / 1000, 3)} s`,
          ]),
          'ops',
        ),
      );
      if (k.explanation.linearizedTail?.length) {
        parts.push(`<p class="note">last ops of the longest linearizable prefix (${k.explanation.linearizedCount} ops): ${k.explanation.linearizedTail.map((op) => esc(describe(op))).join('; ')}</p>`);
      }
    }
    parts.push('</div>');
  }
  if (bad.length + ackOnly.length > listed.length) parts.push(`<p class="note">${bad.length + ackOnly.length - listed.length} more keys not listed.</p>`);
  if (results.ackedWrites?.unreadKeys.length) parts.push(`<p class="note">written keys without a final read: ${esc(results.ackedWrites.unreadKeys.slice(0, 50).join(', '))}</p>`);

  if (results.leaders) {
    parts.push('<h2>Leaders</h2>');
    parts.push(results.leaders.ok ? `<p>At most one leader in each of ${results.leaders.termCount} terms.</p>` : table(['term', 'leaders'], results.leaders.conflicts.map((c) => [String(c.term), esc(c.nodes.join(', '))]), 'ops'));
  }
  if (results.convergence) {
    parts.push('<h2>Replica convergence</h2>');
    parts.push(
      table(
        ['applied index', 'nodes', 'hashes', 'ok'],
        results.convergence.groups.map((g) => [String(g.appliedIndex), esc(g.nodes.join(', ')), esc(g.hashes.join(', ')), g.ok ? 'yes' : '<b>NO</b>']),
      ),
    );
  }

  const css = `
body{font:14px/1.4 -apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:16px 24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 6px}h2{font-size:17px;margin:22px 0 6px;border-bottom:1px solid #ddd}h3{font-size:15px;margin:4px 0}
.verdict{display:flex;align-items:center;gap:24px;padding:12px 18px;border-radius:8px;color:#fff;margin:10px 0}
.verdict .big{font-size:44px;font-weight:800;letter-spacing:2px}.verdict ul{margin:0;padding-left:18px}
.verdict.pass{background:#2e7d32}.verdict.fail{background:#c62828}.verdict.unknown{background:#b8860b}
.note{color:#666;font-size:12px;margin:2px 0}.summary{margin:6px 0}
svg{display:block;background:#fff}svg text{font-family:inherit}
.tick{font-size:11px;fill:#555}.fault{font-size:12px;font-weight:600;fill:#333}.leader{font-size:11px;fill:${colors.leader};font-weight:600}.legend{font-size:12px}
table{border-collapse:collapse;margin:4px 0}th,td{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}th{background:#f3f3f3}
.key{border-left:4px solid #c62828;padding-left:10px;margin:8px 0}.key.unknown{border-color:#b8860b}`;
  return `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>${esc(results.title ?? 'chard chaos run')} — ${verdictText}</title><style>${css}</style></head><body>\n${parts.join('\n')}\n</body></html>\n`;
}
