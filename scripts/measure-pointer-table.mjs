#!/usr/bin/env node
// measure-pointer-table: what a block table of pointers (volume, block -> segment, offset, crc)
// would cost in SQLite, per 4 KiB of payload the rows stand for (docs/blockstore.md, "Write
// amplification of a block table that points into the log"). One connection, WAL mode, random
// updates in 32-row transactions over a prefilled table, PASSIVE checkpoints every N writes;
// bytes from /proc/self/io write_bytes, the checkpoint and the fsyncs of both files included.
// Usage: node scripts/measure-pointer-table.mjs [dir]   (default: the system temp directory)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';

const dir = fs.mkdtempSync(path.join(process.argv[2] ?? os.tmpdir(), 'pointer-table-'));
const writeBytes = () => Number(/^write_bytes: (\d+)/m.exec(fs.readFileSync('/proc/self/io', 'utf8'))[1]);

function run({ pageSize, withoutRowid, volumeBlocks, writes, batch, checkpointEvery }) {
  const file = path.join(dir, 'p.db');
  for (const suffix of ['', '-wal', '-shm']) fs.rmSync(file + suffix, { force: true });
  const db = new Database(file);
  db.pragma(`page_size = ${pageSize}`);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('wal_autocheckpoint = 0');
  db.pragma('cache_size = -8192');
  db.exec(`CREATE TABLE blocks (v INTEGER NOT NULL, b INTEGER NOT NULL, seg INTEGER NOT NULL, off INTEGER NOT NULL, crc INTEGER NOT NULL, PRIMARY KEY (v, b))${withoutRowid ? ' WITHOUT ROWID' : ''}`);
  const put = db.prepare('INSERT OR REPLACE INTO blocks VALUES (1, ?, ?, ?, ?)');
  const fill = db.transaction((lo, hi) => {
    for (let b = lo; b < hi; b++) put.run(b, 1, b * 4200, 0x7fffffff);
  });
  for (let b = 0; b < volumeBlocks; b += 4096) fill(b, Math.min(volumeBlocks, b + 4096));
  db.pragma('wal_checkpoint(TRUNCATE)');
  const before = writeBytes();
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % volumeBlocks;
  let offset = 0;
  const update = db.transaction((n) => {
    for (let i = 0; i < n; i++) put.run(random(), 7, (offset += 4200), 0x7fffffff);
  });
  for (let i = 0; i < writes; i += batch) {
    update(batch);
    if ((i + batch) % checkpointEvery === 0) db.pragma('wal_checkpoint(PASSIVE)');
  }
  db.pragma('wal_checkpoint(PASSIVE)');
  for (const suffix of ['', '-wal']) {
    const fd = fs.openSync(file + suffix, 'r+');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
  const bytes = writeBytes() - before;
  db.close();
  return bytes / writes / 4096;
}

console.log('volume_MiB page_size table checkpoint_every amplification');
for (const volumeBlocks of [262_144, 1_048_576]) {
  for (const [pageSize, withoutRowid] of [[512, true], [1024, true], [4096, true], [4096, false]]) {
    for (const checkpointEvery of [512, 8192, 32768]) {
      const x = run({ pageSize, withoutRowid, volumeBlocks, writes: 65_536, batch: 32, checkpointEvery });
      console.log(`${(volumeBlocks * 4) / 1024} ${pageSize} ${withoutRowid ? 'without-rowid' : 'rowid'} ${checkpointEvery} ${x.toFixed(3)}x`);
    }
  }
}
fs.rmSync(dir, { recursive: true, force: true });
