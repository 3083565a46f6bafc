/**
 * The memcached ring: per slice, per (user, action), a count and a value sum.
 *
 * Keys (prefix `ol:` by default, slice = absolute slice number):
 *   {p}{slice}:c:{user}:{action}   count            — on the pair's server
 *   {p}{slice}:v:{user}:{action}   value sum        — on the pair's server
 *   {p}{slice}:rn                  register chunks written so far   — on the slice's server
 *   {p}{slice}:r:{n}               register chunk n: pairs, 10 bytes each (u64 user, u16 action)
 *   {p}{slice}:n / :late           events counted into the slice / of which late
 *   {p}j:{unique}                  "job applied" marks (idempotency)
 * Every key expires ringSlices × sliceSeconds after it is created: that is the ring.
 *
 * A pair is put in the register *before* its counters are created, so a crash
 * can leave a listed pair without counters (reported as missing) but never
 * counters nobody can find. Two workers creating the same pair at once may both
 * list it; readers de-duplicate.
 */
import { createHash } from 'node:crypto';
import type { HostPort } from './config.ts';
import type { Deltas, PairDelta } from './aggregate.ts';
import { MemcacheConnection, type MemcacheOp, type MemcacheReply } from './memcache.ts';
import type { SliceId } from './slice.ts';
import type { ActionId, UserId } from './event.ts';
import { PairSet } from './pairset.ts';
import { isU64Decimal, U64Sum } from './u64.ts';

export interface RingOptions {
  servers: HostPort[];
  keyPrefix: string;
  sliceSeconds: number;
  ringSlices: number;
  opTimeoutMs?: number;
}

/** What memcached holds for one finished slice. */
export interface SliceContents {
  slice: SliceId;
  rows: { userId: UserId; actionId: ActionId; count: bigint; valueSum: bigint }[];
  /** Pairs listed in the register whose count or value key is gone (evicted, or memcached restarted). */
  missingPairs: number;
  /** Register chunks counted but gone: their pairs are unknown. */
  missingChunks: number;
  /** Events the workers counted into this slice (null when the counter itself is gone). */
  events: bigint | null;
  late: bigint;
}

/**
 * A batch of a slice's rows as the flush writes them: parallel arrays, row i
 * being (users[i], actions[i], counts[i], valueSums[i]). Ids and totals stay
 * decimal text, as memcached holds them and SQL wants them: no BigInt per pair.
 */
export interface CountRows {
  length: number;
  /** Unsigned 64-bit decimals. */
  users: string[];
  actions: number[];
  /** Unsigned 64-bit decimals. */
  counts: string[];
  /** Unsigned 64-bit decimals. */
  valueSums: string[];
}

/** A slice's head: read once, before its pairs. */
export interface SliceHead {
  slice: SliceId;
  /** Register chunks reserved by the writers (some may be gone). */
  chunks: number;
  /** Events the workers counted into this slice (null when the counter itself is gone). */
  events: bigint | null;
  late: bigint;
}

/** What a SliceReader found, once it has read the whole slice. */
export interface SliceTotals extends SliceHead {
  /** Distinct pairs whose counters were read. */
  rows: number;
  /** Sum of the rows' counts, to compare with `events`. */
  counted: bigint;
  missingPairs: number;
  missingChunks: number;
  /** Pairs listed more than once (two workers raced to create them); read once. */
  duplicates: number;
}

/** memcached holds something in a ring key that is not what OffLog writes there. */
export class RingDataError extends Error {
  override name = 'RingDataError';
}

export interface ApplyStats { ops: number; newPairs: number }

const ENTRY_BYTES = 10;
/** 50,000 pairs × 10 bytes: well under memcached's 1 MB item limit. */
const CHUNK_PAIRS = 50_000;
const MAX_RACE_RETRIES = 5;
/** Register chunks fetched per round trip while reading: at most 16 × 500 KB in memory at once. */
const REGISTER_CHUNKS_PER_GET = 16;
/** Batch size for Ring.read, which keeps everything anyway. */
const READ_BATCH_PAIRS = 5000;

export class Ring {
  private readonly conns: MemcacheConnection[];
  private readonly p: string;
  readonly ttl: number;
  /** memcached operations issued since start (for benchmarks and status). */
  ops = 0;

  constructor(private readonly options: RingOptions) {
    // apply() builds keys from this prefix and numbers and has memcache skip re-checking each
    // one, so the prefix is checked here (config.ts holds OFFLOG_KEY_PREFIX to the same rule).
    if (!/^[!-~]{0,64}$/.test(options.keyPrefix)) {
      throw new RangeError(`keyPrefix must be printable ASCII without spaces, at most 64 characters, got ${JSON.stringify(options.keyPrefix)}`);
    }
    this.conns = options.servers.map((s) => new MemcacheConnection(s, { opTimeoutMs: options.opTimeoutMs ?? 5000 }));
    this.p = options.keyPrefix;
    this.ttl = options.ringSlices * options.sliceSeconds;
  }

  get connections(): readonly MemcacheConnection[] {
    return this.conns;
  }

  /**
   * Stores a fold's deltas. Resolves once every increment is in memcached; a
   * rejection means some may be, which is why jobs are acknowledged only after.
   *
   * Round trips: one batch of increments per server (every pair's counters
   * and the slice totals together); then, only for what did not exist yet,
   * the register (per slice, in parallel) and one batch of `add`s per server.
   */
  async apply(deltas: Deltas): Promise<ApplyStats> {
    const pairs = deltas.pairs;
    const before = this.ops;
    // Counters are named by tags, their keys made only while a command is written (see Counters).
    const totals: string[] = [];
    const counters = new Counters((tag) => (tag >= 0 ? this.pairKey(pairs[tag >> 1]!, (tag & 1) === 0 ? 'c' : 'v') : totals[-tag - 1]!));
    // 1. Increment the counters that exist: every pair's count (tag 2i) and value sum (2i + 1), and the slice totals.
    const bumps = this.conns.map(() => counters.list());
    for (let i = 0; i < pairs.length; i++) {
      const d = pairs[i]!;
      const to = bumps[this.pairServer(d)]!;
      to.push(2 * i, d.count);
      if (d.value !== 0) to.push(2 * i + 1, d.value);
    }
    const perSlice = new Map<SliceId, number>();
    for (const d of pairs) perSlice.set(d.slice, (perSlice.get(d.slice) ?? 0) + d.count);
    const total = (slice: SliceId, name: string, n: number): void => {
      totals.push(this.sliceKey(slice, name));
      bumps[this.sliceServer(slice)]!.push(-totals.length, n);
    };
    for (const [slice, n] of perSlice) total(slice, 'n', n);
    for (const [slice, n] of deltas.late) total(slice, 'late', n);
    const missing = await this.incr(bumps);
    // 2. Pairs new to this slice (their count was missing): list them in the
    // register first, then create their counters, the value sum too even when 0.
    const created: PairDelta[] = [];
    for (const m of missing) {
      const found = m.tags.length;
      for (let j = 0; j < found; j++) {
        const tag = m.tags[j]!;
        if (tag < 0 || (tag & 1) === 1) continue;
        const d = pairs[tag >> 1]!;
        created.push(d);
        if (d.value === 0) m.push(tag + 1, 0);
      }
    }
    if (created.length > 0) await this.register(created);
    await this.ensure(missing);
    return { ops: this.ops - before, newPairs: created.length };
  }

  /** Which of these jobs (by unique id) were already applied. */
  async appliedJobs(uniques: readonly string[]): Promise<Set<string>> {
    const keys = uniques.filter(Boolean).map((u) => this.jobKey(u));
    const done = new Set<string>();
    if (keys.length === 0) return done;
    const found = await this.getAll(keys.map((key) => ({ key, server: this.serverOf(key) })));
    for (const u of uniques) if (u && found.has(this.jobKey(u))) done.add(u);
    return done;
  }

  /** Marks jobs applied, so a redelivered copy (worker crash before its ack, client re-send) is skipped. */
  async markApplied(uniques: readonly string[]): Promise<void> {
    const byServer = new Map<number, MemcacheOp[]>();
    for (const u of uniques) {
      if (!u) continue;
      const key = this.jobKey(u);
      const s = this.serverOf(key);
      let ops = byServer.get(s);
      if (!ops) byServer.set(s, (ops = []));
      ops.push({ kind: 'set', key, value: '1', ttl: this.ttl });
    }
    await Promise.all([...byServer].map(([s, ops]) => this.exec(s, ops)));
  }

  /**
   * Opens a finished slice for reading in batches of at most `batchPairs`
   * pairs (see SliceReader): only the slice's head is read here.
   */
  async openSlice(slice: SliceId, batchPairs: number): Promise<SliceReader> {
    const home = this.sliceServer(slice);
    const [rn, n, late] = await this.exec(home, [
      { kind: 'get', key: this.sliceKey(slice, 'rn') },
      { kind: 'get', key: this.sliceKey(slice, 'n') },
      { kind: 'get', key: this.sliceKey(slice, 'late') },
    ]);
    const head: SliceHead = {
      slice,
      chunks: rn ? Number(counterText(this.sliceKey(slice, 'rn'), rn as Buffer)) : 0,
      events: n ? BigInt(counterText(this.sliceKey(slice, 'n'), n as Buffer)) : null,
      late: late ? BigInt(counterText(this.sliceKey(slice, 'late'), late as Buffer)) : 0n,
    };
    return new SliceReader(head, batchPairs, {
      keyPrefix: `${this.p}${slice}:`,
      home,
      getMulti: (server, keys) => {
        this.ops += keys.length;
        return this.conns[server]!.getMulti(keys);
      },
      pairServer: (userId, actionId) => this.serverOf(`${userId}:${actionId}`),
      servers: this.conns.length,
    });
  }

  /**
   * Reads a whole finished slice into memory. For small slices and the status
   * command; the flush streams with openSlice instead.
   */
  async read(slice: SliceId): Promise<SliceContents> {
    const reader = await this.openSlice(slice, READ_BATCH_PAIRS);
    const rows: SliceContents['rows'] = [];
    for (let batch = await reader.next(); batch !== null; batch = await reader.next()) {
      for (let i = 0; i < batch.length; i++) {
        rows.push({ userId: batch.users[i]!, actionId: batch.actions[i]!, count: BigInt(batch.counts[i]!), valueSum: BigInt(batch.valueSums[i]!) });
      }
    }
    const t = reader.totals();
    return { slice, rows, missingPairs: t.missingPairs, missingChunks: t.missingChunks, events: t.events, late: t.late };
  }

  /** Each server's identity (pid, and start time = time − uptime): a change means it restarted and lost its items. */
  async bootTimes(): Promise<{ server: string; pid: number; bootedAt: number; items: number; bytes: number; evictions: number }[]> {
    return Promise.all(
      this.conns.map(async (c) => {
        const s = await c.stats();
        return {
          server: `${c.address.host}:${c.address.port}`,
          pid: Number(s.pid),
          bootedAt: Number(s.time) - Number(s.uptime),
          items: Number(s.curr_items),
          bytes: Number(s.bytes),
          evictions: Number(s.evictions),
        };
      }),
    );
  }

  async close(): Promise<void> {
    await Promise.all(this.conns.map((c) => c.close()));
  }

  // ── internals ──

  private async register(created: PairDelta[]): Promise<void> {
    const bySlice = new Map<SliceId, PairDelta[]>();
    for (const d of created) {
      let list = bySlice.get(d.slice);
      if (!list) bySlice.set(d.slice, (list = []));
      list.push(d);
    }
    await Promise.all([...bySlice].map(([slice, list]) => this.registerSlice(slice, list)));
  }

  private async registerSlice(slice: SliceId, list: PairDelta[]): Promise<void> {
    const chunkCount = Math.ceil(list.length / CHUNK_PAIRS);
    // Reserve chunk numbers first: incr is atomic, so concurrent workers never share one.
    const last = await this.reserve(this.sliceKey(slice, 'rn'), this.sliceServer(slice), chunkCount);
    const ops: MemcacheOp[] = [];
    for (let i = 0; i < chunkCount; i++) {
      const part = list.slice(i * CHUNK_PAIRS, (i + 1) * CHUNK_PAIRS);
      const buf = Buffer.allocUnsafe(part.length * ENTRY_BYTES);
      for (let j = 0; j < part.length; j++) {
        const d = part[j]!;
        const o = j * ENTRY_BYTES;
        // Ids under 16 digits are exact numbers: two 32-bit halves, no BigInt.
        if (d.userId.length < 16) {
          const u = Number(d.userId);
          buf.writeUInt32BE(Math.floor(u / 0x1_0000_0000), o);
          buf.writeUInt32BE(u % 0x1_0000_0000, o + 4);
        } else buf.writeBigUInt64BE(BigInt(d.userId), o);
        buf.writeUInt16BE(d.actionId, o + 8);
      }
      ops.push({ kind: 'set', key: this.sliceKey(slice, `r:${last - chunkCount + i + 1}`), value: buf, ttl: this.ttl });
    }
    await this.exec(this.sliceServer(slice), ops);
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

  /** Increments each counter, every server's batch at once; returns, per server, the ones that do not exist yet. */
  private async incr(bumps: CounterList[]): Promise<CounterList[]> {
    return Promise.all(
      bumps.map(async (b, server) => {
        const missing = b.counters.list();
        if (b.length === 0) return missing;
        this.ops += b.length;
        // Keys built here from the checked prefix and numbers: memcache need not check them again.
        const found = await this.conns[server]!.incrMany(b, b.amounts, { keysValid: true });
        for (let i = 0; i < found.length; i++) if (found[i] === 0) missing.push(b.tags[i]!, b.amounts[i]!);
        return missing;
      }),
    );
  }

  /** Creates missing counters with `add`; a key someone else created meanwhile is incremented instead. */
  private async ensure(bumps: CounterList[]): Promise<void> {
    let pending = bumps;
    for (let attempt = 0; pending.some((b) => b.length > 0); attempt++) {
      if (attempt === MAX_RACE_RETRIES) {
        const left = pending.reduce((n, b) => n + b.length, 0);
        throw new Error(`memcached: ${left} counters kept racing (first ${pending.find((b) => b.length > 0)!.at(0)})`);
      }
      const raced = await Promise.all(
        pending.map(async (b, server) => {
          const lost = b.counters.list();
          if (b.length === 0) return lost;
          this.ops += b.length;
          const values = { length: b.length, at: (i: number) => String(b.amounts[i]) };
          const stored = await this.conns[server]!.addMany(b, values, this.ttl, { keysValid: true });
          for (let i = 0; i < stored.length; i++) if (stored[i] === 0 && b.amounts[i] !== 0) lost.push(b.tags[i]!, b.amounts[i]!);
          return lost;
        }),
      );
      pending = await this.incr(raced);
    }
  }

  private exec(server: number, ops: MemcacheOp[]): Promise<MemcacheReply[]> {
    if (ops.length === 0) return Promise.resolve([]);
    this.ops += ops.length;
    return this.conns[server]!.exec(ops);
  }

  private async getAll(keys: { key: string; server: number }[]): Promise<Map<string, Buffer>> {
    const byServer = new Map<number, string[]>();
    for (const { key, server } of keys) {
      let list = byServer.get(server);
      if (!list) byServer.set(server, (list = []));
      list.push(key);
    }
    const result = new Map<string, Buffer>();
    await Promise.all(
      [...byServer].map(async ([s, list]) => {
        this.ops += list.length;
        for (const [k, v] of await this.conns[s]!.getMulti(list)) result.set(k, v);
      }),
    );
    return result;
  }

  private sliceKey(slice: SliceId, suffix: string): string {
    return `${this.p}${slice}:${suffix}`;
  }

  private pairKey(d: PairDelta, kind: 'c' | 'v'): string {
    return this.pairKeyOf(d.slice, d.userId, d.actionId, kind);
  }

  private pairKeyOf(slice: SliceId, userId: UserId, actionId: ActionId, kind: 'c' | 'v'): string {
    return `${this.p}${slice}:${kind}:${userId}:${actionId}`;
  }

  private jobKey(unique: string): string {
    // Unique ids come from clients: anything that is not a plain safe token is hashed.
    const safe = /^[A-Za-z0-9_.:-]{1,64}$/.test(unique);
    return `${this.p}j:${safe ? unique : '#' + createHash('sha256').update(unique).digest('base64url')}`;
  }

  /** A pair's counters live together on one server, chosen by hashing the pair: no key ever moves. */
  private pairServer(d: PairDelta): number {
    return this.conns.length === 1 ? 0 : this.serverOf(`${d.userId}:${d.actionId}`);
  }

  private sliceServer(slice: SliceId): number {
    return this.serverOf(`slice:${slice}`);
  }

  private serverOf(shardKey: string): number {
    return this.conns.length === 1 ? 0 : fnv1a(shardKey) % this.conns.length;
  }
}

/** What a SliceReader needs from its Ring (whose connections and key layout stay private). */
interface ReaderAccess {
  /** `{prefix}{slice}:` — the start of every key of this slice. */
  keyPrefix: string;
  /** The server holding the slice's head and register. */
  home: number;
  servers: number;
  getMulti(server: number, keys: string[]): Promise<Map<string, Buffer>>;
  pairServer(userId: string, actionId: number): number;
}

/**
 * Streams one finished slice out of memcached in batches, so the flush holds
 * one batch (plus the register chunks it is walking through) rather than the
 * whole slice: `next()` walks the register, skips pairs already seen, and
 * multi-gets the counters of the next `batchPairs` pairs.
 *
 * Memory: the batch being read, up to REGISTER_CHUNKS_PER_GET register
 * chunks, and a PairSet of the pairs seen so far (≤ 40 bytes a pair), which is
 * what lets a pair listed twice be written and counted once.
 */
export class SliceReader {
  private readonly seen = new PairSet();
  private readonly counted = new U64Sum();
  private rows = 0;
  private missingPairs = 0;
  private missingChunks = 0;
  private duplicates = 0;
  /** Next register chunk number to fetch (chunks are numbered from 1). */
  private nextChunk = 1;
  /** Register chunks fetched and not yet walked, and how far into the first one we are. */
  private chunkBuffers: Buffer[] = [];
  private offset = 0;

  constructor(
    readonly head: SliceHead,
    private readonly batchPairs: number,
    private readonly access: ReaderAccess,
  ) {
    if (!Number.isSafeInteger(batchPairs) || batchPairs < 1) throw new RangeError(`batchPairs must be a whole number >= 1, not ${batchPairs}`);
  }

  /** The next batch of rows (never empty), or null when the slice is done. One call at a time. */
  async next(): Promise<CountRows | null> {
    for (;;) {
      const pairs = await this.nextPairs();
      if (pairs.users.length === 0) return null;
      const rows = await this.readCounters(pairs);
      if (rows.length > 0) return rows;
      // Every pair of this batch was gone: read on rather than hand back nothing.
    }
  }

  /** Valid once next() has returned null. */
  totals(): SliceTotals {
    return {
      ...this.head,
      rows: this.rows,
      counted: this.counted.value,
      missingPairs: this.missingPairs,
      missingChunks: this.missingChunks,
      duplicates: this.duplicates,
    };
  }

  /** Up to batchPairs pairs not seen before, from the register. */
  private async nextPairs(): Promise<{ users: string[]; actions: number[] }> {
    const users: string[] = [];
    const actions: number[] = [];
    while (users.length < this.batchPairs) {
      const buf = this.chunkBuffers[0];
      if (buf === undefined) {
        if (this.nextChunk > this.head.chunks) break;
        await this.fetchChunks();
        continue;
      }
      let o = this.offset;
      for (; o + ENTRY_BYTES <= buf.length && users.length < this.batchPairs; o += ENTRY_BYTES) {
        const hi = buf.readUInt32BE(o);
        const lo = buf.readUInt32BE(o + 4);
        const actionId = buf.readUInt16BE(o + 8);
        if (!this.seen.add(hi, lo, actionId)) {
          this.duplicates++;
          continue;
        }
        // Below 2^53 a user id is an exact number, and String() of it is cheaper than a BigInt's.
        users.push(hi < 0x20_0000 ? String(hi * 0x1_0000_0000 + lo) : buf.readBigUInt64BE(o).toString());
        actions.push(actionId);
      }
      if (o + ENTRY_BYTES <= buf.length) this.offset = o;
      else {
        this.chunkBuffers.shift();
        this.offset = 0;
      }
    }
    return { users, actions };
  }

  private async fetchChunks(): Promise<void> {
    const keys: string[] = [];
    for (; keys.length < REGISTER_CHUNKS_PER_GET && this.nextChunk <= this.head.chunks; this.nextChunk++) {
      keys.push(`${this.access.keyPrefix}r:${this.nextChunk}`);
    }
    const found = await this.access.getMulti(this.access.home, keys);
    for (const key of keys) {
      const buf = found.get(key);
      if (buf === undefined) this.missingChunks++;
      else if (buf.length > 0) this.chunkBuffers.push(buf);
    }
  }

  private async readCounters(pairs: { users: string[]; actions: number[] }): Promise<CountRows> {
    const { users, actions } = pairs;
    const n = users.length;
    const prefix = this.access.keyPrefix;
    const countKeys = new Array<string>(n);
    const valueKeys = new Array<string>(n);
    const serverOf = this.access.servers === 1 ? null : new Array<number>(n);
    const keysByServer: string[][] = Array.from({ length: this.access.servers }, () => []);
    for (let i = 0; i < n; i++) {
      const pair = `${users[i]}:${actions[i]}`;
      const server = serverOf === null ? 0 : (serverOf[i] = this.access.pairServer(users[i]!, actions[i]!));
      keysByServer[server]!.push((countKeys[i] = `${prefix}c:${pair}`), (valueKeys[i] = `${prefix}v:${pair}`));
    }
    const found = await Promise.all(keysByServer.map((keys, s) => (keys.length === 0 ? new Map<string, Buffer>() : this.access.getMulti(s, keys))));
    const rows: CountRows = { length: 0, users: [], actions: [], counts: [], valueSums: [] };
    for (let i = 0; i < n; i++) {
      const values = found[serverOf === null ? 0 : serverOf[i]!]!;
      const c = values.get(countKeys[i]!);
      const v = values.get(valueKeys[i]!);
      if (c === undefined || v === undefined) {
        this.missingPairs++;
        continue;
      }
      const count = counterText(countKeys[i]!, c);
      rows.users.push(users[i]!);
      rows.actions.push(actions[i]!);
      rows.counts.push(count);
      rows.valueSums.push(counterText(valueKeys[i]!, v));
      this.counted.add(count);
    }
    rows.length = rows.users.length;
    this.rows += rows.length;
    return rows;
  }
}

/**
 * A counter's value as decimal text. memcached keeps incr'd values as ASCII
 * digits, possibly padded with trailing spaces (it pads in place when a
 * number gets shorter); anything else means someone else wrote the key.
 */
function counterText(key: string, value: Buffer): string {
  let end = value.length;
  while (end > 0 && value[end - 1] === 0x20) end--;
  const text = value.toString('latin1', 0, end);
  if (!isU64Decimal(text)) throw new RingDataError(`memcached key ${key} holds ${JSON.stringify(text.slice(0, 40))}, not an unsigned 64-bit counter`);
  return text;
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

  constructor(readonly counters: Counters) {}

  get length(): number {
    return this.tags.length;
  }

  at(i: number): string | undefined {
    const tag = this.tags[i];
    return tag === undefined ? undefined : this.counters.keyOf(tag);
  }

  push(tag: number, amount: number | bigint): void {
    this.tags.push(tag);
    this.amounts.push(amount);
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
