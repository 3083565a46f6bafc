/**
 * Issue 18, "nothing lost without a report": each defect found by reading the
 * core gets the test that failed on the code before its fix, on real daemons
 * where the defect needs them. The suspicions that turned out wrong keep the
 * test that shows it.
 */
import { after, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { loadConfig } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { sleep } from '../lib/base/backoff.ts';
import { Deltas } from '../lib/domain/aggregate.ts';
import { sliceOf, type SliceId } from '../lib/domain/slice.ts';
import { Claims } from '../lib/count/claims.ts';
import { flush } from '../lib/flush/flush.ts';
import { shardOfSlice } from '../lib/count/keys.ts';
import { Ring } from '../lib/count/ring.ts';
import { counterText } from '../lib/count/slice-reader.ts';
import { Store } from '../lib/flush/store.ts';
import { Arith, MemcacheConnection, MemcacheUnavailableError } from '../lib/wire/memcache.ts';
import { OffLogClient } from '../lib/send/client.ts';
import { FN_BATCH } from '../lib/domain/contract.ts';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import { drainDeadLetters } from '../lib/flush/deadletter.ts';
import { gearmand, memcached, Proxy } from './daemons.ts';
import { FakeMemcached } from './fake-memcached.ts';
import { futureSlice, readCounts, startOf, testConfig, testRuntime } from './support.ts';
import type { Runtime } from '../lib/runtime.ts';

/** memcached's longest relative expiry: 30 days. */
const MAX_RING_TTL_S = 2_592_000;
const closers: (() => Promise<unknown>)[] = [];
after(() => Promise.all(closers.map((c) => c())));

// ── item 4: a ring lifetime over memcached's 30-day relative expiry ──

test('config refuses a ring lifetime over 30 days, naming OFFLOG_SLICE_SECONDS × OFFLOG_RING_SLICES', () => {
  assert.throws(
    () => loadConfig({ OFFLOG_SLICE_SECONDS: '86400', OFFLOG_RING_SLICES: '31' }),
    (err: Error) => err instanceof ConfigError && /OFFLOG_SLICE_SECONDS × OFFLOG_RING_SLICES/.test(err.message) && /86400 × 31 = 2678400 s/.test(err.message),
  );
  const c = loadConfig({ OFFLOG_SLICE_SECONDS: '86400', OFFLOG_RING_SLICES: '30' });
  assert.equal(c.sliceSeconds * c.ringSlices, MAX_RING_TTL_S, '30 days exactly is memcached\'s longest relative expiry, and accepted');
  assert.throws(() => new Ring({ servers: c.memcachedServers, keyPrefix: 'x:', sliceSeconds: 86_400, ringSlices: 31 }), /30-day/);
});

test('a key written with the longest accepted ring lifetime lives in real memcached (one second more is born expired)', async () => {
  const c = testConfig();
  const conn = new MemcacheConnection(c.memcachedServers[0]!);
  closers.push(() => conn.close());
  const [ok, over] = [`${c.keyPrefix}ttl-ok`, `${c.keyPrefix}ttl-over`];
  await conn.exec([{ kind: 'set', key: ok, value: '1', ttl: MAX_RING_TTL_S }, { kind: 'set', key: over, value: '1', ttl: MAX_RING_TTL_S + 1 }]);
  const found = await conn.getMulti([ok, over]);
  assert.equal(found.get(ok)?.toString(), '1');
  assert.equal(found.has(over), false, 'memcached took 2,592,001 s as a Unix time in 1970: the key expired at once');
});

// ── item 7: a transient failure of the LOAD DATA probe must not pin upserts ──

test('a LOAD DATA probe that fails without a refusal (MariaDB unreachable at the first flush) is tried again later, and loads', async (t) => {
  const c = testConfig();
  const url = new URL(c.mysqlUrl);
  const proxy = await Proxy.start(t, Number(url.port));
  url.host = `127.0.0.1:${proxy.port}`;
  const s = new Store({ url: url.toString(), tablePrefix: c.tablePrefix, countsMethod: 'auto', loadProbeRetryMs: 300 });
  closers.push(() => s.close());
  await s.migrate();
  await proxy.cut();
  assert.equal(await s.countsMethod(), 'upsert', 'while the connection is down: upserts');
  assert.equal(s.loadRefusal, null, 'a connection that failed is not a refusal');
  assert.match(s.loadProbeFailure ?? '', /ECONNREFUSED|connect/i);
  await proxy.heal();
  await sleep(400);
  assert.equal(await s.countsMethod(), 'load', `probed again after the pause: ${s.loadRefusal ?? s.loadProbeFailure}`);
  assert.equal(s.loadProbeFailure, null);
});

test('a real refusal of LOAD DATA (here: no counts table) pins upserts, even once the retry pause has passed', async () => {
  const c = testConfig();
  const s = new Store({ url: c.mysqlUrl, tablePrefix: `${c.tablePrefix}none_`, countsMethod: 'auto', loadProbeRetryMs: 1 });
  closers.push(() => s.close());
  assert.equal(await s.countsMethod(), 'upsert');
  await sleep(20);
  assert.equal(await s.countsMethod(), 'upsert');
  assert.match(s.loadRefusal ?? '', /doesn't exist/);
  const before = s.statements;
  await s.countsMethod();
  assert.equal(s.statements, before, 'not probed again');
});

// ── item 5: a failed enter() must not leave its writer counts up ──

test('an enter() that fails on one server takes back the writer count it made on another: the flush finds no writer inside', async (t) => {
  const [a, b] = [await memcached(t, 16), await memcached(t, 16)];
  await a.start();
  await b.start();
  const r = new Ring({ servers: [a, b].map((d) => ({ host: '127.0.0.1', port: d.port })), keyPrefix: testConfig().keyPrefix, sliceSeconds: 600, ringSlices: 6, opTimeoutMs: 1000 });
  closers.push(() => r.close());
  // A slice whose writer count lives on server a (index 0); b is asked for the watermark.
  let s = futureSlice(600);
  while (r.placement.writer(shardOfSlice(s)) !== 0) s = (s + 1) as SliceId;
  await b.kill();
  for (let attempt = 0; attempt < 3; attempt++) await assert.rejects(r.enter([s]), MemcacheUnavailableError, 'b is down: the announcement fails');
  const direct = new MemcacheConnection({ host: '127.0.0.1', port: a.port });
  closers.push(() => direct.close());
  // The take-backs are written, not waited for (as every leave): give them a moment to land.
  let inside = -1;
  for (let i = 0; i < 40 && inside !== 0; i++) {
    const [w] = await direct.exec([{ kind: 'get', key: r.keys.sliceCounter(s, 'w') }]);
    inside = w === null ? 0 : Number(counterText(w as Buffer));
    if (inside !== 0) await sleep(50);
  }
  assert.equal(inside, 0, 'no writer left inside after three failed announcements');
  await b.start();
  assert.equal(await r.seal(s, 0), 0, 'the flush sees no writer inside');
});

// ── item 1: a memcached restart is reported on every slice that began before it, not only at the next flush ──

/** `n` events of user u, action 1, value 1, at the middle of `slice`, applied to the ring. */
async function put(ring: Ring, slice: SliceId, n: number, user = 1): Promise<void> {
  const d = new Deltas();
  d.addAll(Array.from({ length: n }, () => ({ userId: String(user), actionId: 1, value: 1, at: startOf(slice, 600) + 300_000 })), slice, 600);
  await ring.apply(d);
}

/**
 * A runtime on a memcached of the test's own (so it can be restarted), the
 * current slice `c`, `at(k)`: a moment in slice c + k, and a first flush
 * that remembers the memcached it saw.
 */
async function onRestartableMemcached(t: TestContext): Promise<{ m: Awaited<ReturnType<typeof memcached>>; rt: Runtime; c: SliceId; at: (k: number) => Date }> {
  const m = await memcached(t, 16);
  await m.start();
  const rt = testRuntime({ OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${m.port}` });
  closers.push(() => rt.close());
  await rt.store.migrate();
  const c = sliceOf(Date.now(), 600);
  const at = (k: number): Date => new Date(startOf((c + k) as SliceId, 600) + 1000);
  await flush(rt.flushDeps, at(0));
  return { m, rt, c, at };
}

test('a memcached restart marks every slice that began before it incomplete, whichever later flush takes it', async (t) => {
  const { m, rt, c, at } = await onRestartableMemcached(t);
  await put(rt.ring, (c - 1) as SliceId, 10);
  await put(rt.ring, c, 10);
  await m.restart();
  await put(rt.ring, (c - 1) as SliceId, 3);
  await put(rt.ring, c, 3);
  await put(rt.ring, (c + 1) as SliceId, 7); // begins after the restart: whole
  const statusOf = (r: Awaited<ReturnType<typeof flush>>, s: number) => r.slices.find((x) => x.slice === c + s);
  const first = await flush(rt.flushDeps, at(1));
  assert.equal(statusOf(first, -1)?.status, 'incomplete', `c−1 at the first flush after the restart: ${JSON.stringify(statusOf(first, -1))}`);
  const second = await flush(rt.flushDeps, at(2));
  assert.equal(statusOf(second, 0)?.status, 'incomplete', `c, flushed by the second flush after the restart: ${JSON.stringify(statusOf(second, 0))}`);
  assert.match(statusOf(second, 0)!.note, /memcached restarted at .*earlier counts are gone/);
  const third = await flush(rt.flushDeps, at(3));
  assert.equal(statusOf(third, 1)?.status, 'flushed', `c+1 began after the restart: ${JSON.stringify(statusOf(third, 1))}`);
  assert.equal(statusOf(third, 1)?.events, '7');
});

// ── item 2: a meta reply the parser does not expect is a protocol error, never an outage retried blind ──

for (const dialect of ['old-wording', 'none'] as const) {
  const what = dialect === 'none' ? 'a memcached with no meta commands (ERROR to ma and mn)' : 'a memcached answering OK to ma (the pre-1.6.10 wording)';
  test(`${what}: arithMany fails at once, as a protocol error, not as memcached unreachable`, async (t) => {
    const fake = await FakeMemcached.start(t, dialect);
    const conn = new MemcacheConnection({ host: '127.0.0.1', port: fake.port }, { opTimeoutMs: 5000 });
    t.after(() => conn.close());
    const started = Date.now();
    const err = await conn.arithMany(['a', 'b'], [1, 2], [Arith.UPSERT, Arith.UPSERT], 60).then(() => null, (e: Error) => e);
    assert.ok(err instanceof Error, 'it fails');
    assert.ok(!(err instanceof MemcacheUnavailableError), `not an outage: ${err.name}: ${err.message}`);
    assert.match(err.message, dialect === 'none' ? /ERROR.*meta/ : /"OK".*meta/);
    assert.ok(Date.now() - started < 2000, `failed at once, not at the 5 s timeout (${Date.now() - started} ms)`);
    // The connection is usable again for what it does speak.
    assert.deepEqual(await conn.exec([{ kind: 'set', key: 'k', value: '1', ttl: 60 }, { kind: 'get', key: 'k' }]), [true, Buffer.from('1')]);
  });

  test(`${what}: the worker dead-letters the fold with the reason, at once, and applies it only once`, async (t) => {
    const fake = await FakeMemcached.start(t, dialect);
    const g = await gearmand(t);
    await g.start();
    const server = { host: '127.0.0.1', port: g.port };
    const rt = testRuntime({ OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${fake.port}`, OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}` });
    closers.push(() => rt.close());
    await rt.store.migrate();
    const client = new OffLogClient({ servers: [server], batchSize: 100 });
    for (let i = 0; i < 300; i++) client.log(1 + (i % 10), 1);
    await client.close();
    const worker = rt.worker({}, { gearmanServers: [server] });
    const started = Date.now();
    await worker.run({ idle: true, deadlineMs: Date.now() + 8000 });
    assert.equal(worker.stats.storeRetries, 0, 'never retried as an outage');
    assert.ok(Date.now() - started < 4000, `done at once (${Date.now() - started} ms), not at the deadline`);
    assert.equal(worker.stats.deadLetters, 3, 'the three jobs dead-lettered');
    // 10 new pairs, each upserted once by the one attempt (none if the server knows no ma): not again and again.
    assert.equal(fake.metaApplied, dialect === 'none' ? 0 : 10);
    await sleep(1500);
    assert.equal(await drainDeadLetters([server], rt.store), 3);
    for (const row of await rt.store.deadLetters(10)) assert.match(row.error, /store failed: .*meta/);
  });
}

// ── S1: an evicted `vn` must not zero every value sum of its slice ──

test('S1 (confirmed): with the slice\'s `vn` evicted and its counters alive, the sums are still read, and the slice is reported', async () => {
  const rt = testRuntime();
  closers.push(() => rt.close());
  await rt.store.migrate();
  const s = futureSlice(600);
  await put(rt.ring, s, 5, 1); // user 1, action 1: 5 events of value 1
  await put(rt.ring, s, 2, 2);
  const direct = new MemcacheConnection(rt.config.memcachedServers[0]!);
  closers.push(() => direct.close());
  assert.deepEqual(await direct.exec([{ kind: 'delete', key: rt.ring.keys.sliceCounter(s, 'vn') }]), [true]);
  const result = await flush(rt.flushDeps, new Date(startOf((s + 2) as SliceId, 600) + 1000));
  const report = result.slices.find((x) => x.slice === s)!;
  const rows = await readCounts(rt);
  assert.deepEqual(rows.get(`${startOf(s, 600)}:1:1`), ['5', '5'], 'the value sum is read, not taken as 0');
  assert.deepEqual(rows.get(`${startOf(s, 600)}:2:1`), ['2', '2']);
  assert.equal(report.status, 'incomplete', `value sums that cannot be checked are reported: ${JSON.stringify(report)}`);
  assert.match(report.note, /vn/);
});

// ── S3: a slow but healthy memcached must not time a store out while it is still answering ──

test('S3 (confirmed): a memcached that keeps answering, slowly, past the op timeout: the batch completes, applied once', async (t) => {
  const c = testConfig();
  const target = c.memcachedServers[0]!;
  // 40,000 incr replies ("2\r\n": 120 KB) passed on 4 KB every 200 ms: 6 s in all, never 2 s without a byte.
  const proxy = await Proxy.start(t, target.port, { slow: { delayMs: 200, chunkBytes: 4096 } });
  const keys = Array.from({ length: 40_000 }, (_, i) => `${c.keyPrefix}slow:${i}`);
  const direct = new MemcacheConnection(target);
  closers.push(() => direct.close());
  await direct.arithMany(keys, keys.map(() => 1), keys.map(() => Arith.UPSERT), 600);
  const slow = new MemcacheConnection({ host: '127.0.0.1', port: proxy.port }, { opTimeoutMs: 2000 });
  t.after(() => slow.close());
  const started = Date.now();
  const flags = await slow.arithMany(keys, keys.map(() => 1), keys.map(() => Arith.INCR), 600);
  assert.ok(Date.now() - started > 2000, `the replies took longer than the op timeout (${Date.now() - started} ms)`);
  assert.equal(flags.filter((f) => f === 1).length, keys.length, 'every incr answered');
  const values = await direct.getCounters(keys);
  assert.equal(values.filter((v) => v === '2').length, keys.length, 'each counter incremented once');
});

// ── S5: one counter that is not a number must not fail every fold that touches its pair ──

test('S5 (confirmed): a counter that is not a number is skipped and reported; the fold and the other counters go on, exact', async () => {
  const rt = testRuntime();
  closers.push(() => rt.close());
  await rt.store.migrate();
  const s = futureSlice(600);
  const direct = new MemcacheConnection(rt.config.memcachedServers[0]!);
  closers.push(() => direct.close());
  const bad = rt.ring.keys.count(s, '7', 1);
  await direct.exec([{ kind: 'set', key: bad, value: 'not a number', ttl: 600 }]);
  const fold = (): Deltas => {
    const d = new Deltas();
    const events = [7, 8, 9].flatMap((u) => Array.from({ length: 3 }, () => ({ userId: String(u), actionId: 1, value: 2, at: startOf(s, 600) + 1000 })));
    d.addAll(events, s, 600);
    return d;
  };
  // Twice: first as new pairs (upserts), then as pairs the Ring knows (plain incr).
  const first = await rt.ring.apply(fold());
  const second = await rt.ring.apply(fold());
  assert.equal(first.notNumbers + second.notNumbers, 2, 'each fold skipped the one bad counter');
  const result = await flush(rt.flushDeps, new Date(startOf((s + 2) as SliceId, 600) + 1000));
  const report = result.slices.find((x) => x.slice === s)!;
  assert.equal(report.status, 'corrupt');
  assert.match(report.note, new RegExp(bad.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  const rows = await readCounts(rt);
  assert.deepEqual(rows.get(`${startOf(s, 600)}:8:1`), ['6', '12']);
  assert.deepEqual(rows.get(`${startOf(s, 600)}:9:1`), ['6', '12']);
  assert.equal(rows.has(`${startOf(s, 600)}:7:1`), false, 'the bad pair is not written');
});

// ── item 6: the duplicate bound is the fold's event cap, enforced: jobs past it wait, a job over it is refused ──

test('a worker folds at most OFFLOG_MAX_FOLD_EVENTS events at once: jobs past it go in the next fold, a job over it is dead-lettered', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const server = { host: '127.0.0.1', port: g.port };
  const rt = testRuntime({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}`, OFFLOG_MAX_FOLD_EVENTS: '1000', OFFLOG_MAX_BATCH_EVENTS: '1000' });
  closers.push(() => rt.close());
  await rt.store.migrate();
  const small = new OffLogClient({ servers: [server], batchSize: 400 });
  for (let i = 0; i < 4000; i++) small.log(1 + (i % 50), 1);
  await small.close();
  const big = new OffLogClient({ servers: [server], batchSize: 1500 });
  for (let i = 0; i < 1500; i++) big.log(99, 2);
  await big.close();
  // Every fold the ring is asked to store, by its events.
  const folds: number[] = [];
  const apply = rt.ring.apply.bind(rt.ring);
  rt.ring.apply = (d) => (folds.push(d.events), apply(d));
  const worker = rt.worker({}, { gearmanServers: [server] });
  await worker.run({ idle: true });
  assert.equal(folds.reduce((a, b) => a + b, 0), 4000, 'every event of the small jobs stored, once');
  assert.ok(Math.max(...folds) <= 1000, `no fold over the cap: ${folds.join(', ')}`);
  assert.equal(worker.stats.deadLetters, 1, 'the 1,500-event job refused');
  await sleep(1500);
  assert.equal(await drainDeadLetters([server], rt.store), 1);
  const [letter] = await rt.store.deadLetters(10);
  assert.match(letter!.error, /1500 events.*at most 1000.*OFFLOG_MAX_FOLD_EVENTS/);
});

test('config refuses OFFLOG_MAX_FOLD_EVENTS below OFFLOG_MAX_BATCH_EVENTS (the ingest would accept jobs the worker refuses)', () => {
  assert.throws(() => loadConfig({ OFFLOG_MAX_FOLD_EVENTS: '5000' }), /OFFLOG_MAX_FOLD_EVENTS: must be at least OFFLOG_MAX_BATCH_EVENTS \(10000\)/);
  assert.equal(loadConfig({}).maxFoldEvents, undefined, 'unset: the ring mode decides');
});

test('the fold cap by ring mode: 80,000 events in counters (what a crash can count twice); in folds, where a crash counts nothing twice, room for its 64 full jobs', async (t) => {
  const cap = (env: Record<string, string>): number => {
    const rt = testRuntime(env);
    t.after(() => rt.close());
    return (rt.worker() as unknown as { maxFoldEvents: number }).maxFoldEvents;
  };
  assert.equal(cap({ OFFLOG_RING_MODE: 'counters' }), 80_000);
  assert.equal(cap({ OFFLOG_RING_MODE: 'folds' }), 64 * 5_000);
  assert.equal(cap({ OFFLOG_RING_MODE: 'folds', OFFLOG_MAX_FOLD_EVENTS: '100000' }), 100_000, 'set, it holds in either mode');
});

// ── S2: a writer still inside the slice when the flush's wait ends ──

for (const resumes of [true, false]) {
  const who = resumes ? 'a live writer paused past the flush\'s wait stores the rest of its fold after the read: the next flush marks the slice incomplete'
    : 'a writer that died inside the slice (it never leaves): the slice stays flushed, nothing of it is missing';
  test(`S2 (confirmed): ${who}`, async () => {
    const rt = testRuntime();
    closers.push(() => rt.close());
    await rt.store.migrate();
    const s = futureSlice(600);
    const deps = { ...rt.flushDeps, sealWaitMs: 300 };
    // A writer announced on the slice, stored part of its fold, and is paused (GC, swap, a slow memcached), or dead.
    assert.equal(await rt.ring.enter([s]), null);
    await put(rt.ring, s, 5);
    const first = await flush(deps, new Date(startOf((s + 2) as SliceId, 600) + 1000));
    const read = first.slices.find((x) => x.slice === s)!;
    assert.equal(read.status, 'flushed', JSON.stringify(read));
    assert.match(read.note, /1 writer\(s\) still inside/);
    if (resumes) {
      // It resumes: what it stores now is after the flush's read; then it leaves and acknowledges its jobs.
      await put(rt.ring, s, 3);
      await rt.ring.leave([s]);
      for (let i = 0; i < 40 && (await rt.ring.writersIn(s)) > 0; i++) await sleep(25);
    }
    await flush(deps, new Date(startOf((s + 3) as SliceId, 600) + 1000));
    const record = (await rt.store.recentSlices(20)).find((r) => (r.slice_start as Date).getTime() === startOf(s, 600))!;
    assert.equal(record.status, resumes ? 'incomplete' : 'flushed', String(record.note));
    if (resumes) {
      assert.match(String(record.note), /left afterwards/);
      assert.equal(record.published_at, null, 'its SliceFlushed goes out again, with the new status');
    }
  });
}

// ── S4: a sum that memcached wrapped must be held (or found) even if the writer dies before holding it ──

/** One fold: `user`, action 1, one event of value `value` (up to 2^64 − 1: the fold holds a sum, not an event). */
function sumFold(slice: SliceId, user: number, value: bigint): Deltas {
  const d = new Deltas();
  // Events carry values up to 2^53 − 1: a large sum is many of them.
  const max = 2n ** 53n - 1n;
  const events: { userId: string; actionId: number; value: number; at: number }[] = [];
  for (let left = value; left > 0n; left -= left > max ? max : left) events.push({ userId: String(user), actionId: 1, value: Number(left > max ? max : left), at: startOf(slice, 600) + 1000 });
  d.addAll(events, slice, 600);
  return d;
}

for (const [how, before, wrapping] of [
  ['one huge amount (marked before it is sent)', [2n ** 63n], 2n ** 63n + 7n],
  ['amounts below 2^62 each (marked by the writer that saw the sum pass 2^62)', [2n ** 62n - 1n, 2n ** 62n - 1n, 2n ** 62n - 1n, 2n ** 62n - 1n], 2n ** 62n - 1n],
] as const) {
  test(`S4 (confirmed): a writer that dies between memcached wrapping a sum and holding it: the flush still holds it and reports it; ${how}`, async () => {
    const rt = testRuntime();
    closers.push(() => rt.close());
    await rt.store.migrate();
    const s = futureSlice(600);
    for (const v of before) await rt.ring.apply(sumFold(s, 5, v));
    // The fold that wraps the sum; its hold (a `set` to 2^64 − 1) never comes: the writer dies first.
    const dying = new Ring({ servers: rt.config.memcachedServers, keyPrefix: rt.config.keyPrefix, sliceSeconds: 600, ringSlices: 6 });
    closers.push(() => dying.close());
    const conn = dying.connections[0]!;
    const exec = conn.exec.bind(conn);
    conn.exec = async (ops) => {
      if (ops.some((o) => o.kind === 'set' && o.key.includes(':v:'))) throw new Error('killed before holding the sum');
      return exec(ops);
    };
    await assert.rejects(dying.apply(sumFold(s, 5, wrapping)), /killed before holding/);
    // Later writes build on the wrapped value.
    await rt.ring.apply(sumFold(s, 5, 3n));
    const result = await flush(rt.flushDeps, new Date(startOf((s + 2) as SliceId, 600) + 1000));
    const report = result.slices.find((x) => x.slice === s)!;
    const rows = await readCounts(rt);
    const [, sum] = rows.get(`${startOf(s, 600)}:5:1`)!;
    assert.equal(sum, '18446744073709551615', 'held at 2^64 − 1, not the small wrapped value');
    assert.equal(report.status, 'saturated', JSON.stringify(report));
    assert.match(report.note, /1 found wrapped by memcached/);
  });
}

test('a job carried to the next fold has its claim read there: two jobs a committed fold holds, the second carried, are both skipped', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const server = { host: '127.0.0.1', port: g.port };
  const rt = testRuntime({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}`, OFFLOG_MAX_FOLD_EVENTS: '1000', OFFLOG_MAX_BATCH_EVENTS: '1000' });
  closers.push(() => rt.close());
  const job = (user: number): string => JSON.stringify({ v: 1, e: Array.from({ length: 600 }, () => [user, 1, 0, Date.now()]) });
  // Both already stored by a fold that committed (another worker's, or this one's before a crash).
  const claims = new Claims(rt.ring);
  const before = claims.newFold();
  await claims.claim(['applied-a', 'applied-b'], before);
  assert.equal(await claims.commit(before, new Map()), true);
  const conn = await GearmanConnection.connect(server);
  try {
    await conn.submitBackground(FN_BATCH, job(1), 'applied-a', 'low');
    await conn.submitBackground(FN_BATCH, job(2), 'applied-b', 'low');
  } finally {
    conn.close();
  }
  const folds: number[] = [];
  const apply = rt.ring.apply.bind(rt.ring);
  rt.ring.apply = (d) => (folds.push(d.events), apply(d));
  const worker = rt.worker({}, { gearmanServers: [server] });
  await worker.run({ idle: true });
  assert.equal(worker.stats.duplicatesSkipped, 2, 'both were applied before');
  assert.deepEqual(folds, [], 'nothing stored again');
});

// ── chaos seed 1: a memcached restart takes the writer count of a slice read with a dead writer inside ──

test('a writer count lost to a memcached restart after the read is reported as the restart, not as a paused worker that left', async (t) => {
  const { m, rt, c, at } = await onRestartableMemcached(t);
  const s = (c + 1) as SliceId;
  await put(rt.ring, s, 5);
  // A worker SIGKILLed inside its store after its fold committed: it entered the slice and never leaves.
  await rt.ring.enter([s]);
  assert.equal(await rt.ring.writersIn(s), 1);
  const first = await flush({ ...rt.flushDeps, sealWaitMs: 100 }, at(4));
  assert.equal(first.slices.find((x) => x.slice === s)?.status, 'flushed');
  await m.restart(); // the dead writer's count goes with everything else
  await flush({ ...rt.flushDeps, sealWaitMs: 100 }, at(5));
  const [rows] = await rt.store.pool.query<import('mysql2').RowDataPacket[]>(
    `SELECT status, events, note FROM \`${rt.config.tablePrefix}slices\` WHERE slice_start = ?`,
    [new Date(startOf(s, 600))],
  );
  const row = rows[0]!;
  assert.equal(String(row.events), '5', 'the five events were read before the restart');
  assert.doesNotMatch(String(row.note), /a live worker paused past the flush's wait/, 'no worker left: the restart took the count');
  assert.match(String(row.note), /memcached restarted at .*, after this slice was read with 1 writer\(s\) inside/);
});
