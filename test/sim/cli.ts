/**
 * cli: run the seeded simulator from the shell.
 *
 *   node dist/test/sim/cli.js --seeds 1-2000          a swarm; exit 1 on any violation
 *   node dist/test/sim/cli.js --seed 17 --trace       replay one seed with a readable trace
 *   node dist/test/sim/cli.js --seeds 1-500 --knob commitOldTermEntries --ticks 600
 *
 * The last two lines of a swarm are `sim: N seeds, M violations` and `N passed, M failed`.
 */

import { Command } from 'commander';
import { knobNames } from './knobs.js';
import { swarmTicks } from './swarm.js';
import { type SimKnobs, type SimResult, runSeed } from './simulator.js';

/** parseSeeds: "N", "A-B" or "A,B,C-D" into a list of seeds. */
export function parseSeeds(text: string): number[] {
  const seeds: number[] = [];
  for (const part of text.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (match === null) throw new Error(`bad seed range: ${part}`);
    const from = Number(match[1]);
    const to = match[2] === undefined ? from : Number(match[2]);
    if (to < from) throw new Error(`bad seed range: ${part}`);
    for (let seed = from; seed <= to; seed++) seeds.push(seed);
  }
  return seeds;
}

async function main(argv: string[]): Promise<number> {
  const program = new Command()
    .name('sim')
    .description('seeded swarm simulator of the chard raft core')
    .option('--seeds <range>', 'seeds to run, e.g. 1-2000 or 1,5,9-12')
    .option('--seed <n>', 'one seed')
    .option('--trace', 'print a readable trace of the run (use with --seed)')
    .option('--knob <name>', `turn on a testing knob for all nodes (${knobNames.join(', ')})`)
    .option('--ticks <n>', 'ticks of the safety phase (default: as in the swarm tests)', String(swarmTicks))
    .option('--keep-going', 'record every violation of a seed instead of stopping at the first')
    .exitOverride();
  program.parse(argv, { from: 'user' });
  const opts = program.opts<{ seeds?: string; seed?: string; trace?: boolean; knob?: string; ticks: string; keepGoing?: boolean }>();
  let knobs: SimKnobs | undefined;
  if (opts.knob !== undefined) {
    if (!(knobNames as readonly string[]).includes(opts.knob)) throw new Error(`unknown knob ${opts.knob}; one of ${knobNames.join(', ')}`);
    knobs = { [opts.knob]: true };
  }
  const ticks = Number(opts.ticks);
  if (!Number.isInteger(ticks) || ticks <= 0) throw new Error('--ticks must be a positive integer');
  const seeds = opts.seed !== undefined ? parseSeeds(opts.seed) : parseSeeds(opts.seeds ?? '1-100');
  const trace = opts.trace === true ? (line: string) => process.stdout.write(`${line}\n`) : undefined;
  const started = process.hrtime.bigint();
  let violations = 0;
  let failed = 0;
  let lastReport = started;
  const failures: SimResult[] = [];
  const totals = new Map<string, number>();
  for (let i = 0; i < seeds.length; i++) {
    const result = await runSeed(seeds[i]!, { ticks, ...(knobs ? { knobs } : {}), ...(trace ? { trace } : {}), stopOnViolation: opts.keepGoing !== true });
    if (result.violations.length > 0) {
      failed++;
      violations += result.violations.length;
      failures.push(result);
      for (const v of result.violations) console.log(`VIOLATION seed=${v.seed} tick=${v.tick} ${v.checker}: ${v.details}`);
    }
    for (const [name, value] of Object.entries(result.stats)) totals.set(name, (totals.get(name) ?? 0) + value);
    if (trace) console.log(`seed ${result.seed}: trace hash ${result.traceHash}; ${JSON.stringify(result.stats)}`);
    const now = process.hrtime.bigint();
    if (now - lastReport > 2_000_000_000n || i === seeds.length - 1) {
      lastReport = now;
      const seconds = Number(now - started) / 1e9;
      console.log(`progress: ${i + 1}/${seeds.length} seeds, ${failed} failed, ${((i + 1) / seconds).toFixed(1)} seeds/s`);
    }
  }
  if (failures.length > 0) console.log(`replay: node dist/test/sim/cli.js --seed ${failures[0]!.seed} --trace${opts.knob ? ` --knob ${opts.knob}` : ''}${ticks !== swarmTicks ? ` --ticks ${ticks}` : ''}`);
  console.log(`totals: ${[...totals.entries()].map(([name, value]) => `${name}=${value}`).join(' ')}`);
  console.log(`sim: ${seeds.length} seeds, ${violations} violations`);
  console.log(`${seeds.length - failed} passed, ${failed} failed`);
  return violations > 0 ? 1 : 0;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (error) {
  const code = (error as { code?: string }).code;
  if (code === 'commander.helpDisplayed' || code === 'commander.version') process.exitCode = 0;
  else {
    console.error(error instanceof Error ? error.message : String(error));
    process.exitCode = 2;
  }
}
