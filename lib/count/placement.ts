/**
 * Which memcached server holds a key, and how the pool can change without
 * splitting a count.
 *
 * A key goes to `current[fnv1a(shardKey) % current.length]`. Changing the
 * pool would move keys, so a pair counted on one server before the change and
 * on another after it would be split, and a flush reading one place would
 * lose half. So the pool change has two sides:
 *
 * - writers (workers) write counts to the *current* pool only;
 * - readers (the flush) read every place a key may be under the current
 *   *and* the previous pool, and add up what they find on distinct servers;
 * - the fold protocol's single-key records (job claims, decisions, leases:
 *   claims.ts) must be on one server that every worker agrees on, since an
 *   `add` is atomic on one server only: the previous pool's place while one
 *   is configured (a worker not yet restarted has that pool as its current),
 *   else the current's (see `agreed`).
 *
 * A key placed on the same server by both pools is one key and is read once.
 * The operator's steps are in the README ("Changing the memcached pool").
 */
import { label, type HostPort } from '../base/config.ts';

export class Placement {
  /** Every server of both pools, once each: connection i talks to servers[i]. */
  readonly servers: HostPort[];
  private readonly current: number[];
  private readonly previous: number[];

  constructor(current: readonly HostPort[], previous: readonly HostPort[] = []) {
    if (current.length === 0) throw new RangeError('memcached: the pool needs at least one server');
    const index = new Map<string, number>();
    this.servers = [];
    const place = (s: HostPort): number => {
      const key = label(s);
      let i = index.get(key);
      if (i === undefined) {
        index.set(key, (i = this.servers.length));
        this.servers.push(s);
      }
      return i;
    };
    this.current = current.map(place);
    this.previous = previous.map(place);
  }

  /** True while a previous pool is configured: readers look in two places. */
  get changing(): boolean {
    return this.previous.length > 0;
  }

  /** The server (index into `servers`) a writer uses for this shard key. */
  writer(shardKey: string): number {
    return this.current.length === 1 ? this.current[0]! : this.current[fnv1a(shardKey) % this.current.length]!;
  }

  /** Every distinct server a reader must look at for this shard key: the writer's first. */
  readers(shardKey: string): number[] {
    const w = this.writer(shardKey);
    if (this.previous.length === 0) return [w];
    const p = this.previous[fnv1a(shardKey) % this.previous.length]!;
    return p === w ? [w] : [w, p];
  }

  /**
   * The server for a key every worker must find in the same place during a
   * rolling pool change: the previous pool's while one is configured (a
   * worker not yet restarted still has that pool as its current), else the
   * current's.
   */
  agreed(shardKey: string): number {
    if (this.previous.length === 0) return this.writer(shardKey);
    return this.previous[fnv1a(shardKey) % this.previous.length]!;
  }

  /** Every server of the current pool (for what each must hold, like the watermark). */
  get currentServers(): readonly number[] {
    return this.current;
  }
}

export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
