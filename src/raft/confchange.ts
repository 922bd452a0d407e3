/**
 * confchange: the codec of ConfChange entries, and the pure rules that turn a ConfState and a
 * ConfChange into the next ConfState (joint consensus, Raft thesis §4.3).
 */

import { ChardError, ErrorCode } from '../errors.js';
import { type ConfChange, type ConfState, ConfChangeType, type Entry, EntryType, type NodeId, emptyConfState } from './types.js';

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeConfChange(cc: ConfChange): Uint8Array {
  return encoder.encode(
    JSON.stringify({ changes: cc.changes, context: Buffer.from(cc.context).toString('base64') }),
  );
}

export function decodeConfChange(data: Uint8Array): ConfChange {
  let parsed: unknown;
  try {
    parsed = JSON.parse(decoder.decode(data));
  } catch (error) {
    throw new ChardError(ErrorCode.Corrupt, 'conf change entry is not valid JSON', { cause: error });
  }
  const value = parsed as { changes?: unknown; context?: unknown };
  if (!Array.isArray(value.changes) || typeof value.context !== 'string') {
    throw new ChardError(ErrorCode.Corrupt, 'conf change entry has the wrong shape');
  }
  const changes = value.changes.map((c: { type?: unknown; nodeId?: unknown }) => {
    if (!Object.values(ConfChangeType).includes(c.type as ConfChangeType) || !Number.isInteger(c.nodeId) || (c.nodeId as number) <= 0) {
      throw new ChardError(ErrorCode.Corrupt, 'conf change entry has a bad change');
    }
    return { type: c.type as ConfChangeType, nodeId: c.nodeId as number };
  });
  return { changes, context: new Uint8Array(Buffer.from(value.context, 'base64')) };
}

export function isJoint(cs: ConfState): boolean {
  return cs.votersOutgoing.length > 0;
}

/** isLeaveJoint: a ConfChange with no changes leaves a joint configuration. */
export function isLeaveJoint(cc: ConfChange): boolean {
  return cc.changes.length === 0;
}

const sorted = (ids: Iterable<NodeId>) => [...new Set(ids)].sort((a, b) => a - b);

/**
 * validateConfChange: checks a proposed change against the current configuration. Returns an
 * error message, or undefined when the change may be proposed.
 */
export function validateConfChange(cs: ConfState, cc: ConfChange): string | undefined {
  if (isLeaveJoint(cc)) return isJoint(cs) ? undefined : 'not in a joint configuration';
  if (isJoint(cs)) return 'a joint configuration must be left first';
  const seen = new Set<NodeId>();
  for (const change of cc.changes) {
    if (seen.has(change.nodeId)) return `node ${change.nodeId} changed twice in one change`;
    seen.add(change.nodeId);
  }
  const next = applyChanges(cs, cc);
  if (next.voters.length === 0) return 'the last voter cannot be removed';
  return undefined;
}

function applyChanges(cs: ConfState, cc: ConfChange): { voters: NodeId[]; learners: NodeId[]; learnersNext: NodeId[] } {
  const voters = new Set(cs.voters);
  const learners = new Set(cs.learners);
  const learnersNext = new Set<NodeId>();
  for (const change of cc.changes) {
    switch (change.type) {
      case ConfChangeType.AddNode:
        voters.add(change.nodeId);
        learners.delete(change.nodeId);
        break;
      case ConfChangeType.AddLearner:
        if (voters.has(change.nodeId)) {
          // demotion: stays a voter of the outgoing config, becomes a learner when leaving
          voters.delete(change.nodeId);
          learnersNext.add(change.nodeId);
        } else {
          learners.add(change.nodeId);
        }
        break;
      case ConfChangeType.RemoveNode:
        voters.delete(change.nodeId);
        learners.delete(change.nodeId);
        break;
    }
  }
  return { voters: sorted(voters), learners: sorted(learners), learnersNext: sorted(learnersNext) };
}

/**
 * nextConfState: the configuration after applying `cc` to `cs`. A change that alters the voter
 * set enters a joint configuration (old voters become `votersOutgoing`) with autoLeave; an empty
 * change leaves the joint configuration. Learner-only changes apply directly.
 * The caller has validated the change (validateConfChange); an invalid one here is ignored
 * (returned unchanged), which is what every replica must do identically.
 */
export function nextConfState(cs: ConfState, cc: ConfChange): ConfState {
  if (validateConfChange(cs, cc) !== undefined) return structuredClone(cs);
  if (isLeaveJoint(cc)) {
    const learners = sorted([...cs.learners, ...cs.learnersNext]);
    return { voters: [...cs.voters], votersOutgoing: [], learners, learnersNext: [], autoLeave: false };
  }
  const next = applyChanges(cs, cc);
  const votersChanged = next.voters.join(',') !== sorted(cs.voters).join(',');
  // No joint phase when nothing is outgoing (the bootstrap configuration, built from nothing).
  if (!votersChanged || cs.voters.length === 0) {
    return { voters: next.voters, votersOutgoing: [], learners: next.learners, learnersNext: [], autoLeave: false };
  }
  return { voters: next.voters, votersOutgoing: sorted(cs.voters), learners: next.learners, learnersNext: next.learnersNext, autoLeave: true };
}

/**
 * bootstrapEntry: the first log entry of a new cluster (index 1, term 0): a ConfChange that adds
 * the initial voters and learners. Every initial member stores it as committed; a member added
 * later replays it from the leader's log (or gets the configuration in a snapshot), so the
 * configuration is always derivable from the log, as in etcd.
 */
export function bootstrapEntry(voters: NodeId[], learners: NodeId[] = []): Entry {
  const changes = [
    ...voters.map((nodeId) => ({ type: ConfChangeType.AddNode, nodeId })),
    ...learners.map((nodeId) => ({ type: ConfChangeType.AddLearner, nodeId })),
  ];
  return { term: 0, index: 1, type: EntryType.ConfChange, data: encodeConfChange({ changes, context: new Uint8Array(0) }) };
}

/** bootstrapConfState: the configuration that bootstrapEntry establishes. */
export function bootstrapConfState(voters: NodeId[], learners: NodeId[] = []): ConfState {
  return nextConfState(emptyConfState(), decodeConfChange(bootstrapEntry(voters, learners).data));
}
