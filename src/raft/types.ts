/**
 * types: the vocabulary of the raft core — entries, messages, hard state, configurations,
 * snapshots and the Ready batch — shared by the core, storage, transport and simulator.
 *
 * Terms and indexes are JavaScript numbers (exact up to 2^53); node ids are positive integers,
 * 0 (`None`) meaning "nobody".
 */

export type NodeId = number;
export const None: NodeId = 0;
/**
 * nodeIdMax: node ids are 1..nodeIdMax — the one rule for the config file, the peer wire and the
 * log file (which stores a vote in 32 bits).
 */
export const nodeIdMax = 2 ** 31 - 1;
/**
 * termMax / indexMax: the highest term and log index the log file (src/blockstore/wal.ts, 48-bit
 * fields) holds, and so the highest the peer wire accepts. 2^48 - 1 is more elections than a
 * cluster holds in millennia, and ~89 years of entries at 100,000 a second.
 */
export const termMax = 2 ** 48 - 1;
export const indexMax = 2 ** 48 - 1;

export const EntryType = {
  Normal: 0,
  /** data is an encoded ConfChange (see confchange.ts). */
  ConfChange: 1,
} as const;
export type EntryType = (typeof EntryType)[keyof typeof EntryType];

export interface Entry {
  term: number;
  index: number;
  type: EntryType;
  /** Opaque to raft; an empty array for the no-op entry a new leader appends. */
  data: Uint8Array;
}

/** entryBytes is the size counted against byte limits: payload plus a fixed header estimate. */
export function entryBytes(entry: Entry): number {
  return entry.data.length + 24;
}

/** HardState is what must be durable before any message that depends on it is sent. */
export interface HardState {
  term: number;
  vote: NodeId;
  commit: number;
}

export const emptyHardState: HardState = Object.freeze({ term: 0, vote: None, commit: 0 });

/**
 * ConfState is a cluster configuration. In a joint configuration `votersOutgoing` is non-empty and
 * decisions need a majority of `voters` AND a majority of `votersOutgoing` (Raft thesis §4.3).
 * `learnersNext` are voters of the outgoing config that become learners when the joint config is left.
 */
export interface ConfState {
  voters: NodeId[];
  votersOutgoing: NodeId[];
  learners: NodeId[];
  learnersNext: NodeId[];
  /** autoLeave: the leader proposes leaving the joint config as soon as entering it is applied. */
  autoLeave: boolean;
}

export function emptyConfState(): ConfState {
  return { voters: [], votersOutgoing: [], learners: [], learnersNext: [], autoLeave: false };
}

export const ConfChangeType = {
  AddNode: 'add-node',
  AddLearner: 'add-learner',
  RemoveNode: 'remove-node',
} as const;
export type ConfChangeType = (typeof ConfChangeType)[keyof typeof ConfChangeType];

export interface ConfChangeSingle {
  type: ConfChangeType;
  nodeId: NodeId;
}

/**
 * ConfChange: a membership change. A change that alters the voter set enters a joint
 * configuration (and leaves it automatically); an empty `changes` list leaves a joint config.
 * `context` is carried through untouched (the node layer puts peer addresses there).
 */
export interface ConfChange {
  changes: ConfChangeSingle[];
  context: Uint8Array;
}

export interface SnapshotMetadata {
  index: number;
  term: number;
  confState: ConfState;
  /** Total size of the snapshot data in bytes. */
  sizeBytes: number;
}

/**
 * sameSnapshot: whether two metadata name the same snapshot bytes — the one rule by which a
 * receiver decides that a chunk continues what it has staged. Index and term alone are not enough:
 * a chunk that claims another size for the same (index, term) would otherwise leave the staged
 * bytes beyond the size it claims, and the transfer could never complete.
 */
export function sameSnapshot(a: SnapshotMetadata, b: SnapshotMetadata): boolean {
  return a.index === b.index && a.term === b.term && a.sizeBytes === b.sizeBytes;
}

/**
 * SnapshotChunk: a piece of a snapshot in flight. The leader streams chunks at increasing
 * `offset`; the follower persists each (Ready.snapshotChunks), acknowledges the bytes it holds
 * (SnapResp with `index` = snapshot index and `rejectHint` = bytes held), and installs the whole
 * snapshot once the `last` chunk is durable (Ready.snapshot). A follower that restarts keeps the
 * staged bytes (LogStorage.pendingSnapshot) so the transfer resumes where it stopped.
 */
export interface SnapshotChunk {
  metadata: SnapshotMetadata;
  offset: number;
  data: Uint8Array;
  last: boolean;
}

export const MessageType = {
  // local messages (never sent over the wire)
  Hup: 'Hup',
  Beat: 'Beat',
  Propose: 'Propose',
  CheckQuorum: 'CheckQuorum',
  Unreachable: 'Unreachable',
  // peer messages
  App: 'App',
  AppResp: 'AppResp',
  Vote: 'Vote',
  VoteResp: 'VoteResp',
  PreVote: 'PreVote',
  PreVoteResp: 'PreVoteResp',
  Heartbeat: 'Heartbeat',
  HeartbeatResp: 'HeartbeatResp',
  Snap: 'Snap',
  SnapResp: 'SnapResp',
  TransferLeader: 'TransferLeader',
  TimeoutNow: 'TimeoutNow',
  ReadIndex: 'ReadIndex',
  ReadIndexResp: 'ReadIndexResp',
} as const;
export type MessageType = (typeof MessageType)[keyof typeof MessageType];

/** isLocalMessage: messages a node only ever gives to itself; the transport must refuse them. */
export function isLocalMessage(type: MessageType): boolean {
  return type === 'Hup' || type === 'Beat' || type === 'CheckQuorum' || type === 'Unreachable';
}

/** isResponseMessage: replies, which never cause a term step-down on their own beyond the usual rule. */
export function isResponseMessage(type: MessageType): boolean {
  return (
    type === 'AppResp' ||
    type === 'VoteResp' ||
    type === 'PreVoteResp' ||
    type === 'HeartbeatResp' ||
    type === 'SnapResp' ||
    type === 'ReadIndexResp' ||
    type === 'Unreachable'
  );
}

/**
 * Message: one struct for every message, as in etcd/raft, so the wire codec is one mapping.
 * Field meaning depends on `type` (see raft.ts); unused fields are 0 / empty.
 */
export interface Message {
  type: MessageType;
  from: NodeId;
  to: NodeId;
  term: number;
  /** App: term of the entry before `entries`; Vote/PreVote: term of the candidate's last entry. */
  logTerm: number;
  /** App: index of the entry before `entries`; Vote: candidate's last index; AppResp: match/reject index. */
  index: number;
  entries: Entry[];
  commit: number;
  reject: boolean;
  /** AppResp reject: the follower's hint for fast backtracking; SnapResp: bytes held. */
  rejectHint: number;
  /** AppResp reject: term of the follower's entry at rejectHint (0 if none). */
  rejectTerm: number;
  /** ReadIndex request context; Vote/PreVote: 'transfer' marks a leadership-transfer campaign; Heartbeat: lease tick. */
  context: Uint8Array;
  snapshot?: SnapshotChunk;
}

/** message builds a Message with every unused field zeroed. */
export function message(fields: Partial<Message> & Pick<Message, 'type'>): Message {
  return {
    from: None,
    to: None,
    term: 0,
    logTerm: 0,
    index: 0,
    entries: [],
    commit: 0,
    reject: false,
    rejectHint: 0,
    rejectTerm: 0,
    context: EMPTY_BYTES,
    ...fields,
  };
}

export const EMPTY_BYTES: Uint8Array = new Uint8Array(0);

export const Role = {
  Follower: 'follower',
  PreCandidate: 'pre-candidate',
  Candidate: 'candidate',
  Leader: 'leader',
} as const;
export type Role = (typeof Role)[keyof typeof Role];

export interface SoftState {
  leader: NodeId;
  role: Role;
}

/** ReadState: a linearizable read may be served once appliedIndex >= index. */
export interface ReadState {
  index: number;
  requestContext: Uint8Array;
}

/**
 * Ready: what the application must do, in this order, before calling advance():
 *  1. send `messagesEarly` (a leader's appends/heartbeats: safe before its own fsync, §10.2.1);
 *  2. persist, in one durable transaction: `snapshotChunks` (staging), `snapshot` (install:
 *     replace state, drop log up to its index), `entries` (append, first truncating any stored
 *     entries at index >= entries[0].index), `hardState`;
 *  3. send `messages` (they promise things about durable state: votes, acks);
 *  4. apply `committedEntries` in order (calling applyConfChange for ConfChange entries) and serve
 *     `readStates` once applied;
 *  5. call advance().
 */
export interface Ready {
  softState: SoftState | undefined;
  hardState: HardState | undefined;
  entries: Entry[];
  snapshotChunks: SnapshotChunk[];
  snapshot: SnapshotMetadata | undefined;
  committedEntries: Entry[];
  messagesEarly: Message[];
  messages: Message[];
  readStates: ReadState[];
  /**
   * snapshotWanted: a follower needs entries the log no longer holds and no snapshot reaches the
   * log's start (the log was compacted behind the state machine's durable state, see
   * LogStorage.snapshot): the application should make a snapshot of its applied state. Raft sends
   * nothing to that follower meanwhile and asks again at its next heartbeat response, so a
   * request that the application is already serving may be ignored.
   */
  snapshotWanted?: true;
  /** mustSync: hardState term/vote or entries changed, so the write must be fsynced. */
  mustSync: boolean;
}

/** Random: the only source of randomness of the core; seeded by the caller. */
export interface Random {
  /** int returns a uniformly distributed integer in [0, n). */
  int(n: number): number;
}
