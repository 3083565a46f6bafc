/**
 * Bad input: a clear error, and nothing else lost.
 *
 * On real servers (gearmand, memcached, MariaDB), with fake clocks:
 *   1. HTTP ingest (`ingest()` with a real OffLogClient): every kind of bad body
 *      gets 400/401/413 whose error names what was wrong, and nothing of it is
 *      enqueued — the worker afterwards counts exactly the valid requests.
 *   2. A seeded fuzz of 10,000 random and mutated bodies: ingest never throws or
 *      answers 5xx, every refusal is 400/413 with a JSON error, and the counts
 *      table ends up holding exactly what the 202s carried.
 *   3. Garbage Gearman jobs on `logSimple` and `offlog.batch`, interleaved with
 *      good ones: the worker keeps going, dead-letters each bad job whole, counts
 *      the good ones exactly, and the dead letters reach `<prefix>dead_letters`
 *      with function, an error naming the field, and the original bytes.
 *   4. Injection: user ids like `1; DROP TABLE x` or `1 2` never get past the
 *      parsers; what reaches SQL is a validated number (or a parameter).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import type { Config } from '../lib/base/config.ts';
import { drainDeadLetters } from '../lib/flush/deadletter.ts';
import { InputError } from '../lib/base/errors.ts';
import { decodeBatch, encodeBatch, MAX_U64, parseBody, parseLogSimple, parseUserId, type LogEvent } from '../lib/domain/contract.ts';
import { flush } from '../lib/flush/flush.ts';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import { ingest } from '../lib/send/ingest.ts';
import type { Runtime } from '../lib/runtime.ts';
import { sliceOf, type SliceId } from '../lib/domain/slice.ts';
import { FN_BATCH, FN_LOG_SIMPLE } from '../lib/domain/contract.ts';
import { Worker, type WorkerOptions } from '../lib/count/worker.ts';
import { drainQueues, Expected, futureSlice, prng, readCounts, startOf, testConfig, testRuntime } from './support.ts';

const SLICE = 600;
const base = futureSlice(SLICE);
const sliceStart = startOf(base, SLICE);
/** Ingest's "now" (events without `at`) and the worker's clock: both inside `base`. */
const ingestNow = sliceStart + 30_000;
const workerNow = sliceStart + 90_000;
const flushNow = new Date(startOf((base + 2) as SliceId, SLICE));
const TOKEN = 'badinput-test-token-0123456789';

const runtimes: Runtime[] = [];
/** A runtime of the test's own: key and table prefixes nobody else uses. */
async function fresh(overrides: Record<string, string> = {}): Promise<Runtime> {
  const rt = testRuntime({ OFFLOG_SLICE_SECONDS: String(SLICE), ...overrides });
  runtimes.push(rt);
  await rt.store.migrate();
  return rt;
}

before(async () => {
  await drainQueues(testConfig());
});
after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
});

// ── helpers ──

interface Answer {
  status: number;
  json: { error?: unknown; field?: unknown; accepted?: unknown };
}

async function post(
  config: Config,
  rt: Runtime,
  body: string,
  headers: Record<string, string | undefined> = { authorization: `Bearer ${TOKEN}` },
): Promise<Answer> {
  const res = await ingest({ body, headers }, { config, client: rt.client, log: rt.log, now: ingestNow });
  assert.equal(res.headers['content-type'], 'application/json');
  return { status: res.statusCode, json: JSON.parse(res.body) as Answer['json'] };
}

async function runWorker(rt: Runtime, options: WorkerOptions = {}): Promise<Worker> {
  const worker = rt.worker(options, { now: () => workerNow });
  await worker.run({ idle: true });
  return worker;
}

async function flushAndRead(rt: Runtime): Promise<Map<string, [string, string]>> {
  const result = await rt.flush(flushNow);
  assert.equal(result.ran, true);
  for (const s of result.slices) assert.equal(s.status, 'flushed', `slice ${s.sliceStart}: ${s.note}`);
  return readCounts(rt);
}

/** The slice the worker (clock in `base`) counts an event into: its own if current or previous, else the current one. */
function targetSlice(atMs: number): number {
  const s = sliceOf(atMs, SLICE);
  return startOf((s === base || s === base - 1 ? s : base) as SliceId, SLICE);
}

function addEvents(expected: Expected, events: readonly LogEvent[]): void {
  for (const e of events) expected.add(targetSlice(e.at), e.userId, e.actionId, e.value);
}

/** Everything a validated event may carry into memcached keys and SQL: plain numbers in range. */
function assertClean(e: LogEvent, where: string): void {
  assert.match(e.userId, /^(0|[1-9]\d{0,19})$/, `${where}: userId ${JSON.stringify(e.userId)}`);
  assert.ok(BigInt(e.userId) <= MAX_U64, `${where}: userId ${e.userId} > 2^64-1`);
  assert.ok(Number.isInteger(e.actionId) && e.actionId >= 1 && e.actionId <= 65_535, `${where}: actionId ${e.actionId}`);
  assert.ok(Number.isSafeInteger(e.value) && e.value >= 0, `${where}: value ${e.value}`);
  assert.ok(Number.isSafeInteger(e.at) && e.at >= 0, `${where}: at ${e.at}`);
}

async function submitAll(config: Config, jobs: readonly { fn: string; data: Buffer | string; unique: string }[]): Promise<void> {
  const conn = await GearmanConnection.connect(config.gearmanServers[0]!);
  try {
    for (const j of jobs) await conn.submitBackground(j.fn, j.data, j.unique);
  } finally {
    conn.close();
  }
}

async function deadLetterRows(rt: Runtime): Promise<Map<string, { fn: string; error: string; payload: Buffer }>> {
  const rows = await rt.store.deadLetters(10_000);
  return new Map(rows.map((r) => [r.unique, { fn: r.fn, error: r.error, payload: r.payload }]));
}

const ev = (o: Record<string, unknown>): string => JSON.stringify(o);
const at1 = sliceStart + 123_456;

// ── 1. HTTP ingest ──

interface BadCase {
  body: string;
  status: number;
  field?: string;
  error: RegExp;
  headers?: Record<string, string | undefined>;
}

test('HTTP ingest: each bad body gets 400/401/413 naming what was wrong, and nothing of it is enqueued', async () => {
  await drainQueues(testConfig());
  const rt = await fresh({ OFFLOG_INGEST_TOKEN: TOKEN, OFFLOG_MAX_BODY_BYTES: '8192', OFFLOG_MAX_BATCH_EVENTS: '5' });
  const config = rt.config;
  assert.equal(config.maxBodyBytes, 8192);
  assert.equal(config.maxBatchEvents, 5);
  // Otherwise-valid events in bad requests use users 666xxx: any that leaks shows up in the counts.
  const good = (u = 666_001) => ({ userId: u, actionId: 1, value: 1, at: at1 });
  const U = /^userId: must be an unsigned 64-bit integer \(number or decimal string\), got /;
  const A = /^actionId: must be an integer from 1 to 65535, got /;
  const V = /^value: must be an integer from 0 to 2\^53-1, got /;
  const T = /^at: must be epoch milliseconds or an ISO-8601 date-time between 1970 and 3000, got /;
  const withField = (field: string, value: unknown): string => ev({ ...good(), [field]: value });
  /** A raw JSON token JSON.stringify cannot write (1e400, 9007199254740993) in place of one field. */
  const rawField = (field: string, token: string): string =>
    objectText(([['userId', '666002'], ['actionId', '1'], ['at', String(at1)]] as [string, string][]).filter(([k]) => k !== field).concat([[field, token]]));

  const cases: BadCase[] = [
    // Not JSON, not an object.
    { body: '{', status: 400, field: 'body', error: /^body: is not valid JSON \(/ },
    { body: '', status: 400, field: 'body', error: /^body: is not valid JSON/ },
    { body: '{"userId":1,"actionId":1,}', status: 400, field: 'body', error: /^body: is not valid JSON/ },
    { body: "{'userId':1,'actionId':1}", status: 400, field: 'body', error: /^body: is not valid JSON/ },
    { body: '{"userId":NaN,"actionId":1}', status: 400, field: 'body', error: /^body: is not valid JSON/ },
    { body: '\u0000\u0001\u0002', status: 400, field: 'body', error: /^body: is not valid JSON/ },
    { body: 'null', status: 400, field: 'event', error: /^event: must be a JSON object, got null/ },
    { body: '42', status: 400, field: 'event', error: /^event: must be a JSON object, got 42/ },
    { body: '"hello"', status: 400, field: 'event', error: /^event: must be a JSON object, got "hello"/ },
    { body: '[]', status: 400, field: 'event', error: /^event: must be a JSON object, got \[\]/ },
    { body: `[${ev(good())}]`, status: 400, field: 'event', error: /^event: must be a JSON object/ },
    // Missing fields.
    { body: '{}', status: 400, field: 'userId', error: /^userId: is required$/ },
    { body: ev({ actionId: 1 }), status: 400, field: 'userId', error: /^userId: is required$/ },
    { body: ev({ userId: 666_003 }), status: 400, field: 'actionId', error: /^actionId: is required$/ },
    // userId: wrong types, out of range, negative, fractional, spaces, control characters, unicode digits.
    { body: withField('userId', 'abc'), status: 400, field: 'userId', error: U },
    { body: withField('userId', null), status: 400, field: 'userId', error: U },
    { body: withField('userId', true), status: 400, field: 'userId', error: U },
    { body: withField('userId', [1]), status: 400, field: 'userId', error: U },
    { body: withField('userId', { id: 1 }), status: 400, field: 'userId', error: U },
    { body: withField('userId', -1), status: 400, field: 'userId', error: U },
    { body: withField('userId', 1.5), status: 400, field: 'userId', error: U },
    { body: withField('userId', '-1'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1.0'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1e3'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '0x10'), status: 400, field: 'userId', error: U },
    { body: withField('userId', ''), status: 400, field: 'userId', error: U },
    { body: withField('userId', 'NaN'), status: 400, field: 'userId', error: U },
    { body: withField('userId', 'Infinity'), status: 400, field: 'userId', error: U },
    { body: withField('userId', ' 1'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1 '), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1 2'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1\n'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1\t2'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1\u0000'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '１２'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '١٢'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '𝟏𝟐'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '18446744073709551616'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '99999999999999999999'), status: 400, field: 'userId', error: U },
    { body: withField('userId', '1'.repeat(21)), status: 400, field: 'userId', error: U },
    { body: rawField('userId', '9007199254740993'), status: 400, field: 'userId', error: /^userId: is above 2\^53-1 and lost precision as a JSON number; send it as a decimal string$/ },
    { body: rawField('userId', '1e400'), status: 400, field: 'userId', error: U },
    // actionId.
    { body: withField('actionId', 0), status: 400, field: 'actionId', error: /^actionId: must be an integer from 1 to 65535, got 0$/ },
    { body: withField('actionId', 65_536), status: 400, field: 'actionId', error: /got 65536$/ },
    { body: withField('actionId', -1), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', 1.5), status: 400, field: 'actionId', error: /got 1\.5$/ },
    { body: withField('actionId', '0'), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', '65536'), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', 'x'), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', ' 1'), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', null), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', [1]), status: 400, field: 'actionId', error: A },
    { body: withField('actionId', 1e10), status: 400, field: 'actionId', error: A },
    // value.
    { body: withField('value', -1), status: 400, field: 'value', error: /^value: must be an integer from 0 to 2\^53-1, got -1$/ },
    { body: withField('value', 1.5), status: 400, field: 'value', error: /got 1\.5$/ },
    { body: withField('value', '5'), status: 400, field: 'value', error: /got "5"$/ },
    { body: withField('value', true), status: 400, field: 'value', error: V },
    { body: withField('value', {}), status: 400, field: 'value', error: V },
    { body: withField('value', 2 ** 53), status: 400, field: 'value', error: V },
    { body: rawField('value', '1e400'), status: 400, field: 'value', error: V },
    // at.
    { body: withField('at', -1), status: 400, field: 'at', error: T },
    { body: withField('at', 'yesterday'), status: 400, field: 'at', error: T },
    { body: withField('at', ''), status: 400, field: 'at', error: T },
    { body: withField('at', '2026-13-01'), status: 400, field: 'at', error: T },
    { body: withField('at', '2026-01-01 10:00:00'), status: 400, field: 'at', error: T },
    { body: withField('at', '3000-01-02T00:00:00Z'), status: 400, field: 'at', error: T },
    { body: withField('at', 1e20), status: 400, field: 'at', error: T },
    { body: withField('at', true), status: 400, field: 'at', error: T },
    { body: withField('at', [at1]), status: 400, field: 'at', error: T },
    // payload.
    { body: withField('payload', 5), status: 400, field: 'payload', error: /^payload: must be a string, got 5$/ },
    { body: withField('payload', { a: 1 }), status: 400, field: 'payload', error: /^payload: must be a string/ },
    { body: withField('payload', 'é'.repeat(2049)), status: 400, field: 'payload', error: /^payload: must be at most 4096 bytes of UTF-8, got 4098$/ },
    { body: withField('payload', '🌍'.repeat(1025)), status: 400, field: 'payload', error: /^payload: must be at most 4096 bytes of UTF-8, got 4100$/ },
    // Unknown fields, the PHP spelling over HTTP, prototype keys.
    { body: withField('colour', 'red'), status: 400, field: '"colour"', error: /^"colour": is not a known field \(userId, actionId, value, at, payload\)$/ },
    { body: ev({ userid: 666_004, actionId: 1 }), status: 400, field: '"userid"', error: /is not a known field/ },
    { body: `{"__proto__":{"value":5},"userId":666005,"actionId":1}`, status: 400, field: '"__proto__"', error: /^"__proto__": is not a known field/ },
    { body: `{"userId":666006,"actionId":1,"constructor":1}`, status: 400, field: '"constructor"', error: /is not a known field/ },
    { body: `{"userId":666007,"actionId":1,"user Id":1}`, status: 400, field: '"user Id"', error: /is not a known field/ },
    { body: `{"userId":666008,"actionId":1,"\\u0000\\n":1}`, status: 400, field: '"\\u0000\\n"', error: /is not a known field/ },
    // Batches: all or nothing.
    { body: ev({ events: {} }), status: 400, field: 'events', error: /^events: must be an array, got \{\}$/ },
    { body: ev({ events: null }), status: 400, field: 'events', error: /^events: must be an array/ },
    { body: ev({ events: [] }), status: 400, field: 'events', error: /^events: must not be empty$/ },
    { body: ev({ events: [good(666_010), { userId: 'x', actionId: 1 }] }), status: 400, field: 'events[1].userId', error: /^events\[1\]\.userId: must be an unsigned 64-bit/ },
    { body: ev({ events: [good(666_011), good(666_012), { userId: 1, actionId: 1, value: -5 }] }), status: 400, field: 'events[2].value', error: /^events\[2\]\.value: must be an integer from 0/ },
    { body: ev({ events: [good(666_013), 5] }), status: 400, field: 'events[1]', error: /^events\[1\]: must be a JSON object, got 5$/ },
    { body: ev({ events: [good(666_014), { ...good(666_015), extra: 1 }] }), status: 400, field: 'events[1]."extra"', error: /is not a known field/ },
    { body: ev({ events: [good(666_016)], userId: 1 }), status: 400, field: '"userId"', error: /^"userId": is not allowed beside "events"$/ },
    {
      body: ev({ events: Array.from({ length: 6 }, (_, i) => good(666_020 + i)) }),
      status: 400,
      field: 'events',
      error: /^events: must hold at most 5 events, got 6$/,
    },
    {
      body: ev({ events: Array.from({ length: 1000 }, (_, i) => ({ userId: i, actionId: 1 })) }).slice(0, 8000) + ']}',
      status: 400,
      field: 'body',
      error: /^body: is not valid JSON/,
    },
    // Too large: counted in bytes, not characters.
    { body: 'x'.repeat(8193), status: 413, error: /^body: 8193 bytes is over the limit of 8192$/ },
    { body: ev({ ...good(666_030), payload: 'x'.repeat(8200) }), status: 413, error: /^body: \d+ bytes is over the limit of 8192$/ },
    { body: `"${'é'.repeat(4096)}"`, status: 413, error: /^body: 8194 bytes is over the limit of 8192$/ },
    // Token: checked first, whatever the body.
    { body: ev(good(666_040)), status: 401, error: /^authorization: missing or wrong bearer token$/, headers: {} },
    { body: ev(good(666_041)), status: 401, error: /^authorization:/, headers: { authorization: undefined } },
    { body: ev(good(666_042)), status: 401, error: /^authorization:/, headers: { authorization: '' } },
    { body: ev(good(666_043)), status: 401, error: /^authorization:/, headers: { authorization: 'Bearer ' } },
    { body: ev(good(666_044)), status: 401, error: /^authorization:/, headers: { authorization: 'Bearer wrong-token-0123456789' } },
    { body: ev(good(666_045)), status: 401, error: /^authorization:/, headers: { authorization: `Bearer ${TOKEN}x` } },
    { body: ev(good(666_046)), status: 401, error: /^authorization:/, headers: { authorization: `Bearer ${TOKEN.slice(0, -1)}` } },
    { body: ev(good(666_047)), status: 401, error: /^authorization:/, headers: { authorization: TOKEN } },
    { body: ev(good(666_048)), status: 401, error: /^authorization:/, headers: { authorization: `Basic ${TOKEN}` } },
    { body: ev(good(666_049)), status: 401, error: /^authorization:/, headers: { authorization: `Bearer ${TOKEN}\n` } },
    { body: 'x'.repeat(9000), status: 401, error: /^authorization:/, headers: {} },
    { body: '{', status: 401, error: /^authorization:/, headers: { authorization: 'Bearer nope' } },
  ];

  // Valid requests, interleaved: exactly these may be counted.
  const expected = new Expected();
  let validRequests = 0;
  let validEvents = 0;
  const valid: { body: string; events: [number | string, number, number, number][]; headers?: Record<string, string> }[] = [
    { body: ev({ userId: 1001, actionId: 1, value: 3, at: at1 }), events: [[1001, 1, 3, at1]] },
    {
      body: ev({ events: [{ userId: '1002', actionId: '2', value: 0, at: new Date(at1).toISOString() }, { userId: '18446744073709551615', actionId: 65_535, value: 9_007_199_254_740_991, at: at1 }] }),
      events: [['1002', 2, 0, at1], ['18446744073709551615', 65_535, 9_007_199_254_740_991, at1]],
    },
    // Unicode and control characters are fine in a payload (metadata), never in an id.
    { body: ev({ userId: 1003, actionId: 3, at: at1, payload: 'héllo wörld 🌍 \n\t\u0000 \u2028 \ud800 "quoted" \\' }), events: [[1003, 3, 0, at1]] },
    // No `at`: the accepted time (deps.now).
    { body: ev({ userId: '0001004', actionId: 1 }), events: [['1004', 1, 0, ingestNow]] },
    // Exactly the batch limit.
    { body: ev({ events: Array.from({ length: 5 }, (_, i) => ({ userId: 1005, actionId: 1 + i, value: i, at: at1 })) }), events: Array.from({ length: 5 }, (_, i): [number, number, number, number] => [1005, 1 + i, i, at1]) },
    // Exactly the byte limit (multi-byte characters included).
    { body: exactly(8192, 1006), events: [[1006, 1, 0, at1], [1006, 2, 0, at1]] },
  ];
  function exactly(size: number, user: number): string {
    const make = (a: string, b: string) => ev({ events: [{ userId: user, actionId: 1, at: at1, payload: a }, { userId: user, actionId: 2, at: at1, payload: b }] });
    const room = size - Buffer.byteLength(make('', ''));
    const half = Math.floor((room - 2) / 2);
    const body = make(`é${'x'.repeat(half)}`, 'x'.repeat(room - 2 - half));
    assert.equal(Buffer.byteLength(body), size);
    return body;
  }

  let v = 0;
  for (const [i, c] of cases.entries()) {
    const answer = await post(config, rt, c.body, c.headers ?? { authorization: `Bearer ${TOKEN}` });
    const what = `case ${i} (${JSON.stringify(c.body.slice(0, 60))}): ${JSON.stringify(answer)}`;
    assert.equal(answer.status, c.status, what);
    assert.equal(typeof answer.json.error, 'string', what);
    assert.match(answer.json.error as string, c.error, what);
    if (c.field !== undefined) {
      assert.equal(answer.json.field, c.field, what);
      assert.ok((answer.json.error as string).startsWith(`${c.field}: `), `${what}: the error begins with the field`);
    }
    assert.equal(answer.json.accepted, undefined, what);
    // Every fifth bad request, a good one.
    if (i % 5 === 4 && v < valid.length) {
      const ok = valid[v++]!;
      const answer = await post(config, rt, ok.body);
      assert.deepEqual(answer, { status: 202, json: { accepted: ok.events.length } }, `valid ${v - 1}`);
      validRequests++;
      validEvents += ok.events.length;
      for (const [u, a, val, t] of ok.events) expected.add(targetSlice(t), u, a, val);
    }
  }
  assert.equal(v, valid.length, 'every valid request was sent');

  // A token is only required when one is configured.
  const open = testConfig({ OFFLOG_MAX_BODY_BYTES: '8192', OFFLOG_MAX_BATCH_EVENTS: '5' });
  assert.equal(open.ingestToken, undefined);
  assert.deepEqual(await post(open, rt, ev({ userId: 1007, actionId: 7, value: 7, at: at1 }), {}), { status: 202, json: { accepted: 1 } });
  expected.add(targetSlice(at1), 1007, 7, 7);
  validRequests++;
  validEvents++;
  const openBad = await post(open, rt, ev({ userId: 666_050, actionId: 0 }), {});
  assert.deepEqual([openBad.status, openBad.json.field], [400, 'actionId']);

  // The worker finds exactly the valid requests' jobs: nothing of the bad ones was enqueued.
  const worker = await runWorker(rt);
  assert.equal(worker.stats.jobs, validRequests, 'one job per accepted request, none for refused ones');
  assert.equal(worker.stats.events, validEvents);
  assert.equal(worker.stats.deadLetters, 0);
  assert.equal(worker.stats.late, 0);
  assert.deepEqual(await flushAndRead(rt), expected.asStrings());
});

test('HTTP ingest: impossible calendar dates in `at` are refused, not rolled over into the next month', async () => {
  const rt = await fresh();
  for (const at of ['2026-02-30', '2025-02-29', '2026-04-31T10:00:00Z', '2026-06-31T00:00:00.000+02:00']) {
    const answer = await post(rt.config, rt, ev({ userId: 666_060, actionId: 1, at }), {});
    assert.equal(answer.status, 400, `at ${at} was accepted as ${new Date(Date.parse(at)).toISOString()}: ${JSON.stringify(answer)}`);
    assert.equal(answer.json.field, 'at');
  }
});

test('HTTP ingest: deeply nested JSON is a 400 naming the field, not an exception (no 500)', async () => {
  const rt = await fresh();
  const nest = (depth: number, inner = '') => '['.repeat(depth) + inner + ']'.repeat(depth);
  const cases: [string, string][] = [
    [nest(10_000), 'event'],
    [`{"userId":${nest(10_000)},"actionId":1}`, 'userId'],
    [`{"userId":1,"actionId":1,"value":${nest(10_000)}}`, 'value'],
    [`{"events":[${nest(10_000)}]}`, 'events[0]'],
    [`{"events":${nest(10_000)}}`, 'events[0]'],
    [`{"userId":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)},"actionId":1}`, 'userId'],
  ];
  const problems: string[] = [];
  for (const [body, field] of cases) {
    try {
      const answer = await post(rt.config, rt, body, {});
      if (answer.status !== 400 || answer.json.field !== field) problems.push(`${body.slice(0, 30)}…: ${JSON.stringify(answer)}`);
    } catch (err) {
      problems.push(`${body.slice(0, 30)}… (${body.length} bytes): ingest threw ${(err as Error).name}: ${(err as Error).message}`);
    }
  }
  assert.deepEqual(problems, []);
});

// ── 2. Fuzz ──

type Rand = () => number;
const int = (r: Rand, n: number): number => Math.floor(r() * n);
const pick = <T>(r: Rand, xs: readonly T[]): T => xs[int(r, xs.length)]!;

function randomChar(r: Rand): string {
  const k = r();
  if (k < 0.3) return String.fromCharCode(32 + int(r, 95));
  if (k < 0.42) return String.fromCharCode(int(r, 32));
  if (k < 0.55) return pick(r, ['"', '\\', '{', '}', '[', ']', ',', ':', ' ', '-', '.', 'e', '0', '9', '\u2028', '\ufeff', '\u0085']);
  if (k < 0.67) return String.fromCharCode(0xd800 + int(r, 0x800)); // a lone surrogate
  if (k < 0.85) return String.fromCharCode(0x80 + int(r, 0xd800 - 0x80));
  return String.fromCodePoint(0x10000 + int(r, 0x100000 - 0x10000));
}

function randomString(r: Rand, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += randomChar(r);
  return s;
}

/** Raw JSON tokens: including what JSON.stringify never writes (1e400, 0.1e1, -0.0). */
const WEIRD = [
  'null', 'true', 'false', '[]', '{}', '[1]', '{"a":1}', '""', '" "', '"1 2"', '"1; DROP TABLE x"', "\"1' OR '1'='1\"",
  '"NaN"', '"Infinity"', '"-Infinity"', '"-0"', '"0x1F"', '"1e3"', '"١٢٣"', '"１２"', '"\\u0000"', '"1\\n"', '" 1"', '"1 "',
  '-1', '-0', '-0.0', '0', '1.5', '0.1e1', '100e-2', '1E+2', '1e308', '1e400', '-1e400', '9007199254740991', '9007199254740992',
  '9007199254740993', '18446744073709551615', '18446744073709551616', '"18446744073709551615"', '"18446744073709551616"',
  '"00000000000000000000001"', '"0000000000000000001"', '65535', '65536', '"65535"', '"00001"', '"\\ud800"', '"\\udfff\\ud800"',
  '"2026-02-30"', '"2026-01-01T00:00:00Z"', '"1970-01-01"', '"2999-12-31T23:59:59.999Z"', '4102444800000', '32503680000000',
];
const FIELDS = ['userId', 'actionId', 'value', 'at', 'payload'];
const ODD_KEYS = ['__proto__', 'constructor', 'prototype', 'toString', 'hasOwnProperty', 'events', 'userid', 'UserId', '', ' ', 'userId ', 'user\u0000Id', '𝓾𝓼𝓮𝓻'];
const FUZZ_USERS: (number | string)[] = [0, 1, 7, 42, 999, 123_456, 9_007_199_254_740_991, '9007199254740993', '18446744073709551615', '0000000000000000042'];

interface ValidEvent { userId: string; actionId: number; value: number; at: number }

/** A valid event as [key, raw JSON token] entries, and what it must count as. */
function validEntries(r: Rand): { entries: [string, string][]; event: ValidEvent } {
  const u = pick(r, FUZZ_USERS);
  const userId = BigInt(u).toString();
  const actionId = 1 + int(r, 5);
  const entries: [string, string][] = [['userId', typeof u === 'string' || r() < 0.2 ? `"${u}"` : String(u)], ['actionId', r() < 0.2 ? `"${actionId}"` : String(actionId)]];
  let value = 0;
  if (r() < 0.7) {
    value = r() < 0.05 ? 9_007_199_254_740_991 : int(r, 1000);
    entries.push(['value', String(value)]);
  }
  let at = ingestNow;
  const p = r();
  if (p < 0.5) {
    at = sliceStart + int(r, SLICE * 1000);
    entries.push(['at', String(at)]);
  } else if (p < 0.7) {
    at = sliceStart + int(r, SLICE * 1000);
    entries.push(['at', JSON.stringify(new Date(at).toISOString())]);
  }
  if (r() < 0.2) entries.push(['payload', JSON.stringify(randomString(r, int(r, 40)))]);
  // Field order does not matter.
  if (r() < 0.3) entries.reverse();
  return { entries, event: { userId, actionId, value, at } };
}

const objectText = (entries: readonly [string, string][]): string => `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${v}`).join(',')}}`;

function validBody(r: Rand, maxEvents: number): { body: string; events: ValidEvent[] } {
  if (r() < 0.5) {
    const { entries, event } = validEntries(r);
    return { body: objectText(entries), events: [event] };
  }
  const n = 1 + int(r, maxEvents);
  const list = Array.from({ length: n }, () => validEntries(r));
  return { body: `{"events":[${list.map((e) => objectText(e.entries)).join(',')}]}`, events: list.map((e) => e.event) };
}

function weirdToken(r: Rand): string {
  const k = r();
  if (k < 0.6) return pick(r, WEIRD);
  if (k < 0.7) return JSON.stringify(randomString(r, 1 + int(r, 30))); // escaped unicode, lone surrogates as \uXXXX
  if (k < 0.78) return `"${randomString(r, 1 + int(r, 30)).replace(/["\\]/g, '')}"`; // raw: control characters make it invalid JSON
  if (k < 0.85) return JSON.stringify('9'.repeat(1 + int(r, 40)));
  if (k < 0.9) return JSON.stringify('x'.repeat(1000 + int(r, 20_000))); // very long strings
  if (k < 0.95) {
    const depth = 1 + Math.floor(Math.exp(r() * Math.log(12_000)));
    return r() < 0.5 ? '['.repeat(depth) + ']'.repeat(depth) : '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);
  }
  return String((r() - 0.5) * 10 ** int(r, 25));
}

/** Changes the structure: a field's type or value, a missing, extra, duplicated or odd key. */
function mutateEntries(r: Rand, entries: [string, string][]): void {
  const k = r();
  if (k < 0.5 && entries.length > 0) entries[int(r, entries.length)]![1] = weirdToken(r);
  else if (k < 0.6 && entries.length > 0) entries.splice(int(r, entries.length), 1);
  else if (k < 0.75) entries.splice(int(r, entries.length + 1), 0, [pick(r, ODD_KEYS), weirdToken(r)]);
  else if (k < 0.85) entries.splice(int(r, entries.length + 1), 0, [pick(r, FIELDS), weirdToken(r)]); // duplicate key: JSON.parse keeps the last
  else if (k < 0.92) entries.push([randomString(r, 1 + int(r, 8)), weirdToken(r)]);
  else if (entries.length > 0) entries[int(r, entries.length)]![0] = randomString(r, 1 + int(r, 6));
}

/** Byte-level damage: flip, insert, delete, duplicate, truncate. */
function mutateText(r: Rand, s: string): string {
  const at = int(r, s.length + 1);
  switch (int(r, 6)) {
    case 0:
      return s.slice(0, at) + randomChar(r) + s.slice(at + 1);
    case 1:
      return s.slice(0, at) + (r() < 0.5 ? randomChar(r) : pick(r, WEIRD)) + s.slice(at);
    case 2:
      return s.slice(0, at) + s.slice(at + 1 + int(r, 4));
    case 3: {
      const end = Math.min(s.length, at + 1 + int(r, 20));
      return s.slice(0, end) + s.slice(at, end) + s.slice(end);
    }
    case 4:
      return s.slice(0, at);
    default: {
      // flip one bit of one UTF-16 code unit
      if (s.length === 0) return s;
      const i = Math.min(at, s.length - 1);
      return s.slice(0, i) + String.fromCharCode(s.charCodeAt(i) ^ (1 << int(r, 16))) + s.slice(i + 1);
    }
  }
}

function bytes(r: Rand, n: number): Buffer {
  return Buffer.from(Array.from({ length: n }, () => int(r, 256)));
}

function randomJson(r: Rand, depth = 0): string {
  const k = r();
  if (depth > 4 || k < 0.4) return weirdToken(r);
  if (k < 0.7) return `[${Array.from({ length: int(r, 4) }, () => randomJson(r, depth + 1)).join(',')}]`;
  return objectText(Array.from({ length: int(r, 4) }, (): [string, string] => [r() < 0.5 ? pick(r, [...FIELDS, ...ODD_KEYS]) : randomString(r, 3), randomJson(r, depth + 1)]));
}

/** One bad (or at least suspicious) body, and what kind it is, for the report. */
function fuzzBody(r: Rand, maxEvents: number, maxBytes: number): { kind: string; body: string } {
  const k = r();
  if (k < 0.5) {
    // Structural mutation of an event (alone or inside a batch), sometimes byte damage on top.
    const batch = r() < 0.4;
    const events = Array.from({ length: batch ? 1 + int(r, maxEvents) : 1 }, () => validEntries(r).entries);
    const victim = events[int(r, events.length)]!;
    for (let m = 1 + int(r, 3); m > 0; m--) mutateEntries(r, victim);
    let body = batch ? `{"events":[${events.map(objectText).join(',')}]}` : objectText(victim);
    if (r() < 0.3) body = mutateText(r, body);
    return { kind: batch ? 'mutated batch' : 'mutated event', body };
  }
  if (k < 0.75) {
    let body = validBody(r, maxEvents).body;
    for (let m = 1 + int(r, 4); m > 0; m--) body = mutateText(r, body);
    return { kind: 'byte damage', body };
  }
  if (k < 0.85) {
    const good = () => objectText(validEntries(r).entries);
    switch (int(r, 7)) {
      case 0: {
        const depth = 1 + Math.floor(Math.exp(r() * Math.log(12_000)));
        return { kind: `nested ${depth}`, body: '['.repeat(depth) + good() + ']'.repeat(depth) };
      }
      case 1: {
        const depth = 1 + Math.floor(Math.exp(r() * Math.log(12_000)));
        return { kind: `nested events ${depth}`, body: `{"events":[${'['.repeat(depth)}${good()}${']'.repeat(depth)}]}` };
      }
      case 2: {
        const n = maxEvents + 1 + int(r, maxEvents * 2);
        return { kind: `${n} events`, body: `{"events":[${Array.from({ length: n }, good).join(',')}]}` };
      }
      case 3:
        return { kind: 'over the size limit', body: `{"events":[${good()}],"pad":"${'p'.repeat(maxBytes)}"}` };
      case 4:
        return { kind: '__proto__ beside events', body: `{"__proto__":{"events":[${good()}]},"events":[${good()}]}` };
      case 5:
        return { kind: 'empty or not-array events', body: `{"events":${pick(r, ['[]', '{}', 'null', '"x"', '1', good()])}}` };
      default:
        return { kind: 'long unicode payload', body: `{"userId":1,"actionId":1,"payload":${JSON.stringify(randomString(r, 500 + int(r, 4000)))}}` };
    }
  }
  if (k < 0.92) return { kind: 'random JSON', body: randomJson(r) };
  if (k < 0.96) return { kind: 'random text', body: randomString(r, int(r, 200)) };
  return { kind: 'random bytes', body: bytes(r, int(r, 300)).toString(pick(r, ['latin1', 'utf8'] as const)) };
}

test('fuzz: 10,000 random and mutated bodies; ingest never throws or answers 5xx, and exactly the accepted events are counted', async (t) => {
  const started = Date.now();
  await drainQueues(testConfig());
  const rt = await fresh({ OFFLOG_MAX_BODY_BYTES: '16384', OFFLOG_MAX_BATCH_EVENTS: '20' });
  const { maxBatchEvents: maxEvents, maxBodyBytes: maxBytes } = rt.config;
  const r = prng(20_260_126);
  const expected = new Expected();
  const violations: string[] = [];
  const tally = new Map<string, number>();
  let accepted = 0;
  let acceptedFuzz = 0;
  let requests = 0;
  const REQUESTS = 10_000;

  for (let i = 0; i < REQUESTS; i++) {
    let kind: string;
    let body: string;
    let events: ValidEvent[] | undefined;
    if (i % 10 === 0) {
      ({ body, events } = validBody(r, maxEvents));
      kind = 'valid';
    } else {
      ({ kind, body } = fuzzBody(r, maxEvents, maxBytes));
    }
    requests++;
    const show = `#${i} ${kind} ${JSON.stringify(body.slice(0, 100))}${body.length > 100 ? `… (${body.length} chars)` : ''}`;
    let res;
    try {
      res = await ingest({ body, headers: {} }, { config: rt.config, client: rt.client, log: rt.log, now: ingestNow });
    } catch (err) {
      violations.push(`${show}: ingest threw ${(err as Error).name}: ${(err as Error).message.slice(0, 100)}`);
      tally.set('threw', (tally.get('threw') ?? 0) + 1);
      continue;
    }
    tally.set(String(res.statusCode), (tally.get(String(res.statusCode)) ?? 0) + 1);
    let json: { error?: unknown; field?: unknown; accepted?: unknown };
    try {
      json = JSON.parse(res.body) as typeof json;
    } catch {
      violations.push(`${show}: answered ${res.statusCode} with a body that is not JSON: ${res.body.slice(0, 100)}`);
      continue;
    }
    if (res.statusCode === 202) {
      // What the 202 carried, by the same parser and the same accepted time.
      const parsed = parseBody(body, ingestNow, maxEvents);
      if (json.accepted !== parsed.length) violations.push(`${show}: accepted ${String(json.accepted)}, body holds ${parsed.length}`);
      for (const e of parsed) assertClean(e, show);
      if (events) {
        assert.deepEqual(parsed.map(({ userId, actionId, value, at }) => ({ userId, actionId, value, at })), events, `${show}: parsed as generated`);
        for (const e of events) expected.add(targetSlice(e.at), e.userId, e.actionId, e.value);
      } else {
        addEvents(expected, parsed);
        acceptedFuzz++;
      }
      accepted += parsed.length;
      continue;
    }
    if (events) violations.push(`${show}: a valid body was refused: ${res.statusCode} ${res.body.slice(0, 200)}`);
    if (res.statusCode >= 500) violations.push(`${show}: answered ${res.statusCode} ${res.body.slice(0, 200)}`);
    else if (res.statusCode !== 400 && res.statusCode !== 413) violations.push(`${show}: answered ${res.statusCode}, expected 400 or 413`);
    else if (typeof json.error !== 'string' || json.error.length === 0) violations.push(`${show}: ${res.statusCode} without an error string: ${res.body.slice(0, 200)}`);
    else if (res.statusCode === 400 && (typeof json.field !== 'string' || !json.error.startsWith(`${json.field}: `))) {
      violations.push(`${show}: 400 whose error does not begin with its field: ${res.body.slice(0, 200)}`);
    } else if (res.statusCode === 413 && Buffer.byteLength(body) <= maxBytes) violations.push(`${show}: 413 for ${Buffer.byteLength(body)} bytes`);
  }
  const ingestMs = Date.now() - started;
  t.diagnostic(`answers: ${JSON.stringify(Object.fromEntries(tally))}; ${accepted} events accepted (${acceptedFuzz} fuzzed bodies got 202); ingest ${ingestMs} ms`);
  assert.equal(requests, REQUESTS);

  await t.test('every answer is 202, 400 or 413 with a JSON error; nothing threw', () => {
    assert.ok(violations.length === 0, `${violations.length} violations, the first ones:\n  ${violations.slice(0, 12).join('\n  ')}`);
  });

  await t.test('the counts table holds exactly what the 202s carried', async () => {
    const worker = await runWorker(rt);
    assert.equal(worker.stats.events, accepted);
    assert.equal(worker.stats.deadLetters, 0);
    const rows = await flushAndRead(rt);
    assert.equal(rows.size, expected.rows.size);
    assert.deepEqual(rows, expected.asStrings());
  });
  t.diagnostic(`fuzz test ran ${Date.now() - started} ms`);
});

// ── 3. Garbage Gearman jobs ──

test('garbage Gearman jobs: the worker keeps going, dead-letters each bad job whole, and counts the good ones exactly', async () => {
  await drainQueues(testConfig());
  const rt = await fresh();
  const run = randomBytes(4).toString('hex');
  const expected = new Expected();
  const r = prng(3);
  const S = targetSlice(workerNow);
  const at = sliceStart + 5_000;

  type JobCase = { fn: string; data: Buffer | string; error?: RegExp; events?: LogEvent[] };
  const good: JobCase[] = [];
  // Good: logSimple as the PHP client writes it, batches as the SDK writes them, and a ~1 MB batch.
  good.push({ fn: FN_LOG_SIMPLE, data: '{"userid": 101, "actionId": 1}', events: [{ userId: '101', actionId: 1, value: 0, at: workerNow }] });
  good.push({ fn: FN_LOG_SIMPLE, data: '{"userid":"18446744073709551615","actionId":2,"payload":"h\\u00e9llo \\ud83c\\udf0d"}', events: [{ userId: '18446744073709551615', actionId: 2, value: 0, at: workerNow }] });
  good.push({ fn: FN_LOG_SIMPLE, data: '{"userid": "102", "actionId": "3"}', events: [{ userId: '102', actionId: 3, value: 0, at: workerNow }] });
  const small: LogEvent[] = [{ userId: '103', actionId: 1, value: 5, at }, { userId: '104', actionId: 2, value: 0, at, payload: 'p' }, { userId: '103', actionId: 1, value: 7, at }];
  good.push({ fn: FN_BATCH, data: encodeBatch(small), events: small });
  const big: LogEvent[] = Array.from({ length: 40_000 }, () => ({ userId: String(2000 + int(r, 100)), actionId: 1 + int(r, 3), value: int(r, 100), at: at + int(r, 60_000) }));
  const bigBody = encodeBatch(big);
  assert.ok(bigBody.length > 900_000, `big batch ${bigBody.length} bytes`);
  good.push({ fn: FN_BATCH, data: bigBody, events: big });
  good.push({ fn: FN_BATCH, data: encodeBatch([{ userId: '105', actionId: 9, value: 1, at }]), events: [{ userId: '105', actionId: 9, value: 1, at }] });

  const garbage = Buffer.concat([Buffer.from([0xff, 0x00, 0xfe]), bytes(r, 2000)]);
  const megaGarbage = Buffer.concat([Buffer.from([0xff, 0x00]), bytes(r, 1024 * 1024)]);
  const bad: JobCase[] = [
    { fn: FN_LOG_SIMPLE, data: '{"userid": 1, "actionId": 1', error: /^logSimple: is not valid JSON/ },
    { fn: FN_LOG_SIMPLE, data: '', error: /^logSimple: is not valid JSON/ },
    { fn: FN_LOG_SIMPLE, data: garbage, error: /^logSimple: is not valid JSON/ },
    { fn: FN_LOG_SIMPLE, data: '[1, 1]', error: /^logSimple: must be a JSON object, got \[1,1\]/ },
    { fn: FN_LOG_SIMPLE, data: 'null', error: /^logSimple: must be a JSON object, got null/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": "abc", "actionId": 1}', error: /^logSimple\.userid: must be an unsigned 64-bit integer/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": -5, "actionId": 1}', error: /^logSimple\.userid: must be an unsigned 64-bit integer/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": 1.5, "actionId": 1}', error: /^logSimple\.userid: must be an unsigned 64-bit integer/ },
    { fn: FN_LOG_SIMPLE, data: '{"actionId": 1}', error: /^logSimple\.userid: is required/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": 1, "actionId": 0}', error: /^logSimple\.actionId: must be an integer from 1 to 65535/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": 1, "actionId": "one"}', error: /^logSimple\.actionId: must be an integer from 1 to 65535/ },
    { fn: FN_LOG_SIMPLE, data: '{"userId": 1, "actionId": 1}', error: /^logSimple\."userId": is not a known field/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": 1, "actionId": 1, "payload": 7}', error: /^logSimple\.payload: must be a string/ },
    { fn: FN_LOG_SIMPLE, data: `{"userid": 1, "actionId": 1, "payload": "${'x'.repeat(1024 * 1024)}"}`, error: /^logSimple\.payload: must be at most 4096 bytes of UTF-8, got 1048576$/ },
    { fn: FN_BATCH, data: `{"v":3,"e":[[1,1,0,${at}]]}`, error: /^offlog\.batch\.v: version 3 is not supported \(this worker reads versions 1 and 2\)$/ },
    { fn: FN_BATCH, data: `{"v":2,"e":[[1,1,0,${at},null,7]]}`, error: /^offlog\.batch\.e\[0\]\[5\] flags: must be 0 or 1 \(watched\), got 7$/ },
    { fn: FN_BATCH, data: '{"e":[]}', error: /^offlog\.batch\.v: version undefined is not supported/ },
    { fn: FN_BATCH, data: `{"v":"1","e":[[1,1,0,${at}]]}`, error: /^offlog\.batch\.v: version "1" is not supported/ },
    { fn: FN_BATCH, data: '', error: /^offlog\.batch: is not valid JSON/ },
    { fn: FN_BATCH, data: garbage, error: /^offlog\.batch: is not valid JSON/ },
    { fn: FN_BATCH, data: megaGarbage, error: /^offlog\.batch: is not valid JSON/ },
    { fn: FN_BATCH, data: 'null', error: /^offlog\.batch: must be a JSON object, got null/ },
    { fn: FN_BATCH, data: '[1,2,3]', error: /^offlog\.batch: must be a JSON object/ },
    { fn: FN_BATCH, data: '{"v":1,"e":{}}', error: /^offlog\.batch\.e: must be an array, got \{\}/ },
    { fn: FN_BATCH, data: '{"v":1}', error: /^offlog\.batch\.e: must be an array, got undefined/ },
    { fn: FN_BATCH, data: '{"v":1,"e":[[1,1,0]]}', error: /^offlog\.batch\.e\[0\]: must be \[userId, actionId, value, atMs\(, payload\)\], got \[1,1,0\]/ },
    { fn: FN_BATCH, data: '{"v":1,"e":[{"userId":1,"actionId":1}]}', error: /^offlog\.batch\.e\[0\]: must be \[userId/ },
    { fn: FN_BATCH, data: `{"v":1,"e":[[1,1,0,${at},"p",6]]}`, error: /^offlog\.batch\.e\[0\]: must be \[userId/ },
    { fn: FN_BATCH, data: `{"v":1,"e":[[1,1,-5,${at}]]}`, error: /^offlog\.batch\.e\[0\]\[2\] value: must be an integer from 0 to 2\^53-1, got -5/ },
    { fn: FN_BATCH, data: `{"v":1,"e":[[1,1,0.5,${at}]]}`, error: /^offlog\.batch\.e\[0\]\[2\] value: must be an integer/ },
    { fn: FN_BATCH, data: `{"v":1,"e":[[1,1,0,"soon"]]}`, error: /^offlog\.batch\.e\[0\]\[3\] at: must be epoch milliseconds/ },
    { fn: FN_BATCH, data: `{"v":1,"e":[[1,70000,0,${at}]]}`, error: /^offlog\.batch\.e\[0\]\[1\] actionId: must be an integer from 1 to 65535, got 70000/ },
    // One bad tuple among good ones: the whole job is dead-lettered, none of it counted (users 201-203 never appear).
    { fn: FN_BATCH, data: `{"v":1,"e":[[201,1,5,${at}],[202,1,5,${at}],["1 2",1,0,${at}],[203,1,5,${at}]]}`, error: /^offlog\.batch\.e\[2\]\[0\] userId: must be an unsigned 64-bit integer \(number or decimal string\), got "1 2"$/ },
    { fn: FN_BATCH, data: `{"v":1,"e":[[204,1,5,${at}],[205,1,5,${at},{"not":"a string"}]]}`, error: /^offlog\.batch\.e\[1\]\[4\] payload: must be a string/ },
  ];

  // Interleave: good, bad, bad, bad, bad, bad, good, …
  const jobs: (JobCase & { unique: string })[] = [];
  let g = 0;
  for (const [i, b] of bad.entries()) {
    if (i % 5 === 0 && g < good.length) jobs.push({ ...good[g++]!, unique: `${run}-good-${g}` });
    jobs.push({ ...b, unique: `${run}-bad-${i}` });
  }
  while (g < good.length) jobs.push({ ...good[g++]!, unique: `${run}-good-${g}` });
  await submitAll(rt.config, jobs);
  for (const j of good) for (const e of j.events!) expected.add(targetSlice(e.at), e.userId, e.actionId, e.value);
  assert.equal(targetSlice(workerNow), S);

  // Small folds, so bad jobs share folds with good ones and the worker goes round many times.
  const worker = await runWorker(rt, { maxJobsPerFold: 4 });
  assert.equal(worker.stats.jobs, jobs.length, 'every job was taken and acknowledged');
  assert.equal(worker.stats.deadLetters, bad.length);
  assert.equal(worker.stats.events, good.reduce((n, j) => n + j.events!.length, 0));
  assert.equal(worker.stats.duplicatesSkipped, 0);

  // The worker is still usable afterwards: one more good job, one more run.
  await submitAll(rt.config, [{ fn: FN_LOG_SIMPLE, data: '{"userid": 106, "actionId": 1}', unique: `${run}-after` }]);
  expected.add(S, 106, 1);
  const again = await runWorker(rt);
  assert.deepEqual([again.stats.jobs, again.stats.events, again.stats.deadLetters], [1, 1, 0]);

  // Dead letters reach MySQL: function, an error naming the field, the original bytes.
  assert.equal(await drainDeadLetters(rt.config.gearmanServers, rt.store), bad.length);
  const rows = await deadLetterRows(rt);
  assert.equal(rows.size, bad.length);
  for (const j of jobs) {
    const row = rows.get(j.unique);
    if (j.error === undefined) {
      assert.equal(row, undefined, `good job ${j.unique} was dead-lettered: ${row?.error}`);
      continue;
    }
    assert.ok(row, `no dead letter for ${j.unique}`);
    assert.equal(row.fn, j.fn, j.unique);
    assert.match(row.error, j.error, j.unique);
    const original = Buffer.isBuffer(j.data) ? j.data : Buffer.from(j.data, 'utf8');
    assert.equal(row.payload.length, original.length, `${j.unique}: payload length`);
    assert.ok(row.payload.equals(original), `${j.unique}: payload bytes differ`);
  }
  // Nothing left behind on the dead-letter queue.
  assert.equal(await drainDeadLetters(rt.config.gearmanServers, rt.store), 0);

  const counts = await flushAndRead(rt);
  for (const u of ['201', '202', '203', '204', '205']) assert.ok(![...counts.keys()].some((k) => k.split(':')[1] === u), `user ${u} of a dead-lettered batch was counted`);
  assert.equal(counts.size, expected.rows.size);
  assert.deepEqual(counts, expected.asStrings());
});

test('a deeply nested Gearman job is dead-lettered with an error naming the field', async () => {
  await drainQueues(testConfig());
  const rt = await fresh();
  const run = randomBytes(4).toString('hex');
  const deep = '['.repeat(10_000) + ']'.repeat(10_000);
  const jobs = [
    { fn: FN_BATCH, data: `{"v":1,"e":[${deep}]}`, unique: `${run}-1`, error: /^offlog\.batch\.e\[0\]: must be \[userId/ },
    { fn: FN_BATCH, data: `{"v":${deep},"e":[]}`, unique: `${run}-2`, error: /^offlog\.batch\.v: version .* is not supported/ },
    { fn: FN_LOG_SIMPLE, data: deep, unique: `${run}-3`, error: /^logSimple: must be a JSON object/ },
    { fn: FN_LOG_SIMPLE, data: `{"userid":${deep},"actionId":1}`, unique: `${run}-4`, error: /^logSimple\.userid: must be an unsigned 64-bit integer/ },
    { fn: FN_LOG_SIMPLE, data: '{"userid": 301, "actionId": 1}', unique: `${run}-good` },
  ];
  await submitAll(rt.config, jobs);
  const worker = await runWorker(rt);
  assert.deepEqual([worker.stats.jobs, worker.stats.events, worker.stats.deadLetters], [5, 1, 4], 'the worker survives and dead-letters all four');
  assert.equal(await drainDeadLetters(rt.config.gearmanServers, rt.store), 4);
  const rows = await deadLetterRows(rt);
  const wrong: string[] = [];
  for (const j of jobs) {
    if (!j.error) continue;
    const row = rows.get(j.unique);
    if (!row || !j.error.test(row.error)) wrong.push(`${j.data.slice(0, 20)}…: error ${JSON.stringify(row?.error)}, expected ${j.error}`);
    else assert.ok(row.payload.equals(Buffer.from(j.data)));
  }
  assert.deepEqual(wrong, []);
});

// ── 4. Injection ──

const INJECTIONS = [
  '1; DROP TABLE x',
  '1; DROP TABLE `ol_counts`; --',
  "1' OR '1'='1",
  '1); DELETE FROM ol_counts; --',
  '1 2',
  '1,2',
  '1)',
  '1--',
  '1/*',
  '1\u0000',
  '1\n2',
  '1\r\nset ol:1 0 0 1',
  ' 1',
  '1 ',
  '1\t',
  '0x01',
  '1e2',
  '+1',
  '-0',
  '１',
];

test('injection: ids like `1; DROP TABLE x` or `1 2` are refused everywhere; SQL only ever sees validated numbers', async () => {
  await drainQueues(testConfig());
  const rt = await fresh();
  const p = rt.config.tablePrefix;
  const run = randomBytes(4).toString('hex');
  const at = sliceStart + 7_000;
  const injections = [...INJECTIONS, `1; DROP TABLE \`${p}counts\`; --`, `1'); DELETE FROM \`${p}counts\`; --`];

  // HTTP: 400 naming the field, as userId, as actionId, and inside a batch.
  for (const bad of injections) {
    for (const [body, field] of [
      [ev({ userId: bad, actionId: 1 }), 'userId'],
      [ev({ userId: 1, actionId: bad }), 'actionId'],
      [ev({ events: [{ userId: 1, actionId: 1 }, { userId: bad, actionId: 1 }] }), 'events[1].userId'],
    ] as const) {
      const answer = await post(rt.config, rt, body, {});
      assert.equal(answer.status, 400, `${JSON.stringify(bad)} as ${field}`);
      assert.equal(answer.json.field, field);
      assert.match(answer.json.error as string, /must be an (unsigned 64-bit integer|integer from 1 to 65535)/);
    }
  }

  // The decoders refuse them too, so a key like `ol:1 2` can never be built.
  for (const bad of injections) {
    assert.throws(() => decodeBatch(Buffer.from(JSON.stringify({ v: 1, e: [[bad, 1, 0, at]] })), workerNow), (err: unknown) => err instanceof InputError && err.field === 'offlog.batch.e[0][0] userId');
    assert.throws(() => decodeBatch(Buffer.from(JSON.stringify({ v: 1, e: [[1, bad, 0, at]] })), workerNow), (err: unknown) => err instanceof InputError && err.field === 'offlog.batch.e[0][1] actionId');
    assert.throws(() => parseLogSimple(Buffer.from(JSON.stringify({ userid: bad, actionId: 1 })), workerNow), (err: unknown) => err instanceof InputError && err.field === 'logSimple.userid');
  }
  // Whatever string comes in, a user id that gets through is canonical digits, so memcached keys have no spaces or controls.
  const r = prng(99);
  const alphabet = ['0', '1', '9', ' ', ';', "'", '"', '\n', '\r', '\t', '\u0000', '-', '+', '.', 'e', 'x', '１', '٣', '\ud800'];
  for (let i = 0; i < 20_000; i++) {
    const s = Array.from({ length: int(r, 24) }, () => pick(r, alphabet)).join('');
    let id: string;
    try {
      id = parseUserId(s);
    } catch (err) {
      assert.ok(err instanceof InputError && err.field === 'userId', `${JSON.stringify(s)}: ${String(err)}`);
      continue;
    }
    assert.match(id, /^(0|[1-9]\d{0,19})$/, JSON.stringify(s));
    assert.match(s, /^\d+$/, `${JSON.stringify(s)} was accepted as ${id}`);
  }

  // Through the real pipeline: the bad jobs become dead letters, which reach MySQL as parameters, verbatim.
  const bad = [
    { fn: FN_LOG_SIMPLE, data: JSON.stringify({ userid: `1; DROP TABLE \`${p}counts\`; --`, actionId: 1 }), unique: `${run}-1` },
    { fn: FN_BATCH, data: JSON.stringify({ v: 1, e: [[7, 1, 0, at], ['1 2', 1, 0, at]] }), unique: `${run}-2` },
    { fn: FN_BATCH, data: JSON.stringify({ v: 1, e: [["1' OR '1'='1", 1, 0, at]] }), unique: `${run}-3` },
    { fn: FN_LOG_SIMPLE, data: JSON.stringify({ userid: 1, actionId: `1'); DELETE FROM \`${p}counts\`; --` }), unique: `${run}-4` },
  ];
  const goodJobs = [
    { fn: FN_LOG_SIMPLE, data: '{"userid": 401, "actionId": 4}', unique: `${run}-g1` },
    { fn: FN_BATCH, data: encodeBatch([{ userId: '402', actionId: 4, value: 40, at }]), unique: `${run}-g2` },
  ];
  const expected = new Expected();
  expected.add(targetSlice(workerNow), 401, 4);
  expected.add(targetSlice(at), 402, 4, 40);

  // Rows first, so a deletion would show.
  await submitAll(rt.config, goodJobs);
  assert.equal((await runWorker(rt)).stats.events, 2);
  assert.deepEqual(await flushAndRead(rt), expected.asStrings());

  await submitAll(rt.config, bad);
  const worker = await runWorker(rt);
  assert.deepEqual([worker.stats.jobs, worker.stats.events, worker.stats.deadLetters], [bad.length, 0, bad.length]);
  assert.equal(await drainDeadLetters(rt.config.gearmanServers, rt.store), bad.length);
  const rows = await deadLetterRows(rt);
  for (const j of bad) {
    const row = rows.get(j.unique);
    assert.ok(row, j.unique);
    assert.equal(row.payload.toString('utf8'), j.data, 'stored verbatim');
    assert.match(row.error, /^(logSimple\.(userid|actionId)|offlog\.batch\.e\[\d\]\[0\] userId): must be/);
  }
  assert.match(rows.get(`${run}-1`)!.error, /DROP TABLE/, 'the error quotes the input (as a parameter, harmlessly)');

  const [tables] = await rt.store.pool.query<RowDataPacket[]>('SHOW TABLES LIKE ?', [`${p}counts`]);
  assert.equal(tables.length, 1, 'the counts table still exists');
  const [dead] = await rt.store.pool.query<RowDataPacket[]>('SHOW TABLES LIKE ?', [`${p}dead_letters`]);
  assert.equal(dead.length, 1);
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'the counts are untouched');
  // And the pipeline still works afterwards.
  await submitAll(rt.config, [{ fn: FN_LOG_SIMPLE, data: '{"userid": 403, "actionId": 4}', unique: `${run}-g3` }]);
  assert.equal((await runWorker(rt)).stats.events, 1);
});
