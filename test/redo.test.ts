/**
 * Ring mode `counters` on real daemons: a fold aborted while its worker is
 * still storing it is stored again (Worker.store → refold), never
 * acknowledged as stored.
 *
 * 1. A live worker paused inside its store, half its counters written, past
 *    the flush's seal wait: the flush reads the half, aborts the fold and
 *    reports the slice maybe-duplicated; released, the worker writes the
 *    other half where no flush will read it, finds its fold aborted and
 *    stores the whole fold again, as late events, in an open slice.
 * 2. The same worker paused past its lease while a second worker, given a
 *    copy of the same jobs on another gearmand, takes its claims over and
 *    commits them: released, the first finds its fold aborted and skips
 *    every job the other committed.
 *
 * Either way nothing is lost, and what is counted twice is within the bound
 * the slice reports.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { sleep } from '../lib/base/backoff.ts';
import type { HostPort } from '../lib/base/config.ts';
import { Deltas } from '../lib/domain/aggregate.ts';
import { encodeBatch, FN_BATCH, type ActionId, type LogEvent, type UserId } from '../lib/domain/contract.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { flush } from '../lib/flush/flush.ts';
import type { Ring } from '../lib/count/ring.ts';
import type { Runtime } from '../lib/runtime.ts';
import { adminStatus, GearmanConnection } from '../lib/wire/gearman.ts';
import { gearmand } from './daemons.ts';
import { Expected, readCounts, runtimesFor } from './support.ts';

const SLICE = 600;
const JOBS = 6;
const EVENTS = 40;
const fresh = runtimesFor({ OFFLOG_RING_MODE: 'counters', OFFLOG_SLICE_SECONDS: String(SLICE) });

/** A gearmand of the test's own: its queue is the test's alone, so "empty" means every job was acknowledged. */
async function ownGearmand(t: TestContext): Promise<HostPort> {
  const d = await gearmand(t);
  await d.start();
  return { host: '127.0.0.1', port: d.port };
}

/** Waits, if need be, for a slice with at least 20 s left: a test's jobs, store and flushes then see one current slice. */
async function clearOfBoundary(): Promise<void> {
  const left = SLICE * 1000 - (Date.now() % (SLICE * 1000));
  if (left < 20_000) await sleep(left + 100);
}

/** JOBS batches of EVENTS events each, at `atOf(i)` (now by default), with uniques of the test's own; the expected rows; the current slice. */
function makeJobs(rt: Runtime, atOf: (now: number, i: number) => number = (now) => now): { uniques: string[]; bodies: string[]; expected: Expected; slice: SliceId } {
  const expected = new Expected();
  const uniques: string[] = [];
  const bodies: string[] = [];
  const now = Date.now();
  for (let j = 0; j < JOBS; j++) {
    const batch: LogEvent[] = [];
    for (let i = 0; i < EVENTS; i++) {
      const user = (j * 7 + i) % 50;
      const action = 1 + (i % 3);
      const at = atOf(now, i);
      batch.push({ userId: String(user) as UserId, actionId: action as ActionId, value: i, at });
      expected.add(sliceStartMs(sliceOf(at, SLICE), SLICE), user, action, i);
    }
    uniques.push(`${rt.config.keyPrefix.replace(/:$/, '')}-job-${j}`);
    bodies.push(encodeBatch(batch));
  }
  return { uniques, bodies, expected, slice: sliceOf(now, SLICE) };
}

async function submit(server: HostPort, uniques: string[], bodies: string[]): Promise<void> {
  const conn = await GearmanConnection.connect(server);
  try {
    for (let i = 0; i < uniques.length; i++) await conn.submitBackground(FN_BATCH, bodies[i]!, uniques[i]!);
  } finally {
    conn.close();
  }
}

/**
 * Jobs gearmand still holds for `server`, once it has had a moment to read
 * the acknowledgements: they are one-way packets, sent just before the
 * worker's connections close, so the admin connection may be answered first.
 */
async function queued(server: HostPort): Promise<number> {
  const count = async (): Promise<number> => (await adminStatus(server)).get(FN_BATCH)?.queued ?? 0;
  let n = await count();
  for (let i = 0; i < 20 && n > 0; i++) await sleep(100), (n = await count());
  return n;
}

/** `pairs` as Deltas of their own (each pair's count and value sum kept, in its slice). */
function deltasOf(pairs: Deltas['pairs']): Deltas {
  const out = new Deltas();
  for (const d of pairs) {
    const at = sliceStartMs(d.slice, SLICE);
    for (let i = 0; i < d.count; i++) out.add({ userId: d.userId, actionId: d.actionId, value: i === 0 ? Number(d.value) : 0, at }, d.slice, SLICE);
  }
  return out;
}

/**
 * Pauses the first ring.apply after writing half its pairs (counters, pair
 * lists and event totals, as a whole apply writes them), until release():
 * a worker stalled mid-store. Later applies (a refold, another worker) pass.
 */
function pauseFirstApply(ring: Ring): { paused: Promise<number>; release: () => void } {
  const apply = ring.apply.bind(ring);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  let reached!: (events: number) => void;
  const paused = new Promise<number>((r) => (reached = r));
  let first = true;
  ring.apply = async (deltas) => {
    if (!first) return apply(deltas);
    first = false;
    const half = Math.ceil(deltas.pairs.length / 2);
    const head = deltasOf(deltas.pairs.slice(0, half));
    const a = await apply(head);
    reached(head.events);
    await gate;
    const b = await apply(deltasOf(deltas.pairs.slice(half)));
    return { ...a, wrapped: a.wrapped + b.wrapped, notNumbers: a.notNumbers + b.notNumbers };
  };
  return { paused, release };
}

interface SliceRow { status: string; duplicateBound: bigint; note: string }

async function sliceRows(rt: Runtime): Promise<Map<SliceId, SliceRow>> {
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT UNIX_TIMESTAMP(slice_start) AS s, status, duplicate_bound, note FROM \`${rt.config.tablePrefix}slices\``,
  );
  return new Map(rows.map((r) => [sliceOf(Number(r.s) * 1000, SLICE), { status: String(r.status), duplicateBound: BigInt(r.duplicate_bound), note: String(r.note) }]));
}

/**
 * Per (user, action), over every slice: counted ≥ sent (nothing lost) and
 * counted − sent ≤ the bound the slices report. Returns the events counted twice.
 */
async function assertWithinBound(rt: Runtime, expected: Expected): Promise<bigint> {
  const byPair = (rows: Iterable<[string, [string, string]]>): Map<string, bigint> => {
    const out = new Map<string, bigint>();
    for (const [key, [c]] of rows) {
      const pair = key.split(':').slice(1).join(':');
      out.set(pair, (out.get(pair) ?? 0n) + BigInt(c));
    }
    return out;
  };
  const got = byPair(await readCounts(rt));
  const want = byPair(expected.asStrings());
  let bound = 0n;
  for (const r of (await sliceRows(rt)).values()) bound += r.duplicateBound;
  let over = 0n;
  let lost = 0n;
  for (const [pair, sent] of want) {
    const counted = got.get(pair) ?? 0n;
    if (counted < sent) lost += sent - counted;
    else over += counted - sent;
    assert.ok(counted - sent <= bound, `${pair}: counted ${counted}, sent ${sent}: more over than the reported bound ${bound}`);
  }
  assert.equal(lost, 0n, `${lost} event(s) lost`);
  assert.deepEqual([...got.keys()].filter((p) => !want.has(p)), [], 'no pair that was never sent');
  assert.ok(over <= bound, `${over} event(s) counted twice, over the reported bound ${bound}`);
  return over;
}

test('counters: a worker paused mid-store past the flush\'s seal wait: the flush aborts its fold, the worker stores it again, nothing lost', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  await clearOfBoundary();
  const server = await ownGearmand(t);
  const { uniques, bodies, expected, slice } = makeJobs(rt);
  await submit(server, uniques, bodies);
  const { paused, release } = pauseFirstApply(rt.ring);
  t.after(release);
  // Two folds of 3 jobs: the first stalls mid-store, the second waits behind it.
  const running = rt.worker({ maxJobsPerFold: 3 }, { gearmanServers: [server] }).run({ idle: true });
  running.catch(() => undefined);
  const written = await paused;
  assert.ok(written > 0 && written < 3 * EVENTS, `half the fold written before the pause (${written} events)`);

  // The flush takes the slice with the writer inside: it waits 200 ms, aborts the open fold, reads the half.
  const first = await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((slice + 3) as SliceId, SLICE)));
  const read = first.slices.find((s) => s.slice === slice)!;
  assert.equal(read.status, 'maybe-duplicated', read.note);
  assert.equal(read.duplicateBound, String(3 * EVENTS), 'the aborted fold\'s events in the slice are the bound');
  assert.equal(read.events, String(written), 'the flush read the half written before the pause');
  assert.match(read.note, /1 writer\(s\) still inside/);

  release();
  const stats = await running;
  assert.equal(stats.foldsAborted, 1, 'the commit found the fold aborted');
  assert.equal(stats.jobs, JOBS);
  assert.equal(stats.deadLetters, 0);
  assert.equal(await queued(server), 0, 'every job acknowledged');
  assert.equal(await rt.ring.writersIn(slice), 0, 'the writer left the slice');

  // The fold went again into an open slice (late); the later flush takes it, and sees the writer left with its fold covered.
  const second = await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((slice + 6) as SliceId, SLICE)));
  assert.ok(second.slices.every((s) => s.status === 'flushed'), JSON.stringify(second.slices.filter((s) => s.status !== 'flushed')));
  const later = second.slices.filter((s) => s.rows > 0);
  assert.equal(later.length, 1, 'the second fold and the fold stored again went to one open slice');
  assert.equal(later[0]!.late, String(JOBS * EVENTS), 'both counted as late there');
  await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((slice + 7) as SliceId, SLICE)));

  const row = (await sliceRows(rt)).get(slice)!;
  assert.equal(row.status, 'maybe-duplicated', 'never marked incomplete by a later flush');
  assert.doesNotMatch(row.note, /left afterwards/);
  const twice = await assertWithinBound(rt, expected);
  assert.equal(twice, BigInt(written), 'exactly the half read before the abort is counted twice');
});

test('counters: a worker paused mid-store past its lease while another takes copies of its jobs over: released, it skips what the other committed, nothing lost', async (t) => {
  const rt = fresh({ OFFLOG_LEASE_SECONDS: '1' });
  await rt.store.migrate();
  await clearOfBoundary();
  const [one, two] = await Promise.all([ownGearmand(t), ownGearmand(t)]);
  const { uniques, bodies, expected, slice } = makeJobs(rt);
  // A client's re-send of the first half of the jobs to a second server, same unique.
  const copies = JOBS / 2;
  await submit(one!, uniques, bodies);
  await submit(two!, uniques.slice(0, copies), bodies.slice(0, copies));
  const { paused, release } = pauseFirstApply(rt.ring);
  t.after(release);
  // One fold of every job: while it is paused no other fold of this worker renews its lease.
  const running = rt.worker({ maxJobsPerFold: JOBS }, { gearmanServers: [one!] }).run({ idle: true });
  running.catch(() => undefined);
  const written = await paused;
  assert.ok(written > 0 && written < JOBS * EVENTS, `half the fold written before the pause (${written} events)`);

  // Past the 1-s lease, the other worker finds the copies' claims held by an open fold under a dead lease: aborted, taken over, committed.
  await sleep(2500);
  const other = await rt.worker({ maxJobsPerFold: JOBS }, { gearmanServers: [two!] }).run({ idle: true });
  assert.equal(other.jobs, copies);
  assert.equal(other.events, copies * EVENTS, 'the other worker folded every copy');
  assert.equal(other.duplicatesSkipped, 0);
  assert.equal(other.foldsAborted, 0);
  assert.equal(await queued(two!), 0);

  // The flush reads the slice with the paused writer still inside: its fold is aborted already (by the takeover).
  const first = await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((slice + 3) as SliceId, SLICE)));
  const read = first.slices.find((s) => s.slice === slice)!;
  assert.equal(read.status, 'maybe-duplicated', read.note);
  assert.equal(read.duplicateBound, String(JOBS * EVENTS), 'the aborted fold\'s events in the slice are the bound');
  assert.equal(read.events, String(written + copies * EVENTS), 'the flush read the paused half and the other worker\'s fold');
  assert.match(read.note, /1 writer\(s\) still inside/);

  release();
  const stats = await running;
  assert.equal(stats.foldsAborted, 1, 'the paused worker found its fold aborted');
  assert.equal(stats.duplicatesSkipped, copies, 'and skipped every job the other committed');
  assert.equal(stats.jobs, JOBS);
  assert.equal(stats.deadLetters, 0);
  assert.equal(await queued(one!), 0, 'every job acknowledged');
  assert.equal(await rt.ring.writersIn(slice), 0, 'the writer left the slice');

  // Only the jobs no other fold committed were stored again, late, in an open slice.
  const second = await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((slice + 6) as SliceId, SLICE)));
  assert.ok(second.slices.every((s) => s.status === 'flushed'), JSON.stringify(second.slices.filter((s) => s.status !== 'flushed')));
  assert.deepEqual(second.slices.filter((s) => s.rows > 0).map((s) => s.late), [String((JOBS - copies) * EVENTS)]);
  await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((slice + 7) as SliceId, SLICE)));

  const row = (await sliceRows(rt)).get(slice)!;
  assert.equal(row.status, 'maybe-duplicated', 'never marked incomplete by a later flush');
  assert.doesNotMatch(row.note, /left afterwards/);
  const twice = await assertWithinBound(rt, expected);
  assert.equal(twice, BigInt(written), 'exactly the half read before the takeover is counted twice');
});

test('counters: a paused fold that spans the slice the flush takes and the next one: stored again in the open slice, each slice\'s bound covers what is counted twice there', async (t) => {
  const rt = fresh();
  await rt.store.migrate();
  await clearOfBoundary();
  const server = await ownGearmand(t);
  // Every job has events in the slice before the current one and in the current one, alternating.
  const { uniques, bodies, expected, slice: current } = makeJobs(rt, (now, i) => (i % 2 === 0 ? sliceStartMs((sliceOf(now, SLICE) - 1) as SliceId, SLICE) + 1000 : now));
  const taken = (current - 1) as SliceId;
  await submit(server, uniques, bodies);
  const { paused, release } = pauseFirstApply(rt.ring);
  t.after(release);
  const running = rt.worker({ maxJobsPerFold: JOBS }, { gearmanServers: [server] }).run({ idle: true });
  running.catch(() => undefined);
  const written = await paused;
  assert.ok(written > 0 && written < JOBS * EVENTS, `half the fold written before the pause (${written} events)`);

  // The flush takes the slice before the current one only: the fold is aborted with half its counters in both.
  const first = await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((current + 1) as SliceId, SLICE)));
  const read = first.slices.find((s) => s.slice === taken)!;
  assert.equal(read.status, 'maybe-duplicated', read.note);
  assert.equal(read.duplicateBound, String((JOBS * EVENTS) / 2), 'the aborted fold\'s events in that slice');
  assert.ok(!first.slices.some((s) => s.slice >= current), 'the current slice stays open');

  release();
  const stats = await running;
  assert.equal(stats.foldsAborted, 1);
  assert.equal(stats.jobs, JOBS);
  assert.equal(stats.late, (JOBS * EVENTS) / 2, 'the taken slice\'s events went to the open one, late');
  assert.equal(await queued(server), 0, 'every job acknowledged');

  // The open slice has the aborted fold's counters there and the whole fold again: reported, with that bound.
  const second = await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((current + 2) as SliceId, SLICE)));
  const open = second.slices.find((s) => s.slice === current)!;
  assert.equal(open.status, 'maybe-duplicated', open.note);
  assert.equal(open.duplicateBound, String((JOBS * EVENTS) / 2), 'the aborted fold\'s events in the open slice');
  assert.equal(open.events, String(JOBS * EVENTS + (JOBS * EVENTS) / 2), 'the whole fold again, and the aborted fold\'s own half there');
  await flush({ ...rt.flushDeps, sealWaitMs: 200 }, new Date(sliceStartMs((current + 3) as SliceId, SLICE)));
  assert.equal((await sliceRows(rt)).get(taken)!.status, 'maybe-duplicated', 'never marked incomplete by a later flush');
  const twice = await assertWithinBound(rt, expected);
  assert.ok(twice > BigInt((JOBS * EVENTS) / 2) && twice < BigInt(JOBS * EVENTS), `counted twice: the open slice's ${(JOBS * EVENTS) / 2} and part of the taken one's (${twice})`);
});
