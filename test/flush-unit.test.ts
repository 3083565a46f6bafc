/** Pure logic of the flush's write path: no servers. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PairTable } from '../lib/domain/pairtable.ts';
import type { CountRows } from '../lib/domain/counts.ts';
import { sqlDateTime, StoreValueError, upsertCountsSql } from '../lib/flush/store.ts';
import { isU64Decimal, U64Sum } from '../lib/domain/u64.ts';

const MAX = '18446744073709551615';

function rows(list: [string, number, string, string][]): CountRows {
  return { length: list.length, users: list.map((r) => r[0]), actions: list.map((r) => r[1]), counts: list.map((r) => r[2]), valueSums: list.map((r) => r[3]) };
}

describe('u64 decimals', () => {
  test('digits only, 1–20 of them, at most 2^64 − 1', () => {
    for (const ok of ['0', '7', '9007199254740993', MAX, '00001']) assert.equal(isU64Decimal(ok), true, ok);
    for (const bad of ['', '18446744073709551616', '99999999999999999999', '-1', '1.5', '1e3', ' 1', '1 ', "1'", '0x10', '٣', '123456789012345678901']) {
      assert.equal(isU64Decimal(bad), false, bad);
    }
  });
  test('sums stay exact past 2^53 and up to many times 2^64', () => {
    const s = new U64Sum();
    for (let i = 0; i < 3000; i++) s.add('999999999999999'); // each < 2^50, together > 2^53
    assert.equal(s.value, 3000n * 999999999999999n);
    s.add(MAX);
    s.add(MAX);
    assert.equal(s.value, 3000n * 999999999999999n + 2n * BigInt(MAX));
    assert.equal(new U64Sum().value, 0n);
  });
});

describe('PairTable', () => {
  test('finds a pair added before, whichever half of the user id differs', () => {
    const s = new PairTable(4);
    assert.equal(s.add(0, 1, 1), true);
    assert.equal(s.add(0, 1, 1), false);
    assert.equal(s.add(0, 1, 2), true);
    assert.equal(s.add(1, 1, 1), true);
    assert.equal(s.add(0xffffffff, 0xffffffff, 65535), true);
    assert.equal(s.add(0xffffffff, 0xffffffff, 65535), false);
    assert.equal(s.size, 4);
  });
  test('grows without losing pairs', () => {
    const s = new PairTable(16);
    for (let i = 0; i < 50_000; i++) assert.equal(s.add(i % 7, i, 1 + (i % 3)), true);
    for (let i = 0; i < 50_000; i++) assert.equal(s.add(i % 7, i, 1 + (i % 3)), false);
    assert.equal(s.size, 50_000);
  });
  test('keeps the value given with a pair, across growth, for ids up to 2^64 - 1', () => {
    const t = new PairTable(4);
    const pairs: [number, number, number][] = [];
    for (let i = 0; i < 30_000; i++) pairs.push([i % 5, i, 1 + (i % 3)], [0xffffffff, 0xffffffff - i, 65535], [0x1fffff, i * 7, 0]);
    pairs.forEach(([hi, lo, a], i) => assert.equal(t.getOrAdd(hi, lo, a, i), -1, `new pair ${hi}:${lo}:${a}`));
    pairs.forEach(([hi, lo, a], i) => assert.equal(t.getOrAdd(hi, lo, a, 99), i, `pair ${hi}:${lo}:${a} found`));
    assert.equal(t.size, pairs.length);
  });
});

describe('counts upsert text', () => {
  const at = new Date(Date.UTC(2026, 0, 2, 3, 40));
  test('one row per pair, slice start as a UTC DATETIME, totals set not added', () => {
    const sql = upsertCountsSql('ol_counts', at, rows([['1', 2, '3', '0'], [MAX, 65535, MAX, MAX]]));
    assert.equal(
      sql,
      "INSERT INTO `ol_counts` (slice_start, user_id, action_id, count, value_sum) VALUES ('2026-01-02 03:40:00',1,2,3,0),('2026-01-02 03:40:00',18446744073709551615,65535,18446744073709551615,18446744073709551615) ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)",
    );
  });
  test('nothing but checked integers reaches the text', () => {
    const bad: [string, number, string, string][] = [
      ["1'); DROP TABLE x; --", 1, '1', '1'],
      ['1', 0, '1', '1'],
      ['1', 65536, '1', '1'],
      ['1', 1.5, '1', '1'],
      ['1', 1, '18446744073709551616', '1'],
      ['1', 1, '1', '-1'],
      ['1', 1, '', '1'],
    ];
    for (const row of bad) assert.throws(() => upsertCountsSql('t', at, rows([['5', 1, '1', '1'], row])), StoreValueError, JSON.stringify(row));
    assert.throws(() => upsertCountsSql('t', at, rows([])), StoreValueError);
  });
  test('slice start: only dates a DATETIME literal can hold', () => {
    assert.equal(sqlDateTime(new Date(0)), '1970-01-01 00:00:00');
    assert.throws(() => sqlDateTime(new Date(NaN)), StoreValueError);
    assert.throws(() => sqlDateTime(new Date(Date.UTC(10000, 0, 1))), StoreValueError);
  });
});
