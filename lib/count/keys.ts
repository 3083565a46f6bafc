/**
 * Every memcached key OffLog uses, built in one place (as bullmq's QueueKeys
 * does), from the configured prefix and validated integers only.
 *
 *   {p}{slice}:c:{user}:{action}   count            — on the pair's server
 *   {p}{slice}:v:{user}:{action}   value sum        — on the pair's server; made once non-zero, absent = 0
 *   {p}{slice}:rn                  register chunks written so far   — on the slice's server
 *   {p}{slice}:r:{n}               register chunk n: pairs, 10 bytes each (u64 user, u16 action)
 *   {p}{slice}:n / :late           events counted into the slice / of which late
 *   {p}{slice}:vn                  value-sum counters created (a reader finding fewer knows some were evicted)
 *   {p}{slice}:nv                  events counted by writers that keep `vn` (equal to `n`: `vn` is complete)
 *   {p}{slice}:w                   writers inside the slice right now (see Ring.enter / Ring.seal)
 *   {p}{slice}:hi                  pairs whose value sum reached 2^62, 10 bytes each as the register (see Ring.markHigh)
 *   {p}{slice}:folds               the slice's fold list: "{F}:{events} " appended by each fold before it writes there
 *   {p}j:{unique}                  a job's claim: "{F} {lease}", made with `add` (see claims.ts; "1" is an older version's mark)
 *   {p}f:{F}                       fold F's decision record, made once with `add`: "c {slice}:{events},…" or "a"
 *   {p}lease:{lease}               a worker's lease, refreshed each fold with a short TTL: absent = presumed dead
 *   {p}wm                          the flush's watermark: the last slice it committed
 *   {p}{slice}:b:{fold}:{n}        ring mode `folds`: chunk n of a fold's blob for the slice (foldblob.ts) — on the fold's server
 *
 * Slice numbers are absolute, so keys never collide when the ring wraps.
 */
import { createHash } from 'node:crypto';
import type { ActionId, UserId } from '../domain/contract.ts';
import type { SliceId } from '../domain/slice.ts';

export type SliceCounter = 'rn' | 'n' | 'nv' | 'late' | 'vn' | 'w';

/** A register entry: the user id (u64) and the action id (u16), big-endian, written by Ring and read by SliceReader. */
export const REGISTER_ENTRY_BYTES = 10;

export class RingKeys {
  constructor(readonly prefix: string) {
    // Keys are written to memcached without being re-checked (see Ring.apply), so the prefix is checked here.
    if (!/^[!-~]{0,64}$/.test(prefix)) {
      throw new RangeError(`keyPrefix must be printable ASCII without spaces, at most 64 characters, got ${JSON.stringify(prefix)}`);
    }
  }

  /** `{p}{slice}:` — the start of every key of this slice. */
  slicePrefix(slice: SliceId): string {
    return `${this.prefix}${slice}:`;
  }

  sliceCounter(slice: SliceId, name: SliceCounter): string {
    return `${this.prefix}${slice}:${name}`;
  }

  registerChunk(slice: SliceId, n: number): string {
    return `${this.prefix}${slice}:r:${n}`;
  }

  /** The slice's pairs whose value sum reached 2^62: one found below it was wrapped and never held. */
  highSums(slice: SliceId): string {
    return `${this.prefix}${slice}:hi`;
  }

  count(slice: SliceId, userId: UserId, actionId: ActionId): string {
    return `${this.prefix}${slice}:c:${userId}:${actionId}`;
  }

  valueSum(slice: SliceId, userId: UserId, actionId: ActionId): string {
    return `${this.prefix}${slice}:v:${userId}:${actionId}`;
  }

  job(unique: string): string {
    // Unique ids come from clients: anything that is not a plain safe token is hashed.
    const safe = /^[A-Za-z0-9_.:-]{1,64}$/.test(unique);
    return `${this.prefix}j:${safe ? unique : '#' + createHash('sha256').update(unique).digest('base64url')}`;
  }

  /** The fold list of `slice` (see claims.ts), on the slice's server. */
  foldList(slice: SliceId): string {
    return `${this.prefix}${slice}:folds`;
  }

  /** Fold F's decision record; F is 16 lowercase hex digits (checked by Claims). */
  decision(fold: string): string {
    return `${this.prefix}f:${fold}`;
  }

  /** A worker's lease; the id is 16 lowercase hex digits (checked by Claims). */
  lease(lease: string): string {
    return `${this.prefix}lease:${lease}`;
  }

  watermark(): string {
    return `${this.prefix}wm`;
  }

  /** Ring mode `folds`: chunk `n` (from 0) of fold `fold`'s blob for `slice`. `fold` is 16 hex digits (claims.ts). */
  foldChunk(slice: SliceId, fold: string, n: number): string {
    return `${this.prefix}${slice}:b:${fold}:${n}`;
  }
}

/** Shard keys: what decides a key's server. A pair's two counters share one; a slice's head and register share another. */
export const shardOfPair = (userId: UserId | number, actionId: ActionId): string => `${userId}:${actionId}`;
export const shardOfSlice = (slice: SliceId): string => `slice:${slice}`;
/** A fold's blobs, every slice's, share one server: folds spread over the pool, and a flush reads each fold from one place. */
export const shardOfFold = (fold: string): string => `fold:${fold}`;
