// peer-fuzz: proves no peer input crashes a node. A child process (peer-fuzz-child.ts) runs a real
// three-node cluster — BlockStore, StreamTransport on loopback and Replica with its production
// timers — committing a small write every 20 ms. This process opens its own raft connections to
// every node and sends frames through the real peer wire (framing.ts), each built around the target
// node's live state (term, last index, commit). A seeded PRNG drives everything: a failure replays with
// PEER_FUZZ_SEED (PEER_FUZZ_RUNS, PEER_FUZZ_FORGED_RUNS; PEER_FUZZ_BREAKS=gap,reversed limits the
// malformed phase to those breaks).
//
// Phase 1 (12,000 frames): valid messages with at least one rule broken per frame — gaps,
// duplicates, reversal and a wrong start in the entries, entry terms below logTerm or above the
// message term, undecodable ConfChange entries, term 0 / ReadIndex with a term / a term beyond
// termMax, logTerm above the term, Propose and TransferLeader, unknown types, zero ids, a message
// to itself or off the envelope's link, unsafe integers, entries or chunks on the wrong type,
// lying reject hints, oversized contexts, 65,537 entries, 4,097 messages, empty frames, insane
// snapshot metadata, wrong cluster or node, random bytes and byte damage. Every frame must be
// refused whole: afterwards a new write commits on every node, the core never refused a message
// by an exception (`raft.message.refused` = 0) and every rule was reached.
// Phase 2 (4,000 frames): anything, including well-formed forged messages from members and
// non-members with future terms. Raft without peer authentication cannot stay consistent under
// forgery, so only survival is asserted: the process lives and every node answers.
//
// Against the code before this change (f6235b7) phase 1 kills the child within a second:
// "message from 3 sent by node 2" (a TransferLeader a follower forwarded, asserted in
// the transport's send from the Ready loop) and, with PEER_FUZZ_BREAKS=gap,duplicate,reversed,
// wrongStart, "appended entries are contiguous" in SqliteLogStorage.persist (defect f). Phase 2
// against the old RawNode.step kills it with "a compacted log implies a snapshot" (a forged AppResp
// beyond the leader's log, asserted from advance() in a setImmediate).
import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { encodeCommand } from '../../src/blockstore/commands.js';
import { encodeConfChange } from '../../src/raft/confchange.js';
import { encodeFrame, FrameKind } from '../../src/transport/framing.js';
import { serializeEnvelope } from '../../src/transport/proto.js';
import { RawPeer } from './raw-peer.js';

const seed = Number(process.env['PEER_FUZZ_SEED'] ?? 20261201);
/** fuzzHelloFrom: the node id the fuzzer's connections say Hello as (no member of the cluster). */
const fuzzHelloFrom = 999;
const childScript = fileURLToPath(new URL('./peer-fuzz-child.js', import.meta.url));
const MAX = Number.MAX_SAFE_INTEGER;

// ---------------------------------------------------------------- seeded randomness

/** Rng: mulberry32, so a seed replays the same sequence of frames. */
class Rng {
  private state: number;
  constructor(seedValue: number) {
    this.state = seedValue >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(values: readonly T[]): T {
    return values[this.int(values.length)]!;
  }
  bytes(max: number): Buffer {
    const b = Buffer.alloc(this.int(max + 1));
    for (let i = 0; i < b.length; i++) b[i] = this.int(256);
    return b;
  }
}

// ---------------------------------------------------------------- the child

interface NodeStatus {
  id: number;
  role: string;
  term: number;
  commit: number;
  applied: number;
  lastIndex: number;
  leader: number;
  volumes: string[];
}

class Child {
  readonly process: ChildProcess;
  exited: string | undefined;
  stderr = '';
  private waiting = new Map<string, (value: Record<string, unknown>) => void>();
  constructor(fuzzSeed: number) {
    this.process = fork(childScript, [String(fuzzSeed)], { stdio: ['ignore', 'inherit', 'pipe', 'ipc'] });
    this.process.stderr!.on('data', (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString()).slice(-8000);
    });
    this.process.on('exit', (code, signal) => {
      this.exited = `child exited (code ${code}, signal ${signal}); stderr:\n${this.stderr}`;
      for (const resolve of this.waiting.values()) resolve({ exited: this.exited });
      this.waiting.clear();
    });
    this.process.on('message', (raw) => {
      const value = raw as Record<string, unknown>;
      const key = Object.keys(value).find((k) => this.waiting.has(k)) ?? ('written' in value || 'error' in value ? 'write' : '');
      const resolve = this.waiting.get(key);
      if (resolve !== undefined) {
        this.waiting.delete(key);
        resolve(value);
      }
    });
  }
  ask(key: string, request: object): Promise<Record<string, unknown>> {
    if (this.exited !== undefined) return Promise.resolve({ exited: this.exited });
    return new Promise((resolve) => {
      this.waiting.set(key, resolve);
      this.process.send(request);
    });
  }
  async status(): Promise<NodeStatus[]> {
    const answer = await this.ask('status', { cmd: 'status' });
    if (answer['exited'] !== undefined) throw new Error(String(answer['exited']));
    return answer['status'] as NodeStatus[];
  }
}

// ---------------------------------------------------------------- raw peer streams

const serialize = (value: object): Buffer => Buffer.from(serializeEnvelope(value));

/**
 * RawStream: frames to one node over its raft port, as raw envelope payloads so the fuzzer can
 * send any bytes. A batch of frames goes on a fresh connection (Hello first), followed by a ping;
 * the node handles frames in order, so its pong means every frame of the batch was handled —
 * unless the node ended the connection early (a frame of another cluster or node, bytes that are
 * no Envelope), which is why such frames are sent in a batch of their own.
 */
class RawStream {
  opened = 0;
  endedByNode = 0;
  constructor(
    private readonly address: string,
    private readonly clusterId: string,
    private readonly nodeId: number,
  ) {}
  async send(frames: Buffer[]): Promise<void> {
    const peer = new RawPeer(this.address);
    this.opened++;
    peer.hello(this.clusterId, fuzzHelloFrom, this.nodeId);
    for (const f of frames) peer.write(encodeFrame(FrameKind.Envelope, f));
    peer.write(encodeFrame(FrameKind.Ping));
    const pong = await peer.frame(FrameKind.Pong, 30_000);
    if (pong === undefined) this.endedByNode++;
    peer.destroy();
  }
  close(): void {}
}

// ---------------------------------------------------------------- generators

const wireTypes = [
  'MSG_APP',
  'MSG_APP',
  'MSG_APP',
  'MSG_APP_RESP',
  'MSG_APP_RESP',
  'MSG_VOTE',
  'MSG_VOTE_RESP',
  'MSG_PRE_VOTE',
  'MSG_PRE_VOTE_RESP',
  'MSG_HEARTBEAT',
  'MSG_HEARTBEAT_RESP',
  'MSG_SNAP',
  'MSG_SNAP',
  'MSG_SNAP_RESP',
  'MSG_TIMEOUT_NOW',
  'MSG_READ_INDEX',
  'MSG_READ_INDEX_RESP',
  'MSG_PROPOSE',
  'MSG_TRANSFER_LEADER',
  'MESSAGE_TYPE_UNSPECIFIED',
];

/** near: a value around `base`: mostly close to it, sometimes 0, huge or out of range. */
function near(rng: Rng, base: number): number {
  switch (rng.int(12)) {
    case 0:
      return 0;
    case 1:
      return base + rng.int(1_000_000);
    case 2:
      return rng.pick([MAX, MAX - 1, 2 ** 53 + 2, 2 ** 63, -1, 1.5]);
    case 3:
      return Math.max(0, base - rng.int(20));
    default:
      return Math.max(0, base + rng.int(5) - 2);
  }
}

function confChangeData(rng: Rng): Buffer {
  if (rng.chance(0.5)) {
    const type = rng.pick(['add-node', 'add-learner', 'remove-node']);
    return Buffer.from(encodeConfChange({ changes: [{ type: type as 'add-node', nodeId: 1 + rng.int(6) }], context: new Uint8Array(0) }));
  }
  return rng.pick([Buffer.from('{"changes":[{"type":"boom","nodeId":0}],"context":""}'), Buffer.from('not json'), rng.bytes(40)]);
}

function entries(rng: Rng, index: number, term: number): object[] {
  const count = rng.chance(0.9) ? rng.int(5) : rng.chance(0.97) ? rng.int(300) : 66_000;
  const list: { term: number; index: number; type: string | number; data: Buffer }[] = [];
  for (let i = 0; i < count; i++) {
    const conf = count < 300 && rng.chance(0.08);
    const data = conf ? confChangeData(rng) : rng.chance(0.5) ? Buffer.from(encodeCommand({ kind: 'noop' })) : rng.bytes(count < 300 ? 64 : 2);
    list.push({ term, index: index + 1 + i, type: conf ? 'ENTRY_CONF_CHANGE' : 'ENTRY_NORMAL', data });
  }
  if (list.length > 0 && rng.chance(0.5)) {
    const at = rng.int(list.length);
    switch (rng.int(8)) {
      case 0: // a gap
        for (let i = at; i < list.length; i++) list[i]!.index += 1 + rng.int(3);
        break;
      case 1: // a duplicate index
        list[at]!.index = list[Math.max(0, at - 1)]!.index;
        break;
      case 2: // reversed
        list.reverse();
        break;
      case 3: // not starting at index + 1
        for (const e of list) e.index += rng.pick([-1, 1, 2, 1000]);
        break;
      case 4: // a term above the message's
        list[at]!.term = term + 1 + rng.int(5);
        break;
      case 5: // decreasing terms
        list[at]!.term = Math.max(0, term - 1 - rng.int(3));
        break;
      case 6:
        list[at]!.index = near(rng, list[at]!.index);
        list[at]!.term = near(rng, term);
        break;
      default:
        list[at]!.type = rng.pick([7, 'ENTRY_CONF_CHANGE']);
    }
  }
  return list;
}

function confState(rng: Rng): object {
  if (rng.chance(0.6)) return { voters: [1, 2, 3], voters_outgoing: [], learners: [], learners_next: [], auto_leave: false };
  const ids = () => Array.from({ length: rng.int(4) }, () => rng.pick([0, 1, 2, 3, 4, 9, MAX, 2 ** 60]));
  return { voters: ids(), voters_outgoing: ids(), learners: ids(), learners_next: ids(), auto_leave: rng.chance(0.5) };
}

function snapshot(rng: Rng, s: NodeStatus, term: number): object {
  const sizeBytes = rng.pick([0, 10, 4096, 100_000, rng.int(1 << 20), MAX]);
  const offset = rng.chance(0.6) ? 0 : near(rng, sizeBytes / 2);
  const data = rng.bytes(rng.chance(0.9) ? 64 : 4096);
  return {
    metadata: rng.chance(0.05)
      ? null
      : { index: near(rng, s.commit + rng.int(50)), term: rng.chance(0.7) ? term : near(rng, term), conf_state: rng.chance(0.03) ? null : confState(rng), size_bytes: sizeBytes },
    offset,
    data,
    last: rng.chance(0.5) ? offset + data.length === sizeBytes : rng.chance(0.5),
  };
}

function message(rng: Rng, s: NodeStatus, from: number, to: number): object {
  const type = rng.chance(0.02) ? rng.int(40) : rng.pick(wireTypes);
  const term = rng.chance(0.6) ? s.term + rng.int(3) : near(rng, s.term);
  const index = rng.chance(0.5) ? s.lastIndex + rng.int(3) - 1 : near(rng, s.lastIndex);
  const logTerm = rng.chance(0.7) ? Math.max(0, s.term - rng.int(2)) : near(rng, s.term);
  const m: Record<string, unknown> = {
    type,
    from: rng.chance(0.92) ? from : near(rng, from),
    to: rng.chance(0.95) ? to : near(rng, to),
    term: type === 'MSG_READ_INDEX' && rng.chance(0.7) ? 0 : term,
    log_term: logTerm,
    index,
    entries: type === 'MSG_APP' || rng.chance(0.01) ? entries(rng, index, Number.isSafeInteger(term) ? term : s.term) : [],
    commit: rng.chance(0.5) ? s.commit + rng.int(3) : near(rng, s.commit),
    reject: rng.chance(0.3),
    reject_hint: near(rng, index),
    reject_term: near(rng, logTerm),
    context: rng.chance(0.8) ? Buffer.alloc(0) : rng.chance(0.3) ? Buffer.from('transfer') : rng.chance(0.9) ? rng.bytes(32) : Buffer.alloc(64 * 1024 + 1),
    snapshot: type === 'MSG_SNAP' ? (rng.chance(0.97) ? snapshot(rng, s, term) : null) : rng.chance(0.03) ? snapshot(rng, s, term) : null,
  };
  return m;
}

const fromIds = [2, 3, 1, 2, 3, 1, 4, 9, 1000, MAX, 0];

/** Frame: encoded bytes; `alone` when the node may end the stream on it (sent in a batch of its own). */
interface Frame {
  bytes: Buffer;
  alone: boolean;
}

function frame(rng: Rng, s: NodeStatus, clusterId: string): Frame {
  if (rng.chance(0.04)) return { bytes: rng.bytes(200), alone: true }; // plain random bytes
  const candidates = fromIds.filter((id) => id !== s.id);
  const from = rng.chance(0.97) ? rng.pick(candidates) : rng.pick([s.id, 0, 2 ** 53]);
  const to = rng.chance(0.97) ? s.id : rng.pick([0, 9, (s.id % 3) + 1, MAX]);
  const count = rng.chance(0.8) ? 1 : rng.chance(0.95) ? 2 + rng.int(4) : rng.pick([0, 4097]);
  // A frame of thousands of messages carries small ones (a big one is tried one per frame).
  const messages = Array.from({ length: count }, () =>
    count > 5 ? { type: rng.pick(wireTypes.slice(3, 11)), from, to, term: s.term, index: s.lastIndex } : message(rng, s, from, to),
  );
  const envelope = {
    cluster_id: rng.chance(0.98) ? clusterId : rng.pick(['other', 'x'.repeat(65)]),
    from,
    to,
    messages,
  };
  let bytes: Buffer;
  try {
    bytes = serialize(envelope);
  } catch {
    return { bytes: rng.bytes(64), alone: true };
  }
  let alone = envelope.cluster_id !== clusterId || to !== s.id;
  if (rng.chance(0.1)) {
    alone = true;
    // byte-level mutation of a real frame: flips, truncation, insertion
    bytes = Buffer.from(bytes);
    for (let k = 1 + rng.int(3); k > 0 && bytes.length > 0; k--) {
      const at = rng.int(bytes.length);
      const kind = rng.int(3);
      if (kind === 0) bytes[at] = rng.int(256);
      else if (kind === 1) bytes = bytes.subarray(0, at);
      else bytes = Buffer.concat([bytes.subarray(0, at), rng.bytes(8), bytes.subarray(at)]);
    }
  }
  return { bytes, alone };
}

// ---------------------------------------------------------------- phase 1: every frame breaks a rule

const validTypes = [
  'MSG_APP',
  'MSG_APP',
  'MSG_APP',
  'MSG_APP_RESP',
  'MSG_VOTE',
  'MSG_VOTE_RESP',
  'MSG_PRE_VOTE',
  'MSG_PRE_VOTE_RESP',
  'MSG_HEARTBEAT',
  'MSG_HEARTBEAT_RESP',
  'MSG_SNAP',
  'MSG_SNAP',
  'MSG_SNAP_RESP',
  'MSG_TIMEOUT_NOW',
  'MSG_READ_INDEX',
  'MSG_READ_INDEX_RESP',
];

type WireObject = Record<string, any>;

/** validMessage: a message the node would accept, built around its live state. */
function validMessage(rng: Rng, s: NodeStatus, from: number, to: number, forcedType?: string): WireObject {
  const type = forcedType ?? rng.pick(validTypes);
  const term = Math.max(1, s.term) + rng.int(2);
  const index = Math.max(0, s.lastIndex - rng.int(3));
  const logTerm = Math.max(1, s.term);
  const m: WireObject = {
    type,
    from,
    to,
    term: type === 'MSG_READ_INDEX' ? 0 : term,
    log_term: logTerm,
    index,
    entries: [],
    commit: s.commit,
    reject: false,
    reject_hint: 0,
    reject_term: 0,
    context: Buffer.alloc(0),
    snapshot: null,
  };
  if (type === 'MSG_APP') {
    const count = 1 + rng.int(4);
    for (let i = 0; i < count; i++) m['entries'].push({ term, index: index + 1 + i, type: 'ENTRY_NORMAL', data: Buffer.from(encodeCommand({ kind: 'noop' })) });
  }
  if (type === 'MSG_SNAP') m['snapshot'] = validChunk(s, term);
  return m;
}

function validChunk(s: NodeStatus, term: number): WireObject {
  return {
    metadata: { index: s.commit + 1, term, conf_state: { voters: [1, 2, 3], voters_outgoing: [], learners: [], learners_next: [], auto_leave: false }, size_bytes: 100 },
    offset: 0,
    data: Buffer.alloc(50, 7),
    last: false,
  };
}

/**
 * breaks: ways to make a valid message violate one wire rule (docs/transport.md); each returns
 * false when it does not apply to the message. A frame with one broken message is refused whole.
 */
const breaks: Record<string, (rng: Rng, m: WireObject, s: NodeStatus) => boolean> = {
  gap: (rng, m) => {
    const e = m['entries'];
    if (e[0] === undefined) return false;
    if (e.length < 2) e.push({ ...e[0], index: e[0].index + 1 });
    const at = 1 + rng.int(e.length - 1);
    for (let i = at; i < e.length; i++) e[i].index += 1 + rng.int(3);
    return true;
  },
  duplicate: (_rng, m) => {
    const e = m['entries'];
    if (e.length < 2) return false;
    e[1].index = e[0].index;
    return true;
  },
  reversed: (_rng, m) => {
    const e = m['entries'];
    if (e.length < 2) return false;
    e.reverse();
    return true;
  },
  wrongStart: (rng, m) => {
    if (m['entries'].length === 0) return false;
    const by = rng.pick([-1, 1, 2, 1_000_000]);
    for (const e of m['entries']) e.index += by;
    return true;
  },
  entryTermAbove: (rng, m) => {
    const e = m['entries'];
    if (e.length === 0) return false;
    e[e.length - 1].term = m['term'] + 1 + rng.int(3);
    return true;
  },
  entryTermBelow: (_rng, m) => {
    const e = m['entries'];
    if (e.length === 0 || m['log_term'] < 1) return false;
    e[0].term = m['log_term'] - 1;
    return true;
  },
  badConfChange: (rng, m) => {
    const e = m['entries'];
    if (e.length === 0) return false;
    e[rng.int(e.length)].type = 'ENTRY_CONF_CHANGE';
    for (const entry of e) if (entry.type === 'ENTRY_CONF_CHANGE') entry.data = rng.pick([Buffer.from('not json'), Buffer.from('{"changes":[{"type":"boom","nodeId":0}],"context":""}'), rng.bytes(30)]);
    return true;
  },
  unknownEntryType: (_rng, m) => {
    if (m['entries'].length === 0) return false;
    m['entries'][0].type = 7;
    return true;
  },
  hugeEntryCount: (rng, m) => {
    if (m['type'] !== 'MSG_APP' || !rng.chance(0.05)) return false;
    m['entries'] = Array.from({ length: 65_537 }, (_, i) => ({ term: m['term'], index: m['index'] + 1 + i, type: 'ENTRY_NORMAL', data: Buffer.alloc(0) }));
    return true;
  },
  termZero: (_rng, m) => {
    if (m['type'] === 'MSG_READ_INDEX') return false;
    m['term'] = 0;
    for (const e of m['entries']) e.term = 0;
    m['log_term'] = 0;
    return true;
  },
  readIndexWithTerm: (_rng, m, s) => {
    if (m['type'] !== 'MSG_READ_INDEX') return false;
    m['term'] = s.term + 1;
    return true;
  },
  futureTermBeyondMax: (rng, m) => {
    m['term'] = 2 ** 48 + 1 + rng.int(1000);
    return true;
  },
  logTermAbove: (_rng, m) => {
    if (!['MSG_APP', 'MSG_VOTE', 'MSG_PRE_VOTE', 'MSG_VOTE_RESP', 'MSG_PRE_VOTE_RESP'].includes(m['type'])) return false;
    m['log_term'] = m['term'] + 1;
    return true;
  },
  notFromPeers: (rng, m) => {
    m['type'] = rng.pick(['MSG_PROPOSE', 'MSG_TRANSFER_LEADER']);
    if (m['type'] === 'MSG_PROPOSE') m['entries'] = [{ term: 0, index: 0, type: 'ENTRY_NORMAL', data: Buffer.from('x') }];
    m['snapshot'] = null;
    return true;
  },
  unknownType: (rng, m) => {
    m['type'] = rng.pick([0, 16, 99, 'MESSAGE_TYPE_UNSPECIFIED']);
    return true;
  },
  zeroFrom: (_rng, m) => {
    m['from'] = 0;
    return true;
  },
  otherLink: (rng, m) => {
    if (rng.chance(0.5)) m['to'] = 9;
    else m['from'] = 1000;
    return true;
  },
  unsafeInteger: (rng, m) => {
    const field = rng.pick(['term', 'index', 'commit', 'log_term', 'reject_hint', 'reject_term', 'from']);
    m[field] = rng.pick([2 ** 53 + 2, 2 ** 60, -1]);
    return true;
  },
  entriesElsewhere: (_rng, m) => {
    if (m['type'] === 'MSG_APP') return false;
    m['entries'] = [{ term: Math.max(1, m['term']), index: m['index'] + 1, type: 'ENTRY_NORMAL', data: Buffer.alloc(1) }];
    return true;
  },
  rejectHintAbove: (rng, m) => {
    if (m['type'] !== 'MSG_APP_RESP') return false;
    m['reject'] = true;
    if (rng.chance(0.5)) m['reject_hint'] = m['index'] + 1 + rng.int(10);
    else m['reject_term'] = m['term'] + 1;
    return true;
  },
  contextTooLarge: (_rng, m) => {
    m['context'] = Buffer.alloc(64 * 1024 + 1);
    return true;
  },
  snapshotElsewhere: (_rng, m, s) => {
    if (m['type'] === 'MSG_SNAP') return false;
    m['snapshot'] = validChunk(s, Math.max(1, m['term']));
    return true;
  },
  badSnapshot: (rng, m) => {
    if (m['type'] !== 'MSG_SNAP') return false;
    const chunk = m['snapshot'];
    const cs = chunk.metadata.conf_state;
    switch (rng.int(10)) {
      case 0:
        chunk.metadata.index = 0;
        break;
      case 1:
        chunk.metadata.term = m['term'] + 1;
        break;
      case 2:
        cs.voters = [];
        break;
      case 3:
        cs.voters = [1, 1, 2];
        break;
      case 4:
        cs.learners = [rng.pick([1, 2, 3])];
        break;
      case 5:
        cs.learners_next = [4];
        break;
      case 6:
        chunk.offset = 90;
        break;
      case 7:
        chunk.last = true;
        break;
      case 8:
        chunk.metadata = null;
        break;
      default:
        chunk.metadata.conf_state = null;
    }
    return true;
  },
  snapshotMissing: (_rng, m) => {
    if (m['type'] !== 'MSG_SNAP') return false;
    m['snapshot'] = null;
    return true;
  },
};
/** PEER_FUZZ_BREAKS=gap,reversed: only these breaks (and no envelope-level ones), to replay one kind. */
const onlyBreaks = process.env['PEER_FUZZ_BREAKS']?.split(',');
const breakNames = onlyBreaks ?? Object.keys(breaks);

/** brokenFrame: 1-4 messages around the node's state, at least one broken; or a broken envelope. */
function brokenFrame(rng: Rng, s: NodeStatus, clusterId: string, used: Map<string, number>): Frame {
  const members = [1, 2, 3].filter((id) => id !== s.id);
  const from = rng.chance(0.8) ? rng.pick(members) : rng.pick([4, 9, 1000]);
  const count = rng.chance(0.7) ? 1 : 2 + rng.int(3);
  const messages = Array.from({ length: count }, () => validMessage(rng, s, from, s.id));
  const envelope: WireObject = { cluster_id: clusterId, from, to: s.id, messages };
  let alone = false;
  let kind: string;
  const roll = onlyBreaks === undefined ? rng.int(100) : 100;
  if (roll < 3) {
    kind = 'envelope.wrong-cluster';
    envelope['cluster_id'] = rng.pick(['other', '']);
    alone = true;
  } else if (roll < 6) {
    kind = 'envelope.wrong-node';
    envelope['to'] = rng.pick(members);
    for (const m of messages) m['to'] = envelope['to'];
    alone = true;
  } else if (roll < 7) {
    kind = 'envelope.empty';
    envelope['messages'] = [];
  } else if (roll < 8) {
    kind = 'envelope.too-many';
    envelope['messages'] = Array.from({ length: 4097 }, () => ({ ...validMessage(rng, s, from, s.id), type: 'MSG_HEARTBEAT_RESP', entries: [], snapshot: null }));
  } else if (roll < 9) {
    kind = 'envelope.long-cluster-id';
    envelope['cluster_id'] = 'x'.repeat(65);
  } else if (roll < 12) {
    kind = 'bytes.random';
    used.set(kind, (used.get(kind) ?? 0) + 1);
    return { bytes: rng.bytes(300), alone: true };
  } else {
    let target = messages[rng.int(messages.length)]!;
    for (let attempt = 0; ; attempt++) {
      kind = rng.pick(breakNames);
      if (breaks[kind]!(rng, target, s)) break;
      if (attempt > 20) {
        // none of the chosen breaks applies to this type: break an App instead
        target = validMessage(rng, s, from, s.id, 'MSG_APP');
        messages[0] = target;
      }
    }
  }
  used.set(kind, (used.get(kind) ?? 0) + 1);
  let bytes = serialize(envelope);
  if (rng.chance(0.05)) {
    // byte-level damage on top of the broken frame: truncation or flipped bytes
    bytes = Buffer.from(rng.chance(0.5) ? bytes.subarray(0, rng.int(bytes.length)) : bytes);
    for (let k = rng.int(3); k > 0 && bytes.length > 0; k--) bytes[rng.int(bytes.length)] = rng.int(256);
    alone = true;
  }
  return { bytes, alone };
}

// ---------------------------------------------------------------- the test

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const phase1Runs = Number(process.env['PEER_FUZZ_RUNS'] ?? 12_000);
const phase2Runs = Number(process.env['PEER_FUZZ_FORGED_RUNS'] ?? 4_000);

interface Counted {
  rejected: Record<string, number>;
  refusedInCore: number;
}

async function counted(child: Child): Promise<Counted> {
  const answer = await child.ask('counts', { cmd: 'counts' });
  if (answer['exited'] !== undefined) throw new Error(String(answer['exited']));
  const counts = answer['counts'] as Record<string, Record<string, number>>;
  const rejected: Record<string, number> = {};
  let refusedInCore = 0;
  for (const nodeCounts of Object.values(counts)) {
    for (const [name, value] of Object.entries(nodeCounts)) {
      const prefix = 'transport.frame.rejected.';
      if (name.startsWith(prefix)) rejected[name.slice(prefix.length)] = (rejected[name.slice(prefix.length)] ?? 0) + value;
    }
    refusedInCore += nodeCounts['raft.message.refused'] ?? 0;
  }
  return { rejected, refusedInCore };
}

test.serial('no peer input crashes a node; after malformed frames the cluster serves, after forged ones it lives', async (t) => {
  t.timeout(600_000);
  const child = new Child(seed);
  t.teardown(() => {
    child.process.kill('SIGKILL');
  });
  const ready = await new Promise<{ nodes: { id: number; raft: string }[]; clusterId: string }>((resolve, reject) => {
    child.process.once('message', (m) => resolve(m as { nodes: { id: number; raft: string }[]; clusterId: string }));
    child.process.once('exit', () => reject(new Error(child.exited)));
  });
  const streams = new Map(ready.nodes.map((n) => [n.id, new RawStream(n.raft, ready.clusterId, n.id)]));
  t.teardown(() => {
    for (const s of streams.values()) s.close();
  });
  const leaderWait = performance.now();
  while (!(await child.status()).some((n) => n.role === 'leader')) {
    if (performance.now() > leaderWait + 60_000) throw new Error('no leader before the fuzz');
    await sleep(50);
  }
  t.log(`seed ${seed}; leader after ${((performance.now() - leaderWait) / 1000).toFixed(1)} s`);

  /** run: `runs` frames from `make`, round robin over the nodes, each built on the node's live state. */
  const run = async (name: string, runs: number, make: (rng: Rng, s: NodeStatus) => Frame, rng: Rng) => {
    const started = performance.now();
    let status = await child.status();
    let bytesSent = 0;
    const pending = new Map<number, Buffer[]>();
    const flush = async (id: number) => {
      const frames = pending.get(id) ?? [];
      pending.delete(id);
      if (frames.length > 0) await streams.get(id)!.send(frames);
    };
    for (let i = 0; i < runs && child.exited === undefined; i++) {
      if (i % 100 === 0) status = await child.status().catch(() => status);
      const target = status[i % status.length]!;
      const f = make(rng, target);
      bytesSent += f.bytes.length;
      if (f.alone) {
        await flush(target.id);
        await streams.get(target.id)!.send([f.bytes]);
      } else {
        const batch = pending.get(target.id) ?? [];
        batch.push(f.bytes);
        pending.set(target.id, batch);
        if (batch.length >= 50) await flush(target.id);
      }
      if (process.env['PEER_FUZZ_VERBOSE'] && i % 500 === 499) process.stderr.write(`${name} ${i + 1} ${JSON.stringify(status.map((n) => [n.id, n.role, n.term, n.commit]))}\n`);
    }
    for (const id of streams.keys()) await flush(id);
    t.log(`${name}: ${runs} frames (${(bytesSent / 1048576).toFixed(1)} MiB) in ${((performance.now() - started) / 1000).toFixed(1)} s`);
  };

  // Phase 1: every frame breaks at least one wire rule, so every frame must be refused whole.
  const used = new Map<string, number>();
  const before = await child.status();
  await run('malformed', phase1Runs, (rng, s) => brokenFrame(rng, s, ready.clusterId, used), new Rng(seed));
  if (child.exited !== undefined) {
    t.fail(`the node process died during the malformed phase (seed ${seed}): ${child.exited}`);
    return;
  }
  const written = await child.ask('write', { cmd: 'write', name: 'after-malformed', timeoutMs: 60_000 });
  t.is(written['error'], undefined, String(written['error'] ?? ''));
  let after = await child.status();
  const applyDeadline = performance.now() + 60_000;
  while (!after.every((n) => n.volumes.includes('after-malformed')) && performance.now() < applyDeadline) {
    await sleep(100);
    after = await child.status();
  }
  t.true(after.every((n) => n.volumes.includes('after-malformed')), `every node applied a write after the malformed phase: ${JSON.stringify(after)}`);
  const phase1 = await counted(child);
  t.log(`breaks used: ${JSON.stringify(Object.fromEntries(used))}`);
  t.log(`rejected by reason: ${JSON.stringify(phase1.rejected)}`);
  t.log(`terms before ${before.map((n) => n.term).join('/')}, after ${after.map((n) => n.term).join('/')}; commit ${after.map((n) => n.commit).join('/')}`);
  for (const reason of ['entries-not-contiguous', 'bad-entry-term', 'bad-conf-change', 'bad-term', 'bad-log-term', 'not-from-peers', 'self-message', 'bad-entries', 'bad-reject-hint', 'bad-snapshot', 'bad-integer', 'bad-node-id', 'unknown-type', 'unknown-entry-type', 'link-mismatch', 'too-large', 'too-many', 'empty', 'bad-cluster-id']) {
    if (onlyBreaks === undefined) t.true((phase1.rejected[reason] ?? 0) > 0, `the malformed phase reaches the rule ${reason}`);
  }
  t.is(phase1.refusedInCore, 0, 'no malformed message reached the raft core (the wire caught everything)');
  t.true(after.every((n) => n.term < 2 ** 48), 'no term beyond the wire bound was adopted');

  // Phase 2: well-formed and forged messages as well (any id, any term, plausible indexes). Raft
  // without peer authentication cannot keep such a cluster consistent, but no node may die.
  await run('forged', phase2Runs, (rng, s) => frame(rng, s, ready.clusterId), new Rng(seed + 1));
  if (child.exited !== undefined) {
    t.fail(`the node process died during the forged phase (seed ${seed}): ${child.exited}`);
    return;
  }
  await sleep(500);
  const last = await child.status();
  t.is(last.length, 3, 'every node still answers');
  const phase2 = await counted(child);
  t.log(`after the forged phase: ${JSON.stringify(last.map((n) => ({ id: n.id, role: n.role, term: n.term, commit: n.commit })))}; messages the core refused by an exception: ${phase2.refusedInCore}`);
  t.is(child.exited, undefined, 'the node process is alive');
});
