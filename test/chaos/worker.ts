/**
 * A worker process for the chaos run: the real Worker, in a process of its
 * own so that SIGKILL is a real crash. Its clock may be skewed
 * (CHAOS_CLOCK_OFFSET_MS, added to Date.now()), which is how the run delays
 * clocks. It prints its stats as one JSON line a second (a killed worker's
 * last line is what the run knows of it) and once more when stopped (SIGTERM).
 *
 * A line on stdin arms a crash inside the next store (the store-kill fault):
 *   `kill-after counters`  SIGKILL itself once the fold's pair counters are in
 *                          memcached, before the slice totals, marks and acks
 *                          (the fold is applied again: bounded duplicates);
 *   `kill-after marks`     once the fold is committed (its claims are then
 *                          final: the jobs' "marks"), before they are
 *                          acknowledged (redelivered, and skipped).
 * It waits 200 ms first (an acknowledgement sent too early reaches gearmand
 * meanwhile, rather than being lost with the connection), then prints what
 * the fold held, `{"storeKill":…,"events":…,"uniques":[…]}`, and dies. Jobs it
 * finds already applied (claimed by a committed fold) it prints as
 * `{"appliedFound":[…]}`: the run checks that the jobs of a fold killed after
 * its marks came back, and were found applied.
 */
import { writeSync } from 'node:fs';
import { sleep } from '../../lib/base/backoff.ts';
import { loadConfig } from '../../lib/base/config.ts';
import { Runtime } from '../../lib/runtime.ts';

const offset = Number(process.env.CHAOS_CLOCK_OFFSET_MS ?? '0');
if (!Number.isInteger(offset)) throw new TypeError(`CHAOS_CLOCK_OFFSET_MS: a whole number of ms, got ${process.env.CHAOS_CLOCK_OFFSET_MS}`);
const rt = new Runtime(loadConfig(process.env));
const worker = rt.worker({}, { now: () => Date.now() + offset });
let armed: 'counters' | 'marks' | null = null;
const die = async (held: { storeKill: 'counters' | 'marks'; events?: number; uniques?: string[] }): Promise<never> => {
  await sleep(200);
  writeSync(1, `${JSON.stringify(held)}\n`);
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable');
};
// The pair counters are the first batch of counter writes (tags ≥ 0; even: a count) in Ring.apply; the slice totals come after.
type Lists = { tags: number[]; amounts: (number | bigint)[] }[];
const ring = rt.ring as unknown as { arith: (lists: Lists) => Promise<unknown> };
const arith = ring.arith.bind(rt.ring);
ring.arith = async (lists) => {
  const result = await arith(lists);
  if (armed === 'counters' && lists.some((l) => l.tags.length > 0) && lists.every((l) => l.tags.every((t) => t >= 0))) {
    let events = 0;
    for (const l of lists) l.tags.forEach((t, i) => (events += t % 2 === 0 ? Number(l.amounts[i]) : 0));
    await die({ storeKill: 'counters', events });
  }
  return result;
};
// A fold's jobs, by fold id, from its claims: what a kill after its commit held.
const { claims } = worker;
const foldJobs = new Map<string, string[]>();
const claimFold = claims.claimFold.bind(claims);
claims.claimFold = async (uniques, options) => {
  const claimed = await claimFold(uniques, options);
  const found = new Set(claimed.duplicates);
  foldJobs.set(claimed.fold, uniques.filter((u) => u && !found.has(u)));
  if (found.size > 0) writeSync(1, `${JSON.stringify({ appliedFound: [...found] })}\n`);
  return claimed;
};
const commit = claims.commit.bind(claims);
claims.commit = async (fold, totals) => {
  const committed = await commit(fold, totals);
  const uniques = foldJobs.get(fold) ?? [];
  foldJobs.delete(fold);
  if (armed === 'marks' && committed && uniques.length > 0) await die({ storeKill: 'marks', uniques });
  return committed;
};
process.stdin.setEncoding('utf8').on('data', (text: string) => {
  const m = /kill-after (counters|marks)/.exec(text);
  if (m) armed = m[1] as 'counters' | 'marks';
});
const report = () => process.stdout.write(`${JSON.stringify(worker.stats)}\n`);
const timer = setInterval(report, 1000);
process.once('SIGTERM', () => worker.stop());
try {
  await worker.run();
} finally {
  clearInterval(timer);
  report();
  await rt.close();
  // stdin (the run's pipe) would keep the process alive.
  process.stdin.destroy();
}
