/**
 * Top users of an action over a range, exact, without summing every user.
 *
 * A month of one busy action is millions of (user, day) rows; a GROUP BY over
 * them takes seconds. Activity is skewed, though: the users at the top of the
 * month are near the top of most of its days. So this is Fagin's threshold
 * algorithm over the range's pieces (decompose(): whole days, the hours of
 * partial days, the 10-minute slices of partial hours):
 *
 *  1. sorted access: each week's (weekly rollup) or day's (daily rollup)
 *     users of the action, busiest first (index by_action_count, scanned
 *     backwards), `depth` at a time, all lists in one statement. A week or a
 *     day the range covers only in part is listed by its whole row, an upper
 *     bound of the part (a week covered on only a few days is listed by
 *     those days instead). The few edge slices (part of an hour, at most
 *     ten) are read whole and walked as one more list;
 *  2. random access: users seen whose upper bound (what they had where seen,
 *     plus the last value of each list that has not reached them) reaches
 *     the k-th lower bound get their exact totals over the whole range
 *     (index by_action_user) — once few enough are left; until then the
 *     lists are read deeper, which is cheaper per user;
 *  3. a user not seen yet has at most Σ (the last count read from each list)
 *     — the threshold. Once `limit` users have exact totals above it, no
 *     unseen user can reach the list, and the answer is exact. Otherwise the
 *     depth doubles and it goes on; a list that runs out stops counting.
 *
 * On skewed data it stops after a few hundred rows per list; on flat data it
 * degrades to reading the lists through, never to a wrong answer. Ties rank
 * by user id, so equal totals at the threshold keep it going (strictly
 * greater is required), which keeps the order identical to
 * `ORDER BY count DESC, user_id`.
 */
import type { RowDataPacket } from 'mysql2/promise';
import { mondayOf } from '../publish/rollup.ts';
import type { Store } from '../flush/store.ts';
import { DAY_MS, type Piece } from './range.ts';

/** Beyond this many lists (ranges of years), one GROUP BY over the daily rows is simpler. */
const MAX_LISTS = 400;
/** A week touched on at least this many of its days is read as one list, by its weekly row. */
const WEEK_LIST_MIN_DAYS = 4;

export interface TopRow { userId: string; count: bigint; valueSum: bigint }
export interface TopStats { method: 'threshold' | 'group-by'; rounds: number; rowsRead: number; candidates: number; /** Sorted lists read: weekly rows, daily rows. */ lists: { weeks: number; days: number } }

interface List { table: string; column: string; at: string | Date; /** The range covers the whole day: its value is exact, not a bound. */ whole: boolean; last: { count: number; user: string } | null; done: boolean }

/**
 * Bounds are kept in plain numbers (the hot loop runs over tens of thousands of users); a count
 * of 10^13 or more in one day, which no real action reaches, sends the query to the GROUP BY.
 */
const MAX_DIGITS = 13;

class TooBig extends Error {}
const num = (v: unknown): number => {
  const text = String(v);
  if (text.length > MAX_DIGITS) throw new TooBig(text);
  return Number(text);
};

/** `firstDepth`: rows read per list in the first round (tests set it small to exercise the later rounds). */
export async function topUsers(store: Store, actionId: number, pieces: Piece[], limit: number, firstDepth = Math.max(2 * limit, 64)): Promise<{ rows: TopRow[]; stats: TopStats }> {
  const t = store.tables;
  // The days touched, each whole or not. A day read only in part (hourly pieces) is still listed by
  // its daily row: a user's count in part of a day is at most its count in the whole day, so the
  // daily list bounds the part from above, and the exact part comes from random access.
  const days = new Map<number, boolean>();
  for (const p of pieces) {
    if (p.table === 'counts') continue;
    for (let ms = Math.floor(p.fromMs / DAY_MS) * DAY_MS; ms < p.toMs; ms += DAY_MS) days.set(ms, p.table === 'daily');
  }
  // Fewer, longer lists end sooner: a user's week is steadier than its days, so the sum of the lists'
  // last values falls below the k-th total at a shallower depth, and there are a seventh as many lists
  // to read. A week the range covers for the most part is listed by its weekly row (an upper bound of
  // the part, as a whole-day row is of part of a day); a week covered for a few days, by those days.
  const weeks = new Map<number, [number, boolean][]>();
  for (const [ms, whole] of [...days].sort((a, b) => a[0] - b[0])) {
    const week = mondayOf(ms);
    weeks.set(week, [...(weeks.get(week) ?? []), [ms, whole]]);
  }
  const lists: List[] = [];
  for (const [week, inWeek] of weeks) {
    if (inWeek.length >= WEEK_LIST_MIN_DAYS) {
      lists.push({ table: t.weekly, column: 'week_start', at: sqlDate(week), whole: inWeek.length === 7 && inWeek.every(([, whole]) => whole), last: null, done: false });
    } else {
      for (const [ms, whole] of inWeek) lists.push({ table: t.daily, column: 'day_start', at: sqlDate(ms), whole, last: null, done: false });
    }
  }
  if (lists.length > MAX_LISTS) return groupBy(store, actionId, pieces, limit);
  try {
    return await threshold(store, actionId, pieces, limit, firstDepth, lists);
  } catch (err) {
    if (err instanceof TooBig) return groupBy(store, actionId, pieces, limit);
    throw err;
  }
}

async function threshold(store: Store, actionId: number, pieces: Piece[], limit: number, firstDepth: number, lists: List[]): Promise<{ rows: TopRow[]; stats: TopStats }> {
  const t = store.tables;
  const weeks = lists.filter((l) => l.column === 'week_start').length;
  const stats: TopStats = { method: 'threshold', rounds: 0, rowsRead: 0, candidates: 0, lists: { weeks, days: lists.length - weeks } };
  // The edge slices are few (at most ten): read whole, summed per user, and walked as one sorted list.
  const edge = new Map<string, { count: bigint; valueSum: bigint; n: number }>();
  for (const p of pieces.filter((x) => x.table === 'counts')) {
    const [rows] = await store.pool.query<RowDataPacket[]>(
      `SELECT user_id, count, value_sum FROM \`${t.counts}\` WHERE slice_start >= ? AND slice_start < ? AND action_id = ?`,
      [new Date(p.fromMs), new Date(p.toMs), actionId],
    );
    stats.rowsRead += rows.length;
    for (const r of rows) {
      const e = edge.get(String(r.user_id)) ?? { count: 0n, valueSum: 0n, n: 0 };
      e.count += BigInt(r.count);
      e.valueSum += BigInt(r.value_sum);
      e.n = num(e.count);
      edge.set(String(r.user_id), e);
    }
  }
  const edgeSorted = [...edge].sort((a, b) => b[1].n - a[1].n);
  let edgeDepth = 0;

  /** Users totalled; null: no row in the range (seen only where a list's row bounds more than the range). */
  const exact = new Map<string, TopRow | null>();
  const totals = () => [...exact.values()].filter((r): r is TopRow => r !== null);
  /** What sorted access told about users not yet totalled: the lists they were seen in, and the values. */
  const partial = new Map<string, { lists: number[]; values: number[] }>();
  const note = (user: string) => {
    if (!exact.has(user) && !partial.has(user)) partial.set(user, { lists: [], values: [] });
  };
  let depth = firstDepth;
  for (;;) {
    stats.rounds++;
    const open = lists.map((l, i) => [l, i] as const).filter(([l]) => !l.done);
    if (open.length > 0) {
      const parts: string[] = [];
      const params: unknown[] = [];
      open.forEach(([l], k) => {
        const after = l.last === null ? '' : ' AND (count < ? OR (count = ? AND user_id < ?))';
        parts.push(
          `(SELECT ${k} AS l, user_id, count FROM \`${l.table}\` FORCE INDEX (by_action_count) WHERE action_id = ? AND ${l.column} = ?${after} ORDER BY count DESC, user_id DESC LIMIT ${depth})`,
        );
        params.push(actionId, l.at, ...(l.last === null ? [] : [l.last.count, l.last.count, l.last.user]));
      });
      // Arrays, not objects: this can be a hundred thousand rows.
      const [rows] = await store.pool.query<RowDataPacket[]>({ sql: parts.join(' UNION ALL '), rowsAsArray: true }, params);
      stats.rowsRead += rows.length;
      const got = new Array<number>(open.length).fill(0);
      for (const r of rows as unknown as [number | string, string, string][]) {
        const k = Number(r[0]);
        const [l, index] = open[k]!;
        got[k]!++;
        const count = num(r[2]);
        const user = String(r[1]);
        // The lowest row of a list so far (its index order: count, then user id, descending) is where the next read resumes.
        if (l.last === null || count < l.last.count || (count === l.last.count && userBelow(user, l.last.user))) l.last = { count, user };
        note(user);
        const p = partial.get(user);
        if (p !== undefined) {
          p.lists.push(index);
          p.values.push(count);
        }
      }
      open.forEach(([l], k) => {
        if (got[k]! < depth) l.done = true;
      });
    }
    const edgeEnd = Math.min(edgeSorted.length, edgeDepth + depth);
    for (; edgeDepth < edgeEnd; edgeDepth++) note(edgeSorted[edgeDepth]![0]);

    // Bounds of each user seen but not totalled: whole days seen are exact, a part of a day is at
    // most its whole-day row, a list not reaching the user yet is at most its last value.
    const openLast = lists.map((l) => (l.done || l.last === null ? 0 : l.last.count));
    const allOpenLast = openLast.reduce((a, b) => a + b, 0);
    const users: string[] = [];
    const lows: number[] = [];
    const highs: number[] = [];
    for (const [user, p] of partial) {
      let low = edge.get(user)?.n ?? 0;
      let high = low + allOpenLast;
      for (let k = 0; k < p.lists.length; k++) {
        const i = p.lists[k]!;
        high += p.values[k]! - openLast[i]!;
        if (lists[i]!.whole) low += p.values[k]!;
      }
      users.push(user);
      lows.push(low);
      highs.push(high);
    }
    const floor = kthLargest([...totals().map((r) => Number(r.count)), ...lows], limit);
    const wanted = users.filter((_, k) => floor === null || highs[k]! >= floor);
    const allRead = lists.every((l) => l.done) && edgeDepth >= edgeSorted.length;
    // Totalling a user costs a range read per list; reading the lists deeper costs a row per list
    // per step of depth. So while more users could still make the list than the next round would
    // read per list, read deeper first: the bounds tighten and the crowd thins out.
    if (wanted.length > 0 && (allRead || wanted.length <= Math.max(2 * limit + 100, depth))) {
      await exactTotals(store, actionId, pieces, wanted, edge, exact, stats);
      for (const u of wanted) partial.delete(u);
    } else if (wanted.length > 0) {
      depth *= 2;
      continue;
    }

    const ranked = totals().sort(byTotal);
    let threshold = allOpenLast;
    if (edgeDepth < edgeSorted.length) threshold += edgeSorted[edgeDepth]![1].n;
    // Users left untotalled are below `floor`, which is at most the k-th exact total.
    if (allRead || (ranked.length >= limit && Number(ranked[limit - 1]!.count) > threshold)) {
      stats.candidates = exact.size;
      return { rows: ranked.slice(0, limit), stats };
    }
    depth *= 2;
  }
}

/** The k-th largest value, or null when there are fewer than k. */
function kthLargest(values: number[], k: number): number | null {
  if (values.length < k) return null;
  const sorted = Float64Array.from(values).sort();
  return sorted[sorted.length - k]!;
}

/** Whether user id `a` is below `b` (decimal strings of unsigned 64-bit integers). */
function userBelow(a: string, b: string): boolean {
  return a.length !== b.length ? a.length < b.length : a < b;
}

/** Exact totals over all pieces for `users`: days and hours through by_action_user, edge slices from memory. */
async function exactTotals(
  store: Store, actionId: number, pieces: Piece[], users: string[], edge: Map<string, { count: bigint; valueSum: bigint; n: number }>, into: Map<string, TopRow | null>, stats: TopStats,
): Promise<void> {
  const t = store.tables;
  for (const u of users) {
    const e = edge.get(u);
    into.set(u, e === undefined ? null : { userId: u, count: e.count, valueSum: e.valueSum });
  }
  const parts: string[] = [];
  const params: unknown[] = [];
  for (const p of pieces) {
    if (p.table === 'counts') continue;
    const [table, column] = p.table === 'daily' ? [t.daily, 'day_start'] : [t.hourly, 'hour_start'];
    parts.push(`SELECT user_id, count, value_sum FROM \`${table}\` FORCE INDEX (by_action_user) WHERE action_id = ? AND user_id IN (?) AND ${column} >= ? AND ${column} < ?`);
    params.push(actionId, users, p.table === 'daily' ? sqlDate(p.fromMs) : new Date(p.fromMs), p.table === 'daily' ? sqlDate(p.toMs) : new Date(p.toMs));
  }
  if (parts.length === 0) return;
  const [rows] = await store.pool.query<RowDataPacket[]>(parts.join(' UNION ALL '), params);
  stats.rowsRead += rows.length;
  for (const r of rows) {
    const user = String(r.user_id);
    let row = into.get(user);
    if (!row) into.set(user, (row = { userId: user, count: 0n, valueSum: 0n }));
    row.count += BigInt(r.count);
    row.valueSum += BigInt(r.value_sum);
  }
}

/** The plain way, for very long ranges: every (user, bucket) row of the action, summed. */
async function groupBy(store: Store, actionId: number, pieces: Piece[], limit: number): Promise<{ rows: TopRow[]; stats: TopStats }> {
  const t = store.tables;
  const parts: string[] = [];
  const params: unknown[] = [];
  for (const p of pieces) {
    const [table, column] = p.table === 'daily' ? [t.daily, 'day_start'] : p.table === 'hourly' ? [t.hourly, 'hour_start'] : [t.counts, 'slice_start'];
    parts.push(`SELECT user_id, count, value_sum FROM \`${table}\` WHERE action_id = ? AND ${column} >= ? AND ${column} < ?`);
    params.push(actionId, p.table === 'daily' ? sqlDate(p.fromMs) : new Date(p.fromMs), p.table === 'daily' ? sqlDate(p.toMs) : new Date(p.toMs));
  }
  const [rows] = await store.pool.query<RowDataPacket[]>(
    `SELECT user_id, SUM(count) AS c, SUM(value_sum) AS v FROM (${parts.join(' UNION ALL ')}) x GROUP BY user_id ORDER BY c DESC, user_id ASC LIMIT ?`,
    [...params, limit],
  );
  return {
    rows: rows.map((r) => ({ userId: String(r.user_id), count: BigInt(r.c), valueSum: BigInt(r.v) })),
    stats: { method: 'group-by', rounds: 1, rowsRead: rows.length, candidates: rows.length, lists: { weeks: 0, days: 0 } },
  };
}

/** Order of `ORDER BY count DESC, user_id ASC`. */
function byTotal(a: TopRow, b: TopRow): number {
  if (a.count !== b.count) return a.count > b.count ? -1 : 1;
  const x = BigInt(a.userId);
  const y = BigInt(b.userId);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** A DATE parameter as text: a Date would be sent as a DATETIME, and compared as one. */
const sqlDate = (ms: number): string => new Date(ms).toISOString().slice(0, 10);
