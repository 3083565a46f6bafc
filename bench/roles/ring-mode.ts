/**
 * Bench role for the ring-modes comparison (bench/ring-modes.ts): one stage
 * of the pipeline in a process of its own, in the OFFLOG_RING_MODE its
 * environment names, so its time, memcached operations and peak RSS are its own.
 *
 *   node --import tsx bench/roles/ring-mode.ts worker <pinned now ms>   drain the queued jobs (until idle)
 *   node --import tsx bench/roles/ring-mode.ts flush <now ms>           flush every finished slice
 *
 * Prints one JSON line with the result.
 */
import { loadConfig } from '../../lib/base/config.ts';
import { createLogger } from '../../lib/base/log.ts';
import { Runtime } from '../../lib/runtime.ts';

const [stage, at] = process.argv.slice(2);
const nowMs = Number(at);
if ((stage !== 'worker' && stage !== 'flush') || !Number.isSafeInteger(nowMs)) {
  process.stderr.write('usage: ring-mode.ts worker|flush <epoch ms>\n');
  process.exit(64);
}
const rt = new Runtime(loadConfig(process.env), createLogger(process.env.OFFLOG_LOG_LEVEL ?? 'warn', `bench-${stage}`));
const peakRssMb = (): number => Math.round(process.resourceUsage().maxRSS / 102.4) / 10;
let out: Record<string, unknown>;
if (stage === 'worker') {
  await rt.ring.bootTimes(); // connected off the clock
  const worker = rt.worker({}, { now: () => nowMs });
  const t0 = performance.now();
  const stats = await worker.run({ idle: true });
  const ms = performance.now() - t0;
  out = { ms: Math.round(ms), events: stats.events, jobs: stats.jobs, folds: stats.folds, ops: rt.ring.ops, peakRssMb: peakRssMb() };
} else {
  await rt.store.migrate();
  await rt.ring.bootTimes();
  const before = rt.ring.ops;
  const t0 = performance.now();
  const result = await rt.flush(new Date(nowMs));
  const ms = performance.now() - t0;
  // The flush proper (the slices into MySQL); with no bus the rollups follow it in the same call, timed apart.
  out = { ms: result.durationMs, rollupMs: Math.round(ms) - result.durationMs, rows: result.rows, statuses: result.slices.map((s) => s.status), ops: rt.ring.ops - before, peakRssMb: peakRssMb() };
}
await rt.close();
process.stdout.write(`${JSON.stringify(out)}\n`);
