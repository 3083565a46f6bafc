/**
 * Reads one finished slice out of memcached in batches, so the flush holds
 * the slice's pair list and one batch of counters rather than the whole
 * slice: the first `next()` reads the register whole and sorts its pairs by
 * (user, action), the counts table's key order, dropping repeats; each
 * `next()` multi-gets the counters of the next `batchPairs` pairs.
 *
 * While the memcached pool changes (see Placement), a slice may have been
 * written under two pools: the reader walks the register on every server the
 * slice's head may be on, and adds up each pair's counters from every server
 * it may be on. A server is read once, whichever pools placed a key there.
 *
 * Nothing memcached holds can stop the reader: an item that is not what
 * OffLog writes (a register chunk of the wrong length, a pair with action 0,
 * a counter that is not a number) is skipped and counted in `corrupt`, with
 * the first such key named, and the rest of the slice is read. Value sums
 * held at 2^64 − 1 (see Ring.apply) are counted in `saturated`.
 *
 * Memory: up to READ_AHEAD batches being read, up to REGISTER_CHUNKS_PER_GET
 * register chunks while the register is read, and the sorted pairs (8 bytes a pair).
 */
import type { CountRows } from '../domain/counts.ts';
import { PairList } from '../domain/pairlist.ts';
import type { SliceId } from '../domain/slice.ts';
import { MAX_U64 } from '../domain/contract.ts';
import { isU64Decimal, U64_MAX_TEXT, U64Sum } from '../domain/u64.ts';
import type { MemcacheConnection } from '../wire/memcache.ts';
import { REGISTER_ENTRY_BYTES, shardOfPair, shardOfSlice, type RingKeys, type SliceCounter } from './keys.ts';
import type { Placement } from './placement.ts';

/** A slice's head, summed over the servers that may hold it: read once, before its pairs. */
export interface SliceHead {
  slice: SliceId;
  /** Register chunks reserved by the writers, per head server (some may be gone). */
  chunks: number[];
  /** Events the workers counted into this slice (null when the counter itself is gone). */
  events: bigint | null;
  late: bigint;
  /** Value-sum counters the writers created (null when no writer made a value sum in the slice, wrote before `vn` existed, or `vn` was evicted). */
  valueSumsMade: bigint | null;
  /** Events counted by writers that keep `valueSumsMade` (see keys.ts `nv`); equal to `events` when every writer did. */
  eventsCountingSums: bigint | null;
}

/** What a SliceReader found, once it has read the whole slice. */
export interface SliceTotals extends SliceHead {
  /** Distinct pairs whose counters were read. */
  rows: number;
  /** Sum of the rows' counts, to compare with `events`. */
  counted: bigint;
  /** Rows whose value sum is held at 2^64 − 1 (BIGINT UNSIGNED's maximum): the true sum may be larger. */
  saturated: number;
  missingPairs: number;
  missingChunks: number;
  /** Value-sum counters found, of registered pairs (compared with `valueSumsMade`: fewer means some were evicted). */
  valueSumsFound: number;
  /** Value sums found wrapped (a writer died before holding them) and held at 2^64 − 1 here; counted in `saturated` too. */
  wrapsHeld: number;
  /** Pairs listed more than once (two workers raced to create them); read once. */
  duplicates: number;
  /** Items that are not what OffLog writes, skipped; `corruptNote` names the first. */
  corrupt: number;
  corruptNote: string;
}

/** Register chunks fetched per round trip while reading: at most 16 × 500 KB in memory at once. */
const REGISTER_CHUNKS_PER_GET = 16;
/** Batches of counters being read at once (see next()). */
const READ_AHEAD = 4;

export interface ReaderDeps {
  keys: RingKeys;
  placement: Placement;
  conns: readonly MemcacheConnection[];
  /** Counts the memcached operations issued. */
  countOps(n: number): void;
}

export class SliceReader {
  /** The register's pairs in key order, read whole on the first next() (null until then). */
  private pairs: PairList | null = null;
  private nextPair = 0;
  /** Batches asked of memcached and not yet handed out, in order. */
  private ahead: Promise<CountRows>[] = [];
  private readonly counted = new U64Sum();
  private rows = 0;
  private saturated = 0;
  private missingPairs = 0;
  private missingChunks = 0;
  private valueSumsFound = 0;
  private duplicates = 0;
  private corrupt = 0;
  private corruptNote = '';
  /** Pairs (user:action) whose value sum reached 2^62 (see Ring.markHigh): one read below it was wrapped and never held. */
  private readonly highSums = new Set<string>();
  /** Of those, sums found wrapped, and held at 2^64 − 1 here. */
  private wrapsHeld = 0;
  /** Register walk: which head server, the next chunk number there (from 1). */
  private home = 0;
  private nextChunk = 1;

  private constructor(
    readonly head: SliceHead,
    private readonly homes: number[],
    private readonly batchPairs: number,
    private readonly deps: ReaderDeps,
  ) {
    if (!Number.isSafeInteger(batchPairs) || batchPairs < 1) throw new RangeError(`batchPairs must be a whole number >= 1, not ${batchPairs}`);
  }

  /** Opens a finished slice: reads its head from every server that may hold it. */
  static async open(slice: SliceId, batchPairs: number, deps: ReaderDeps): Promise<SliceReader> {
    const homes = deps.placement.readers(shardOfSlice(slice));
    const names: SliceCounter[] = ['rn', 'n', 'nv', 'late', 'vn'];
    const highKey = deps.keys.highSums(slice);
    const found = await Promise.all(homes.map((h) => {
      deps.countOps(names.length + 1);
      return deps.conns[h]!.getMulti([...names.map((n) => deps.keys.sliceCounter(slice, n)), highKey]);
    }));
    const head: SliceHead = { slice, chunks: [], events: null, late: 0n, valueSumsMade: null, eventsCountingSums: null };
    const partial = { corrupt: 0, note: '' };
    const read = (values: Map<string, Buffer>, name: SliceCounter): bigint | null => {
      const key = deps.keys.sliceCounter(slice, name);
      const buf = values.get(key);
      if (buf === undefined) return null;
      const text = counterText(buf);
      if (text === null) {
        partial.corrupt++;
        partial.note ||= `memcached key ${key} holds ${JSON.stringify(buf.toString('latin1', 0, 40))}, not a counter`;
        return null;
      }
      return BigInt(text);
    };
    for (const values of found) {
      head.chunks.push(Number(read(values, 'rn') ?? 0n));
      const n = read(values, 'n');
      if (n !== null) head.events = (head.events ?? 0n) + n;
      head.late += read(values, 'late') ?? 0n;
      const vn = read(values, 'vn');
      if (vn !== null) head.valueSumsMade = (head.valueSumsMade ?? 0n) + vn;
      const nv = read(values, 'nv');
      if (nv !== null) head.eventsCountingSums = (head.eventsCountingSums ?? 0n) + nv;
    }
    const reader = new SliceReader(head, homes, batchPairs, deps);
    reader.corrupt = partial.corrupt;
    reader.corruptNote = partial.note;
    for (const values of found) {
      const list = values.get(highKey);
      for (let o = 0; list !== undefined && o + REGISTER_ENTRY_BYTES <= list.length; o += REGISTER_ENTRY_BYTES) {
        const user = (BigInt(list.readUInt32BE(o)) << 32n) | BigInt(list.readUInt32BE(o + 4));
        reader.highSums.add(`${user}:${list.readUInt16BE(o + 8)}`);
      }
    }
    return reader;
  }

  /**
   * The next batch of rows (never empty), or null when the slice is done. One
   * call at a time. Up to READ_AHEAD batches are asked of memcached at once:
   * one multi-get in flight at a time left memcached and this process taking
   * turns, each idle while the other worked.
   */
  async next(): Promise<CountRows | null> {
    for (;;) {
      for (let more = true; more && this.ahead.length < READ_AHEAD; ) {
        const pairs = await this.nextPairs();
        more = pairs.users.length > 0;
        if (more) {
          const reading = this.readCounters(pairs);
          // Awaited in turn below; a failure of one further ahead must not count as unhandled meanwhile.
          reading.catch(() => undefined);
          this.ahead.push(reading);
        }
      }
      const reading = this.ahead.shift();
      if (reading === undefined) return null;
      const rows = await reading;
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
      saturated: this.saturated,
      missingPairs: this.missingPairs,
      missingChunks: this.missingChunks,
      valueSumsFound: this.valueSumsFound,
      wrapsHeld: this.wrapsHeld,
      duplicates: this.duplicates,
      corrupt: this.corrupt,
      corruptNote: this.corruptNote,
    };
  }

  private noteCorrupt(what: string): void {
    this.corrupt++;
    this.corruptNote ||= what;
  }

  /** The next batchPairs pairs in key order (the first call reads the whole register). */
  private async nextPairs(): Promise<{ users: string[]; actions: number[] }> {
    const pairs = this.pairs ?? (this.pairs = await this.readRegister());
    const users: string[] = [];
    const actions: number[] = [];
    const end = Math.min(pairs.length, this.nextPair + this.batchPairs);
    for (let i = this.nextPair; i < end; i++) {
      users.push(pairs.user(i));
      actions.push(pairs.action(i));
    }
    this.nextPair = end;
    return { users, actions };
  }

  /**
   * Every pair the register lists, sorted by (user, action), each once (two
   * writers creating one pair both list it). 8 bytes a pair: a million-pair
   * slice is 8 MB, where walking and de-duplicating as it went took a 16 MB table.
   */
  private async readRegister(): Promise<PairList> {
    const pairs = new PairList();
    for (let chunks = await this.fetchChunks(); chunks !== null; chunks = await this.fetchChunks()) {
      for (const { key, buf } of chunks) {
        for (let o = 0; o + REGISTER_ENTRY_BYTES <= buf.length; o += REGISTER_ENTRY_BYTES) {
          const actionId = buf.readUInt16BE(o + 8);
          if (actionId === 0) this.noteCorrupt(`memcached key ${key} has a register entry with action id 0 (bytes ${o}–${o + REGISTER_ENTRY_BYTES - 1})`);
          else pairs.add(buf.readUInt32BE(o), buf.readUInt32BE(o + 4), actionId);
        }
      }
    }
    this.duplicates += pairs.seal();
    return pairs;
  }

  /** Fetches the next register chunks, moving on to the next head server when one is done; null when all are. */
  private async fetchChunks(): Promise<{ key: string; buf: Buffer }[] | null> {
    while (this.home < this.homes.length && this.nextChunk > this.head.chunks[this.home]!) {
      this.home++;
      this.nextChunk = 1;
    }
    if (this.home === this.homes.length) return null;
    const { keys, conns, countOps } = this.deps;
    const slice = this.head.slice;
    const names: string[] = [];
    for (; names.length < REGISTER_CHUNKS_PER_GET && this.nextChunk <= this.head.chunks[this.home]!; this.nextChunk++) {
      names.push(keys.registerChunk(slice, this.nextChunk));
    }
    countOps(names.length);
    const found = await conns[this.homes[this.home]!]!.getMulti(names);
    const chunks: { key: string; buf: Buffer }[] = [];
    for (const key of names) {
      const buf = found.get(key);
      if (buf === undefined) this.missingChunks++;
      else {
        if (buf.length % REGISTER_ENTRY_BYTES !== 0) this.noteCorrupt(`memcached key ${key} is ${buf.length} bytes, not a whole number of ${REGISTER_ENTRY_BYTES}-byte register entries`);
        if (buf.length >= REGISTER_ENTRY_BYTES) chunks.push({ key, buf });
      }
    }
    return chunks;
  }

  private async readCounters(pairs: { users: string[]; actions: number[] }): Promise<CountRows> {
    const { users, actions } = pairs;
    const { keys, placement, conns, countOps } = this.deps;
    const slice = this.head.slice;
    const n = users.length;
    // Value sums are read for every pair, even where the slice has no `vn`: `vn` is touched only by folds
    // that create sums, so it can be evicted while the counters live, and "no vn" cannot prove "no sums".
    const single = placement.servers.length === 1;
    // Where pair i's counters are in the lists asked of each server: its count at `at`, its value sum right after. One server, or (while the pool changes) up to two.
    const keysByServer: string[][] = placement.servers.map(() => []);
    const serverA = new Int32Array(n);
    const atA = new Int32Array(n);
    const serverB = single ? null : new Int32Array(n).fill(-1);
    const atB = single ? null : new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const count = keys.count(slice, users[i]!, actions[i]!);
      const sum = keys.valueSum(slice, users[i]!, actions[i]!);
      const servers = single ? SERVER_0 : placement.readers(shardOfPair(users[i]!, actions[i]!));
      for (let k = 0; k < servers.length; k++) {
        const s = servers[k]!;
        const list = keysByServer[s]!;
        if (k === 0) (serverA[i] = s), (atA[i] = list.length);
        else (serverB![i] = s), (atB![i] = list.length);
        list.push(count);
        list.push(sum);
      }
    }
    // Keys built here from the checked prefix and numbers: ASCII, valid.
    const found = await Promise.all(keysByServer.map((list, s) => {
      if (list.length === 0) return [];
      countOps(list.length);
      return conns[s]!.getCounters(list, { keysValid: true });
    }));
    const rows: CountRows = { length: 0, users: [], actions: [], counts: [], valueSums: [] };
    for (let i = 0; i < n; i++) {
      let count: string | null = null;
      let sum: string | null = null;
      let bad = false;
      for (let k = 0; k < 2; k++) {
        const s = k === 0 ? serverA[i]! : serverB === null ? -1 : serverB[i]!;
        if (s < 0) break;
        const at = k === 0 ? atA[i]! : atB![i]!;
        const values = found[s]!;
        const c = values[at];
        const v = values[at + 1];
        if (v !== undefined) this.valueSumsFound++;
        // A pair exists where its count does; its value sum is made only once non-zero.
        if (c === undefined) continue;
        const vt = v ?? '0';
        if (!isU64Decimal(c) || !isU64Decimal(vt)) {
          bad = true;
          const key = isU64Decimal(c) ? keys.valueSum(slice, users[i]!, actions[i]!) : keys.count(slice, users[i]!, actions[i]!);
          this.noteCorrupt(`memcached key ${key} holds ${JSON.stringify((isU64Decimal(c) ? vt : c).slice(0, 40))}, not a counter`);
          continue;
        }
        // Two pools: the same pair counted on two servers adds up (a sum past 2^64 − 1 is held there).
        count = count === null ? c : addU64Text(count, c);
        sum = sum === null ? vt : addU64Text(sum, vt);
      }
      if (count === null || sum === null) {
        if (!bad) this.missingPairs++;
        continue;
      }
      if (this.highSums.size > 0 && sum !== U64_MAX_TEXT && sum.length <= 19 && BigInt(sum) < HIGH_SUM && this.highSums.has(`${users[i]}:${actions[i]}`)) {
        // Past 2^62 once, below it now: memcached wrapped it and its writer died before holding it.
        sum = U64_MAX_TEXT;
        this.wrapsHeld++;
      }
      rows.users.push(users[i]!);
      rows.actions.push(actions[i]!);
      rows.counts.push(count);
      rows.valueSums.push(sum);
      if (sum === U64_MAX_TEXT) this.saturated++;
      this.counted.add(count);
    }
    rows.length = rows.users.length;
    this.rows += rows.length;
    return rows;
  }
}

const SERVER_0 = [0];
const HIGH_SUM = 2n ** 62n;

function addU64Text(a: string, b: string): string {
  const s = BigInt(a) + BigInt(b);
  return (s > MAX_U64 ? MAX_U64 : s).toString();
}

/**
 * A counter's value as decimal text, or null when it is not one. memcached
 * keeps incr'd values as ASCII digits, possibly padded with trailing spaces
 * (it pads in place when a number gets shorter).
 */
export function counterText(value: Buffer): string | null {
  let end = value.length;
  while (end > 0 && value[end - 1] === 0x20) end--;
  const text = value.toString('latin1', 0, end);
  return isU64Decimal(text) ? text : null;
}
