#!/usr/bin/env node
// scripts/test.js: `npm test` after the build. Runs every ava test under c8 (coverage of the raft
// core, which must stay >= 90 % of lines), then prints one plain summary line
// `N passed, N failed` that any CI log reader understands.
import { spawn } from 'node:child_process';

const coverageMin = Number(process.env.CHARD_RAFT_COVERAGE_MIN ?? 90);
const args = [
  'c8',
  '--include', 'dist/src/raft/**',
  '--reporter', 'text',
  '--reporter', 'text-summary',
  '--check-coverage', '--lines', String(coverageMin),
  'ava', ...process.argv.slice(2),
];
const child = spawn('npx', args, { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
let output = '';
const tee = (stream, target) => stream.on('data', (chunk) => { output += chunk.toString(); target.write(chunk); });
tee(child.stdout, process.stdout);
tee(child.stderr, process.stderr);
child.on('close', (code) => {
  const plain = output.replace(/\x1b\[[0-9;]*m/g, '');
  const count = (re) => { const m = plain.match(re); return m ? Number(m[1]) : 0; };
  // ava prints "N tests passed" only when nothing failed; count the ticks otherwise.
  const passed = count(/(\d+) tests? passed/) || (plain.match(/^\s*✔/gm) ?? []).length;
  const failed = count(/(\d+) tests? failed/) + count(/(\d+) uncaught exceptions?/) + count(/(\d+) unhandled rejections?/);
  const skipped = count(/(\d+) tests? skipped/);
  const known = count(/(\d+) known failures?/);
  const coverage = plain.match(/Lines\s*:\s*([\d.]+)%/);
  console.log('');
  if (coverage) console.log(`raft core line coverage: ${coverage[1]}% (minimum ${coverageMin}%)`);
  const failedTotal = failed + known + (code !== 0 && failed === 0 ? 1 : 0);
  console.log(`${passed} passed, ${failedTotal} failed${skipped ? `, ${skipped} skipped` : ''}`);
  process.exit(code === 0 && failedTotal === 0 ? 0 : 1);
});
