#!/usr/bin/env node
// scripts/cpu-profile-summary.js FILE.cpuprofile [TOP]: where a node's CPU time went, from a
// `node --cpu-prof` profile (`chard bench --profile DIR` writes one per node). Prints the share of
// samples that were idle, then the functions with the most self time (file:line), then self time
// grouped by source (chard's own files, node internals, grpc, better-sqlite3, garbage collection).
import { readFileSync } from 'node:fs';

const [file, topArg] = process.argv.slice(2);
if (!file) {
  console.error('usage: cpu-profile-summary.js FILE.cpuprofile [TOP]');
  process.exit(2);
}
const top = Number(topArg ?? 25);
const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const deltas = profile.timeDeltas;
const selfMicros = new Map();
let total = 0;
for (let i = 0; i < profile.samples.length; i++) {
  const micros = deltas[i] ?? 0;
  total += micros;
  selfMicros.set(profile.samples[i], (selfMicros.get(profile.samples[i]) ?? 0) + micros);
}
const byFunction = new Map();
const bySource = new Map();
const source = (url, name) => {
  if (name === '(idle)') return 'idle';
  if (name === '(garbage collector)') return 'gc';
  if (name === '(program)') return 'program (native, outside JS)';
  if (url.includes('/dist/src/')) return `chard ${url.slice(url.indexOf('/dist/src/') + 10).split('/')[0]}`;
  if (url.includes('@grpc') || url.includes('protobufjs')) return 'grpc + protobuf';
  if (url.includes('better-sqlite3')) return 'better-sqlite3';
  if (url.includes('pino')) return 'pino';
  if (url.startsWith('node:') || url === '') return 'node internals / native';
  return 'other';
};
for (const [id, micros] of selfMicros) {
  const n = byId.get(id);
  const { functionName, url, lineNumber } = n.callFrame;
  const name = functionName || '(anonymous)';
  const where = url ? `${url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${lineNumber + 1}` : '';
  const key = `${name} ${where}`;
  byFunction.set(key, (byFunction.get(key) ?? 0) + micros);
  const s = source(url, name);
  bySource.set(s, (bySource.get(s) ?? 0) + micros);
}
const pct = (x) => `${((x / total) * 100).toFixed(1).padStart(5)} %`;
console.log(`${file}: ${(total / 1e6).toFixed(2)} s sampled`);
console.log('by source:');
for (const [s, m] of [...bySource].sort((a, b) => b[1] - a[1])) console.log(`  ${pct(m)}  ${s}`);
console.log(`top ${top} functions by self time:`);
for (const [k, m] of [...byFunction].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`  ${pct(m)}  ${k}`);
