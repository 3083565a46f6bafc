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
