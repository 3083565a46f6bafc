/**
 * A slice's pairs as its register lists them, put in the counts table's key
 * order (user, then action) with duplicates dropped: the flush writes rows in
 * primary-key order, which InnoDB appends to the end of its B-tree instead of
 * splitting pages all over it (about twice as fast on this machine's MariaDB,
 * see the bench's "database ceiling").
 *
 * 8 bytes a pair: a user id below 2^37 and its action share one exact double
 * (user × 65536 + action < 2^53), so sorting is a typed array's native numeric
 * sort. Larger ids (rare) are kept apart as halves and sorted by comparison;
 * they all sort after the small ones, so the two runs need no merging.
 */
const SMALL_HI = 32; // hi < 32 ⇔ user < 2^37
const TWO_32 = 0x1_0000_0000;

export class PairList {
  private small = new Float64Array(1024);
  private smallCount = 0;
  private bigHi: number[] = [];
  private bigLo: number[] = [];
  private bigAction: number[] = [];
  private bigOrder: Uint32Array | null = null;
  private sealed = false;

  add(hi: number, lo: number, action: number): void {
    if (this.sealed) throw new Error('PairList: add after seal');
    if (hi < SMALL_HI) {
      if (this.smallCount === this.small.length) {
        const grown = new Float64Array(this.small.length * 2);
        grown.set(this.small);
        this.small = grown;
      }
      this.small[this.smallCount++] = (hi * TWO_32 + lo) * 65536 + action;
    } else {
      this.bigHi.push(hi);
      this.bigLo.push(lo);
      this.bigAction.push(action);
    }
  }

  /** Sorts by (user, action) and drops repeats; returns how many were dropped. */
  seal(): number {
    this.sealed = true;
    const before = this.smallCount + this.bigHi.length;
    const keys = this.small.subarray(0, this.smallCount).sort();
    let n = 0;
    for (let i = 0; i < keys.length; i++) if (n === 0 || keys[i] !== keys[n - 1]) keys[n++] = keys[i]!;
    // Give back what growing by doubling over-allocated.
    this.small = keys.slice(0, n);
    this.smallCount = n;
    const { bigHi: h, bigLo: l, bigAction: a } = this;
    const order = Uint32Array.from(h.keys()).sort((x, y) => h[x]! - h[y]! || l[x]! - l[y]! || a[x]! - a[y]!);
    let m = 0;
    for (let i = 0; i < order.length; i++) {
      const j = order[i]!;
      const k = m === 0 ? -1 : order[m - 1]!;
      if (k < 0 || h[j] !== h[k] || l[j] !== l[k] || a[j] !== a[k]) order[m++] = j;
    }
    this.bigOrder = order.subarray(0, m);
    return before - this.length;
  }

  /** Distinct pairs (once sealed). */
  get length(): number {
    return this.smallCount + (this.bigOrder?.length ?? 0);
  }

  /** Pair i's user id, as decimal text. */
  user(i: number): string {
    if (i < this.smallCount) return String(Math.floor(this.small[i]! / 65536));
    const j = this.bigOrder![i - this.smallCount]!;
    return ((BigInt(this.bigHi[j]!) << 32n) | BigInt(this.bigLo[j]!)).toString();
  }

  /** Pair i's action id. */
  action(i: number): number {
    if (i < this.smallCount) return this.small[i]! % 65536;
    return this.bigAction[this.bigOrder![i - this.smallCount]!]!;
  }
}
