/**
 * A set of (user, action) pairs held in typed arrays, for the flush to skip a
 * pair that a slice's register lists twice (two workers that raced to create
 * it both listed it).
 *
 * Why not a Set<string>: a slice can list millions of pairs, and a JS string
 * per pair plus the Set's entry costs ~100 bytes; here a pair costs 10 bytes
 * per slot at a load of at most 1/2, so ≤ 40 bytes even just after growing.
 * Open addressing with linear probing; action 0 marks an empty slot, which is
 * free because action ids are 1–65535.
 */
export class PairSet {
  private hi: Uint32Array;
  private lo: Uint32Array;
  private action: Uint16Array;
  private mask: number;
  size = 0;

  constructor(initialCapacity = 4096) {
    let cap = 16;
    while (cap < initialCapacity * 2) cap *= 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.action = new Uint16Array(cap);
    this.mask = cap - 1;
  }

  /**
   * Adds the pair (user = hi·2^32 + lo); false when it was already there.
   * hi and lo are the user id's two 32-bit halves, as the register stores them.
   */
  add(hi: number, lo: number, action: number): boolean {
    if (!Number.isInteger(action) || action < 1 || action > 0xffff) throw new RangeError(`action id ${action} is not in 1–65535`);
    let i = hash(hi, lo, action) & this.mask;
    for (;;) {
      const a = this.action[i]!;
      if (a === 0) break;
      if (a === action && this.lo[i] === lo >>> 0 && this.hi[i] === hi >>> 0) return false;
      i = (i + 1) & this.mask;
    }
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.action[i] = action;
    if (++this.size * 2 > this.mask + 1) this.grow();
    return true;
  }

  private grow(): void {
    const { hi, lo, action } = this;
    const cap = (this.mask + 1) * 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.action = new Uint16Array(cap);
    this.mask = cap - 1;
    for (let j = 0; j < action.length; j++) {
      const a = action[j]!;
      if (a === 0) continue;
      let i = hash(hi[j]!, lo[j]!, a) & this.mask;
      while (this.action[i] !== 0) i = (i + 1) & this.mask;
      this.hi[i] = hi[j]!;
      this.lo[i] = lo[j]!;
      this.action[i] = a;
    }
  }
}

/** A 32-bit mix of the three parts (murmur3's finaliser), so clustered ids still spread over the table. */
function hash(hi: number, lo: number, action: number): number {
  let h = Math.imul(lo, 0x9e3779b1) ^ Math.imul(hi + 0x7f4a7c15, 0x85ebca6b) ^ Math.imul(action, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h;
}
