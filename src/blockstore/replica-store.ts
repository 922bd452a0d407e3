/**
 * replica-store: the contract between the node's Replica (src/node/replica.ts) and its durable
 * storage — ReplicaStore and the shapes it speaks (ApplyOutcome, MemberAddresses). It lives in
 * the storage layer, which implements it (BlockStore), so that imports point one way:
 * raft ← blockstore ← node. src/node/replica.ts re-exports these names.
 */

import type { ErrorCode } from '../errors.js';
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
  /** persist: make the Ready's chunks, snapshot, entries and hard state durable (one fsync). */
  persist(ready: Ready): void;
  /** installSnapshot: replace the state machine with the staged snapshot. */
  installSnapshot(metadata: SnapshotMetadata): void;
  /** apply: apply committed entries in one transaction; ConfChange entries call onConfChange. */
  apply(entries: Entry[], onConfChange: (cc: ConfChange, index: number) => ConfState): Map<number, ApplyOutcome>;
  appliedIndex(): number;
  /** createSnapshot: snapshot the state at the applied index and compact the log behind it. */
  createSnapshot(): SnapshotMetadata | undefined;
  /** createSnapshotAsync: the same, with the copy made off the event loop (preferred when present). */
  createSnapshotAsync?(): Promise<SnapshotMetadata | undefined>;
  members(): Map<NodeId, MemberAddresses>;
  setMember(id: NodeId, addresses: MemberAddresses | undefined): void;
}
