/**
 * Retention: 10-minute rows (and their slice records and per-slice series)
 * older than OFFLOG_RETENTION_DAYS, hourly rollups older than
 * OFFLOG_HOURLY_RETENTION_DAYS, daily ones older than
 * OFFLOG_DAILY_RETENTION_DAYS (0 keeps them for ever), weekly ones once the
 * last of their days has gone.
 *
 * Deleted in small autocommitted batches that walk the primary key from its
 * oldest bucket: each statement holds its row locks for a few milliseconds,
 * never near the buckets the flush or the rollup write (those are days
 * newer), and never rescans rows an earlier batch deleted (InnoDB keeps them
 * as delete-marked entries until its purge thread catches up, and a plain
 * `DELETE … WHERE t < cutoff LIMIT n` would wade through them every time).
 *
 * Cutoffs fall on UTC midnight, so an hour or a day is never half pruned:
 * a rollup recomputed from what is left is then either whole or not there.
 * A week's row outlives its first days (top users read it as an upper bound
 * of any part of the week still held: it must not vanish before its days).
 *
 * 10-minute rows the rollups do not hold yet (their slice's `rolled_up_at`
 * is NULL: see rollup.ts, repair.ts) are never pruned: the raw cutoff stops
 * at the UTC midnight before the oldest such slice, and the result says so.
 */
import type { ResultSetHeader, RowDataPacket } from 'mysql2/promise';
import type { Logger } from '../base/log.ts';
import { mondayOf } from './rollup.ts';
import type { Store } from '../flush/store.ts';

const DAY_MS = 86_400_000;

export interface PruneOptions {
  rawDays: number;
  hourlyDays: number;
  /** 0: daily rows are kept for ever. */
  dailyDays: number;
  /** Rows per DELETE. */
  batchRows?: number;
  /** Stop after this long (the next run goes on); a Lambda has a timeout. */
  maxSeconds?: number;
  /** Pause between batches, to leave the disk to the flush. */
  pauseMs?: number;
}

export interface PruneResult {
  cutoffs: { raw: string; hourly: string; daily: string | null; weekly: string | null };
  deleted: Record<'counts' | 'slices' | 'hourly' | 'daily' | 'weekly' | 'series', number>;
  statements: number;
  /** The slowest single DELETE: what anything waiting on its locks could have waited. */
  maxStatementMs: number;
  durationMs: number;
  /** False when maxSeconds ran out first. */
  complete: boolean;
  /** Set when slices not yet rolled up held the raw cutoff back from its retention. */
  heldBack?: { retentionCutoff: string; notRolledUp: number; oldestNotRolledUp: string };
}

export async function prune(store: Store, now: Date, options: PruneOptions, log?: Logger): Promise<PruneResult> {
  const started = performance.now();
  const batch = options.batchRows ?? 5000;
  const deadline = started + (options.maxSeconds ?? 240) * 1000;
  const pauseMs = options.pauseMs ?? 0;
  const midnight = (days: number) => new Date(Math.floor((now.getTime() - days * DAY_MS) / DAY_MS) * DAY_MS);
  let raw = midnight(options.rawDays);
  const hourly = midnight(options.hourlyDays);
  const daily = options.dailyDays > 0 ? midnight(options.dailyDays) : null;
  // Weeks that end by the daily cutoff: those starting before the Monday of the cutoff's week.
  const weekly = daily === null ? null : new Date(mondayOf(daily.getTime()));
  const t = store.tables;
  const [[pending]] = await store.pool.query<RowDataPacket[]>(
    `SELECT COUNT(*) AS n, MIN(slice_start) AS oldest FROM \`${t.slices}\` WHERE rolled_up_at IS NULL AND slice_start < ?`, [raw]);
  let heldBack: PruneResult['heldBack'];
  if (pending?.oldest instanceof Date) {
    const oldest = pending.oldest;
    heldBack = { retentionCutoff: raw.toISOString(), notRolledUp: Number(pending.n), oldestNotRolledUp: oldest.toISOString() };
    raw = new Date(Math.floor(oldest.getTime() / DAY_MS) * DAY_MS);
    log?.warn(heldBack, `prune: ${heldBack.notRolledUp} slices not rolled up yet; their 10-minute rows are kept (raw cutoff ${raw.toISOString()})`);
  }
  const result: PruneResult = {
    cutoffs: { raw: raw.toISOString(), hourly: hourly.toISOString(), daily: daily?.toISOString() ?? null, weekly: weekly?.toISOString() ?? null },
    deleted: { counts: 0, slices: 0, hourly: 0, daily: 0, weekly: 0, series: 0 },
    statements: 0,
    maxStatementMs: 0,
    durationMs: 0,
    complete: true,
    ...(heldBack ? { heldBack } : {}),
  };

  const del = async (sql: string, params: unknown[]): Promise<number> => {
    const t0 = performance.now();
    const [r] = await store.pool.query<ResultSetHeader>(sql, params);
    result.statements++;
    result.maxStatementMs = Math.max(result.maxStatementMs, performance.now() - t0);
    if (pauseMs > 0) await new Promise((r2) => setTimeout(r2, pauseMs));
    return r.affectedRows;
  };
  const outOfTime = () => performance.now() > deadline;

  /** Deletes rows of `table` with `column` < cutoff, bucket by bucket from the oldest, `batch` rows a statement. */
  const byBucket = async (table: string, column: string, cutoff: Date): Promise<number> => {
    let deleted = 0;
    let from: Date | null = new Date(0);
    while (from !== null && !outOfTime()) {
      const [rows]: [RowDataPacket[], unknown] = await store.pool.query<RowDataPacket[]>(`SELECT MIN(${column}) AS b FROM \`${table}\` WHERE ${column} >= ? AND ${column} < ?`, [from, cutoff]);
      const bucket: Date | null = (rows[0]?.b as Date | null) ?? null;
      if (bucket === null) break;
      for (;;) {
        const n = await del(`DELETE FROM \`${table}\` WHERE ${column} = ? LIMIT ${batch}`, [bucket]);
        deleted += n;
        if (n < batch || outOfTime()) break;
      }
      from = new Date(bucket.getTime() + 1000);
    }
    return deleted;
  };

  result.deleted.counts = await byBucket(t.counts, 'slice_start', raw);
  // Slice records: never the newest, which is the flush's watermark.
  const [w] = await store.pool.query<RowDataPacket[]>(`SELECT MAX(slice_start) AS w FROM \`${t.slices}\``);
  const watermark = (w[0]?.w as Date | null) ?? null;
  if (watermark !== null) {
    const keep = watermark.getTime() < raw.getTime() ? watermark : raw;
    for (let n = batch; n === batch && !outOfTime(); ) {
      n = await del(`DELETE FROM \`${t.slices}\` WHERE slice_start < ? ORDER BY slice_start LIMIT ${batch}`, [keep]);
      result.deleted.slices += n;
    }
  }
  result.deleted.hourly = await byBucket(t.hourly, 'hour_start', hourly);
  if (daily !== null) result.deleted.daily = await byBucket(t.daily, 'day_start', daily);
  if (weekly !== null) result.deleted.weekly = await byBucket(t.weekly, 'week_start', weekly);
  // The series table is small (one row per action and bucket): plain batches.
  for (const [step, cutoff] of [['slice', raw], ['hour', hourly], ['day', daily]] as const) {
    if (cutoff === null) continue;
    for (let n = batch; n === batch && !outOfTime(); ) {
      n = await del(`DELETE FROM \`${t.series}\` WHERE step = ? AND bucket < ? LIMIT ${batch}`, [step, cutoff]);
      result.deleted.series += n;
    }
  }
  result.complete = !outOfTime();
  result.durationMs = Math.round(performance.now() - started);
  result.maxStatementMs = Math.round(result.maxStatementMs * 10) / 10;
  log?.info(result, 'prune');
  return result;
}
