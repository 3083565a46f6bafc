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
  /** A number while it is exact; a bigint once the sum passes 2^53-1; held at 2^64-1 (see addValue). */
  value: number | bigint;
}

export class Deltas {
  /** Every pair of the fold, in the order first seen. */
  readonly pairs: PairDelta[] = [];
  /** Late (or clamped future) events, by the slice they were counted into. */
  readonly late = new Map<SliceId, number>();
  /** The same late events by the slice they were counted into, then by their own slice: what a move needs to stay exact. */
  private readonly lateFrom = new Map<SliceId, Map<SliceId, number>>();
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
    this.addUser(this.targetSlice(sliceOf(event.at, sliceSeconds), current), event.userId, event.actionId, 1, event.value);
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
      this.pairs.push({ slice, userId: String(user), actionId, count: 1, value });
      this.his.push(hi);
      this.los.push(lo);
    } else {
      const pair = this.pairs[index]!;
      pair.count++;
      if (value !== 0) pair.value = addValue(pair.value, value);
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
   * `to`: for slices the flush has already taken. A moved event is late in
   * `to` unless `to` is its own slice (the guard had clamped it, say, from a
   * backlog into a clock that is behind), so each is late once at most.
   */
  movedAbove(sealed: SliceId, to: SliceId): Deltas {
    const moved = new Deltas();
    for (const [into, from] of this.lateFrom) if (into > sealed) for (const [own, n] of from) moved.addLate(into, own, n);
    const movedOut = new Map<SliceId, number>();
    for (let i = 0; i < this.pairs.length; i++) {
      const d = this.pairs[i]!;
      let slice = d.slice;
      if (slice <= sealed) {
        movedOut.set(slice, (movedOut.get(slice) ?? 0) + d.count);
        slice = to;
      }
      moved.addPair(slice, this.his[i]!, this.los[i]!, d.userId, d.actionId, d.count, d.value);
    }
    for (const [slice, events] of movedOut) {
      // Its events are those the guard put there (by their own slice) and the rest, whose own slice it is.
      let clamped = 0;
      for (const [own, n] of this.lateFrom.get(slice) ?? []) {
        moved.addLate(to, own, n);
        clamped += n;
      }
      moved.addLate(to, slice, events - clamped);
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

  /** Events per slice these deltas write to (what a fold announces on each: see claims.ts). */
  eventsPerSlice(): Map<SliceId, number> {
    const per = new Map<SliceId, number>();
    for (const d of this.pairs) per.set(d.slice, (per.get(d.slice) ?? 0) + d.count);
    return per;
  }

  /** Events in slices at or below `slice`. */
  eventsThrough(slice: SliceId): number {
    let n = 0;
    for (const d of this.pairs) if (d.slice <= slice) n += d.count;
    return n;
  }

  get lateEvents(): number {
    let n = 0;
    for (const v of this.late.values()) n += v;
    return n;
  }

  /** The slice guard (slice.ts), counting what it moves as late. */
  private targetSlice(eventSlice: SliceId, current: SliceId): SliceId {
    const slice = guardedSlice(eventSlice, current);
    if (slice !== eventSlice) this.addLate(slice, eventSlice, 1);
    return slice;
  }

  /** `n` events of slice `own` counted into slice `into`: late unless that is their own. */
  private addLate(into: SliceId, own: SliceId, n: number): void {
    if (into === own || n === 0) return;
    this.late.set(into, (this.late.get(into) ?? 0) + n);
    let from = this.lateFrom.get(into);
    if (!from) this.lateFrom.set(into, (from = new Map()));
    from.set(own, (from.get(own) ?? 0) + n);
  }

  /** addPair for a user id given as text. */
  private addUser(slice: SliceId, id: UserId, actionId: ActionId, count: number, value: number | bigint): void {
    // Canonical ids under 16 digits are exact numbers; longer ones are split as a bigint.
    if (id.length < 16) {
      const user = Number(id);
      this.addPair(slice, hiOf(user), loOf(user), id, actionId, count, value);
    } else {
      const big = BigInt(id);
      this.addPair(slice, Number(big >> 32n), Number(big & 0xffff_ffffn), id, actionId, count, value);
    }
  }

  /** Adds `count` events with a total of `value` to the pair; the user id is given as halves and as text (or a number) for a new pair. */
  private addPair(slice: SliceId, hi: number, lo: number, userId: UserId | number, actionId: ActionId, count: number, value: number | bigint): void {
    let table = this.lastTable;
    if (slice !== this.lastSlice || table === null) table = this.tableOf(slice);
    const index = table.getOrAdd(hi, lo, actionId, this.pairs.length);
    if (index < 0) {
      this.pairs.push({ slice, userId: String(userId), actionId, count, value });
      this.his.push(hi);
      this.los.push(lo);
    } else {
      const pair = this.pairs[index]!;
      pair.count += count;
      if (value !== 0) pair.value = addValue(pair.value, value);
    }
    this.events += count;
  }
}

/**
 * sum + value, exact (a number while it can be), held at 2^64-1 (BIGINT
 * UNSIGNED's maximum) past it: a sum is never wrapped, and the flush reports
 * every pair it finds there.
 */
export function addValue(sum: number | bigint, value: number | bigint): number | bigint {
  if (typeof sum === 'number' && typeof value === 'number') {
    const next = sum + value;
    if (Number.isSafeInteger(next)) return next;
  }
  const big = BigInt(sum) + BigInt(value);
  return big > MAX_U64 ? MAX_U64 : big;
}
