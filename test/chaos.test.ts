/**
 * The chaos run, short: 25 s of steady load with a fixed seed, while workers
 * are SIGKILLed and restarted, gearmand restarted, MySQL cut mid-flush and
 * workers' clocks skewed; then every total is checked (see test/chaos/run.ts
 * for the invariant). `npm run chaos` is the same run for minutes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FAULT_KINDS, runChaos, schedule, summary } from './chaos/run.ts';

const SEED = 9;
const SECONDS = 25;

test('the fault schedule is a function of the seed, and a short run meets every kind of fault', () => {
  assert.deepEqual(schedule(SEED, SECONDS, 2), schedule(SEED, SECONDS, 2));
  assert.notDeepEqual(schedule(SEED, SECONDS, 2), schedule(SEED + 1, SECONDS, 2));
  const kinds = new Set(schedule(SEED, SECONDS, 2).map((f) => f.kind));
  assert.deepEqual([...kinds].sort(), [...FAULT_KINDS].sort());
});

test(`chaos, ${SECONDS} s, seed ${SEED}: every total exact or within the duplicate bound`, async (t) => {
  const report = await runChaos({ seconds: SECONDS, seed: SEED, rate: 2000 }, t);
  process.stdout.write(`${summary(report)}\n`);
  assert.deepEqual(report.violations, []);
  for (const kind of FAULT_KINDS) assert.ok(report.faults[kind] >= 1, `no ${kind} happened`);
  assert.ok(report.flushes.failed >= 1, 'a MySQL cut made at least one flush fail');
  assert.ok(report.events.sent >= SECONDS * 2000 * 0.99, `${report.events.sent} events sent`);
});
