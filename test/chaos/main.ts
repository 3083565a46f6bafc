/**
 * `npm run chaos [-- --seconds N --seed S --rate R]`: the chaos run at full
 * length (default 180 s of load), with the servers `npm test` uses (local/test.sh
 * starts them). Exit status 0 only when every check passed; the report names
 * the seed, which replays the same faults.
 */
import { parseArgs } from 'node:util';
import { Cleanup } from '../daemons.ts';
import { MAX_SECONDS, runChaos, summary } from './run.ts';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '180' }, seed: { type: 'string' }, rate: { type: 'string', default: '3000' } },
  strict: true,
});
const whole = (name: string, text: string, min: number, max: number): number => {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < min || n > max) {
    process.stderr.write(`--${name}: a whole number from ${min} to ${max}, got ${JSON.stringify(text)}\n`);
    process.exit(64);
  }
  return n;
};
const seconds = whole('seconds', values.seconds!, 5, MAX_SECONDS);
const seed = whole('seed', values.seed ?? String(Math.floor(Math.random() * 2 ** 31)), 0, 2 ** 32 - 1);
const rate = whole('rate', values.rate!, 1, 50_000);

const cleanup = new Cleanup();
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`chaos: ${sig}, stopping what it started (seed was ${seed})\n`);
    void cleanup.run().finally(() => process.exit(130));
  });
}
let code = 1;
try {
  const report = await runChaos({ seconds, seed, rate, say: (line) => process.stdout.write(`${line}\n`) }, cleanup);
  process.stdout.write(`\n${summary(report)}\n`);
  code = report.violations.length === 0 ? 0 : 1;
} finally {
  await cleanup.run();
}
process.exit(code);
