/**
 * `npm run chaos [-- --seconds N --seed S --rate R --faults kind,kind --mode counters|folds --workers N]`: the chaos run at full
 * length (default 180 s of load), with the servers `npm test` uses (local/test.sh
 * starts them). Exit status 0 only when every check passed; the report names
 * the seed, which replays the same faults.
 */
import { parseArgs } from 'node:util';
import { Cleanup } from '../daemons.ts';
import { FAULT_KINDS, MAX_SECONDS, runChaos, summary, type FaultKind } from './run.ts';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '180' }, seed: { type: 'string' }, rate: { type: 'string', default: '3000' }, faults: { type: 'string' }, mode: { type: 'string', default: 'counters' }, workers: { type: 'string', default: '2' } },
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
if (values.mode !== 'counters' && values.mode !== 'folds') {
  process.stderr.write(`--mode: counters or folds, got ${JSON.stringify(values.mode)}\n`);
  process.exit(64);
}
const mode = values.mode;
const workers = whole('workers', values.workers!, 1, 16);
const kinds = (values.faults?.split(',') ?? [...FAULT_KINDS]) as FaultKind[];
if (kinds.length === 0 || kinds.some((k) => !FAULT_KINDS.includes(k))) {
  process.stderr.write(`--faults: a comma-separated list of ${FAULT_KINDS.join(', ')}, got ${JSON.stringify(values.faults)}\n`);
  process.exit(64);
}

const cleanup = new Cleanup();
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`chaos: ${sig}, stopping what it started (seed was ${seed})\n`);
    void cleanup.run().finally(() => process.exit(130));
  });
}
let code = 1;
try {
  const report = await runChaos({ seconds, seed, rate, kinds, mode, workers, say: (line) => process.stdout.write(`${line}\n`) }, cleanup);
  process.stdout.write(`\n${summary(report)}\n`);
  code = report.violations.length === 0 ? 0 : 1;
} finally {
  await cleanup.run();
}
process.exit(code);
