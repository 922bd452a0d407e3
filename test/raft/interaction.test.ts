// interaction: runs every script in test/raft/testdata/*.txt and compares the transcript with the
// expected output written under each command. A change in the core's behaviour shows up as a
// readable diff. CHARD_REWRITE=1 rewrites the files (review the diff before committing).
import test from 'ava';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { InteractionEnv, parseScript, renderScript } from './interaction.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/test/raft -> test/raft/testdata (scripts are not compiled)
const dataDir = path.resolve(here, '../../../test/raft/testdata');
const rewrite = process.env.CHARD_REWRITE === '1';

for (const file of readdirSync(dataDir).filter((f) => f.endsWith('.txt')).sort()) {
  test(`interaction ${file}`, (t) => {
    const source = readFileSync(path.join(dataDir, file), 'utf8');
    const blocks = parseScript(source);
    t.true(blocks.length > 0, 'script has commands');
    const env = new InteractionEnv();
    const results = blocks.map((b) => ({ ...b, actual: env.run(b.command) }));
    if (rewrite) {
      writeFileSync(path.join(dataDir, file), renderScript(results));
      t.pass();
      return;
    }
    for (const r of results) t.is(r.actual, r.expected, `${file}:${r.line}: ${r.command}`);
  });
}
