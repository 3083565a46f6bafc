/**
 * Rollup repair: every slice the rollups do not hold yet (`rolled_up_at`
 * NULL, see rollup.ts) and that was flushed longer ago than a grace is
 * rolled up here, after the flush. With a bus, the `rollup` subscriber
 * normally did it seconds after the flush, so the grace gives it time and
 * only what it missed (a `SliceFlushed` never published, a subscriber that
 * failed, a message EventBridge gave up on) is done again; without a bus,
 * nothing else rolls up, and the grace is 0.
 *
 * Bounded: at most `maxDays` UTC days a run, oldest first (one `rollup()`
 * call a day, which recomputes the day once), so a backlog — the slices a
 * database had before migration 7, a long outage — drains over a few
 * flushes instead of running one past its timeout. One process repairs at
 * a time (a MariaDB lock); never throws: the counts are committed already.
 */
import type { RowDataPacket } from 'mysql2/promise';
import type { Logger } from '../base/log.ts';
import { withNamedLock } from '../flush/outbox.ts';
import { rollup } from './rollup.ts';
import type { Store } from '../flush/store.ts';

const DAY_MS = 86_400_000;
/** UTC days rolled up per run at most (a day's rollup took ~6 s on the reports bench's data). */
export const REPAIR_DAYS_PER_RUN = 2;

export interface RepairOptions {
  sliceSeconds: number;
  /** Slices flushed less than this long ago are left to the subscriber. */
  graceSeconds: number;
  maxDays?: number;
}

export interface RepairResult {
  /** False when another process was repairing. */
  ran: boolean;
  /** Slices this run rolled up. */
  repaired: number;
  /** Slices still waiting past the grace after this run (more than maxDays of them, or a failure). */
  waiting: number;
  error?: string;
}

export async function repairRollups(store: Store, options: RepairOptions, log: Logger): Promise<RepairResult> {
  const t = store.tables.slices;
  const maxDays = options.maxDays ?? REPAIR_DAYS_PER_RUN;
  const result: RepairResult = { ran: false, repaired: 0, waiting: 0 };
  try {
    await withNamedLock(store.pool, `${t}.repair`, 0, async (conn) => {
      result.ran = true;
      const [rows] = await conn.query<RowDataPacket[]>(
        `SELECT slice_start FROM \`${t}\` WHERE rolled_up_at IS NULL AND flushed_at <= NOW(3) - INTERVAL ? SECOND ORDER BY slice_start`,
        [options.graceSeconds],
      );
      result.waiting = rows.length;
      const days = new Map<number, number[]>();
      for (const r of rows) {
        const ms = (r.slice_start as Date).getTime();
        const day = Math.floor(ms / DAY_MS);
        if (!days.has(day) && days.size === maxDays) continue;
        days.set(day, [...(days.get(day) ?? []), ms]);
      }
      for (const starts of days.values()) {
        const from = starts[0]!;
        const to = starts[starts.length - 1]! + options.sliceSeconds * 1000;
        const done = await rollup(store, from, to);
        result.repaired += done.slicesRolledUp;
        result.waiting = Math.max(0, rows.length - result.repaired);
        // With a bus this is the subscriber's work left undone: worth a warning. Without one it is the normal path.
        log[options.graceSeconds > 0 ? 'warn' : 'info']({ from: new Date(from).toISOString(), to: new Date(to).toISOString(), slices: done.slicesRolledUp }, 'rollup repaired: slices the rollups did not hold yet');
      }
    });
  } catch (err) {
    result.error = (err as Error).message;
    log.warn({ err: result.error }, 'rollup repair failed; the next flush tries again');
  }
  return result;
}
