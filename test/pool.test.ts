/**
 * Changing the memcached pool while events flow (README, "Changing the
 * memcached pool"), on real daemons of the tests' own: writers write to the
 * current pool only, readers also read where the previous pool put a key, so
 * no count is split or lost. The grow and shrink tests also read the slice
 * the way a reader that forgot the other pool would, and check that it comes
 * up short: the design is what makes the totals exact, not luck. The last
 * test checks that restart detection covers a server new to the pool.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, test } from 'node:test';
import { sleep } from '../lib/base/backoff.ts';
import { label } from '../lib/base/config.ts';
import { FN_BATCH } from '../lib/domain/contract.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { OffLogClient } from '../lib/send/client.ts';
import { judge } from '../lib/flush/flush.ts';
import { Claims } from '../lib/count/claims.ts';
import { shardOfSlice } from '../lib/count/keys.ts';
import { Placement } from '../lib/count/placement.ts';
import type { SliceTotals } from '../lib/count/slice-reader.ts';
import { DEFAULT_MAX_JOBS_PER_FOLD, type WorkerStats } from '../lib/count/worker.ts';
import type { Runtime } from '../lib/runtime.ts';
import { adminStatus } from '../lib/wire/gearman.ts';
import { gearmand, memcached, type Daemon } from './daemons.ts';
import { Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
/** Events per job: small, so that a stream of a few seconds is hundreds of jobs and the duplicate bound is tight. */
const BATCH = 500;
const runtimes: Runtime[] = [];
function fresh(overrides: Record<string, string> = {}): Runtime {
  const rt = testRuntime(overrides);
  runtimes.push(rt);
  return rt;
}
after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
});

const list = (...ds: Daemon[]): string => ds.map((d) => `127.0.0.1:${d.port}`).join(',');

/** Worker processes not yet gone: killed when this process exits, however the test ended. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** A worker process (test/fixtures/pool-worker.ts) with its own pool settings. */
class WorkerProcess {
  private readonly child: ChildProcess;
  private readonly exited: Promise<void>;
  /** Resolves once the worker handles SIGTERM (a SIGTERM before that would just end it). */
  readonly ready: Promise<void>;
  private out = '';
  private err = '';

  constructor(readonly name: string, env: Record<string, string>) {
    this.child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/pool-worker.ts'], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout!.on('data', (b: Buffer) => (this.out += b.toString()));
    this.child.stderr!.on('data', (b: Buffer) => (this.err += b.toString()));
    live.add(this.child);
    this.exited = new Promise((r) => this.child.once('exit', () => r(void live.delete(this.child))));
    this.ready = this.stalled(1, 'ready');
    this.ready.catch(() => undefined);
  }

  /** Resolves at the nth `word` (default "stall") the fixture prints from now: "stall" means it is in the middle of storing a fold. */
  stalled(n: number, word = 'stall'): Promise<void> {
    return new Promise((resolve, reject) => {
      const seen = (b: Buffer): void => {
        n -= b.toString().split(word).length - 1;
        if (n > 0) return;
        this.child.stdout!.off('data', seen);
        resolve();
      };
      this.child.stdout!.on('data', seen);
      this.exited.then(() => reject(new Error(`${this.name} exited before printing "${word}": ${this.err}`)));
    });
  }

  /** SIGTERM: the worker finishes the fold in hand, acknowledges it, and prints its stats. */
  async stop(): Promise<WorkerStats> {
    this.child.kill('SIGTERM');
    await this.exited;
    assert.equal(this.child.exitCode, 0, `${this.name} exited with ${this.child.exitCode ?? this.child.signalCode}: ${this.err}`);
    return JSON.parse(this.out.trim().split('\n').at(-1)!) as WorkerStats;
  }

  /** SIGKILL: no chance to finish anything. */
  async kill(): Promise<void> {
    this.child.kill('SIGKILL');
    await this.exited;
  }
}

/** Reads a slice the way `rt`'s flush would, without writing it anywhere. */
async function readSlice(rt: Runtime, slice: SliceId): Promise<SliceTotals> {
  const reader = await rt.ring.openSlice(slice, 2000);
  while ((await reader.next()) !== null);
  return reader.totals();
}

/**
 * Job claims made by a worker of the new pool are found by one not yet
 * restarted (which knows the old pool only), and the other way round: both
 * put them where the old pool does (Placement.agreed), so a job redelivered
 * or re-sent to either during the roll is claimed once, never folded twice.
 */
async function claimsSeenAcrossPools(next: Runtime, old: Runtime): Promise<void> {
  const ids = (tag: string) => Array.from({ length: 60 }, (_, i) => `pool-${tag}-${i}`);
  const [fromNext, fromOld] = [new Claims(next.ring), new Claims(old.ring)];
  const [foldNext, foldOld] = [fromNext.newFold(), fromOld.newFold()];
  assert.ok([...(await fromNext.claim(ids('new'), foldNext)).values()].every((h) => h === null));
  assert.ok([...(await fromOld.claim(ids('old'), foldOld)).values()].every((h) => h === null));
  assert.deepEqual([...(await fromOld.claim(ids('new'), fromOld.newFold())).values()].map((h) => h?.fold), ids('new').map(() => foldNext), "claims of the new pool's workers, found by an old one");
  assert.deepEqual([...(await fromNext.claim(ids('old'), fromNext.newFold())).values()].map((h) => h?.fold), ids('old').map(() => foldOld), "claims of the old pool's workers, found by a new one");
  // And a decision one side writes is the one the other side reads.
  await fromOld.commit(foldOld, new Map());
  assert.equal((await fromNext.decision(foldOld)).state, 'committed');
}

/** Waits until no OffLog batch job is queued or running on any of these gearmands. */
async function drained(rt: Runtime, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const left = await Promise.all(rt.config.gearmanServers.map(async (s) => (await adminStatus(s)).get(FN_BATCH)?.queued ?? 0));
    if (left.every((n) => n === 0)) return;
    assert.ok(Date.now() < deadline, `jobs still queued after ${timeoutMs} ms: ${left.join(', ')}`);
    await sleep(100);
  }
}

/**
 * Every expected row is there with at least its totals; nothing else is; the
 * events counted more than once (count above expected) are returned. A
 * duplicated event brings its value along, so a row whose count is exact has
 * an exact value sum too.
 */
async function checkRows(rt: Runtime, expected: Expected): Promise<bigint> {
  const rows = await readCounts(rt);
  const want = expected.asStrings();
  assert.deepEqual([...rows.keys()].filter((k) => !want.has(k)), [], 'rows nobody logged');
  let over = 0n;
  for (const [key, [count, sum]] of want) {
    const got = rows.get(key);
    assert.ok(got, `row ${key} is missing`);
    const [c, v] = [BigInt(got[0]), BigInt(got[1])];
    assert.ok(c >= BigInt(count), `lost events for ${key}: count ${c} < ${count}`);
    assert.ok(v >= BigInt(sum), `lost value for ${key}: value sum ${v} < ${sum}`);
    if (c === BigInt(count)) assert.equal(v, BigInt(sum), `value sum of ${key}, whose count is exact`);
    over += c - BigInt(count);
  }
  return over;
}

test('the pool grows from one memcached to three mid-slice while three worker processes roll, one SIGKILLed: totals exact within the one-fold bound', async (t) => {
  const [g1, g2, m1, m2, m3] = [await gearmand(t), await gearmand(t), await memcached(t), await memcached(t), await memcached(t)];
  await Promise.all([g1, g2, m1, m2, m3].map((d) => d.start()));
  const oldPool = list(m1);
  const newPool = list(m1, m2, m3);
  // The flush is configured first (the README's order): the new pool, and the old one as previous.
  const rt = fresh({ OFFLOG_GEARMAN_SERVERS: list(g1, g2), OFFLOG_MEMCACHED_SERVERS: newPool, OFFLOG_MEMCACHED_PREVIOUS_SERVERS: oldPool });
  await rt.store.migrate();
  const slice = futureSlice(SLICE);
  const at = startOf(slice, SLICE) + 1000;
  const env = (pool: string, previous: string): Record<string, string> => ({
    OFFLOG_GEARMAN_SERVERS: list(g1, g2),
    OFFLOG_MEMCACHED_SERVERS: pool,
    OFFLOG_MEMCACHED_PREVIOUS_SERVERS: previous,
    OFFLOG_KEY_PREFIX: rt.config.keyPrefix,
    OFFLOG_TABLE_PREFIX: rt.config.tablePrefix,
    OFFLOG_LOG_LEVEL: 'error',
    OFFLOG_TEST_WORKER_NOW: String(at),
    // The SIGKILLed worker's claims are taken over 2 s after it dies, not 30.
    OFFLOG_LEASE_SECONDS: '2',
  });
  const oldEnv = env(oldPool, '');
  const newEnv = env(newPool, oldPool);
  // The worker to be killed stalls its increments to one server, so that the SIGKILL lands after part of a fold
  // is in memcached (the fold is applied again) and before the slice's totals. Not the slice's home (its totals
  // would wait too), and not m1: the pairs m1 holds under both pools were created long before, so their
  // increments there land, whereas a pair's first increment on a new server misses and is created later.
  const placement = new Placement(rt.config.memcachedServers);
  const home = placement.writer(shardOfSlice(slice));
  const stalledEnv = { ...newEnv, OFFLOG_TEST_STALL_MEMCACHED: label(placement.servers[[1, 2].find((i) => i !== home)!]!) };

  const workers = [0, 1, 2].map((i) => new WorkerProcess(`worker ${i} (old pool)`, oldEnv));
  t.after(() => Promise.all(workers.map((w) => w.kill())));
  await Promise.all(workers.map((w) => w.ready));
  const stats: WorkerStats[] = [];
  const client = new OffLogClient({ servers: rt.config.gearmanServers, batchSize: BATCH });
  const expected = new Expected();
  const EVENTS = 300_000;
  const PAIRS = 5_000;
  const SECONDS = 10;
  let logged = 0;

  // The stream waits at `gate` (a fraction of EVENTS) for the operator, so that however slow the machine, the
  // workers are rolled while events flow: every phase, old pool, mixed and new pool, gets its share.
  let gate = 0.35;
  const release = (upTo: number): void => {
    gate = Math.min(1, Math.max(upTo, logged / EVENTS + 0.15));
  };
  const reached = async (fraction: number): Promise<void> => {
    while (logged < EVENTS * fraction) await sleep(20);
  };
  const start = async (i: number, name: string, env: Record<string, string>): Promise<void> => {
    workers[i] = new WorkerProcess(name, env);
    await workers[i].ready;
  };
  // The operator's side, at points of the stream: roll the workers one by one onto the new pool.
  const operator = (async () => {
    await reached(0.2);
    stats.push(await workers[0]!.stop());
    await start(0, 'worker 0 (new pool, stalling)', stalledEnv);
    // Events flow freely until the kill, which needs the stalling worker to be storing folds.
    gate = 1;
    await reached(0.35);
    // Killed mid-store while the other two still write the old pool; not in its first fold, which creates the
    // slice's totals on their new server, but in a later one, which increments them.
    await workers[0]!.stalled(2);
    await workers[0]!.kill();
    await start(0, 'worker 0 (new pool, after SIGKILL)', newEnv);
    release(0.5);
    await reached(0.5);
    stats.push(await workers[1]!.stop());
    await start(1, 'worker 1 (new pool)', newEnv);
    release(0.7);
    await reached(0.7);
    stats.push(await workers[2]!.stop());
    await start(2, 'worker 2 (new pool)', newEnv);
    gate = 1;
  })();
  // Awaited after the stream; until then a failure must not count as unhandled.
  operator.catch(() => undefined);

  // A steady pace (EVENTS over SECONDS) while the gate is open; time spent waiting at the gate is not made up.
  let target = 0;
  for (let last = Date.now(); logged < EVENTS; ) {
    const now = Date.now();
    target = Math.min(target + ((now - last) / (SECONDS * 1000)) * EVENTS, gate * EVENTS, EVENTS);
    last = now;
    for (; logged < target; logged++) {
      const pair = logged % PAIRS;
      const userId = 1_000_003 + pair * 7919;
      const actionId = 1 + (pair % 5);
      const value = 1 + (logged % 3);
      client.log(userId, actionId, { at, value });
      expected.add(startOf(slice, SLICE), userId, actionId, value);
    }
    await sleep(5);
  }
  await operator;
  assert.equal(await client.flush({ timeoutMs: 30_000 }), true, 'gearmand acknowledged every batch');
  assert.equal(client.stats().dropped, 0);
  await client.close();
  await drained(rt, 30_000);
  for (const w of workers) stats.push(await w.stop());

  const result = await rt.flush(new Date(startOf((slice + 2) as SliceId, SLICE)));
  const report = result.slices.find((s) => s.slice === slice);
  assert.ok(report, 'the slice was flushed');
  const over = await checkRows(rt, expected);
  const bound = BigInt(DEFAULT_MAX_JOBS_PER_FOLD * BATCH);
  const sum = (k: keyof WorkerStats): number => stats.reduce((n, s) => n + s[k], 0);
  process.stdout.write(
    `# pool grown 1 → 3 mid-slice: ${EVENTS} events, ${PAIRS} pairs; counted twice after one SIGKILL: ${over} (bound ${bound}); ` +
      `slice event total ${report.events}; redelivered jobs skipped by their claims: ${sum('duplicatesSkipped')}; flush ${result.durationMs} ms\n`,
  );
  assert.ok(over > 0n, 'the SIGKILL landed mid-store: part of a fold was in memcached, and the fold was applied again');
  // The killed fold's jobs died before their marks (that is why they were applied again), the other workers
  // stopped cleanly, and the client re-sent nothing: no job was ever handed out again after being marked.
  // A skip here would mean a job marked before its counts were in.
  assert.equal(sum('duplicatesSkipped'), 0, 'redelivered jobs skipped by their marks');
  assert.ok(over <= bound, `${over} events counted twice, more than one fold (${bound})`);
  // Counted twice, and said so: the killed fold never committed (docs/claims.md).
  assert.equal(report.status, 'maybe-duplicated', report.note);
  assert.ok(over <= BigInt(report.duplicateBound), `${over} counted twice, the slice's bound ${report.duplicateBound}`);
  assert.equal(report.rows, PAIRS);
  // The slice's event total is written after its pairs: a fold cut short by the SIGKILL never makes it lead the rows.
  const events = BigInt(report.events ?? -1);
  assert.ok(events >= BigInt(EVENTS) && events <= BigInt(EVENTS) + over, `the slice's event total ${events} is between ${EVENTS} and the rows' ${BigInt(EVENTS) + over}`);

  // Without the design: a reader that knows only the new pool, or only the old one, comes up short.
  const onlyNew = await readSlice(fresh({ OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_MEMCACHED_SERVERS: newPool }), slice);
  const onlyOld = await readSlice(fresh({ OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_MEMCACHED_SERVERS: oldPool }), slice);
  await claimsSeenAcrossPools(rt, fresh({ OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_MEMCACHED_SERVERS: oldPool }));
  for (const [name, totals] of [['the new pool only', onlyNew], ['the old pool only', onlyOld]] as const) {
    const lost = BigInt(EVENTS) + over - totals.counted;
    process.stdout.write(`# read with ${name}: ${totals.counted} events in ${totals.rows} rows, ${lost} lost; the flush would call it ${judge(totals, false, null).status}\n`);
    assert.ok(lost > 0n, `a reader of ${name} loses counts`);
  }
});

test('the pool shrinks from three memcached to one while old and new workers write the same slice: totals exact', async (t) => {
  const [g, m1, m2, m3] = [await gearmand(t), await memcached(t), await memcached(t), await memcached(t)];
  await Promise.all([g, m1, m2, m3].map((d) => d.start()));
  const oldPool = list(m1, m2, m3);
  const newPool = list(m1);
  const rt = fresh({ OFFLOG_GEARMAN_SERVERS: list(g), OFFLOG_MEMCACHED_SERVERS: newPool, OFFLOG_MEMCACHED_PREVIOUS_SERVERS: oldPool });
  const old = fresh({ OFFLOG_GEARMAN_SERVERS: list(g), OFFLOG_MEMCACHED_SERVERS: oldPool, OFFLOG_KEY_PREFIX: rt.config.keyPrefix });
  await rt.store.migrate();
  const slice = futureSlice(SLICE);
  const at = startOf(slice, SLICE) + 1000;
  const client = new OffLogClient({ servers: rt.config.gearmanServers, batchSize: BATCH });
  const expected = new Expected();
  const PAIRS = 2_000;
  let logged = 0;
  const log = async (events: number): Promise<void> => {
    for (const end = logged + events; logged < end; logged++) {
      const pair = logged % PAIRS;
      const userId = 7_000_001 + pair * 104_729;
      const actionId = 1 + (pair % 3);
      client.log(userId, actionId, { at, value: logged % 2 });
      expected.add(startOf(slice, SLICE), userId, actionId, logged % 2);
    }
    assert.equal(await client.flush({ timeoutMs: 30_000 }), true);
  };
  const worker = (on: Runtime) => on.worker({}, { now: () => at }).run({ idle: true });

  await log(30_000);
  const before = await worker(old);
  await log(40_000);
  // A rolling restart half done: one worker on each side, the same jobs, the same slice.
  const [oldSide, newSide] = await Promise.all([worker(old), worker(rt)]);
  await log(30_000);
  const after = await worker(rt);
  await client.close();
  assert.deepEqual([before.events, oldSide.events + newSide.events, after.events], [30_000, 40_000, 30_000]);
  assert.ok(oldSide.events > 0 && newSide.events > 0, `both sides wrote while the roll was half done (${oldSide.events} + ${newSide.events})`);

  const flushAt = new Date(startOf((slice + 2) as SliceId, SLICE));
  // The operator's mistake first: the workers were rolled before the flush was told. It reads the old pool only.
  const wrong = fresh({ OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_TABLE_PREFIX: rt.config.tablePrefix, OFFLOG_MEMCACHED_SERVERS: oldPool });
  const short = (await wrong.flush(flushAt)).slices.find((s) => s.slice === slice);
  const shortBy = BigInt(logged) - [...(await readCounts(rt)).values()].reduce((n, [c]) => n + BigInt(c), 0n);
  process.stdout.write(`# flush not told of the change: slice written ${short?.status}, ${shortBy} events short\n`);
  assert.ok(shortBy > 0n, 'a flush that reads the old pool only comes up short');
  // The recovery, while the slice is still in the ring: the flush told, the slice's record removed, flushed again.
  await rt.store.pool.query(`DELETE FROM \`${rt.config.tablePrefix}slices\` WHERE slice_start >= FROM_UNIXTIME(?)`, [startOf(slice, SLICE) / 1000]);
  const result = await rt.flush(flushAt);
  const report = result.slices.find((s) => s.slice === slice);
  assert.equal(report?.status, 'flushed', report?.note);
  assert.deepEqual(await readCounts(rt), expected.asStrings(), 'every row exact');
  await claimsSeenAcrossPools(rt, old);

  const onlyNew = await readSlice(fresh({ OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_MEMCACHED_SERVERS: newPool }), slice);
  process.stdout.write(`# pool shrunk 3 → 1: ${logged} events exact; read with the new pool only: ${BigInt(logged) - onlyNew.counted} lost\n`);
  assert.ok(onlyNew.counted < BigInt(logged), 'a reader of the new pool only loses counts');
});

test('a server added to the pool is watched for restarts from the first flush that sees it', async (t) => {
  const [m1, m2] = [await memcached(t), await memcached(t)];
  await Promise.all([m1.start(), m2.start()]);
  const rt = fresh({ OFFLOG_MEMCACHED_SERVERS: list(m1, m2), OFFLOG_MEMCACHED_PREVIOUS_SERVERS: list(m1) });
  await rt.store.migrate();
  // The README's order: the flush is told and runs once (it records m2's pid and start) before any worker writes to m2.
  await rt.flush(new Date());
  const client = new OffLogClient({ servers: rt.config.gearmanServers });
  for (let i = 0; i < 5000; i++) client.log(i % 500, 1);
  await client.close();
  await rt.worker().run({ idle: true });
  await m2.restart();

  const result = await rt.flush(new Date(Date.now() + 3 * SLICE * 1000));
  const withData = result.slices.filter((s) => s.events !== null || s.note !== '');
  assert.ok(withData.length >= 1, 'the events were flushed');
  for (const s of withData) {
    assert.equal(s.status, 'incomplete', s.note);
    assert.match(s.note, /memcached restarted at .*earlier counts are gone/);
  }
});
