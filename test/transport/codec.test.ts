// codec: proves that every raft message type that may cross the wire — entries, contexts and
// snapshot chunks with their metadata and ConfState included — survives encodeEnvelope → protobuf
// bytes (the peer transport's serializer of proto/raft.proto, proto.ts) → decodeEnvelope unchanged
// (fast-check property, 300 random frames), and that decoding rejects bad frames with a FrameError
// naming the reason: unknown and local-only types, negative / unsafe integers, zero node ids,
// lengths over the CodecLimits, chunks on the wrong message or outside their snapshot, and
// messages that do not travel the envelope's link.
import test from 'ava';
import fc from 'fast-check';
import { AssertionFailure } from '../../src/assert.js';
import type { Message, SnapshotChunk } from '../../src/raft/types.js';
import { indexMax, message, nodeIdMax } from '../../src/raft/types.js';
import {
  type CodecLimits,
  decodeEnvelope,
  defaultCodecLimits,
  encodeEnvelope,
  encodeMessage,
  checkMessage,
  FrameError,
  messageBytes,
  type WireEnvelope,
  wireMessageTypes,
} from '../../src/transport/codec.js';
import { deserializeEnvelope, serializeEnvelope } from '../../src/transport/proto.js';
import { encodeConfChange } from '../../src/raft/confchange.js';

const serialize = (value: object) => serializeEnvelope(value);
const deserialize = (bytes: Uint8Array) => deserializeEnvelope(bytes) as WireEnvelope;
const overTheWire = (value: WireEnvelope) => deserialize(serialize(value));

const safe = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });
const small = fc.integer({ min: 0, max: 1000 });
const count = fc.oneof(small, safe);
const id = fc.oneof(fc.integer({ min: 1, max: 9 }), fc.integer({ min: 1, max: nodeIdMax }));
const bytes = (maxLength: number) => fc.uint8Array({ maxLength });
const ids = fc.array(id, { maxLength: 5 });

const confState = fc.record({
  voters: ids,
  votersOutgoing: ids,
  learners: ids,
  learnersNext: ids,
  autoLeave: fc.boolean(),
});

const snapshotChunk: fc.Arbitrary<SnapshotChunk> = fc
  .record({
    index: count,
    term: count,
    confState,
    offset: fc.integer({ min: 0, max: 1 << 30 }),
    data: bytes(256),
    extra: fc.integer({ min: 0, max: 1 << 20 }),
    last: fc.boolean(),
  })
  .map(({ index, term, confState: cs, offset, data, extra, last }) => ({
    metadata: { index, term, confState: cs, sizeBytes: offset + data.length + (last ? 0 : extra) },
    offset,
    data,
    last,
  }));

const entry = fc.record({ term: count, index: count, type: fc.constantFrom(0 as const, 1 as const), data: bytes(64) });

/** peerTypes: the wire types one node sends another (Propose and TransferLeader are refused). */
const peerTypes = wireMessageTypes.filter((type) => type !== 'Propose' && type !== 'TransferLeader');

/** link: every message of a frame travels from 3 to 7 (ids inside a frame must match). */
const from = 3;
const to = 7;
const wireMessage: fc.Arbitrary<Message> = fc
  .record({
    type: fc.constantFrom(...peerTypes),
    term: count,
    logTerm: count,
    index: count,
    entries: fc.array(entry, { maxLength: 4 }),
    commit: count,
    reject: fc.boolean(),
    rejectHint: count,
    rejectTerm: count,
    context: bytes(32),
    chunk: snapshotChunk,
  })
  .map(({ chunk, ...fields }) => {
    const m: Message = { ...message({ type: fields.type }), ...fields, from, to };
    if (m.type === 'Snap') m.snapshot = chunk;
    return obeyRules(m);
  });

const uniq = (ids: number[]) => [...new Set(ids)];

/** obeyRules: the nearest message that satisfies checkMessage (the wire rules), for the round trip. */
function obeyRules(m: Message): Message {
  m.term = m.type === 'ReadIndex' ? 0 : Math.min(Math.max(1, m.term), defaultCodecLimits.termMax);
  m.logTerm = Math.min(m.logTerm, Math.max(m.term, 0));
  if (m.type !== 'App') m.entries = [];
  m.index = Math.min(m.index, indexMax - m.entries.length);
  if (m.snapshot !== undefined) {
    m.snapshot.metadata.index = Math.min(m.snapshot.metadata.index, indexMax);
    m.snapshot.metadata.term = Math.min(m.snapshot.metadata.term, defaultCodecLimits.termMax);
  }
  const terms = m.entries.map((e) => Math.min(Math.max(e.term, m.logTerm), m.term)).sort((a, b) => a - b);
  m.entries = m.entries.map((e, i) => ({
    ...e,
    index: m.index + 1 + i,
    term: terms[i]!,
    data: e.type === 1 ? encodeConfChange({ changes: [{ type: 'add-node', nodeId: 1 + i }], context: e.data }) : e.data,
  }));
  if (m.type === 'AppResp' && m.reject) {
    m.rejectHint = Math.min(m.rejectHint, m.index);
    m.rejectTerm = Math.min(m.rejectTerm, m.term);
  }
  if (m.snapshot !== undefined) {
    const md = m.snapshot.metadata;
    md.index = Math.max(1, md.index);
    md.term = Math.min(md.term, m.term);
    const cs = md.confState;
    cs.voters = uniq(cs.voters.length > 0 ? cs.voters : [1]);
    cs.votersOutgoing = uniq(cs.votersOutgoing);
    cs.learners = uniq(cs.learners).filter((id) => !cs.voters.includes(id) && !cs.votersOutgoing.includes(id));
    cs.learnersNext = uniq(cs.learnersNext).filter((id) => !cs.voters.includes(id) && cs.votersOutgoing.includes(id));
  }
  return m;
}

test('every wire message type round-trips through protobuf bytes unchanged (property)', (t) => {
  const seen = new Set<string>();
  fc.assert(
    fc.property(fc.array(wireMessage, { minLength: 1, maxLength: 8 }), fc.stringMatching(/^[A-Za-z0-9._-]{1,64}$/), (messages, clusterId) => {
      for (const m of messages) seen.add(m.type);
      const decoded = decodeEnvelope(overTheWire(encodeEnvelope(clusterId, from, to, messages)));
      t.is(decoded.clusterId, clusterId);
      t.is(decoded.from, from);
      t.is(decoded.to, to);
      t.deepEqual(decoded.messages, messages);
      for (const m of messages) t.true(messageBytes(m) >= serialize(encodeEnvelope(clusterId, from, to, [m])).length - 80);
    }),
    { numRuns: 300, seed: 20261124 },
  );
  t.deepEqual([...seen].sort(), [...peerTypes].sort(), 'every type peers send was generated');
});

test('a large snapshot chunk with a joint ConfState round-trips', (t) => {
  const data = new Uint8Array(1024 * 1024).map((_, i) => i * 7);
  const chunk: SnapshotChunk = {
    metadata: {
      index: 2 ** 40,
      term: 9,
      confState: { voters: [1, 2, 3], votersOutgoing: [1, 2, 4], learners: [5], learnersNext: [4], autoLeave: true },
      sizeBytes: 3 * data.length,
    },
    offset: 2 * data.length,
    data,
    last: true,
  };
  const m = message({ type: 'Snap', from, to, term: 9, snapshot: chunk });
  const decoded = decodeEnvelope(overTheWire(encodeEnvelope('c', from, to, [m])));
  t.deepEqual(decoded.messages[0], m);
});

test('encoding a local-only message is a programmer error', (t) => {
  for (const type of ['Hup', 'Beat', 'CheckQuorum', 'Unreachable'] as const) {
    t.throws(() => encodeMessage(message({ type, from, to })), { instanceOf: AssertionFailure });
  }
});

/** valid: a correct wire frame to mutate. */
function valid(): WireEnvelope {
  const m = message({ type: 'App', from, to, term: 2, index: 5, entries: [{ term: 2, index: 6, type: 0, data: new Uint8Array(4) }] });
  return overTheWire(encodeEnvelope('c', from, to, [m]));
}

function rejects(t: import('ava').ExecutionContext, frame: WireEnvelope, reason: string, limits: CodecLimits = defaultCodecLimits): void {
  const error = t.throws(() => decodeEnvelope(frame, limits), { instanceOf: FrameError }, reason);
  t.is(error?.reason, reason);
  t.is(error?.code, 'INVALID_ARGUMENT');
}

test('bad frames are rejected with a reason', (t) => {
  t.notThrows(() => decodeEnvelope(valid()));

  let f = valid();
  f.messages[0]!.type = 'MSG_BOGUS';
  rejects(t, f, 'unknown-type');

  f = valid();
  f.messages[0]!.type = 'Hup'; // a local-only type has no wire name at all
  rejects(t, f, 'unknown-type');

  // An enum number this build does not know arrives as a number from the protobuf decoder.
  f = valid();
  (f.messages[0] as unknown as { type: number }).type = 99;
  rejects(t, overTheWire(f), 'unknown-type');

  f = valid();
  f.messages[0]!.term = -1;
  rejects(t, f, 'bad-integer');

  // 2^60 is a valid uint64 but not a safe JavaScript integer: refused after real decoding.
  f = valid();
  f.messages[0]!.index = 2 ** 60;
  rejects(t, overTheWire(f), 'bad-integer');

  f = valid();
  f.messages[0]!.entries[0]!.index = 1.5;
  rejects(t, f, 'bad-integer');

  f = valid();
  f.from = 0;
  rejects(t, f, 'bad-node-id');

  // Above nodeIdMax (a forged vote for 2^53 - 1 once reached the log file, which holds 32 bits).
  f = valid();
  f.messages[0]!.from = 2 ** 53 - 1;
  f.from = 2 ** 53 - 1;
  rejects(t, f, 'bad-node-id');

  f = valid();
  f.messages[0]!.to = 8;
  rejects(t, f, 'link-mismatch');

  f = valid();
  f.messages = [];
  rejects(t, f, 'empty');

  f = valid();
  f.cluster_id = 'x'.repeat(65);
  rejects(t, f, 'bad-cluster-id');

  f = valid();
  f.messages[0]!.entries[0]!.type = 'ENTRY_WHATEVER';
  rejects(t, f, 'unknown-entry-type');

  f = valid();
  f.messages[0]!.context = new Uint8Array(defaultCodecLimits.contextBytesMax + 1);
  rejects(t, f, 'too-large');

  const tight: CodecLimits = { ...defaultCodecLimits, messagesPerFrameMax: 2, entriesPerMessageMax: 1, entryBytesMax: 3 };
  f = valid();
  rejects(t, f, 'too-large', tight); // entry of 4 bytes > 3
  f = valid();
  f.messages[0]!.entries.push(f.messages[0]!.entries[0]!);
  rejects(t, f, 'too-many', { ...tight, entryBytesMax: 100 });
  f = valid();
  f.messages = [f.messages[0]!, f.messages[0]!, f.messages[0]!];
  rejects(t, f, 'too-many', { ...tight, entryBytesMax: 100 });
});

test('snapshot chunks are checked against their message and their snapshot', (t) => {
  const chunk: SnapshotChunk = {
    metadata: { index: 10, term: 2, confState: { voters: [1], votersOutgoing: [], learners: [], learnersNext: [], autoLeave: false }, sizeBytes: 8 },
    offset: 4,
    data: new Uint8Array(4),
    last: true,
  };
  const snap = () => overTheWire(encodeEnvelope('c', from, to, [message({ type: 'Snap', from, to, term: 2, snapshot: chunk })]));
  t.notThrows(() => decodeEnvelope(snap()));

  let f = snap();
  f.messages[0]!.type = 'MSG_APP';
  rejects(t, f, 'bad-snapshot'); // a chunk on an App message

  f = snap();
  f.messages[0]!.snapshot = null;
  rejects(t, f, 'bad-snapshot'); // a Snap without a chunk

  f = snap();
  f.messages[0]!.snapshot!.offset = 6;
  rejects(t, f, 'bad-snapshot'); // beyond the snapshot size

  f = snap();
  f.messages[0]!.snapshot!.offset = 0;
  rejects(t, f, 'bad-snapshot'); // "last" but does not end at the size

  f = snap();
  f.messages[0]!.snapshot!.metadata!.conf_state!.voters = [0];
  rejects(t, f, 'bad-node-id');

  f = snap();
  f.messages[0]!.snapshot!.metadata!.conf_state = null;
  rejects(t, f, 'bad-snapshot');

  f = snap();
  rejects(t, f, 'too-large', { ...defaultCodecLimits, snapshotChunkBytesMax: 3 });
  rejects(t, snap(), 'too-many', { ...defaultCodecLimits, confStateMembersMax: 0 });
});

test('the wire rules of the raft core: each violation is refused with its reason', (t) => {
  const app = (fields: Partial<Message> = {}) =>
    message({
      type: 'App',
      from,
      to,
      term: 5,
      logTerm: 4,
      index: 10,
      commit: 9,
      entries: [11, 12, 13].map((index) => ({ term: 5, index, type: 0 as const, data: new Uint8Array(2) })),
      ...fields,
    });
  const wire = (...messages: Message[]) => overTheWire(encodeEnvelope('c', from, to, messages));
  t.notThrows(() => decodeEnvelope(wire(app())));
  t.notThrows(() => decodeEnvelope(wire(app({ entries: [] }))), 'a heartbeat-like empty append');
  t.notThrows(() => decodeEnvelope(wire(message({ type: 'ReadIndex', from, to, context: new Uint8Array(8) }))));

  // Defect f: entries that are not contiguous after index, or do not start at index + 1.
  const entriesAt = (...indexes: number[]) => indexes.map((index) => ({ term: 5, index, type: 0 as const, data: new Uint8Array(0) }));
  rejects(t, wire(app({ entries: entriesAt(11, 13) })), 'entries-not-contiguous');
  rejects(t, wire(app({ entries: entriesAt(11, 11) })), 'entries-not-contiguous');
  rejects(t, wire(app({ entries: entriesAt(12, 11) })), 'entries-not-contiguous');
  rejects(t, wire(app({ entries: entriesAt(12) })), 'entries-not-contiguous');
  rejects(t, wire(app({ entries: entriesAt(10) })), 'entries-not-contiguous');
  // Indexes the log file cannot hold (48 bits) are refused at the wire, never met by its encoder.
  const overflow = app({ index: indexMax - 1, entries: [] });
  overflow.entries = [indexMax, indexMax + 1].map((index) => ({ term: 5, index, type: 0 as const, data: new Uint8Array(0) }));
  t.throws(() => checkMessage(overflow), { instanceOf: FrameError, message: new RegExp(`beyond ${indexMax}`) });

  // Entry terms: never below the previous entry's (logTerm), never decreasing, never above the leader's term.
  const termsOf = (...terms: number[]) => terms.map((term, i) => ({ term, index: 11 + i, type: 0 as const, data: new Uint8Array(0) }));
  t.notThrows(() => decodeEnvelope(wire(app({ entries: termsOf(4, 4, 5) }))));
  rejects(t, wire(app({ entries: termsOf(3, 5) })), 'bad-entry-term');
  rejects(t, wire(app({ entries: termsOf(5, 4) })), 'bad-entry-term');
  rejects(t, wire(app({ entries: termsOf(5, 6) })), 'bad-entry-term');

  // A ConfChange entry must decode (the state machine decodes it while applying).
  const conf = (data: Uint8Array) => app({ entries: [{ term: 5, index: 11, type: 1, data }] });
  t.notThrows(() => decodeEnvelope(wire(conf(encodeConfChange({ changes: [{ type: 'add-node', nodeId: 4 }], context: new Uint8Array(0) })))));
  rejects(t, wire(conf(new TextEncoder().encode('not json'))), 'bad-conf-change');
  rejects(t, wire(conf(new TextEncoder().encode('{"changes":[{"type":"add-node","nodeId":0}],"context":""}'))), 'bad-conf-change');

  // Terms: every type but ReadIndex carries one (term 0 skips the core's term comparison), within termMax.
  for (const type of ['App', 'AppResp', 'Vote', 'VoteResp', 'PreVote', 'PreVoteResp', 'Heartbeat', 'HeartbeatResp', 'SnapResp', 'TimeoutNow', 'ReadIndexResp'] as const) {
    rejects(t, wire(message({ type, from, to, term: 0 })), 'bad-term');
    t.notThrows(() => decodeEnvelope(wire(message({ type, from, to, term: 1 }))), type);
  }
  rejects(t, wire(message({ type: 'ReadIndex', from, to, term: 3 })), 'bad-term');
  rejects(t, wire(app({ term: defaultCodecLimits.termMax + 1, entries: [] })), 'bad-term');
  for (const type of ['App', 'Vote', 'PreVote', 'VoteResp', 'PreVoteResp'] as const) {
    rejects(t, wire(message({ type, from, to, term: 3, logTerm: 4 })), 'bad-log-term');
  }

  // Types a node never sends to a peer; a message to itself; entries on anything but App.
  rejects(t, wire(message({ type: 'Propose', from, to, term: 1, entries: entriesAt(1) })), 'not-from-peers');
  rejects(t, wire(message({ type: 'TransferLeader', from, to, term: 1 })), 'not-from-peers');
  const self = overTheWire(encodeEnvelope('c', from, to, [app()]));
  self.to = from;
  self.messages[0]!.to = from;
  rejects(t, self, 'self-message');
  rejects(t, wire(message({ type: 'Heartbeat', from, to, term: 5, entries: entriesAt(1) })), 'bad-entries');

  // AppResp rejections: the hint never lies above the rejected index, nor its term above ours.
  t.notThrows(() => decodeEnvelope(wire(message({ type: 'AppResp', from, to, term: 5, index: 10, reject: true, rejectHint: 7, rejectTerm: 4 }))));
  rejects(t, wire(message({ type: 'AppResp', from, to, term: 5, index: 10, reject: true, rejectHint: 11 })), 'bad-reject-hint');
  rejects(t, wire(message({ type: 'AppResp', from, to, term: 5, index: 10, reject: true, rejectHint: 7, rejectTerm: 6 })), 'bad-reject-hint');
});

test('snapshot metadata must describe an installable snapshot', (t) => {
  const cs = { voters: [1, 2, 3], votersOutgoing: [] as number[], learners: [4], learnersNext: [] as number[], autoLeave: false };
  const snap = (metadata: Partial<SnapshotChunk['metadata']> = {}, confState: Partial<typeof cs> = {}) =>
    overTheWire(
      encodeEnvelope('c', from, to, [
        message({
          type: 'Snap',
          from,
          to,
          term: 5,
          snapshot: { metadata: { index: 10, term: 5, sizeBytes: 4, confState: { ...cs, ...confState }, ...metadata }, offset: 0, data: new Uint8Array(4), last: true },
        }),
      ]),
    );
  t.notThrows(() => decodeEnvelope(snap()));
  t.notThrows(() => decodeEnvelope(snap({}, { voters: [1, 3], votersOutgoing: [1, 2, 3], learnersNext: [2], autoLeave: true })), 'a joint configuration demoting 2');
  rejects(t, snap({ index: 0 }), 'bad-snapshot');
  rejects(t, snap({ term: 6 }), 'bad-snapshot');
  rejects(t, snap({}, { voters: [] }), 'bad-snapshot');
  rejects(t, snap({}, { voters: [1, 1, 2] }), 'bad-snapshot');
  rejects(t, snap({}, { learners: [2] }), 'bad-snapshot');
  rejects(t, snap({}, { votersOutgoing: [1, 2, 5], learners: [5] }), 'bad-snapshot');
  rejects(t, snap({}, { learnersNext: [5] }), 'bad-snapshot');
  rejects(t, snap({}, { votersOutgoing: [1, 2, 3], learnersNext: [3] }), 'bad-snapshot');
});
