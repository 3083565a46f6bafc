/**
 * A slice's rows summed from its committed folds' blobs (ring mode `folds`):
 * every chunk read is added in, then the rows come out in the counts table's
 * key order (user, then action), in batches, as the flush writes them.
 *
 * Counts add as plain numbers (a slice's events are far below 2^53); value
 * sums stay exact past 2^53 as bigints and are held at 2^64 − 1 (BIGINT
 * UNSIGNED's maximum), where they are counted as saturated.
 */
import { addValue } from './aggregate.ts';
import { MAX_U64 } from './contract.ts';
import type { CountRows } from './counts.ts';
import { decodeFoldChunk, FOLD_ENTRY_BYTES, FOLD_HEADER_BYTES, readFoldHeader, type FoldChunkHeader } from './foldblob.ts';
import { PairTable } from './pairtable.ts';

const TWO_32 = 0x1_0000_0000;

export class SliceSum {
  private readonly table = new PairTable();
  // Per pair, in typed arrays (grown by doubling): ~26 bytes a pair besides the table, where JS arrays
  // boxed every user half past 2^31 and every sum into a heap number.
  private his = new Uint32Array(1024);
  private los = new Uint32Array(1024);
  private actions = new Uint16Array(1024);
  private counts = new Float64Array(1024);
  /** Value sums while below 2^53; a pair whose sum passes it moves to `bigSums`. */
  private sums = new Float64Array(1024);
  private readonly bigSums = new Map<number, bigint>();
  /** 1 where the pair's sum is in `bigSums`. */
  private big = new Uint8Array(1024);
  private n = 0;
  /** Events added (the sum of every entry's count). */
  counted = 0;
  late = 0;

  /** Adds one chunk's entries; returns its header and the events it held. Throws FoldBlobError (nothing added) on a bad chunk. */
  addChunk(buf: Buffer): { header: FoldChunkHeader; events: number } {
    const header = readFoldHeader(buf);
    // Checked whole first (the two fields a bad entry shows in), so a chunk that turns out bad half-way adds nothing.
    for (let o = FOLD_HEADER_BYTES; o < buf.length; o += FOLD_ENTRY_BYTES) {
      if (buf.readUInt16BE(o + 8) === 0 || buf.readUInt32BE(o + 10) === 0) decodeFoldChunk(buf, () => undefined); // throws, naming the entry
    }
    // The flush's hot loop (every entry of every committed fold): inlined, no callback, no allocation.
    let events = 0;
    for (let o = FOLD_HEADER_BYTES; o < buf.length; o += FOLD_ENTRY_BYTES) {
      const count = buf.readUInt32BE(o + 10);
      const sHi = buf.readUInt32BE(o + 14);
      const sLo = buf.readUInt32BE(o + 18);
      this.add(buf.readUInt32BE(o), buf.readUInt32BE(o + 4), buf.readUInt16BE(o + 8), count, sHi < 0x20_0000 ? sHi * TWO_32 + sLo : (BigInt(sHi) << 32n) | BigInt(sLo));
      events += count;
    }
    this.late += header.late;
    return { header, events };
  }

  add(hi: number, lo: number, action: number, count: number, sum: number | bigint): void {
    let i = this.table.getOrAdd(hi, lo, action, this.n);
    if (i < 0) {
      if (this.n === this.counts.length) this.grow();
      i = this.n++;
      this.his[i] = hi;
      this.los[i] = lo;
      this.actions[i] = action;
    }
    this.counts[i] = this.counts[i]! + count;
    this.counted += count;
    if (sum === 0 || sum === 0n) return;
    if (this.big[i] === 0 && typeof sum === 'number') {
      const next = this.sums[i]! + sum;
      // Both terms are below 2^53, so the double is exact up to it; past it the pair moves to a bigint.
      if (next <= Number.MAX_SAFE_INTEGER) {
        this.sums[i] = next;
        return;
      }
    }
    const before = this.big[i] === 0 ? BigInt(this.sums[i]!) : this.bigSums.get(i)!;
    this.big[i] = 1;
    this.bigSums.set(i, addValue(before, sum) as bigint);
  }

  private grow(): void {
    const cap = this.counts.length * 2;
    const grown = <T extends Uint32Array | Uint16Array | Float64Array>(a: T, make: (n: number) => T): T => {
      const b = make(cap);
      b.set(a);
      return b;
    };
    this.his = grown(this.his, (n) => new Uint32Array(n));
    this.los = grown(this.los, (n) => new Uint32Array(n));
    this.actions = grown(this.actions, (n) => new Uint16Array(n));
    this.counts = grown(this.counts, (n) => new Float64Array(n));
    this.sums = grown(this.sums, (n) => new Float64Array(n));
    const big = new Uint8Array(cap);
    big.set(this.big);
    this.big = big;
  }

  get size(): number {
    return this.n;
  }

  /** Pairs whose value sum is held at 2^64 − 1. */
  get saturated(): number {
    let n = 0;
    for (const s of this.bigSums.values()) if (s === MAX_U64) n++;
    return n;
  }

  /**
   * Pair indexes in (user, action) order. Users below 2^37 (nearly all) and
   * their action share one exact double, sorted natively (a comparator sort
   * of a million pairs took most of the flush's time); the rest sort after
   * them by comparison, as in PairList.
   */
  private keyOrder(): Uint32Array {
    const { his, los, actions } = this;
    const n = this.n;
    const small = new Float64Array(n);
    const big: number[] = [];
    let k = 0;
    for (let i = 0; i < n; i++) {
      if (his[i]! < 32) small[k++] = (his[i]! * TWO_32 + los[i]!) * 65536 + actions[i]!;
      else big.push(i);
    }
    const keys = small.subarray(0, k).sort();
    const order = new Uint32Array(n);
    for (let j = 0; j < k; j++) {
      const key = keys[j]!;
      const action = key % 65536;
      const user = (key - action) / 65536;
      order[j] = this.table.getOrAdd(Math.floor(user / TWO_32), user % TWO_32, action, 0);
    }
    big.sort((x, y) => his[x]! - his[y]! || los[x]! - los[y]! || actions[x]! - actions[y]!);
    order.set(big, k);
    return order;
  }

  /** The rows in key order, `batch` at a time (never an empty batch). */
  *rows(batch: number): Generator<CountRows> {
    if (!Number.isSafeInteger(batch) || batch < 1) throw new RangeError(`batch must be a whole number >= 1, not ${batch}`);
    const order = this.keyOrder();
    const { his, los, actions } = this;
    for (let from = 0; from < order.length; from += batch) {
      const rows: CountRows = { length: 0, users: [], actions: [], counts: [], valueSums: [] };
      for (let k = from; k < Math.min(order.length, from + batch); k++) {
        const i = order[k]!;
        const hi = his[i]!;
        rows.users.push(hi < 0x20_0000 ? String(hi * TWO_32 + los[i]!) : ((BigInt(hi) << 32n) | BigInt(los[i]!)).toString());
        rows.actions.push(actions[i]!);
        rows.counts.push(String(this.counts[i]!));
        rows.valueSums.push(String(this.bigSums.get(i) ?? this.sums[i]!));
      }
      rows.length = rows.users.length;
      yield rows;
    }
  }
}
