/**
 * A hash table from a (user, action) pair to a small integer, held in typed
 * arrays: the worker's fold uses it to find a pair's delta by index, and the
 * slice reader to skip a pair that a register lists twice.
 *
 * Why not a Map<string, …>: a fold or a slice can hold millions of pairs, and
 * a JS string per pair plus the Map's entry costs ~100 bytes; here a pair
 * costs 14 bytes per slot at a load of at most 1/2. Open addressing with
 * linear probing; a value slot of 0 marks an empty slot (values are stored + 1).
 *
 * A user id is given as its two 32-bit halves (hi·2^32 + lo), as the register
 * stores it, so every unsigned 64-bit id fits.
 */
export class PairTable {
  private hi: Uint32Array;
  private lo: Uint32Array;
  private action: Uint16Array;
  /** Value + 1; 0 = empty. */
  private slot: Int32Array;
  private mask: number;
  size = 0;

  constructor(initialCapacity = 1024) {
    let cap = 16;
    while (cap < initialCapacity * 2) cap *= 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.action = new Uint16Array(cap);
    this.slot = new Int32Array(cap);
    this.mask = cap - 1;
  }

  /** The value stored for the pair; if there is none, stores `value` (≥ 0) and returns -1. */
  getOrAdd(hi: number, lo: number, action: number, value: number): number {
    let i = hash(hi, lo, action) & this.mask;
    for (;;) {
      const s = this.slot[i]!;
      if (s === 0) break;
      if (this.action[i] === action && this.lo[i] === lo && this.hi[i] === hi) return s - 1;
      i = (i + 1) & this.mask;
    }
    this.hi[i] = hi;
    this.lo[i] = lo;
    this.action[i] = action;
    this.slot[i] = value + 1;
    if (++this.size * 2 > this.mask + 1) this.grow();
    return -1;
  }

  /** Adds the pair; false when it was already there. */
  add(hi: number, lo: number, action: number): boolean {
    return this.getOrAdd(hi, lo, action, 0) < 0;
  }

  private grow(): void {
    const { hi, lo, action, slot } = this;
    const cap = (this.mask + 1) * 2;
    this.hi = new Uint32Array(cap);
    this.lo = new Uint32Array(cap);
    this.action = new Uint16Array(cap);
    this.slot = new Int32Array(cap);
    this.mask = cap - 1;
    for (let j = 0; j < slot.length; j++) {
      if (slot[j] === 0) continue;
      let i = hash(hi[j]!, lo[j]!, action[j]!) & this.mask;
      while (this.slot[i] !== 0) i = (i + 1) & this.mask;
      this.hi[i] = hi[j]!;
      this.lo[i] = lo[j]!;
      this.action[i] = action[j]!;
      this.slot[i] = slot[j]!;
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

const TWO_32 = 0x1_0000_0000;

/** The high 32 bits of a user id below 2^53. */
export const hiOf = (user: number): number => Math.floor(user / TWO_32);
/** The low 32 bits of a user id below 2^53. */
export const loOf = (user: number): number => user % TWO_32;
