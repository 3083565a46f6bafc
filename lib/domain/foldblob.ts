/**
 * A fold's deltas for one slice as immutable binary blobs (ring mode `folds`):
 * what a worker `set`s once and the flush reads and sums, never increments.
 *
 * A blob is a chunk of at most FOLD_CHUNK_BYTES (memcached's item limit is
 * 1 MB; half of it leaves room and keeps one `get` reply short):
 *
 *   header  12 bytes: 'O' 'F', version 1, 0, chunk index u16, chunk count u16,
 *                     late events u32 (what this fold counted late into the slice; chunk 0 only)
 *   entries 22 bytes each: user u64, action u16, count u32, value sum u64 (all big-endian)
 *
 * The header's chunk count lets the flush read the rest of a fold once it has
 * chunk 0, and tell a lost chunk by its number. A pair whose count passes
 * 2^32 − 1 (never in practice: a fold is held in memory) is written as
 * several entries, which the reader adds up like any other.
 */
import type { Deltas } from './aggregate.ts';
import { MAX_U64 } from './contract.ts';
import type { SliceId } from './slice.ts';

export const FOLD_CHUNK_BYTES = 512 * 1024;
export const FOLD_HEADER_BYTES = 12;
export const FOLD_ENTRY_BYTES = 22;
export const FOLD_ENTRIES_PER_CHUNK = Math.floor((FOLD_CHUNK_BYTES - FOLD_HEADER_BYTES) / FOLD_ENTRY_BYTES);
const MAGIC_0 = 0x4f; // 'O'
const MAGIC_1 = 0x46; // 'F'
const VERSION = 1;
const TWO_32 = 0x1_0000_0000;
const U32_MAX = 0xffff_ffff;

/** One pair's delta as it goes into a blob: the user id as 32-bit halves (hi·2^32 + lo). */
export interface FoldEntry {
  hi: number;
  lo: number;
  action: number;
  count: number;
  /** Exact; held at 2^64 − 1 by the fold (see aggregate.ts addValue). */
  sum: number | bigint;
}

/** The header of a decoded chunk. */
export interface FoldChunkHeader {
  index: number;
  chunks: number;
  late: number;
  entries: number;
}

export class FoldBlobError extends Error {
  override name = 'FoldBlobError';
}

/**
 * Encodes one slice's entries into chunks of at most `maxBytes` (default
 * FOLD_CHUNK_BYTES). An empty slice still gets one chunk (it may carry late
 * events, and the flush expects chunk 0 of every committed fold).
 */
export function encodeFoldChunks(entries: readonly FoldEntry[], late: number, maxBytes = FOLD_CHUNK_BYTES): Buffer[] {
  const perChunk = Math.floor((maxBytes - FOLD_HEADER_BYTES) / FOLD_ENTRY_BYTES);
  if (perChunk < 1) throw new RangeError(`maxBytes must leave room for one entry (at least ${FOLD_HEADER_BYTES + FOLD_ENTRY_BYTES}), got ${maxBytes}`);
  if (!Number.isInteger(late) || late < 0 || late > U32_MAX) throw new RangeError(`late must be a whole number in 0..2^32-1, got ${late}`);
  // Split counts that do not fit a u32 into several entries first, so chunking counts real entries.
  const flat: FoldEntry[] = [];
  for (const e of entries) {
    checkEntry(e);
    if (e.count <= U32_MAX) flat.push(e);
    else {
      let left = e.count;
      let first = true;
      while (left > 0) {
        const part = Math.min(left, U32_MAX);
        flat.push({ hi: e.hi, lo: e.lo, action: e.action, count: part, sum: first ? e.sum : 0 });
        left -= part;
        first = false;
      }
    }
  }
  const chunks = Math.max(1, Math.ceil(flat.length / perChunk));
  if (chunks > 0xffff) throw new RangeError(`a fold's slice needs ${chunks} chunks, more than 65535`);
  const out: Buffer[] = [];
  for (let c = 0; c < chunks; c++) {
    const from = c * perChunk;
    const to = Math.min(flat.length, from + perChunk);
    const buf = Buffer.allocUnsafe(FOLD_HEADER_BYTES + (to - from) * FOLD_ENTRY_BYTES);
    buf[0] = MAGIC_0;
    buf[1] = MAGIC_1;
    buf[2] = VERSION;
    buf[3] = 0;
    buf.writeUInt16BE(c, 4);
    buf.writeUInt16BE(chunks, 6);
    buf.writeUInt32BE(c === 0 ? late : 0, 8);
    let o = FOLD_HEADER_BYTES;
    for (let i = from; i < to; i++, o += FOLD_ENTRY_BYTES) {
      const e = flat[i]!;
      buf.writeUInt32BE(e.hi, o);
      buf.writeUInt32BE(e.lo, o + 4);
      buf.writeUInt16BE(e.action, o + 8);
      buf.writeUInt32BE(e.count, o + 10);
      if (typeof e.sum === 'bigint') buf.writeBigUInt64BE(e.sum, o + 14);
      else {
        buf.writeUInt32BE(Math.floor(e.sum / TWO_32), o + 14);
        buf.writeUInt32BE(e.sum % TWO_32, o + 18);
      }
    }
    out.push(buf);
  }
  return out;
}

function checkEntry(e: FoldEntry): void {
  const bad = (what: string): never => {
    throw new RangeError(`fold entry (user ${e.hi}·2^32+${e.lo}, action ${e.action}): ${what}`);
  };
  if (!Number.isInteger(e.hi) || e.hi < 0 || e.hi > U32_MAX || !Number.isInteger(e.lo) || e.lo < 0 || e.lo > U32_MAX) bad('user halves must be u32');
  if (!Number.isInteger(e.action) || e.action < 1 || e.action > 0xffff) bad('action must be 1..65535');
  if (!Number.isSafeInteger(e.count) || e.count < 1) bad(`count must be a whole number >= 1, got ${e.count}`);
  if (typeof e.sum === 'bigint' ? e.sum < 0n || e.sum > MAX_U64 : !Number.isSafeInteger(e.sum) || e.sum < 0) bad(`sum must be in 0..2^64-1, got ${e.sum}`);
}

/** Reads a chunk's header, checking that the chunk is one (magic, version, whole entries). */
export function readFoldHeader(buf: Buffer): FoldChunkHeader {
  if (buf.length < FOLD_HEADER_BYTES || buf[0] !== MAGIC_0 || buf[1] !== MAGIC_1) throw new FoldBlobError(`not a fold chunk (${buf.length} bytes, starts ${JSON.stringify(buf.toString('latin1', 0, 8))})`);
  if (buf[2] !== VERSION) throw new FoldBlobError(`fold chunk version ${buf[2]}, this reader knows ${VERSION}`);
  if ((buf.length - FOLD_HEADER_BYTES) % FOLD_ENTRY_BYTES !== 0) throw new FoldBlobError(`fold chunk of ${buf.length} bytes is not a header and whole ${FOLD_ENTRY_BYTES}-byte entries`);
  const index = buf.readUInt16BE(4);
  const chunks = buf.readUInt16BE(6);
  if (chunks < 1 || index >= chunks) throw new FoldBlobError(`fold chunk says it is ${index} of ${chunks}`);
  return { index, chunks, late: buf.readUInt32BE(8), entries: (buf.length - FOLD_HEADER_BYTES) / FOLD_ENTRY_BYTES };
}

/** Calls `each` with every entry of a chunk (header checked first); returns the header. */
export function decodeFoldChunk(buf: Buffer, each: (hi: number, lo: number, action: number, count: number, sum: number | bigint) => void): FoldChunkHeader {
  const header = readFoldHeader(buf);
  for (let o = FOLD_HEADER_BYTES; o < buf.length; o += FOLD_ENTRY_BYTES) {
    const action = buf.readUInt16BE(o + 8);
    const count = buf.readUInt32BE(o + 10);
    if (action === 0 || count === 0) throw new FoldBlobError(`fold chunk entry at byte ${o} has action ${action} and count ${count} (both must be >= 1)`);
    const sHi = buf.readUInt32BE(o + 14);
    const sLo = buf.readUInt32BE(o + 18);
    // Below 2^53 a sum stays a number (the common case: no BigInt per entry).
    const sum = sHi < 0x20_0000 ? sHi * TWO_32 + sLo : (BigInt(sHi) << 32n) | BigInt(sLo);
    each(buf.readUInt32BE(o), buf.readUInt32BE(o + 4), action, count, sum);
  }
  return header;
}

/**
 * A fold's deltas as blobs, per slice they touch: each slice's pairs, in the
 * order the fold met them, with the late events counted into that slice.
 */
export function foldBlobs(deltas: Deltas, maxBytes = FOLD_CHUNK_BYTES): Map<SliceId, Buffer[]> {
  const bySlice = new Map<SliceId, FoldEntry[]>();
  for (let i = 0; i < deltas.pairs.length; i++) {
    const d = deltas.pairs[i]!;
    let list = bySlice.get(d.slice);
    if (!list) bySlice.set(d.slice, (list = []));
    list.push({ hi: deltas.hi(i), lo: deltas.lo(i), action: d.actionId, count: d.count, sum: d.value });
  }
  // Late events always come with pairs in their slice (they were counted there), but be safe.
  for (const slice of deltas.late.keys()) if (!bySlice.has(slice)) bySlice.set(slice, []);
  const out = new Map<SliceId, Buffer[]>();
  for (const [slice, entries] of bySlice) out.set(slice, encodeFoldChunks(entries, deltas.late.get(slice) ?? 0, maxBytes));
  return out;
}

/** A fold's events per slice (what its announcement and its commit record carry). */
export function foldEvents(deltas: Deltas): Map<SliceId, number> {
  const out = new Map<SliceId, number>();
  for (const d of deltas.pairs) out.set(d.slice, (out.get(d.slice) ?? 0) + d.count);
  return out;
}
