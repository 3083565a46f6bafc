/**
 * Top users of an action over a range, exact, without summing every user.
 *
 * A month of one busy action is millions of (user, day) rows; a GROUP BY over
 * them takes seconds. Activity is skewed, though: the users at the top of the
 * month are near the top of most of its days. So this is Fagin's threshold
 * algorithm over the range's pieces (decompose(): whole days, the hours of
 * partial days, the 10-minute slices of partial hours):
 *
 *  1. sorted access: each day's users of the action, busiest first (index
 *     by_action_count, scanned backwards), `depth` at a time, all days in
 *     one statement. A day the range covers only in part is listed by its
 *     whole-day row, an upper bound of the part. The few edge slices (part
 *     of an hour, at most ten) are read whole and walked as one more list;
 *  2. random access: every user seen for the first time gets its exact total
 *     over the whole range (index by_action_user);
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
import type { Store } from '../pipeline/store.ts';
import { DAY_MS, type Piece } from './range.ts';

/** Beyond this many days (ranges of a year and more), one GROUP BY over the daily rows is simpler. */
const MAX_LISTS = 400;

export interface TopRow { userId: string; count: bigint; valueSum: bigint }
export interface TopStats { method: 'threshold' | 'group-by'; rounds: number; rowsRead: number; candidates: number }

interface List { table: string; column: string; at: string | Date; /** The range covers the whole day: its value is exact, not a bound. */ whole: boolean; last: { count: string; user: string } | null; done: boolean }

/** `firstDepth`: rows read per list in the first round (tests set it small to exercise the later rounds). */
export async function topUsers(store: Store, actionId: number, pieces: Piece[], limit: number, firstDepth = Math.max(2 * limit, 64)): Promise<{ rows: TopRow[]; stats: TopStats }> {
  const t = store.tables;
  // One sorted list per day touched. A day read only in part (hourly pieces) is still listed by its
  // daily row: a user's count in part of a day is at most its count in the whole day, so the daily
  // list bounds the part from above, and the exact part comes from random access.
  const days = new Map<number, boolean>();
  for (const p of pieces) {
    if (p.table === 'counts') continue;
    for (let ms = Math.floor(p.fromMs / DAY_MS) * DAY_MS; ms < p.toMs; ms += DAY_MS) days.set(ms, p.table === 'daily');
  }
  const lists: List[] = [...days].sort((a, b) => a[0] - b[0]).map(([ms, whole]) => ({ table: t.daily, column: 'day_start', at: sqlDate(ms), whole, last: null, done: false }));
  if (lists.length > MAX_LISTS) return groupBy(store, actionId, pieces, limit);

  const stats: TopStats = { method: 'threshold', rounds: 0, rowsRead: 0, candidates: 0 };
  // The edge slices are few (at most ten): read whole, summed per user, and walked as one sorted list.
  const edge = new Map<string, { count: bigint; valueSum: bigint }>();
  for (const p of pieces.filter((x) => x.table === 'counts')) {
    const [rows] = await store.pool.query<RowDataPacket[]>(
      `SELECT user_id, count, value_sum FROM \`${t.counts}\` WHERE slice_start >= ? AND slice_start < ? AND action_id = ?`,
      [new Date(p.fromMs), new Date(p.toMs), actionId],
    );
    stats.rowsRead += rows.length;
    for (const r of rows) {
      const e = edge.get(String(r.user_id)) ?? { count: 0n, valueSum: 0n };
      e.count += BigInt(r.count);
      e.valueSum += BigInt(r.value_sum);
      edge.set(String(r.user_id), e);
    }
  }
  const edgeSorted = [...edge].sort((a, b) => (a[1].count === b[1].count ? 0 : a[1].count > b[1].count ? -1 : 1));
  let edgeDepth = 0;

  const exact = new Map<string, TopRow>();
  /** What sorted access told about users not yet totalled: their value in each list they were seen in. */
  const partial = new Map<string, Map<number, bigint>>();
  const note = (user: string) => {
    if (!exact.has(user) && !partial.has(user)) partial.set(user, new Map());
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
      const [rows] = await store.pool.query<RowDataPacket[]>(parts.join(' UNION ALL '), params);
      stats.rowsRead += rows.length;
      const got = new Array<number>(open.length).fill(0);
      for (const r of rows) {
        const [l, index] = open[Number(r.l)]!;
        got[Number(r.l)]!++;
        // Rows of one list arrive in its index order, so the last one seen is the lowest.
        if (l.last === null || compareDesc(String(r.count), String(r.user_id), l.last.count, l.last.user) > 0) l.last = { count: String(r.count), user: String(r.user_id) };
        const user = String(r.user_id);
        note(user);
        partial.get(user)?.set(index, BigInt(r.count));
      }
      open.forEach(([l], k) => {
        if (got[k]! < depth) l.done = true;
      });
    }
    const edgeEnd = Math.min(edgeSorted.length, edgeDepth + depth);
    for (; edgeDepth < edgeEnd; edgeDepth++) note(edgeSorted[edgeDepth]![0]);

    // Bounds of each user seen but not totalled: whole days seen are exact, a part of a day is at
    // most its whole-day row, a list not reaching the user yet is at most its last value.
    const openLast = lists.map((l) => (l.done || l.last === null ? 0n : BigInt(l.last.count)));
    const bounds = [...partial].map(([user, seen]) => {
      let low = edge.get(user)?.count ?? 0n;
      let high = low;
      lists.forEach((l, i) => {
        const v = seen.get(i);
        if (v !== undefined) {
          high += v;
          if (l.whole) low += v;
        } else high += openLast[i]!;
      });
      return { user, low, high };
    });
    const floor = kthLargest([...[...exact.values()].map((r) => r.count), ...bounds.map((b) => b.low)], limit);
    const wanted = bounds.filter((b) => floor === null || b.high >= floor).map((b) => b.user);
    if (wanted.length > 0) {
      await exactTotals(store, actionId, pieces, wanted, edge, exact, stats);
      for (const u of wanted) partial.delete(u);
    }

    const ranked = [...exact.values()].sort(byTotal);
    const allRead = lists.every((l) => l.done) && edgeDepth >= edgeSorted.length;
    let threshold = openLast.reduce((a, b) => a + b, 0n);
    if (edgeDepth < edgeSorted.length) threshold += edgeSorted[edgeDepth]![1].count;
    // Users left untotalled are below `floor`, which is at most the k-th exact total.
    if (allRead || (ranked.length >= limit && ranked[limit - 1]!.count > threshold)) {
      stats.candidates = exact.size;
      return { rows: ranked.slice(0, limit), stats };
    }
    depth *= 2;
  }
}

/** The k-th largest value, or null when there are fewer than k. */
function kthLargest(values: bigint[], k: number): bigint | null {
  if (values.length < k) return null;
  values.sort((a, b) => (a === b ? 0 : a > b ? -1 : 1));
  return values[k - 1]!;
}

/** Exact totals over all pieces for `users`: days and hours through by_action_user, edge slices from memory. */
async function exactTotals(
  store: Store, actionId: number, pieces: Piece[], users: string[], edge: Map<string, { count: bigint; valueSum: bigint }>, into: Map<string, TopRow>, stats: TopStats,
): Promise<void> {
  const t = store.tables;
  for (const u of users) {
    const e = edge.get(u);
    into.set(u, { userId: u, count: e?.count ?? 0n, valueSum: e?.valueSum ?? 0n });
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
    const row = into.get(String(r.user_id))!;
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
    stats: { method: 'group-by', rounds: 1, rowsRead: rows.length, candidates: rows.length },
  };
}

/** Order of `ORDER BY count DESC, user_id ASC`. */
function byTotal(a: TopRow, b: TopRow): number {
  if (a.count !== b.count) return a.count > b.count ? -1 : 1;
  const x = BigInt(a.userId);
  const y = BigInt(b.userId);
  return x < y ? -1 : x > y ? 1 : 0;
}

/** > 0 when (c1, u1) comes after (c2, u2) in `ORDER BY count DESC, user_id DESC`. */
function compareDesc(c1: string, u1: string, c2: string, u2: string): number {
  const a = BigInt(c1);
  const b = BigInt(c2);
  if (a !== b) return a < b ? 1 : -1;
  const x = BigInt(u1);
  const y = BigInt(u2);
  return x < y ? 1 : x > y ? -1 : 0;
}

/** A DATE parameter as text: a Date would be sent as a DATETIME, and compared as one. */
const sqlDate = (ms: number): string => new Date(ms).toISOString().slice(0, 10);
