/**
 * helpers: shared pieces of the blockstore tests — a seeded PRNG (every random test prints its
 * seed and replays from it), temp directories, the deterministic batch generator of the crash
 * test (used by the child that writes and by the parent that checks), and a tiny driver that
 * appends commands to a BlockStore's log and applies them as raft would.
 */

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BlockStore } from '../../src/blockstore/index.js';
import { type Command, encodeCommand } from '../../src/blockstore/commands.js';
import type { ApplyOutcome } from '../../src/blockstore/replica-store.js';
import { nextConfState } from '../../src/raft/confchange.js';
import { type Entry, EntryType, type HardState, type SnapshotMetadata } from '../../src/raft/types.js';

/** Prng: mulberry32, seeded; `int(n)` in [0, n). */
export class Prng {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  bytes(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let i = 0;
    for (; i + 4 <= n; i += 4) {
      const v = (this.next() * 4294967296) >>> 0;
      out[i] = v & 255;
      out[i + 1] = (v >>> 8) & 255;
      out[i + 2] = (v >>> 16) & 255;
      out[i + 3] = v >>> 24;
    }
    for (; i < n; i++) out[i] = this.int(256);
    return out;
  }
}

/** seedFromEnv: CHARD_SEED replays a run; otherwise a fixed default (printed by the test). */
export function seedFromEnv(fallback: number): number {
  const env = process.env.CHARD_SEED;
  return env === undefined ? fallback : Number(env);
}

/** tempDir: a fresh directory under the OS temp dir, removed by `cleanup`. */
export function tempDir(prefix: string): { dir: string; cleanup: () => void } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `chard-${prefix}-`));
  return { dir, cleanup: () => fs.rmSync(dir, { recursive: true, force: true }) };
}

/** crashBatch: batch `j` of the crash test, a pure function of (seed, j, lastIndex). */
export function crashBatch(seed: number, j: number, lastIndex: number): { entries: Entry[]; hardState: HardState } {
  const rng = new Prng(seed * 1_000_003 + j);
  const back = rng.int(4) === 0 ? Math.min(rng.int(5), lastIndex) : 0; // overwrite a conflicting suffix
  const start = lastIndex - back + 1;
  const count = 1 + rng.int(32);
  const entries: Entry[] = [];
  for (let i = 0; i < count; i++) {
    const size = rng.int(3000);
    const data = new Uint8Array(size);
    for (let k = 0; k < size; k++) data[k] = (start + i + j * 7 + k) & 255;
    entries.push({ index: start + i, term: j, type: EntryType.Normal, data });
  }
  return { entries, hardState: { term: j, vote: 1, commit: start - 1 } };
}

/** crashModel: the log after batches 1..j (index 1 first). */
export function crashModel(seed: number, j: number): { log: Entry[]; hardState: HardState } {
  let log: Entry[] = [];
  let hardState: HardState = { term: 0, vote: 0, commit: 0 };
  for (let b = 1; b <= j; b++) {
    const batch = crashBatch(seed, b, log.length);
    log = log.slice(0, batch.entries[0]!.index - 1).concat(batch.entries);
    hardState = batch.hardState;
  }
  return { log, hardState };
}

/**
 * drive: appends `commands` to the store's log at term 1 (as a follower would persist them),
 * then applies them; returns the outcomes in order. ConfChange entries go through nextConfState.
 */
export function drive(store: BlockStore, commands: Command[]): ApplyOutcome[] {
  const start = store.logStorage.lastIndex() + 1;
  const entries: Entry[] = commands.map((c, i) => ({ index: start + i, term: 1, type: EntryType.Normal, data: encodeCommand(c) }));
  store.persist({
    entries,
    hardState: { term: 1, vote: 0, commit: start + entries.length - 1 },
    mustSync: true,
    softState: undefined,
    snapshotChunks: [],
    snapshot: undefined,
    committedEntries: [],
    messagesEarly: [],
    messages: [],
    readStates: [],
  });
  return applyCommitted(store, entries);
}

/** applyCommitted: applies log entries from appliedIndex()+1 through the last of `entries`. */
export function applyCommitted(store: BlockStore, entries?: Entry[]): ApplyOutcome[] {
  const from = store.appliedIndex() + 1;
  const to = entries === undefined ? store.logStorage.lastIndex() : entries[entries.length - 1]!.index;
  if (to < from) return [];
  const pending = store.logStorage.entries(from, to + 1, Number.MAX_SAFE_INTEGER);
  const outcomes = store.apply(pending, (cc) => nextConfState(store.state.confState(), cc));
  return (entries ?? pending).map((e) => outcomes.get(e.index)!);
}

/** readAll: the bytes of a volume range as one array (holes as zeros). */
export function readAll(store: BlockStore, volume: string, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  let expected = offset;
  for (const chunk of store.read(volume, offset, length)) {
    if (chunk.offset !== expected) throw new Error(`chunk gap at ${expected}: got ${chunk.offset}`);
    if (chunk.data !== undefined) {
      if (chunk.data.length !== chunk.length) throw new Error('chunk data length mismatch');
      out.set(chunk.data, chunk.offset - offset);
    }
    expected += chunk.length;
  }
  if (expected !== offset + length) throw new Error('chunks do not cover the range');
  return out;
}

/** readyOf: a Ready with nothing in it, to spread the fields a test sets over. */
export function readyOf() {
  return {
    mustSync: true,
    softState: undefined,
    hardState: undefined,
    entries: [] as Entry[],
    snapshotChunks: [],
    snapshot: undefined,
    committedEntries: [],
    messagesEarly: [],
    messages: [],
    readStates: [],
  };
}

/**
 * transferSnapshot: streams snapshot `metadata` of `from` into `to` (snapshotChunk → persist in
 * `chunkBytes` pieces), records it (persist with Ready.snapshot) and installs it, as a follower does;
 * returns how long installSnapshot() blocked, in ms.
 */
export function transferSnapshot(from: BlockStore, to: BlockStore, metadata: SnapshotMetadata, chunkBytes = 4 * 1024 * 1024): number {
  let offset = 0;
  while (offset < metadata.sizeBytes) {
    const data = from.logStorage.snapshotChunk(metadata.index, offset, chunkBytes);
    const last = offset + data.length === metadata.sizeBytes;
    to.persist({ ...readyOf(), snapshotChunks: [{ metadata, offset, data, last }] });
    offset += data.length;
  }
  to.persist({ ...readyOf(), snapshot: metadata, hardState: { term: metadata.term, vote: 0, commit: metadata.index } });
  const started = performance.now();
  to.installSnapshot(metadata);
  return performance.now() - started;
}

/** replayEntries: copies `from`'s log entries [first, last] into `to`'s log and applies them. */
export function replayEntries(from: BlockStore, to: BlockStore, first: number, last: number): void {
  if (last < first) return;
  const entries = from.logStorage.entries(first, last + 1, Number.MAX_SAFE_INTEGER);
  to.persist({ ...readyOf(), entries, hardState: { term: entries[entries.length - 1]!.term, vote: 0, commit: last } });
  applyCommitted(to, entries);
}

/**
 * settledSnapshotFiles: the names in `<dir>/snapshots` once the background unlinks of superseded
 * files (`*.deleted`, log-store removeSnapshotFile) have finished; gives up after `waitMsMax`.
 */
export async function settledSnapshotFiles(dir: string, waitMsMax = 30_000): Promise<string[]> {
  const started = performance.now();
  for (;;) {
    const names = fs.readdirSync(path.join(dir, 'snapshots')).sort();
    if (!names.some((n) => n.endsWith('.deleted')) || performance.now() - started > waitMsMax) return names;
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
