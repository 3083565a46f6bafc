/**
 * A hash table from a (user, action) pair to a small integer, held in typed
 * arrays: the worker's fold uses it to find a pair's delta by index, and the
 * slice reader to skip a pair that a register lists twice.
 *
 * Why not a Map<string, …>: a fold or a slice can hold millions of pairs, and
 * a JS string per pair plus the Map's entry costs ~100 bytes; here a pair
 * costs 16 bytes per slot at a load of at most 1/2. Open addressing with
 * linear probing; a value slot of 0 marks an empty slot (values are stored + 1).
 *
 * A user id is given as its two 32-bit halves (hi·2^32 + lo), as the register
 * stores it, so every unsigned 64-bit id fits.
 */
export class PairTable {
  /**
   * Four 32-bit words per slot, side by side so that a probe reads one cache
   * line: user hi, user lo, action, value + 1 (0 = empty slot).
   */
  private words: Int32Array;
  private mask: number;
  size = 0;

  constructor(initialCapacity = 1024) {
    let cap = 16;
    while (cap < initialCapacity * 2) cap *= 2;
    this.words = new Int32Array(cap * 4);
    this.mask = cap - 1;
  }

  /** The value stored for the pair; if there is none, stores `value` (≥ 0) and returns -1. */
  getOrAdd(hi: number, lo: number, action: number, value: number): number {
    const w = this.words;
    const h = hi | 0;
    const l = lo | 0;
    let i = hash(hi, lo, action) & this.mask;
    for (;;) {
      const o = i << 2;
      const s = w[o + 3]!;
      if (s === 0) break;
      if (w[o + 1] === l && w[o + 2] === action && w[o] === h) return s - 1;
      i = (i + 1) & this.mask;
    }
    const o = i << 2;
    w[o] = h;
    w[o + 1] = l;
    w[o + 2] = action;
    w[o + 3] = value + 1;
    if (++this.size * 2 > this.mask + 1) this.grow();
    return -1;
  }

  /** Adds the pair; false when it was already there. */
  add(hi: number, lo: number, action: number): boolean {
    return this.getOrAdd(hi, lo, action, 0) < 0;
  }

  private grow(): void {
    const old = this.words;
    const cap = (this.mask + 1) * 2;
    const w = (this.words = new Int32Array(cap * 4));
    this.mask = cap - 1;
    for (let o = 0; o < old.length; o += 4) {
      if (old[o + 3] === 0) continue;
      let i = hash(old[o]! >>> 0, old[o + 1]! >>> 0, old[o + 2]!) & this.mask;
      while (w[(i << 2) + 3] !== 0) i = (i + 1) & this.mask;
      const n = i << 2;
      w[n] = old[o]!;
      w[n + 1] = old[o + 1]!;
      w[n + 2] = old[o + 2]!;
      w[n + 3] = old[o + 3]!;
    }
  }
}

/**
 * What a writer knows exists in memcached, per (user, action) pair of one
 * slice: flag bits (PairFlags.COUNT, PairFlags.SUM), 0 for "not known".
 *
 * Lossy on purpose: a pair is held as a 32-bit hash, not its ids, so a
 * table costs 5 bytes a slot (a million pairs ≈ 10 MB) where PairTable would
 * take 14. Two pairs with one hash share their flags, which can only make the
 * writer believe a counter exists when it does not: it then increments, gets
 * NOT_FOUND, and creates the counter the careful way (register, then
 * upsert). A wrong guess costs one operation, never a count. It is also
 * bounded: past `maxPairs` it stops learning (pairs it does not know are
 * upserted: incremented, or created when they do not exist).
 */
export class PairFlags {
  static readonly COUNT = 1;
  static readonly SUM = 2;
  /** Hashes, indexed by their own low bits (so the table can grow without the ids). */
  private hashes: Uint32Array;
  /** Flags; 0 = empty slot. */
  private flags: Uint8Array;
  private mask: number;
  private readonly hashMask: number;
  size = 0;

  /**
   * `hashBits` below 32 makes pairs share hashes on purpose (tests: a
   * writer that is wrong about many pairs must still count exactly).
   */
  constructor(readonly maxPairs = 1 << 21, hashBits = 32) {
    this.hashes = new Uint32Array(1024);
    this.flags = new Uint8Array(1024);
    this.mask = 1023;
    this.hashMask = hashBits >= 32 ? 0xffff_ffff : (1 << hashBits) - 1;
  }

  /** The flags known for the pair (0: nothing known). */
  get(hi: number, lo: number, action: number): number {
    const h = (hash(hi, lo, action) & this.hashMask) >>> 0;
    for (let i = h & this.mask; ; i = (i + 1) & this.mask) {
      const f = this.flags[i]!;
      if (f === 0) return 0;
      if (this.hashes[i] === h) return f;
    }
  }

  /** Adds `flags` (non-zero) to what is known of the pair; once full, learns nothing new. */
  add(hi: number, lo: number, action: number, flags: number): void {
    const h = (hash(hi, lo, action) & this.hashMask) >>> 0;
    let i = h & this.mask;
    for (;;) {
      const f = this.flags[i]!;
      if (f === 0) break;
      if (this.hashes[i] === h) {
        this.flags[i] = f | flags;
        return;
      }
      i = (i + 1) & this.mask;
    }
    if (this.size >= this.maxPairs) return;
    this.hashes[i] = h;
    this.flags[i] = flags;
    if (++this.size * 2 > this.mask + 1) this.grow();
  }

  private grow(): void {
    const { hashes, flags } = this;
    const cap = (this.mask + 1) * 2;
    this.hashes = new Uint32Array(cap);
    this.flags = new Uint8Array(cap);
    this.mask = cap - 1;
    for (let j = 0; j < flags.length; j++) {
      if (flags[j] === 0) continue;
      let i = hashes[j]! & this.mask;
      while (this.flags[i] !== 0) i = (i + 1) & this.mask;
      this.hashes[i] = hashes[j]!;
      this.flags[i] = flags[j]!;
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
