/** Pure logic: no servers. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Deltas, addValue } from '../lib/aggregate.ts';
import { loadConfig } from '../lib/config.ts';
import { ConfigError, InputError } from '../lib/errors.ts';
import { decodeBatch, encodeBatch, parseBody, parseLogSimple, type LogEvent } from '../lib/event.ts';
import { flushableRange, sliceOf, sliceStartMs, writeSlice, type SliceId } from '../lib/slice.ts';
import { fnv1a } from '../lib/ring.ts';

const S = (n: number) => n as SliceId;

describe('slice math', () => {
  test('slice = floor(epochSeconds / sliceSeconds), absolute', () => {
    assert.equal(sliceOf(0, 600), 0);
    assert.equal(sliceOf(599_999, 600), 0);
    assert.equal(sliceOf(600_000, 600), 1);
    assert.equal(sliceOf(Date.UTC(2026, 0, 1), 600), Date.UTC(2026, 0, 1) / 600_000);
    assert.equal(sliceStartMs(S(3), 600), 1_800_000);
  });
  test('guard: current and previous slice are kept; older is late; future is clamped', () => {
    assert.deepEqual(writeSlice(S(10), S(10)), { slice: 10, late: false });
    assert.deepEqual(writeSlice(S(9), S(10)), { slice: 9, late: false });
    assert.deepEqual(writeSlice(S(8), S(10)), { slice: 10, late: true });
    assert.deepEqual(writeSlice(S(11), S(10)), { slice: 10, late: true });
  });
  test('flush reads two behind, never older than the ring', () => {
    assert.deepEqual(flushableRange(S(100), 6), { oldest: 95, newest: 98 });
  });
});

describe('event parsing', () => {
  const now = 1_700_000_000_000;
  test('one event, defaults filled', () => {
    assert.deepEqual(parseBody('{"userId": 7, "actionId": 2}', now, 10), [{ userId: '7', actionId: 2, value: 0, at: now }]);
  });
  test('u64 user ids as strings, canonical; ISO times', () => {
    const [e] = parseBody('{"userId": "18446744073709551615", "actionId": "65535", "value": 9007199254740991, "at": "2026-01-01T00:00:00Z"}', now, 10);
    assert.deepEqual(e, { userId: '18446744073709551615', actionId: 65535, value: 9007199254740991, at: Date.UTC(2026, 0, 1) });
    assert.equal(parseBody('{"userId": "007", "actionId": 1}', now, 1)[0]!.userId, '7');
  });
  const bad: [string, RegExp][] = [
    ['{', /^body: is not valid JSON/],
    ['[]', /^event: must be a JSON object/],
    ['{"actionId": 1}', /^userId: is required/],
    ['{"userId": 1}', /^actionId: is required/],
    ['{"userId": -1, "actionId": 1}', /^userId: must be an unsigned 64-bit integer/],
    ['{"userId": 1.5, "actionId": 1}', /^userId: must be an unsigned 64-bit integer/],
    ['{"userId": 18446744073709551616, "actionId": 1}', /^userId: is above 2\^53-1/],
    ['{"userId": "18446744073709551616", "actionId": 1}', /^userId: must be an unsigned 64-bit integer/],
    ['{"userId": " 1", "actionId": 1}', /^userId: must be/],
    ['{"userId": "1\\n", "actionId": 1}', /^userId: must be/],
    ['{"userId": 1, "actionId": 0}', /^actionId: must be an integer from 1 to 65535, got 0/],
    ['{"userId": 1, "actionId": 65536}', /^actionId: must be an integer from 1 to 65535/],
    ['{"userId": 1, "actionId": 1, "value": -3}', /^value: must be an integer from 0 to 2\^53-1, got -3/],
    ['{"userId": 1, "actionId": 1, "value": 0.5}', /^value: must be an integer/],
    ['{"userId": 1, "actionId": 1, "at": "yesterday"}', /^at: must be epoch milliseconds or an ISO-8601/],
    ['{"userId": 1, "actionId": 1, "payload": 5}', /^payload: must be a string/],
    [`{"userId": 1, "actionId": 1, "payload": "${'é'.repeat(2049)}"}`, /^payload: must be at most 4096 bytes/],
    ['{"userId": 1, "actionId": 1, "colour": "red"}', /^"colour": is not a known field/],
    ['{"events": []}', /^events: must not be empty/],
    ['{"events": {}}', /^events: must be an array/],
    ['{"events": [{"userId": 1, "actionId": 1}], "x": 1}', /^"x": is not allowed beside "events"/],
    ['{"events": [{"userId": 1, "actionId": 1}, {"userId": 1, "actionId": 99999}]}', /^events\[1\]\.actionId: must be/],
  ];
  for (const [body, message] of bad) {
    test(`rejects ${body.slice(0, 60)}`, () => {
      assert.throws(() => parseBody(body, now, 10), (err: unknown) => err instanceof InputError && message.test(err.message));
    });
  }
  test('batch limit', () => {
    const body = JSON.stringify({ events: Array.from({ length: 11 }, () => ({ userId: 1, actionId: 1 })) });
    assert.throws(() => parseBody(body, now, 10), /events: must hold at most 10 events, got 11/);
  });
  test('logSimple: the PHP client format', () => {
    assert.deepEqual(parseLogSimple(Buffer.from('{"userid": 5, "actionId": 3, "payload": "x"}'), now), { userId: '5', actionId: 3, value: 0, at: now, payload: 'x' });
    assert.throws(() => parseLogSimple(Buffer.from('{"userId": 5, "actionId": 3}'), now), /logSimple."userId": is not a known field/);
    assert.throws(() => parseLogSimple(Buffer.from('nope'), now), /logSimple: is not valid JSON/);
  });
  test('offlog.batch round trip, versioned', () => {
    const events: LogEvent[] = [
      { userId: '1', actionId: 1, value: 0, at: now },
      { userId: '18446744073709551615', actionId: 65535, value: 9007199254740991, at: now + 1, payload: 'a "quoted"\nline' },
    ];
    assert.deepEqual(decodeBatch(Buffer.from(encodeBatch(events)), 0), events);
    assert.throws(() => decodeBatch(Buffer.from('{"v":2,"e":[]}'), 0), /offlog.batch.v: version 2 is not supported/);
    assert.throws(() => decodeBatch(Buffer.from('{"v":1,"e":[[1,1,0]]}'), 0), /offlog.batch.e\[0\]: must be \[userId/);
    assert.throws(() => decodeBatch(Buffer.from('{"v":1,"e":[[1,0,0,0]]}'), 0), /offlog.batch.e\[0\]\[1\] actionId/);
  });
});

describe('pre-aggregation', () => {
  test('one delta per (slice, user, action); late events go to the current slice', () => {
    const d = new Deltas();
    const cur = S(100);
    const at = (s: number) => s * 60_000 + 5;
    d.addAll(
      [
        { userId: '1', actionId: 1, value: 2, at: at(100) },
        { userId: '1', actionId: 1, value: 3, at: at(100) },
        { userId: '1', actionId: 1, value: 0, at: at(99) },
        { userId: '1', actionId: 1, value: 1, at: at(90) }, // late
        { userId: '1', actionId: 1, value: 1, at: at(500) }, // future
        { userId: '2', actionId: 1, value: 0, at: at(100) },
      ],
      cur,
      60,
    );
    assert.equal(d.events, 6);
    assert.equal(d.lateEvents, 2);
    assert.deepEqual([...d.pairs.keys()].sort(), ['100:1:1', '100:2:1', '99:1:1']);
    assert.deepEqual(d.pairs.get('100:1:1'), { slice: 100, userId: '1', actionId: 1, count: 4, value: 7 });
  });
  test('value sums stay exact past 2^53', () => {
    assert.equal(addValue(Number.MAX_SAFE_INTEGER, 2), 9007199254740993n);
    assert.equal(addValue(5, 6), 11);
  });
  test('server choice is a stable hash', () => {
    assert.equal(fnv1a('1:1'), fnv1a('1:1'));
    assert.notEqual(fnv1a('1:1'), fnv1a('1:2'));
  });
});

describe('config', () => {
  test('defaults from DESIGN.md', () => {
    const c = loadConfig({});
    assert.deepEqual(c.gearmanServers, [{ host: '127.0.0.1', port: 4730 }]);
    assert.equal(c.sliceSeconds, 600);
    assert.equal(c.ringSlices, 6);
    assert.equal(c.tablePrefix, 'ol_');
    assert.equal(c.keyPrefix, 'ol:');
  });
  test('one clear error naming every bad variable', () => {
    assert.throws(
      () => loadConfig({ OFFLOG_SLICE_SECONDS: '10m', OFFLOG_MEMCACHED_SERVERS: 'a:1,b:x', OFFLOG_TABLE_PREFIX: 'drop table;' }),
      (err: unknown) =>
        err instanceof ConfigError &&
        /OFFLOG_SLICE_SECONDS: must be a whole number/.test(err.message) &&
        /OFFLOG_MEMCACHED_SERVERS: "b:x" is not host:port/.test(err.message) &&
        /OFFLOG_TABLE_PREFIX: letters, digits and _ only/.test(err.message),
    );
  });
  test('lists of servers', () => {
    assert.deepEqual(loadConfig({ OFFLOG_GEARMAN_SERVERS: 'a, b:4731' }).gearmanServers, [{ host: 'a', port: 4730 }, { host: 'b', port: 4731 }]);
  });
});
