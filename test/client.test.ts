/**
 * OffLogClient on real gearmand: exact totals, servers down and back, two
 * servers with one killed, the memory bound, and high priority for errors.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { OffLogClient } from '../lib/client.ts';
import type { HostPort } from '../lib/config.ts';
import { decodeBatch } from '../lib/event.ts';
import { flush } from '../lib/flush.ts';
import { GearmanConnection } from '../lib/gearman.ts';
import type { SliceId } from '../lib/slice.ts';
import { FN_BATCH, Worker } from '../lib/worker.ts';
import { gearmand } from './daemons.ts';
import { drainQueues, Expected, futureSlice, prng, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
const rt = testRuntime();
const base = futureSlice(SLICE);
const at = startOf(base, SLICE) + 1000;
const flushNow = new Date(startOf((base + 2) as SliceId, SLICE));
const local = (port: number): HostPort => ({ host: '127.0.0.1', port });

before(async () => {
  await drainQueues(rt.config);
  await rt.store.migrate();
});
after(() => rt.close());

/** Each test uses fresh key and table prefixes, so its rows are only its own. */
function isolate() {
  return { rt: testRuntime() };
}

test('200,000 events through the client, the worker and the flush: exact totals', async () => {
  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  const expected = new Expected();
  const random = prng(7);
  for (let i = 0; i < 200_000; i++) {
    const user = Math.floor(random() * 2000);
    const action = 1 + Math.floor(random() * 8);
    const value = i % 3;
    client.log(user, action, { value, at });
    expected.add(startOf(base, SLICE), user, action, value);
  }
  const stats = await client.close({ timeoutMs: 60_000 });
  assert.deepEqual([stats.accepted, stats.acknowledged, stats.dropped, stats.buffered], [200_000, 200_000, 0, 0]);
  const worker = new Worker({ gearmanServers: rt.config.gearmanServers, sliceSeconds: SLICE, ring: rt.ring, log: rt.log, now: () => at });
  await worker.run({ idle: true });
  assert.equal(worker.stats.events, 200_000);
  assert.ok(worker.stats.jobs <= 200_000 / 500 + 5, `one job per batch, not per event (${worker.stats.jobs} jobs)`);
  await flush({ ring: rt.ring, store: rt.store, sliceSeconds: SLICE, ringSlices: rt.config.ringSlices, log: rt.log }, flushNow);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

test('gearmand down: log() keeps returning at once; once it is back every event arrives exactly once', async () => {
  const g = gearmand(4761);
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const client = new OffLogClient({ servers: [local(4761)] });
  const expected = new Expected();
  let slowest = 0n;
  for (let i = 0; i < 30_000; i++) {
    const t0 = process.hrtime.bigint();
    client.log(i % 300, 1 + (i % 4), { at, value: 1 });
    const dt = process.hrtime.bigint() - t0;
    if (dt > slowest) slowest = dt;
    expected.add(startOf(base, SLICE), i % 300, 1 + (i % 4), 1);
    if (i === 10_000) await new Promise((r) => setTimeout(r, 300)); // let it try, fail and back off
  }
  assert.ok(slowest < 50_000_000n, `slowest log() ${slowest} ns`);
  assert.equal(client.stats().acknowledged, 0);
  assert.equal(client.stats().buffered, 30_000);

  await g.start();
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  // Kill it with everything queued, log more while it is down, bring it back: the queue is on disk.
  await g.kill();
  for (let i = 0; i < 10_000; i++) {
    client.log(7, 9, { at });
    expected.add(startOf(base, SLICE), 7, 9);
  }
  await g.start();
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  const stats = await client.close();
  assert.equal(stats.acknowledged, 40_000);
  assert.equal(stats.dropped, 0);
  assert.ok(stats.reconnects >= 1, 'reconnected by itself');

  const worker = new Worker({ gearmanServers: [local(4761)], sliceSeconds: SLICE, ring: mine.ring, log: mine.log, now: () => at });
  await worker.run({ idle: true });
  await flush({ ring: mine.ring, store: mine.store, sliceSeconds: SLICE, ringSlices: 6, log: mine.log }, flushNow);
  assert.deepEqual(await readCounts(mine), expected.asStrings());
  await g.kill();
  await mine.close();
});

test('two gearmand servers, one killed mid-stream: every event counted exactly once', async () => {
  const g1 = gearmand(4762);
  const g2 = gearmand(4763);
  await Promise.all([g1.start(), g2.start()]);
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const client = new OffLogClient({ servers: [local(4762), local(4763)], batchSize: 200 });
  const expected = new Expected();
  for (let i = 0; i < 100_000; i++) {
    client.log(i % 997, 1 + (i % 3), { at, value: i % 5 });
    expected.add(startOf(base, SLICE), i % 997, 1 + (i % 3), i % 5);
    if (i === 40_000) {
      await new Promise((r) => setTimeout(r, 20));
      await g1.kill();
    }
    if (i % 5000 === 0) await new Promise((r) => setImmediate(r));
  }
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  const stats = await client.close();
  assert.equal(stats.acknowledged, 100_000);
  assert.ok(stats.servers['127.0.0.1:4763']!.acknowledgedJobs > 0);
  // What g1 acknowledged before it died is in its queue file: bring it back so the worker can take it.
  await g1.start();
  const worker = new Worker({ gearmanServers: [local(4762), local(4763)], sliceSeconds: SLICE, ring: mine.ring, log: mine.log, now: () => at });
  await worker.run({ idle: true });
  await flush({ ring: mine.ring, store: mine.store, sliceSeconds: SLICE, ringSlices: 6, log: mine.log }, flushNow);
  assert.deepEqual(await readCounts(mine), expected.asStrings());
  await Promise.all([g1.kill(), g2.kill()]);
  await mine.close();
});

test('memory bound with no server up: the oldest are dropped and counted, nothing else is lost', async () => {
  const g = gearmand(4764);
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const client = new OffLogClient({ servers: [local(4764)], batchSize: 500, maxBufferedEvents: 10_000 });
  const logged = 100_000;
  for (let i = 0; i < logged; i++) client.log(i, 1, { at });
  await new Promise((r) => setTimeout(r, 50));
  const s = client.stats();
  assert.ok(s.buffered <= 10_000 && s.buffered > 9_000, `buffered ${s.buffered}`);
  assert.equal(s.dropped, logged - s.buffered);
  assert.equal(s.droppedBecause.memory, s.dropped);

  await g.start();
  const kept = s.buffered;
  const stats = await client.close({ timeoutMs: 30_000 });
  assert.equal(stats.acknowledged, kept);
  const worker = new Worker({ gearmanServers: [local(4764)], sliceSeconds: SLICE, ring: mine.ring, log: mine.log, now: () => at });
  await worker.run({ idle: true });
  await flush({ ring: mine.ring, store: mine.store, sliceSeconds: SLICE, ringSlices: 6, log: mine.log }, flushNow);
  const expected = new Expected();
  for (let i = logged - kept; i < logged; i++) expected.add(startOf(base, SLICE), i, 1);
  assert.deepEqual(await readCounts(mine), expected.asStrings(), 'exactly the newest events survive');
  await g.kill();
  await mine.close();
});

test('logErrorReturn goes out at high priority, ahead of queued work', async () => {
  const g = gearmand(4765);
  await g.start();
  const client = new OffLogClient({ servers: [local(4765)], batchSize: 100 });
  for (let i = 0; i < 1000; i++) client.logSimpleAction(1, 1);
  await client.flush();
  client.logErrorReturn(666, 500, 'checkout failed');
  await client.close();
  const conn = await GearmanConnection.connect(local(4765));
  conn.canDo(FN_BATCH);
  const first = await conn.grab();
  assert.ok(first);
  assert.deepEqual(decodeBatch(first.data, 0).map((e) => [e.userId, e.actionId, e.payload]), [['666', 500, 'checkout failed']]);
  conn.close();
  await g.kill();
});

test('invalid arguments throw a TypeError naming the argument', () => {
  const client = new OffLogClient({ servers: [local(1)] });
  assert.throws(() => client.log(-1, 1), /^TypeError: userId: must be an unsigned 64-bit integer/);
  assert.throws(() => client.log('1 2', 1), /userId/);
  assert.throws(() => client.log(1, 0), /^TypeError: actionId: must be an integer from 1 to 65535, got 0/);
  assert.throws(() => client.log(1, 1, { value: 1.5 }), /^TypeError: value/);
  assert.throws(() => client.log(1, 1, { at: Number.NaN }), /^TypeError: at/);
  assert.throws(() => client.log(1, 1, { payload: 'x'.repeat(5000) }), /^TypeError: payload/);
  assert.equal(client.stats().accepted, 0);
  void client.close();
});
