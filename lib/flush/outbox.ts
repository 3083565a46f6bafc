/**
 * The slice outbox: every slice row the flush commits starts unpublished
 * (`published_at` NULL). After the flush, each unpublished slice, oldest
 * first, goes on the bus as one `SliceFlushed` event, and only the ones
 * EventBridge accepted are marked published. So an event is published at
 * least once: a bus outage, a partial failure or a crash between the put
 * and the mark leaves the slice for the next flush. The counts never wait
 * for any of it: they were committed before this runs, and nothing here
 * throws. The id subscribers deduplicate on is the slice's start.
 */
import type { Pool, PoolConnection, RowDataPacket } from 'mysql2/promise';
import { InputError } from '../base/errors.ts';
import type { Logger } from '../base/log.ts';
import { excerpt } from '../domain/contract.ts';
import { recordPublishOutcome } from './backlog.ts';
import type { Bus, BusEntry } from '../publish/bus.ts';
import type { SliceStatus, Store } from './store.ts';

/** Slices published per run at most: a backlog (a long bus outage) drains over a few flushes instead of stalling one. */
export const SLICES_PER_RUN = 500;

/** What a `SliceFlushed` event carries. */
export interface SliceFlushedDetail {
  /** The slice start again: the event's stable id. */
  id: string;
  sliceStart: string;
  sliceEnd: string;
  status: SliceStatus;
  rows: number;
  /** Events the workers counted into the slice; null when memcached lost the figure. */
  events: number | string | null;
  late: number | string;
  pairsMissing: number;
  note: string;
}

export interface OutboxResult {
  /** False when no bus is configured, or another process was publishing. */
  ran: boolean;
  published: number;
  failed: number;
  /** The first failure's reason, when some failed. */
  error?: string;
}

/** Publishes every unpublished slice (at most SLICES_PER_RUN); never throws. */
export async function publishSlices(store: Store, bus: Bus, sliceSeconds: number, log: Logger): Promise<OutboxResult> {
  const none: OutboxResult = { ran: false, published: 0, failed: 0 };
  if (!bus.enabled) {
    await bus.put([]);
    return none;
  }
  const t = store.tables.slices;
  try {
    const result = await withNamedLock(store.pool, `${t}.outbox`, 0, async (conn) => {
      const [rows] = await conn.query<RowDataPacket[]>(
        `SELECT slice_start, status, row_count, pairs_missing, events, late, note, flushed_at FROM \`${t}\`
         WHERE published_at IS NULL ORDER BY slice_start LIMIT ?`,
        [SLICES_PER_RUN],
      );
      if (rows.length === 0) {
        await recordPublishOutcome(store, 0, undefined);
        return { ran: true, published: 0, failed: 0 };
      }
      const starts = new Map<string, Date>();
      const entries: BusEntry[] = rows.map((r) => {
        const detail = sliceFlushedDetail(r, sliceSeconds);
        starts.set(detail.id, r.slice_start as Date);
        return { detailType: 'SliceFlushed', id: detail.id, detail: JSON.stringify(detail), time: r.flushed_at as Date };
      });
      const put = await bus.put(entries);
      if (put.published.length > 0) {
        await conn.query(`UPDATE \`${t}\` SET published_at = NOW(3) WHERE published_at IS NULL AND slice_start IN (?)`, [
          put.published.map((id) => starts.get(id)!),
        ]);
      }
      const out: OutboxResult = { ran: true, published: put.published.length, failed: put.failed.length };
      if (put.failed.length > 0) {
        out.error = put.failed[0]!.error;
        log.error({ failed: put.failed.length, published: put.published.length, error: out.error }, 'SliceFlushed: some slices were not published; the next flush tries again');
      }
      // Kept where `offlog status` and the health card read it: a failure that repeats must show as one.
      await recordPublishOutcome(store, out.failed, out.error);
      return out;
    });
    return result ?? none;
  } catch (err) {
    log.error({ err: (err as Error).message }, 'SliceFlushed: publishing failed; the next flush tries again');
    await recordPublishOutcome(store, 0, (err as Error).message).catch(() => undefined);
    return { ...none, error: (err as Error).message };
  }
}

export function sliceFlushedDetail(r: RowDataPacket, sliceSeconds: number): SliceFlushedDetail {
  const start = r.slice_start as Date;
  const id = start.toISOString();
  return {
    id,
    sliceStart: id,
    sliceEnd: new Date(start.getTime() + sliceSeconds * 1000).toISOString(),
    status: r.status as SliceStatus,
    rows: Number(r.row_count),
    events: r.events === null ? null : bigToJson(String(r.events)),
    late: bigToJson(String(r.late)),
    pairsMissing: Number(r.pairs_missing),
    note: String(r.note ?? ''),
  };
}

/** A BIGINT UNSIGNED as a JSON number while it is exact, as a decimal string past 2^53 − 1. */
export function bigToJson(decimal: string): number | string {
  const n = Number(decimal);
  return Number.isSafeInteger(n) ? n : decimal;
}

/**
 * Runs `fn` on one connection holding the MariaDB lock `name` (GET_LOCK,
 * released if the connection dies). Returns null, without running it, when
 * another session holds the lock for longer than `waitSeconds`.
 */
export async function withNamedLock<T>(pool: Pool, name: string, waitSeconds: number, fn: (conn: PoolConnection) => Promise<T>): Promise<T | null> {
  const conn = await pool.getConnection();
  try {
    const [rows] = await conn.query<RowDataPacket[]>('SELECT GET_LOCK(CONCAT(DATABASE(), ?), ?) AS got', [name, waitSeconds]);
    if (Number(rows[0]?.got) !== 1) return null;
    try {
      return await fn(conn);
    } finally {
      await conn.query('SELECT RELEASE_LOCK(CONCAT(DATABASE(), ?))', [name]).catch(() => undefined);
    }
  } finally {
    conn.release();
  }
}

/**
 * The range of a `SliceFlushed` event as EventBridge delivers it
 * (`{"detail-type": "SliceFlushed", "detail": {sliceStart, sliceEnd, …}}`).
 * Anything else is an InputError naming the field: a subscriber wired to the
 * wrong pattern fails loudly instead of rolling up nothing.
 */
export function parseSliceFlushed(event: unknown): { fromMs: number; toMs: number } {
  const e = event as { 'detail-type'?: unknown; detail?: unknown } | null;
  if (typeof e !== 'object' || e === null) throw new InputError('event', `must be an EventBridge event, got ${excerpt(event)}`);
  if (e['detail-type'] !== 'SliceFlushed') throw new InputError('detail-type', `must be "SliceFlushed", got ${excerpt(e['detail-type'])}`);
  const d = e.detail as Record<string, unknown> | null;
  if (typeof d !== 'object' || d === null) throw new InputError('detail', `must be an object, got ${excerpt(d)}`);
  const at = (field: 'sliceStart' | 'sliceEnd'): number => {
    const ms = typeof d[field] === 'string' ? Date.parse(d[field] as string) : Number.NaN;
    if (!Number.isFinite(ms)) throw new InputError(`detail.${field}`, `must be an ISO-8601 time, got ${excerpt(d[field])}`);
    return ms;
  };
  const fromMs = at('sliceStart');
  const toMs = at('sliceEnd');
  if (toMs <= fromMs) throw new InputError('detail.sliceEnd', `must be after sliceStart, got ${excerpt(d.sliceEnd)}`);
  return { fromMs, toMs };
}
