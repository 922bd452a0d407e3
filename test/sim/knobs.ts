/**
 * knobs: the names of the raft core's testing knobs (config.ts TestingKnobs), for the CLI and the
 * knob tests. Every knob breaks one safety rule; the knob tests prove the checkers catch each.
 */

import type { TestingKnobs } from '../../src/raft/config.js';

export const knobNames = ['voteWithoutLogCheck', 'commitOldTermEntries', 'leaseWithoutQuorum', 'leaderCountsUnpersisted'] as const satisfies ReadonlyArray<keyof TestingKnobs>;
export type KnobName = (typeof knobNames)[number];
