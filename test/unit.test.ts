/** Pure logic: no servers. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Deltas, addValue } from '../lib/domain/aggregate.ts';
import { retry } from '../lib/base/backoff.ts';
import { loadConfig } from '../lib/base/config.ts';
import { ConfigError, FlushClockError, InputError } from '../lib/base/errors.ts';
import { decodeBatch, decodeBatchColumns, encodeBatch, newEventColumns, parseBody, parseLogSimple, type LogEvent } from '../lib/domain/contract.ts';
import { flushableRange, sliceOf, sliceStartMs, writeSlice, type SliceId } from '../lib/domain/slice.ts';
import { checkFlushTime, restartedAfter } from '../lib/flush/flush.ts';
import { fnv1a, Placement } from '../lib/count/placement.ts';

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
    // Version 2 (events sent as watched) is the bus's: test/bus.test.ts.
    assert.throws(() => decodeBatch(Buffer.from('{"v":3,"e":[]}'), 0), /offlog.batch.v: version 3 is not supported/);
    assert.throws(() => decodeBatch(Buffer.from('{"v":1,"e":[[1,1,0]]}'), 0), /offlog.batch.e\[0\]: must be \[userId/);
    assert.throws(() => decodeBatch(Buffer.from('{"v":1,"e":[[1,0,0,0]]}'), 0), /offlog.batch.e\[0\]\[1\] actionId/);
  });
});

describe('offlog.batch fast path', () => {
  const now = Date.UTC(2026, 0, 1);
  const fast = (text: string): LogEvent[] | null => {
    const cols = newEventColumns(2);
    if (!decodeBatchColumns(Buffer.from(text), cols)) return null;
    return Array.from({ length: cols.length }, (_, i) => ({ userId: String(cols.user[i]), actionId: cols.action[i]!, value: cols.value[i]!, at: cols.at[i]! }));
  };
  test('reads what OffLogClient writes exactly as decodeBatch does', () => {
    const events: LogEvent[] = [];
    for (let i = 0; i < 1000; i++) events.push({ userId: String(i * 7919), actionId: 1 + (i % 65535), value: i % 3 === 0 ? 0 : i * 1_000_003, at: now + i });
    events.push({ userId: '999999999999999', actionId: 65535, value: 999999999999999, at: Date.UTC(2999, 11, 31) });
    const text = encodeBatch(events);
    assert.deepEqual(fast(text), decodeBatch(Buffer.from(text), 0));
    assert.deepEqual(fast('{"v":1,"e":[]}'), []);
  });
  test('anything else is left to decodeBatch, which accepts or names the field', () => {
    const cases = [
      '{"v":1,"e":[[1,1,0,1]] }', // whitespace: valid JSON
      '{"e":[[1,1,0,1]],"v":1}', // other key order: valid JSON
      '{"v":1,"e":[["1",1,0,1]]}', // user id as a string
      '{"v":1,"e":[[1,1,0,1,"payload"]]}', // payload
      '{"v":1,"e":[[1234567890123456,1,0,1]]}', // 16 digits: may not be exact
      '{"v":1,"e":[[1,1,0,1.5]]}', // fraction
      '{"v":1,"e":[[1,1,0,-1]]}', // negative
      '{"v":1,"e":[[1,0,0,1]]}', // action 0
      '{"v":1,"e":[[1,65536,0,1]]}', // action too large
      '{"v":1,"e":[[1,1,0,32503680000000]]}', // year 3000
      '{"v":1,"e":[[01,1,0,1]]}', // leading zero: not JSON
      '{"v":1,"e":[[1,1,0]]}', // three fields
      '{"v":1,"e":[[1,1,0,1,2,3]]}', // six fields
      '{"v":1,"e":[[1,1,0,1]]', // cut short
      '{"v":1,"e":[[1,1,0,1]]}x', // trailing bytes
      '{"v":1,"e":[[1,1,0,1],]}', // trailing comma
      '{"v":2,"e":[[1,1,0,1]]}', // version
      '{"v":1,"e":[[1,1,null,1]]}', // null value
      '',
    ];
    for (const text of cases) assert.equal(fast(text), null, `fast path must refuse ${text}`);
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
    assert.deepEqual(
      d.pairs.map((p) => `${p.slice}:${p.userId}:${p.actionId}`).sort(),
      ['100:1:1', '100:2:1', '99:1:1'],
    );
    assert.deepEqual(d.pairs.find((p) => p.slice === 100 && p.userId === '1'), { slice: 100, userId: '1', actionId: 1, count: 4, value: 7 });
  });
  test('user ids of every size fold apart, and columns fold like events', () => {
    const cur = S(100);
    const at = 100 * 60_000 + 5;
    const users = ['0', '1', '137438953471', '137438953472', '999999999999999', '9007199254740993', '18446744073709551615', '18446744073709551614'];
    const events: LogEvent[] = [];
    for (const userId of users) for (const actionId of [1, 65535]) events.push({ userId, actionId, value: 1, at }, { userId, actionId, value: 2, at });
    const d = new Deltas();
    d.addAll(events, cur, 60);
    assert.equal(d.pairs.length, users.length * 2);
    for (const p of d.pairs) assert.ok(p.count === 2 && p.value === 3, `${p.userId}:${p.actionId} folded to ${p.count}/${p.value}`);
    // The same events (those with ids below 2^53) as columns give the same deltas.
    const small = events.filter((e) => e.userId.length < 16);
    const cols = newEventColumns(1);
    assert.ok(decodeBatchColumns(Buffer.from(encodeBatch(small)), cols), 'the fast path reads encodeBatch output');
    const c = new Deltas();
    c.addColumns(cols, cur, 60);
    assert.deepEqual(c.pairs, d.pairs.filter((p) => p.userId.length < 16));
    assert.equal(c.events, small.length);
  });
  test('value sums stay exact past 2^53, up to 2^64 - 1, and are held there, never wrapped', () => {
    assert.equal(addValue(Number.MAX_SAFE_INTEGER, 2), 9007199254740993n);
    assert.equal(addValue(5, 6), 11);
    assert.equal(addValue(18446744073709551614n, 1), 18446744073709551615n);
    assert.equal(addValue(18446744073709551615n, 1), 18446744073709551615n);
    assert.equal(addValue(18446744073709551615n, 18446744073709551615n), 18446744073709551615n);
    const at = 100 * 60_000;
    // 4,096 events of 2^53 - 1 for one pair pass 2^64: the sum is held, the count exact.
    const d = new Deltas();
    d.addAll(Array.from({ length: 4096 }, (): LogEvent => ({ userId: '7', actionId: 1, value: Number.MAX_SAFE_INTEGER, at })), S(100), 60);
    assert.deepEqual(d.pairs, [{ slice: 100, userId: '7', actionId: 1, count: 4096, value: 18446744073709551615n }]);
    // The columns' fast path takes values up to 15 digits: 20,000 of the largest pass 2^64 too.
    const cols = newEventColumns(1);
    const events = Array.from({ length: 20_000 }, (): LogEvent => ({ userId: '7', actionId: 1, value: 999_999_999_999_999, at }));
    assert.ok(decodeBatchColumns(Buffer.from(encodeBatch(events)), cols), 'the fast path reads the batch');
    const c = new Deltas();
    c.addColumns(cols, S(100), 60);
    assert.deepEqual(c.pairs, [{ slice: 100, userId: '7', actionId: 1, count: 20_000, value: 18446744073709551615n }]);
  });
  test('moving slices the flush took: every moved event is late once, those the guard had clamped too', () => {
    const d = new Deltas();
    const at = (s: number) => s * 60_000 + 5;
    const e = (slice: number, actionId = 1) => ({ userId: '1', actionId, value: 1, at: at(slice) });
    // A worker whose clock says slice 100: 3 events of its own slices, 2 clamped into 100 (one from the past, one from the future).
    d.addAll([e(100), e(100), e(99, 2), e(90), e(105)], S(100), 60);
    assert.equal(d.lateEvents, 2);
    // The flush took slices up to 100: everything in them goes to 101, as late. 5 events, 5 late, not 2 + 5.
    const m = d.movedAbove(S(100), S(101));
    assert.equal(m.events, 5);
    assert.deepEqual([...m.late], [[101, 5]]);
    assert.deepEqual(m.pairs.map((p) => `${p.slice}:${p.actionId}:${p.count}`).sort(), ['101:1:4', '101:2:1']);
    // Only 99 taken: the 4 events in 100 (2 of them already late) stay as they are; the one in 99 moves.
    const k = d.movedAbove(S(99), S(101));
    assert.deepEqual([...k.late].sort(), [[100, 2], [101, 1]]);
    assert.equal(k.lateEvents, 3);
    // Taken up to 100 but moved to 105: the event of 105 the guard had clamped into 100 is home, not late.
    const h = d.movedAbove(S(100), S(105));
    assert.deepEqual([...h.late], [[105, 4]]);
  });
  test('moved twice (the watermark rose again meanwhile): still late once; eventsThrough says what moved', () => {
    const at = (s: number) => s * 60_000 + 5;
    const d = new Deltas();
    d.addAll([{ userId: '1', actionId: 1, value: 2, at: at(99) }, { userId: '1', actionId: 1, value: 3, at: at(100) }, { userId: '1', actionId: 1, value: 4, at: at(90) }], S(100), 60);
    const once = d.movedAbove(S(99), S(101));
    assert.deepEqual([...once.late].sort(), [[100, 1], [101, 1]]);
    const twice = once.movedAbove(S(101), S(102));
    assert.deepEqual([...twice.late], [[102, 3]]);
    assert.deepEqual(twice.pairs.map((p) => [p.slice, p.count, p.value]), [[102, 3, 9]]);
    assert.deepEqual([d.eventsThrough(S(98)), d.eventsThrough(S(99)), d.eventsThrough(S(101))], [0, 1, 3]);
  });
  test('FNV-1a matches its published test vectors', () => {
    // From the FNV reference (32-bit FNV-1a): "" → 0x811c9dc5, "a" → 0xe40c292c, "foobar" → 0xbf9cf968.
    assert.equal(fnv1a(''), 0x811c9dc5);
    assert.equal(fnv1a('a'), 0xe40c292c);
    assert.equal(fnv1a('foobar'), 0xbf9cf968);
  });
  test('placement: writers use the current pool, readers also look where the previous pool put a key', () => {
    const a = { host: '127.0.0.1', port: 1 }, b = { host: '127.0.0.1', port: 2 }, c = { host: '127.0.0.1', port: 3 };
    const p = new Placement([a, b, c], [a]);
    assert.deepEqual(p.servers, [a, b, c]);
    let both = 0;
    for (let i = 0; i < 300; i++) {
      const key = `${i}:1`;
      const w = p.writer(key);
      assert.equal(w, fnv1a(key) % 3);
      const r = p.readers(key);
      assert.equal(r[0], w);
      assert.deepEqual(r, w === 0 ? [0] : [w, 0], 'the old pool had one server, index 0; a key placed there by both is read once');
      if (r.length === 2) both++;
    }
    assert.ok(both > 150 && both < 250, `about two thirds of keys moved (${both} of 300)`);
    assert.deepEqual(new Placement([a]).readers('x'), [0]);
  });
});

describe('retry', () => {
  class Outage extends Error {}
  test('retries only what is retryable, and gives up within 100 ms of being stopped, with the last error', async () => {
    let calls = 0;
    const failing = () => {
      calls++;
      return Promise.reject(calls === 1 ? new Outage('away') : new Error('broken'));
    };
    const errors: string[] = [];
    const opts = { stopped: () => false, retryable: (e: Error) => e instanceof Outage, onError: (e: Error) => errors.push(e.message), baseMs: 1 };
    await assert.rejects(retry(failing, opts), /broken/);
    assert.deepEqual([calls, errors], [2, ['away']], 'the outage was retried, the other error thrown at once');

    let stop = false;
    const started = Date.now();
    setTimeout(() => (stop = true), 300);
    await assert.rejects(retry(() => Promise.reject(new Outage('still away')), { ...opts, stopped: () => stop, baseMs: 10_000 }), /still away/);
    const took = Date.now() - started;
    assert.ok(took >= 300 && took < 1500, `gave up ${took} ms after the start, stopped at 300 ms`);
    assert.equal(await retry(() => Promise.resolve(7), opts), 7);
  });
});

describe('flush clock', () => {
  const wall = Date.UTC(2026, 5, 1, 12);
  test('a "now" more than a minute ahead of the wall clock needs force, and the refusal says why', () => {
    assert.throws(
      () => checkFlushTime(new Date(wall + 30 * 60_000), wall, false),
      (err: unknown) => err instanceof FlushClockError && /1800 s ahead/.test(err.message) && /--force/.test(err.message) && /counted as late/.test(err.message),
    );
    checkFlushTime(new Date(wall + 30 * 60_000), wall, true);
    checkFlushTime(new Date(wall + 60_000), wall, false);
    checkFlushTime(new Date(wall - 86_400_000), wall, false); // catching up on the past is always allowed
    assert.throws(() => checkFlushTime(new Date(NaN), wall, true), FlushClockError);
  });
  test('a memcached restart in the first seconds of a slice is one after its start (memcached reports its start ~2 s early)', () => {
    const start = Date.UTC(2026, 10, 29, 4, 30); // seen: a restart at 04:30:02 reported as booted at 04:30:00
    assert.equal(restartedAfter(start / 1000, start), true);
    assert.equal(restartedAfter(start / 1000 - 2, start), true);
    assert.equal(restartedAfter(start / 1000 + 300, start), true);
    assert.equal(restartedAfter(start / 1000 - 60, start), false, 'a restart a minute before the slice took nothing of it');
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
