/**
 * The memcached ring: per slice, per (user, action), a count and (once it is
 * not zero) a value sum,
 * plus each slice's register of its pairs (see keys.ts for every key). Every
 * key expires ringSlices × sliceSeconds after it is created: that is the ring.
 *
 * This module writes (the worker's side) and opens slices for reading (the
 * flush's side, in slice-reader.ts). Where keys live is placement.ts's job.
 *
 * A pair is put in the register *before* its counters are created, so a crash
 * can leave a listed pair without counters (reported as missing) but never
 * counters nobody can find. Two workers creating the same pair at once may both
 * list it; readers de-duplicate.
 *
 * Sums never wrap: a fold holds a pair's sum at 2^64 − 1, and a counter
 * memcached wrapped (it wraps silently at 2^64) is set back to 2^64 − 1,
 * where the flush finds and reports it.
 *
 * Writers and the flush never share a slice (the slice guard, and the
 * watermark): a writer announces itself on each slice it is about to write
 * (`{slice}:w`), then reads the flush's watermark; the flush publishes the
 * watermark first, then waits for the slice's writers to leave. Whichever
 * comes first, a writer either sees the watermark and writes elsewhere, or
 * the flush sees the writer and waits for it.
 */
import { MAX_RING_TTL_S, type HostPort } from '../base/config.ts';
import type { Deltas } from '../domain/aggregate.ts';
import { PairFlags } from '../domain/pairtable.ts';
import type { SliceId } from '../domain/slice.ts';
import { U64_MAX_TEXT } from '../domain/u64.ts';
import { Arith, HIGH, MemcacheConnection, type MemcacheOp, type MemcacheReply, type MemcacheTls } from '../wire/memcache.ts';
import { REGISTER_ENTRY_BYTES, RingKeys, shardOfPair, shardOfSlice } from './keys.ts';
import { Placement } from './placement.ts';
import { counterText, SliceReader } from './slice-reader.ts';

export interface RingOptions {
  servers: HostPort[];
  /** The pool before the last change, while slices written under it may still be in the ring. */
  previousServers?: HostPort[];
  keyPrefix: string;
  sliceSeconds: number;
  ringSlices: number;
  opTimeoutMs?: number;
  /** TLS to every server (OFFLOG_MEMCACHED_TLS); omitted or null: plain TCP. */
  tls?: MemcacheTls | null;
  /** What a writer remembers of the counters it made, per slice (PairFlags' bound and hash width; tests narrow them). */
  knownPairs?: { maxPairs?: number; hashBits?: number };
}

/** notNumbers: counters memcached refused because they hold something that is not a number (skipped; the flush reports their slice corrupt). */
export interface ApplyStats { ops: number; newPairs: number; wrapped: number; notNumbers: number }

/** 50,000 pairs × 10 bytes: well under memcached's 1 MB item limit. */
const CHUNK_PAIRS = 50_000;
/**
 * A server's counter writes of one step are split over this many connections
 * once there are at least SPLIT_MIN of them: memcached serves a connection on
 * one of its threads, so one connection makes its work serial, and a fold's
 * ~100k operations were the worker's critical path while a core sat idle.
 * Each step still waits for every reply before the next (the order the
 * header's guarantees need), so which connection carries a write does not
 * matter.
 */
const WRITE_LANES = 2;
const SPLIT_MIN = 8192;
const MAX_RACE_RETRIES = 5;
/** A value sum at or past this may wrap on a later increment: its pair is marked first (see markHigh). */
const HIGH_SUM = 2n ** 62n;

export class Ring {
  readonly keys: RingKeys;
  readonly placement: Placement;
  private readonly conns: MemcacheConnection[];
  /** Per server, the connections after the first that counter writes are split over (see WRITE_LANES). */
  private readonly lanes: MemcacheConnection[][];
  readonly ttl: number;
  /** memcached operations issued since start (for benchmarks and status). */
  ops = 0;
  /** Per slice being written, the pairs whose counters this Ring knows exist (see apply). */
  private readonly known = new Map<SliceId, PairFlags>();
  /** Slices whose `vn` this Ring has made sure exists before adding a value sum there (see apply). */
  private readonly sumsAnnounced = new Set<SliceId>();
  private readonly knownOptions: { maxPairs?: number; hashBits?: number };
  /** Per slice, the pairs (hi:lo:action) this Ring has marked as holding a high sum (see markHigh). */
  private readonly highMarked = new Map<SliceId, Set<string>>();

  constructor(options: RingOptions) {
    this.keys = new RingKeys(options.keyPrefix);
    this.placement = new Placement(options.servers, options.previousServers ?? []);
    const connect = (s: HostPort): MemcacheConnection => new MemcacheConnection(s, { opTimeoutMs: options.opTimeoutMs ?? 5000, tls: options.tls ?? null });
    this.conns = this.placement.servers.map(connect);
    // Made now, connected on first use.
    this.lanes = this.placement.servers.map((s) => Array.from({ length: WRITE_LANES - 1 }, () => connect(s)));
    this.ttl = options.ringSlices * options.sliceSeconds;
    if (this.ttl > MAX_RING_TTL_S) throw new RangeError(`ring lifetime ${options.sliceSeconds} s × ${options.ringSlices} slices = ${this.ttl} s is over memcached's 30-day relative expiry (${MAX_RING_TTL_S} s): every key would be born expired`);
    this.knownOptions = options.knownPairs ?? {};
  }

  get connections(): readonly MemcacheConnection[] {
    return this.conns;
  }

  /**
   * Stores a fold's deltas. Resolves once every counter is in memcached; a
   * rejection means some may be, which is why jobs are acknowledged only after.
   *
   * Counters this Ring knows exist (it made or incremented them earlier in
   * the slice: see PairFlags) are incremented; the others are upserted
   * (incremented, or created if absent, in one atomic operation: Arith), their
   * pairs listed in the register first. An upsert costs one operation whether
   * or not another writer made the counter first, so a second worker no longer
   * pays an `add` that fails and then an `incr` for each counter the other
   * made. A value sum is made only for a non-zero sum: readers take a missing
   * one as 0. Round trips: the register, when there are new pairs (per slice,
   * in parallel); one batch per server of increments and upserts together;
   * then only for increments that found nothing (evicted, or a shared hash:
   * the pair is listed again and its counters upserted); then, only if
   * memcached wrapped a counter, setting it back to 2^64 − 1; then the slice
   * totals.
   *
   * The totals (`n`, `nv`, `late`, `vn`) go last so that they never lead the
   * pairs: a fold cut short (a worker killed, a connection lost mid-store)
   * and applied again then leaves the rows at or above the slice's event
   * total, never below, and the flush's "rows hold fewer events than the
   * workers counted" keeps meaning that counters were lost, not that a fold
   * was counted one and a half times. The same holds for `vn`: value sums a
   * cut-short fold made are never counted (its retry finds them made), so
   * `vn` may fall short of the sums found, never exceed them, and "fewer
   * sums found than made" still means evicted. Since `vn` can then be 0
   * where sums exist, a reader tells "no sum in the slice" by `vn` being
   * absent: a writer makes it (as 0) before adding its first value sum there.
   */
  async apply(deltas: Deltas): Promise<ApplyStats> {
    const pairs = deltas.pairs;
    const before = this.ops;
    const { keys, placement } = this;
    // Counters are named by tags, their keys made only while a command is written (see Counters).
    const totals: string[] = [];
    const keyOf = (tag: number): string => {
      if (tag < 0) return totals[-tag - 1]!;
      const d = pairs[tag >> 1]!;
      return (tag & 1) === 0 ? keys.count(d.slice, d.userId, d.actionId) : keys.valueSum(d.slice, d.userId, d.actionId);
    };
    const counters = new Counters(keyOf);
    // Counters that hold something else than a number: skipped, as the flush skips them (and reports the slice).
    const notNumbers = { count: 0 };
    const single = placement.servers.length === 1;
    this.forgetClosedSlices(deltas);
    // 1. Each pair's count (tag 2i) and value sum (2i + 1): incremented when known to exist, else
    // upserted (incremented, or created, in one atomic step: see Arith). An upserted count is not read
    // back: a pair's count is at most its slice's event total, which does not reach 2^64 (see step 4),
    // so it cannot wrap, and that it was made here tells nothing. An upserted sum is read back, to catch
    // a wrap and to learn whether this apply made it (for `vn`). Increments are read back as ever.
    const writes = this.conns.map(() => counters.list());
    const fresh: number[] = [];
    const withSums = new Set<SliceId>();
    // Pairs whose value sum may wrap now (a huge amount), or later (the sum is past 2^62): see markHigh.
    const risky: number[] = [];
    const high: number[] = [];
    let table: PairFlags | null = null;
    let tableSlice = Number.NaN;
    for (let i = 0; i < pairs.length; i++) {
      const d = pairs[i]!;
      if (d.slice !== tableSlice) (table = this.knownIn(d.slice)), (tableSlice = d.slice);
      const known = table!.get(deltas.hi(i), deltas.lo(i), d.actionId);
      const list = writes[single ? 0 : placement.writer(shardOfPair(d.userId, d.actionId))]!;
      if ((known & PairFlags.COUNT) !== 0) list.push(2 * i, d.count, Arith.INCR);
      else {
        fresh.push(i);
        list.push(2 * i, d.count, Arith.UPSERT);
      }
      if (d.value !== 0) {
        list.push(2 * i + 1, d.value, (known & PairFlags.SUM) !== 0 ? Arith.INCR : Arith.UPSERT_READ);
        withSums.add(d.slice);
        // An amount this large can wrap the sum at once: the pair is marked before it is sent.
        if (typeof d.value === 'bigint' && d.value >= HIGH_SUM) risky.push(i);
      }
    }
    // Value sums this apply created, per slice: counted on the slice (`vn`) with the totals, so that a
    // reader can tell a value sum that is absent because it is 0 from one that was evicted.
    const made = new Map<SliceId, number>();
    // Counters memcached wrapped past 2^64 − 1 (and back to near 0), per server.
    const wraps = this.conns.map(() => counters.list());
    // What came back: sums made and wrapped are noted; counters not found, returned per server.
    const settle = (lists: CounterList[], flags: Uint8Array[]): CounterList[] => lists.map((l, server) => {
      const missing = counters.list();
      const f = flags[server]!;
      for (let k = 0; k < l.length; k++) {
        const tag = l.tags[k]!;
        if (f[k] === 0) missing.push(tag, l.amounts[k]!, (tag & 1) === 0 ? Arith.UPSERT : Arith.UPSERT_READ);
        else if (f[k] === 2) {
          wraps[server]!.push(tag, 0);
          if (tag >= 0 && (tag & 1) === 1) high.push(tag >> 1);
        } else if (f[k] === HIGH && tag >= 0 && (tag & 1) === 1) high.push(tag >> 1);
        else if (f[k] === 3 && tag >= 0 && (tag & 1) === 1) {
          const slice = pairs[tag >> 1]!.slice;
          made.set(slice, (made.get(slice) ?? 0) + 1);
        }
      }
      return missing;
    });
    // A pair is listed before any counter of it can exist, and a slice's `vn` made before any value sum of it.
    await Promise.all([fresh.length > 0 ? this.register(deltas, fresh) : null, this.announceSums(withSums), this.markHigh(deltas, risky)]);
    const missing = settle(writes, await this.arith(writes, notNumbers));
    // 2. Wrong guesses: counters thought to exist and not found (evicted, or a shared hash in
    // PairFlags). A pair whose count is missing is listed again, then what was missing is upserted.
    const unlisted: number[] = [];
    for (const m of missing) for (const tag of m.tags) if ((tag & 1) === 0) unlisted.push(tag >> 1);
    if (missing.some((m) => m.length > 0)) {
      if (unlisted.length > 0) await this.register(deltas, unlisted);
      const gone = settle(missing, await this.arith(missing, notNumbers));
      if (gone.some((m) => m.length > 0)) throw new Error(`memcached: an upsert of ${gone.find((m) => m.length > 0)!.at(0)} found nothing`);
    }
    // 3. Counters memcached wrapped: their true totals are past 2^64 − 1, so they are held there (the flush reports them).
    const held = wraps.map((w) => Array.from({ length: w.length }, (_, i): MemcacheOp => ({ kind: 'set', key: w.at(i)!, value: U64_MAX_TEXT, ttl: this.ttl })));
    await Promise.all([...held.map((ops, server) => this.exec(server, ops)), this.markHigh(deltas, high)]);
    // 4. The slice totals (tags −1, −2, …), once every pair's counters are in (see above).
    const sums = this.conns.map(() => counters.list());
    const total = (slice: SliceId, name: 'n' | 'nv' | 'late' | 'vn', n: number): void => {
      totals.push(keys.sliceCounter(slice, name));
      sums[placement.writer(shardOfSlice(slice))]!.push(-totals.length, n, Arith.UPSERT);
    };
    const perSlice = new Map<SliceId, number>();
    for (const d of pairs) perSlice.set(d.slice, (perSlice.get(d.slice) ?? 0) + d.count);
    // `nv` beside `n` (in that order, in one batch to one server): while they agree, no writer of an older
    // version (which made every value sum, and did not count them in `vn`) wrote to the slice.
    for (const [slice, n] of perSlice) total(slice, 'n', n), total(slice, 'nv', n);
    for (const [slice, n] of deltas.late) total(slice, 'late', n);
    for (const [slice, n] of made) total(slice, 'vn', n);
    // A slice's event total does not reach 2^64: a wrap there is not looked for.
    await this.arith(sums, notNumbers);
    // Everything of the fold exists now.
    for (let i = 0; i < pairs.length; i++) {
      const d = pairs[i]!;
      if (d.slice !== tableSlice) (table = this.knownIn(d.slice)), (tableSlice = d.slice);
      table!.add(deltas.hi(i), deltas.lo(i), d.actionId, d.value !== 0 ? PairFlags.COUNT | PairFlags.SUM : PairFlags.COUNT);
    }
    return { ops: this.ops - before, newPairs: fresh.length + unlisted.length, wrapped: held.reduce((n, ops) => n + ops.length, 0), notNumbers: notNumbers.count };
  }

  /**
   * Makes each slice's `vn` exist (as 0 if no one made it yet) before this
   * Ring adds a value sum there, once per slice: a reader that finds no `vn`
   * may then skip the slice's value sums (see SliceReader).
   */
  private async announceSums(slices: ReadonlySet<SliceId>): Promise<void> {
    const byServer = new Map<number, MemcacheOp[]>();
    const announced: SliceId[] = [];
    for (const slice of slices) {
      if (this.sumsAnnounced.has(slice)) continue;
      const home = this.placement.writer(shardOfSlice(slice));
      let ops = byServer.get(home);
      if (!ops) byServer.set(home, (ops = []));
      ops.push({ kind: 'add', key: this.keys.sliceCounter(slice, 'vn'), value: '0', ttl: this.ttl });
      announced.push(slice);
    }
    if (announced.length === 0) return;
    await Promise.all([...byServer].map(([s, ops]) => this.exec(s, ops)));
    for (const slice of announced) this.sumsAnnounced.add(slice);
  }

  /**
   * Lists pairs (indexes into deltas.pairs) in their slices' high-sum lists
   * (`{slice}:hi`), once per Ring. A sum memcached wraps is set back to
   * 2^64 − 1 by its writer, but a writer that dies between the two leaves a
   * small value that later increments build on. A wrap needs the sum past
   * 3 × 2^62 before an increment below 2^62, or an increment of 2^62 or more:
   * the first is marked by the writer that saw the sum past 2^62 (after its
   * increment), the second before it is sent. A reader that finds a listed
   * pair's sum below 2^62 knows it wrapped. Left unmarked only if the writers
   * of two increments of the same pair both die between increment and mark.
   */
  private async markHigh(deltas: Deltas, which: readonly number[]): Promise<void> {
    const bySlice = new Map<SliceId, { entries: Buffer[]; ids: string[] }>();
    for (const i of which) {
      const d = deltas.pairs[i]!;
      const id = `${deltas.hi(i)}:${deltas.lo(i)}:${d.actionId}`;
      let marked = this.highMarked.get(d.slice);
      if (!marked) this.highMarked.set(d.slice, (marked = new Set()));
      if (marked.has(id)) continue;
      let list = bySlice.get(d.slice);
      if (!list) bySlice.set(d.slice, (list = { entries: [], ids: [] }));
      if (list.ids.includes(id)) continue;
      const e = Buffer.allocUnsafe(REGISTER_ENTRY_BYTES);
      e.writeUInt32BE(deltas.hi(i), 0);
      e.writeUInt32BE(deltas.lo(i), 4);
      e.writeUInt16BE(d.actionId, 8);
      list.entries.push(e);
      list.ids.push(id);
    }
    await Promise.all([...bySlice].map(async ([slice, { entries, ids }]) => {
      const key = this.keys.highSums(slice);
      const home = this.placement.writer(shardOfSlice(slice));
      const value = Buffer.concat(entries);
      for (let attempt = 0; ; attempt++) {
        const [added] = await this.exec(home, [{ kind: 'add', key, value, ttl: this.ttl }]);
        if (added === true) break;
        const [appended] = await this.exec(home, [{ kind: 'append', key, value }]);
        if (appended === true) break;
        if (attempt === MAX_RACE_RETRIES) throw new Error(`memcached: could not write ${key} after ${MAX_RACE_RETRIES} attempts`);
      }
      for (const id of ids) this.highMarked.get(slice)!.add(id);
    }));
  }

  /** What this Ring knows exists in `slice` (made on first use). */
  private knownIn(slice: SliceId): PairFlags {
    let t = this.known.get(slice);
    if (!t) this.known.set(slice, (t = new PairFlags(this.knownOptions.maxPairs, this.knownOptions.hashBits)));
    return t;
  }

  /**
   * Drops what is known of slices no writer may write any more (older than
   * the one before the newest slice of this fold): the tables' memory is
   * bounded by the two slices being written.
   */
  private forgetClosedSlices(deltas: Deltas): void {
    let newest = -Infinity;
    for (const d of deltas.pairs) if (d.slice > newest) newest = d.slice;
    for (const s of this.known.keys()) if (s < newest - 1) this.known.delete(s);
    for (const s of this.sumsAnnounced) if (s < newest - 1) this.sumsAnnounced.delete(s);
    for (const s of this.highMarked.keys()) if (s < newest - 1) this.highMarked.delete(s);
  }

  /**
   * A writer's announcement before writing to `slices` (see the header): the
   * slices' writer counts go up, and then the flush's watermark is read. A
   * caller must call leave() with the same slices afterwards, whatever happens.
   *
   * One round trip: on the server that holds a slice's writer count, the
   * watermark is read in the same pipelined write, *after* the increment
   * (memcached answers a connection's commands in order), which is all the
   * protocol needs, since the flush publishes the watermark on every server.
   * The other servers of the pool are asked for it at the same time, so one
   * that lost it (restarted) is outvoted.
   */
  async enter(slices: readonly SliceId[]): Promise<SliceId | null> {
    const wmKey = this.keys.watermark();
    const bySlice = new Map<number, SliceId[]>();
    for (const s of slices) {
      const home = this.placement.writer(shardOfSlice(s));
      let list = bySlice.get(home);
      if (!list) bySlice.set(home, (list = []));
      list.push(s);
    }
    const asked = new Set<number>([...bySlice.keys(), ...this.placement.currentServers]);
    let again = false;
    // Slices whose count this call is known to have raised (their incr answered): taken back if the call fails.
    const raised: SliceId[] = [];
    const settled = await Promise.allSettled([...asked].map(async (server) => {
      const ops: MemcacheOp[] = [];
      const mine = bySlice.get(server) ?? [];
      // `add` then `incr`: the count exists whether or not another writer created it first.
      for (const s of mine) {
        const key = this.keys.sliceCounter(s, 'w');
        ops.push({ kind: 'add', key, value: '0', ttl: this.ttl }, { kind: 'incr', key, amount: 1 });
      }
      ops.push({ kind: 'get', key: wmKey });
      const replies = await this.exec(server, ops);
      for (let i = 1; i < replies.length - 1; i += 2) {
        const slice = mine[(i - 1) / 2]!;
        if (replies[i] !== null) {
          raised.push(slice);
          continue;
        }
        // Gone between the add and the incr (evicted at once): announce the slow way, then read the watermark again.
        await this.reserve(this.keys.sliceCounter(slice, 'w'), server, 1);
        raised.push(slice);
        again = true;
      }
      return replies[replies.length - 1];
    }));
    const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      // The caller never learns of these, so it cannot leave them: a count left up would make the flush wait
      // for a writer that is not there. (A server that failed mid-request may or may not have applied its
      // incr; that one is left, since taking back another writer's announcement could lose its counts.)
      await this.leave(raised);
      throw failed.reason;
    }
    const found = settled.map((r) => (r as PromiseFulfilledResult<MemcacheReply | undefined>).value);
    const wm = maxWatermark(found);
    if (!again) return wm;
    const later = await this.watermark();
    return later !== null && (wm === null || later > wm) ? later : wm;
  }

  /**
   * The writer is out of `slices`. Resolves once the decrements are written,
   * not answered: the fold's writes were all answered before this is called,
   * so the flush can only see the count drop after them, and a decrement lost
   * with its connection leaves the count up, which the flush waits out (as for
   * a writer that died inside).
   */
  async leave(slices: readonly SliceId[]): Promise<void> {
    for (const s of slices) {
      this.exec(this.placement.writer(shardOfSlice(s)), [{ kind: 'decr', key: this.keys.sliceCounter(s, 'w'), amount: 1 }]).catch(() => undefined);
    }
  }

  /** The last slice the flush took (from any server of the current pool), or null if none says. */
  async watermark(): Promise<SliceId | null> {
    const key = this.keys.watermark();
    return maxWatermark(await Promise.all(this.placement.currentServers.map((s) => this.exec(s, [{ kind: 'get', key }]).then(([v]) => v))));
  }

  /**
   * The flush's side: publishes `slice` as taken (on every server, so any
   * writer's pool finds it; never lowered), then waits until no writer is
   * inside the slice, up to `waitMs`. Returns the writers still inside then
   * (a writer that died inside leaves its count until the key expires).
   */
  async seal(slice: SliceId, waitMs: number): Promise<number> {
    const key = this.keys.watermark();
    const current = await this.watermark();
    if (current === null || slice > current) {
      await Promise.all(this.placement.servers.map((_, s) => this.exec(s, [{ kind: 'set', key, value: String(slice), ttl: 0 }])));
    }
    const deadline = Date.now() + waitMs;
    for (let delay = 5; ; delay = Math.min(200, delay * 2)) {
      const inside = await this.writersIn(slice);
      if (inside === 0 || Date.now() >= deadline) return inside;
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  /** The writers announced on `slice` now (its `w`, over every server that may hold it). */
  async writersIn(slice: SliceId): Promise<number> {
    const w = this.keys.sliceCounter(slice, 'w');
    let inside = 0;
    for (const h of this.placement.readers(shardOfSlice(slice))) {
      const [v] = await this.exec(h, [{ kind: 'get', key: w }]);
      const text = v instanceof Buffer ? counterText(v) : null;
      inside += text === null ? 0 : Number(text);
    }
    return inside;
  }

  /** Opens a finished slice for reading in batches of at most `batchPairs` pairs (see SliceReader). */
  openSlice(slice: SliceId, batchPairs: number): Promise<SliceReader> {
    return SliceReader.open(slice, batchPairs, { keys: this.keys, placement: this.placement, conns: this.conns, countOps: (n) => (this.ops += n) });
  }

  /** Each server's identity (pid, and start time = time − uptime): a change means it restarted and lost its items. */
  async bootTimes(): Promise<{ server: string; pid: number; bootedAt: number; items: number; bytes: number; limitBytes: number; evictions: number }[]> {
    return Promise.all(
      this.conns.map(async (c) => {
        const s = await c.stats();
        return {
          server: `${c.address.host}:${c.address.port}`,
          pid: Number(s.pid),
          bootedAt: Number(s.time) - Number(s.uptime),
          items: Number(s.curr_items),
          bytes: Number(s.bytes),
          limitBytes: Number(s.limit_maxbytes),
          evictions: Number(s.evictions),
        };
      }),
    );
  }

  async close(): Promise<void> {
    await Promise.all([...this.conns, ...this.lanes.flat()].map((c) => c.close()));
  }

  // ── internals ──

  /** Lists pairs (indexes into deltas.pairs) in their slices' registers, every slice at once. */
  private async register(deltas: Deltas, which: readonly number[]): Promise<void> {
    const bySlice = new Map<SliceId, number[]>();
    for (const i of which) {
      const slice = deltas.pairs[i]!.slice;
      let list = bySlice.get(slice);
      if (!list) bySlice.set(slice, (list = []));
      list.push(i);
    }
    await Promise.all([...bySlice].map(([slice, list]) => this.registerSlice(slice, deltas, list)));
  }

  private async registerSlice(slice: SliceId, deltas: Deltas, list: number[]): Promise<void> {
    const chunkCount = Math.ceil(list.length / CHUNK_PAIRS);
    const home = this.placement.writer(shardOfSlice(slice));
    // Reserve chunk numbers first: incr is atomic, so concurrent workers never share one.
    const last = await this.reserve(this.keys.sliceCounter(slice, 'rn'), home, chunkCount);
    const ops: MemcacheOp[] = [];
    for (let c = 0; c < chunkCount; c++) {
      const from = c * CHUNK_PAIRS;
      const to = Math.min(list.length, from + CHUNK_PAIRS);
      const buf = Buffer.allocUnsafe((to - from) * REGISTER_ENTRY_BYTES);
      for (let j = from; j < to; j++) {
        const i = list[j]!;
        const o = (j - from) * REGISTER_ENTRY_BYTES;
        buf.writeUInt32BE(deltas.hi(i), o);
        buf.writeUInt32BE(deltas.lo(i), o + 4);
        buf.writeUInt16BE(deltas.pairs[i]!.actionId, o + 8);
      }
      ops.push({ kind: 'set', key: this.keys.registerChunk(slice, last - chunkCount + c + 1), value: buf, ttl: this.ttl });
    }
    await this.exec(home, ops);
  }

  /** incr-or-create a counter and return its new value. */
  private async reserve(key: string, server: number, amount: number): Promise<number> {
    for (let attempt = 0; attempt < MAX_RACE_RETRIES; attempt++) {
      const [n] = await this.exec(server, [{ kind: 'incr', key, amount }]);
      if (n !== null) return Number(n);
      const [stored] = await this.exec(server, [{ kind: 'add', key, value: String(amount), ttl: this.ttl }]);
      if (stored === true) return amount;
    }
    throw new Error(`memcached: could not create ${key} after ${MAX_RACE_RETRIES} attempts`);
  }

  /** Increments and upserts each server's counters (see Arith), every server's batch at once; the flags per server. */
  private async arith(lists: CounterList[], notNumbers: { count: number }): Promise<Uint8Array[]> {
    return Promise.all(
      lists.map(async (l, server) => {
        if (l.length === 0) return new Uint8Array(0);
        this.ops += l.length;
        // Keys built here from the checked prefix and numbers: memcache need not check them again.
        const valid = { keysValid: true, notNumbers, flagHigh: true };
        if (l.length < SPLIT_MIN) return this.conns[server]!.arithMany(l, l.amounts, l.modes, this.ttl, valid);
        const lanes = [this.conns[server]!, ...this.lanes[server]!];
        const per = Math.ceil(l.length / lanes.length);
        const parts = await Promise.all(lanes.map((c, j) => {
          const from = j * per;
          const to = Math.min(l.length, from + per);
          const keys = { length: to - from, at: (i: number) => l.at(from + i) };
          return c.arithMany(keys, l.amounts.slice(from, to), l.modes.slice(from, to), this.ttl, valid);
        }));
        const flags = new Uint8Array(l.length);
        parts.forEach((f, j) => flags.set(f, j * per));
        return flags;
      }),
    );
  }

  private exec(server: number, ops: MemcacheOp[]): Promise<MemcacheReply[]> {
    if (ops.length === 0) return Promise.resolve([]);
    this.ops += ops.length;
    return this.conns[server]!.exec(ops);
  }
}

/** The highest watermark among the replies of several servers (null where a server has none). */
function maxWatermark(replies: readonly (MemcacheReply | undefined)[]): SliceId | null {
  let wm: number | null = null;
  for (const v of replies) {
    const text = v instanceof Buffer ? counterText(v) : null;
    if (text !== null && (wm === null || Number(text) > wm)) wm = Number(text);
  }
  return wm as SliceId | null;
}

/**
 * The counters of one apply, named by number (tag) rather than by key: a
 * fold may touch a million counters, and holding a key string for each while
 * memcached answers made them live long enough to be expensive garbage.
 * `keyOf` makes a tag's key when a command is written, or an error named.
 */
class Counters {
  constructor(readonly keyOf: (tag: number) => string) {}

  list(): CounterList {
    return new CounterList(this);
  }
}

/** Counters bound for one server, with their amounts; a KeyList for MemcacheConnection's bulk calls. */
class CounterList {
  readonly tags: number[] = [];
  readonly amounts: (number | bigint)[] = [];
  /** Arith modes (arithMany). */
  readonly modes: number[] = [];

  constructor(readonly counters: Counters) {}

  get length(): number {
    return this.tags.length;
  }

  at(i: number): string | undefined {
    const tag = this.tags[i];
    return tag === undefined ? undefined : this.counters.keyOf(tag);
  }

  push(tag: number, amount: number | bigint, mode: number = Arith.INCR): void {
    this.tags.push(tag);
    this.amounts.push(amount);
    this.modes.push(mode);
  }
}
