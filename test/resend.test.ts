/**
 * Issue 18, item 3: a client's re-send must never be counted twice. A batch
 * whose JOB_CREATED was lost on one gearmand is sent again to another, so
 * the same unique sits on two servers; two workers, one on each, take the
 * copies at once, over a slow memcached (a latency proxy widens the window
 * between reading and writing a job's state). Every event is counted once.
 */
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { randomBytes } from 'node:crypto';
import type { HostPort } from '../lib/base/config.ts';
import { encodeBatch, FN_BATCH, type LogEvent } from '../lib/domain/contract.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { flush } from '../lib/flush/flush.ts';
import { Ring } from '../lib/count/ring.ts';
import type { Runtime } from '../lib/runtime.ts';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import { gearmand, Proxy } from './daemons.ts';
import { Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
const local = (port: number): HostPort => ({ host: '127.0.0.1', port });
const runtimes: Runtime[] = [];
after(() => Promise.all(runtimes.map((rt) => rt.close())));

test('the same unique on two gearmands, two workers, a slow memcached: counted exactly once', async (t) => {
  const [g1, g2] = [await gearmand(t), await gearmand(t)];
  await Promise.all([g1.start(), g2.start()]);
  const rt = testRuntime({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g1.port},127.0.0.1:${g2.port}` });
  runtimes.push(rt);
  await rt.store.migrate();
  const slow = await Proxy.start(t, rt.config.memcachedServers[0]!.port, { latencyMs: 40 });
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const expected = new Expected();
  const jobs = 24;
  const run = randomBytes(4).toString('hex');
  const conns = await Promise.all([g1, g2].map((g) => GearmanConnection.connect(local(g.port))));
  for (let j = 0; j < jobs; j++) {
    const events: LogEvent[] = Array.from({ length: 50 }, (_, i) => ({ userId: String(j * 50 + i), actionId: 1, value: 3, at }));
    for (const e of events) expected.add(startOf(base, SLICE), e.userId, 1, 3);
    // The re-send: the same batch under the same unique on the other server.
    for (const c of conns) await c.submitBackground(FN_BATCH, encodeBatch(events), `resend-${run}-${j}`);
  }
  for (const c of conns) c.close();

  // Two worker processes' worth: each its own ring (connections) to the slow memcached, each on one gearmand.
  const ring = () => {
    const r = new Ring({ servers: [local(slow.port)], keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6 });
    t.after(() => r.close());
    return r;
  };
  const workers = [g1, g2].map((g) => rt.worker({}, { gearmanServers: [local(g.port)], ring: ring(), now: () => at }));
  const stats = await Promise.all(workers.map((w) => w.run({ idle: true })));

  const result = await flush({ ...rt.flushDeps }, new Date(startOf((base + 2) as SliceId, SLICE)));
  const slice = result.slices.find((s) => s.slice === base)!;
  assert.equal(slice.status, 'flushed', slice.note);
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'each event counted once');
  assert.equal(stats[0]!.jobs + stats[1]!.jobs, 2 * jobs, 'every copy taken and acknowledged');
  assert.equal(stats[0]!.duplicatesSkipped + stats[1]!.duplicatesSkipped, jobs, 'one copy of each job skipped as a duplicate');
});

test('memcached operations outside the counters: one per job (its claim), eight per fold on one slice', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const rt = testRuntime({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}` });
  runtimes.push(rt);
  const base = futureSlice(SLICE);
  const at = startOf(base, SLICE) + 10;
  const perRun: number[] = [];
  for (const jobs of [16, 4]) {
    const conn = await GearmanConnection.connect(local(g.port));
    for (let j = 0; j < jobs; j++) {
      await conn.submitBackground(FN_BATCH, encodeBatch(Array.from({ length: 100 }, (_, i) => ({ userId: String(i), actionId: 1 + j, value: 0, at }))), `ops-${randomBytes(4).toString('hex')}`);
    }
    conn.close();
    const ring = new Ring({ servers: rt.config.memcachedServers, keyPrefix: rt.config.keyPrefix, sliceSeconds: SLICE, ringSlices: 6 });
    t.after(() => ring.close());
    // The counters' own operations (Ring.apply) are set apart: what is left is the fold protocol's and the slice guard's.
    let applyOps = 0;
    const apply = ring.apply.bind(ring);
    ring.apply = async (d) => {
      const before = ring.ops;
      try {
        return await apply(d);
      } finally {
        applyOps += ring.ops - before;
      }
    };
    const stats = await rt.worker({}, { gearmanServers: [local(g.port)], ring, now: () => at }).run({ idle: true });
    assert.deepEqual([stats.jobs, stats.folds], [jobs, 1], 'one fold of all the jobs');
    perRun.push(ring.ops - applyOps);
  }
  const [sixteen, four] = perRun as [number, number];
  const perJob = (sixteen - four) / 12;
  const perFold = sixteen - 16 * perJob;
  process.stdout.write(`# memcached ops outside the counters: ${perJob} per job, ${perFold} per fold (one slice)\n`);
  // The claim's add per job; per fold: enter (add, incr, get of the watermark), leave (decr), the lease, the intent (add, append), the commit.
  assert.deepEqual([perJob, perFold], [1, 8]);
});
