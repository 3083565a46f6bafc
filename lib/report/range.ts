/** How a range is read: the coarsest rollup pieces that tile it exactly. */

export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;

/** Part of a range read from one table: raw slices, hourly or daily rollups. */
export interface Piece { table: 'counts' | 'hourly' | 'daily'; fromMs: number; toMs: number }

/**
 * Splits a slice-aligned [fromMs, toMs) into the coarsest pieces that tile it
 * exactly: whole days from the daily rollup, the partial days at either end
 * from the hourly one, the partial hours from the 10-minute rows.
 */
export function decompose(fromMs: number, toMs: number): Piece[] {
  const pieces: Piece[] = [];
  const add = (table: Piece['table'], a: number, b: number) => {
    if (b > a) pieces.push({ table, fromMs: a, toMs: b });
  };
  const h1 = Math.ceil(fromMs / HOUR_MS) * HOUR_MS;
  const h2 = Math.floor(toMs / HOUR_MS) * HOUR_MS;
  if (h1 >= h2) {
    add('counts', fromMs, toMs);
    return pieces;
  }
  const d1 = Math.ceil(h1 / DAY_MS) * DAY_MS;
  const d2 = Math.floor(h2 / DAY_MS) * DAY_MS;
  add('counts', fromMs, h1);
  if (d1 < d2) {
    add('hourly', h1, d1);
    add('daily', d1, d2);
    add('hourly', d2, h2);
  } else {
    add('hourly', h1, h2);
  }
  add('counts', h2, toMs);
  return pieces;
}
