/**
 * Ring mode `folds` on real daemons: a worker process SIGKILLed at each step
 * boundary of a fold (the OFFLOG_FAULT hook), the same jobs sent to two
 * gearmand servers, and a worker SIGSTOPped past its lease while a flush
 * runs. Every `ol_counts` row must be exact: zero events lost, zero counted twice.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { sleep } from '../lib/base/backoff.ts';
import type { HostPort } from '../lib/base/config.ts';
import { encodeBatch, FN_BATCH, type ActionId, type LogEvent, type UserId } from '../lib/domain/contract.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { FOLD_STEPS } from '../lib/count/fold-writer.ts';
import { flush } from '../lib/flush/flush.ts';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import type { Runtime } from '../lib/runtime.ts';
import { Claims } from '../lib/count/claims.ts';
import type { Worker, WorkerOptions } from '../lib/count/worker.ts';
import { gearmand, Proxy } from './daemons.ts';
import type { MemcacheOp } from '../lib/wire/memcache.ts';
import { drainQueues, Expected, readCounts, testRuntime } from './support.ts';

const SLICE = 600;
const runtimes: Runtime[] = [];
function fresh(overrides: Record<string, string> = {}): Runtime {
  const rt = testRuntime({ OFFLOG_RING_MODE: 'folds', OFFLOG_SLICE_SECONDS: String(SLICE), ...overrides });
  runtimes.push(rt);
  return rt;
}
/** The flush of `rt`, giving open folds `decideWaitMs` to commit. */
const flushDeps = (rt: Runtime, decideWaitMs = 500) => ({ ...rt.flushDeps, folds: { ...rt.flushDeps.folds!, decideWaitMs } });
/** An in-process worker of `rt` (1-s lease, as the spawned ones) that waits at most 200 ms for another worker's open fold before aborting it when it stores a fold again. */
function worker(rt: Runtime, servers: HostPort[] = rt.config.gearmanServers, options: WorkerOptions = {}): Worker {
  const claims = new Claims(rt.ring, { leaseSeconds: 1 });
  return rt.worker(options, { gearmanServers: servers, claims, folds: rt.foldWriter(rt.ring, Date.now, { claims, holderWaitMs: 200 }) });
}

before(async () => {
  await drainQueues(fresh().config);
});
after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
});

/** `jobs` batches of `events` events each, now, with uniques of the test's own; the expected rows. */
function makeJobs(rt: Runtime, jobs: number, events: number): { uniques: string[]; bodies: string[]; expected: Expected; slice: SliceId } {
  const expected = new Expected();
  const uniques: string[] = [];
  const bodies: string[] = [];
  const at = Date.now();
  for (let j = 0; j < jobs; j++) {
    const batch: LogEvent[] = [];
    for (let i = 0; i < events; i++) {
      const user = (j * 7 + i) % 50;
      const action = 1 + (i % 3);
      batch.push({ userId: String(user) as UserId, actionId: action as ActionId, value: i, at });
      expected.add(sliceStartMs(sliceOf(at, SLICE), SLICE), user, action, i);
    }
    uniques.push(`${rt.config.keyPrefix.replace(/:$/, '')}-job-${j}`);
    bodies.push(encodeBatch(batch));
  }
  return { uniques, bodies, expected, slice: sliceOf(at, SLICE) };
}

async function submit(servers: HostPort[], uniques: string[], bodies: string[]): Promise<void> {
  for (const server of servers) {
    const conn = await GearmanConnection.connect(server);
    try {
      for (let i = 0; i < uniques.length; i++) await conn.submitBackground(FN_BATCH, bodies[i]!, uniques[i]!);
    } finally {
      conn.close();
    }
  }
}

/** Every expected row, summed over slices per user:action, equals the table's (so events moved to a later slice still count once). */
async function assertExact(rt: Runtime, expected: Expected): Promise<void> {
  const byPair = (rows: Iterable<[string, [string, string]]>): Map<string, [bigint, bigint]> => {
    const out = new Map<string, [bigint, bigint]>();
    for (const [key, [c, v]] of rows) {
      const pair = key.split(':').slice(1).join(':');
      const [c0, v0] = out.get(pair) ?? [0n, 0n];
      out.set(pair, [c0 + BigInt(c), v0 + BigInt(v)]);
    }
    return out;
  };
  const got = byPair(await readCounts(rt));
  const want = byPair(expected.asStrings());
  let over = 0n;
  let under = 0n;
  for (const [pair, [c]] of want) {
    const g = got.get(pair)?.[0] ?? 0n;
    if (g > c) over += g - c;
    else under += c - g;
  }
  assert.equal(over, 0n, `${over} event(s) counted twice`);
  assert.equal(under, 0n, `${under} event(s) lost`);
  assert.deepEqual(got, want);
}

function spawnWorker(rt: Runtime, env: Record<string, string>, args: string[] = []): ChildProcess {
  return spawn('node', ['bin/offlog.js', 'worker', ...args], {
    env: { ...process.env, OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_TABLE_PREFIX: rt.config.tablePrefix, OFFLOG_RING_MODE: 'folds', OFFLOG_SLICE_SECONDS: String(SLICE), OFFLOG_LEASE_SECONDS: '1', OFFLOG_LOG_LEVEL: 'error', ...env },
    stdio: 'ignore',
  });
}

const exited = (c: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null }> =>
  c.exitCode !== null || c.signalCode !== null ? Promise.resolve({ code: c.exitCode, signal: c.signalCode }) : new Promise((r) => c.once('exit', (code, signal) => r({ code, signal })));

for (const step of FOLD_STEPS) {
  test(`folds: a worker SIGKILLed at step "${step}" of its second fold: another worker finishes, every row exact`, async (t) => {
    const rt = fresh();
    await rt.store.migrate();
    const { uniques, bodies, expected } = makeJobs(rt, 12, 40);
    await submit(rt.config.gearmanServers, uniques, bodies);
    // 4 jobs per fold: the second fold is mid-stream.
    const dying = spawnWorker(rt, { OFFLOG_FAULT: `${step}:2`, OFFLOG_JOBS_PER_FOLD: '4' }, ['--until-idle']);
    t.after(() => void dying.kill('SIGKILL'));
    const end = await exited(dying);
    assert.equal(end.signal, 'SIGKILL', `the worker was to be killed at ${step}:2, it ended with ${JSON.stringify(end)}`);
    const stats = await worker(rt).run({ idle: true });
    await flush(flushDeps(rt), new Date(Date.now() + 3 * SLICE * 1000));
    await assertExact(rt, expected);
    // What the second worker found already committed, it skipped: never counted twice.
    assert.ok(stats.jobs > 0, 'the second worker took the killed worker\'s jobs');
  });
}

test('folds: the same jobs sent to two gearmand servers are counted once', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  const servers = await Promise.all([gearmand(t), gearmand(t)]);
  await Promise.all(servers.map((d) => d.start()));
  const hosts = servers.map((d): HostPort => ({ host: '127.0.0.1', port: d.port }));
  const { uniques, bodies, expected } = makeJobs(rt, 20, 30);
  // The second server gets them in reverse order, and a fold takes one job from each: the copies land in different folds.
  await submit([hosts[0]!], uniques, bodies);
  await submit([hosts[1]!], [...uniques].reverse(), [...bodies].reverse());
  const stats = await worker(rt, hosts, { maxJobsPerFold: 2 }).run({ idle: true });
  assert.equal(stats.jobs, 40, 'both copies of every job were taken');
  assert.equal(stats.duplicatesSkipped, 20, 'one copy of each job was skipped');
  await flush(flushDeps(rt), new Date(Date.now() + 3 * SLICE * 1000));
  await assertExact(rt, expected);
});

/** Whether process `pid` is stopped (state T in /proc). */
const stopped = (pid: number): boolean => / T /.test(readFileSync(`/proc/${pid}/stat`, 'latin1').replace(/^\d+ \(.*\) /, ' ').slice(0, 3));

test('folds: a worker SIGSTOPped past its lease after writing its blobs: the flush aborts its fold, it wakes and stores it again in a later slice', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  const { uniques, bodies, expected } = makeJobs(rt, 6, 40);
  await submit(rt.config.gearmanServers, uniques, bodies);
  const current = sliceOf(Date.now(), SLICE);
  const paused = spawnWorker(rt, { OFFLOG_FAULT: 'blobs:1:SIGSTOP' }, ['--until-idle']);
  t.after(() => void (paused.kill('SIGCONT'), paused.kill('SIGKILL')));
  for (let i = 0; i < 600 && !stopped(paused.pid!); i++) await sleep(50);
  assert.ok(stopped(paused.pid!), 'the worker stopped itself after its first fold\'s blobs');
  // The flush takes the worker's slice while it is stopped: its fold is open, so it is aborted.
  const first = await flush(flushDeps(rt), new Date(sliceStartMs((current + 3) as SliceId, SLICE)));
  assert.equal(first.rows, 0, 'nothing committed in the slice yet');
  paused.kill('SIGCONT');
  assert.deepEqual(await exited(paused), { code: 0, signal: null });
  // Its commit failed; it stored the fold again as a new one, above the flushed slice, counted late.
  await flush(flushDeps(rt), new Date(sliceStartMs((current + 5) as SliceId, SLICE)));
  const rows = await readCounts(rt);
  assert.ok([...rows.keys()].every((k) => Number(k.split(':')[0]) > sliceStartMs((current + 1) as SliceId, SLICE)), 'every event went above the flushed slices');
  await assertExact(rt, expected);
});

for (const [what, cutAfter] of [
  ['the first blob', (op: MemcacheOp) => op.kind === 'set' && op.key.includes(':b:')],
  ['the commit record', (op: MemcacheOp) => op.kind === 'add' && op.key.includes(':f:') && String(op.value).startsWith('c ')],
] as const) {
  test(`folds: memcached's connection cut just after ${what} was sent (its reply lost): the worker retries, every row exact`, async (t) => {
    const plain = fresh();
    const proxy = await Proxy.start(t, plain.config.memcachedServers[0]!.port);
    const rt = fresh({ OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${proxy.port}`, OFFLOG_KEY_PREFIX: plain.config.keyPrefix, OFFLOG_TABLE_PREFIX: plain.config.tablePrefix });
    await rt.store.migrate();
    const { uniques, bodies, expected } = makeJobs(rt, 8, 40);
    await submit(rt.config.gearmanServers, uniques, bodies);
    // The op goes out; once memcached has had it, every connection through the proxy is dropped (the reply with it), for 300 ms.
    const conn = rt.ring.connections[0]!;
    const exec = conn.exec.bind(conn);
    let cuts = 0;
    conn.exec = async (ops) => {
      if (cuts > 0 || !ops.some(cutAfter)) return exec(ops);
      cuts++;
      const sent = exec(ops);
      sent.catch(() => undefined);
      await sleep(30);
      await proxy.cut();
      setTimeout(() => void proxy.heal(), 300);
      return sent;
    };
    const stats = await worker(rt, rt.config.gearmanServers, { maxJobsPerFold: 4 }).run({ idle: true });
    assert.equal(cuts, 1);
    assert.ok(stats.storeRetries >= 1, 'the worker retried through the cut');
    await flush(flushDeps(plain), new Date(Date.now() + 3 * SLICE * 1000));
    await assertExact(plain, expected);
  });
}

test('folds: a committed fold\'s blob chunk gone from memcached: the slice is incomplete, the chunk counted missing, the rest written', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const { uniques, bodies, slice } = makeJobs(rt, 8, 40);
  await submit(rt.config.gearmanServers, uniques, bodies);
  await worker(rt, rt.config.gearmanServers, { maxJobsPerFold: 4 }).run({ idle: true });
  const folds = await new Claims(rt.ring).foldsOf(slice);
  assert.equal(folds.length, 2, 'two folds of 4 jobs');
  const gone = folds[0]!;
  assert.deepEqual(await rt.ring.connections[0]!.exec([{ kind: 'delete', key: rt.ring.keys.foldChunk(slice, gone.fold, 0) }]), [true]);
  const result = await flush(flushDeps(rt), new Date(Date.now() + 3 * SLICE * 1000));
  const r = result.slices.find((x) => x.slice === slice)!;
  assert.equal(r.status, 'incomplete');
  assert.equal(r.chunksMissing, 1);
  assert.match(r.note, new RegExp(`rows hold ${320 - gone.events} events but workers counted 320`));
  let counted = 0n;
  for (const [, [c]] of await readCounts(rt)) counted += BigInt(c);
  assert.equal(counted, BigInt(320 - gone.events), 'the other fold\'s events were written');
});

test('folds: a slice\'s fold list holding what OffLog never writes: that slice is corrupt, the next one is flushed', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const { uniques, bodies, expected, slice } = makeJobs(rt, 4, 40);
  await submit(rt.config.gearmanServers, uniques, bodies);
  await worker(rt).run({ idle: true });
  const bad = (slice - 1) as SliceId;
  await rt.ring.connections[0]!.exec([{ kind: 'set', key: rt.ring.keys.foldList(bad), value: 'not a fold list', ttl: 600 }]);
  const result = await flush(flushDeps(rt), new Date(Date.now() + 3 * SLICE * 1000));
  const broken = result.slices.find((x) => x.slice === bad)!;
  assert.equal(broken.status, 'corrupt');
  assert.match(broken.note, /fold list is unreadable/);
  assert.equal(result.slices.find((x) => x.slice === slice)!.status, 'flushed');
  await assertExact(rt, expected);
});
