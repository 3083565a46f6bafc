/**
 * OffLogClient on real gearmand: exact totals, servers down and back, two
 * servers with one killed, the memory bound, and high priority for errors.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { pino } from 'pino';
import { OffLogClient, type ClientStats } from '../lib/send/client.ts';
import type { HostPort } from '../lib/base/config.ts';
import { decodeBatch } from '../lib/domain/contract.ts';
import { InputError } from '../lib/base/errors.ts';
import { flush } from '../lib/flush/flush.ts';
import { adminCommand, GearmanConnection } from '../lib/wire/gearman.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { FN_BATCH } from '../lib/domain/contract.ts';
import { Worker } from '../lib/count/worker.ts';
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
  const worker = rt.worker({}, { now: () => at });
  await worker.run({ idle: true });
  assert.equal(worker.stats.events, 200_000);
  assert.ok(worker.stats.jobs <= 200_000 / 500 + 5, `one job per batch, not per event (${worker.stats.jobs} jobs)`);
  await rt.flush(flushNow);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});

test('gearmand down: log() keeps returning at once; once it is back every event arrives exactly once; each outage is one warning', async (t) => {
  const g = await gearmand(t);
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const lines: { level: number; msg: string }[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as { level: number; msg: string }) });
  const client = new OffLogClient({ servers: [local(g.port)], logger });
  // Pass or fail: a client left open keeps retrying, and the file would hang until its timeout.
  t.after(async () => {
    await client.close({ timeoutMs: 0 }).catch(() => undefined);
    await mine.close();
  });
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
  // Two outages: each one warning and one "back", however many attempts failed in between (at debug).
  const said = (level: number, msg: string) => lines.filter((l) => l.level === level && l.msg === msg).length;
  assert.equal(said(40, 'Gearman server down; resting it'), 2);
  assert.equal(said(30, 'Gearman server back'), 2);
  assert.ok(said(20, 'Gearman server down; resting it') >= 1, 'the attempts during the first outage are logged at debug');

  const worker = mine.worker({}, { gearmanServers: [local(g.port)], now: () => at });
  await worker.run({ idle: true });
  await mine.flush(flushNow);
  assert.deepEqual(await readCounts(mine), expected.asStrings());
});

test('two gearmand servers, one killed mid-stream: every event counted exactly once', async (t) => {
  const g1 = await gearmand(t);
  const g2 = await gearmand(t);
  await Promise.all([g1.start(), g2.start()]);
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const client = new OffLogClient({ servers: [local(g1.port), local(g2.port)], batchSize: 200 });
  t.after(async () => {
    await client.close({ timeoutMs: 0 }).catch(() => undefined);
    await mine.close();
  });
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
  assert.ok(stats.servers[`127.0.0.1:${g2.port}`]!.acknowledgedJobs > 0);
  // What g1 acknowledged before it died is in its queue file: bring it back so the worker can take it.
  await g1.start();
  const worker = mine.worker({}, { gearmanServers: [local(g1.port), local(g2.port)], now: () => at });
  await worker.run({ idle: true });
  await mine.flush(flushNow);
  assert.deepEqual(await readCounts(mine), expected.asStrings());
});

test('memory bound with no server up: the oldest are dropped and counted, nothing else is lost', async (t) => {
  const g = await gearmand(t);
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const client = new OffLogClient({ servers: [local(g.port)], batchSize: 500, maxBufferedEvents: 10_000 });
  // Pass or fail: a client left open keeps retrying, and the file would hang until its timeout.
  t.after(async () => {
    await client.close({ timeoutMs: 0 }).catch(() => undefined);
    await mine.close();
  });
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
  const worker = mine.worker({}, { gearmanServers: [local(g.port)], now: () => at });
  await worker.run({ idle: true });
  await mine.flush(flushNow);
  const expected = new Expected();
  for (let i = logged - kept; i < logged; i++) expected.add(startOf(base, SLICE), i, 1);
  assert.deepEqual(await readCounts(mine), expected.asStrings(), 'exactly the newest events survive');
});

/** The books a client must keep at every moment: each accepted event is in exactly one place. */
function assertBalanced(s: ClientStats, when: string): void {
  assert.equal(
    s.acknowledged + s.dropped + s.buffered + s.inFlight, s.accepted,
    `${when}: accepted ${s.accepted} != acknowledged ${s.acknowledged} + dropped ${s.dropped} + buffered ${s.buffered} + in flight ${s.inFlight}`,
  );
}

test('stats() always balance: gearmand killed mid-stream, then hung while close() times out; acknowledged is what the worker counts', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const { rt: mine } = isolate();
  await mine.store.migrate();
  const client = new OffLogClient({ servers: [local(g.port)], batchSize: 100, window: 8 });
  // Pass or fail, nothing of this test may keep the process alive (a hung gearmand holds the client's socket open).
  t.after(async () => {
    await client.close({ timeoutMs: 0 });
    await mine.close();
  });
  let samples = 0;
  const sample = (when: string): ClientStats => {
    const s = client.stats();
    assertBalanced(s, when);
    samples++;
    return s;
  };
  for (let i = 0; i < 40_000; i++) {
    client.log(i % 100, 1, { at });
    if (i % 500 === 0) {
      sample(`event ${i}`);
      await new Promise((r) => setImmediate(r));
    }
    if (i === 15_000) await g.kill();
    if (i === 25_000) await g.start();
  }
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  assert.deepEqual(sample('after the restart'), { ...client.stats(), acknowledged: 40_000, inFlight: 0, buffered: 0, dropped: 0 });

  // A hung gearmand (SIGSTOP) takes the bytes but never answers: batches stay in flight past close()'s deadline.
  g.pause();
  for (let i = 0; i < 5_000; i++) client.log(i % 100, 1, { at });
  await new Promise((r) => setTimeout(r, 100));
  assert.ok(sample('gearmand hung').inFlight > 0, 'batches are in flight');
  const closed = await client.close({ timeoutMs: 300 });
  assertBalanced(closed, 'close() timed out');
  assert.equal(closed.inFlight + closed.buffered, 0);
  assert.equal(closed.droppedBecause.closeTimeout, 5_000, 'every unacknowledged event is counted as dropped');
  await new Promise((r) => setTimeout(r, 50)); // the closed connections' rejections arrive: counted once, not again
  assert.deepEqual(sample('after close'), closed);
  assert.ok(samples > 80);

  // What gearmand acknowledged is all queued; of what was dropped at the deadline some may have reached it.
  g.resume();
  const worker = mine.worker({}, { gearmanServers: [local(g.port)], now: () => at });
  await worker.run({ idle: true });
  await mine.flush(flushNow);
  let counted = 0;
  for (const [c] of (await readCounts(mine)).values()) counted += Number(c);
  assert.ok(counted >= closed.acknowledged && counted <= closed.acknowledged + closed.droppedBecause.closeTimeout, `counted ${counted}`);
});

test('concurrent send() calls share one connection attempt: one connection, no reconnect, none closed by another', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const client = new OffLogClient({ servers: [local(g.port)] });
  t.after(() => client.close({ timeoutMs: 0 }));
  // gearmand's own list of its connections, less the admin connection asking.
  const connections = async () => (await adminCommand(local(g.port), 'workers')).length - 1;
  const sendMany = (n: number, from: number) =>
    Promise.all(Array.from({ length: n }, (_, i) => client.send([{ userId: String(from + i), actionId: 1, value: 0, at }])));

  await sendMany(10, 0);
  assert.equal(await connections(), 1);
  await sendMany(10, 10);
  assert.equal(await connections(), 1);
  let s = client.stats();
  assert.deepEqual([s.acknowledged, s.reconnects, s.servers[`127.0.0.1:${g.port}`]!.errors], [20, 0, 0]);

  // gearmand restarted: the old connection is gone, and the callers share the one new connection.
  await g.restart();
  await sendMany(10, 20);
  assert.equal(await connections(), 1);
  s = client.stats();
  assert.deepEqual([s.acknowledged, s.reconnects], [30, 1], 'one reconnection, not one per caller');
  const jobs = (await adminCommand(local(g.port), 'status')).find((l) => l.startsWith(`${FN_BATCH}\t`));
  assert.equal(Number(jobs?.split('\t')[1]), s.acknowledged, 'gearmand holds exactly the jobs acknowledged');
});

test('logErrorReturn goes out at high priority, ahead of queued work', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const client = new OffLogClient({ servers: [local(g.port)], batchSize: 100 });
  for (let i = 0; i < 1000; i++) client.logSimpleAction(1, 1);
  await client.flush();
  client.logErrorReturn(666, 500, 'checkout failed');
  await client.close();
  const conn = await GearmanConnection.connect(local(g.port));
  conn.canDo(FN_BATCH);
  const first = await conn.grab();
  assert.ok(first);
  assert.deepEqual(decodeBatch(first.data, 0).map((e) => [e.userId, e.actionId, e.payload]), [['666', 500, 'checkout failed']]);
  conn.close();
  await g.kill();
});

test('invalid arguments throw a TypeError naming the argument', () => {
  const client = new OffLogClient({ servers: [local(1)] });
  const refuses = (f: () => void, field: RegExp) =>
    assert.throws(f, (err: unknown) => err instanceof TypeError && err instanceof InputError && field.test(`${err.field}: ${err.rule}`));
  refuses(() => client.log(-1, 1), /^userId: must be an unsigned 64-bit integer/);
  refuses(() => client.log('1 2', 1), /^userId/);
  refuses(() => client.log(1, 0), /^actionId: must be an integer from 1 to 65535, got 0/);
  refuses(() => client.log(1, 1, { value: 1.5 }), /^value/);
  refuses(() => client.log(1, 1, { at: Number.NaN }), /^at/);
  refuses(() => client.log(1, 1, { payload: 'x'.repeat(5000) }), /^payload/);
  assert.equal(client.stats().accepted, 0);
  void client.close();
});

test('the client refuses exactly what the worker would: one contract for both', () => {
  const client = new OffLogClient({ servers: [local(1)] });
  const year3000 = Date.UTC(3000, 0, 1);
  // Once this passed the client and poisoned a whole batch of 5,000 good events at the worker.
  assert.throws(() => client.log(1, 1, { at: year3000 }), /^InputError: at:/);
  assert.throws(() => client.log(1, 1, { at: new Date(year3000) }), /^InputError: at:/);
  const cases: [unknown, unknown, unknown, unknown][] = [
    [1, 1, 0, 0], [0, 65535, Number.MAX_SAFE_INTEGER, year3000 - 1], ['18446744073709551615', 1, 0, 5], ['18446744073709551616', 1, 0, 5],
    [1, 1, 0, year3000], [1, 1, 0, -1], [1, 1, 0, 1.5], [1, 1, -1, 0], [1, 1, 2 ** 53, 0], [1, 0, 0, 0], [1, 65536, 0, 0], [-1, 1, 0, 0], [2 ** 53, 1, 0, 0],
  ];
  for (const [u, a, v, at] of cases) {
    let clientOk = true;
    try {
      client.log(u as number, a as number, { value: v as number, at: at as number });
    } catch {
      clientOk = false;
    }
    let workerOk = true;
    try {
      decodeBatch(Buffer.from(JSON.stringify({ v: 1, e: [[u, a, v, at]] })), 0);
    } catch {
      workerOk = false;
    }
    assert.equal(clientOk, workerOk, `client ${clientOk ? 'accepts' : 'refuses'} but worker ${workerOk ? 'accepts' : 'refuses'} [${u}, ${a}, ${v}, ${at}]`);
  }
  void client.close();
});
