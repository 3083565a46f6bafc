/**
 * Unsigned 64-bit integers as the flush meets them: decimal text from
 * memcached, decimal text into SQL. Most values are small, so the hot paths
 * stay on plain numbers and strings; BigInt appears only where a value (or a
 * running sum) could pass 2^53 − 1, which keeps every value up to 2^64 − 1 exact.
 */

/** 2^64 − 1, BIGINT UNSIGNED's maximum, where a sum that would pass it is held. */
export const U64_MAX_TEXT = '18446744073709551615';
/** Any decimal of at most 15 digits is below 2^50, so Number() of it is exact and sums of two stay exact. */
const SAFE_DIGITS = 15;

/** True when `s` is a canonical-enough unsigned 64-bit decimal: 1–20 ASCII digits, at most 2^64 − 1. */
export function isU64Decimal(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > 20) return false;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  // Same length, digits only: string order is numeric order.
  return n < 20 || s <= U64_MAX_TEXT;
}

/**
 * A sum of unsigned 64-bit decimals that is exact at any size: small terms
 * add into a number, which is moved into a bigint before it could lose a bit.
 */
export class U64Sum {
  private small = 0;
  private big = 0n;

  /** `s` must already satisfy isU64Decimal. */
  add(s: string): void {
    if (s.length > SAFE_DIGITS) {
      this.big += BigInt(s);
      return;
    }
    this.small += Number(s);
    // small < 2^52 before the add and the term < 2^50, so it is still < 2^53: exact.
    if (this.small >= 2 ** 52) {
      this.big += BigInt(this.small);
      this.small = 0;
    }
  }

  get value(): bigint {
    return this.big + BigInt(this.small);
  }
}
