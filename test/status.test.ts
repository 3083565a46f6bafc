/**
 * `offlog status` on a slice of 1,000,000 pairs: it streams the slice, so its
 * memory holds a batch and a compact set of the pairs seen, not the rows.
 * Measured in a child process (peak RSS).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { Deltas } from '../lib/domain/aggregate.ts';
import { sliceOf, type SliceId } from '../lib/domain/slice.ts';
import { Ring } from '../lib/count/ring.ts';
import { memcached } from './daemons.ts';
import { testConfig } from './support.ts';

const PAIRS = 1_000_000;
const MB = 1024 * 1024;
/**
 * What streaming may cost on 1M pairs. The reader keeps one batch of 5,000
 * pairs (their keys, replies and totals: a few MB of heap, plus V8's headroom
 * for each batch's garbage, ~30-50 MB measured) and a PairTable of the pairs
 * seen, 14 bytes a slot: 2^21 slots = 29 MB at 1M pairs, up to ~58 MB with the
 * smaller tables its growth left for the next full GC. Measured: 83-113 MB.
 * Holding the rows as objects, as status did before it streamed, grew by
 * 218 MB on this same slice (measured with that code), and would grow on
 * with the slice.
 */
const BOUND_MB = 160;
/** The PairTable of 1M pairs alone is 29 MB: a smaller figure would mean the measure saw nothing. */
const FLOOR_MB = 20;

interface Measured { beforeBytes: number; peakBytes: number; result: { ring: { slice: number; pairs: number; events?: string }[] } }

test('offlog status on a 1,000,000-pair slice: peak RSS grows by a bounded amount, far below holding the rows (218 MB)', async (t) => {
  const mc = await memcached(t, 512);
  await mc.start();
  const env: Record<string, string> = {
    OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${mc.port}`, OFFLOG_SLICE_SECONDS: '600', OFFLOG_RING_SLICES: '6', OFFLOG_LOG_LEVEL: 'warn',
  };
  const config = testConfig(env);
  env.OFFLOG_KEY_PREFIX = config.keyPrefix;
  env.OFFLOG_GEARMAN_SERVERS = process.env.OFFLOG_GEARMAN_SERVERS ?? '';
  env.OFFLOG_MYSQL_URL = process.env.OFFLOG_MYSQL_URL ?? '';
  env.OFFLOG_TABLE_PREFIX = config.tablePrefix;

  // 1M pairs (users 1…1M, action 1) in the current slice, written as the worker writes them, 100k at a time.
  const ring = new Ring({ servers: config.memcachedServers, keyPrefix: config.keyPrefix, sliceSeconds: config.sliceSeconds, ringSlices: config.ringSlices });
  t.after(() => ring.close());
  const now = Date.now();
  const slice = sliceOf(now, config.sliceSeconds) as SliceId;
  const step = 100_000;
  for (let from = 1; from <= PAIRS; from += step) {
    const deltas = new Deltas();
    for (let u = from; u < from + step; u++) deltas.add({ userId: String(u), actionId: 1, value: 0, at: now }, slice, config.sliceSeconds);
    const applied = await ring.apply(deltas);
    assert.equal(applied.newPairs, step);
  }

  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'test/fixtures/status-memory.ts'], {
    env: { PATH: process.env.PATH ?? '', ...env }, maxBuffer: 16 * MB,
  });
  const m = JSON.parse(stdout) as Measured;
  const mine = m.result.ring.find((r) => r.slice === slice);
  assert.deepEqual([mine?.pairs, mine?.events], [PAIRS, String(PAIRS)], 'status read the whole slice');
  const growthMb = (m.peakBytes - m.beforeBytes) / MB;
  t.diagnostic(`status on ${PAIRS} pairs: peak RSS grew by ${growthMb.toFixed(1)} MB`);
  assert.ok(growthMb < BOUND_MB, `status grew by ${growthMb.toFixed(1)} MB (bound ${BOUND_MB} MB)`);
  assert.ok(growthMb > FLOOR_MB, `status grew by only ${growthMb.toFixed(1)} MB: the measure is broken`);
});
