/**
 * The ring's writer side against real memcached: counters upserted (one
 * atomic `ma`) for pairs a writer has not seen in the slice, incremented once
 * it has; no
 * value sum until one is non-zero; writers racing, or wrong about what
 * exists, still count exactly; the writer/flush announcement.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { Deltas } from '../lib/domain/aggregate.ts';
import { PairFlags } from '../lib/domain/pairtable.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { judge } from '../lib/flush/flush.ts';
import { Ring, type RingOptions } from '../lib/count/ring.ts';
import { memcached } from './daemons.ts';
import { futureSlice, prng, startOf, testConfig } from './support.ts';

const SLICE = 600;
const rings: Ring[] = [];
after(() => Promise.all(rings.map((r) => r.close())));

function ring(overrides: Partial<RingOptions> & { keyPrefix: string }, servers?: number[]): Ring {
  const c = testConfig();
  const r = new Ring({
    servers: servers ? servers.map((port) => ({ host: '127.0.0.1', port })) : c.memcachedServers,
    sliceSeconds: SLICE,
    ringSlices: c.ringSlices,
    ...overrides,
  });
  rings.push(r);
  return r;
}

const prefix = (): string => testConfig().keyPrefix;

/** One fold of events [user, action, value] in `slice`. */
function fold(slice: SliceId, events: readonly (readonly [number, number, number])[]): Deltas {
  const d = new Deltas();
  d.addAll(events.map(([u, a, v]) => ({ userId: String(u), actionId: a, value: v, at: startOf(slice, SLICE) + 1000 })), slice, SLICE);
  return d;
}

/** Every row of a slice as the flush would read it, keyed user:action → "count/sum"; and the reader's totals. */
async function readSlice(r: Ring, slice: SliceId): Promise<{ rows: Map<string, string>; totals: ReturnType<Awaited<ReturnType<Ring['openSlice']>>['totals']> }> {
  const reader = await r.openSlice(slice, 333);
  const rows = new Map<string, string>();
  for (let b = await reader.next(); b !== null; b = await reader.next()) {
    for (let i = 0; i < b.length; i++) {
      const key = `${b.users[i]}:${b.actions[i]}`;
      assert.ok(!rows.has(key), `pair ${key} read twice`);
      rows.set(key, `${b.counts[i]}/${b.valueSums[i]}`);
    }
  }
  return { rows, totals: reader.totals() };
}

/** Expected rows from the same events. */
function expect(events: readonly (readonly [number, number, number])[]): Map<string, string> {
  const sums = new Map<string, [number, number]>();
  for (const [u, a, v] of events) {
    const k = `${u}:${a}`;
    const cur = sums.get(k) ?? [0, 0];
    sums.set(k, [cur[0] + 1, cur[1] + v]);
  }
  return new Map([...sums].map(([k, [c, v]]) => [k, `${c}/${v}`]));
}

test('PairFlags remembers flags per pair across growth, stops learning at its bound, and never forgets', () => {
  const f = new PairFlags(50_000);
  for (let i = 0; i < 60_000; i++) f.add(i % 7, i, 1 + (i % 3), i % 2 === 0 ? PairFlags.COUNT : PairFlags.COUNT | PairFlags.SUM);
  assert.equal(f.size, 50_000);
  let wrong = 0;
  for (let i = 0; i < 50_000; i++) if (f.get(i % 7, i, 1 + (i % 3)) !== (i % 2 === 0 ? 1 : 3)) wrong++;
  assert.equal(wrong, 0, 'every pair learnt keeps its flags');
  let unknown = 0;
  for (let i = 50_000; i < 60_000; i++) if (f.get(i % 7, i, 1 + (i % 3)) === 0) unknown++;
  // Past the bound nothing is learnt: the rest read as unknown (but for the odd shared 32-bit hash).
  assert.ok(unknown > 9_990, `${unknown} of 10,000 unknown`);
  f.add(1, 8, 3, PairFlags.SUM); // i = 8: known with COUNT only
  assert.equal(f.get(1, 8, 3), PairFlags.COUNT | PairFlags.SUM, 'flags of a known pair still grow when full');
});

test('a new pair costs one upsert per counter, a known one one incr; zero value sums are never written, and read as 0', async () => {
  const r = ring({ keyPrefix: prefix() });
  const slice = futureSlice(SLICE);
  // 1,000 pairs; the 200 of users 1–100 carry values.
  const events: [number, number, number][] = [];
  for (let u = 1; u <= 500; u++) for (const a of [1, 2]) events.push([u, a, u <= 100 ? u : 0]);

  const first = await r.apply(fold(slice, events));
  // 1,200 upserts, plus a constant: the register (reserve its chunk number: incr + add; write the chunk), `vn`
  // made before the first value sum, and the slice's totals (events, twice: n and nv; value sums made).
  assert.ok(first.ops >= 1200 && first.ops <= 1200 + 9, `first fold: ${first.ops} ops`);
  assert.equal(first.newPairs, 1000);
  const second = await r.apply(fold(slice, events));
  assert.equal(second.ops, 1200 + 2, 'second fold: one incr per counter, plus the slice totals n and nv');
  assert.equal(second.newPairs, 0);

  const zeroKey = r.keys.valueSum(slice, '300', 1);
  assert.equal((await r.connections[0]!.getMulti([zeroKey])).size, 0, 'no value sum for a pair whose values were all 0');
  const { rows, totals } = await readSlice(r, slice);
  assert.deepEqual(rows, expect([...events, ...events]));
  assert.equal(rows.get('300:1'), '2/0');
  assert.equal(totals.missingPairs, 0);
  assert.equal(totals.valueSumsMade, 200n);
  assert.equal(totals.valueSumsFound, 200);
  assert.equal(judge(totals, false, null).status, 'flushed');
});

test('a second writer new to the slice: one upsert per counter the first made (not a failed add and an incr), and `vn` counts each sum once', async () => {
  const keyPrefix = prefix();
  const [w1, w2] = [ring({ keyPrefix }), ring({ keyPrefix })];
  const slice = futureSlice(SLICE);
  const events: [number, number, number][] = [];
  for (let u = 1; u <= 500; u++) for (const a of [1, 2]) events.push([u, a, u <= 100 ? u : 0]);
  const first = await w1.apply(fold(slice, events));
  const second = await w2.apply(fold(slice, events));
  assert.equal(second.newPairs, 1000, 'the second writer knew none of them');
  // Its own register chunk (reserve: 1 incr; write: 1 set), no `vn` made (w1 made it: 1 add), the same totals but `vn`.
  assert.equal(second.ops, first.ops - 1 - 1, `second writer: ${second.ops} ops, first: ${first.ops}`);
  const { rows, totals } = await readSlice(w1, slice);
  assert.deepEqual(rows, expect([...events, ...events]));
  assert.equal(totals.valueSumsMade, 200n, 'made by the first writer only');
  assert.equal(totals.valueSumsFound, 200);
  assert.equal(totals.duplicates, 1000, 'both writers listed every pair; the reader reads each once');
  assert.equal(judge(totals, false, null).status, 'flushed');
});

test('a pair whose values start later gets its value sum then, without listing the pair again', async () => {
  const r = ring({ keyPrefix: prefix() });
  const slice = futureSlice(SLICE);
  const a: [number, number, number][] = [[1, 1, 0], [2, 1, 0]];
  const b: [number, number, number][] = [[1, 1, 5], [2, 1, 0]];
  await r.apply(fold(slice, a));
  const later = await r.apply(fold(slice, b));
  assert.equal(later.newPairs, 0);
  const { rows, totals } = await readSlice(r, slice);
  assert.deepEqual(rows, expect([...a, ...b]));
  assert.equal(totals.duplicates, 0, 'listed once');
  assert.equal(totals.valueSumsMade, 1n);
});

test('two writers on two memcached servers, racing to create the same pairs: exact totals, no pair missing', async (t) => {
  const m1 = await memcached(t);
  const m2 = await memcached(t);
  await Promise.all([m1.start(), m2.start()]);
  const keyPrefix = prefix();
  const [w1, w2, reader] = [0, 1, 2].map(() => ring({ keyPrefix }, [m1.port, m2.port]));
  const slice = futureSlice(SLICE);
  const random = prng(7);
  const all: [number, number, number][] = [];
  const folds = (): [number, number, number][] => {
    const events: [number, number, number][] = [];
    for (let i = 0; i < 3000; i++) events.push([1 + Math.floor(random() * 400), 1 + Math.floor(random() * 3), random() < 0.3 ? Math.floor(random() * 100) : 0]);
    all.push(...events);
    return events;
  };
  for (let round = 0; round < 8; round++) {
    // Both at once, over the same pairs: adds race, the loser increments.
    await Promise.all([w1!.apply(fold(slice, folds())), w2!.apply(fold(slice, folds()))]);
  }
  const { rows, totals } = await readSlice(reader!, slice);
  assert.deepEqual(rows, expect(all));
  assert.equal(totals.missingPairs, 0);
  assert.equal(totals.events, BigInt(all.length));
  assert.equal(judge(totals, false, null).status, 'flushed');
});

test('a writer wrong about what exists (pairs sharing 2 hash bits), or remembering only 10 pairs, still counts exactly', async () => {
  for (const knownPairs of [{ hashBits: 2 }, { maxPairs: 10 }]) {
    const r = ring({ keyPrefix: prefix(), knownPairs });
    const slice = futureSlice(SLICE);
    const random = prng(11);
    const all: [number, number, number][] = [];
    for (let round = 0; round < 5; round++) {
      const events: [number, number, number][] = [];
      for (let i = 0; i < 2000; i++) events.push([1 + Math.floor(random() * 300), 1 + Math.floor(random() * 2), random() < 0.5 ? 1 + Math.floor(random() * 9) : 0]);
      all.push(...events);
      await r.apply(fold(slice, events));
    }
    const { rows, totals } = await readSlice(r, slice);
    assert.deepEqual(rows, expect(all), JSON.stringify(knownPairs));
    assert.equal(totals.missingPairs, 0);
    assert.equal(judge(totals, false, null).status, 'flushed', JSON.stringify(knownPairs));
  }
});

test('an evicted count is listed and made again; an evicted value sum makes the slice incomplete, not silently 0', async () => {
  const r = ring({ keyPrefix: prefix() });
  const slice = futureSlice(SLICE);
  await r.apply(fold(slice, [[1, 1, 3], [2, 1, 4]]));
  const conn = r.connections[0]!;
  await conn.exec([{ kind: 'delete', key: r.keys.count(slice, '1', 1) }, { kind: 'delete', key: r.keys.valueSum(slice, '2', 1) }]);
  // The writer still believes both exist: its incrs find nothing, and it recreates them.
  const again = await r.apply(fold(slice, [[1, 1, 5], [2, 1, 6]]));
  assert.equal(again.newPairs, 1, 'pair 1:1 listed again');
  const { rows, totals } = await readSlice(r, slice);
  // 1:1 lost its count (the value sum 3 survived); 2:1 lost its value sum (the count 1 survived).
  assert.deepEqual(rows, new Map([['1:1', '1/8'], ['2:1', '2/6']]), 'what survived, plus the later fold');
  const verdict = judge(totals, false, null);
  assert.equal(verdict.status, 'incomplete');
  assert.match(verdict.note, /1 value sum\(s\) gone/);

  // A value sum lost alone (every count intact, so the rows hold every event): still incomplete, on the sums alone.
  const other = (slice + 1) as SliceId;
  await r.apply(fold(other, [[1, 1, 3], [2, 1, 4]]));
  await conn.exec([{ kind: 'delete', key: r.keys.valueSum(other, '2', 1) }]);
  const alone = await readSlice(r, other);
  assert.deepEqual(alone.rows, new Map([['1:1', '1/3'], ['2:1', '1/0']]));
  assert.equal(alone.totals.counted, alone.totals.events, 'no count is short');
  assert.equal(alone.totals.missingPairs, 0);
  const sumsOnly = judge(alone.totals, false, null);
  assert.equal(sumsOnly.status, 'incomplete', sumsOnly.note);
  assert.equal(sumsOnly.note, '1 value sum(s) gone (evicted or restarted): those pairs\' sums read as 0');
});

test('writer and flush announce themselves: a writer inside holds the flush back; after the seal a writer sees the watermark', async () => {
  const keyPrefix = prefix();
  const writer = ring({ keyPrefix });
  const flusher = ring({ keyPrefix });
  const slice = futureSlice(SLICE);
  assert.equal(await writer.enter([slice, (slice + 1) as SliceId]), null, 'no watermark yet');
  assert.equal(await flusher.seal(slice, 50), 1, 'the writer is inside');
  await writer.leave([slice, (slice + 1) as SliceId]);
  assert.equal(await flusher.seal(slice, 2000), 0, 'the writer left');
  assert.equal(await writer.enter([(slice + 1) as SliceId]), slice, 'a writer entering after the seal sees it');
  await writer.leave([(slice + 1) as SliceId]);
});

test('a fold cut short after its counters, before the slice totals, and applied again: its value sums are still read, the slice flushed', async () => {
  const keyPrefix = prefix();
  const slice = futureSlice(SLICE);
  const events: [number, number, number][] = [[1, 1, 5], [2, 1, 0], [3, 2, 7]];
  const killed = ring({ keyPrefix });
  // Dies at the last step of apply, the slice totals (the only counters with negative tags): every pair's counters are in.
  type Arith = (lists: { tags: number[] }[]) => Promise<unknown>;
  const hook = killed as unknown as { arith: Arith };
  const real = hook.arith.bind(killed);
  hook.arith = (lists) => (lists.some((b) => b.tags.some((t) => t < 0)) ? Promise.reject(new Error('killed')) : real(lists));
  await assert.rejects(killed.apply(fold(slice, events)), /killed/);
  // Its jobs were never acknowledged: another worker (knowing nothing of the slice) applies the same fold.
  const retry = ring({ keyPrefix });
  const again = await retry.apply(fold(slice, events));
  assert.equal(again.newPairs, 3, 'the retry adds every counter, and finds them made');
  const { rows, totals } = await readSlice(retry, slice);
  assert.deepEqual(rows, expect([...events, ...events]), 'counted twice (the one-fold crash bound), value sums included, not read as 0');
  assert.equal(totals.events, 3n, 'totals of the finished fold only');
  assert.equal(totals.eventsCountingSums, 3n);
  assert.equal(totals.valueSumsMade, 0n, 'the sums were made by the fold that never wrote its totals');
  assert.equal(totals.valueSumsFound, 2);
  assert.equal(judge(totals, false, null).status, 'flushed');
});

test('two pools: a slice written under the old pool and the new one is read in key order, counts and value sums (absent = 0) added across servers', async (t) => {
  const m1 = await memcached(t);
  const m2 = await memcached(t);
  await Promise.all([m1.start(), m2.start()]);
  const keyPrefix = prefix();
  const slice = futureSlice(SLICE);
  const old = ring({ keyPrefix }, [m1.port]);
  const grown = ring({ keyPrefix, previousServers: [{ host: '127.0.0.1', port: m1.port }] }, [m1.port, m2.port]);
  const random = prng(5);
  const make = (n: number, withValues: boolean): [number, number, number][] => {
    const events: [number, number, number][] = [];
    for (let i = 0; i < n; i++) events.push([1 + Math.floor(random() * 200), 1 + Math.floor(random() * 3), withValues && random() < 0.5 ? 1 + Math.floor(random() * 50) : 0]);
    return events;
  };
  // Values only under one pool: wherever a pair's other server holds just a count, its sum there is 0.
  const a = make(3000, true);
  const b = make(3000, false);
  const c = make(1000, true);
  await old.apply(fold(slice, a));
  await grown.apply(fold(slice, b));
  await old.apply(fold(slice, c));
  const { rows, totals } = await readSlice(grown, slice);
  assert.deepEqual(rows, expect([...a, ...b, ...c]));
  assert.equal(totals.events, 7000n, 'n from both head servers');
  assert.equal(totals.missingPairs, 0);
  assert.equal(totals.valueSumsFound, Number(totals.valueSumsMade));
  assert.equal(judge(totals, false, null).status, 'flushed');
  // Key order: by user, then action, as numbers (the counts table's primary key).
  const keys = [...rows.keys()].map((k) => k.split(':').map(Number) as [number, number]);
  const sorted = [...keys].sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  assert.deepEqual(keys, sorted);
  // Pairs both pools listed (on two head servers) were read once.
  assert.ok(totals.duplicates > 0, 'some pairs were listed under both pools');
});

test('a writer killed right after its counters are written: every count it left in memcached is among the slice\'s rows (the register came first)', async () => {
  const keyPrefix = prefix();
  const slice = futureSlice(SLICE);
  const events: [number, number, number][] = [];
  for (let u = 1; u <= 40; u++) events.push([u, 1 + (u % 3), u % 2 === 0 ? u : 0]);
  const dying = ring({ keyPrefix });
  // The first batch of pair counters is written for real, then the writer dies before anything else.
  type Arith = (lists: { tags: number[] }[]) => Promise<unknown>;
  const hook = dying as unknown as { arith: Arith };
  const real = hook.arith.bind(dying);
  let killed = false;
  hook.arith = async (lists) => {
    if (killed || lists.some((b) => b.tags.some((t) => t < 0))) return real(lists);
    await real(lists);
    killed = true;
    throw new Error('killed after the counters');
  };
  await assert.rejects(dying.apply(fold(slice, events)), /killed after the counters/);
  assert.ok(killed, 'the counters were written before the crash');
  const countKeys = [...new Set(events.map(([u, a]) => `${u}:${a}`))].map((k) => [k, dying.keys.count(slice, k.split(':')[0]!, Number(k.split(':')[1]))] as const);
  const inMemcached = await dying.connections[0]!.getMulti(countKeys.map(([, key]) => key));
  const left = countKeys.filter(([, key]) => inMemcached.has(key)).map(([pair]) => pair);
  assert.equal(left.length, countKeys.length, 'every counter of the fold was written');
  const { rows, totals } = await readSlice(ring({ keyPrefix }), slice);
  const unfound = left.filter((pair) => !rows.has(pair));
  assert.deepEqual(unfound, [], `counters in memcached that no reader can find (missing pairs reported: ${totals.missingPairs})`);
});
