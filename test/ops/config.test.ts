/**
 * config: the node config file is validated field by field before anything is opened; every error
 * names the field (and loadNodeConfig the file). Unknown fields are refused, so a typo in a
 * limit does not silently fall back to the default.
 */

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'ava';
import { UsageError } from '../../src/errors.js';
import { loadNodeConfig, validateNodeConfig } from '../../src/node/config.js';

const addresses = { raft: '127.0.0.1:7401', admin: '127.0.0.1:7402', nbd: '127.0.0.1:10809' };
const good = { clusterId: 'c-1', id: 1, dataDir: '/var/lib/chard', listen: addresses, initialMembers: { '1': addresses } };

function refused(t: import('ava').ExecutionContext, patch: Record<string, unknown>, message: RegExp): void {
  const error = t.throws(() => validateNodeConfig({ ...good, ...patch }), { instanceOf: UsageError }, JSON.stringify(patch));
  t.regex(error?.message ?? '', message);
}

test('a complete valid config is accepted and normalized', (t) => {
  const config = validateNodeConfig(
    { ...good, dataDir: 'data', metrics: '127.0.0.1:9101', logLevel: 'debug', limits: { compactEveryEntries: 100, readOnlyOption: 'safe' }, store: { cacheEntriesMax: 10, sessions: { sessionsMax: 10 } } },
    '/etc/chard',
  );
  t.is(config.dataDir, '/etc/chard/data');
  t.is(config.metrics, '127.0.0.1:9101');
  t.is(config.logLevel, 'debug');
  t.is(config.limits?.compactEveryEntries, 100);
});

test('unknown fields are refused at every level, naming the field', (t) => {
  refused(t, { metric: '127.0.0.1:1' }, /^metric is not a known field \(known: clusterId, id, /);
  refused(t, { listen: { ...addresses, http: '127.0.0.1:1' } }, /^listen\.http is not a known field/);
  refused(t, { limits: { snapshotEvery: 5 } }, /^limits\.snapshotEvery is not a known field/);
  refused(t, { limits: { snapshotEveryEntries: 5 } }, /^limits\.snapshotEveryEntries was renamed limits\.compactEveryEntries: the log is compacted/);
  refused(t, { store: { cacheEntries: 5 } }, /^store\.cacheEntries is not a known field/);
  refused(t, { store: { checkpointIntervalMs: 200 } }, /^store\.checkpointIntervalMs was renamed store\.checkpointWalBytes and store\.checkpointIdleMs: /);
  refused(t, { store: { checkpointPollMs: 0 } }, /^store\.checkpointPollMs must be at least 1, got 0/);
  refused(t, { store: { checkpointWalBytes: 0 } }, /^store\.checkpointWalBytes must be at least 1/);
  refused(t, { store: { checkpointPollMs: 2 ** 31 } }, /^store\.checkpointPollMs must be at most 60000, got 2147483648/);
  refused(t, { testing: { faults: 'x' } }, /^testing\.faults is not a known field/);
});

test('types, ports, levels and paths are checked, naming the field', (t) => {
  refused(t, { id: 0 }, /^id must be an integer/);
  refused(t, { id: '1' }, /^id must be an integer/);
  refused(t, { clusterId: 'has space' }, /^clusterId/);
  refused(t, { dataDir: '' }, /^dataDir must be a directory path/);
  refused(t, { join: 'yes' }, /^join must be true or false/);
  refused(t, { listen: { ...addresses, nbd: '127.0.0.1:70000' } }, /^listen\.nbd: port 70000 is out of range/);
  refused(t, { listen: { ...addresses, raft: 'nohost' } }, /^listen\.raft: "nohost" is not host:port/);
  refused(t, { initialMembers: { '1': { ...addresses, admin: '127.0.0.1:0' } } }, /^initialMembers\.1\.admin: port 0 is only allowed in listen/);
  refused(t, { initialMembers: { x: addresses } }, /^initialMembers key "x" must be a node id/);
  refused(t, { metrics: 9101 }, /^metrics must be a "host:port" string/);
  refused(t, { metrics: 'localhost:99999' }, /^metrics: port 99999 is out of range/);
  refused(t, { logLevel: 'verbose' }, /^logLevel must be one of fatal, error, warn, info, debug, trace, silent/);
  refused(t, { limits: { tickIntervalMs: -1 } }, /^limits\.tickIntervalMs must be a non-negative integer/);
  refused(t, { limits: { tickIntervalMs: '10' } }, /^limits\.tickIntervalMs must be a non-negative integer/);
  refused(t, { limits: { readOnlyOption: 'fast' } }, /^limits\.readOnlyOption must be one of safe, lease/);
  refused(t, { store: { sessions: { sessionsMax: 1.5 } } }, /^store\.sessions\.sessionsMax must be a non-negative integer/);
  refused(t, { testing: { unsafeLocalReads: 'true' } }, /^testing\.unsafeLocalReads must be true or false/);
  t.notThrows(() => validateNodeConfig({ ...good, listen: { ...addresses, nbd: '127.0.0.1:0' } }), 'listen may ask for any free port');
});

test('loadNodeConfig names the file', (t) => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'chard-ops-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'node.json');
  writeFileSync(file, JSON.stringify({ ...good, lmits: {} }));
  const error = t.throws(() => loadNodeConfig(file), { instanceOf: UsageError });
  t.is(error?.message, `${file}: lmits is not a known field (known: clusterId, id, dataDir, listen, advertise, initialMembers, join, peers, limits, store, metrics, logLevel, tls, testing)`);
});
