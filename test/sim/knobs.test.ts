// Proves: the simulator's checkers are not blind. Each testing knob of the raft core (config.ts
// TestingKnobs) or of the Replica (skipCatchUpOnEntry: a lease checked against a clock that was not
// caught up; ackBeforeDurable: acknowledgements and votes sent before the write is durable) breaks one safety rule; with the knob on for every node, the swarm must report a
// safety violation (any checker but liveness) within `seedsMax` seeds, or this test fails. It
// prints how many seeds each knob needed and which checker caught it. The seed schedule is made
// sharper per knob where the broken rule needs a particular situation (simulator.ts drawConfig);
// a control run of the detecting seed with the same schedule but the knob off must be clean.
import test from 'ava';
import { CheckerName, type Violation } from './checkers.js';
import { knobNames, type KnobName } from './knobs.js';
import { runSeed } from './simulator.js';

/** seedsMax: the bound within which each knob's violation must be found. */
const seedsMax = 2000;

/** knobTicks: safety-phase length per knob (Figure 8 needs a long run of leader changes). */
const knobTicks: Record<KnobName, number> = {
  voteWithoutLogCheck: 400,
  commitOldTermEntries: 1000,
  leaseWithoutQuorum: 400,
  leaderCountsUnpersisted: 400,
  skipCatchUpOnEntry: 400,
  ackBeforeDurable: 400,
};

for (const knob of knobNames) {
  test(`knob ${knob}: a safety violation is detected within ${seedsMax} seeds`, async (t) => {
    const started = process.hrtime.bigint();
    let found: Violation | undefined;
    let seeds = 0;
    let livenessOnly = 0;
    for (let seed = 1; seed <= seedsMax && found === undefined; seed++) {
      seeds++;
      const result = await runSeed(seed, { ticks: knobTicks[knob], knobs: { [knob]: true } });
      const safety = result.violations.find((v) => v.checker !== CheckerName.Liveness);
      if (safety !== undefined) found = safety;
      else if (result.violations.length > 0) livenessOnly++;
    }
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    if (found === undefined) {
      t.fail(`knob ${knob}: no safety violation in ${seedsMax} seeds (${livenessOnly} liveness-only failures): the checkers miss this broken rule`);
      return;
    }
    // Control: the same seed and schedule with the knob off has no safety violation, so it was
    // the broken rule that the checker caught, not the sharper schedule.
    const control = await runSeed(found.seed, { ticks: knobTicks[knob], drawAs: { [knob]: true } });
    t.deepEqual(control.violations.filter((v) => v.checker !== CheckerName.Liveness), [], `control run of seed ${found.seed} without the knob`);
    t.log(`knob ${knob}: found after ${seeds} seeds (${seconds.toFixed(1)} s) by ${found.checker} at seed=${found.seed} tick=${found.tick}: ${found.details.slice(0, 200)}`);
    t.log(`  replay: node dist/test/sim/cli.js --seed ${found.seed} --knob ${knob} --ticks ${knobTicks[knob]} --trace`);
  });
}
