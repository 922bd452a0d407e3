// history: the history.jsonl format round-trips through serialize/parse, and malformed or
// inconsistent input (bad JSON, missing fields, completions without invokes, reused opIds,
// non-unique written values, completions before their invoke) is rejected as a UsageError that
// names the offending line or event. Pairing turns events into ops with the right call/return times.
import test from 'ava';
import { UsageError } from '../../src/errors.js';
import { pairOperations, parseHistory, serializeHistory, type HistoryEvent } from '../../src/chaos/history.js';
import { HistoryBuilder } from './builder.js';

const sample: HistoryEvent[] = new HistoryBuilder()
  .fault('partition', 1, 5, 'n1 | n2 n3')
  .leader(2, 3, 2)
  .write(1, 'v/0', 'a', 0, 1)
  .read('p2', 'v/0', 'a', 2, 3)
  .write(1, 'v/1', 'b', 4, 6, 'info')
  .write(1, 'v/1', 'c', 7, 8, 'fail')
  .op(3, 'flush', '', null, 9, 10)
  .read(3, 'v/1', null, 11, 11, 'open')
  .build();

test('serialize then parse is the identity', (t) => {
  const text = serializeHistory(sample);
  t.is(text.split('\n').length, sample.length + 1, 'one line per event plus the trailing newline');
  t.deepEqual(parseHistory(text), sample);
  t.deepEqual(parseHistory('\n' + text.replace(/\n/g, '\n\n')), sample, 'blank lines are skipped');
});

test('pairing: call/return times, statuses, values', (t) => {
  const ops = pairOperations(sample);
  t.deepEqual(
    ops.map((op) => [op.f, op.status, op.input, op.output, op.callTime, op.returnTime]),
    [
      ['write', 'ok', 'a', null, 0, 1],
      ['read', 'ok', null, 'a', 2, 3],
      ['write', 'info', 'b', null, 4, Infinity],
      ['write', 'fail', 'c', null, 7, 8],
      ['flush', 'ok', null, null, 9, 10],
      ['read', 'info', null, null, 11, Infinity],
    ],
  );
  t.is(ops[2]!.completionTime, 6);
  t.is(ops[5]!.completionTime, null);
});

const bad: [string, string, RegExp][] = [
  ['not JSON', '{"type":', /line 1: not JSON/],
  ['not an object', '[1,2]', /line 1: not a JSON object/],
  ['unknown type', '{"type":"bogus","time":1}', /unknown type/],
  ['negative time', '{"type":"leader","node":1,"term":1,"time":-1}', /time/],
  ['missing process', '{"type":"invoke","opId":1,"f":"read","key":"k","time":1}', /process/],
  ['bad f', '{"type":"invoke","process":1,"opId":1,"f":"cas","key":"k","time":1}', /f must be/],
  ['empty key', '{"type":"invoke","process":1,"opId":1,"f":"read","key":"","time":1}', /key/],
  ['numeric value', '{"type":"invoke","process":1,"opId":1,"f":"write","key":"k","value":7,"time":1}', /value/],
  ['bad phase', '{"type":"fault","fault":"kill","phase":"middle","time":1}', /phase/],
  ['fractional term', '{"type":"leader","node":1,"term":1.5,"time":1}', /term/],
  ['error on second line', '{"type":"leader","node":1,"term":1,"time":1}\n{"type":"leader","term":1,"time":1}', /line 2: node/],
  ['line too long', JSON.stringify({ type: 'fault', fault: 'x'.repeat(70_000), phase: 'start', time: 1 }), /longer than/],
];
for (const [name, text, message] of bad) {
  test(`parse rejects ${name}`, (t) => {
    const error = t.throws(() => parseHistory(text), { instanceOf: UsageError, message });
    t.is((error as UsageError).code, 'INVALID_ARGUMENT');
  });
}

test('pairing rejects inconsistent histories', (t) => {
  const inv = (opId: number, f: 'read' | 'write', value: string | null, time: number, process = 1): HistoryEvent => ({ type: 'invoke', process, opId, f, key: 'k', value, time });
  const done = (opId: number, type: 'ok' | 'fail' | 'info', f: 'read' | 'write', time: number, key = 'k'): HistoryEvent => ({ type, process: 1, opId, f, key, value: null, time });
  t.throws(() => pairOperations([done(1, 'ok', 'read', 1)]), { instanceOf: UsageError, message: /without an open invoke/ });
  t.throws(() => pairOperations([inv(1, 'read', null, 1), done(1, 'ok', 'read', 2), inv(1, 'read', null, 3)]), { message: /invoked twice/ });
  t.throws(() => pairOperations([inv(1, 'write', 'x', 1), inv(2, 'write', 'x', 2)]), { message: /unique/ });
  t.throws(() => pairOperations([inv(1, 'read', null, 5), done(1, 'ok', 'read', 4)]), { message: /before its invoke/ });
  t.throws(() => pairOperations([inv(1, 'read', null, 1), done(1, 'ok', 'write', 2)]), { message: /does not match/ });
  t.throws(() => pairOperations([inv(1, 'read', null, 1), done(1, 'ok', 'read', 2, 'other')]), { message: /does not match/ });
  // The same opId on another process is a different op; the same value on another key is fine.
  t.notThrows(() => pairOperations([inv(1, 'write', 'x', 1), inv(1, 'write', 'y', 1, 2), { type: 'invoke', process: 1, opId: 2, f: 'write', key: 'k2', value: 'x', time: 1 }]));
  // Writes of null (zeroes) need not be unique.
  t.notThrows(() => pairOperations([inv(1, 'write', null, 1), inv(2, 'write', null, 2)]));
});
