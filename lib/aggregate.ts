/**
 * Pre-aggregation: many events become one delta per (slice, user, action), so
 * memcached sees one increment per pair per fold instead of one per event.
 */
import type { ActionId, LogEvent, UserId } from './event.ts';
import { sliceOf, writeSlice, type SliceId } from './slice.ts';

export interface PairDelta {
  slice: SliceId;
  userId: UserId;
  actionId: ActionId;
  count: number;
  /** A number while it is exact; a bigint once the sum passes 2^53-1. */
  value: number | bigint;
}

export class Deltas {
  /** Keyed by `${slice}:${userId}:${actionId}`. */
  readonly pairs = new Map<string, PairDelta>();
  /** Late (or clamped future) events, by the slice they were counted into. */
  readonly late = new Map<SliceId, number>();
  events = 0;

  /** Folds `event` into the slice the guard allows at `current`. */
  add(event: LogEvent, current: SliceId, sliceSeconds: number): void {
    const target = writeSlice(sliceOf(event.at, sliceSeconds), current);
    if (target.late) this.late.set(target.slice, (this.late.get(target.slice) ?? 0) + 1);
    const key = `${target.slice}:${event.userId}:${event.actionId}`;
    const pair = this.pairs.get(key);
    if (pair === undefined) {
      this.pairs.set(key, { slice: target.slice, userId: event.userId, actionId: event.actionId, count: 1, value: event.value });
    } else {
      pair.count += 1;
      pair.value = addValue(pair.value, event.value);
    }
    this.events += 1;
  }

  addAll(events: readonly LogEvent[], current: SliceId, sliceSeconds: number): void {
    for (const e of events) this.add(e, current, sliceSeconds);
  }

  get lateEvents(): number {
    let n = 0;
    for (const v of this.late.values()) n += v;
    return n;
  }
}

export function addValue(sum: number | bigint, value: number): number | bigint {
  if (typeof sum === 'bigint') return sum + BigInt(value);
  const next = sum + value;
  return Number.isSafeInteger(next) ? next : BigInt(sum) + BigInt(value);
}
