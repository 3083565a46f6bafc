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
import { decodeFoldChunk, type FoldChunkHeader } from './foldblob.ts';
import { PairTable } from './pairtable.ts';

const TWO_32 = 0x1_0000_0000;

export class SliceSum {
  private readonly table = new PairTable();
  private readonly his: number[] = [];
  private readonly los: number[] = [];
  private readonly actions: number[] = [];
  private readonly counts: number[] = [];
  private readonly sums: (number | bigint)[] = [];
  /** Events added (the sum of every entry's count). */
  counted = 0;
  late = 0;

  /** Adds one chunk's entries; returns its header and the events it held. Throws FoldBlobError (nothing added) on a bad chunk. */
  addChunk(buf: Buffer): { header: FoldChunkHeader; events: number } {
    // Decoded into a list first so a chunk that turns out bad half-way adds nothing.
    const staged: [number, number, number, number, number | bigint][] = [];
    const header = decodeFoldChunk(buf, (hi, lo, action, count, sum) => staged.push([hi, lo, action, count, sum]));
    let events = 0;
    for (const [hi, lo, action, count, sum] of staged) {
      this.add(hi, lo, action, count, sum);
      events += count;
    }
    this.late += header.late;
    return { header, events };
  }

  add(hi: number, lo: number, action: number, count: number, sum: number | bigint): void {
    const i = this.table.getOrAdd(hi, lo, action, this.counts.length);
    if (i < 0) {
      this.his.push(hi);
      this.los.push(lo);
      this.actions.push(action);
      this.counts.push(count);
      this.sums.push(sum);
    } else {
      this.counts[i]! += count;
      if (sum !== 0 && sum !== 0n) this.sums[i] = addValue(this.sums[i]!, sum);
    }
    this.counted += count;
  }

  get size(): number {
    return this.counts.length;
  }

  /** Pairs whose value sum is held at 2^64 − 1. */
  get saturated(): number {
    let n = 0;
    for (const s of this.sums) if (s === MAX_U64) n++;
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
    const n = this.counts.length;
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
        rows.valueSums.push(String(this.sums[i]!));
      }
      rows.length = rows.users.length;
      yield rows;
    }
  }
}
