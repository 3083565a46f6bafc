/**
 * Pre-aggregation: many events become one delta per (slice, user, action), so
 * memcached sees one increment per pair per fold instead of one per event.
 *
 * This runs once per event, so it is built not to allocate per event: pairs
 * are found in a typed-array PairTable per slice, and only a pair seen for the
 * first time becomes an object.
 */
import { MAX_U64, type ActionId, type EventColumns, type LogEvent, type UserId } from './contract.ts';
import { hiOf, loOf, PairTable } from './pairtable.ts';
import { guardedSlice, sliceOf, type SliceId } from './slice.ts';

export interface PairDelta {
  slice: SliceId;
  userId: UserId;
  actionId: ActionId;
  count: number;
  /** A number while it is exact; a bigint once the sum passes 2^53-1; never above 2^64-1 (see `saturated`). */
  value: number | bigint;
  /** The sum passed 2^64-1 (BIGINT UNSIGNED): `value` is held at 2^64-1 and the slice reports it. */
  saturated: boolean;
}

export class Deltas {
  /** Every pair of the fold, in the order first seen. */
  readonly pairs: PairDelta[] = [];
  /** Late (or clamped future) events, by the slice they were counted into. */
  readonly late = new Map<SliceId, number>();
  events = 0;
  /** pairs[i]'s user id as two 32-bit halves (hi·2^32 + lo), as PairTable and the register take it. */
  private readonly his: number[] = [];
  private readonly los: number[] = [];
  /** Indexes into `pairs`, one table per slice. */
  private readonly tables = new Map<SliceId, PairTable>();
  // The table of the slice used last: nearly every event of a fold is in the same one or two slices.
  private lastSlice = Number.NaN;
  private lastTable: PairTable | null = null;

  /** Folds `event` into the slice the guard allows at `current`. */
  add(event: LogEvent, current: SliceId, sliceSeconds: number): void {
    const slice = this.targetSlice(sliceOf(event.at, sliceSeconds), current);
    const id = event.userId;
    // Canonical ids under 16 digits are exact numbers; longer ones are split as a bigint.
    if (id.length < 16) {
      const user = Number(id);
      this.addPair(slice, hiOf(user), loOf(user), id, event.actionId, 1, event.value);
    } else {
      const big = BigInt(id);
      this.addPair(slice, Number(big >> 32n), Number(big & 0xffff_ffffn), id, event.actionId, 1, event.value);
    }
  }

  addAll(events: readonly LogEvent[], current: SliceId, sliceSeconds: number): void {
    for (const e of events) this.add(e, current, sliceSeconds);
  }

  /**
   * Folds `n` events given as columns (a decoded batch): user ids as exact
   * numbers (below 2^53), action ids already validated, timestamps in epoch ms.
   */
  addColumns(cols: EventColumns, current: SliceId, sliceSeconds: number): void {
    const { user, action, value, at } = cols;
    for (let i = 0; i < cols.length; i++) {
      const slice = this.targetSlice(sliceOf(at[i]!, sliceSeconds), current);
      this.addEvent(slice, user[i]!, action[i]!, value[i]!);
    }
  }

  /**
   * One event of a user id below 2^53 with a plain-number value: the fold's
   * hot path (every event of every batch), kept monomorphic and short.
   */
  private addEvent(slice: SliceId, user: number, actionId: ActionId, value: number): void {
    let table = this.lastTable;
    if (slice !== this.lastSlice || table === null) table = this.tableOf(slice);
    const hi = hiOf(user);
    const lo = loOf(user);
    const index = table.getOrAdd(hi, lo, actionId, this.pairs.length);
    if (index < 0) {
      this.pairs.push({ slice, userId: String(user), actionId, count: 1, value, saturated: false });
      this.his.push(hi);
      this.los.push(lo);
    } else {
      const pair = this.pairs[index]!;
      pair.count++;
      if (value !== 0) {
        const sum = addValue(pair.value, value);
        if (sum === OVERFLOW) {
          pair.value = MAX_U64;
          pair.saturated = true;
        } else pair.value = sum;
      }
    }
    this.events++;
  }

  private tableOf(slice: SliceId): PairTable {
    let table = this.tables.get(slice) ?? null;
    if (table === null) this.tables.set(slice, (table = new PairTable()));
    this.lastSlice = slice;
    this.lastTable = table;
    return table;
  }

  /**
   * These deltas with every pair of a slice at or below `sealed` moved to
   * `to`, and counted there as late: for slices the flush has already taken.
   */
  movedAbove(sealed: SliceId, to: SliceId): Deltas {
    const moved = new Deltas();
    for (const [slice, n] of this.late) {
      const target = slice <= sealed ? to : slice;
      moved.late.set(target, (moved.late.get(target) ?? 0) + n);
    }
    for (let i = 0; i < this.pairs.length; i++) {
      const d = this.pairs[i]!;
      let slice = d.slice;
      if (slice <= sealed) {
        slice = to;
        moved.late.set(to, (moved.late.get(to) ?? 0) + d.count);
      }
      moved.addPair(slice, this.his[i]!, this.los[i]!, d.userId, d.actionId, d.count, d.value, d.saturated);
    }
    moved.events = this.events;
    return moved;
  }

  /** The high 32 bits of pairs[i]'s user id. */
  hi(i: number): number {
    return this.his[i]!;
  }

  /** The low 32 bits of pairs[i]'s user id. */
  lo(i: number): number {
    return this.los[i]!;
  }

  /** Slices these deltas write to. */
  slices(): SliceId[] {
    return [...new Set(this.pairs.map((d) => d.slice))];
  }

  /** Value sums held at 2^64-1, by slice. */
  saturatedBySlice(): Map<SliceId, number> {
    const out = new Map<SliceId, number>();
    for (const d of this.pairs) if (d.saturated) out.set(d.slice, (out.get(d.slice) ?? 0) + 1);
    return out;
  }

  get lateEvents(): number {
    let n = 0;
    for (const v of this.late.values()) n += v;
    return n;
  }

  /** The slice guard (slice.ts), counting what it moves as late. */
  private targetSlice(eventSlice: SliceId, current: SliceId): SliceId {
    const slice = guardedSlice(eventSlice, current);
    if (slice !== eventSlice) this.late.set(slice, (this.late.get(slice) ?? 0) + 1);
    return slice;
  }

  /** Adds `count` events with a total of `value` to the pair; the user id is given as halves and as text (or a number) for a new pair. */
  private addPair(slice: SliceId, hi: number, lo: number, userId: UserId | number, actionId: ActionId, count: number, value: number | bigint, saturated = false): void {
    let table = this.lastTable;
    if (slice !== this.lastSlice || table === null) table = this.tableOf(slice);
    const index = table.getOrAdd(hi, lo, actionId, this.pairs.length);
    if (index < 0) {
      this.pairs.push({ slice, userId: String(userId), actionId, count, value, saturated });
      this.his.push(hi);
      this.los.push(lo);
    } else {
      const pair = this.pairs[index]!;
      pair.count += count;
      if (value !== 0) {
        const sum = addValue(pair.value, value);
        if (sum === OVERFLOW) {
          pair.value = MAX_U64;
          pair.saturated = true;
        } else pair.value = sum;
      }
      if (saturated) pair.saturated = true;
    }
    this.events += count;
  }
}

/** What addValue returns when a sum would pass 2^64-1. */
export const OVERFLOW = -1n;

/** sum + value, exact (a number while it can be), or OVERFLOW past 2^64-1 (BIGINT UNSIGNED's maximum). */
export function addValue(sum: number | bigint, value: number | bigint): number | bigint {
  if (typeof sum === 'number' && typeof value === 'number') {
    const next = sum + value;
    if (Number.isSafeInteger(next)) return next;
  }
  const big = BigInt(sum) + BigInt(value);
  return big > MAX_U64 ? OVERFLOW : big;
}
