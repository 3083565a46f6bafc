/**
 * How a slice's rows reach MariaDB: one streamed LOAD DATA LOCAL … REPLACE
 * (or multi-row upserts where that is refused), inside the slice's one
 * transaction, totals set rather than added; and the slice reader's pair list
 * in the counts table's key order.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import type { RowDataPacket } from 'mysql2/promise';
import type { CountRows } from '../lib/domain/counts.ts';
import { PairList } from '../lib/domain/pairlist.ts';
import { countsTsv, Store, StoreValueError, type SliceRecord } from '../lib/flush/store.ts';
import { testConfig } from './support.ts';

const stores: Store[] = [];
after(() => Promise.all(stores.map((s) => s.close())));

function store(countsMethod: 'auto' | 'load' | 'upsert', tablePrefix = testConfig().tablePrefix): Store {
  const s = new Store({ url: testConfig().mysqlUrl, tablePrefix, countsMethod, rowsPerStatement: 500 });
  stores.push(s);
  return s;
}

const record = (rows: number): SliceRecord => ({ status: 'flushed', rows, pairsMissing: 0, chunksMissing: 0, events: null, late: 0n, sumsSaturated: 0, corruptItems: 0, duplicateBound: 0n, note: '' });

/** `n` rows in batches of 500, user ids from `from`, with totals that depend on `salt`. */
function batches(n: number, salt: number, from = 1): CountRows[] {
  const out: CountRows[] = [];
  for (let i = 0; i < n; i += 500) {
    const b: CountRows = { length: 0, users: [], actions: [], counts: [], valueSums: [] };
    for (let j = i; j < Math.min(n, i + 500); j++) {
      b.users.push(String(from + j));
      b.actions.push(1 + (j % 3));
      b.counts.push(String(1 + ((j * salt) % 97)));
      b.valueSums.push(j % 4 === 0 ? '18446744073709551615' : String((j * salt) % 1000));
    }
    b.length = b.users.length;
    out.push(b);
  }
  return out;
}

async function rowsOf(s: Store): Promise<string[]> {
  const [rows] = await s.pool.query<RowDataPacket[]>(`SELECT slice_start, user_id, action_id, count, value_sum FROM \`${s.tables.counts}\` ORDER BY slice_start, user_id, action_id`);
  return rows.map((r) => `${(r.slice_start as Date).toISOString()} ${r.user_id} ${r.action_id} ${r.count} ${r.value_sum}`);
}

const SLICE_START = new Date('2030-01-01T10:20:00Z');

test('the local MariaDB takes LOAD DATA LOCAL … REPLACE; a slice written by load and by upserts is the same rows', async () => {
  const auto = store('auto');
  await auto.migrate();
  assert.equal(await auto.countsMethod(), 'load', `refused: ${auto.loadRefusal}`);
  const upsert = store('upsert');
  await upsert.migrate();
  const statementsBefore = auto.statements;
  for (const s of [auto, upsert]) {
    await s.writeSlice(SLICE_START, async (write) => {
      for (const b of batches(2_345, 7)) await write(b);
      return record(2_345);
    });
  }
  assert.equal(auto.statements - statementsBefore, 4, 'START, one LOAD, the slice record, COMMIT');
  const loaded = await rowsOf(auto);
  assert.equal(loaded.length, 2_345);
  assert.deepEqual(loaded, await rowsOf(upsert));
});

test('writing a slice again sets the totals (REPLACE), it does not add them', async () => {
  const s = store('load');
  await s.migrate();
  for (const salt of [7, 11]) {
    await s.writeSlice(SLICE_START, async (write) => {
      for (const b of batches(1_200, salt)) await write(b);
      return record(1_200);
    });
  }
  const expected = store('upsert');
  await expected.migrate();
  await expected.writeSlice(SLICE_START, async (write) => {
    for (const b of batches(1_200, 11)) await write(b);
    return record(1_200);
  });
  assert.deepEqual(await rowsOf(s), await rowsOf(expected));
});

test('a failure while rows stream in leaves nothing: the slice is one transaction, and the store works after', async () => {
  const s = store('load');
  await s.migrate();
  await assert.rejects(
    s.writeSlice(SLICE_START, async (write) => {
      const [first, second] = batches(1_000, 3);
      await write(first!);
      await write(second!);
      throw new Error('memcached went away mid-slice');
    }),
    /memcached went away mid-slice/,
  );
  assert.deepEqual(await rowsOf(s), [], 'nothing committed');
  const [slices] = await s.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n FROM \`${s.tables.slices}\``);
  assert.equal(Number(slices[0]!.n), 0, 'no slice record either');
  await s.writeSlice(SLICE_START, async (write) => {
    for (const b of batches(600, 3)) await write(b);
    return record(600);
  });
  assert.equal((await rowsOf(s)).length, 600);
});

test('where LOAD DATA is refused, auto writes with upserts and says why', async () => {
  // No counts table under this prefix: the probe's LOAD fails as a refusal would.
  const s = store('auto', `${testConfig().tablePrefix}none_`);
  assert.equal(await s.countsMethod(), 'upsert');
  assert.match(s.loadRefusal ?? '', /doesn't exist/);
});

test('LOAD DATA text carries only checked digits: a tab, a line break or a letter in a value is refused', () => {
  const ok: CountRows = { length: 1, users: ['18446744073709551615'], actions: [65535], counts: ['1'], valueSums: ['0'] };
  assert.equal(countsTsv('2030-01-01 10:20:00', ok), '2030-01-01 10:20:00\t18446744073709551615\t65535\t1\t0\n');
  for (const [field, bad] of [['users', '1\t2'], ['users', '18446744073709551616'], ['counts', '1\n2'], ['valueSums', '1e3'], ['actions', 0]] as const) {
    const rows = { ...ok, [field]: [bad] } as CountRows;
    assert.throws(() => countsTsv('2030-01-01 10:20:00', rows), StoreValueError, `${field} ${JSON.stringify(bad)}`);
  }
});

test('PairList: a register in any order comes out in (user, action) order, each pair once, ids up to 2^64 − 1', () => {
  const list = new PairList();
  const big = [[0xffff_ffff, 0xffff_ffff, 9], [40, 0, 1], [0xffff_ffff, 0xffff_ffff, 2], [40, 0, 1]] as const;
  const small = [[0, 5, 2], [0, 5, 1], [31, 0xffff_ffff, 65535], [0, 5, 2], [1, 0, 1]] as const;
  for (const [hi, lo, a] of [...big, ...small]) list.add(hi, lo, a);
  assert.equal(list.seal(), 2, 'two repeats dropped');
  const got = Array.from({ length: list.length }, (_, i) => `${list.user(i)}:${list.action(i)}`);
  assert.deepEqual(got, [
    '5:1', '5:2', '4294967296:1', '137438953471:65535',
    `${40n << 32n}:1`, '18446744073709551615:2', '18446744073709551615:9',
  ]);
});
