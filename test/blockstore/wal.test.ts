/**
 * wal: SegmentedLog (src/blockstore/wal.ts) keeps what it acknowledged and nothing it did not:
 * entries, hard state and compaction points survive reopening; raft's conflict rule replaces a
 * suffix on disk as in memory; a torn tail is cut off and corruption elsewhere is refused; segments
 * rotate and compaction deletes only what lies below the compaction point; appends in flight share
 * fdatasyncs without blocking the event loop; and a writer killed with SIGKILL mid-append loses no
 * append that had resolved. (SIGKILL keeps the page cache, so the kill test checks recovery of torn
 * and replaced records, not fdatasync itself; no test here can pull the power.)
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from 'node:zlib';
import { SegmentedLog, type WalRecord, WalRecordType, defaultWalLimits, encodeRecord, encodeRecordParts } from '../../src/blockstore/wal.js';
import { CorruptError } from '../../src/errors.js';
import { type Entry, EntryType } from '../../src/raft/types.js';
import { entryData } from './wal-crash-child.js';

const child = path.join(path.dirname(fileURLToPath(import.meta.url)), 'wal-crash-child.js');

function tempDir(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-wal-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function entries(from: number, count: number, term: number, bytes = 64): Entry[] {
  return Array.from({ length: count }, (_, i) => ({ index: from + i, term, type: 0, data: Buffer.alloc(bytes, (from + i) & 0xff) }));
}

async function appendEntries(wal: SegmentedLog, from: number, count: number, term: number, bytes = 64): Promise<void> {
  await wal.append([{ type: WalRecordType.Entries, entries: entries(from, count, term, bytes) }]);
}

test('entries and the hard state survive reopening', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  await appendEntries(wal, 1, 10, 1);
  await wal.append([{ type: WalRecordType.HardState, hardState: { term: 1, vote: 2, commit: 7 } }]);
  await wal.close();
  const again = SegmentedLog.open(dir);
  t.is(again.firstIndex(), 1);
  t.is(again.lastIndex(), 10);
  t.is(again.durableIndex(), 10);
  t.deepEqual(again.hardState(), { term: 1, vote: 2, commit: 7 });
  t.deepEqual(
    again.entries(1, 11, Infinity).map((e) => [e.index, e.term, Buffer.from(e.data).equals(Buffer.alloc(64, e.index))]),
    Array.from({ length: 10 }, (_, i) => [i + 1, 1, true]),
  );
  await again.close();
});

test('an append at or below the last index replaces the suffix, on disk as in memory', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  await appendEntries(wal, 1, 5, 1);
  await appendEntries(wal, 3, 2, 2);
  t.is(wal.lastIndex(), 4);
  t.deepEqual(wal.entries(1, 5, Infinity).map((e) => e.term), [1, 1, 2, 2]);
  await wal.close();
  const again = SegmentedLog.open(dir);
  t.deepEqual(again.entries(1, 5, Infinity).map((e) => e.term), [1, 1, 2, 2]);
  t.is(again.lastIndex(), 4);
  await again.close();
});

test('durableIndex never counts a replacing append that is still in flight', async (t) => {
  const wal = SegmentedLog.open(tempDir(t));
  await appendEntries(wal, 1, 10, 1);
  t.is(wal.durableIndex(), 10);
  const pending = appendEntries(wal, 6, 2, 2);
  // In memory the log is 1..7 now; entries 6 and 7 are the new term's and not on disk yet.
  t.is(wal.lastIndex(), 7);
  t.is(wal.durableIndex(), 5);
  await pending;
  t.is(wal.durableIndex(), 7);
  await wal.close();
});

test('appends in flight share fdatasyncs and the event loop keeps turning while they are written', async (t) => {
  const wal = SegmentedLog.open(tempDir(t));
  let turns = 0;
  const spin = setInterval(() => turns++, 0);
  const all: Promise<void>[] = [];
  for (let i = 0; i < 200; i++) all.push(appendEntries(wal, i + 1, 1, 1, 4096));
  await Promise.all(all);
  clearInterval(spin);
  t.is(wal.durableIndex(), 200);
  t.is(wal.stats.appends, 200);
  t.true(wal.stats.batches < 200, `group commit: ${wal.stats.batches} fdatasyncs for 200 appends`);
  t.true(turns > 0, 'timers ran while the appends were being made durable');
  t.log(`200 appends in ${wal.stats.batches} fdatasyncs; ${turns} timer turns meanwhile`);
  await wal.close();
});

test.serial('compacted segments are unlinked oldest first, across overlapping compactions', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  for (let i = 0; i < 50; i++) await appendEntries(wal, i * 4 + 1, 4, 1, 1000);
  const order: string[] = [];
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const real = SegmentedLog.unlinkFile;
  SegmentedLog.unlinkFile = async (file) => {
    order.push(`start ${path.basename(file)}`);
    await gate; // the first compaction's unlinks stay in flight while the second one runs
    await real(file);
    order.push(`end ${path.basename(file)}`);
  };
  try {
    const first = wal.compact(61);
    while (order.length === 0) await new Promise((resolve) => setImmediate(resolve));
    const second = wal.compact(151);
    for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
    release();
    await Promise.all([first, second]);
  } finally {
    SegmentedLog.unlinkFile = real;
  }
  const starts = order.filter((e) => e.startsWith('start')).map((e) => e.slice(6));
  t.true(starts.length >= 4, `${starts.length} segments unlinked`);
  t.deepEqual(starts, [...starts].sort(), 'oldest first');
  for (let i = 1; i < order.length; i += 2) t.is(order[i], `end ${order[i - 1]!.slice(6)}`, 'one at a time: each ends before the next starts');
  t.deepEqual(readdirSync(dir).sort(), wal.segmentFiles().map((f) => path.basename(f)).sort());
  await wal.close();
});

test('a crash part-way through the unlinks of a compaction leaves segments that open() reads and the COMPACT record drops', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  for (let i = 0; i < 50; i++) await appendEntries(wal, i * 4 + 1, 4, 1, 1000);
  const saved = new Map(wal.segmentFiles().map((file) => [path.basename(file), readFileSync(file)]));
  await wal.compact(101);
  const kept = new Set(wal.segmentFiles().map((file) => path.basename(file)));
  const deleted = [...saved.keys()].filter((name) => !kept.has(name)).sort();
  t.true(deleted.length >= 3, `${deleted.length} segments deleted`);
  t.deepEqual(readdirSync(dir).sort(), [...kept].sort(), 'the files are gone once compact() resolved');
  await wal.close();
  // What a crash part-way through the (oldest-first) unlinks leaves: the newest of them, a
  // contiguous run before the kept ones. (The order itself is the test above.)
  for (const name of deleted.slice(-2)) writeFileSync(path.join(dir, name), saved.get(name)!);
  const again = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  t.is(again.firstIndex(), 101);
  t.is(again.lastIndex(), 200);
  t.is(again.entries(101, 201, Infinity).length, 100);
  await again.close();
});

test('segments rotate; compaction deletes only segments wholly below the compaction point', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  for (let i = 0; i < 50; i++) await appendEntries(wal, i * 4 + 1, 4, 1, 1000);
  const before = wal.segmentFiles().length;
  t.true(before > 5, `${before} segments`);
  await wal.compact(101);
  t.is(wal.firstIndex(), 101);
  t.is(wal.term(100), 1);
  t.true(wal.segmentFiles().length < before);
  await wal.close();
  const again = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  t.is(again.firstIndex(), 101);
  t.is(again.lastIndex(), 200);
  t.is(again.term(100), 1);
  t.is(again.entries(101, 201, Infinity).length, 100);
  t.throws(() => again.entries(50, 60, Infinity));
  await again.close();
});

/** reopensAs: the log in `dir` opens with these first and last indexes and the term before its first entry. */
async function reopensAs(t: ExecutionContext, dir: string, first: number, last: number, termBefore: number): Promise<void> {
  const again = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  t.is(again.firstIndex(), first);
  t.is(again.lastIndex(), last);
  t.is(again.term(first - 1), termBefore);
  if (last >= first) t.is(again.entries(first, last + 1, Infinity).length, last - first + 1);
  await again.close();
}

test('a compaction never deletes the segment its own COMPACT record went to, even when the log moved on meanwhile', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  for (let i = 0; i < 20; i++) await appendEntries(wal, i * 4 + 1, 4, 1, 1000);
  // Compact everything (the COMPACT record lands in the current segment, beside entries all below
  // the point), and before it is durable append an entry that does not fit: the log rotates.
  const compacted = wal.compact(81);
  const next = appendEntries(wal, 81, 1, 1, 15 * 1024);
  await Promise.all([compacted, next]);
  await wal.close();
  await reopensAs(t, dir, 81, 81, 1);
});

test('a compaction point on the first entry of the oldest kept segment reopens (its COMPACT record names the term before it)', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  // One 12 KiB entry per segment: every entry starts a segment.
  for (let i = 1; i <= 6; i++) await appendEntries(wal, i, 1, 1, 12 * 1024);
  t.is(wal.segmentFiles().length, 6);
  await wal.compact(4); // segments of entries 1-3 go; the oldest kept one starts exactly at 4
  await wal.close();
  await reopensAs(t, dir, 4, 6, 1);
});

test('an older COMPACT record among the kept entries, superseded by a later one, does not stop the log from opening', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 16 * 1024 });
  for (let i = 1; i <= 6; i++) await appendEntries(wal, i, 1, 1, 12 * 1024); // one entry per segment
  await wal.compact(2); // its record goes beside entry 6 (as a compaction that relocated while the log grew)
  await wal.compact(6); // deletes the segments of entries 2-5: entry 6's segment, with both records, is the oldest kept
  await wal.close();
  await reopensAs(t, dir, 6, 6, 1);
});

test('a received snapshot beyond the log resets it to the snapshot position', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  await appendEntries(wal, 1, 10, 1);
  await wal.compact(1001, 7);
  t.is(wal.firstIndex(), 1001);
  t.is(wal.lastIndex(), 1000);
  t.is(wal.term(1000), 7);
  await appendEntries(wal, 1001, 2, 7);
  await wal.close();
  const again = SegmentedLog.open(dir);
  t.is(again.firstIndex(), 1001);
  t.is(again.lastIndex(), 1002);
  t.is(again.term(1000), 7);
  await again.close();
});

test('entries evicted from the cache are read back from the file', async (t) => {
  const wal = SegmentedLog.open(tempDir(t), { cacheBytesMax: 8 * 1024 });
  for (let i = 0; i < 20; i++) await appendEntries(wal, i + 1, 1, 1, 4096);
  for (const e of wal.entries(1, 21, Infinity)) t.true(Buffer.from(e.data).equals(Buffer.alloc(4096, e.index)), `entry ${e.index}`);
  await wal.close();
});

test('a torn tail is cut off; everything before it stays', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  await appendEntries(wal, 1, 3, 1);
  await wal.close();
  const [file] = readdirSync(dir).filter((f) => f.endsWith('.log'));
  const full = readFileSync(path.join(dir, file!));
  // Half of a record: a header promising 1000 bytes of payload, then 10 of them.
  const torn = Buffer.alloc(19);
  torn.writeUInt32LE(1000, 0);
  appendFileSync(path.join(dir, file!), torn);
  const again = SegmentedLog.open(dir);
  t.is(again.lastIndex(), 3);
  t.deepEqual(readFileSync(path.join(dir, file!)), full, 'the torn bytes were truncated');
  await appendEntries(again, 4, 1, 1);
  await again.close();
  t.is(SegmentedLog.open(dir).lastIndex(), 4);
});

test('a bad checksum in a segment before the last is corruption: open refuses', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 4096 });
  for (let i = 0; i < 10; i++) await appendEntries(wal, i + 1, 1, 1, 1000);
  await wal.close();
  const files = readdirSync(dir).filter((f) => f.endsWith('.log')).sort();
  t.true(files.length > 1);
  const first = path.join(dir, files[0]!);
  const bytes = readFileSync(first);
  bytes[bytes.length - 5]! ^= 0x40;
  writeFileSync(first, bytes);
  const error = t.throws(() => SegmentedLog.open(dir, { segmentBytesMax: 4096 }));
  t.true(error instanceof CorruptError, String(error));
  t.regex(error!.message, /checksum mismatch/);
});

for (const [name, inlineWriteBytesMax] of [['written on the calling thread', defaultWalLimits.inlineWriteBytesMax], ['written on the thread pool', 0]] as const) test(`SIGKILL while appends are in flight loses no append that resolved (${name})`, async (t) => {
  const dir = tempDir(t);
  for (let round = 0; round < 3; round++) {
    const proc = spawn(process.execPath, [child, dir, String(inlineWriteBytesMax)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    let reported = 0;
    await new Promise<void>((resolve) => {
      proc.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        reported = out.split('\n').filter((l) => l.startsWith('durable ')).length;
        if (reported >= 200 + round * 50) {
          proc.kill('SIGKILL');
          resolve();
        }
      });
    });
    await new Promise((resolve) => proc.once('exit', resolve));
    // Every append that resolved reported (durable index, its last index, its term). After the kill,
    // the log must hold at least the highest durable index reported, with each entry's data intact.
    const lines = out.split('\n').filter((l) => l.startsWith('durable ')).map((l) => l.split(' ').slice(1).map(Number));
    const durable = Math.max(...lines.map((l) => l[0]!));
    const wal = SegmentedLog.open(dir, { segmentBytesMax: 256 * 1024 });
    t.true(wal.lastIndex() >= durable, `round ${round}: last ${wal.lastIndex()} >= acknowledged ${durable}`);
    for (const e of wal.entries(1, wal.lastIndex() + 1, Infinity)) {
      if (!Buffer.from(e.data).equals(entryData(e.index, e.term))) t.fail(`entry ${e.index} term ${e.term} damaged`);
    }
    // The last acknowledged append's entry is there with its own term (a later replacement may only
    // have come after it, in a higher term).
    const last = lines[lines.length - 1]!;
    t.true(wal.term(last[1]!) >= last[2]!);
    await wal.close();
  }
});

test('an append made by the code the previous batch woke is written too (the writer loop never leaves it queued)', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  // Each append is made in the continuation of the previous one: the moment the writer loop resolves its last batch and leaves.
  const step = (i: number): Promise<void> => wal.append([{ type: WalRecordType.Entries, entries: entries(i, 1, 1) }]).then(() => (i < 20 ? step(i + 1) : undefined));
  const chain = step(1);
  const stalled = await Promise.race([chain.then(() => false), new Promise<boolean>((resolve) => setTimeout(() => resolve(true), 20_000).unref())]);
  t.false(stalled, 'every append resolved');
  t.is(wal.durableIndex(), 20);
  await wal.close();
});

test('a hard state appended with sync false is written without an fdatasync, and the segment is synced before the log moves on', async (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir, { segmentBytesMax: 8 * 1024 });
  await appendEntries(wal, 1, 2, 1, 1000);
  t.is(wal.stats.batches, 1);
  await wal.append([{ type: WalRecordType.HardState, hardState: { term: 1, vote: 1, commit: 2 } }], { sync: false });
  t.is(wal.stats.batches, 1, 'no fdatasync for a commit-only hard state');
  t.is(wal.stats.unsyncedBatches, 1);
  t.is(wal.stats.rotationSyncs, 0);
  // The next synced append lands in the same segment: its fdatasync covers the earlier bytes.
  await appendEntries(wal, 3, 1, 1, 1000);
  t.is(wal.stats.batches, 2);
  await wal.append([{ type: WalRecordType.HardState, hardState: { term: 1, vote: 1, commit: 3 } }], { sync: false });
  // This one does not fit: a new segment, and the unsynced tail of the old one is fdatasynced first
  // (a torn record in a segment before the last is corruption, which recovery refuses).
  await appendEntries(wal, 4, 6, 1, 1000);
  t.is(wal.segmentFiles().length, 2);
  t.is(wal.stats.rotationSyncs, 1);
  await wal.close();
  const again = SegmentedLog.open(dir, { segmentBytesMax: 8 * 1024 });
  t.is(again.lastIndex(), 9);
  t.is(again.hardState().commit, 3);
  await again.close();
});

test('only a hard state may skip the fdatasync', (t) => {
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  t.throws(() => wal.append([{ type: WalRecordType.Entries, entries: entries(1, 1, 1) }], { sync: false }), { message: /only a hard state/ });
  wal.closeSync();
});

test('an entries record is written without copying the entry data, in the layout files already on disk have', async (t) => {
  const data = [Buffer.alloc(4096, 7), Buffer.alloc(0), Buffer.from('xyz')];
  const record: WalRecord = { type: WalRecordType.Entries, entries: data.map((d, i): Entry => ({ index: 5 + i, term: 2, type: i === 2 ? EntryType.ConfChange : EntryType.Normal, data: d })) };
  const { parts, bytes } = encodeRecordParts(record);
  // The data arrays themselves are writev buffers: no copy (an empty one is not a part at all).
  t.true(parts.includes(data[0]!));
  t.true(parts.includes(data[2]!));
  t.is(parts.filter((p) => p.length === 0).length, 0);
  // The layout, built by hand: u32 payload length | u32 crc32(type + payload) | u8 type | payload,
  // payload = u32 count, then per entry u48 index, u48 term, u8 type, u32 length, data.
  const payload = Buffer.concat([
    Buffer.from([3, 0, 0, 0]),
    ...data.flatMap((d, i) => {
      const h = Buffer.alloc(17);
      h.writeUIntLE(5 + i, 0, 6);
      h.writeUIntLE(2, 6, 6);
      h.writeUInt8(i === 2 ? 1 : 0, 12);
      h.writeUInt32LE(d.length, 13);
      return [h, d];
    }),
  ]);
  const header = Buffer.alloc(9);
  header.writeUInt32LE(payload.length, 0);
  header.writeUInt32LE(crc32(payload, crc32(Buffer.of(WalRecordType.Entries))) >>> 0, 4);
  header.writeUInt8(WalRecordType.Entries, 8);
  const expected = Buffer.concat([header, payload]);
  t.is(bytes, expected.length);
  t.deepEqual(Buffer.concat(parts), expected);
  t.deepEqual(encodeRecord(record), expected);
  // And a log written this way reads back (many entries: more writev buffers than IOV_MAX).
  const dir = tempDir(t);
  const wal = SegmentedLog.open(dir);
  await wal.append([{ type: WalRecordType.Entries, entries: entries(1, 3000, 1, 16) }]);
  await wal.close();
  const again = SegmentedLog.open(dir);
  t.is(again.lastIndex(), 3000);
  t.deepEqual(again.entries(2999, 3001, Infinity)[0]!.data, Buffer.alloc(16, 2999 & 0xff));
  await again.close();
});
