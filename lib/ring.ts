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

export interface ApplyStats { ops: number; newPairs: number }

const ENTRY_BYTES = 10;
/** 50,000 pairs × 10 bytes: well under memcached's 1 MB item limit. */
const CHUNK_PAIRS = 50_000;
const MAX_RACE_RETRIES = 5;

export class Ring {
  private readonly conns: MemcacheConnection[];
  private readonly p: string;
  readonly ttl: number;
  /** memcached operations issued since start (for benchmarks and status). */
  ops = 0;

  constructor(private readonly options: RingOptions) {
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
   */
  async apply(deltas: Deltas): Promise<ApplyStats> {
    const pairs = [...deltas.pairs.values()];
    const before = this.ops;
    // 1. Increment existing counters, one pipelined batch per server.
    const stage1: Bump[] = [];
    for (const d of pairs) {
      stage1.push({ key: this.pairKey(d, 'c'), server: this.pairServer(d), amount: d.count, pair: d });
      if (d.value !== 0) stage1.push({ key: this.pairKey(d, 'v'), server: this.pairServer(d), amount: d.value, pair: d });
    }
    const missing = await this.incr(stage1);
    // 2. Pairs new to this slice: list them in the register first, then create their counters.
    const created = new Set<PairDelta>();
    for (const b of missing) if (b.key.includes(':c:')) created.add(b.pair!);
    if (created.size > 0) await this.register([...created]);
    const toCreate = missing;
    for (const d of created) {
      if (d.value === 0) toCreate.push({ key: this.pairKey(d, 'v'), server: this.pairServer(d), amount: 0, pair: d });
    }
    // 3. Slice totals: events counted and how many of them were late.
    const perSlice = new Map<SliceId, number>();
    for (const d of pairs) perSlice.set(d.slice, (perSlice.get(d.slice) ?? 0) + d.count);
    const totals: Bump[] = [];
    for (const [slice, n] of perSlice) totals.push({ key: this.sliceKey(slice, 'n'), server: this.sliceServer(slice), amount: n });
    for (const [slice, n] of deltas.late) totals.push({ key: this.sliceKey(slice, 'late'), server: this.sliceServer(slice), amount: n });
    await this.ensure([...toCreate, ...(await this.incr(totals))]);
    return { ops: this.ops - before, newPairs: created.size };
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

  /** Reads a finished slice: the register, then every listed pair's count and value sum. */
  async read(slice: SliceId): Promise<SliceContents> {
    const home = this.sliceServer(slice);
    const head = await this.exec(home, [
      { kind: 'get', key: this.sliceKey(slice, 'rn') },
      { kind: 'get', key: this.sliceKey(slice, 'n') },
      { kind: 'get', key: this.sliceKey(slice, 'late') },
    ]);
    const chunkCount = head[0] ? Number(head[0].toString()) : 0;
    const chunkKeys = Array.from({ length: chunkCount }, (_, i) => this.sliceKey(slice, `r:${i + 1}`));
    const chunks = await this.getAll(chunkKeys.map((key) => ({ key, server: home })));
    // De-duplicate: two workers that raced to create a pair both listed it.
    const listed = new Map<string, { userId: UserId; actionId: ActionId }>();
    for (const buf of chunks.values()) {
      for (let o = 0; o + ENTRY_BYTES <= buf.length; o += ENTRY_BYTES) {
        const userId = buf.readBigUInt64BE(o).toString();
        const actionId = buf.readUInt16BE(o + 8);
        listed.set(`${userId}:${actionId}`, { userId, actionId });
      }
    }
    const pairs = [...listed.values()];
    const keys: { key: string; server: number }[] = [];
    for (const { userId, actionId } of pairs) {
      const server = this.serverOf(`${userId}:${actionId}`);
      keys.push({ key: this.pairKeyOf(slice, userId, actionId, 'c'), server }, { key: this.pairKeyOf(slice, userId, actionId, 'v'), server });
    }
    const values = await this.getAll(keys);
    const rows: SliceContents['rows'] = [];
    let missingPairs = 0;
    for (let i = 0; i < pairs.length; i++) {
      const c = values.get(keys[2 * i]!.key);
      const v = values.get(keys[2 * i + 1]!.key);
      if (c === undefined || v === undefined) missingPairs++;
      else rows.push({ userId: pairs[i]!.userId, actionId: pairs[i]!.actionId, count: BigInt(c.toString()), valueSum: BigInt(v.toString()) });
    }
    return {
      slice,
      rows,
      missingPairs,
      missingChunks: chunkCount - chunks.size,
      events: head[1] ? BigInt(head[1].toString()) : null,
      late: head[2] ? BigInt(head[2].toString()) : 0n,
    };
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
    for (const [slice, list] of bySlice) {
      const chunkCount = Math.ceil(list.length / CHUNK_PAIRS);
      // Reserve chunk numbers first: incr is atomic, so concurrent workers never share one.
      const last = await this.reserve(this.sliceKey(slice, 'rn'), this.sliceServer(slice), chunkCount);
      const ops: MemcacheOp[] = [];
      for (let i = 0; i < chunkCount; i++) {
        const part = list.slice(i * CHUNK_PAIRS, (i + 1) * CHUNK_PAIRS);
        const buf = Buffer.allocUnsafe(part.length * ENTRY_BYTES);
        part.forEach((d, j) => {
          buf.writeBigUInt64BE(BigInt(d.userId), j * ENTRY_BYTES);
          buf.writeUInt16BE(d.actionId, j * ENTRY_BYTES + 8);
        });
        ops.push({ kind: 'set', key: this.sliceKey(slice, `r:${last - chunkCount + i + 1}`), value: buf, ttl: this.ttl });
      }
      await this.exec(this.sliceServer(slice), ops);
    }
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

  /** Increments each key; returns the ones that do not exist yet. */
  private async incr(bumps: Bump[]): Promise<Bump[]> {
    const replies = await this.execRouted(bumps.map((b) => ({ server: b.server, op: { kind: 'incr', key: b.key, amount: b.amount } })));
    return bumps.filter((_, i) => replies[i] === null);
  }

  /** Creates missing counters with `add`; a key someone else created meanwhile is incremented instead. */
  private async ensure(bumps: Bump[]): Promise<void> {
    let pending = bumps;
    for (let attempt = 0; pending.length > 0; attempt++) {
      if (attempt === MAX_RACE_RETRIES) throw new Error(`memcached: ${pending.length} counters kept racing (first ${pending[0]!.key})`);
      const replies = await this.execRouted(
        pending.map((b) => ({ server: b.server, op: { kind: 'add', key: b.key, value: String(b.amount), ttl: this.ttl } })),
      );
      const raced = pending.filter((b, i) => replies[i] === false && b.amount !== 0);
      pending = raced.length > 0 ? await this.incr(raced) : [];
    }
  }

  /** Runs ops on their servers in parallel, one pipelined batch each; replies in input order. */
  private async execRouted(items: { server: number; op: MemcacheOp }[]): Promise<MemcacheReply[]> {
    const replies = new Array<MemcacheReply>(items.length);
    const byServer = new Map<number, number[]>();
    items.forEach((it, i) => {
      let idx = byServer.get(it.server);
      if (!idx) byServer.set(it.server, (idx = []));
      idx.push(i);
    });
    await Promise.all(
      [...byServer].map(async ([server, idx]) => {
        const out = await this.exec(server, idx.map((i) => items[i]!.op));
        idx.forEach((i, j) => (replies[i] = out[j]!));
      }),
    );
    return replies;
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
    return this.serverOf(`${d.userId}:${d.actionId}`);
  }

  private sliceServer(slice: SliceId): number {
    return this.serverOf(`slice:${slice}`);
  }

  private serverOf(shardKey: string): number {
    return this.conns.length === 1 ? 0 : fnv1a(shardKey) % this.conns.length;
  }
}

interface Bump {
  key: string;
  server: number;
  amount: number | bigint;
  pair?: PairDelta;
}

export function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}
