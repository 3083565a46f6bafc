/**
 * The bus: PutEvents batching and its limits, FailedEntryCount retries, the
 * slice outbox through a bus outage (real gearmand, memcached and MariaDB; a
 * fake PutEvents endpoint that can go down), the rollup subscriber's totals
 * against the 10-minute rows, and the batch format's version 2.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { loadConfig } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { createLogger } from '../lib/base/log.ts';
import { decodeBatch, decodeBatchColumns, encodeBatch, newEventColumns, type LogEvent } from '../lib/domain/contract.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { BusEntryTooLargeError, entrySize, EventBridgeBus, MAX_CALL_BYTES, packEntries, type BusEntry } from '../lib/publish/bus.ts';
import { OffLogClient } from '../lib/send/client.ts';
import { parseSliceFlushed } from '../lib/flush/outbox.ts';
import { rollup } from '../lib/publish/rollup.ts';
import { pino } from 'pino';
import { Runtime } from '../lib/runtime.ts';
import { FakeBus } from './fakebus.ts';
import { Expected, futureSlice, readCounts, runtimesFor, startOf, testConfig } from './support.ts';

const log = createLogger(process.env.OFFLOG_LOG_LEVEL ?? 'warn', 'test');
const entry = (id: string, detailBytes = 20, detailType: BusEntry['detailType'] = 'ActivityWatched'): BusEntry => {
  const detail = JSON.stringify({ id, pad: 'x'.repeat(Math.max(0, detailBytes - 18 - id.length)) });
  return { detailType, id, detail };
};

describe('PutEvents batching', () => {
  test('at most 10 entries and 256 KB per call, in order; sizes as AWS counts them', () => {
    const small = Array.from({ length: 25 }, (_, i) => entry(`e${i}`));
    const calls = packEntries(small);
    assert.deepEqual(calls.map((c) => c.length), [10, 10, 5]);
    assert.deepEqual(calls.flat().map((e) => e.id), small.map((e) => e.id));

    // 100,000-byte entries: two fit under 262,144 bytes, three do not.
    const big = Array.from({ length: 5 }, (_, i) => entry(`b${i}`, 100_000));
    assert.deepEqual(packEntries(big).map((c) => c.length), [2, 2, 1]);
    // Exactly at the limit is allowed: AWS counts source + detail-type + detail (+ 14 for a time).
    const overhead = 'offlog'.length + 'ActivityWatched'.length;
    const exact = [entry('x1', MAX_CALL_BYTES / 2 - overhead), entry('x2', MAX_CALL_BYTES / 2 - overhead)];
    assert.equal(exact.reduce((n, e) => n + entrySize(e), 0), MAX_CALL_BYTES);
    assert.deepEqual(packEntries(exact).map((c) => c.length), [2]);
    assert.equal(entrySize({ ...entry('t'), time: new Date() }), entrySize(entry('t')) + 14);
    // UTF-8 bytes, not characters.
    assert.equal(entrySize({ detailType: 'ActivityWatched', id: 'u', detail: '"é"' }), overhead + 4);
  });

  test('an entry larger than one call is refused with an error naming it and its size', () => {
    const huge = entry('too-big', 300_000);
    assert.throws(
      () => packEntries([entry('a'), huge]),
      (err: unknown) =>
        err instanceof BusEntryTooLargeError &&
        err.id === 'too-big' &&
        /^bus entry "too-big": 300021 bytes, more than PutEvents takes in one call \(262144 bytes/.test(err.message),
    );
  });

  test('against an endpoint: calls within the limits, an oversized entry refused, the others published', async (t) => {
    const fake = await FakeBus.start(t);
    const bus = new EventBridgeBus({ eventBus: 'offlog-test', endpoint: fake.endpoint, log });
    t.after(() => bus.close());
    const entries = [...Array.from({ length: 23 }, (_, i) => entry(`w${i}`, 40_000)), entry('too-big', 300_000), entry('last')];
    const result = await bus.put(entries);
    assert.equal(result.published.length, 24);
    assert.deepEqual(result.failed.map((f) => f.id), ['too-big']);
    assert.match(result.failed[0]!.error, /bus entry "too-big": \d+ bytes, more than PutEvents takes in one call/);
    for (const call of fake.calls) {
      assert.ok(call.entries.length <= 10, `${call.entries.length} entries in one call`);
      const bytes = call.entries.reduce((n, e) => n + Buffer.byteLength(e.Source) + Buffer.byteLength(e.DetailType) + Buffer.byteLength(e.Detail) + (e.Time ? 14 : 0), 0);
      assert.ok(bytes <= MAX_CALL_BYTES, `${bytes} bytes in one call`);
    }
    // 40 KB entries: six per call by size (240,126 bytes; seven would pass 262,144), so 24 entries take 4 calls, not 3.
    assert.deepEqual(fake.calls.map((c) => c.entries.length), [6, 6, 6, 6]);
    assert.deepEqual(fake.accepted().map((e) => e.detail.id), [...entries.slice(0, 23), entries[24]!].map((e) => e.id));
    assert.ok(fake.accepted().every((e) => e.bus === 'offlog-test'));
  });

  test('entries failed by EventBridge (FailedEntryCount) are retried, and only they; past the attempts they are reported', async (t) => {
    const fake = await FakeBus.start(t);
    const bus = new EventBridgeBus({ eventBus: 'offlog-test', endpoint: fake.endpoint, log, attempts: 3 });
    t.after(() => bus.close());
    fake.failing.set('e3', 1);
    fake.failing.set('e11', 2);
    fake.failing.set('e7', 5);
    const result = await bus.put(Array.from({ length: 12 }, (_, i) => entry(`e${i}`)));
    assert.deepEqual(result.failed.map((f) => f.id), ['e7']);
    assert.match(result.failed[0]!.error, /^InternalFailure: the fake bus was told to fail this entry$/);
    assert.equal(result.published.length, 11);
    // 10 + 2, then the three that failed, then the two still failing.
    assert.deepEqual(fake.calls.map((c) => c.entries.length), [10, 2, 3, 2]);
    const ids = fake.accepted().map((e) => String(e.detail.id));
    assert.equal(new Set(ids).size, ids.length, 'each accepted once');
  });
});

describe('bus configuration', () => {
  test('a bus name or ARN, an http(s) endpoint, retention and TTL in range; each bad value named', () => {
    const c = loadConfig({});
    assert.deepEqual([c.eventBus, c.eventBridgeEndpoint, c.watchedRetentionDays, c.watchListTtlSeconds], [undefined, undefined, 30, 30]);
    assert.equal(loadConfig({ OFFLOG_EVENT_BUS: 'arn:aws:events:eu-west-1:123456789012:event-bus/offlog-prod' }).eventBus, 'arn:aws:events:eu-west-1:123456789012:event-bus/offlog-prod');
    assert.equal(loadConfig({ OFFLOG_EVENT_BUS: '' }).eventBus, undefined, 'empty is unset');
    assert.throws(
      () => loadConfig({ OFFLOG_EVENT_BUS: 'my bus', OFFLOG_EVENTBRIDGE_ENDPOINT: '127.0.0.1:4010', OFFLOG_WATCHED_RETENTION_DAYS: '0', OFFLOG_WATCHLIST_TTL_SECONDS: '1h' }),
      (err: unknown) =>
        err instanceof ConfigError &&
        /OFFLOG_EVENT_BUS: must be an event bus name/.test(err.message) &&
        /OFFLOG_EVENTBRIDGE_ENDPOINT: must be an http\(s\) URL/.test(err.message) &&
        /OFFLOG_WATCHED_RETENTION_DAYS: must be at least 1/.test(err.message) &&
        /OFFLOG_WATCHLIST_TTL_SECONDS: must be a whole number/.test(err.message),
    );
  });
});

describe('offlog.batch version 2: events sent as watched', () => {
  const now = Date.UTC(2026, 10, 29, 12);
  test('only a batch holding a watched event is version 2; version 1 is still read, fast path included', () => {
    const plain: LogEvent[] = [{ userId: '1', actionId: 1, value: 0, at: now }];
    assert.match(encodeBatch(plain), /^\{"v":1,/);
    assert.equal(decodeBatchColumns(Buffer.from(encodeBatch(plain)), newEventColumns()), true);
    const mixed: LogEvent[] = [
      { userId: '1', actionId: 1, value: 0, at: now },
      { userId: '2', actionId: 2, value: 5, at: now, watched: true },
      { userId: '18446744073709551615', actionId: 3, value: 0, at: now, payload: 'p', watched: true },
    ];
    const body = encodeBatch(mixed);
    assert.equal(body, `{"v":2,"e":[[1,1,0,${now}],[2,2,5,${now},null,1],["18446744073709551615",3,0,${now},"p",1]]}`);
    assert.deepEqual(decodeBatch(Buffer.from(body), 0), mixed);
    assert.equal(decodeBatchColumns(Buffer.from(body), newEventColumns()), false, 'version 2 takes the checked path');
  });
  test('a sixth field is refused in version 1, and flags other than 0 or 1 in version 2, naming the field', () => {
    assert.throws(() => decodeBatch(Buffer.from(`{"v":1,"e":[[1,1,0,${now},null,1]]}`), 0), /^InputError: offlog\.batch\.e\[0\]: must be \[userId, actionId, value, atMs\(, payload\)\]/);
    assert.throws(() => decodeBatch(Buffer.from(`{"v":2,"e":[[1,1,0,${now},null,2]]}`), 0), /offlog\.batch\.e\[0\]\[5\] flags: must be 0 or 1 \(watched\), got 2/);
    assert.deepEqual(decodeBatch(Buffer.from(`{"v":2,"e":[[1,1,0,${now},null,0]]}`), 0), [{ userId: '1', actionId: 1, value: 0, at: now }]);
  });
});

const SLICE = 600;
const fresh = runtimesFor({ OFFLOG_SLICE_SECONDS: String(SLICE) });

/** Logs events over three slices from `base` (crossing an hour where the slices do), runs the worker; returns the expected rows. */
async function fill(rt: Runtime, base: SliceId): Promise<Expected> {
  const expected = new Expected();
  let clock = startOf(base, SLICE) + 1000;
  const worker = rt.worker({}, { now: () => clock });
  const client = new OffLogClient({ servers: rt.config.gearmanServers, logger: rt.log });
  for (const k of [0, 1, 2]) {
    const slice = (base + k) as SliceId;
    for (let i = 0; i < 3000; i++) {
      const user = i % 97;
      const action = 1 + (i % 3);
      const value = i % 5;
      client.log(user, action, { value, at: startOf(slice, SLICE) + (i % 600) * 1000 });
      expected.add(startOf(slice, SLICE), user, action, value);
    }
    assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
    clock = startOf(slice, SLICE) + 1000;
    await worker.run({ idle: true });
  }
  await client.close();
  return expected;
}

async function slicesRows(rt: Runtime): Promise<{ start: string; published: boolean }[]> {
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(`SELECT slice_start, published_at FROM \`${rt.store.tables.slices}\` ORDER BY slice_start`);
  return rows.map((r) => ({ start: (r.slice_start as Date).toISOString(), published: r.published_at !== null }));
}

test('outbox: with the bus down the counts are written and the slices stay unpublished; back up, the next flush publishes each once', async (t) => {
  const fake = await FakeBus.start(t);
  const rt = fresh({ OFFLOG_EVENT_BUS: 'offlog-test', OFFLOG_EVENTBRIDGE_ENDPOINT: fake.endpoint });
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const expected = await fill(rt, base);
  const now = new Date(startOf((base + 4) as SliceId, SLICE));

  await fake.down();
  const started = performance.now();
  const first = await rt.flush(now);
  const tookMs = performance.now() - started;
  assert.equal(first.ran, true);
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'counts written while the bus was down');
  const written = first.slices.map((s) => s.sliceStart);
  assert.ok(written.length >= 3, `${written.length} slices`);
  assert.deepEqual(first.published, { ran: true, published: 0, failed: written.length, error: first.published.error });
  assert.match(first.published.error!, /^PutEvents failed: /);
  assert.ok((await slicesRows(rt)).every((r) => !r.published), 'every slice unpublished');
  assert.ok(tookMs < 15_000, `a bus outage cost the flush ${Math.round(tookMs)} ms`);

  await fake.up();
  // One slice keeps failing past the retries of this round: it waits for the round after.
  const stubborn = written[1]!;
  fake.failing.set(stubborn, 3);
  const second = await rt.flush(now);
  assert.equal(second.slices.length, 0, 'nothing new to flush');
  assert.deepEqual(second.published, { ran: true, published: written.length - 1, failed: 1, error: second.published.error });
  assert.deepEqual((await slicesRows(rt)).filter((r) => !r.published).map((r) => r.start), [stubborn]);

  const third = await rt.flush(now);
  assert.deepEqual(third.published, { ran: true, published: 1, failed: 0 });
  const fourth = await rt.flush(now);
  assert.deepEqual(fourth.published, { ran: true, published: 0, failed: 0 });

  const events = fake.accepted('SliceFlushed');
  assert.deepEqual(events.map((e) => e.detail.id).sort(), [...written].sort(), 'each slice published exactly once');
  for (const s of first.slices) {
    const e = events.find((x) => x.detail.id === s.sliceStart)!;
    assert.deepEqual(e.detail, {
      id: s.sliceStart,
      sliceStart: s.sliceStart,
      sliceEnd: new Date(Date.parse(s.sliceStart) + SLICE * 1000).toISOString(),
      status: s.status,
      rows: s.rows,
      events: s.events === null ? null : Number(s.events),
      late: Number(s.late),
      pairsMissing: s.pairsMissing,
      note: s.note,
    });
    assert.equal(e.bus, 'offlog-test');
  }
  const ours = events.filter((e) => [0, 1, 2].some((k) => e.detail.sliceStart === new Date(startOf((base + k) as SliceId, SLICE)).toISOString()));
  assert.deepEqual(ours.map((e) => e.detail.events), [3000, 3000, 3000]);
});

test('with OFFLOG_EVENT_BUS unset nothing is published, the flush is unchanged, the slices wait in the outbox, and the log says so once', async (t) => {
  const lines: string[] = [];
  const rt = new Runtime(testConfig({ OFFLOG_SLICE_SECONDS: String(SLICE) }), pino({ level: 'info' }, { write: (line: string) => lines.push(line) }));
  t.after(() => rt.close());
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const expected = await fill(rt, base);
  const result = await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.equal(rt.bus.enabled, false);
  assert.deepEqual(result.published, { ran: false, published: 0, failed: 0 });
  assert.deepEqual(await readCounts(rt), expected.asStrings());
  assert.ok((await slicesRows(rt)).every((r) => !r.published));
  await rt.flush(new Date(startOf((base + 5) as SliceId, SLICE)));
  assert.equal(lines.filter((l) => l.includes('OFFLOG_EVENT_BUS is unset')).length, 1, 'said once, not at every flush');
});

/** A rollup table as `${periodStartMs}:${user}:${action}` → [count, sum]. */
async function readRollup(rt: Runtime, table: 'hourly' | 'daily'): Promise<Map<string, [string, string]>> {
  const col = table === 'hourly' ? 'hour_start' : 'day_start';
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(`SELECT UNIX_TIMESTAMP(${col}) * 1000 AS s, user_id, action_id, count, value_sum FROM \`${rt.store.tables[table]}\``);
  return new Map(rows.map((r) => [`${Number(r.s)}:${r.user_id}:${r.action_id}`, [String(r.count), String(r.value_sum)]]));
}

/** The 10-minute rows summed by hour or day, in JS: what the rollup must equal. */
function sums(rows: Map<string, [string, string]>, periodMs: number): Map<string, [string, string]> {
  const out = new Map<string, [bigint, bigint]>();
  for (const [key, [count, sum]] of rows) {
    const [start, user, action] = key.split(':');
    const k = `${Math.floor(Number(start) / periodMs) * periodMs}:${user}:${action}`;
    const cur = out.get(k) ?? [0n, 0n];
    out.set(k, [cur[0] + BigInt(count), cur[1] + BigInt(sum)]);
  }
  return new Map([...out].map(([k, [c, s]]) => [k, [c.toString(), s.toString()]]));
}

test('rollup subscriber: hourly and daily totals equal the sums of the 10-minute rows, and a replayed event changes nothing', async (t) => {
  const fake = await FakeBus.start(t);
  const rt = fresh({ OFFLOG_EVENT_BUS: 'offlog-test', OFFLOG_EVENTBRIDGE_ENDPOINT: fake.endpoint });
  await rt.store.migrate();
  // Start two slices before an hour ends, so the three slices span two hours.
  const hourSlices = 3600 / SLICE;
  const base = (Math.ceil((futureSlice(SLICE) + 2) / hourSlices) * hourSlices - 2) as SliceId;
  await fill(rt, base);
  await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  const delivered = fake.accepted('SliceFlushed').map((e) => ({ 'detail-type': e.detailType, detail: e.detail }));
  assert.ok(delivered.length >= 3);

  const subscriber = async (event: unknown) => {
    const { fromMs, toMs } = parseSliceFlushed(event);
    return rollup(rt.store, fromMs, toMs);
  };
  for (const e of delivered) await subscriber(e);
  const counts = await readCounts(rt);
  const hourly = await readRollup(rt, 'hourly');
  const daily = await readRollup(rt, 'daily');
  assert.equal(new Set([...hourly.keys()].map((k) => k.split(':')[0])).size, 2, 'two hours');
  assert.deepEqual(hourly, sums(counts, 3_600_000));
  assert.deepEqual(daily, sums(counts, 86_400_000));

  // Delivered again, in another order: nothing changes.
  for (const e of [...delivered].reverse()) await subscriber(e);
  assert.deepEqual(await readRollup(rt, 'hourly'), hourly);
  assert.deepEqual(await readRollup(rt, 'daily'), daily);

  // A 10-minute row that changes (a slice written again) is followed by the next delivery: recomputed, not added.
  const first = startOf(base, SLICE);
  await rt.store.pool.query(`UPDATE \`${rt.store.tables.counts}\` SET count = count + 5, value_sum = value_sum + 7 WHERE slice_start = FROM_UNIXTIME(?) AND user_id = 1 AND action_id = 2`, [first / 1000]);
  await subscriber(delivered.find((e) => e.detail.sliceStart === new Date(first).toISOString()));
  const changed = await readCounts(rt);
  assert.notDeepEqual(changed, counts);
  assert.deepEqual(await readRollup(rt, 'hourly'), sums(changed, 3_600_000));
  assert.deepEqual(await readRollup(rt, 'daily'), sums(changed, 86_400_000));
});

test('the subscriber refuses an event that is not a SliceFlushed, naming the field', () => {
  assert.throws(() => parseSliceFlushed({ 'detail-type': 'ActivityWatched', detail: {} }), /^InputError: detail-type: must be "SliceFlushed", got "ActivityWatched"$/);
  assert.throws(() => parseSliceFlushed({ 'detail-type': 'SliceFlushed', detail: { sliceStart: 'x' } }), /detail\.sliceStart: must be an ISO-8601 time, got "x"/);
  assert.throws(
    () => parseSliceFlushed({ 'detail-type': 'SliceFlushed', detail: { sliceStart: '2026-01-01T00:10:00Z', sliceEnd: '2026-01-01T00:00:00Z' } }),
    /detail\.sliceEnd: must be after sliceStart/,
  );
  assert.deepEqual(parseSliceFlushed({ 'detail-type': 'SliceFlushed', detail: { sliceStart: '2026-01-01T00:00:00Z', sliceEnd: '2026-01-01T00:10:00Z' } }), {
    fromMs: Date.UTC(2026, 0, 1),
    toMs: Date.UTC(2026, 0, 1, 0, 10),
  });
});
