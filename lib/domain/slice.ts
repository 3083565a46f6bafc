/**
 * Slice math. A slice id is an absolute number — floor(epochSeconds / sliceSeconds) —
 * so keys never collide when the ring wraps; the ring itself is memcached's TTL.
 */

/** Absolute slice number. */
export type SliceId = number & { readonly __slice: unique symbol };

export function sliceOf(epochMs: number, sliceSeconds: number): SliceId {
  return Math.floor(epochMs / 1000 / sliceSeconds) as SliceId;
}

export function sliceStartMs(slice: SliceId, sliceSeconds: number): number {
  return slice * sliceSeconds * 1000;
}

/**
 * The slice guard for writers: an event is counted into its own slice when that
 * slice is the current one or the one before; anything older is late (the flush
 * may already be reading it) and anything in the future is clamped — both go
 * into the current slice and are reported as late.
 */
export function writeSlice(eventSlice: SliceId, current: SliceId): { slice: SliceId; late: boolean } {
  const slice = guardedSlice(eventSlice, current);
  return { slice, late: slice !== eventSlice };
}

/** The guard's slice alone (late ⇔ it differs from `eventSlice`): allocation-free, for the per-event fold. */
export function guardedSlice(eventSlice: SliceId, current: SliceId): SliceId {
  return eventSlice === current || eventSlice === current - 1 ? eventSlice : current;
}

/**
 * What a flush at `now` may read: finished slices at least two behind the
 * current one (one whole slice between readers and writers), and not older
 * than the ring, whose keys may already have expired.
 */
export function flushableRange(current: SliceId, ringSlices: number): { oldest: SliceId; newest: SliceId } {
  return { oldest: (current - ringSlices + 1) as SliceId, newest: (current - 2) as SliceId };
}
