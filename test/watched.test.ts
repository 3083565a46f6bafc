/**
 * Watched events, on real gearmand, memcached and MariaDB (MySQL behind a
 * proxy that can be cut) and a PutEvents endpoint that can go down: the raw
 * records of watched users and actions and of events sent as watched are
 * stored and published once each — none lost and none doubled — through
 * MySQL down and then the bus down, while counting goes on untouched.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { sleep } from '../lib/base/backoff.ts';
import { createLogger } from '../lib/base/log.ts';
import { encodeWatchedJob, FN_LOG_SIMPLE, FN_WATCHED, type WatchedRecord } from '../lib/domain/contract.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { OffLogClient } from '../lib/send/client.ts';
import { Store } from '../lib/flush/store.ts';
import { addWatch, WatchList } from '../lib/count/watch.ts';
import { pruneWatched, storeWatched, WatchedDrain } from '../lib/publish/watched.ts';
import type { Runtime } from '../lib/runtime.ts';
import { adminStatus, GearmanConnection } from '../lib/wire/gearman.ts';
import { Proxy } from './daemons.ts';
import { FakeBus } from './fakebus.ts';
import { drainQueues, Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
const log = createLogger(process.env.OFFLOG_LOG_LEVEL ?? 'warn', 'test');
const runtimes: Runtime[] = [];
const stores: Store[] = [];
function fresh(overrides: Record<string, string> = {}): Runtime {
  const rt = testRuntime({ OFFLOG_SLICE_SECONDS: String(SLICE), ...overrides });
  runtimes.push(rt);
  return rt;
}
before(async () => {
  await drainQueues(fresh().config);
});
after(async () => {
  await Promise.all([...runtimes.map((rt) => rt.close()), ...stores.map((s) => s.close())]);
});

/** A record as compared: everything but the id (which the test cannot know in advance). */
const shape = (r: { userId: string; actionId: number; value: number; at: number; payload?: string | null; reasons: string[] }) =>
  `${r.userId}|${r.actionId}|${r.value}|${new Date(r.at).toISOString()}|${r.payload ?? ''}|${r.reasons.join(',')}`;

async function tableRecords(rt: Runtime): Promise<{ id: string; shape: string; published: boolean }[]> {
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT id, at, user_id, action_id, value, payload, reasons, published_at FROM \`${rt.store.tables.watched}\` ORDER BY id`,
  );
  return rows.map((r) => ({
    id: String(r.id),
    shape: shape({ userId: String(r.user_id), actionId: Number(r.action_id), value: Number(r.value), at: (r.at as Date).getTime(), payload: r.payload, reasons: String(r.reasons).split(',') }),
    published: r.published_at !== null,
  }));
}

async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

test('MySQL down, then the bus down: counting goes on, and every watched record is stored and published exactly once', async (t) => {
  const fake = await FakeBus.start(t);
  const rt = fresh({ OFFLOG_EVENT_BUS: 'offlog-test', OFFLOG_EVENTBRIDGE_ENDPOINT: fake.endpoint });
  await rt.store.migrate();
  await addWatch(rt.store, 'user', '7');
  await addWatch(rt.store, 'action', '3');
  await addWatch(rt.store, 'user', '18446744073709551615');

  // The worker's watch lists and the drain reach MySQL through a proxy that the test cuts.
  const proxy = await Proxy.start(t, Number(new URL(rt.config.mysqlUrl).port));
  const viaProxy = new Store({ url: rt.config.mysqlUrl.replace(/:\d+\//, `:${proxy.port}/`), tablePrefix: rt.config.tablePrefix });
  stores.push(viaProxy);
  const watchList = WatchList.fromStore(viaProxy, 1, log);
  assert.equal(await watchList.waitReady(5000), true);

  const base = futureSlice(SLICE);
  const clock = startOf(base, SLICE) + 1000;
  const worker = rt.worker({}, { now: () => clock, watchList });
  const counts = new Expected();
  const want: string[] = [];
  const client = new OffLogClient({ servers: rt.config.gearmanServers, logger: rt.log });
  let n = 0;
  /** Logs one event (as watched, or not) and notes what it should leave behind. */
  const send = (user: number | string, action: number, watched: 'no' | 'action' | 'user', payload?: string) => {
    const at = startOf(base, SLICE) + (n % 600) * 1000;
    const value = n++;
    if (watched === 'no') client.log(user, action, { value, at, ...(payload === undefined ? {} : { payload }) });
    else if (watched === 'action') client.logWatchedAction(user, action, payload, { value, at });
    else client.logWatchedUser(user, action, payload, { value, at });
    counts.add(startOf(base, SLICE), user, action, value);
    const reasons = [...(watched === 'no' ? [] : ['explicit']), ...(String(user) === '7' || String(user) === '18446744073709551615' ? ['user'] : []), ...(action === 3 ? ['action'] : [])];
    // A payload is kept only where the record is; the fast path carries none.
    if (reasons.length > 0) want.push(shape({ userId: String(user), actionId: action, value, at, payload: payload ?? null, reasons }));
  };

  await proxy.cut();
  // Plain batches (the worker's fast path): 3,000 events over 50 users × 5 actions.
  for (let i = 0; i < 3000; i++) send(i % 50, 1 + (i % 5), 'no');
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  // A version 2 batch: sent as watched (with and without a payload, UTF-8, a big user id), mixed with plain events.
  for (let i = 0; i < 20; i++) send(100 + (i % 3), 9, i % 2 === 0 ? 'action' : 'user', i % 4 === 0 ? undefined : `payload ${i} ✓ "quoted"`);
  send('18446744073709551615', 4, 'no', 'kept: the user is watched');
  send(8, 3, 'user', 'watched twice over');
  for (let i = 0; i < 100; i++) send(200 + i, 1 + (i % 5), 'no', 'plain: kept only for action 3');
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  await client.close();
  // The PHP client's logSimple for a watched user: stamped with the worker's clock.
  const php = await GearmanConnection.connect(rt.config.gearmanServers[0]!);
  await php.submitBackground(FN_LOG_SIMPLE, JSON.stringify({ userid: 7, actionId: 2, payload: 'from PHP' }), '');
  php.close();
  counts.add(startOf(base, SLICE), 7, 2, 0);
  want.push(shape({ userId: '7', actionId: 2, value: 0, at: clock, payload: 'from PHP', reasons: ['user'] }));

  // Counting does not wait for MySQL: the worker has its lists, and the records go to a Gearman queue.
  const started = performance.now();
  const stats = await worker.run({ idle: true });
  const workerMs = performance.now() - started;
  assert.equal(stats.events, n + 1);
  assert.equal(stats.watched, want.length);
  assert.ok(workerMs < 5000, `the worker took ${Math.round(workerMs)} ms with MySQL down`);

  // The drain cannot store while MySQL is down: it holds the jobs, which stay gearmand's, and publishes nothing.
  const drain = new WatchedDrain({ gearmanServers: rt.config.gearmanServers, store: viaProxy, bus: rt.bus, log, retentionDays: 30 });
  const draining = drain.run();
  await until('the drain to try MySQL', () => drain.stats.mysqlRetries >= 2);
  const held = (await adminStatus(rt.config.gearmanServers[0]!)).get(FN_WATCHED)!;
  assert.ok(held.queued >= 1, `offlog.watched jobs still with gearmand: ${JSON.stringify(held)}`);
  assert.equal(fake.accepted('ActivityWatched').length, 0);

  await proxy.heal();
  await until('every record published', () => fake.accepted('ActivityWatched').length >= want.length);
  drain.stop();
  const drained = await draining;
  assert.equal(drained.stored, want.length);
  assert.equal(drained.duplicates, 0);

  let table = await tableRecords(rt);
  assert.deepEqual(table.map((r) => r.shape).sort(), [...want].sort(), 'stored: exactly the watched events');
  assert.ok(table.every((r) => r.published));
  const published = fake.accepted('ActivityWatched');
  assert.deepEqual(published.map((e) => String(e.detail.id)).sort(), table.map((r) => r.id).sort(), 'published: each stored record once');
  const sample = published.find((e) => e.detail.payload === 'from PHP')!;
  assert.deepEqual(Object.keys(sample.detail).sort(), ['actionId', 'at', 'id', 'payload', 'reasons', 'userId', 'value']);

  // The counts were never held up: flushed, they are exact.
  await rt.flush(new Date(startOf((base + 3) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), counts.asStrings());

  // Now the bus is down: records are stored and wait, unpublished.
  await fake.down();
  const more = new OffLogClient({ servers: rt.config.gearmanServers, logger: rt.log });
  for (let i = 0; i < 30; i++) more.logWatchedUser(300 + i, 5, `bus down ${i}`, { at: startOf((base + 3) as SliceId, SLICE) + i });
  assert.equal(await more.flush({ timeoutMs: 30_000 }), true);
  await more.close();
  await rt.worker({}, { now: () => startOf((base + 3) as SliceId, SLICE) + 1000, watchList }).run({ idle: true });
  const second = new WatchedDrain({ gearmanServers: rt.config.gearmanServers, store: viaProxy, bus: rt.bus, log, retentionDays: 30 });
  const whileDown = await second.run({ idle: true });
  assert.equal(whileDown.stored, 30);
  assert.equal(whileDown.published, 0);
  table = await tableRecords(rt);
  const waiting = table.filter((r) => !r.published);
  assert.equal(waiting.length, 30);

  // Delivered twice (a worker that died after queueing them and before its marks sends them again, under the same ids): stored once.
  const again = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT id, UNIX_TIMESTAMP(at) * 1000 AS at, user_id, action_id, value, payload, reasons FROM \`${rt.store.tables.watched}\` WHERE published_at IS NULL`,
  );
  const copies: WatchedRecord[] = again[0].map((r) => ({
    id: String(r.id), at: Number(r.at), userId: String(r.user_id), actionId: Number(r.action_id), value: Number(r.value), payload: r.payload as string, reasons: String(r.reasons).split(',') as WatchedRecord['reasons'],
  }));
  const gm = await GearmanConnection.connect(rt.config.gearmanServers[0]!);
  await gm.submitBackground(FN_WATCHED, encodeWatchedJob(copies.slice(0, 10)), 'copy-1');
  await gm.submitBackground(FN_WATCHED, encodeWatchedJob(copies), 'copy-2');
  gm.close();
  const dupes = await new WatchedDrain({ gearmanServers: rt.config.gearmanServers, store: viaProxy, bus: rt.bus, log, retentionDays: 30 }).run({ idle: true });
  assert.deepEqual([dupes.records, dupes.stored, dupes.duplicates], [40, 0, 40]);
  const [[deliveries]] = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT COUNT(*) AS n, SUM(deliveries) AS d FROM \`${rt.store.tables.watched}\` WHERE published_at IS NULL`,
  );
  assert.deepEqual([Number(deliveries!.n), Number(deliveries!.d)], [30, 70], 'each copy counted as a delivery, none as a row');

  // The bus is back: each waiting record is published once, and nothing else.
  await fake.up();
  const back = await new WatchedDrain({ gearmanServers: rt.config.gearmanServers, store: viaProxy, bus: rt.bus, log, retentionDays: 30 }).run({ idle: true });
  assert.equal(back.published, 30);
  const idle = await new WatchedDrain({ gearmanServers: rt.config.gearmanServers, store: viaProxy, bus: rt.bus, log, retentionDays: 30 }).run({ idle: true });
  assert.equal(idle.published, 0);
  const all = fake.accepted('ActivityWatched').map((e) => String(e.detail.id));
  assert.equal(all.length, want.length + 30);
  assert.equal(new Set(all).size, all.length, 'no record published twice');
  assert.deepEqual([...all].sort(), (await tableRecords(rt)).map((r) => r.id).sort());
});

test('watch lists: a worker sees a change within the TTL, without waiting for MySQL on the way', async () => {
  let lists: { kind: 'user' | 'action'; id: string }[] = [{ kind: 'user', id: '1' }];
  let reads = 0;
  let clock = 0;
  const list = new WatchList({ load: async () => (reads++, lists), ttlMs: 1000, log, now: () => clock });
  assert.equal(await list.waitReady(1000), true);
  assert.equal(list.current().userWatched('1'), true);
  lists = [{ kind: 'action', id: '5' }];
  clock = 999;
  assert.equal(list.current().userWatched('1'), true, 'within the TTL: the copy in hand');
  assert.equal(reads, 1);
  clock = 1000;
  assert.equal(list.current().actionWatched(5), false, 'the re-read is started, not awaited');
  await sleep(10);
  assert.equal(list.current().actionWatched(5), true);
  assert.equal(list.current().userWatched('1'), false);
  assert.equal(reads, 2);

  // MySQL failing: the last copy stays in use, and is not re-read at every fold.
  const failing = new WatchList({ load: async () => { reads++; throw new Error('ECONNREFUSED'); }, ttlMs: 1000, log, now: () => clock });
  reads = 0;
  assert.equal(await failing.waitReady(1000), false);
  for (let i = 0; i < 100; i++) failing.current();
  assert.equal(reads, 1);
});

test('retention: old watched records are pruned in batches; unpublished ones wait until they too are old', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const day = 86_400_000;
  const now = Date.now();
  const rec = (id: string, at: number): WatchedRecord => ({ id, at, userId: '1', actionId: 1, value: 0, reasons: ['user'] });
  const old = Array.from({ length: 2500 }, (_, i) => rec(`old#${i}`, now - 40 * day));
  await storeWatched(rt.store, old, new Date(now - 40 * day));
  await storeWatched(rt.store, [rec('recent#0', now - day)], new Date(now - day));
  // An old event that arrived just now, not published yet: kept until published or until its arrival is old too.
  await storeWatched(rt.store, [rec('late#0', now - 40 * day)], new Date(now));
  await rt.store.pool.query(`UPDATE \`${rt.store.tables.watched}\` SET published_at = NOW(3) WHERE id LIKE 'old#%' OR id = 'recent#0'`);
  assert.equal(await pruneWatched(rt.store, 30, now), 2500);
  assert.deepEqual((await tableRecords(rt)).map((r) => r.id).sort(), ['late#0', 'recent#0']);
  assert.equal(await pruneWatched(rt.store, 30, now + 31 * day), 2);
});

test('offlog watch add|rm|list and offlog rollup: the operator commands, with errors naming the flag', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const env = { ...process.env, OFFLOG_TABLE_PREFIX: rt.config.tablePrefix, OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_LOG_LEVEL: 'error' };
  // Each run of the CLI costs ~1 s (tsx), so independent ones run side by side.
  const offlog = (...args: string[]) =>
    new Promise<{ code: number | null; out: Record<string, unknown> | null; err: string }>((resolve) => {
      const child = spawn('node', ['bin/offlog.js', ...args], { env });
      let out = '';
      let err = '';
      child.stdout.on('data', (c: Buffer) => (out += c.toString()));
      child.stderr.on('data', (c: Buffer) => (err += c.toString()));
      child.on('exit', (code) => resolve({ code, out: out ? (JSON.parse(out) as Record<string, unknown>) : null, err }));
    });
  await rt.store.pool.query(`INSERT INTO \`${rt.store.tables.counts}\` VALUES ('2026-01-01 10:10:00', 5, 1, 2, 3), ('2026-01-01 10:50:00', 5, 1, 4, 5), ('2026-01-01 11:00:00', 5, 1, 1, 1)`);
  const [user, action, bad, both, roll, badRoll] = await Promise.all([
    offlog('watch', 'add', '--user', '18446744073709551615'),
    offlog('watch', 'add', '--action', '12'),
    offlog('watch', 'add', '--user', 'abc'),
    offlog('watch', 'add', '--user', '1', '--action', '2'),
    offlog('rollup', '--from', '2026-01-01T10:00:00Z', '--to', '2026-01-01T11:00:00Z'),
    offlog('rollup', '--from', '2026-01-01T10:00', '--to', '2026-01-01T11:00:00Z'),
  ]);
  assert.deepEqual([user.code, user.out?.added, action.code, action.out?.added], [0, true, 0, true]);
  assert.equal(bad.code, 2); // a usage error
  assert.match(bad.err, /^offlog: --user: must be an unsigned 64-bit integer \(number or decimal string\), got "abc"/);
  assert.match(both.err, /give exactly one of --user N or --action N/);
  assert.equal(roll.code, 0, roll.err);
  const [hourly] = await rt.store.pool.query<RowDataPacket[]>(`SELECT hour_start, count, value_sum FROM \`${rt.store.tables.hourly}\` ORDER BY hour_start`);
  assert.deepEqual(hourly.map((h) => [(h.hour_start as Date).toISOString(), String(h.count), String(h.value_sum)]), [['2026-01-01T10:00:00.000Z', '6', '8']]);
  assert.match(badRoll.err, /^offlog: --from: must be epoch milliseconds or an ISO-8601 date-time/);

  const [list, rm] = [await offlog('watch', 'list'), await offlog('watch', 'rm', '--action', '12')];
  assert.deepEqual(list.out, { users: ['18446744073709551615'], actions: [12], note: 'a running worker sees a change within 30 s (OFFLOG_WATCHLIST_TTL_SECONDS)' });
  assert.equal(rm.out?.removed, true);
  const [left] = await rt.store.pool.query<RowDataPacket[]>(`SELECT kind, id FROM \`${rt.store.tables.watches}\``);
  assert.deepEqual(left.map((w) => [w.kind, String(w.id)]), [['user', '18446744073709551615']]);
});
