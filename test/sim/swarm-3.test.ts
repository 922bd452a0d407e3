// Proves: the raft core keeps every safety property (checkers.ts) and makes progress after healing,
// over seeds 1335-2000 of the swarm simulator (simulator.ts): each seed draws cluster size,
// network faults, partitions, crashes, pauses, membership changes, transfers and compaction.
// A failure names seed=N; `node dist/test/sim/cli.js --seed N --trace` replays it exactly.
import test from 'ava';
import { runSwarm } from './swarm.js';

test('swarm seeds 1335-2000: no violations', async (t) => {
  await runSwarm(t, 1335, 2000);
});
