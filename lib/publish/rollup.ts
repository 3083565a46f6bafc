/**
 * Hourly, daily and weekly rollups of the 10-minute counts. Each hour or day
 * touched is recomputed from the 10-minute rows (`SUM … GROUP BY`, upserted
 * with `=`, never `+=`), so running a rollup twice, or for an event delivered
 * twice, changes nothing. A sum past 2^64 − 1 is held there, as everywhere else.
 *
 * A week is recomputed from its daily rows too, but only for the (user,
 * action) pairs of the hours rolled up: those are the only ones whose daily
 * rows changed, and a whole week is several million rows to group every ten
 * minutes, where an hour's pairs are some thousands of short index ranges
 * (~0.45 s a slice on the reports bench's data, beside ~6 s for its day).
 *
 * Each call records what it rolled up: the slices of the hours it
 * recomputed get `rolled_up_at` (migration 7), so a rollup that never ran
 * (a lost SliceFlushed, a subscriber that failed) shows, is repaired
 * (repair.ts), and holds back the prune of its raw rows (prune.ts).
 */
import type { RowDataPacket } from 'mysql2/promise';
import { WEEK_OF } from '../flush/migrations.ts';
import { rollupSeries } from './series.ts';
import type { Store } from '../flush/store.ts';

const HOUR_MS = 3_600_000;
const DAY_MS = 86_400_000;
const WEEK_MS = 7 * DAY_MS;

export interface RollupResult {
  hours: number;
  days: number;
  hourlyRows: number;
  dailyRows: number;
  weeklyRows: number;
  /** Slices recorded as rolled up by this call (their hours were recomputed here). */
  slicesRolledUp: number;
}

/** Recomputes every hour and every day that overlaps [fromMs, toMs), and those hours' pairs in every week that overlaps it. */
export async function rollup(store: Store, fromMs: number, toMs: number): Promise<RollupResult> {
  if (!(Number.isFinite(fromMs) && Number.isFinite(toMs) && toMs > fromMs)) throw new RangeError(`rollup: empty or invalid range ${fromMs}…${toMs}`);
  const { counts, hourly, daily, weekly } = store.tables;
  const hourFrom = Math.floor(fromMs / HOUR_MS) * HOUR_MS;
  const hourTo = Math.ceil(toMs / HOUR_MS) * HOUR_MS;
  const dayFrom = Math.floor(fromMs / DAY_MS) * DAY_MS;
  const dayTo = Math.ceil(toMs / DAY_MS) * DAY_MS;
  const weekFrom = mondayOf(dayFrom);
  const weekTo = mondayOf(dayTo - DAY_MS) + WEEK_MS;
  const cap = (col: string) => `LEAST(SUM(${col}), 18446744073709551615)`;
  // Read first: a slice committed (or flushed again) while the sums below run may have been missed by them, so only these, as they were, are marked.
  const [pending] = await store.pool.query<RowDataPacket[]>(
    `SELECT slice_start, flushed_at FROM \`${store.tables.slices}\` WHERE slice_start >= ? AND slice_start < ? AND rolled_up_at IS NULL`,
    [new Date(hourFrom), new Date(hourTo)],
  );
  const [h] = await store.pool.query<import('mysql2/promise').ResultSetHeader>(
    `INSERT INTO \`${hourly}\` (hour_start, user_id, action_id, count, value_sum)
     SELECT DATE_FORMAT(slice_start, '%Y-%m-%d %H:00:00'), user_id, action_id, ${cap('count')}, ${cap('value_sum')}
     FROM \`${counts}\` WHERE slice_start >= ? AND slice_start < ?
     GROUP BY 1, user_id, action_id
     ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`,
    [new Date(hourFrom), new Date(hourTo)],
  );
  const [d] = await store.pool.query<import('mysql2/promise').ResultSetHeader>(
    `INSERT INTO \`${daily}\` (day_start, user_id, action_id, count, value_sum)
     SELECT DATE(hour_start), user_id, action_id, ${cap('count')}, ${cap('value_sum')}
     FROM \`${hourly}\` WHERE hour_start >= ? AND hour_start < ?
     GROUP BY 1, user_id, action_id
     ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`,
    [new Date(dayFrom), new Date(dayTo)],
  );
  const [w] = await store.pool.query<import('mysql2/promise').ResultSetHeader>(
    `INSERT INTO \`${weekly}\` (week_start, user_id, action_id, count, value_sum)
     SELECT ${WEEK_OF('d.day_start')}, d.user_id, d.action_id, ${cap('d.count')}, ${cap('d.value_sum')}
     FROM (SELECT DISTINCT user_id, action_id FROM \`${counts}\` WHERE slice_start >= ? AND slice_start < ?) touched
     JOIN \`${daily}\` d FORCE INDEX (by_action_user) ON d.action_id = touched.action_id AND d.user_id = touched.user_id AND d.day_start >= ? AND d.day_start < ?
     GROUP BY 1, d.user_id, d.action_id
     ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`,
    [new Date(hourFrom), new Date(hourTo), sqlDate(weekFrom), sqlDate(weekTo)],
  );
  // The reports' per-action series follow the rollups they summarise.
  await rollupSeries(store, fromMs, toMs);
  if (pending.length > 0) {
    await store.pool.query(`UPDATE \`${store.tables.slices}\` SET rolled_up_at = NOW(3) WHERE rolled_up_at IS NULL AND (slice_start, flushed_at) IN (?)`,
      [pending.map((r) => [r.slice_start as Date, r.flushed_at as Date])]);
  }
  return {
    hours: (hourTo - hourFrom) / HOUR_MS, days: (dayTo - dayFrom) / DAY_MS,
    hourlyRows: h.affectedRows, dailyRows: d.affectedRows, weeklyRows: w.affectedRows, slicesRolledUp: pending.length,
  };
}

/** The Monday (UTC midnight) on or before `ms`: 1970-01-01 was a Thursday. */
export function mondayOf(ms: number): number {
  const day = Math.floor(ms / DAY_MS);
  return (day - ((day + 3) % 7)) * DAY_MS;
}

/** A DATE parameter as text: a Date would be sent as a DATETIME. */
const sqlDate = (ms: number): string => new Date(ms).toISOString().slice(0, 10);
