/**
 * knobs: the names of the testing knobs the simulator can turn on — the raft core's (config.ts
 * TestingKnobs, passed through Replica's `raft` option) and the Replica's (replica.ts
 * ReplicaTestingKnobs) — for the CLI and the knob tests. Every knob breaks one safety rule; the
 * knob tests prove the checkers catch each.
 */

import type { SimKnobs } from './simulator.js';

export const knobNames = [
  'voteWithoutLogCheck',
  'commitOldTermEntries',
  'leaseWithoutQuorum',
  'leaderCountsUnpersisted',
  'skipCatchUpOnEntry',
  'ackBeforeDurable',
] as const satisfies ReadonlyArray<keyof SimKnobs>;
export type KnobName = (typeof knobNames)[number];
