/**
 * Rollups that fail are repaired, prune waits for them, and a publish that
 * keeps failing shows (issue 16's repair, issue 18 S6), on real memcached
 * and MariaDB with a fake PutEvents endpoint that can go down:
 * - rollup.ts records what it rolled up (`rolled_up_at`); one that fails
 *   part way records nothing, and repair.ts (run after every flush) does it;
 * - prune keeps the 10-minute rows of slices not rolled up;
 * - a failing outbox is in `offlog status`, the health card's reasons and
 *   the `OffLog`/`PublishFailures` metric line (CloudWatch EMF).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { Deltas } from '../lib/domain/aggregate.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { readBacklog } from '../lib/flush/backlog.ts';
import { flush } from '../lib/flush/flush.ts';
import { repairRollups } from '../lib/publish/repair.ts';
import { rollup } from '../lib/publish/rollup.ts';
import { health } from '../lib/report/health.ts';
import { Runtime } from '../lib/runtime.ts';
import { createLogger } from '../lib/base/log.ts';
import { status } from '../local/status.ts';
import { FakeBus } from './fakebus.ts';
import { futureSlice, runtimesFor, startOf, testConfig } from './support.ts';

const SLICE = 600;
const HOUR = 3_600_000;
const log = createLogger(process.env.OFFLOG_LOG_LEVEL ?? 'warn', 'test');
/** Where the runtime made next writes its metric lines (see the metric test). */
let metrics: ((line: string) => void) | undefined;
const fresh = runtimesFor({ OFFLOG_SLICE_SECONDS: String(SLICE) }, (env) => new Runtime(testConfig(env), log, { metrics }));

/** Counts straight into the ring: user u does action 1 `u` times, value 2 each, in each of three slices from `base`. */
async function fill(rt: Runtime, base: SliceId): Promise<void> {
  const d = new Deltas();
  for (let k = 0; k < 3; k++) {
    for (let u = 1; u <= 20; u++) for (let i = 0; i < u; i++) d.add({ userId: String(u), actionId: 1, value: 2, at: startOf((base + k) as SliceId, SLICE) + 5 }, (base + k) as SliceId, SLICE);
  }
  await rt.ring.apply(d);
}

const q = async (rt: Runtime, sql: string): Promise<RowDataPacket[]> => (await rt.store.pool.query<RowDataPacket[]>(sql))[0];
/** Per hour: [count, value_sum] totals of the hourly rollup, and what the 10-minute rows say they must be. */
async function hourlyAgainstRows(rt: Runtime): Promise<{ hourly: string[]; rows: string[] }> {
  const t = rt.store.tables;
  const hourly = await q(rt, `SELECT hour_start AS h, SUM(count) AS c, SUM(value_sum) AS v FROM \`${t.hourly}\` GROUP BY hour_start ORDER BY hour_start`);
  const rows = await q(rt, `SELECT DATE_FORMAT(slice_start, '%Y-%m-%d %H:00:00') AS h, SUM(count) AS c, SUM(value_sum) AS v FROM \`${t.counts}\` GROUP BY 1 ORDER BY 1`);
  return {
    hourly: hourly.map((r) => `${(r.h as Date).toISOString()} ${r.c} ${r.v}`),
    rows: rows.map((r) => `${new Date(`${(r.h as string).replace(' ', 'T')}Z`).toISOString()} ${r.c} ${r.v}`),
  };
}
const notRolledUp = async (rt: Runtime): Promise<number> => Number((await q(rt, `SELECT COUNT(*) AS n FROM \`${rt.store.tables.slices}\` WHERE rolled_up_at IS NULL`))[0]!.n);

test('a rollup that fails part way records nothing, and the repair after the next flush rolls its slices up exactly once', async (t) => {
  const fake = await FakeBus.start(t);
  const rt = fresh({ OFFLOG_EVENT_BUS: 'offlog-test', OFFLOG_EVENTBRIDGE_ENDPOINT: fake.endpoint });
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  await fill(rt, base);
  const now = new Date(startOf((base + 4) as SliceId, SLICE));
  const first = await rt.flush(now);
  const written = first.slices.length;
  assert.ok(written >= 3);
  assert.equal(first.published.published, written, 'EventBridge took every SliceFlushed');
  assert.deepEqual(first.rollups, { ran: true, repaired: 0, waiting: 0 }, 'within the grace the subscriber is left to it');
  assert.equal(await notRolledUp(rt), written, 'published is not rolled up');

  // The subscriber runs and fails after the hourly and daily rows, before the series (a table gone, say).
  const t1 = rt.store.tables;
  await rt.store.pool.query(`RENAME TABLE \`${t1.series}\` TO \`${t1.series}_away\``);
  const event = fake.accepted('SliceFlushed').find((e) => e.detail.sliceStart === new Date(startOf(base, SLICE)).toISOString())!;
  await assert.rejects(rollup(rt.store, Date.parse(event.detail.sliceStart as string), Date.parse(event.detail.sliceEnd as string)), /doesn't exist/);
  await rt.store.pool.query(`RENAME TABLE \`${t1.series}_away\` TO \`${t1.series}\``);
  assert.equal(await notRolledUp(rt), written, 'a rollup that failed records nothing');
  const backlog = await readBacklog(rt.store);
  assert.equal(backlog.notRolledUp, written);
  assert.equal(backlog.unpublished, 0);

  // The flush's repair, once the grace is over (0 here, as after half a slice).
  const repaired = await repairRollups(rt.store, { sliceSeconds: SLICE, graceSeconds: 0 }, log);
  assert.deepEqual(repaired, { ran: true, repaired: written, waiting: 0 });
  assert.equal(await notRolledUp(rt), 0);
  const { hourly, rows } = await hourlyAgainstRows(rt);
  assert.deepEqual(hourly, rows, 'every hour equals its 10-minute rows');
  const [total] = await q(rt, `SELECT SUM(count) AS c, SUM(value_sum) AS v FROM \`${t1.daily}\``);
  assert.deepEqual([String(total!.c), String(total!.v)], [String(3 * 210), String(3 * 210 * 2)], 'the daily rows hold every event once');
  const [series] = await q(rt, `SELECT COUNT(*) AS n FROM \`${t1.series}\` WHERE step = 'hour'`);
  assert.ok(Number(series!.n) > 0, 'the series were rolled up too');
  assert.deepEqual(await repairRollups(rt.store, { sliceSeconds: SLICE, graceSeconds: 0 }, log), { ran: true, repaired: 0, waiting: 0 }, 'nothing twice');
});

test('without a bus the flush rolls up itself: every slice it wrote is rolled up in the same call', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  await fill(rt, base);
  const result = await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.equal(result.rollups.repaired, result.slices.length);
  assert.equal(await notRolledUp(rt), 0);
  const { hourly, rows } = await hourlyAgainstRows(rt);
  assert.deepEqual(hourly, rows);
  assert.equal(rows.length > 0, true);
});

test('prune keeps the 10-minute rows of slices not rolled up, says so, and prunes them once the repair has run', async () => {
  const rt = fresh();
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  await fill(rt, base);
  // The flush alone (no follow-up): its slices are written and not rolled up.
  const flushed = await flush(rt.flushDeps, new Date(startOf((base + 4) as SliceId, SLICE)));
  const slices = flushed.slices.length;
  const rowsBefore = Number((await q(rt, `SELECT COUNT(*) AS n FROM \`${rt.store.tables.counts}\``))[0]!.n);
  assert.equal(rowsBefore, 60);

  const later = new Date(startOf(base, SLICE) + 40 * 24 * HOUR); // past the 35-day retention
  const held = await rt.prune(later);
  assert.equal(held.deleted.counts, 0, 'no raw row deleted');
  assert.equal(Number((await q(rt, `SELECT COUNT(*) AS n FROM \`${rt.store.tables.counts}\``))[0]!.n), rowsBefore);
  assert.equal(held.heldBack?.notRolledUp, slices);
  assert.equal(held.heldBack?.oldestNotRolledUp, flushed.slices[0]!.sliceStart);
  assert.ok(Date.parse(held.cutoffs.raw) <= Date.parse(flushed.slices[0]!.sliceStart), `raw cutoff ${held.cutoffs.raw} stops before the oldest slice not rolled up`);

  assert.equal((await repairRollups(rt.store, { sliceSeconds: SLICE, graceSeconds: 0 }, log)).repaired, slices);
  const pruned = await rt.prune(later);
  assert.equal(pruned.heldBack, undefined);
  assert.equal(pruned.deleted.counts, rowsBefore, 'rolled up, the rows past retention go');
});

test('a publish that keeps failing: in offlog status, the health card (warning, then problem) and the PublishFailures metric; cleared when it recovers', async (t) => {
  const fake = await FakeBus.start(t);
  const lines: string[] = [];
  metrics = (line) => lines.push(line);
  const rt = fresh({ OFFLOG_EVENT_BUS: 'offlog-test', OFFLOG_EVENTBRIDGE_ENDPOINT: fake.endpoint });
  metrics = undefined;
  await rt.store.migrate();
  const base = futureSlice(SLICE);
  await fill(rt, base);
  const now = new Date(startOf((base + 4) as SliceId, SLICE));
  await fake.down();
  const first = await rt.flush(now);
  const written = first.slices.length;
  assert.equal(first.published.failed, written);

  let h = await health(rt.reportDeps, 10);
  assert.equal(h.level, 'warn', h.reasons.join('; '));
  const reason = (r: string[]) => r.find((x) => x.startsWith('publishing SliceFlushed has failed'));
  assert.match(reason(h.reasons) ?? '', new RegExp(`\\(1 flushes in a row, ${written} slices waiting; last error: PutEvents failed: .*events endpoint`));

  await rt.flush(now);
  await rt.flush(now);
  h = await health(rt.reportDeps, 10);
  assert.equal(h.level, 'problem');
  assert.match(reason(h.reasons) ?? '', new RegExp(`^publishing SliceFlushed has failed since \\d{4}-\\d\\d-\\d\\dT[\\d:]+Z \\(3 flushes in a row, ${written} slices waiting`));
  const s = await status(rt);
  assert.equal((s.backlog as { publishFailedRuns: number }).publishFailedRuns, 3);
  assert.equal((s.backlog as { unpublished: number }).unpublished, written);
  assert.match((s.backlog as { lastPublishError: string }).lastPublishError, /^PutEvents failed: /);

  assert.equal(lines.length, 3, 'one metric line per flush');
  for (const line of lines) {
    const m = JSON.parse(line) as { _aws: { Timestamp: number; CloudWatchMetrics: { Namespace: string; Dimensions: string[][]; Metrics: { Name: string; Unit: string }[] }[] }; PublishFailures: number; SlicesUnpublished: number };
    assert.equal(m._aws.CloudWatchMetrics[0]!.Namespace, 'OffLog');
    assert.deepEqual(m._aws.CloudWatchMetrics[0]!.Dimensions, [[]]);
    assert.deepEqual(m._aws.CloudWatchMetrics[0]!.Metrics.map((x) => x.Name), ['PublishFailures', 'SlicesUnpublished', 'SlicesNotRolledUp']);
    assert.ok(Math.abs(m._aws.Timestamp - Date.now()) < 60_000);
    assert.equal(m.PublishFailures, written);
    assert.equal(m.SlicesUnpublished, written);
  }

  await fake.up();
  const recovered = await rt.flush(now);
  assert.equal(recovered.published.published, written);
  assert.equal(JSON.parse(lines[3]!).PublishFailures, 0);
  h = await health(rt.reportDeps, 10);
  assert.equal(reason(h.reasons), undefined, 'a clean run ends the failure');
  assert.equal((await readBacklog(rt.store)).publishFailedRuns, 0);

  // The subscriber never ran: two slices later, health says the rollups are behind (and the next flush repairs them).
  h = await health(rt.reportDeps, 10, Date.now() + 3 * SLICE * 1000);
  assert.ok(h.reasons.some((r) => new RegExp(`^${written} slices not rolled up \\(oldest ${first.slices[0]!.sliceStart}`).test(r)), h.reasons.join('; '));
});
