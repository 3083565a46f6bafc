/**
 * A worker process for the chaos run: the real Worker, in a process of its
 * own so that SIGKILL is a real crash. Its clock may be skewed
 * (CHAOS_CLOCK_OFFSET_MS, added to Date.now()), which is how the run delays
 * clocks. It prints its stats as one JSON line a second (a killed worker's
 * last line is what the run knows of it) and once more when stopped (SIGTERM).
 */
import { loadConfig } from '../../lib/base/config.ts';
import { Runtime } from '../../lib/runtime.ts';

const offset = Number(process.env.CHAOS_CLOCK_OFFSET_MS ?? '0');
if (!Number.isInteger(offset)) throw new TypeError(`CHAOS_CLOCK_OFFSET_MS: a whole number of ms, got ${process.env.CHAOS_CLOCK_OFFSET_MS}`);
const rt = new Runtime(loadConfig(process.env));
const worker = rt.worker({}, { now: () => Date.now() + offset });
const report = () => process.stdout.write(`${JSON.stringify(worker.stats)}\n`);
const timer = setInterval(report, 1000);
process.once('SIGTERM', () => worker.stop());
try {
  await worker.run();
} finally {
  clearInterval(timer);
  report();
  await rt.close();
}
