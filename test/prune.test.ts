/**
 * Retention on a table of millions of rows while the flush writes: old
 * 10-minute rows (made with INSERT … SELECT from MariaDB's seq engine) are
 * pruned in small batches while real flushes commit new slices. No flush
 * waits on a prune lock (InnoDB's own row-lock-wait counter stays put), the
 * rows past the cutoff are gone to the last one, and everything newer, the
 * flushed slices included, is exactly as it was.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { OffLogClient } from '../lib/send/client.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { mondayOf } from '../lib/publish/rollup.ts';
import { drainQueues, Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 60;
const DAY = 86_400_000;
const OLD_ROWS = 1_500_000;
const KEPT_ROWS = 500_000;
const PAIRS_PER_SLICE = 5000;
const rt = testRuntime({ OFFLOG_SLICE_SECONDS: String(SLICE), OFFLOG_RETENTION_DAYS: '35', OFFLOG_HOURLY_RETENTION_DAYS: '60', OFFLOG_DAILY_RETENTION_DAYS: '400' });
const p = rt.config.tablePrefix;
const sql = async (text: string, params: unknown[] = []) => (await rt.store.pool.query<RowDataPacket[]>(text, params))[0];
const count = async (table: string, where: string, params: unknown[]) => Number((await sql(`SELECT COUNT(*) n FROM \`${p}${table}\` WHERE ${where}`, params))[0]!.n);

before(async () => {
  await drainQueues(rt.config);
  await rt.store.migrate();
});
after(() => rt.close());

test(`prune deletes ${OLD_ROWS.toLocaleString('en')} old rows in small batches while flushes commit, and nobody waits`, async () => {
  const now = Date.now();
  const cutoff = Math.floor((now - 35 * DAY) / DAY) * DAY;
  // Old rows: 400 ten-minute slices of 5,000 pairs ending a day before the cutoff. Kept rows: 100 slices from 10 days ago.
  const oldFrom = (cutoff - DAY) / 1000 - (OLD_ROWS / PAIRS_PER_SLICE) * 600;
  const keptFrom = Math.floor((now - 10 * DAY) / 600_000) * 600;
  const fill = (from: number, rows: number) =>
    rt.store.pool.query(
      `INSERT INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum)
       SELECT FROM_UNIXTIME(? + (seq DIV ${PAIRS_PER_SLICE}) * 600), 1 + (seq MOD ${PAIRS_PER_SLICE}) * 13, 1 + seq MOD 4, 1 + seq MOD 7, seq MOD 11
       FROM seq_0_to_${rows - 1}`,
      [from],
    );
  await fill(oldFrom, OLD_ROWS);
  await fill(keptFrom, KEPT_ROWS);
  // Rollups far back too: hourly rows from 70 and 50 days ago (one pruned, one kept), daily from 500 and 300.
  const hourlyOld = Math.floor((now - 70 * DAY) / 3_600_000) * 3600;
  const hourlyKept = Math.floor((now - 50 * DAY) / 3_600_000) * 3600;
  for (const [table, column, at] of [['counts_hourly', 'hour_start', hourlyOld], ['counts_hourly', 'hour_start', hourlyKept], ['counts_daily', 'day_start', (now - 500 * DAY) / 1000], ['counts_daily', 'day_start', (now - 300 * DAY) / 1000]] as const) {
    await rt.store.pool.query(`INSERT INTO \`${p}${table}\` (${column}, user_id, action_id, count, value_sum) SELECT FROM_UNIXTIME(?), seq, 1, 1, 0 FROM seq_1_to_20000`, [at]);
  }
  // Weekly rows: the week before the daily cutoff's week (all its days pruned: goes) and the cutoff's own (some days kept: stays).
  const weekKept = mondayOf(Math.floor((now - 400 * DAY) / DAY) * DAY) / 1000;
  for (const at of [weekKept - 7 * 86_400, weekKept]) {
    await rt.store.pool.query(`INSERT INTO \`${p}counts_weekly\` (week_start, user_id, action_id, count, value_sum) SELECT FROM_UNIXTIME(?), seq, 1, 1, 0 FROM seq_1_to_1000`, [at]);
  }
  await rt.store.pool.query(
    `INSERT INTO \`${p}action_series\` (action_id, step, bucket, count, value_sum, users) VALUES (1, 'slice', FROM_UNIXTIME(?), 1, 0, 1), (1, 'slice', FROM_UNIXTIME(?), 1, 0, 1), (1, 'hour', FROM_UNIXTIME(?), 1, 0, 1), (1, 'hour', FROM_UNIXTIME(?), 1, 0, 1)`,
    [oldFrom, keptFrom, hourlyOld, hourlyKept],
  );
  const keptBefore = await count('counts', 'slice_start >= FROM_UNIXTIME(?)', [cutoff / 1000]);
  assert.equal(keptBefore, KEPT_ROWS);
  assert.equal(await count('counts', 'slice_start < FROM_UNIXTIME(?)', [cutoff / 1000]), OLD_ROWS);

  // Four slices of 20,000 pairs each waiting in the ring, to be flushed while the prune runs.
  const base = futureSlice(SLICE);
  const slices = [0, 1, 2, 3].map((k) => (base + k) as SliceId);
  const expected = new Expected();
  let clock = startOf(base, SLICE) + 1000;
  const worker = rt.worker({}, { now: () => clock });
  const client = new OffLogClient({ servers: rt.config.gearmanServers, logger: rt.log });
  for (const s of slices) {
    clock = startOf(s, SLICE) + 1000;
    for (let user = 1; user <= 20_000; user++) {
      client.log(user, 1 + (user % 3), { value: user % 5, at: clock });
      expected.add(startOf(s, SLICE), user, 1 + (user % 3), user % 5);
    }
    assert.equal(await client.flush({ timeoutMs: 60_000 }), true);
    await worker.run({ idle: true });
  }
  await client.close();
  // The first slice is flushed before the prune starts: the flush's time without it.
  const baseline = await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.ok(baseline.slices.some((s) => s.slice === base && s.rows === 20_000));

  const waitsBefore = Number((await sql("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_waits'"))[0]!.Value);
  let pruneDone = false;
  const pruning = rt.prune(new Date(now), { batchRows: 5000 }).finally(() => (pruneDone = true));
  const during: number[] = [];
  for (const k of [1, 2, 3]) {
    // Let the prune get going, then flush the next slice under it.
    await new Promise((r) => setTimeout(r, 300));
    const r = await rt.flush(new Date(startOf((base + k + 2) as SliceId, SLICE)));
    assert.deepEqual(r.slices.map((s) => [s.slice, s.status, s.rows]), [[base + k, 'flushed', 20_000]]);
    during.push(r.durationMs);
  }
  const flushesOverlapped = !pruneDone;
  const result = await pruning;
  const waitsAfter = Number((await sql("SHOW GLOBAL STATUS LIKE 'Innodb_row_lock_waits'"))[0]!.Value);

  assert.ok(flushesOverlapped, `the flushes ran while the prune was still deleting (prune took ${result.durationMs} ms)`);
  assert.equal(waitsAfter - waitsBefore, 0, 'no statement waited for a row lock');
  assert.ok(during.every((ms) => ms < Math.max(5 * baseline.durationMs, 3000)), `flushes during the prune took ${during.join(', ')} ms; alone ${baseline.durationMs} ms`);
  assert.equal(result.complete, true);
  assert.equal(result.deleted.counts, OLD_ROWS);
  assert.equal(result.deleted.hourly, 20_000);
  assert.equal(result.deleted.daily, 20_000);
  assert.equal(result.deleted.weekly, 1000);
  assert.equal(result.deleted.series, 2);
  assert.ok(result.statements >= OLD_ROWS / 5000, `${result.statements} statements: batches of at most 5,000 rows`);
  assert.ok(result.maxStatementMs < 2000, `slowest DELETE ${result.maxStatementMs} ms`);

  // Nothing past a cutoff is left; nothing newer was touched; the flushed slices are exact.
  assert.equal(await count('counts', 'slice_start < FROM_UNIXTIME(?)', [cutoff / 1000]), 0);
  assert.equal(await count('counts', 'slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?)', [cutoff / 1000, startOf(base, SLICE) / 1000]), keptBefore);
  assert.equal(await count('counts_hourly', 'hour_start = FROM_UNIXTIME(?)', [hourlyKept]), 20_000);
  assert.equal(await count('counts_weekly', 'week_start = FROM_UNIXTIME(?)', [weekKept]), 1000);
  assert.equal(await count('action_series', "step = 'slice' AND bucket = FROM_UNIXTIME(?)", [keptFrom]), 1);
  const rows = await readCounts(rt);
  const flushed = new Map([...rows].filter(([k]) => Number(k.split(':')[0]) >= startOf(base, SLICE)));
  assert.deepEqual(flushed, expected.asStrings());

  // A second run finds nothing more to do.
  const again = await rt.prune(new Date(now));
  assert.deepEqual(again.deleted, { counts: 0, slices: 0, hourly: 0, daily: 0, weekly: 0, series: 0 });
  console.log(`# prune: ${OLD_ROWS} rows in ${result.durationMs} ms, ${result.statements} statements, slowest ${result.maxStatementMs} ms; flushes alone ${baseline.durationMs} ms, during ${during.join('/')} ms`);
});
