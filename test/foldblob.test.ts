/** Pure logic of ring mode `folds`: the blob format, summing blobs into rows, its settings and fault hook. No servers. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Deltas } from '../lib/domain/aggregate.ts';
import { MAX_U64 } from '../lib/domain/contract.ts';
import {
  decodeFoldChunk, encodeFoldChunks, FOLD_CHUNK_BYTES, FOLD_ENTRY_BYTES, FOLD_HEADER_BYTES, FoldBlobError, foldBlobs, foldEvents, readFoldHeader, type FoldEntry,
} from '../lib/domain/foldblob.ts';
import { SliceSum } from '../lib/domain/foldsum.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { prng } from '../lib/base/prng.ts';
import { loadConfig } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { faultHook } from '../lib/base/fault.ts';

const S = (n: number) => n as SliceId;
const entry = (user: bigint, action: number, count: number, sum: number | bigint): FoldEntry => ({ hi: Number(user >> 32n), lo: Number(user & 0xffff_ffffn), action, count, sum });

function decodeAll(chunks: Buffer[]): { entries: [bigint, number, number, bigint][]; late: number } {
  const entries: [bigint, number, number, bigint][] = [];
  let late = 0;
  chunks.forEach((c, i) => {
    const h = decodeFoldChunk(c, (hi, lo, action, count, sum) => entries.push([(BigInt(hi) << 32n) | BigInt(lo), action, count, BigInt(sum)]));
    assert.equal(h.index, i);
    assert.equal(h.chunks, chunks.length);
    late += h.late;
  });
  return { entries, late };
}

describe('fold blobs', () => {
  test('round trip: u64 user ids, sums at 2^53 and at 2^64 − 1 exact, late on chunk 0 only', () => {
    const entries = [entry(0n, 1, 1, 0), entry(2n ** 64n - 1n, 65535, 7, MAX_U64), entry(2n ** 53n + 1n, 3, 2, 2n ** 53n + 1n), entry(42n, 2, 5, 2 ** 53 - 1)];
    const chunks = encodeFoldChunks(entries, 9);
    assert.equal(chunks.length, 1);
    assert.equal(chunks[0]!.length, FOLD_HEADER_BYTES + 4 * FOLD_ENTRY_BYTES);
    assert.deepEqual(decodeAll(chunks), {
      late: 9,
      entries: [[0n, 1, 1, 0n], [2n ** 64n - 1n, 65535, 7, MAX_U64], [2n ** 53n + 1n, 3, 2, 2n ** 53n + 1n], [42n, 2, 5, 2n ** 53n - 1n]],
    });
  });

  test('chunks are at most 512 KB by default and as small as asked; every entry lands once', () => {
    const perDefault = Math.floor((FOLD_CHUNK_BYTES - FOLD_HEADER_BYTES) / FOLD_ENTRY_BYTES);
    const many = Array.from({ length: perDefault * 2 + 5 }, (_, i) => entry(BigInt(i), 1 + (i % 3), 1, i));
    const big = encodeFoldChunks(many, 0);
    assert.equal(big.length, 3);
    for (const c of big) assert.ok(c.length <= FOLD_CHUNK_BYTES, `${c.length} bytes`);
    assert.equal(decodeAll(big).entries.length, many.length);
    const small = encodeFoldChunks(many.slice(0, 10), 4, FOLD_HEADER_BYTES + 3 * FOLD_ENTRY_BYTES);
    assert.equal(small.length, 4);
    assert.deepEqual(decodeAll(small).entries.map((e) => e[0]), Array.from({ length: 10 }, (_, i) => BigInt(i)));
    assert.equal(decodeAll(small).late, 4);
  });

  test('an empty slice (late events only) is one chunk; a count past 2^32 − 1 is split, not wrapped', () => {
    assert.deepEqual(decodeAll(encodeFoldChunks([], 3)), { entries: [], late: 3 });
    const split = decodeAll(encodeFoldChunks([entry(5n, 1, 2 ** 32 + 10, 77)], 0)).entries;
    assert.deepEqual(split, [[5n, 1, 2 ** 32 - 1, 77n], [5n, 1, 11, 0n]]);
  });

  test('bad input is refused with what was wrong', () => {
    assert.throws(() => encodeFoldChunks([entry(1n, 0, 1, 0)], 0), /action must be 1\.\.65535/);
    assert.throws(() => encodeFoldChunks([entry(1n, 1, 0, 0)], 0), /count must be a whole number >= 1/);
    assert.throws(() => encodeFoldChunks([entry(1n, 1, 1, MAX_U64 + 1n)], 0), /sum must be in 0\.\.2\^64-1/);
    assert.throws(() => encodeFoldChunks([], -1), /late must be/);
    assert.throws(() => encodeFoldChunks([], 0, 20), /maxBytes must leave room/);
    const good = encodeFoldChunks([entry(1n, 1, 1, 1)], 0)[0]!;
    assert.throws(() => readFoldHeader(Buffer.from('12345678901234')), FoldBlobError);
    assert.throws(() => readFoldHeader(good.subarray(0, good.length - 1)), /not a header and whole 22-byte entries/);
    const v2 = Buffer.from(good);
    v2[2] = 2;
    assert.throws(() => readFoldHeader(v2), /version 2/);
    const zero = Buffer.from(good);
    zero.writeUInt16BE(0, FOLD_HEADER_BYTES + 8);
    assert.throws(() => decodeFoldChunk(zero, () => undefined), /action 0/);
  });

  test('foldBlobs and foldEvents split a fold by slice, with its late events', () => {
    const d = new Deltas();
    // Two events of slice 10, one of slice 11; one event of slice 3 is late into 11 (current = 11).
    d.add({ userId: '7', actionId: 1, value: 5, at: 10 * 600_000 + 1 } as never, S(11), 600);
    d.add({ userId: '7', actionId: 1, value: 6, at: 10 * 600_000 + 2 } as never, S(11), 600);
    d.add({ userId: '8', actionId: 2, value: 0, at: 11 * 600_000 } as never, S(11), 600);
    d.add({ userId: '9', actionId: 2, value: 1, at: 3 * 600_000 } as never, S(11), 600);
    assert.deepEqual([...foldEvents(d)].sort(), [[10, 2], [11, 2]]);
    const blobs = foldBlobs(d);
    assert.deepEqual(decodeAll(blobs.get(S(10))!), { late: 0, entries: [[7n, 1, 2, 11n]] });
    assert.deepEqual(decodeAll(blobs.get(S(11))!), { late: 1, entries: [[8n, 2, 1, 0n], [9n, 2, 1, 1n]] });
  });
});

describe('summing a slice from blobs', () => {
  test('pairs add up across folds, rows come out in key order, sums exact past 2^53 and held at 2^64 − 1', () => {
    const sum = new SliceSum();
    const a = encodeFoldChunks([entry(2n ** 40n, 1, 3, 2 ** 53 - 1), entry(5n, 2, 1, 1), entry(2n ** 63n, 1, 1, MAX_U64 - 1n)], 2);
    const b = encodeFoldChunks([entry(2n ** 40n, 1, 4, 2), entry(5n, 1, 1, 0), entry(2n ** 63n, 1, 1, 5)], 0);
    assert.equal(sum.addChunk(a[0]!).events, 5);
    assert.equal(sum.addChunk(b[0]!).events, 6);
    assert.equal(sum.counted, 11);
    assert.equal(sum.late, 2);
    assert.equal(sum.saturated, 1);
    const rows = [...sum.rows(3)];
    assert.deepEqual(rows.map((r) => r.length), [3, 1]);
    assert.deepEqual(rows.flatMap((r) => r.users.map((u, i) => [u, r.actions[i], r.counts[i], r.valueSums[i]])), [
      ['5', 1, '1', '0'],
      ['5', 2, '1', '1'],
      [String(2n ** 40n), 1, '7', String(2n ** 53n + 1n)],
      [String(2n ** 63n), 1, '2', String(MAX_U64)],
    ]);
  });

  test('random folds: the rows equal a straightforward BigInt sum of every entry', () => {
    const rand = prng(7);
    const want = new Map<string, [number, bigint]>();
    const sum = new SliceSum();
    for (let f = 0; f < 20; f++) {
      const entries: FoldEntry[] = [];
      for (let i = 0; i < 200; i++) {
        const user = BigInt(Math.floor(rand() * 50)) * (rand() < 0.1 ? 2n ** 50n : 1n);
        const e = entry(user, 1 + Math.floor(rand() * 3), 1 + Math.floor(rand() * 9), rand() < 0.05 ? 2n ** 60n : Math.floor(rand() * 1000));
        if (entries.some((x) => x.hi === e.hi && x.lo === e.lo && x.action === e.action)) continue;
        entries.push(e);
        const k = `${user}:${e.action}`;
        const [c, s] = want.get(k) ?? [0, 0n];
        const t = s + BigInt(e.sum);
        want.set(k, [c + e.count, t > MAX_U64 ? MAX_U64 : t]);
      }
      for (const c of encodeFoldChunks(entries, 0, 1000)) sum.addChunk(c);
    }
    const got = new Map<string, [number, bigint]>();
    for (const r of sum.rows(64)) for (let i = 0; i < r.length; i++) got.set(`${r.users[i]}:${r.actions[i]}`, [Number(r.counts[i]), BigInt(r.valueSums[i]!)]);
    assert.deepEqual(got, want);
  });

  test('thousands of pairs (the per-pair arrays grow): every one kept, in key order', () => {
    const sum = new SliceSum();
    const n = 5000;
    // Users past 2^31 (the low half's top bit) and past 2^37 (sorted apart), in scrambled order.
    for (let k = 0; k < n; k++) {
      const i = (k * 7919) % n;
      const user = i % 3 === 0 ? 2n ** 31n + BigInt(i) : i % 3 === 1 ? 2n ** 40n + BigInt(i) : BigInt(i);
      sum.add(Number(user >> 32n), Number(user & 0xffff_ffffn), 1 + (i % 2), 1, i);
      sum.add(Number(user >> 32n), Number(user & 0xffff_ffffn), 1 + (i % 2), 2, 1);
    }
    assert.equal(sum.size, n);
    assert.equal(sum.counted, 3 * n);
    const users = [...sum.rows(999)].flatMap((r) => r.users.map((u, j) => [BigInt(u), r.actions[j]!, r.counts[j], r.valueSums[j]] as const));
    assert.equal(users.length, n);
    for (let j = 1; j < n; j++) assert.ok(users[j - 1]![0] < users[j]![0] || (users[j - 1]![0] === users[j]![0] && users[j - 1]![1] < users[j]![1]), `row ${j} out of order`);
    assert.ok(users.every(([, , c]) => c === '3'));
  });

  test('a bad chunk adds nothing and says why', () => {
    const sum = new SliceSum();
    const bad = Buffer.from(encodeFoldChunks([entry(1n, 1, 1, 1), entry(2n, 1, 1, 1)], 0)[0]!);
    bad.writeUInt16BE(0, FOLD_HEADER_BYTES + FOLD_ENTRY_BYTES + 8);
    assert.throws(() => sum.addChunk(bad), /action 0/);
    assert.equal(sum.size, 0);
    assert.equal(sum.counted, 0);
  });
});

describe('ring mode settings', () => {
  test('OFFLOG_RING_MODE, OFFLOG_JOBS_PER_FOLD and OFFLOG_FAULT: defaults, values, and bad input named', () => {
    const d = loadConfig({});
    assert.equal(d.ringMode, 'counters');
    assert.equal(d.jobsPerFold, undefined);
    assert.equal(d.fault, undefined);
    const c = loadConfig({ OFFLOG_RING_MODE: 'folds', OFFLOG_JOBS_PER_FOLD: '128', OFFLOG_FAULT: 'blobs:3:SIGSTOP' });
    assert.deepEqual([c.ringMode, c.jobsPerFold, c.fault], ['folds', 128, { step: 'blobs', n: 3, signal: 'SIGSTOP' }]);
    assert.deepEqual(loadConfig({ OFFLOG_FAULT: 'acked:1' }).fault, { step: 'acked', n: 1, signal: 'SIGKILL' });
    assert.throws(() => loadConfig({ OFFLOG_RING_MODE: 'fold' }), (e: Error) => e instanceof ConfigError && /OFFLOG_RING_MODE/.test(e.message) && /"fold"/.test(e.message));
    assert.throws(() => loadConfig({ OFFLOG_JOBS_PER_FOLD: '0' }), /OFFLOG_JOBS_PER_FOLD: must be at least 1/);
    assert.throws(() => loadConfig({ OFFLOG_FAULT: 'stored:1' }), /OFFLOG_FAULT: must be <step>:<n>/);
    assert.throws(() => loadConfig({ OFFLOG_FAULT: 'blobs:0' }), /OFFLOG_FAULT/);
  });

  test('the fault hook signals once, at the n-th time the step is reached', () => {
    const sent: string[] = [];
    const hook = faultHook({ step: 'blobs', n: 2, signal: 'SIGKILL' }, (s) => sent.push(s))!;
    for (const step of ['claimed', 'blobs', 'announced', 'blobs', 'blobs']) hook(step);
    assert.deepEqual(sent, ['SIGKILL']);
    assert.equal(faultHook(undefined), undefined);
  });
});
