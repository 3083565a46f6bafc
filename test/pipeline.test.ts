/**
 * The whole path on real servers: OffLogClient → gearmand → worker → memcached
 * ring → flush → MariaDB, with exact totals for every (slice, user, action).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { OffLogClient } from '../lib/send/client.ts';
import { flush } from '../lib/flush/flush.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { Worker } from '../lib/count/worker.ts';
import { drainQueues, Expected, futureSlice, prng, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 60;
const rt = testRuntime({ OFFLOG_SLICE_SECONDS: String(SLICE) });

before(async () => {
  await drainQueues(rt.config);
  await rt.store.migrate();
});
after(() => rt.close());

test('100,000 events over 1,000 users × 5 actions and 3 slices arrive exactly, in few SQL statements', async () => {
  const base = futureSlice(SLICE);
  const slices = [base, base + 1, base + 2] as SliceId[];
  const expected = new Expected();
  const random = prng(42);
  let clock = startOf(base, SLICE) + 1000;
  const worker = rt.worker({}, { now: () => clock });
  const client = new OffLogClient({ servers: rt.config.gearmanServers, logger: rt.log });

  // Phase by phase, as time would pass: the worker's clock sits in the newest slice being written.
  const phases: [number, SliceId[]][] = [[startOf(slices[1]!, SLICE) + 1000, [slices[0]!, slices[1]!]], [startOf(slices[2]!, SLICE) + 1000, [slices[2]!]]];
  const perPhase = [66_667, 33_333];
  for (const [i, [workerNow, targets]] of phases.entries()) {
    for (let n = 0; n < perPhase[i]!; n++) {
      const user = Math.floor(random() * 1000);
      const action = 1 + Math.floor(random() * 5);
      const value = random() < 0.5 ? Math.floor(random() * 1000) : 0;
      const slice = targets[n % targets.length]!;
      const at = startOf(slice, SLICE) + Math.floor(random() * SLICE * 1000);
      client.log(user, action, { value, at });
      expected.add(startOf(slice, SLICE), user, action, value);
    }
    assert.equal(await client.flush({ timeoutMs: 60_000 }), true, 'client acknowledged');
    clock = workerNow;
    await worker.run({ idle: true });
  }
  const stats = await client.close();
  assert.equal(stats.accepted, 100_000);
  assert.equal(stats.acknowledged, 100_000);
  assert.equal(stats.dropped, 0);
  assert.equal(worker.stats.events, 100_000);
  assert.equal(worker.stats.late, 0);

  const result = await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.equal(result.ran, true);
  const flushed = result.slices.filter((s) => slices.includes(s.slice));
  assert.deepEqual(flushed.map((s) => s.status), ['flushed', 'flushed', 'flushed']);
  assert.equal(flushed.reduce((n, s) => n + Number(s.events), 0), 100_000);

  const rows = await readCounts(rt);
  assert.equal(rows.size, expected.rows.size);
  assert.deepEqual(rows, expected.asStrings());

  // SQL grows with pairs, not events: a few statements per slice plus one per 2,000 rows.
  const pairs = expected.rows.size;
  assert.ok(pairs > 14_000 && pairs <= 15_000, `pairs ${pairs}`);
  const bound = result.slices.length * 4 + Math.ceil(pairs / 2000) + 3 + 10;
  assert.ok(result.statements <= bound, `${result.statements} statements for ${pairs} pairs (bound ${bound})`);

  // A second flush finds nothing new; re-flushing the same slices sets the same totals.
  const again = await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.equal(again.slices.length, 0);
  await rt.store.pool.query(`DELETE FROM \`${rt.config.tablePrefix}slices\` WHERE slice_start >= FROM_UNIXTIME(?)`, [startOf(base, SLICE) / 1000]);
  const redo = await rt.flush(new Date(startOf((base + 4) as SliceId, SLICE)));
  assert.equal(redo.rows, pairs);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});
