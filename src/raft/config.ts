/**
 * config: every knob and limit of the raft core, validated in one place.
 *
 * Time is counted in ticks; the node layer maps ticks to wall time (tickIntervalMs).
 */

import { ChardError, ErrorCode } from '../errors.js';
import type { LogStorage } from './storage.js';
import type { NodeId, Random } from './types.js';

export const ReadOnlyOption = {
  /** Safe: ReadIndex confirms leadership with a heartbeat round to a quorum. */
  Safe: 'safe',
  /** LeaseBased: the leader answers from its lease (requires checkQuorum); no round trip. */
  LeaseBased: 'lease',
} as const;
export type ReadOnlyOption = (typeof ReadOnlyOption)[keyof typeof ReadOnlyOption];

/**
 * TestingKnobs: switches that break one safety rule each. They exist only so that tests can prove
 * the simulator's checkers detect the violation; production code never sets them.
 */
export interface TestingKnobs {
  /** grant votes without checking that the candidate's log is at least as up to date (§5.4.1). */
  voteWithoutLogCheck?: boolean;
  /** commit entries of earlier terms by counting replicas (violates §5.4.2). */
  commitOldTermEntries?: boolean;
  /** serve lease reads even when the lease is not held (no CheckQuorum contact). */
  leaseWithoutQuorum?: boolean;
  /** count the leader's own entries toward commit before they are durable. */
  leaderCountsUnpersisted?: boolean;
}

export interface RaftConfig {
  id: NodeId;
  storage: LogStorage;
  random: Random;
  electionTimeoutTicks: number;
  heartbeatIntervalTicks: number;
  /** applied: the index the application has applied (on restart). */
  applied: number;
  preVote: boolean;
  checkQuorum: boolean;
  readOnlyOption: ReadOnlyOption;
  /** leaseDriftTicks: the lease is shortened by this much to cover clock-rate drift between nodes. */
  leaseDriftTicks: number;
  /** appendBytesMax: soft cap on the entry bytes of one App message (at least one entry is sent). */
  appendBytesMax: number;
  /** inflightMessagesMax: App messages in flight per follower in replicate state. */
  inflightMessagesMax: number;
  /** inflightBytesMax: entry bytes in flight per follower (0 = no byte limit). */
  inflightBytesMax: number;
  /** uncommittedBytesMax: proposals are refused while the leader's uncommitted tail exceeds this. */
  uncommittedBytesMax: number;
  /** committedBytesPerReadyMax: cap on the committed entries handed out by one Ready. */
  committedBytesPerReadyMax: number;
  /** snapshotChunkBytes: size of one InstallSnapshot chunk. */
  snapshotChunkBytes: number;
  /** snapshotChunksInflightMax: chunks sent ahead of the follower's acknowledgement. */
  snapshotChunksInflightMax: number;
  /** readIndexQueueMax: pending ReadIndex requests on a leader. */
  readIndexQueueMax: number;
  /** proposalEntriesMax: entries accepted in one Propose message. */
  proposalEntriesMax: number;
  /** logger: optional trace of role changes and decisions (deterministic text). */
  logger?: (line: string) => void;
  testing?: TestingKnobs;
}

export const defaultRaftLimits = {
  electionTimeoutTicks: 10,
  heartbeatIntervalTicks: 1,
  applied: 0,
  preVote: true,
  checkQuorum: true,
  readOnlyOption: ReadOnlyOption.Safe as ReadOnlyOption,
  leaseDriftTicks: 1,
  appendBytesMax: 1024 * 1024,
  inflightMessagesMax: 256,
  inflightBytesMax: 32 * 1024 * 1024,
  uncommittedBytesMax: 64 * 1024 * 1024,
  committedBytesPerReadyMax: 64 * 1024 * 1024,
  snapshotChunkBytes: 1024 * 1024,
  snapshotChunksInflightMax: 4,
  readIndexQueueMax: 4096,
  proposalEntriesMax: 4096,
};

export type RaftConfigInput = Pick<RaftConfig, 'id' | 'storage' | 'random'> & Partial<Omit<RaftConfig, 'id' | 'storage' | 'random'>>;

function invalid(message: string): ChardError {
  return new ChardError(ErrorCode.InvalidArgument, `raft config: ${message}`);
}

/** resolveConfig: fills defaults and validates; throws INVALID_ARGUMENT naming the bad field. */
export function resolveConfig(input: RaftConfigInput): RaftConfig {
  const config: RaftConfig = { ...defaultRaftLimits, ...input } as RaftConfig;
  const positive = (name: keyof RaftConfig) => {
    const value = config[name];
    if (typeof value !== 'number' || !Number.isInteger(value) || value <= 0) throw invalid(`${String(name)} must be a positive integer`);
  };
  if (!Number.isInteger(config.id) || config.id <= 0) throw invalid('id must be a positive integer');
  positive('electionTimeoutTicks');
  positive('heartbeatIntervalTicks');
  positive('appendBytesMax');
  positive('inflightMessagesMax');
  positive('uncommittedBytesMax');
  positive('committedBytesPerReadyMax');
  positive('snapshotChunkBytes');
  positive('snapshotChunksInflightMax');
  positive('readIndexQueueMax');
  positive('proposalEntriesMax');
  if (config.heartbeatIntervalTicks >= config.electionTimeoutTicks) throw invalid('heartbeatIntervalTicks must be below electionTimeoutTicks');
  if (!Number.isInteger(config.inflightBytesMax) || config.inflightBytesMax < 0) throw invalid('inflightBytesMax must be >= 0');
  if (!Number.isInteger(config.applied) || config.applied < 0) throw invalid('applied must be >= 0');
  if (!Number.isInteger(config.leaseDriftTicks) || config.leaseDriftTicks < 0 || config.leaseDriftTicks >= config.electionTimeoutTicks) {
    throw invalid('leaseDriftTicks must be in [0, electionTimeoutTicks)');
  }
  if (config.readOnlyOption === ReadOnlyOption.LeaseBased && !config.checkQuorum) throw invalid('lease-based reads require checkQuorum');
  return config;
}
