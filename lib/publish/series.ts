/**
 * The per-action series table: totals of each action per slice, hour and day,
 * with the number of distinct users. A 30-day series then reads a few
 * thousand rows of one primary-key range instead of summing millions of
 * (user, action) rows on every request.
 *
 * Like the rollups it sits beside, every bucket touched is recomputed from
 * the rows below it and upserted with `=` (never `+=`), so running it twice,
 * or for a replayed event, changes nothing.
 */
import type { ResultSetHeader } from 'mysql2/promise';
import type { Store } from '../flush/store.ts';

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const CAP = '18446744073709551615';

/** Recomputes the slice and hour buckets of every hour, and the day buckets of every day, overlapping [fromMs, toMs). */
export async function rollupSeries(store: Store, fromMs: number, toMs: number): Promise<number> {
  const { counts, hourly, daily, series } = store.tables;
  const hourFrom = new Date(Math.floor(fromMs / HOUR_MS) * HOUR_MS);
  const hourTo = new Date(Math.ceil(toMs / HOUR_MS) * HOUR_MS);
  const dayFrom = new Date(Math.floor(fromMs / DAY_MS) * DAY_MS);
  const dayTo = new Date(Math.ceil(toMs / DAY_MS) * DAY_MS);
  const upsert = `ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum), users = VALUES(users)`;
  const sums = `LEAST(SUM(count), ${CAP}), LEAST(SUM(value_sum), ${CAP}), COUNT(*)`;
  let rows = 0;
  for (const [step, table, column, from, to] of [
    ['slice', counts, 'slice_start', hourFrom, hourTo],
    ['hour', hourly, 'hour_start', hourFrom, hourTo],
    ['day', daily, 'day_start', dayFrom, dayTo],
  ] as const) {
    // Each source row is one (user, action) of its bucket, so COUNT(*) is the bucket's distinct users.
    const [r] = await store.pool.query<ResultSetHeader>(
      `INSERT INTO \`${series}\` (action_id, step, bucket, count, value_sum, users)
       SELECT action_id, '${step}', ${column}, ${sums} FROM \`${table}\`
       WHERE ${column} >= ? AND ${column} < ? GROUP BY action_id, ${column} ${upsert}`,
      [from, to],
    );
    rows += r.affectedRows;
  }
  return rows;
}
