/**
 * schedule: the fault schedule of a chaos run, drawn from a seed and nothing else.
 *
 * `drawSchedule({ seed, nodeCount, durationMs, faults })` is a pure function: the same inputs give
 * the same list of steps on every machine (SeededRandom, no clock, no Math.random), so a failing
 * run is replayed by its seed. A step says WHEN (offset from the workload start), WHAT (fault kind
 * and variant) and for HOW LONG; it names targets by role ("the leader", "a follower") plus a
 * seeded `pick` number, because which node leads is only known while the run executes. Between two
 * steps there is always a healed gap, and the last step ends `cooldownMs` before the end so the
 * run finishes on a healthy cluster.
 */

import { SeededRandom } from '../raft/random.js';
import { ErrorCode, UsageError } from '../errors.js';

export const FaultKind = {
  Kill: 'kill',
  Pause: 'pause',
  Partition: 'partition',
  PartitionOneway: 'partition-oneway',
  Member: 'member',
  Transfer: 'transfer',
} as const;
export type FaultKind = (typeof FaultKind)[keyof typeof FaultKind];
export const faultKinds: readonly FaultKind[] = Object.values(FaultKind);

/** FaultVariant: the precise fault a step injects (its kind decides which variants exist). */
export const FaultVariant = {
  /** kill -9 a node, restart it when the step ends. */
  KillLeader: 'kill-leader',
  KillFollower: 'kill-follower',
  /** SIGSTOP a node for longer than the election timeout, SIGCONT when the step ends. */
  PauseLeader: 'pause-leader',
  PauseFollower: 'pause-follower',
  /** cut the leader off from every other node (both directions). */
  IsolateLeader: 'isolate-leader',
  /** a random split into a majority and a minority (both directions). */
  MajorityMinority: 'majority-minority',
  /** isolate one node, heal, isolate again... every flapPeriodMs. */
  Flapping: 'flapping',
  /** the leader's outbound packets to every other node are dropped (it still hears them). */
  OnewayLeaderOut: 'oneway-leader-out',
  /** packets from every other node to the leader are dropped (it still reaches them). */
  OnewayLeaderIn: 'oneway-leader-in',
  /** one random directed node-to-node link is cut. */
  OnewayLink: 'oneway-link',
  /** remove a follower, re-add it (same id and data) as a learner, promote it once caught up. */
  RemoveReadd: 'remove-readd',
  /** remove the leader itself (it hands over first), then re-add it as a learner and promote it. */
  RemoveLeader: 'remove-leader',
  /** remove a follower, re-add it as a learner that stays a learner for the window, then promote it. */
  LearnerPromote: 'learner-promote',
  /** hand leadership to a follower. */
  TransferLeader: 'transfer-leader',
} as const;
export type FaultVariant = (typeof FaultVariant)[keyof typeof FaultVariant];

const variantsOf: Record<FaultKind, FaultVariant[]> = {
  kill: [FaultVariant.KillLeader, FaultVariant.KillLeader, FaultVariant.KillFollower],
  pause: [FaultVariant.PauseLeader, FaultVariant.PauseLeader, FaultVariant.PauseFollower],
  partition: [FaultVariant.IsolateLeader, FaultVariant.MajorityMinority, FaultVariant.Flapping],
  'partition-oneway': [FaultVariant.OnewayLeaderOut, FaultVariant.OnewayLeaderIn, FaultVariant.OnewayLink],
  member: [FaultVariant.RemoveReadd, FaultVariant.RemoveLeader, FaultVariant.LearnerPromote],
  transfer: [FaultVariant.TransferLeader],
};

export interface ScheduleStep {
  /** index: 0-based position in the schedule. */
  index: number;
  kind: FaultKind;
  variant: FaultVariant;
  /** startMs: offset from the start of the workload. */
  startMs: number;
  /** durationMs: how long the fault is held before it is undone (member/transfer: a bound). */
  durationMs: number;
  /** pick: a seeded number the executor maps onto the candidates it finds (pick % count). */
  pick: number;
  /** flapPeriodMs: for flapping, the half-period of the cut/heal toggle; 0 otherwise. */
  flapPeriodMs: number;
}

export interface ScheduleOptions {
  seed: number;
  nodeCount: number;
  durationMs: number;
  faults: readonly FaultKind[];
  /** warmupMs: quiet time before the first fault (default 3 s). */
  warmupMs?: number;
  /** cooldownMs: quiet time after the last fault is undone (default 4 s). */
  cooldownMs?: number;
}

/** scheduleStepsMax: a bound on the steps of one run (a 30-minute soak draws about 250). */
export const scheduleStepsMax = 10_000;
export const faultDurationMsMin = 2_500;
export const faultDurationMsMax = 6_000;
export const healGapMsMin = 1_500;
export const healGapMsMax = 4_000;
/** pauseDurationMsMin: a pause must outlast the election timeout (400-800 ms) several times over. */
export const pauseDurationMsMin = 1_500;

/**
 * parseFaults: the `--faults` list (`kill,pause,...` or `all`) as distinct kinds in canonical
 * order. Unknown names are a UsageError; an empty list means "no faults" (a baseline run).
 */
export function parseFaults(text: string): FaultKind[] {
  const names = text.split(',').map((s) => s.trim()).filter((s) => s.length > 0);
  const chosen = new Set<FaultKind>();
  for (const name of names) {
    if (name === 'all') for (const kind of faultKinds) chosen.add(kind);
    else if (name === 'none') continue;
    else if ((faultKinds as readonly string[]).includes(name)) chosen.add(name as FaultKind);
    else throw new UsageError(ErrorCode.InvalidArgument, `--faults: unknown fault "${name}" (known: ${faultKinds.join(', ')}, all, none)`);
  }
  return faultKinds.filter((kind) => chosen.has(kind));
}

/**
 * drawSchedule: the seeded list of fault steps for a run. Steps never overlap: each is followed by
 * a healed gap. Membership steps need at least 3 nodes (a 2-node cluster cannot lose a voter and
 * keep a quorum meaningfully) and are dropped from the menu otherwise.
 */
export function drawSchedule(options: ScheduleOptions): ScheduleStep[] {
  const { seed, nodeCount, durationMs } = options;
  if (!Number.isSafeInteger(seed)) throw new UsageError(ErrorCode.InvalidArgument, `--seed must be an integer, got ${seed}`);
  if (!Number.isInteger(nodeCount) || nodeCount < 1) throw new UsageError(ErrorCode.InvalidArgument, `node count must be >= 1, got ${nodeCount}`);
  if (!Number.isFinite(durationMs) || durationMs <= 0) throw new UsageError(ErrorCode.InvalidArgument, `duration must be > 0 ms, got ${durationMs}`);
  const warmupMs = options.warmupMs ?? 3_000;
  const cooldownMs = options.cooldownMs ?? 4_000;
  const menu = options.faults.filter((kind) => {
    if (nodeCount < 3 && (kind === FaultKind.Member || kind === FaultKind.Partition || kind === FaultKind.PartitionOneway)) return false;
    if (nodeCount < 2 && kind === FaultKind.Transfer) return false;
    return true;
  });
  // Seeds are folded to 32 bits for the generator; the full value stays in the report.
  const random = new SeededRandom(Number(BigInt.asUintN(32, BigInt(seed))) ^ 0x6a09e667);
  const steps: ScheduleStep[] = [];
  if (menu.length === 0) return steps;
  let t = warmupMs;
  while (steps.length < scheduleStepsMax) {
    const kind = menu[random.int(menu.length)]!;
    const variants = variantsOf[kind];
    const variant = variants[random.int(variants.length)]!;
    let duration = faultDurationMsMin + random.int(faultDurationMsMax - faultDurationMsMin + 1);
    if (kind === FaultKind.Pause) duration = Math.max(duration, pauseDurationMsMin);
    const pick = random.int(1 << 30);
    const flapPeriodMs = variant === FaultVariant.Flapping ? 400 + random.int(600) : 0;
    const gap = healGapMsMin + random.int(healGapMsMax - healGapMsMin + 1);
    if (t + duration + cooldownMs > durationMs) break;
    steps.push({ index: steps.length, kind, variant, startMs: t, durationMs: duration, pick, flapPeriodMs });
    t += duration + gap;
  }
  return steps;
}

/** formatSchedule: one line per step, for the run's stdout and the report's notes. */
export function formatSchedule(steps: readonly ScheduleStep[]): string[] {
  return steps.map(
    (s) =>
      `#${s.index} t=${(s.startMs / 1000).toFixed(1)}s ${s.variant} for ${(s.durationMs / 1000).toFixed(1)}s pick=${s.pick}` +
      (s.flapPeriodMs > 0 ? ` flap=${s.flapPeriodMs}ms` : ''),
  );
}
