/**
 * Ring mode `folds`, the model test: workers and a flush on the in-memory
 * memcached (test/folds-model.ts), killed at every operation boundary, at
 * every pair of boundaries (a second crash during the recovery from the
 * first), and in seeded interleavings of three workers. Every run must end
 * with each job in exactly one committed fold and every total exact.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { prng } from '../lib/base/prng.ts';
import { Claims } from '../lib/count/claims.ts';
import { Placement } from '../lib/count/placement.ts';
import type { MemcacheConnection } from '../lib/wire/memcache.ts';
import { Schedule } from './memory-memcached.ts';
import { expectedTotals, flushedTotals, modelJobs, runModel, SLICE_SECONDS, type ClaimsFactory, type ModelJob, type ModelOptions, type ModelResult } from './folds-model.ts';

const START = 29_000_000 * SLICE_SECONDS * 1000 + 30_000;

/** The real Claims on a fake connection (it only calls exec); `waitMs` bounds its wait for a live holder, in real time. */
const realClaims: ClaimsFactory = (conn, keys, ttl) => {
  // One server: the real Placement over a made-up address puts every key on connection 0.
  const ring = { keys, placement: new Placement([{ host: 'fake', port: 1 }]), connections: [conn as unknown as MemcacheConnection], ttl, ops: 0 };
  return new Claims(ring, { leaseSeconds: 30 });
};

/** The invariants every run must meet, with the run's description in each message. */
function check(r: ModelResult, jobs: readonly ModelJob[], what: string): void {
  assert.deepEqual(flushedTotals(r.db), expectedTotals(jobs), `${what}: flushed totals differ from each job counted once`);
  for (const j of jobs) {
    const holders = [...r.committedUniques].filter(([, us]) => us.has(j.unique)).map(([f]) => f);
    assert.equal(holders.length, 1, `${what}: job ${j.unique} is in ${holders.length} committed folds (${holders.join(', ')})`);
  }
  for (const [slice, t] of r.sliceTotals) {
    assert.equal(t.counted, t.events, `${what}: slice ${slice} counted ${t.counted} of the ${t.events} events its committed folds hold`);
    assert.equal(t.missingChunks, 0, `${what}: slice ${slice} lost chunks`);
    assert.equal(t.corrupt, 0, `${what}: slice ${slice} has corrupt items`);
  }
  // Every fold any slice lists is decided once the flush has read that slice.
  const listed = r.server.keys().filter((k) => k.endsWith(':folds'));
  for (const key of listed) {
    for (const token of r.server.peek(key)!.toString().split(' ').filter(Boolean)) {
      const fold = token.split(':')[0]!;
      assert.ok(r.server.peek(`m:f:${fold}`) !== undefined, `${what}: fold ${fold} listed in ${key} is undecided after the flush`);
    }
  }
}

function options(jobs: ModelJob[], crashAt: Set<number>, seed: number | null, extra: Partial<ModelOptions> = {}): ModelOptions {
  return { jobs, copies: [jobs[0]!.unique, jobs[jobs.length - 1]!.unique], workers: 2, jobsPerFold: 2, flushAfterAcks: 1, schedule: new Schedule(crashAt, seed), claims: realClaims, startMs: START, ...extra };
}

describe('fold protocol model (in-memory memcached)', () => {
  const jobs = modelJobs(5, START, prng(11));

  test('no crash: two workers, a re-sent job each way, a flush mid-run: exact, each job in one committed fold', async () => {
    const r = await runModel(options(jobs, new Set(), null));
    check(r, jobs, 'clean run');
    assert.equal(r.restarts, 0);
    assert.ok(r.committedUniques.size >= 3, `expected at least 3 committed folds, got ${r.committedUniques.size}`);
  });

  test('a crash at every single operation boundary', async () => {
    const clean = options(jobs, new Set(), null);
    await runModel(clean);
    const boundaries = clean.schedule.step;
    assert.ok(boundaries > 40, `a clean run has ${boundaries} operations`);
    let crashed = 0;
    for (let k = 0; k < boundaries; k++) {
      const o = options(jobs, new Set([k]), null);
      const r = await runModel(o);
      check(r, jobs, `crash at boundary ${k} (${[...o.schedule.crashes.values()].join(', ')})`);
      crashed += o.schedule.crashes.size;
    }
    assert.equal(crashed, boundaries, 'every boundary of the clean run killed a process');
    process.stdout.write(`# model: a crash at each of ${boundaries} boundaries, every run exact\n`);
  });

  test('a worker paused (SIGSTOP) at every single boundary until a flush is over: its open fold is aborted, it stores again', async () => {
    const clean = options(jobs, new Set(), null, { flushAfterAcks: null });
    await runModel(clean);
    const boundaries = clean.schedule.step;
    let pausedOpen = 0;
    for (let k = 0; k < boundaries; k++) {
      const o = options(jobs, new Set(), null, { flushAfterAcks: 1000 });
      o.schedule.pauseAt = new Set([k]);
      const r = await runModel(o);
      check(r, jobs, `pause at boundary ${k}`);
      pausedOpen += r.abortedByFlush;
    }
    assert.ok(pausedOpen > 0, 'some pause left a fold open for the flush to abort');
    process.stdout.write(`# model: a pause at each of ${boundaries} boundaries; ${pausedOpen} folds found open and aborted by the flush\n`);
  });

  test('a crash at every pair of boundaries (the second during the recovery from the first)', async () => {
    const small = modelJobs(3, START, prng(5));
    const clean = options(small, new Set(), null, { jobsPerFold: 1 });
    await runModel(clean);
    const n = clean.schedule.step;
    let runs = 0;
    for (let a = 0; a < n; a++) {
      for (let b = a + 1; b < a + n; b++) {
        const o = options(small, new Set([a, b]), null, { jobsPerFold: 1 });
        check(await runModel(o), small, `crashes at boundaries ${a} and ${b}`);
        runs++;
      }
    }
    assert.equal(runs, (n * (n - 1)));
    process.stdout.write(`# model: ${runs} runs with two crashes (${n} boundaries), every run exact\n`);
  });

  test('seeded interleavings of three workers, with up to two crashes each', async () => {
    for (let seed = 1; seed <= 150; seed++) {
      const rand = prng(seed);
      const some = modelJobs(6, START, rand);
      const crashes = new Set<number>();
      for (let c = Math.floor(rand() * 3); c > 0; c--) crashes.add(Math.floor(rand() * 120));
      const o = options(some, crashes, seed, { workers: 3, jobsPerFold: 1 + Math.floor(rand() * 3), flushAfterAcks: Math.floor(rand() * 4) });
      check(await runModel(o), some, `seed ${seed}, crashes at ${[...crashes].join(', ') || 'none'}`);
    }
  });
});
