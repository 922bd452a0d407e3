/**
 * replica-store: the contract between the node's Replica (src/node/replica.ts) and its durable
 * storage — ReplicaStore and the shapes it speaks (ApplyOutcome, MemberAddresses). It lives in
 * the storage layer, which implements it (BlockStore), so that imports point one way:
 * raft ← blockstore ← node. src/node/replica.ts re-exports these names.
 */

import { CorruptError, type ErrorCode } from '../errors.js';
import type { LogStorage } from '../raft/storage.js';
import type { ConfChange, ConfState, Entry, NodeId, Ready, SnapshotMetadata } from '../raft/types.js';

/** MemberAddresses: where a member listens (carried in ConfChange contexts, kept in the store). */
export interface MemberAddresses {
  raft: string;
  admin: string;
  nbd: string;
}

/** ApplyOutcome: what the state machine answered for one entry (bytes, or a usage error code). */
export type ApplyOutcome = { ok: true; value: Uint8Array } | { ok: false; code: ErrorCode; message: string };

/** ReplicaStore: what the replica needs from durable storage (implemented by src/blockstore). */
export interface ReplicaStore {
  readonly logStorage: LogStorage;
  /**
   * persist: make the Ready's snapshot chunks, snapshot, entries (truncating any stored suffix
   * they conflict with) and hard state durable, as one atomic unit (one fsync, or one group
   * commit). The replica calls it once per Ready, in Ready order, and never with a second Ready
   * before the first one's persist completed.
   *
   * - Returning void: everything is durable when the call returns (it may block the event loop
   *   on the fsync; the replica then defers a leader's persist by one turn so that its
   *   messagesEarly reach the sockets first).
   * - Returning a promise: it resolves once everything of the Ready is durable, and rejects if it
   *   cannot be made durable. A rejection is final: the replica halts (status().halted) and never
   *   calls persist again in this process — a failed fsync is never retried, since the kernel may
   *   have dropped the dirty pages it reported. Nothing that depends on the Ready is sent
   *   before the resolution, so a crash before it may lose all of the Ready or keep a part of it
   *   in this order: the snapshot, a prefix of the entries (never a hole), and the hard state
   *   only together with all of the entries (its commit index may point into them).
   *
   * What logStorage must show, and when: by the time persist returns (void) or its promise
   * resolves, logStorage answers for the new state (entries, term, lastIndex, firstIndex,
   * snapshot, hardState), because the core drops those entries from its unstable tail at the
   * Ready's advance() and reads them from logStorage from then on. Before that, the core reads
   * the Ready's entries from its own unstable tail and never asks logStorage for indices at or
   * beyond them, so the store may expose the new state as early as the call, or only at the
   * resolution. It must never show a state that is neither the old nor the new one (e.g. the
   * truncation of a conflicting suffix without the entries that replace it).
   *
   * A Ready whose mustSync is false (only the commit index changed) need not be fsynced: its
   * promise may resolve at once. The replica applies committed entries that were durable before a
   * Ready while that Ready's persist is in flight, so the state machine may be made durable ahead
   * of the hard state whose commit index covers it: on open, the store raises the commit index to
   * its applied index (BlockStore.recover does; the state machine only applies committed entries,
   * each of them durable in the log before it was applied).
   *
   * The replica keeps stepping messages and proposals into the core while a persist is in flight;
   * the next Ready carries everything that arrived meanwhile (group commit across turns).
   */
  persist(ready: Ready): void | Promise<void>;
  /** installSnapshot: replace the state machine with the staged snapshot. */
  installSnapshot(metadata: SnapshotMetadata): void;
  /**
   * apply: apply committed entries in one transaction; ConfChange entries call onConfChange.
   * Throws StateCorruptError (a CorruptError, code CORRUPT) when the state the entries need is
   * rotten: nothing of the batch is applied, the store has recorded the corruption durably and
   * refuses to apply, read or snapshot until it is reopened (which repairs or refuses to start).
   * The replica must stop applying and serving, and step down.
   */
  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome>;
  /**
   * applyCost: the apply work of one committed entry in block rows (a 16 MiB zero piece is 61
   * bytes of entry and up to 4,096 rows to delete); the replica bounds the rows of one event-loop
   * turn by it (ReplicaLimits.applyRowsPerTurnMax). Absent: every entry costs 1.
   */
  applyCost?(entry: Entry): number;
  appliedIndex(): number;
  /**
   * createSnapshot: snapshot the state at the applied index and compact the log behind it. The
   * replica calls it when raft wants a snapshot for a follower (Ready.snapshotWanted), and, for a
   * store without compactLog, every ReplicaLimits.compactEveryEntries.
   */
  createSnapshot(): SnapshotMetadata | undefined;
  /** createSnapshotAsync: the same, with the copy made off the event loop (preferred when present). */
  createSnapshotAsync?(): Promise<SnapshotMetadata | undefined>;
  /**
   * compactLog: compact the log behind the state machine's own durable state, without copying
   * it: make the applied state durable, then drop the entries up to min(`holds().upTo`, that
   * durable applied index minus the store's trailing entries). `holds` is asked again once the
   * state is durable, so a hold that began meanwhile (a snapshot transfer) is respected. Costs what changed since the last time,
   * not the size of the state. Resolves the compaction point (the log then starts after it), or
   * undefined when nothing was compacted (nothing new, a snapshot copy in flight, the state
   * replaced meanwhile). The replica calls it every ReplicaLimits.compactEveryEntries (or
   * compactEveryLogBytes), one at a time; snapshots are then made only on demand.
   * `retainFor`: on a leader, the followers that lag (CompactionHolds): the store keeps the log
   * for the furthest behind that it can afford (its retention budget, e.g.
   * BlockStoreLimits.logRetainBytesMax; larger for an active follower), so that follower
   * catches up from the log instead of needing a full snapshot.
   */
  compactLog?(holds: () => CompactionHolds): Promise<number | undefined>;
  members(): Map<NodeId, MemberAddresses>;
  setMember(id: NodeId, addresses: MemberAddresses | undefined): void;
}

/**
 * CompactionHolds: what a compaction must keep. `upTo`: the highest compaction point allowed (the
 * applied index). `retainFor`: on a leader, one hold per follower that lags: the index it has
 * (`match`; for a follower receiving a snapshot, the snapshot's index), and whether it is
 * `active` (heard from within an election timeout: receiving a snapshot or catching up, not
 * down). Entries after `match` are what it still needs.
 */
export interface CompactionHolds {
  upTo: number;
  retainFor: { match: number; active: boolean }[];
}

/** activeRetainFactor: an active follower's retention budget, in multiples of an inactive one's. */
export const activeRetainFactor = 4;

/**
 * compactionPoint: the one rule for where a compaction may go, given the state machine's durable
 * `applied` index: min(upTo, applied - trailing), lowered to the match of the furthest-behind
 * follower whose remaining log (`keptFrom(match + 1)`, in the store's unit) fits its budget —
 * `budget` for a follower that is down, activeRetainFactor × `budget` for an active one (a
 * follower that just installed a snapshot, or is catching up, so that it is not compacted past
 * and sent another full copy; bounded still, so that a follower that answers but never catches
 * up cannot fill the leader's disk). A follower already behind the log's start (match <
 * firstIndex - 1) needs a snapshot whatever is kept, so it holds nothing.
 */
export function compactionPoint(
  holds: CompactionHolds,
  applied: number,
  trailing: number,
  firstIndex: number,
  keptFrom: (index: number) => number,
  budget: number,
): number {
  const target = Math.min(holds.upTo, applied - trailing);
  const lagging = holds.retainFor.filter((h) => h.match < target && h.match >= firstIndex - 1).sort((a, b) => a.match - b.match);
  for (const hold of lagging) {
    if (keptFrom(hold.match + 1) <= (hold.active ? activeRetainFactor * budget : budget)) return hold.match;
  }
  return target;
}

/** CorruptionRecord: where apply() found rotten state — what the store's durable marker holds. */
export interface CorruptionRecord {
  /** index: the log entry whose apply needed the rotten data. */
  index: number;
  /** volume: the volume the entry addressed (undefined if it could not be told). */
  volume: string | undefined;
  /** block: the block number within the volume whose checksum failed (undefined if unknown). */
  block: number | undefined;
  /** message: the original CorruptError's message. */
  message: string;
}

/**
 * StateCorruptError: apply() met rotten state (a block whose checksum fails, e.g. in the
 * read-modify-write of a partial write). Thrown instead of the raw CorruptError once the store
 * has recorded `record` durably; every later apply(), read() and blockStatus() of the same store
 * throws it again. On the next open the store rebuilds its state from local data (a verified
 * snapshot and the log) or refuses to start with the operator's remedy in the message.
 */
export class StateCorruptError extends CorruptError {
  readonly record: CorruptionRecord;
  constructor(record: CorruptionRecord) {
    const where = `${record.volume === undefined ? 'a volume' : `volume "${record.volume}"`}${record.block === undefined ? '' : ` block ${record.block}`}`;
    super(`state corrupt at ${where}, found applying entry ${record.index}: ${record.message}; this replica stops applying and serving until restarted (the restart rebuilds its state)`);
    this.record = { ...record };
  }
}
