/**
 * Seed compatibility: `logSimple` jobs from clients that are not ours — the
 * gearman command-line tool and PHP's GearmanClient::doBackground — are
 * counted exactly.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import { flush } from '../lib/flush/flush.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { Worker } from '../lib/count/worker.ts';
import { drainQueues, Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';

const SLICE = 600;
const rt = testRuntime();
const [server] = rt.config.gearmanServers;

before(async () => {
  await drainQueues(rt.config);
  await rt.store.migrate();
});
after(() => rt.close());

test('logSimple from the gearman CLI and from PHP is counted exactly', async () => {
  const base = futureSlice(SLICE);
  const expected = new Expected();
  const sliceStart = startOf(base, SLICE);

  // gearman CLI: one job per line (-n), in the background (-b).
  const lines: string[] = [];
  for (let i = 0; i < 300; i++) {
    const user = 1000 + (i % 7);
    const action = 1 + (i % 3);
    lines.push(i % 10 === 0 ? JSON.stringify({ userid: user, actionId: action, payload: `line ${i}` }) : JSON.stringify({ userid: user, actionId: action }));
    expected.add(sliceStart, user, action);
  }
  execFileSync('gearman', ['-h', server!.host, '-p', String(server!.port), '-f', 'logSimple', '-b', '-n'], { input: `${lines.join('\n')}\n` });

  // PHP, exactly as the original OffLog client did it; user ids as strings and above 2^53 too.
  const php = `
    $c = new GearmanClient();
    $c->addServer('${server!.host}', ${server!.port});
    for ($i = 0; $i < 200; $i++) {
      $user = ($i % 2) ? 5000 + ($i % 4) : '18446744073709551610';
      $c->doBackground('logSimple', json_encode(['userid' => $user, 'actionId' => 7, 'payload' => "php $i"]));
      if ($c->returnCode() != GEARMAN_SUCCESS) { fwrite(STDERR, "submit failed\\n"); exit(1); }
    }`;
  execFileSync('php', ['-r', php]);
  for (let i = 0; i < 200; i++) expected.add(sliceStart, i % 2 ? 5000 + (i % 4) : '18446744073709551610', 7);

  const worker = rt.worker({}, { now: () => sliceStart + 5000 });
  const stats = await worker.run({ idle: true });
  assert.equal(stats.jobs, 500);
  assert.equal(stats.events, 500);
  assert.equal(stats.deadLetters, 0);

  const result = await rt.flush(new Date(startOf((base + 2) as SliceId, SLICE)));
  assert.equal(result.rows, expected.rows.size);
  assert.deepEqual(await readCounts(rt), expected.asStrings());
});
