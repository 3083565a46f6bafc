/**
 * Faults, each on real daemons with exact totals checked in the counts table:
 * a worker killed mid-stream, gearmand restarted, memcached unreachable and
 * restarted, MySQL lost mid-flush, two flushes at once, missed flushes, and
 * late or future-dated events.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, test, type TestContext } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { sleep } from '../lib/base/backoff.ts';
import { Deltas } from '../lib/domain/aggregate.ts';
import { OffLogClient } from '../lib/send/client.ts';
import type { HostPort } from '../lib/base/config.ts';
import { flush } from '../lib/flush/flush.ts';
import { adminStatus, GearmanConnection } from '../lib/wire/gearman.ts';
import { Arith } from '../lib/wire/memcache.ts';
import { Claims } from '../lib/count/claims.ts';
import { ingest } from '../lib/send/ingest.ts';
import { Ring } from '../lib/count/ring.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { Store } from '../lib/flush/store.ts';
import { encodeBatch, FN_BATCH } from '../lib/domain/contract.ts';
import { DEFAULT_MAX_JOBS_PER_FOLD, Worker } from '../lib/count/worker.ts';
import type { Runtime } from '../lib/runtime.ts';
import { gearmand, memcached, Proxy } from './daemons.ts';
import { drainQueues, Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
const local = (port: number): HostPort => ({ host: '127.0.0.1', port });
const runtimes: Runtime[] = [];
function fresh(overrides: Record<string, string> = {}): Runtime {
  const rt = testRuntime(overrides);
  runtimes.push(rt);
  return rt;
}
// A fault test swaps one part (a ring behind a proxy, a second store) and keeps the rest of its runtime's wiring.
const flushDeps = (rt: Runtime, ring = rt.ring, store = rt.store) => ({ ...rt.flushDeps, ring, store });
const worker = (rt: Runtime, servers: HostPort[], now?: () => number, ring = rt.ring) => rt.worker({}, { gearmanServers: servers, ring, ...(now ? { now } : {}) });

before(async () => {
  await drainQueues(fresh().config);
});
after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
});

test('worker SIGKILLed mid-stream and restarted: nothing lost, duplicates bounded by the jobs it held, and every slice with one reported maybe-duplicated', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  // A short lease: the restarted worker takes the dead one's claims over after 2 s, not 30.
  const env = { ...process.env, OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_TABLE_PREFIX: rt.config.tablePrefix, OFFLOG_LOG_LEVEL: 'error', OFFLOG_LEASE_SECONDS: '2' };
  // 500-event jobs: 400 of them, so the worker can be killed mid-stream, and the bound below is in jobs of 500.
  const client = new OffLogClient({ servers: rt.config.gearmanServers, batchSize: 500 });
  const expected = new Expected();
  const events = 200_000;
  for (let i = 0; i < events; i++) {
    const at = Date.now();
    client.log(i % 5000, 1 + (i % 4), { at, value: 1 });
    expected.add(sliceStartMs(sliceOf(at, SLICE), SLICE), i % 5000, 1 + (i % 4), 1);
  }
  assert.equal(await client.flush({ timeoutMs: 60_000 }), true);
  await client.close();

  const first = spawn('node', ['bin/offlog.js', 'worker'], { env, stdio: 'ignore' });
  // A worker left running by a failed run would take the next tests' jobs from the shared gearmand.
  t.after(() => void first.kill('SIGKILL'));
  // Run it in 2-ms steps, frozen (SIGSTOP) in between, until it is frozen holding jobs it has taken and not
  // acknowledged, which gearmand then hands out again: fast or slow, the kill lands inside a fold.
  let held = 0;
  for (const deadline = Date.now() + 60_000; held === 0 && Date.now() < deadline; ) {
    first.kill('SIGCONT');
    await sleep(2);
    first.kill('SIGSTOP');
    held = (await adminStatus(rt.config.gearmanServers[0]!, 15_000)).get(FN_BATCH)?.running ?? 0;
  }
  assert.ok(held > 0, 'the kill landed inside a fold: the worker held unacknowledged jobs');
  const queuedAtKill = (await adminStatus(rt.config.gearmanServers[0]!, 15_000)).get(FN_BATCH)?.queued ?? 0;
  first.kill('SIGKILL');
  await new Promise((r) => first.once('exit', r));
  // The held jobs went back to the queue (redelivered to the next worker), nothing else was acknowledged.
  let requeued = (await adminStatus(rt.config.gearmanServers[0]!, 15_000)).get(FN_BATCH)!;
  for (let i = 0; i < 100 && requeued.running > 0; i++) {
    await sleep(20);
    requeued = (await adminStatus(rt.config.gearmanServers[0]!, 15_000)).get(FN_BATCH)!;
  }
  assert.deepEqual([requeued.queued, requeued.running], [queuedAtKill, 0], `the ${held} held job(s) are queued again`);
  process.stdout.write(`# SIGKILL landed holding ${held} job(s), redelivered\n`);
  const second = spawn('node', ['bin/offlog.js', 'worker', '--until-idle'], { env, stdio: 'ignore' });
  t.after(() => void second.kill('SIGKILL'));
  assert.equal(await new Promise((r) => second.once('exit', r)), 0);

  const now = new Date(Date.now() + 3 * SLICE * 1000);
  const result = await flush(flushDeps(rt), now);
  const rows = await readCounts(rt);
  let total = 0n;
  let over = 0n;
  const overBySlice = new Map<number, bigint>();
  for (const [key, [count]] of expected.asStrings()) {
    const got = BigInt(rows.get(key)?.[0] ?? '0');
    assert.ok(got >= BigInt(count), `lost events for ${key}: ${got} < ${count}`);
    total += got;
    over += got - BigInt(count);
    const start = Number(key.split(':')[0]);
    overBySlice.set(start, (overBySlice.get(start) ?? 0n) + got - BigInt(count));
  }
  // Never silently flushed with extra counts: a slice with any is maybe-duplicated, within its bound.
  for (const s of result.slices) {
    const extra = overBySlice.get(startOf(s.slice, SLICE)) ?? 0n;
    if (extra > 0n) assert.equal(s.status, 'maybe-duplicated', `${extra} events counted twice in a slice reported ${s.status}: ${s.note}`);
    if (s.status === 'maybe-duplicated') assert.ok(extra <= BigInt(s.duplicateBound), `${extra} counted twice, bound ${s.duplicateBound}`);
    else assert.equal(s.status, 'flushed', s.note);
  }
  process.stdout.write(`# slices: ${result.slices.map((s) => `${s.status} (bound ${s.duplicateBound}, over ${overBySlice.get(startOf(s.slice, SLICE)) ?? 0n})`).join(', ')}\n`);
  // The bound: one fold in flight — at most DEFAULT_MAX_JOBS_PER_FOLD jobs × 500 events applied but not yet marked.
  const bound = BigInt(DEFAULT_MAX_JOBS_PER_FOLD) * 500n;
  process.stdout.write(`# events counted twice after SIGKILL: ${over} of ${events} (bound ${bound})\n`);
  assert.ok(over <= bound, `${over} duplicates`);
  assert.equal(total, BigInt(events) + over);
});

test('worker SIGKILLed after storing a fold, before its commit (over a slow memcached): counted twice, and the slice says so: maybe-duplicated within its bound, never flushed', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  // The first worker talks to memcached through a 60 ms proxy, so each store spans several hundred ms to catch it in.
  const slow = await Proxy.start(t, rt.config.memcachedServers[0]!.port, { latencyMs: 60 });
  const base = { ...process.env, OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_TABLE_PREFIX: rt.config.tablePrefix, OFFLOG_LOG_LEVEL: 'error', OFFLOG_LEASE_SECONDS: '2' };
  const client = new OffLogClient({ servers: rt.config.gearmanServers, batchSize: 500 });
  const expected = new Expected();
  const events = 40_000;
  for (let i = 0; i < events; i++) {
    const at = Date.now();
    client.log(i % 3000, 2, { at, value: 1 });
    expected.add(sliceStartMs(sliceOf(at, SLICE), SLICE), i % 3000, 2, 1);
  }
  assert.equal(await client.flush({ timeoutMs: 60_000 }), true);
  await client.close();

  const first = spawn('node', ['bin/offlog.js', 'worker'], { env: { ...base, OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${slow.port}` }, stdio: 'ignore' });
  t.after(() => void first.kill('SIGKILL'));
  // Watch the slices' fold lists: a fold listed with no decision yet is between its intent and its commit. Once the
  // slice's event total grows (written last, after every counter of the fold), the commit is one round trip away: kill.
  const claims = new Claims(rt.ring);
  const total = async (slice: SliceId): Promise<number> => Number((await rt.ring.connections[0]!.exec([{ kind: 'get', key: rt.ring.keys.sliceCounter(slice, 'n') }]))[0]?.toString().trim() ?? 0);
  const current = sliceOf(Date.now(), SLICE);
  let killed: string | null = null;
  for (let i = 0; i < 500 && killed === null; i++) {
    for (const slice of [current - 1, current, current + 1] as SliceId[]) {
      for (const { fold } of await claims.foldsOf(slice)) {
        if (killed !== null || (await claims.decision(fold)).state !== 'open') continue;
        const before = await total(slice);
        while ((await claims.decision(fold)).state === 'open') {
          if ((await total(slice)) > before) {
            first.kill('SIGKILL');
            killed = fold;
            break;
          }
        }
      }
    }
    if (killed === null) await sleep(5);
  }
  assert.ok(killed !== null, 'caught a fold with its counts written and its commit not');
  first.kill('SIGKILL');
  await new Promise((r) => first.once('exit', r));
  const second = spawn('node', ['bin/offlog.js', 'worker', '--until-idle'], { env: base, stdio: 'ignore' });
  t.after(() => void second.kill('SIGKILL'));
  assert.equal(await new Promise((r) => second.once('exit', r)), 0);

  const result = await flush(flushDeps(rt), new Date(Date.now() + 3 * SLICE * 1000));
  assert.deepEqual(await claims.decision(killed), { state: 'aborted' }, 'the killed fold can never commit');
  let over = 0n;
  const rows = await readCounts(rt);
  const overBySlice = new Map<number, bigint>();
  for (const [key, [count]] of expected.asStrings()) {
    const got = BigInt(rows.get(key)?.[0] ?? '0');
    assert.ok(got >= BigInt(count), `lost events for ${key}: ${got} < ${count}`);
    const start = Number(key.split(':')[0]);
    overBySlice.set(start, (overBySlice.get(start) ?? 0n) + got - BigInt(count));
    over += got - BigInt(count);
  }
  assert.ok(over > 0n, 'the killed fold was stored, then stored again by its successor');
  const reported = result.slices.filter((s) => s.status === 'maybe-duplicated');
  assert.ok(reported.length >= 1, `the killed fold's slice is reported: ${result.slices.map((s) => s.status).join(', ')}`);
  for (const s of result.slices) {
    const extra = overBySlice.get(startOf(s.slice, SLICE)) ?? 0n;
    if (s.status === 'maybe-duplicated') assert.ok(extra <= BigInt(s.duplicateBound), `${extra} counted twice, bound ${s.duplicateBound}`);
    else assert.equal(extra, 0n, `${extra} events counted twice in a slice reported ${s.status}`);
  }
  process.stdout.write(`# killed mid-store: ${result.slices.map((s) => `${s.status} (bound ${s.duplicateBound}, over ${overBySlice.get(startOf(s.slice, SLICE)) ?? 0n})`).join(', ')}\n`);
  await slow.cut();
});

test('a worker killed halfway through storing a fold: applied again, it is a bounded duplicate, and the slice is reported maybe-duplicated with the bound, not incomplete, never flushed', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const fold = (users: number[]): Deltas => {
    const d = new Deltas();
    for (const u of users) d.add({ userId: String(u), actionId: 1, value: 2, at }, base, SLICE);
    return d;
  };
  // The dying worker folded pairs 1 and 2 before (a committed fold), so it knows their counters exist (PairFlags) and
  // increments them; those increments land, and it dies before creating pair 3 (its upsert) and the slice totals.
  const dying = new Ring({ servers: rt.config.memcachedServers, keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6 });
  const dyingClaims = new Claims(dying, { leaseSeconds: 1 });
  const earlier = await dyingClaims.claimFold(['kill-0']);
  await dyingClaims.announce(earlier.fold, new Map([[base, 2]]));
  await dying.apply(fold([1, 2]));
  assert.equal(await dyingClaims.commit(earlier.fold, new Map([[base, 2]])), true);
  // The fold it dies in: claimed, announced (the intent), then cut short mid-store.
  const killed = await dyingClaims.claimFold(['kill-1']);
  await dyingClaims.announce(killed.fold, new Map([[base, 3]]));
  const conn = dying.connections[0]!;
  const real = conn.arithMany.bind(conn);
  conn.arithMany = async (keys, amounts, modes, ttl, options) => {
    const sent = Array.from({ length: keys.length }, (_, i) => i).filter((i) => modes[i] === Arith.INCR);
    await real({ length: sent.length, at: (j) => keys.at(sent[j]!) }, sent.map((i) => amounts[i]!), sent.map((i) => modes[i]!), ttl, options);
    throw new Error('SIGKILL');
  };
  await assert.rejects(dying.apply(fold([1, 2, 3])), /SIGKILL/);
  await dying.close();
  // Its job was never acknowledged: another worker, once the dead one's lease has run out, takes its claim over and folds it again.
  await sleep(2100);
  const next = new Claims(rt.ring);
  const again = await next.claimFold(['kill-1']);
  assert.deepEqual(again.duplicates, [], 'the dead fold is aborted and its claim taken over');
  assert.deepEqual(await next.decision(killed.fold), { state: 'aborted' });
  await next.announce(again.fold, new Map([[base, 3]]));
  await rt.ring.apply(fold([1, 2, 3]));
  assert.equal(await next.commit(again.fold, new Map([[base, 3]])), true);

  const result = await flush(flushDeps(rt), new Date(startOf((base + 2) as SliceId, SLICE)));
  const slice = result.slices.find((s) => s.slice === base)!;
  assert.equal(slice.status, 'maybe-duplicated', slice.note);
  assert.equal(slice.duplicateBound, '3', 'the bound: the aborted fold\'s events in the slice');
  assert.match(slice.note, /1 fold\(s\) may have written here without committing .*up to 3 event\(s\) may be counted twice/);
  const [row] = (await rt.store.pool.query<RowDataPacket[]>(`SELECT status, duplicate_bound FROM \`${rt.config.tablePrefix}slices\` WHERE slice_start = FROM_UNIXTIME(?)`, [startOf(base, SLICE) / 1000]))[0];
  assert.deepEqual([row!.status, String(row!.duplicate_bound)], ['maybe-duplicated', '3'], 'recorded for `offlog status`');
  const expected = new Expected();
  for (const u of [1, 1, 1, 2, 2, 2, 3]) expected.add(startOf(base, SLICE), u, 1, 2);
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'pairs 1 and 2 counted twice by the fold: the one-fold duplicate');
});

test('a fold list holding what OffLog never writes: the slice is reported corrupt, its rows written, and the flush goes on', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const expected = new Expected();
  for (const k of [0, 1]) {
    const d = new Deltas();
    d.add({ userId: '7', actionId: 2, value: 5, at: at + k * SLICE * 1000 }, (base + k) as SliceId, SLICE);
    await rt.ring.apply(d);
    expected.add(startOf((base + k) as SliceId, SLICE), 7, 2, 5);
  }
  await rt.ring.connections[0]!.exec([{ kind: 'set', key: rt.ring.keys.foldList(base), value: 'garbage! ', ttl: 600 }]);
  const result = await flush(flushDeps(rt), new Date(startOf((base + 3) as SliceId, SLICE)));
  const [bad, next] = [result.slices.find((s) => s.slice === base)!, result.slices.find((s) => s.slice === base + 1)!];
  assert.equal(bad.status, 'corrupt');
  assert.match(bad.note, /fold list is unreadable \(.*:folds holds "garbage!".*\): whether a fold was counted twice cannot be told/);
  assert.equal(next.status, 'flushed', next.note);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

test('gearmand restarted with jobs queued: the queue survives, the client and ingest reconnect', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const rt = fresh({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}` });
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const expected = new Expected();
  // 500-event jobs: the queue counts below are in jobs.
  const client = new OffLogClient({ servers: [local(g.port)], batchSize: 500 });
  for (let i = 0; i < 50_000; i++) {
    client.log(i % 1000, 2, { at, value: 3 });
    expected.add(startOf(base, SLICE), i % 1000, 2, 3);
  }
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  const post = (body: object) => ingest({ body: JSON.stringify(body), headers: {} }, { config: rt.config, client: rt.client, log: rt.log });
  assert.equal((await post({ userId: 1, actionId: 1, at })).statusCode, 202);
  expected.add(startOf(base, SLICE), 1, 1);

  await g.kill();
  assert.equal((await post({ userId: 1, actionId: 1, at })).statusCode, 503, 'down: 503, nothing kept');
  await g.start();
  assert.equal((await adminStatus(local(g.port))).get(FN_BATCH)?.queued, 101, 'the persistent queue kept every job');
  for (let i = 0; i < 10_000; i++) {
    client.log(i % 10, 3, { at });
    expected.add(startOf(base, SLICE), i % 10, 3);
  }
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  assert.equal((await post({ userId: 1, actionId: 1, at })).statusCode, 202, 'ingest reconnected');
  expected.add(startOf(base, SLICE), 1, 1);
  await client.close();

  await worker(rt, [local(g.port)], () => at).run({ idle: true });
  await flush(flushDeps(rt), new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings());
  await g.kill();
});

test('memcached unreachable: the worker holds its jobs, retries, and resumes; totals exact', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  const proxy = await Proxy.start(t, rt.config.memcachedServers[0]!.port);
  const ring = new Ring({ servers: [local(proxy.port)], keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6, opTimeoutMs: 500 });
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const expected = new Expected();
  // 500-event jobs: the queue count below is in jobs.
  const client = new OffLogClient({ servers: rt.config.gearmanServers, batchSize: 500 });
  for (let i = 0; i < 20_000; i++) {
    client.log(i % 100, 1, { at });
    expected.add(startOf(base, SLICE), i % 100, 1);
  }
  await client.flush();

  await proxy.cut();
  const w = worker(rt, rt.config.gearmanServers, () => at, ring);
  const running = w.run({ idle: true });
  await sleep(1500);
  assert.ok(w.stats.storeRetries > 0, 'it noticed and is retrying');
  assert.equal(w.stats.jobs, 0, 'nothing acknowledged while memcached is away');
  const gearman = (await adminStatus(rt.config.gearmanServers[0]!)).get(FN_BATCH)!;
  assert.equal(gearman.queued, 40, 'the jobs are still Gearman’s');

  await proxy.heal();
  for (let i = 0; i < 1000; i++) {
    client.log(5, 5, { at });
    expected.add(startOf(base, SLICE), 5, 5);
  }
  await client.close();
  await running;
  await worker(rt, rt.config.gearmanServers, () => at, ring).run({ idle: true });
  await flush(flushDeps(rt, ring), new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings());
  await ring.close();
  await proxy.cut();
});

/** A Ring of `rt`'s keys reaching memcached through a Proxy the test can cut (a short op timeout); closed after the test. */
async function ringBehindProxy(t: TestContext, rt: Runtime): Promise<{ proxy: Proxy; ring: Ring }> {
  const proxy = await Proxy.start(t, rt.config.memcachedServers[0]!.port);
  const ring = new Ring({ servers: [local(proxy.port)], keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6, opTimeoutMs: 500 });
  t.after(() => ring.close());
  return { proxy, ring };
}

test('memcached cut inside the store (after the fold was prepared): the jobs stay queued, none acknowledged, and the totals come out exact', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  const { proxy, ring } = await ringBehindProxy(t, rt);
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const expected = new Expected();
  // 500-event jobs: the queue count below is in jobs.
  const client = new OffLogClient({ servers: rt.config.gearmanServers, batchSize: 500 });
  for (let i = 0; i < 20_000; i++) {
    client.log(i % 100, 1, { at, value: 2 });
    expected.add(startOf(base, SLICE), i % 100, 1, 2);
  }
  await client.close();
  assert.equal((await adminStatus(rt.config.gearmanServers[0]!)).get(FN_BATCH)?.queued, 40);

  // memcached answers the worker's prepare() (its marks are read), and goes away as the store announces itself.
  const enter = ring.enter.bind(ring);
  let cutInStore = false;
  ring.enter = async (slices) => {
    if (!cutInStore) {
      cutInStore = true;
      await proxy.cut();
    }
    return enter(slices);
  };
  const w = worker(rt, rt.config.gearmanServers, () => at, ring);
  const running = w.run({ idle: true });
  const deadline = Date.now() + 20_000;
  while (w.stats.storeRetries < 2 && Date.now() < deadline) await sleep(50);
  assert.ok(cutInStore, 'the cut came inside store()');
  assert.ok(w.stats.storeRetries >= 2, 'the store is being retried');
  assert.equal(w.stats.folds, 0, 'no fold stored');
  const held = (await adminStatus(rt.config.gearmanServers[0]!)).get(FN_BATCH)!;
  assert.equal(held.queued, 40, 'every job is still Gearman’s: none was acknowledged before its counts were in');
  assert.ok(held.running > 0, 'the worker holds jobs');

  await proxy.heal();
  await running;
  assert.equal(w.stats.jobs, 40);
  assert.equal(w.stats.duplicatesSkipped, 0);
  await flush(flushDeps(rt, ring), new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

test('memcached cut after part of a fold\'s counters were written: the retry is a new fold, the broken one aborted, and the slice reported maybe-duplicated within its bound, nothing lost', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  const { proxy, ring } = await ringBehindProxy(t, rt);
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const expected = new Expected();
  const events = Array.from({ length: 300 }, (_, i) => ({ userId: String(1 + (i % 30)), actionId: 6, value: 2, at }));
  for (const e of events) expected.add(startOf(base, SLICE), e.userId, e.actionId, e.value);
  const conn = await GearmanConnection.connect(rt.config.gearmanServers[0]!);
  await conn.submitBackground(FN_BATCH, encodeBatch(events), `cut-mid-counters-${rt.config.keyPrefix}`);
  conn.close();

  // The first counter write reaches memcached for half its counters; then the connection is cut (a real
  // outage: the rest fails on the dead socket) and memcached comes back a moment later.
  const mc = ring.connections[0]!;
  const real = mc.arithMany.bind(mc);
  let cut = false;
  mc.arithMany = async (keys, amounts, modes, ttl, options) => {
    if (cut) return real(keys, amounts, modes, ttl, options);
    cut = true;
    const half = Math.floor(keys.length / 2);
    const part = (from: number, to: number) => ({ length: to - from, at: (j: number) => keys.at(from + j) });
    await real(part(0, half), amounts.slice(0, half), Array.from(modes).slice(0, half), ttl, options);
    await proxy.cut();
    setTimeout(() => void proxy.heal(), 300);
    return real(part(half, keys.length), amounts.slice(half), Array.from(modes).slice(half), ttl, options);
  };
  const w = worker(rt, rt.config.gearmanServers, () => at, ring);
  await w.run({ idle: true });
  assert.ok(cut, 'the cut came inside the counter writes');
  assert.ok(w.stats.storeRetries >= 1, 'the store was retried');
  assert.deepEqual([w.stats.jobs, w.stats.events, w.stats.foldsAborted], [1, 300, 1], 'stored once more under a new fold; the broken one aborted');

  const result = await flush(flushDeps(rt, ring), new Date(startOf((base + 2) as SliceId, SLICE)));
  const slice = result.slices.find((s) => s.slice === base)!;
  const counts = await readCounts(rt);
  let over = 0n;
  for (const [key, [count]] of expected.asStrings()) {
    const found = counts.get(key);
    assert.ok(found, `${key} lost`);
    assert.ok(BigInt(found[0]) >= BigInt(count), `${key}: ${found[0]} < ${count}: lost`);
    over += BigInt(found[0]) - BigInt(count);
  }
  assert.equal(counts.size, expected.rows.size, 'no pair made up');
  assert.ok(over > 0n, 'the half written before the cut is counted twice (the test cut where it meant to)');
  assert.equal(slice.status, 'maybe-duplicated', slice.note);
  assert.ok(BigInt(slice.duplicateBound) >= over, `bound ${slice.duplicateBound} covers the over-count ${over}`);
  assert.equal(slice.duplicateBound, '300', 'the bound: the broken fold\'s events');
});

test('the same job (same unique) sent again after it was counted: counted once, the copy skipped', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const events = Array.from({ length: 300 }, (_, i) => ({ userId: String(1 + (i % 30)), actionId: 4, value: 3, at }));
  const expected = new Expected();
  for (const e of events) expected.add(startOf(base, SLICE), e.userId, e.actionId, e.value);
  const unique = `resent-${rt.config.keyPrefix}`;
  const conn = await GearmanConnection.connect(rt.config.gearmanServers[0]!);
  try {
    // A client's re-send: the same job, the same unique, after a worker counted the first copy.
    await conn.submitBackground(FN_BATCH, encodeBatch(events), unique);
    const first = worker(rt, rt.config.gearmanServers, () => at);
    await first.run({ idle: true });
    assert.deepEqual([first.stats.jobs, first.stats.events, first.stats.duplicatesSkipped], [1, 300, 0]);
    // The acknowledgement is a one-way packet: until gearmand has it, a job with the same unique is
    // taken for the one still running and coalesced with it, not queued again.
    for (let i = 0; i < 100 && ((await adminStatus(rt.config.gearmanServers[0]!)).get(FN_BATCH)?.running ?? 0) > 0; i++) await sleep(20);
    await conn.submitBackground(FN_BATCH, encodeBatch(events), unique);
    const second = worker(rt, rt.config.gearmanServers, () => at);
    await second.run({ idle: true });
    assert.deepEqual([second.stats.jobs, second.stats.events, second.stats.duplicatesSkipped], [1, 0, 1], 'the copy was taken, and skipped');
  } finally {
    conn.close();
  }
  await flush(flushDeps(rt), new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'counted once');
});

test('memcached restarted: the flush reports the slice incomplete instead of writing it as whole', async (t) => {
  const m = await memcached(t);
  await m.start();
  const rt = fresh({ OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${m.port}` });
  await rt.store.migrate();
  const later = () => new Date(Date.now() + 3 * SLICE * 1000);
  await flush(flushDeps(rt), new Date()); // remembers which memcached it saw

  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  for (let i = 0; i < 5000; i++) client.log(i % 50, 1);
  await client.flush();
  await worker(rt, rt.config.gearmanServers).run({ idle: true });
  await m.restart();
  for (let i = 0; i < 10; i++) client.log(9, 9);
  await client.close();
  await worker(rt, rt.config.gearmanServers).run({ idle: true });

  const result = await flush(flushDeps(rt), later());
  const withData = result.slices.filter((s) => s.events !== null || s.note !== '');
  assert.ok(withData.length >= 1);
  for (const s of withData) {
    assert.equal(s.status, 'incomplete');
    assert.match(s.note, /memcached restarted at .*earlier counts are gone/);
  }
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n FROM \`${rt.config.tablePrefix}slices\` WHERE status = 'incomplete'`);
  assert.ok(Number(rows[0]!.n) >= 1, 'recorded for `offlog status`');
  await m.kill();
});

test('MySQL lost mid-flush: the watermark stays; the next flush catches up exactly once', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  const proxy = await Proxy.start(t, Number(new URL(rt.config.mysqlUrl).port));
  const store = new Store({ url: rt.config.mysqlUrl.replace(/:\d+\//, `:${proxy.port}/`), tablePrefix: rt.config.tablePrefix });
  const base = futureSlice(SLICE);
  const expected = new Expected();
  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  for (const k of [0, 1]) {
    for (let i = 0; i < 3000; i++) {
      client.log(i, 1 + k, { at: startOf((base + k) as SliceId, SLICE) });
      expected.add(startOf((base + k) as SliceId, SLICE), i, 1 + k);
    }
  }
  await client.close();
  await worker(rt, rt.config.gearmanServers, () => startOf((base + 1) as SliceId, SLICE)).run({ idle: true });
  await flush(flushDeps(rt), new Date(startOf((base - 1) as SliceId, SLICE))); // watermark just before base

  // Cut the connection right after the first slice commits.
  const write = store.writeSlice.bind(store);
  let writes = 0;
  store.writeSlice = async (...args) => {
    const record = await write(...args);
    if (++writes === 1) await proxy.cut();
    return record;
  };
  const now = new Date(startOf((base + 3) as SliceId, SLICE));
  await assert.rejects(flush(flushDeps(rt, rt.ring, store), now));
  assert.equal((await rt.store.watermark())?.getTime(), startOf((base - 2) as SliceId, SLICE), 'moved to the committed slice only');

  const result = await flush(flushDeps(rt), now);
  assert.deepEqual(result.slices.map((s) => [s.slice - base, s.rows]), [[-1, 0], [0, 3000], [1, 3000]]);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
  await store.close().catch(() => undefined);
});

test('two flushes at once: one writes, the other waits and finds nothing to do', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  const expected = new Expected();
  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  for (let i = 0; i < 20_000; i++) {
    client.log(i % 4000, 1, { at: startOf(base, SLICE), value: 2 });
    expected.add(startOf(base, SLICE), i % 4000, 1, 2);
  }
  await client.close();
  await worker(rt, rt.config.gearmanServers, () => startOf(base, SLICE)).run({ idle: true });
  const other = new Store({ url: rt.config.mysqlUrl, tablePrefix: rt.config.tablePrefix });
  const now = new Date(startOf((base + 2) as SliceId, SLICE));
  const [a, b] = await Promise.all([flush(flushDeps(rt), now), flush(flushDeps(rt, rt.ring, other), now)]);
  assert.deepEqual([a.ran, b.ran], [true, true]);
  const written = [a, b].map((r) => r.slices.filter((s) => s.rows > 0).length);
  assert.deepEqual(written.sort(), [0, 1], 'exactly one of them wrote the slice');
  assert.deepEqual(await readCounts(rt), expected.asStrings());
  await other.close();
});

test('missed flushes: slices still in the ring are caught up; those that left it are reported lost', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  await flush(flushDeps(rt), new Date(startOf(base, SLICE))); // watermark: base − 2
  const expected = new Expected();
  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  for (const k of [0, 1]) {
    for (let i = 0; i < 500; i++) {
      client.log(i, 1, { at: startOf((base + k) as SliceId, SLICE) });
      expected.add(startOf((base + k) as SliceId, SLICE), i, 1);
    }
  }
  await client.close();
  await worker(rt, rt.config.gearmanServers, () => startOf((base + 1) as SliceId, SLICE)).run({ idle: true });

  // Three flushes missed: the next one catches up base−1 … base+2.
  const caughtUp = await flush(flushDeps(rt), new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.deepEqual(caughtUp.slices.map((s) => s.slice - base), [-1, 0, 1, 2]);
  assert.equal(caughtUp.lostSlices, 0);
  assert.deepEqual(await readCounts(rt), expected.asStrings());

  // Then nothing for longer than the ring holds: reported, never skipped silently.
  const gap = await flush(flushDeps(rt), new Date(startOf((base + 20) as SliceId, SLICE)));
  assert.equal(gap.lostSlices, (base + 20 - 6 + 1) - (base + 3));
  assert.match(gap.slices[0]!.note, /left the ring before they were flushed/);
  assert.equal(gap.slices[0]!.status, 'lost');
});

test('late and future-dated events: counted into the current slice and reported as late', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE, 10);
  const at = (k: number) => startOf((base + k) as SliceId, SLICE) + 5;
  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  client.log(1, 1, { at: at(-2) }); // two behind the worker: late
  client.log(1, 1, { at: at(-5) }); // older still: late
  client.log(1, 1, { at: at(-1) }); // the previous slice: still its own
  client.log(1, 1, { at: at(0) });
  client.log(1, 1, { at: at(500) }); // far future: clamped
  await client.close();
  const w = worker(rt, rt.config.gearmanServers, () => at(0));
  await w.run({ idle: true });
  assert.equal(w.stats.late, 3);
  const result = await flush(flushDeps(rt), new Date(startOf((base + 2) as SliceId, SLICE)));
  const current = result.slices.find((s) => s.slice === base)!;
  assert.equal(current.late, '3');
  const expected = new Expected();
  expected.add(startOf((base - 1) as SliceId, SLICE), 1, 1);
  expected.add(startOf(base, SLICE), 1, 1, 0, 4);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});
