/**
 * codec: conversion between raft `Message`s (src/raft/types.ts) and the proto objects of
 * proto/raft.proto as @grpc/proto-loader produces and consumes them (see proto.ts).
 *
 * Encoding trusts its input (it comes from our own raft core) and asserts. Decoding does not: a
 * frame comes from the network, so every field is checked — known message type, no local-only
 * type (isLocalMessage), integers non-negative and safe (<= 2^53 - 1), node ids non-zero, lengths
 * within the named CodecLimits, snapshot chunks only on Snap messages and inside their snapshot —
 * and the first violation rejects the whole frame with a FrameError (the transport counts it).
 * Nothing is allocated from a length before it has been checked; byte fields stay views of the
 * received buffer.
 */

import { assert } from '../assert.js';
import { ErrorCode, UsageError } from '../errors.js';
import { decodeConfChange } from '../raft/confchange.js';
import {
  type ConfState,
  type Entry,
  EntryType,
  isLocalMessage,
  type Message,
  type MessageType,
  type NodeId,
  type SnapshotChunk,
  indexMax,
  nodeIdMax,
  termMax as raftTermMax,
} from '../raft/types.js';

/** CodecLimits: bounds on what one decoded frame may hold. */
export interface CodecLimits {
  /** messagesPerFrameMax: raft messages in one Envelope. */
  messagesPerFrameMax: number;
  /** entriesPerMessageMax: entries in one App / Propose message. */
  entriesPerMessageMax: number;
  /** entryBytesMax: payload bytes of one entry. */
  entryBytesMax: number;
  /** contextBytesMax: bytes of a message context (ReadIndex request contexts, lease marks). */
  contextBytesMax: number;
  /** snapshotChunkBytesMax: data bytes of one snapshot chunk. */
  snapshotChunkBytesMax: number;
  /** confStateMembersMax: ids in each list of a ConfState. */
  confStateMembersMax: number;
  /** clusterIdBytesMax: length of the cluster id string. */
  clusterIdBytesMax: number;
  /**
   * termMax: the highest term a message may carry. A term near 2^53 - 1 accepted once would leave
   * the cluster no next term to elect a leader in (term + 1 is not a safe integer and is refused
   * here). At most the raft layer's termMax (2^48 - 1), the widest term the log file holds.
   */
  termMax: number;
}

export const defaultCodecLimits: CodecLimits = {
  messagesPerFrameMax: 4096,
  entriesPerMessageMax: 65_536,
  entryBytesMax: 8 * 1024 * 1024,
  contextBytesMax: 64 * 1024,
  snapshotChunkBytesMax: 8 * 1024 * 1024,
  confStateMembersMax: 1024,
  clusterIdBytesMax: 64,
  termMax: raftTermMax,
};

/** FrameError: a received frame violates the wire contract; the frame is dropped as a whole. */
export class FrameError extends UsageError {
  /** reason: a short stable key for counting (`transport.frame.rejected.<reason>`). */
  readonly reason: string;
  constructor(reason: string, detail: string) {
    super(ErrorCode.InvalidArgument, `bad raft frame (${reason}): ${detail}`);
    this.reason = reason;
  }
}

// ---------------------------------------------------------------- wire shapes (proto objects)

export interface WireEntry {
  term: number;
  index: number;
  type: string;
  data: Uint8Array;
}
export interface WireConfState {
  voters: number[];
  voters_outgoing: number[];
  learners: number[];
  learners_next: number[];
  auto_leave: boolean;
}
export interface WireSnapshotMetadata {
  index: number;
  term: number;
  conf_state: WireConfState | null;
  size_bytes: number;
}
export interface WireSnapshotChunk {
  metadata: WireSnapshotMetadata | null;
  offset: number;
  data: Uint8Array;
  last: boolean;
}
export interface WireMessage {
  type: string;
  from: number;
  to: number;
  term: number;
  log_term: number;
  index: number;
  entries: WireEntry[];
  commit: number;
  reject: boolean;
  reject_hint: number;
  reject_term: number;
  context: Uint8Array;
  snapshot: WireSnapshotChunk | null;
}
export interface WireEnvelope {
  cluster_id: string;
  from: number;
  to: number;
  messages: WireMessage[];
}

/** Envelope: a decoded frame. */
export interface Envelope {
  clusterId: string;
  from: NodeId;
  to: NodeId;
  messages: Message[];
}

const wireTypeOf: Record<Exclude<MessageType, 'Hup' | 'Beat' | 'CheckQuorum' | 'Unreachable'>, string> = {
  Propose: 'MSG_PROPOSE',
  App: 'MSG_APP',
  AppResp: 'MSG_APP_RESP',
  Vote: 'MSG_VOTE',
  VoteResp: 'MSG_VOTE_RESP',
  PreVote: 'MSG_PRE_VOTE',
  PreVoteResp: 'MSG_PRE_VOTE_RESP',
  Heartbeat: 'MSG_HEARTBEAT',
  HeartbeatResp: 'MSG_HEARTBEAT_RESP',
  Snap: 'MSG_SNAP',
  SnapResp: 'MSG_SNAP_RESP',
  TransferLeader: 'MSG_TRANSFER_LEADER',
  TimeoutNow: 'MSG_TIMEOUT_NOW',
  ReadIndex: 'MSG_READ_INDEX',
  ReadIndexResp: 'MSG_READ_INDEX_RESP',
};
const messageTypeOf = new Map<string, MessageType>(
  Object.entries(wireTypeOf).map(([type, wire]) => [wire, type as MessageType]),
);
const wireEntryTypeOf: Record<EntryType, string> = { [EntryType.Normal]: 'ENTRY_NORMAL', [EntryType.ConfChange]: 'ENTRY_CONF_CHANGE' };
const entryTypeOf = new Map<string, EntryType>([
  ['ENTRY_NORMAL', EntryType.Normal],
  ['ENTRY_CONF_CHANGE', EntryType.ConfChange],
]);

/** wireMessageTypes: every message type that may cross the wire. */
export const wireMessageTypes: readonly MessageType[] = Object.keys(wireTypeOf) as MessageType[];

/** messageHeaderBytes: the fixed per-message estimate used by messageBytes. */
const messageHeaderBytes = 96;

/**
 * messageBytes: an upper-bound estimate of a message's encoded size, used to account queue and
 * frame bytes without encoding twice.
 */
export function messageBytes(m: Message): number {
  let bytes = messageHeaderBytes + m.context.length;
  for (const entry of m.entries) bytes += entry.data.length + 32;
  if (m.snapshot !== undefined) {
    const cs = m.snapshot.metadata.confState;
    bytes += 64 + m.snapshot.data.length;
    bytes += 10 * (cs.voters.length + cs.votersOutgoing.length + cs.learners.length + cs.learnersNext.length);
  }
  return bytes;
}

// ---------------------------------------------------------------- encode

function encodeConfState(cs: ConfState): WireConfState {
  return {
    voters: cs.voters,
    voters_outgoing: cs.votersOutgoing,
    learners: cs.learners,
    learners_next: cs.learnersNext,
    auto_leave: cs.autoLeave,
  };
}

/** encodeMessage: a raft Message as a proto object. Local-only types are a programmer error. */
export function encodeMessage(m: Message): WireMessage {
  assert(!isLocalMessage(m.type), `local message ${m.type} given to the transport`);
  const type = wireTypeOf[m.type as keyof typeof wireTypeOf];
  assert(type !== undefined, `unknown message type ${m.type}`);
  let snapshot: WireSnapshotChunk | null = null;
  if (m.snapshot !== undefined) {
    const s = m.snapshot;
    snapshot = {
      metadata: {
        index: s.metadata.index,
        term: s.metadata.term,
        conf_state: encodeConfState(s.metadata.confState),
        size_bytes: s.metadata.sizeBytes,
      },
      offset: s.offset,
      data: s.data,
      last: s.last,
    };
  }
  return {
    type,
    from: m.from,
    to: m.to,
    term: m.term,
    log_term: m.logTerm,
    index: m.index,
    entries: m.entries.map((e) => ({ term: e.term, index: e.index, type: wireEntryTypeOf[e.type], data: e.data })),
    commit: m.commit,
    reject: m.reject,
    reject_hint: m.rejectHint,
    reject_term: m.rejectTerm,
    context: m.context,
    snapshot,
  };
}

/** encodeEnvelope: one frame of messages, all from `from` to `to`. */
export function encodeEnvelope(clusterId: string, from: NodeId, to: NodeId, messages: readonly Message[]): WireEnvelope {
  assert(messages.length > 0, 'empty frame');
  assert(Number.isSafeInteger(from) && from > 0 && Number.isSafeInteger(to) && to > 0, 'node ids must be positive safe integers');
  for (const m of messages) assert(m.from === from && m.to === to, 'frame mixes links');
  return { cluster_id: clusterId, from, to, messages: messages.map(encodeMessage) };
}

// ---------------------------------------------------------------- decode

function count(value: unknown, field: string): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0) {
    throw new FrameError('bad-integer', `${field} = ${String(value)} is not a safe non-negative integer`);
  }
  return value;
}

function nodeId(value: unknown, field: string): NodeId {
  const id = count(value, field);
  if (id === 0) throw new FrameError('bad-node-id', `${field} is 0`);
  if (id > nodeIdMax) throw new FrameError('bad-node-id', `${field} = ${id} is above ${nodeIdMax}`);
  return id;
}

function bytes(value: unknown, field: string, max: number): Uint8Array {
  if (value === undefined || value === null) return new Uint8Array(0);
  if (!(value instanceof Uint8Array)) throw new FrameError('bad-bytes', `${field} is not bytes`);
  if (value.length > max) throw new FrameError('too-large', `${field} has ${value.length} bytes > ${max}`);
  // A plain Uint8Array view (no copy), whatever subclass the decoder produced.
  return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
}

function bool(value: unknown, field: string): boolean {
  if (value === undefined || value === null) return false;
  if (typeof value !== 'boolean') throw new FrameError('bad-bool', `${field} is not a boolean`);
  return value;
}

function list<T>(value: unknown, field: string, max: number): T[] {
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value)) throw new FrameError('bad-list', `${field} is not a list`);
  if (value.length > max) throw new FrameError('too-many', `${field} has ${value.length} items > ${max}`);
  return value as T[];
}

function decodeConfState(value: WireConfState | null | undefined, limits: CodecLimits): ConfState {
  if (value === null || value === undefined) throw new FrameError('bad-snapshot', 'snapshot metadata lacks conf_state');
  const ids = (field: keyof WireConfState) =>
    list<unknown>(value[field], `conf_state.${field}`, limits.confStateMembersMax).map((id) => nodeId(id, `conf_state.${field}`));
  return {
    voters: ids('voters'),
    votersOutgoing: ids('voters_outgoing'),
    learners: ids('learners'),
    learnersNext: ids('learners_next'),
    autoLeave: bool(value.auto_leave, 'conf_state.auto_leave'),
  };
}

function decodeSnapshot(value: WireSnapshotChunk, limits: CodecLimits): SnapshotChunk {
  const meta = value.metadata;
  if (meta === null || meta === undefined) throw new FrameError('bad-snapshot', 'snapshot chunk lacks metadata');
  const metadata = {
    index: count(meta.index, 'snapshot.index'),
    term: count(meta.term, 'snapshot.term'),
    confState: decodeConfState(meta.conf_state, limits),
    sizeBytes: count(meta.size_bytes, 'snapshot.size_bytes'),
  };
  // The snapshot's index and term become the log's new start (wal.ts stores both in 48 bits).
  if (metadata.index > indexMax) throw new FrameError('bad-snapshot', `snapshot.index ${metadata.index} above ${indexMax}`);
  if (metadata.term > limits.termMax) throw new FrameError('bad-snapshot', `snapshot.term ${metadata.term} above ${limits.termMax}`);
  const offset = count(value.offset, 'snapshot.offset');
  const data = bytes(value.data, 'snapshot.data', limits.snapshotChunkBytesMax);
  if (offset + data.length > metadata.sizeBytes) {
    throw new FrameError('bad-snapshot', `chunk [${offset}, ${offset + data.length}) beyond size ${metadata.sizeBytes}`);
  }
  const last = bool(value.last, 'snapshot.last');
  if (last && offset + data.length !== metadata.sizeBytes) {
    throw new FrameError('bad-snapshot', 'last chunk does not end at the snapshot size');
  }
  return { metadata, offset, data, last };
}

/** decodeMessage: a validated raft Message from a proto object; throws FrameError. */
export function decodeMessage(value: WireMessage, limits: CodecLimits = defaultCodecLimits): Message {
  if (typeof value !== 'object' || value === null) throw new FrameError('bad-message', 'not an object');
  const type = messageTypeOf.get(value.type);
  if (type === undefined) throw new FrameError('unknown-type', `message type ${String(value.type)}`);
  assert(!isLocalMessage(type), 'local types have no wire value');
  const entries: Entry[] = list<WireEntry>(value.entries, 'entries', limits.entriesPerMessageMax).map((e) => {
    if (typeof e !== 'object' || e === null) throw new FrameError('bad-entry', 'entry is not an object');
    const entryType = entryTypeOf.get(e.type);
    if (entryType === undefined) throw new FrameError('unknown-entry-type', `entry type ${String(e.type)}`);
    return {
      term: count(e.term, 'entry.term'),
      index: count(e.index, 'entry.index'),
      type: entryType,
      data: bytes(e.data, 'entry.data', limits.entryBytesMax),
    };
  });
  const m: Message = {
    type,
    from: nodeId(value.from, 'from'),
    to: nodeId(value.to, 'to'),
    term: count(value.term, 'term'),
    logTerm: count(value.log_term, 'log_term'),
    index: count(value.index, 'index'),
    entries,
    commit: count(value.commit, 'commit'),
    reject: bool(value.reject, 'reject'),
    rejectHint: count(value.reject_hint, 'reject_hint'),
    rejectTerm: count(value.reject_term, 'reject_term'),
    context: bytes(value.context, 'context', limits.contextBytesMax),
  };
  const snapshot = value.snapshot;
  if (type === 'Snap') {
    if (snapshot === null || snapshot === undefined) throw new FrameError('bad-snapshot', 'Snap message without a chunk');
    m.snapshot = decodeSnapshot(snapshot, limits);
  } else if (snapshot !== null && snapshot !== undefined) {
    throw new FrameError('bad-snapshot', `snapshot chunk on a ${type} message`);
  }
  checkMessage(m, limits);
  return m;
}

// ---------------------------------------------------------------- what the core assumes

/**
 * notFromPeers: types a chard node never sends to a peer. RawNode.step refuses Propose from a
 * peer (proposals are local), and a TransferLeader received by a follower is forwarded to its
 * leader with `from` still naming the peer, which StreamTransport.send asserts against (inside the
 * Ready loop, so the process would exit); transfers are started on the leader itself.
 */
const notFromPeers: ReadonlySet<MessageType> = new Set<MessageType>(['Propose', 'TransferLeader']);

/** logTermTypes: messages whose logTerm is the term of an entry the sender holds (<= its term). */
const logTermTypes: ReadonlySet<MessageType> = new Set<MessageType>(['App', 'Vote', 'PreVote', 'VoteResp', 'PreVoteResp']);

/**
 * checkMessage: the rules a message must satisfy before the raft core sees it — each protects an
 * assumption of src/raft (docs/transport.md lists them with the assert or rule each protects).
 * Stateless: the same message is accepted or refused whatever the receiver's state.
 */
export function checkMessage(m: Message, limits: CodecLimits = defaultCodecLimits): void {
  if (m.term > limits.termMax) throw new FrameError('bad-term', `term ${m.term} above ${limits.termMax}`);
  if (notFromPeers.has(m.type)) throw new FrameError('not-from-peers', `${m.type} is never sent between nodes`);
  if (m.from === m.to) throw new FrameError('self-message', `message from node ${m.from} to itself`);
  // Raft.step treats term 0 as a local message (no term comparison at all); only a forwarded
  // ReadIndex is sent with term 0 (Raft.send), and it must not carry one (it would raise ours).
  if (m.type === 'ReadIndex') {
    if (m.term !== 0) throw new FrameError('bad-term', `ReadIndex with term ${m.term} (forwarded reads carry term 0)`);
  } else if (m.term === 0) {
    throw new FrameError('bad-term', `${m.type} without a term`);
  }
  if (logTermTypes.has(m.type) && m.logTerm > m.term) {
    throw new FrameError('bad-log-term', `${m.type} log_term ${m.logTerm} above its term ${m.term}`);
  }
  if (m.entries.length > 0 && m.type !== 'App') throw new FrameError('bad-entries', `entries on a ${m.type} message`);
  if (m.type === 'App') checkAppend(m);
  if (m.type === 'AppResp' && m.reject) {
    // The follower's hint is findConflictByTerm(min(index, lastIndex)): never above the rejected index.
    if (m.rejectHint > m.index) throw new FrameError('bad-reject-hint', `reject hint ${m.rejectHint} above the rejected index ${m.index}`);
    if (m.rejectTerm > m.term) throw new FrameError('bad-reject-hint', `reject term ${m.rejectTerm} above the term ${m.term}`);
  }
  if (m.snapshot !== undefined) checkSnapshot(m, m.snapshot);
}

/**
 * checkAppend: entries follow the previous entry (index, logTerm) without gaps — entry i has index
 * `index + 1 + i` — and their terms never decrease, start at or above logTerm and never exceed
 * the leader's term; a ConfChange entry decodes (the state machine decodes it while applying).
 */
function checkAppend(m: Message): void {
  if (m.entries.length === 0) return;
  if (m.index + m.entries.length > indexMax) throw new FrameError('bad-entries', `entry indexes beyond ${indexMax}`);
  let term = m.logTerm;
  for (let i = 0; i < m.entries.length; i++) {
    const entry = m.entries[i]!;
    if (entry.index !== m.index + 1 + i) {
      throw new FrameError('entries-not-contiguous', `entry ${i} has index ${entry.index}, expected ${m.index + 1 + i}`);
    }
    if (entry.term < term || entry.term > m.term) {
      throw new FrameError('bad-entry-term', `entry ${entry.index} has term ${entry.term} outside [${term}, ${m.term}]`);
    }
    term = entry.term;
    if (entry.type === EntryType.ConfChange) {
      try {
        decodeConfChange(entry.data);
      } catch {
        throw new FrameError('bad-conf-change', `entry ${entry.index} is not a ConfChange`);
      }
    }
  }
}

/**
 * checkSnapshot: a snapshot the node could install: an index above 0, a term no higher than the
 * sender's, and a configuration of at least one voter where every id has one role.
 */
function checkSnapshot(m: Message, chunk: SnapshotChunk): void {
  const { index, term, confState: cs } = chunk.metadata;
  if (index === 0) throw new FrameError('bad-snapshot', 'snapshot at index 0');
  if (term > m.term) throw new FrameError('bad-snapshot', `snapshot term ${term} above the message term ${m.term}`);
  if (cs.voters.length === 0) throw new FrameError('bad-snapshot', 'snapshot configuration without voters');
  const voters = new Set(cs.voters);
  const outgoing = new Set(cs.votersOutgoing);
  const learners = new Set(cs.learners);
  const learnersNext = new Set(cs.learnersNext);
  const distinct =
    voters.size === cs.voters.length &&
    outgoing.size === cs.votersOutgoing.length &&
    learners.size === cs.learners.length &&
    learnersNext.size === cs.learnersNext.length;
  if (!distinct) throw new FrameError('bad-snapshot', 'snapshot configuration lists an id twice');
  for (const id of learners) {
    if (voters.has(id) || outgoing.has(id)) throw new FrameError('bad-snapshot', `node ${id} is a voter and a learner`);
  }
  for (const id of learnersNext) {
    if (voters.has(id) || !outgoing.has(id)) throw new FrameError('bad-snapshot', `learner-to-be ${id} is not an outgoing-only voter`);
  }
}

/**
 * decodeEnvelope: a validated frame. Besides each message's own checks, every message must travel
 * the envelope's link (same from and to), so a receiver's per-frame checks cover all of them.
 */
export function decodeEnvelope(value: WireEnvelope, limits: CodecLimits = defaultCodecLimits): Envelope {
  if (typeof value !== 'object' || value === null) throw new FrameError('bad-envelope', 'not an object');
  if (typeof value.cluster_id !== 'string' || value.cluster_id.length > limits.clusterIdBytesMax) {
    throw new FrameError('bad-cluster-id', 'cluster_id missing or too long');
  }
  const from = nodeId(value.from, 'envelope.from');
  const to = nodeId(value.to, 'envelope.to');
  if (from === to) throw new FrameError('self-message', `frame from node ${from} to itself`);
  const wire = list<WireMessage>(value.messages, 'messages', limits.messagesPerFrameMax);
  if (wire.length === 0) throw new FrameError('empty', 'frame without messages');
  const messages = wire.map((w) => {
    if (typeof w !== 'object' || w === null) throw new FrameError('bad-message', 'message is not an object');
    const m = decodeMessage(w, limits);
    if (m.from !== from || m.to !== to) {
      throw new FrameError('link-mismatch', `message ${m.from}->${m.to} in a frame ${from}->${to}`);
    }
    return m;
  });
  return { clusterId: value.cluster_id, from, to, messages };
}
