/**
 * The weekly rollup and the top-users lists read from it, against MariaDB:
 * three and a half weeks of 10-minute rows rolled up slice by slice (as the
 * `rollup` subscriber does), the weekly rows compared with a GROUP BY over
 * the daily ones (also after a row changes, after migration 6's backfill,
 * and after a second run), then top users over ranges that cover whole
 * weeks, most of a week and a few days of one, compared with a GROUP BY over
 * the raw rows.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { MIGRATIONS } from '../lib/flush/migrations.ts';
import { mondayOf, rollup } from '../lib/publish/rollup.ts';
import { decompose } from '../lib/report/range.ts';
import { topUsers } from '../lib/report/top.ts';
import { prng, testRuntime } from './support.ts';

const DAY = 86_400_000;
const HOUR = 3_600_000;
const SLICE = 600_000;
const rt = testRuntime();
const p = rt.config.tablePrefix;
/** Thursday 2026-01-08 to Monday 2026-02-02: a part-week, three whole weeks (Monday to Sunday), a day. */
const START = Date.UTC(2026, 0, 8);
const END = Date.UTC(2026, 1, 2) + DAY;
const sql = async (text: string, params: unknown[] = []) => (await rt.store.pool.query<RowDataPacket[]>(text, params))[0];

const weeklyFromDaily = () => sql(
  `SELECT DATE_FORMAT(day_start - INTERVAL WEEKDAY(day_start) DAY, '%Y-%m-%d') w, user_id u, action_id a, CAST(SUM(count) AS CHAR) c, CAST(SUM(value_sum) AS CHAR) v
   FROM \`${p}counts_daily\` GROUP BY 1, 2, 3 ORDER BY 1, 2, 3`,
);
const weeklyRows = () => sql(`SELECT DATE_FORMAT(week_start, '%Y-%m-%d') w, user_id u, action_id a, CAST(count AS CHAR) c, CAST(value_sum AS CHAR) v FROM \`${p}counts_weekly\` ORDER BY 1, 2, 3`);

before(async () => {
  await rt.store.migrate();
  // Users 1–150, action 1 busy and skewed (user 3 busiest), action 2 rare and flat: a few rows an hour.
  const random = prng(23);
  const rows: string[] = [];
  for (let ms = START; ms < END; ms += SLICE) {
    for (let k = 0; k < 6; k++) {
      const user = 1 + Math.floor(150 * random() ** 2);
      rows.push(`(FROM_UNIXTIME(${ms / 1000}), ${user}, 1, ${1 + Math.floor(random() * (user === 3 ? 30 : 6))}, ${user})`);
    }
    if (random() < 0.4) rows.push(`(FROM_UNIXTIME(${ms / 1000}), ${1 + Math.floor(random() * 150)}, 2, 1, 7)`);
    // Users 501–520, very busy but only where the ragged ranges below read a week's row as a bound
    // and not the days: the first two hours, and the weekend of the third week. They lead those
    // weeks' lists without being in the range, so the bound must be read as one.
    if (ms < START + 2 * HOUR || (ms >= Date.UTC(2026, 0, 24) && ms < Date.UTC(2026, 0, 26))) {
      for (const action of [1, 2]) rows.push(`(FROM_UNIXTIME(${ms / 1000}), ${501 + Math.floor(random() * 20)}, ${action}, 50, 1)`);
    }
  }
  for (let i = 0; i < rows.length; i += 5000) {
    await rt.store.pool.query(`INSERT IGNORE INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum) VALUES ${rows.slice(i, i + 5000).join(',')}`);
  }
  // Rolled up an hour at a time, as slices are flushed: each run writes only the pairs of its hours to the weeks.
  for (let ms = START; ms < END; ms += HOUR) await rollup(rt.store, ms, ms + HOUR);
});
after(() => rt.close());

test('mondayOf: the UTC Monday on or before a time', () => {
  assert.equal(new Date(mondayOf(Date.UTC(2026, 0, 8, 13))).toISOString(), '2026-01-05T00:00:00.000Z'); // a Thursday
  assert.equal(new Date(mondayOf(Date.UTC(2026, 0, 12))).toISOString(), '2026-01-12T00:00:00.000Z'); // a Monday
  assert.equal(new Date(mondayOf(Date.UTC(2026, 0, 18, 23, 59))).toISOString(), '2026-01-12T00:00:00.000Z'); // a Sunday
});

test('the weekly rollup equals a GROUP BY over the daily rows, after a change, a backfill and a second run', async () => {
  const want = await weeklyFromDaily();
  assert.ok(want.length > 500, `${want.length} weekly rows`);
  assert.deepEqual(await weeklyRows(), want);

  // One pair changes in one slice: rolling up that slice alone brings its week up to date.
  const at = START + 9 * DAY + 7 * SLICE;
  await rt.store.pool.query(`INSERT INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum) VALUES (FROM_UNIXTIME(?), 149, 2, 1000, 5) ON DUPLICATE KEY UPDATE count = count + 1000`, [at / 1000]);
  const r = await rollup(rt.store, at, at + SLICE);
  assert.ok(r.weeklyRows > 0);
  const changed = await weeklyFromDaily();
  assert.notDeepEqual(changed, want);
  assert.deepEqual(await weeklyRows(), changed);
  await rollup(rt.store, at, at + SLICE);
  assert.deepEqual(await weeklyRows(), changed, 'a second run changes nothing');

  // Migration 6 fills the weekly table from daily rows already there (a database rolled up before it).
  await rt.store.pool.query(`TRUNCATE TABLE \`${p}counts_weekly\``);
  for (const statement of MIGRATIONS.find((m) => m.version === 6)!.statements(rt.store.tables)) await rt.store.pool.query(statement);
  assert.deepEqual(await weeklyRows(), changed);
});

test('top users over whole, most-of and a-few-days-of weeks equal a GROUP BY over the raw rows', async () => {
  const ranges: [string, number, number, { weeks: number; days: number }][] = [
    ['three whole weeks', Date.UTC(2026, 0, 12), Date.UTC(2026, 1, 2), { weeks: 3, days: 0 }],
    // From Thursday 02:20 (a part-day, 4 days of the first week) to Monday 05:40 (a part-day, 1 day of the last).
    ['ragged, most of the first week', START + 2 * HOUR + 2 * SLICE, Date.UTC(2026, 1, 2) + 5 * HOUR + 4 * SLICE, { weeks: 4, days: 1 }],
    // From Saturday 10:30 (2 days of a week: read by day) to Friday 18:00 (5 days of the last, the last one part: by week).
    ['ragged, a few days of the first week', Date.UTC(2026, 0, 10, 10, 30), Date.UTC(2026, 0, 23, 18), { weeks: 2, days: 2 }],
  ];
  let deeper = 0;
  for (const [label, from, to, lists] of ranges) {
    for (const [action, limit] of [[1, 10], [2, 10], [1, 1], [2, 40], [1, 1000]] as const) {
      const want = await sql(
        `SELECT CAST(user_id AS CHAR) u, CAST(SUM(count) AS CHAR) c, CAST(SUM(value_sum) AS CHAR) v FROM \`${p}counts\`
         WHERE action_id = ? AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?) GROUP BY user_id ORDER BY SUM(count) DESC, user_id LIMIT ?`,
        [action, from / 1000, to / 1000, limit],
      );
      assert.ok(want.length > 0);
      for (const firstDepth of [undefined, 2]) {
        const { rows, stats } = await topUsers(rt.store, action, decompose(from, to), limit, firstDepth);
        const what = `${label}, action ${action}, limit ${limit}, first depth ${firstDepth ?? 'default'}`;
        assert.deepEqual(rows.map((u) => [u.userId, String(u.count), String(u.valueSum)]), want.map((w) => [w.u, w.c, w.v]), what);
        assert.equal(stats.method, 'threshold', what);
        assert.deepEqual(stats.lists, lists, what);
        if (stats.rounds > 2) deeper++;
      }
    }
  }
  assert.ok(deeper > 0, 'the small first depth took several rounds');
});

test('top users on a tie at the threshold: the unseen user with the lower id is found, not left out', async () => {
  // Two whole days (read as two daily lists), action 3 only here: users 1 and 9 have 5 on each day, 10 in all.
  // Read one row per list, user 9 comes first (lists run busiest first, then by user id downwards); then an
  // unseen user can still reach 5 + 5 = 10, which is user 9's total: a tie, which user 1 wins by its lower id.
  const days = [Date.UTC(2026, 2, 2), Date.UTC(2026, 2, 3)];
  for (const day of days) {
    await rt.store.pool.query(`INSERT INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum) VALUES (FROM_UNIXTIME(?), 1, 3, 5, 1), (FROM_UNIXTIME(?), 9, 3, 5, 2)`, [day / 1000 + 600, day / 1000 + 1200]);
    await rollup(rt.store, day, day + DAY);
  }
  const range = decompose(days[0]!, days[1]! + DAY);
  for (const firstDepth of [1, undefined]) {
    const { rows, stats } = await topUsers(rt.store, 3, range, 1, firstDepth);
    assert.deepEqual(stats.lists, { weeks: 0, days: 2 });
    assert.deepEqual(rows.map((u) => [u.userId, String(u.count), String(u.valueSum)]), [['1', '10', '2']], `first depth ${firstDepth ?? 'default'}`);
  }
});
