/**
 * The read side: per-action series, top users of an action, one user's
 * timeline, and action names. Every statement is parameterised; table names
 * come from configuration (validated to `[A-Za-z0-9_]`).
 *
 * Ranges arrive already aligned (see params.ts): a series or timeline range
 * to its step, a top-users range to the slice. Counts and sums are exact
 * BIGINT UNSIGNED values and travel as decimal strings (a JSON number loses
 * precision past 2^53).
 */
import type { RowDataPacket } from 'mysql2/promise';
import type { Store } from '../flush/store.ts';
import { decompose, DAY_MS, HOUR_MS, type Piece } from './range.ts';
import { topUsers, type TopStats } from './top.ts';

export type Step = 'slice' | 'hour' | 'day';

export { decompose, DAY_MS, HOUR_MS, type Piece } from './range.ts';

export function stepMs(step: Step, sliceSeconds: number): number {
  return step === 'slice' ? sliceSeconds * 1000 : step === 'hour' ? HOUR_MS : DAY_MS;
}

export interface Action { id: number; name: string | null }

export interface SeriesLine {
  action: Action;
  count: string[];
  valueSum: string[];
  users: number[];
  total: { count: string; valueSum: string };
}

/** What every time series answer carries: the range read, its step, and the bucket starts. */
interface Buckets {
  from: string;
  to: string;
  step: Step;
  stepSeconds: number;
  /** Bucket starts, epoch ms: one per step, no gaps. */
  t: number[];
}

export interface SeriesReport extends Buckets {
  lines: SeriesLine[];
}

export interface TopUser { rank: number; userId: string; count: string; valueSum: string }
export interface TopReport { action: Action; from: string; to: string; limit: number; users: TopUser[]; sources: Piece[]; stats: TopStats }

export interface TimelineReport extends Buckets {
  userId: string;
  /** One line per action the user did in the range, busiest first. */
  lines: SeriesLine[];
}

export class ReportQueries {
  constructor(private readonly store: Store, private readonly sliceSeconds: number) {}

  private get t() {
    return this.store.tables;
  }

  private async rows(sql: string, params: unknown[]): Promise<RowDataPacket[]> {
    const [rows] = await this.store.pool.query<RowDataPacket[]>(sql, params);
    return rows;
  }

  // ── action names ──

  async actions(): Promise<Action[]> {
    // Named actions, and every action with counts (the day series lists each action once per day: a short read).
    const rows = await this.rows(
      `SELECT a.action_id AS id, n.name FROM (
         SELECT action_id FROM \`${this.t.actions}\`
         UNION SELECT DISTINCT action_id FROM \`${this.t.series}\` WHERE step = 'day'
       ) a LEFT JOIN \`${this.t.actions}\` n ON n.action_id = a.action_id ORDER BY a.action_id`,
      [],
    );
    return rows.map((r) => ({ id: Number(r.id), name: (r.name as string | null) ?? null }));
  }

  async names(ids: readonly number[]): Promise<Map<number, string>> {
    if (ids.length === 0) return new Map();
    const rows = await this.rows(`SELECT action_id, name FROM \`${this.t.actions}\` WHERE action_id IN (?)`, [ids]);
    return new Map(rows.map((r) => [Number(r.action_id), String(r.name)]));
  }

  async setActionName(id: number, name: string): Promise<void> {
    await this.store.pool.query(
      `INSERT INTO \`${this.t.actions}\` (action_id, name, updated_at) VALUES (?, ?, NOW(3)) ON DUPLICATE KEY UPDATE name = VALUES(name), updated_at = VALUES(updated_at)`,
      [id, name],
    );
  }

  async removeActionName(id: number): Promise<boolean> {
    const [r] = await this.store.pool.query<import('mysql2/promise').ResultSetHeader>(`DELETE FROM \`${this.t.actions}\` WHERE action_id = ?`, [id]);
    return r.affectedRows > 0;
  }

  // ── series ──

  /** Totals per bucket of each action, zero-filled: one primary-key range of the series table per action. */
  async series(actionIds: readonly number[], fromMs: number, toMs: number, step: Step): Promise<SeriesReport> {
    const size = stepMs(step, this.sliceSeconds);
    const t = buckets(fromMs, toMs, size);
    const index = new Map(t.map((ms, i) => [ms, i]));
    const [rows, names] = await Promise.all([
      this.rows(
        `SELECT action_id, UNIX_TIMESTAMP(bucket) AS s, count, value_sum, users FROM \`${this.t.series}\`
         WHERE action_id IN (?) AND step = ? AND bucket >= ? AND bucket < ?`,
        [actionIds, step, new Date(fromMs), new Date(toMs)],
      ),
      this.names(actionIds),
    ]);
    const lines = new Map(actionIds.map((id) => [id, emptyLine({ id, name: names.get(id) ?? null }, t.length)]));
    for (const r of rows) {
      const i = index.get(Number(r.s) * 1000);
      const line = lines.get(Number(r.action_id));
      if (i === undefined || line === undefined) continue;
      line.count[i] = String(r.count);
      line.valueSum[i] = String(r.value_sum);
      line.users[i] = Number(r.users);
    }
    for (const line of lines.values()) totalUp(line);
    return { from: iso(fromMs), to: iso(toMs), step, stepSeconds: size / 1000, t, lines: [...lines.values()] };
  }

  // ── top users ──

  /** The users with the highest counts of one action over [fromMs, toMs) (slice-aligned), ties by user id: see top.ts. */
  async top(actionId: number, fromMs: number, toMs: number, limit: number): Promise<TopReport> {
    const pieces = decompose(fromMs, toMs);
    const [{ rows, stats }, names] = await Promise.all([topUsers(this.store, actionId, pieces, limit), this.names([actionId])]);
    return {
      action: { id: actionId, name: names.get(actionId) ?? null },
      from: iso(fromMs),
      to: iso(toMs),
      limit,
      users: rows.map((r, i) => ({ rank: i + 1, userId: r.userId, count: r.count.toString(), valueSum: r.valueSum.toString() })),
      sources: pieces,
      stats,
    };
  }

  // ── one user's timeline ──

  /**
   * What one user did, per action and bucket, zero-filled. The rollups' by_action_user index is read
   * one short range per known action (actions are few; users are many).
   */
  async timeline(userId: string, fromMs: number, toMs: number, step: Step): Promise<TimelineReport> {
    const size = stepMs(step, this.sliceSeconds);
    const t = buckets(fromMs, toMs, size);
    const known = (await this.actions()).map((a) => a.id);
    let rows: RowDataPacket[];
    if (known.length === 0) {
      rows = [];
    } else if (step === 'day') {
      rows = await this.rows(
        `SELECT action_id, UNIX_TIMESTAMP(day_start) AS s, count, value_sum FROM \`${this.t.daily}\` FORCE INDEX (by_action_user)
         WHERE action_id IN (?) AND user_id = ? AND day_start >= ? AND day_start < ?`,
        [known, userId, sqlDate(fromMs), sqlDate(toMs)],
      );
    } else {
      const hours = await this.rows(
        `SELECT action_id, UNIX_TIMESTAMP(hour_start) AS s, count, value_sum FROM \`${this.t.hourly}\` FORCE INDEX (by_action_user)
         WHERE action_id IN (?) AND user_id = ? AND hour_start >= ? AND hour_start < ?`,
        [known, userId, new Date(Math.floor(fromMs / HOUR_MS) * HOUR_MS), new Date(toMs)],
      );
      if (step === 'hour') {
        rows = hours;
      } else {
        // The 10-minute table has no index by user: the hours the user was active (from the
        // hourly rollup) name the slices to look up, each a primary-key point (slice, user).
        const size10 = this.sliceSeconds * 1000;
        const starts: Date[] = [];
        for (const s of new Set(hours.map((h) => Number(h.s) * 1000))) {
          for (let ms = s; ms < s + HOUR_MS; ms += size10) if (ms >= fromMs && ms < toMs) starts.push(new Date(ms));
        }
        rows = starts.length === 0 ? [] : await this.rows(
          `SELECT action_id, UNIX_TIMESTAMP(slice_start) AS s, count, value_sum FROM \`${this.t.counts}\` WHERE slice_start IN (?) AND user_id = ?`,
          [starts, userId],
        );
      }
    }
    const index = new Map(t.map((ms, i) => [ms, i]));
    const actionIds = [...new Set(rows.map((r) => Number(r.action_id)))];
    const names = await this.names(actionIds);
    const lines = new Map(actionIds.map((id) => [id, emptyLine({ id, name: names.get(id) ?? null }, t.length)]));
    for (const r of rows) {
      const i = index.get(Number(r.s) * 1000);
      if (i === undefined) continue;
      const line = lines.get(Number(r.action_id))!;
      line.count[i] = (BigInt(line.count[i]!) + BigInt(r.count)).toString();
      line.valueSum[i] = (BigInt(line.valueSum[i]!) + BigInt(r.value_sum)).toString();
      line.users[i] = 1;
    }
    for (const line of lines.values()) totalUp(line);
    const sorted = [...lines.values()].sort((a, b) => cmpDesc(a.total.count, b.total.count) || a.action.id - b.action.id);
    return { userId, from: iso(fromMs), to: iso(toMs), step, stepSeconds: size / 1000, t, lines: sorted };
  }
}

function buckets(fromMs: number, toMs: number, size: number): number[] {
  const t: number[] = [];
  for (let ms = fromMs; ms < toMs; ms += size) t.push(ms);
  return t;
}

function emptyLine(action: Action, n: number): SeriesLine {
  return { action, count: new Array<string>(n).fill('0'), valueSum: new Array<string>(n).fill('0'), users: new Array<number>(n).fill(0), total: { count: '0', valueSum: '0' } };
}

function totalUp(line: SeriesLine): void {
  let c = 0n;
  let v = 0n;
  for (let i = 0; i < line.count.length; i++) {
    c += BigInt(line.count[i]!);
    v += BigInt(line.valueSum[i]!);
  }
  line.total = { count: c.toString(), valueSum: v.toString() };
}

const cmpDesc = (a: string, b: string): number => {
  const x = BigInt(a);
  const y = BigInt(b);
  return x > y ? -1 : x < y ? 1 : 0;
};

const iso = (ms: number): string => new Date(ms).toISOString();
/** A DATE parameter as text: a Date would be sent as a DATETIME, and compared as one. */
const sqlDate = (ms: number): string => new Date(ms).toISOString().slice(0, 10);
