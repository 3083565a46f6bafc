/**
 * No input, clock or operator can make OffLog lose or stall counts (issue 9,
 * parts 2 and 3), on real daemons with exact totals:
 *
 * - poison sums: a pair's value sum past 2^64 − 1, within one job or across
 *   jobs, is held at 2^64 − 1 and reported, and never stalls the worker;
 * - retry policy: memcached unreachable is retried until the deadline or
 *   stop(), anything else dead-letters the fold, and stored counts are
 *   acknowledged even when their marks cannot be written;
 * - corrupt ring data is skipped, counted and named, and blocks no flush;
 * - the watermark: a flush ahead of the workers' clocks (the README's own
 *   `--now`, or a worker two slices behind) loses nothing.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, test, type TestContext } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { sleep } from '../lib/base/backoff.ts';
import { label, type HostPort } from '../lib/base/config.ts';
import { Deltas } from '../lib/domain/aggregate.ts';
import { FN_BATCH, type LogEvent } from '../lib/domain/contract.ts';
import { sliceOf, type SliceId } from '../lib/domain/slice.ts';
import { drainDeadLetters } from '../lib/flush/deadletter.ts';
import { ingest } from '../lib/send/ingest.ts';
import { Ring } from '../lib/count/ring.ts';
import { adminStatus } from '../lib/wire/gearman.ts';
import { MemcacheConnection } from '../lib/wire/memcache.ts';
import type { Runtime } from '../lib/runtime.ts';
import { gearmand, Proxy as TcpProxy } from './daemons.ts';
import { Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
const MAX_U64 = '18446744073709551615';
/** 2^53 − 1: the largest `value` an event may carry. */
const MAX_VALUE = Number.MAX_SAFE_INTEGER;
const local = (port: number): HostPort => ({ host: '127.0.0.1', port });
const at = (s: number, ms = 10): number => startOf(s as SliceId, SLICE) + ms;

const runtimes: Runtime[] = [];
function fresh(overrides: Record<string, string> = {}): Runtime {
  const rt = testRuntime(overrides);
  runtimes.push(rt);
  return rt;
}

/** A runtime on a gearmand of the test's own: its jobs and queue counts are this test's alone, whatever another test left running. */
async function ownGearman(t: TestContext): Promise<{ rt: Runtime; server: HostPort }> {
  const g = await gearmand(t);
  await g.start();
  const rt = fresh({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}` });
  await rt.store.migrate();
  return { rt, server: local(g.port) };
}

after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
});

/** `p`, or a failure naming `what` after `ms`: a stalled worker fails the test in seconds, not at the runner's timeout. */
async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: still running after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** POST /events through the ingest function, as the HTTP API calls it. */
async function post(rt: Runtime, events: object[]): Promise<void> {
  const res = await ingest({ body: JSON.stringify({ events }), headers: {} }, { config: rt.config, client: rt.client, log: rt.log });
  assert.equal(res.statusCode, 202, res.body);
}

/** The ring with some methods replaced: the faults a real memcached cannot be made to produce on cue. */
function ringWith(ring: Ring, replaced: Partial<Pick<Ring, 'apply' | 'enter'>>): Ring {
  return new Proxy(ring, {
    get(target, name) {
      if (name in replaced) return replaced[name as keyof typeof replaced];
      const v = Reflect.get(target, name, target) as unknown;
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

async function sliceRow(rt: Runtime, slice: number): Promise<RowDataPacket> {
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT status, row_count, events, late, sums_saturated, corrupt_items, note FROM \`${rt.config.tablePrefix}slices\` WHERE slice_start = FROM_UNIXTIME(?)`,
    [startOf(slice as SliceId, SLICE) / 1000],
  );
  assert.equal(rows.length, 1, `slice ${slice} has a row in ol_slices`);
  return rows[0]!;
}

async function queued(server: HostPort): Promise<number> {
  return (await adminStatus(server)).get(FN_BATCH)?.queued ?? 0;
}

// ── 1. Poison sums ──

test('poison: one accepted batch of 4,096 × (2^53 − 1) for a pair stalls nothing; its sum is held at 2^64 − 1 and reported', async (t) => {
  const { rt } = await ownGearman(t);
  const base = futureSlice(SLICE);
  const expected = new Expected();
  const poison: object[] = [];
  for (let i = 0; i < 4096; i++) poison.push({ userId: 7, actionId: 1, value: MAX_VALUE, at: at(base) });
  for (let u = 1; u <= 100; u++) {
    poison.push({ userId: u, actionId: 2, value: 3, at: at(base) });
    expected.add(startOf(base, SLICE), u, 2, 3);
  }
  await post(rt, poison);
  const later: object[] = [];
  for (let u = 1; u <= 100; u++) {
    later.push({ userId: u, actionId: 3, value: 1, at: at(base) });
    expected.add(startOf(base, SLICE), u, 3, 1);
  }
  await post(rt, later);

  const w = rt.worker({}, { now: () => at(base) });
  const stats = await within(w.run({ idle: true }), 20_000, 'the worker (stalled on the poisoned batch?)');
  assert.equal(stats.jobs, 2);
  assert.equal(stats.deadLetters, 0, 'a valid batch is counted, not dead-lettered');
  const result = await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));

  const rows = await readCounts(rt);
  assert.deepEqual(rows.get(`${startOf(base, SLICE)}:7:1`), ['4096', MAX_U64], 'count exact, sum held at 2^64 − 1');
  rows.delete(`${startOf(base, SLICE)}:7:1`);
  assert.deepEqual(rows, expected.asStrings(), 'every other pair exact');
  const row = await sliceRow(rt, base);
  assert.equal(row.status, 'saturated');
  assert.equal(Number(row.sums_saturated), 1, 'one pair held at 2^64 − 1');
  assert.match(row.note, /2\^64-1/);
  assert.match(row.note, new RegExp(MAX_U64));
  assert.equal(result.slices.find((s) => s.slice === base)?.status, 'saturated');
});

test('poison across jobs: sums that pass 2^64 only together are caught where memcached wraps, held at 2^64 − 1, reported once per pair', async (t) => {
  const { rt } = await ownGearman(t);
  const base = futureSlice(SLICE);
  const expected = new Expected();
  // Each job's sum for (9, 1) is 2048 × (2^53 − 1) = 2^64 − 2048: below the maximum alone, past it with the next.
  for (let job = 0; job < 3; job++) {
    const events: object[] = [];
    for (let i = 0; i < (job < 2 ? 2048 : 1); i++) events.push({ userId: 9, actionId: 1, value: job < 2 ? MAX_VALUE : 5, at: at(base) });
    events.push({ userId: 10, actionId: 1, value: MAX_VALUE, at: at(base) });
    expected.add(startOf(base, SLICE), 10, 1, MAX_VALUE);
    await post(rt, events);
  }
  // One job per fold: every job's sum reaches memcached on its own.
  const w = rt.worker({ maxJobsPerFold: 1 }, { now: () => at(base) });
  const stats = await within(w.run({ idle: true }), 20_000, 'the worker');
  assert.equal(stats.folds, 3);
  assert.ok(stats.wrapped >= 2, `memcached wrapped the sum in the second and third fold (${stats.wrapped})`);
  await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));

  const rows = await readCounts(rt);
  assert.deepEqual(rows.get(`${startOf(base, SLICE)}:9:1`), [String(2048 * 2 + 1), MAX_U64], 'never wrapped: held at 2^64 − 1');
  rows.delete(`${startOf(base, SLICE)}:9:1`);
  assert.deepEqual(rows, expected.asStrings());
  const row = await sliceRow(rt, base);
  assert.equal(row.status, 'saturated');
  assert.equal(Number(row.sums_saturated), 1, 'one pair, however many folds pushed it past the maximum');
  assert.match(row.note, /2\^64-1/);
});

// ── 2. Retry policy ──

test('memcached unreachable: retries stop at the deadline and on stop(), jobs stay queued; afterwards all is counted once', async (t) => {
  const { rt, server } = await ownGearman(t);
  const proxy = await TcpProxy.start(t, rt.config.memcachedServers[0]!.port);
  const ring = new Ring({ servers: [local(proxy.port)], keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6, opTimeoutMs: 500 });
  t.after(() => ring.close());
  const base = futureSlice(SLICE);
  const expected = new Expected();
  for (let job = 0; job < 10; job++) {
    await rt.client.send(Array.from({ length: 100 }, (_, i): LogEvent => ({ userId: String(i), actionId: 1 + job, value: job, at: at(base) })));
    for (let i = 0; i < 100; i++) expected.add(startOf(base, SLICE), i, 1 + job, job);
  }
  await proxy.cut();

  // The Lambda poller: a deadline 2 s away.
  const first = rt.worker({}, { ring, now: () => at(base) });
  const started = Date.now();
  const stats = await within(first.run({ deadlineMs: started + 2000 }), 10_000, 'a worker past its deadline');
  const took = Date.now() - started;
  assert.ok(took >= 1900 && took < 4000, `returned ${took} ms after a 2,000 ms deadline`);
  assert.ok(stats.storeRetries > 0, 'it retried meanwhile');
  assert.equal(stats.jobs, 0, 'nothing acknowledged');
  assert.equal(await queued(server), 10, 'every job is still gearmand’s');

  // stop() during the outage: run() returns promptly.
  const second = rt.worker({}, { ring, now: () => at(base) });
  const running = second.run({ idle: true });
  for (let i = 0; i < 250 && second.stats.storeRetries === 0; i++) await sleep(20);
  assert.ok(second.stats.storeRetries > 0, 'it is retrying');
  const stopped = Date.now();
  second.stop();
  const stats2 = await within(running, 5000, 'a stopped worker');
  assert.ok(Date.now() - stopped < 1000, `run() returned ${Date.now() - stopped} ms after stop()`);
  assert.equal(stats2.jobs, 0);
  assert.equal(await queued(server), 10, 'still every job');

  // memcached back: a new worker counts everything exactly once.
  await proxy.heal();
  const third = rt.worker({}, { ring, now: () => at(base) });
  assert.equal((await within(third.run({ idle: true }), 20_000, 'the worker after the outage')).jobs, 10);
  await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

test('memcached lost after the counts are stored, before their commit: the jobs are acknowledged anyway, nothing counted twice', async (t) => {
  const { rt, server } = await ownGearman(t);
  const proxy = await TcpProxy.start(t, rt.config.memcachedServers[0]!.port);
  const direct = new Ring({ servers: [local(proxy.port)], keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6, opTimeoutMs: 500 });
  t.after(() => direct.close());
  // A real outage that begins just as the fold's counts are in: its commit cannot be written.
  const ring = ringWith(direct, {
    apply: async (deltas) => {
      const applied = await direct.apply(deltas);
      await proxy.cut();
      return applied;
    },
  });
  const base = futureSlice(SLICE);
  const expected = new Expected();
  for (let i = 0; i < 300; i++) expected.add(startOf(base, SLICE), i, 4, 2);
  await rt.client.send(Array.from({ length: 300 }, (_, i): LogEvent => ({ userId: String(i), actionId: 4, value: 2, at: at(base) })));

  const w = rt.worker({}, { ring, now: () => at(base) });
  const stats = await within(w.run({ deadlineMs: Date.now() + 1500 }), 10_000, 'a worker past its deadline');
  assert.ok(stats.storeRetries > 0, 'it tried to write the commit');
  assert.equal(stats.jobs, 1, 'the stored job was acknowledged');
  assert.equal(await queued(server), 0, 'so gearmand will not hand it out again');

  await proxy.heal();
  await within(rt.worker({}, { now: () => at(base) }).run({ idle: true }), 20_000, 'the next worker');
  const result = await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'counted once');
  // The fold never committed, so the flush cannot tell it from one cut short: it says "maybe", with the bound (a false alarm, never a silent miss).
  const slice = result.slices.find((s) => s.slice === base)!;
  assert.deepEqual([slice.status, slice.duplicateBound], ['maybe-duplicated', '300'], slice.note);
});

test('a store error that is not an outage dead-letters that fold’s jobs with the reason; the worker moves on', async (t) => {
  const { rt, server } = await ownGearman(t);
  let failures = 1;
  const ring = ringWith(rt.ring, {
    apply: (deltas) => (failures-- > 0 ? Promise.reject(new Error('disk on fire')) : rt.ring.apply(deltas)),
  });
  const base = futureSlice(SLICE);
  const expected = new Expected();
  for (let job = 0; job < 3; job++) {
    await rt.client.send(Array.from({ length: 50 }, (_, i): LogEvent => ({ userId: String(i), actionId: 1 + job, value: 1, at: at(base) })));
    // The first job's fold fails: only the later ones are counted.
    if (job > 0) for (let i = 0; i < 50; i++) expected.add(startOf(base, SLICE), i, 1 + job, 1);
  }

  const w = rt.worker({ maxJobsPerFold: 1 }, { ring, now: () => at(base) });
  const stats = await within(w.run({ idle: true }), 20_000, 'the worker (retrying an error that is not an outage?)');
  assert.equal(stats.deadLetters, 1);
  assert.equal(stats.jobs, 3, 'all three acknowledged: one dead-lettered, two counted');
  assert.equal(stats.storeRetries, 0, 'an error that is not an outage is not retried');
  assert.equal(await queued(server), 0);

  assert.equal(await drainDeadLetters([server], rt.store), 1);
  const [letter] = await rt.store.deadLetters(5);
  assert.match(letter!.error, /store failed: disk on fire/);
  assert.equal(letter!.fn, FN_BATCH);
  assert.equal(JSON.parse(letter!.payload.toString('utf8')).e.length, 50, 'the whole job, for a replay');

  await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

// ── 3. Corrupt ring data ──

test('corrupt register chunks and counters: the slice is recorded corrupt with the key named, its good rows written, the next slices flushed', async (t) => {
  const { rt } = await ownGearman(t);
  const s = futureSlice(SLICE);
  const expected = new Expected();
  // Three folds in slice s, each with pairs new to it: register chunks 1, 2 and 3. One fold in s + 1.
  const jobs: [number, number][] = [[s, 1], [s, 2], [s, 3], [s + 1, 1]];
  for (const [slice, action] of jobs) {
    await rt.client.send(Array.from({ length: 20 }, (_, i): LogEvent => ({ userId: String(100 + i), actionId: action, value: 2, at: at(slice) })));
  }
  await rt.worker({ maxJobsPerFold: 1 }, { now: () => at(s + 1) }).run({ idle: true });

  const { keys } = rt.ring;
  const mc = new MemcacheConnection(rt.config.memcachedServers[0]!);
  const ttl = 6 * SLICE;
  const chunk3 = (await mc.getMulti([keys.registerChunk(s, 3)])).get(keys.registerChunk(s, 3))!;
  assert.equal(chunk3.length, 20 * 10, 'chunk 3 lists the third fold’s 20 pairs');
  // Its first entry gets action id 0 (a pair OffLog never writes); the other 19 stay readable.
  chunk3.writeUInt16BE(0, 8);
  const badUser = 100 + 7;
  await mc.exec([
    { kind: 'set', key: keys.registerChunk(s, 1), value: Buffer.from('garbage'), ttl }, // 7 bytes: no whole entry
    { kind: 'set', key: keys.count(s, String(badUser), 2), value: 'abc', ttl },
    { kind: 'set', key: keys.registerChunk(s, 3), value: chunk3, ttl },
  ]);
  await mc.close();
  // What survives in s: the second fold's pairs but the one with a bad counter, and the third's but its first.
  for (let i = 0; i < 20; i++) {
    if (100 + i !== badUser) expected.add(startOf(s, SLICE), 100 + i, 2, 2);
    if (i > 0) expected.add(startOf(s, SLICE), 100 + i, 3, 2);
    expected.add(startOf((s + 1) as SliceId, SLICE), 100 + i, 1, 2);
  }

  const result = await within(rt.flush(new Date(startOf((s + 3) as SliceId, SLICE))), 20_000, 'the flush');
  assert.deepEqual(result.slices.filter((r) => r.slice >= s).map((r) => [r.slice - s, r.status, r.rows]), [[0, 'corrupt', 38], [1, 'flushed', 20]]);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
  const row = await sliceRow(rt, s);
  assert.equal(row.status, 'corrupt');
  assert.equal(Number(row.corrupt_items), 3, 'the short chunk, the entry with action 0, the counter that is not a number');
  assert.ok(row.note.includes(keys.registerChunk(s, 1)), `the note names the first bad key: ${row.note}`);
  assert.match(row.note, /7 bytes/);

  // Nothing is left to block the next flush.
  const next = await within(rt.flush(new Date(startOf((s + 4) as SliceId, SLICE))), 20_000, 'the next flush');
  assert.deepEqual(next.slices.map((r) => [r.slice - s, r.status]), [[2, 'flushed']]);
});

// ── 4. Clocks: the flush ahead of the workers ──

/** Runs the operator CLI (`offlog …`) against this runtime's servers, prefixes and tables. */
function offlog(rt: Runtime, args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const c = rt.config;
  const env = {
    ...process.env, OFFLOG_GEARMAN_SERVERS: c.gearmanServers.map(label).join(','), OFFLOG_MEMCACHED_SERVERS: c.memcachedServers.map(label).join(','),
    OFFLOG_KEY_PREFIX: c.keyPrefix, OFFLOG_TABLE_PREFIX: c.tablePrefix, OFFLOG_LOG_LEVEL: 'error',
  };
  const child = spawn('node', ['bin/offlog.js', ...args], { env });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve) => child.once('close', (code) => resolve({ code, stdout, stderr })));
}

const minutesAhead = (from: number, minutes: number): string => new Date(from + minutes * 60_000).toISOString();

test('the README scenario: flush --now 30 minutes ahead needs --force, and the event posted after it is still counted', async (t) => {
  const { rt } = await ownGearman(t);
  const t0 = Date.now();
  await post(rt, [{ userId: 42, actionId: 1, value: 5 }]);
  await rt.worker().run({ idle: true });

  const refused = await offlog(rt, ['flush', '--now', minutesAhead(t0, 30)]);
  assert.equal(refused.code, 2, refused.stderr); // a usage error (docs/operations.md, exit codes)
  assert.match(refused.stderr, /ahead of this machine's clock/);
  assert.match(refused.stderr, /--force/);
  const forced = await offlog(rt, ['flush', '--now', minutesAhead(t0, 30), '--force']);
  assert.equal(forced.code, 0, forced.stderr);

  // The slice of "now" is flushed: the next event goes to the first slice the flush has not taken.
  const t1 = Date.now();
  await post(rt, [{ userId: 42, actionId: 1, value: 7 }]);
  const w = rt.worker();
  const stats = await w.run({ idle: true });
  assert.equal(stats.movedPastWatermark, 1);
  assert.equal(stats.late, 1);
  const last = await offlog(rt, ['flush', '--now', minutesAhead(t1, 50), '--force']);
  assert.equal(last.code, 0, last.stderr);

  const c0 = sliceOf(t0, SLICE);
  const expected = new Expected();
  expected.add(startOf(c0, SLICE), 42, 1, 5);
  expected.add(startOf((c0 + 2) as SliceId, SLICE), 42, 1, 7);
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'the second event is counted, in the first slice left open');
  assert.equal(String((await sliceRow(rt, c0 + 2)).late), '1');
});

test('a worker whose clock is two slices behind the flush: what it folds for taken slices lands in the next open one, totals exact, late reported', async (t) => {
  const { rt } = await ownGearman(t);
  const base = futureSlice(SLICE, 10);
  const worker = rt.worker({}, { now: () => at(base, 5000) });
  const expected = new Expected();
  const send = async (moved: boolean) => {
    const events: LogEvent[] = [];
    for (let i = 0; i < 50; i++) {
      events.push({ userId: String(i), actionId: 1, value: 1, at: at(base - 1) }, { userId: String(i), actionId: 2, value: 2, at: at(base) });
      expected.add(startOf((moved ? base + 1 : base - 1) as SliceId, SLICE), i, 1, 1);
      expected.add(startOf((moved ? base + 1 : base) as SliceId, SLICE), i, 2, 2);
    }
    // Already late for the worker (older than its previous slice): counted into its current slice.
    events.push({ userId: '77', actionId: 3, value: 0, at: at(base - 5) });
    expected.add(startOf((moved ? base + 1 : base) as SliceId, SLICE), 77, 3);
    await rt.client.send(events);
  };

  await send(false);
  await worker.run({ idle: true });
  // The flush's clock is two slices ahead: it takes base − 1 and base.
  const first = await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(first.slices.filter((s) => s.slice >= base - 1).map((s) => [s.slice - base, s.rows, s.late]), [[-1, 50, '0'], [0, 51, '1']]);

  // The worker's clock has not moved: its slices are taken, so its events go to base + 1.
  await send(true);
  const stats = await worker.run({ idle: true });
  assert.equal(stats.movedPastWatermark, 101, 'every event of the second batch moved');
  assert.equal(stats.late, 1 + 101, 'the first batch’s late event, then all of the second, each once');
  const second = await rt.flush(new Date(startOf((base + 3) as SliceId, SLICE)));
  assert.deepEqual(second.slices.map((s) => [s.slice - base, s.rows, s.events, s.late]), [[1, 101, '101', '101']]);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

test('a flush that takes the very slice a worker is moving its events to: the worker moves them again, each event late once', async (t) => {
  const { rt } = await ownGearman(t);
  const base = futureSlice(SLICE, 40);
  // The flush takes base, then base + 1, each just before the worker announces itself.
  const seals = [base, base + 1] as SliceId[];
  const ring = ringWith(rt.ring, {
    enter: async (slices) => {
      const s = seals.shift();
      if (s !== undefined) await rt.ring.seal(s, 0);
      return rt.ring.enter(slices);
    },
  });
  const expected = new Expected();
  const events: LogEvent[] = [{ userId: '5', actionId: 9, value: 0, at: at(base - 5) }]; // late already
  expected.add(startOf((base + 2) as SliceId, SLICE), 5, 9);
  for (let i = 0; i < 30; i++) {
    events.push({ userId: String(i), actionId: 1, value: 3, at: at(base - 1) }, { userId: String(i), actionId: 1, value: 4, at: at(base) });
    expected.add(startOf((base + 2) as SliceId, SLICE), i, 1, 7, 1);
    expected.add(startOf((base + 2) as SliceId, SLICE), i, 1, 0, 1);
  }
  await rt.client.send(events);
  const stats = await rt.worker({}, { ring, now: () => at(base) }).run({ idle: true });
  assert.equal(seals.length, 0, 'both seals came');
  assert.equal(stats.movedPastWatermark, 61);
  assert.equal(stats.late, 61);
  const result = await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.deepEqual(result.slices.filter((s) => s.rows > 0).map((s) => [s.slice - base, s.rows, s.events, s.late]), [[2, 31, '61', '61']]);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

// ── 5. The seal: writers and the flush never share a slice ──

test('seal: the flush waits for a writer inside the slice; a writer entering after the seal sees the watermark', async () => {
  const rt = fresh();
  const ring = rt.ring;
  const s = futureSlice(SLICE, 20);
  assert.equal(await ring.enter([s]), null, 'no flush yet: no watermark');

  let sealedAt = 0;
  const started = Date.now();
  const sealing = ring.seal(s, 5000).then((inside) => {
    sealedAt = Date.now();
    return inside;
  });
  await sleep(300);
  assert.equal(sealedAt, 0, 'the flush waits while a writer is inside');
  // The watermark is already published: a writer arriving now sees it (and will write elsewhere).
  assert.equal(await ring.enter([s]), s);
  await ring.leave([s]);
  await sleep(100);
  assert.equal(sealedAt, 0, 'the first writer is still inside');
  await ring.leave([s]);
  assert.equal(await sealing, 0, 'no writer left inside');
  assert.ok(sealedAt - started >= 400, `waited ${sealedAt - started} ms, until the writer left`);

  // A writer that never leaves (a worker killed mid-store): the flush waits as long as it was told, and says so.
  await ring.enter([(s + 1) as SliceId]);
  const t1 = Date.now();
  assert.equal(await ring.seal((s + 1) as SliceId, 300), 1);
  assert.ok(Date.now() - t1 >= 300, 'it waited');
  // Never lowered: an older seal leaves the watermark where it is.
  await ring.seal((s - 3) as SliceId, 0);
  assert.equal(await ring.watermark(), s + 1);
});

test('seal under load: writers racing a seal either land before the flush reads or see the watermark; nothing lands after', async () => {
  const rt = fresh();
  const ring = rt.ring;
  const s = futureSlice(SLICE, 30);
  let landed = 0;
  let turnedAway = 0;
  let sealed = false;
  let landedAfterSeal = 0;
  // Each writer writes until it has been turned away three times.
  const writer = async (id: number) => {
    for (let away = 0; away < 3; ) {
      try {
        const wm = await ring.enter([s]);
        if (wm !== null && wm >= s) {
          turnedAway++;
          away++;
          continue;
        }
        const d = new Deltas();
        d.add({ userId: String(id), actionId: 1, value: 1, at: at(s) }, s, SLICE);
        await ring.apply(d);
        landed++;
        if (sealed) landedAfterSeal++;
      } finally {
        await ring.leave([s]);
      }
    }
  };
  const writers = [1, 2, 3, 4].map(writer);
  for (let i = 0; landed < 40 && i < 2000; i++) await sleep(5);
  assert.equal(await ring.seal(s, 5000), 0);
  sealed = true;
  const read = async () => {
    const reader = await ring.openSlice(s, 100);
    while ((await reader.next()) !== null);
    return reader.totals().counted;
  };
  const atSeal = await read();
  await Promise.all(writers);
  assert.equal(turnedAway, 4 * 3);
  assert.equal(landedAfterSeal, 0, 'no write finished after the seal returned');
  assert.equal(await read(), atSeal, 'the slice did not change after the seal');
  assert.equal(atSeal, BigInt(landed));
});
