/**
 * Pre-aggregation: many events become one delta per (slice, user, action), so
 * memcached sees one increment per pair per fold instead of one per event.
 *
 * This runs once per event, so it is built not to allocate per event: pairs
 * are found by a number (user × 65536 + action, exact while the user id is
 * below 2^37) in a typed-array hash table per slice, and only a pair seen for
 * the first time becomes an object. Larger user ids take a string-keyed map.
 */
import type { ActionId, EventColumns, LogEvent, UserId } from './event.ts';
import { guardedSlice, sliceOf, type SliceId } from './slice.ts';

export interface PairDelta {
  slice: SliceId;
  userId: UserId;
  actionId: ActionId;
  count: number;
  /** A number while it is exact; a bigint once the sum passes 2^53-1. */
  value: number | bigint;
}

/** Below this a user id and an action id share one exact double: user × 65536 + action < 2^53. */
const NUMERIC_USER_LIMIT = 2 ** 37;

export class Deltas {
  /** Every pair of the fold, in the order first seen. */
  readonly pairs: PairDelta[] = [];
  /** Late (or clamped future) events, by the slice they were counted into. */
  readonly late = new Map<SliceId, number>();
  events = 0;
  /** Indexes into `pairs` by user × 65536 + action, one table per slice. */
  private readonly numeric = new Map<SliceId, PairIndex>();
  /** Pairs of user ids ≥ 2^37, by `${slice}:${userId}:${actionId}`. */
  private readonly byString = new Map<string, PairDelta>();
  // The map of the slice used last: nearly every event of a fold is in the same one or two slices.
  private lastSlice = Number.NaN;
  private lastTable: PairIndex | null = null;

  /** Folds `event` into the slice the guard allows at `current`. */
  add(event: LogEvent, current: SliceId, sliceSeconds: number): void {
    const slice = this.targetSlice(sliceOf(event.at, sliceSeconds), current);
    const id = event.userId;
    // Canonical ids under 16 digits are exact numbers; the rest are compared as text.
    const user = id.length < 16 ? Number(id) : NUMERIC_USER_LIMIT;
    if (user < NUMERIC_USER_LIMIT) this.addNumeric(slice, user, event.actionId, event.value);
    else this.addByString(slice, id, event.actionId, event.value);
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
      const u = user[i]!;
      if (u < NUMERIC_USER_LIMIT) this.addNumeric(slice, u, action[i]!, value[i]!);
      else this.addByString(slice, String(u), action[i]!, value[i]!);
    }
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

  private addNumeric(slice: SliceId, user: number, actionId: ActionId, value: number): void {
    let table = this.lastTable;
    if (slice !== this.lastSlice || table === null) {
      table = this.numeric.get(slice) ?? null;
      if (table === null) this.numeric.set(slice, (table = new PairIndex()));
      this.lastSlice = slice;
      this.lastTable = table;
    }
    const index = table.indexOrAdd(user * 65536 + actionId, this.pairs.length);
    if (index < 0) {
      this.pairs.push({ slice, userId: String(user), actionId, count: 1, value });
    } else {
      const pair = this.pairs[index]!;
      pair.count += 1;
      if (value !== 0) pair.value = addValue(pair.value, value);
    }
    this.events += 1;
  }

  private addByString(slice: SliceId, userId: UserId, actionId: ActionId, value: number): void {
    const key = `${slice}:${userId}:${actionId}`;
    const pair = this.byString.get(key);
    if (pair === undefined) {
      const created: PairDelta = { slice, userId, actionId, count: 1, value };
      this.byString.set(key, created);
      this.pairs.push(created);
    } else {
      pair.count += 1;
      if (value !== 0) pair.value = addValue(pair.value, value);
    }
    this.events += 1;
  }
}

/**
 * Open-addressing hash table from a pair's number (an integer below 2^53) to
 * its index in Deltas.pairs: two typed arrays, so no heap number per key and
 * no Map entry per pair. Linear probing, at most half full.
 */
export class PairIndex {
  private keys: Float64Array;
  /** Index + 1; 0 marks an empty slot. */
  private slots: Int32Array;
  private mask: number;
  private size = 0;

  constructor(capacity = 1024) {
    const n = 2 ** Math.ceil(Math.log2(Math.max(16, capacity * 2)));
    this.keys = new Float64Array(n);
    this.slots = new Int32Array(n);
    this.mask = n - 1;
  }

  /** The index stored for `key`; if there is none, stores `index` and returns -1. */
  indexOrAdd(key: number, index: number): number {
    let i = hash(key) & this.mask;
    for (;;) {
      const slot = this.slots[i]!;
      if (slot === 0) break;
      if (this.keys[i] === key) return slot - 1;
      i = (i + 1) & this.mask;
    }
    this.keys[i] = key;
    this.slots[i] = index + 1;
    if (++this.size * 2 > this.slots.length) this.grow();
    return -1;
  }

  private grow(): void {
    const { keys, slots } = this;
    this.keys = new Float64Array(keys.length * 2);
    this.slots = new Int32Array(slots.length * 2);
    this.mask = this.slots.length - 1;
    for (let j = 0; j < slots.length; j++) {
      if (slots[j] === 0) continue;
      let i = hash(keys[j]!) & this.mask;
      while (this.slots[i] !== 0) i = (i + 1) & this.mask;
      this.keys[i] = keys[j]!;
      this.slots[i] = slots[j]!;
    }
  }
}

/** Mixes both 32-bit halves of an integer below 2^53 (murmur3's finaliser), so every bit counts. */
function hash(key: number): number {
  let h = (key >>> 0) ^ Math.imul(Math.floor(key / 0x1_0000_0000), 0x9e3779b1);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}

export function addValue(sum: number | bigint, value: number): number | bigint {
  if (typeof sum === 'bigint') return sum + BigInt(value);
  const next = sum + value;
  return Number.isSafeInteger(next) ? next : BigInt(sum) + BigInt(value);
}
