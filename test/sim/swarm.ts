/**
 * swarm: shared driver of the swarm test files — runs a range of seeds and reports the summary
 * line `sim: N seeds, M violations` with the seed rate. Several files each run one range so ava
 * runs them in parallel.
 */

import type { ExecutionContext } from 'ava';
import type { Violation } from './checkers.js';
import { runSeed } from './simulator.js';

/** swarmTicks: length of the safety phase of one swarm seed (liveness follows). */
export const swarmTicks = 600;

/** runSwarm: runs seeds [from, to], logs the summary and fails listing the first violations. */
export async function runSwarm(t: ExecutionContext, from: number, to: number): Promise<void> {
  const started = process.hrtime.bigint();
  const violations: Violation[] = [];
  let failed = 0;
  for (let seed = from; seed <= to; seed++) {
    const result = await runSeed(seed, { ticks: swarmTicks });
    if (result.violations.length > 0) {
      failed++;
      violations.push(...result.violations);
    }
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  const count = to - from + 1;
  t.log(`sim: ${count} seeds, ${violations.length} violations (seeds ${from}-${to}, ${seconds.toFixed(1)} s, ${(count / seconds).toFixed(1)} seeds/s)`);
  t.log(`${count - failed} passed, ${failed} failed`);
  const details = violations
    .slice(0, 10)
    .map((v) => `seed=${v.seed} tick=${v.tick} ${v.checker}: ${v.details}\n  replay: node dist/test/sim/cli.js --seed ${v.seed} --ticks ${swarmTicks} --trace`)
    .join('\n');
  t.is(violations.length, 0, `violations:\n${details}`);
}
