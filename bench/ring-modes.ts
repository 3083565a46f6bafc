/**
 * `npm run bench -- --only modes` (and part of a full `npm run bench`): the two
 * ring modes side by side, on the same workloads in the same run, and the
 * outcome of issue 19's decision rule (docs/ring-modes.md).
 *
 *   node --import tsx bench/ring-modes.ts [--quick] [--only uniform,zipf,dense]
 *
 * For each workload, each mode, on the bench stack (bench/stack.ts), with a
 * fresh key and table prefix:
 *   1. client: every event logged through OffLogClient and queued in gearmand (timed);
 *   2. worker stage alone: one worker process drains the queue (clock pinned in the
 *      run's second slice); memcached's own `bytes` before and after it: the ring's
 *      memory, per slice written;
 *   3. flush: one process flushes both slices; its time, rows/s and peak RSS;
 *   4. every row of the counts table checked against the exact totals (a wrong
 *      total fails the run, exit 1).
 * End to end here is the three stages one after the other (events / their summed
 * time), the same for both modes; bench/run.ts's concurrent end to end is counters only.
 *
 * The machine is named with the figures: on a shared or busy machine they are not final.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { join } from 'node:path';
import { loadConfig, type Config } from '../lib/base/config.ts';
import { OffLogClient } from '../lib/send/client.ts';
import { MemcacheConnection } from '../lib/wire/memcache.ts';
import { checkCounts, drainQueue, dropTables, flushMemcached, REPO, servicesDown, servicesUp, stackEnv } from './stack.ts';
import { expectedTotals, generate, workloadSpecs, type WorkloadSpec } from './workloads.ts';

const SLICE_SECONDS = 600;
const SLICE_MS = SLICE_SECONDS * 1000;
const MODES = ['counters', 'folds'] as const;
type Mode = (typeof MODES)[number];

export interface ModeResult {
  workload: string;
  mode: Mode;
  events: number;
  clientMs: number;
  workerMs: number;
  flushMs: number;
  endToEndPerSecond: number;
  workerPerSecond: number;
  opsPerEvent: number;
  workerOps: number;
  flushOps: number;
  ringBytesPerSlice: number;
  flushRows: number;
  flushRowsPerSecond: number;
  flushPeakRssMb: number;
  workerPeakRssMb: number;
  exact: boolean;
  mismatches: string[];
}

/** The dense workload (issue 19): about 1,000 pairs (100 users × 10 actions) and 5M events, so folds repeat the same pairs. */
function denseSpec(quick: boolean): WorkloadSpec & { name: 'dense' } {
  return { name: 'dense', events: quick ? 500_000 : 5_000_000, users: 100, actions: 10, valueShare: 0.5, seed: 0x5eed_0003 } as WorkloadSpec & { name: 'dense' };
}

/** Events the client holds: waiting to be sent, or sent and not yet acknowledged. */
const held = (c: OffLogClient): number => {
  const s = c.stats();
  return s.buffered + s.inFlight;
};

async function memcachedBytes(cfg: Config): Promise<number> {
  const c = new MemcacheConnection(cfg.memcachedServers[0]!);
  try {
    return Number((await c.stats()).bytes);
  } finally {
    await c.close();
  }
}

function role(env: Record<string, string>, args: string[]): Record<string, unknown> {
  // OFFLOG_BENCH_PROFILE_DIR: each stage writes a CPU profile there (bench/profile-summary.ts reads them).
  const prof = process.env.OFFLOG_BENCH_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${process.env.OFFLOG_BENCH_PROFILE_DIR}`, `--cpu-prof-name=${env.OFFLOG_RING_MODE}-${args[0]}-${Date.now()}.cpuprofile`] : [];
  const r = spawnSync('node', [...prof, '--import', 'tsx', join(REPO, 'bench/roles/ring-mode.ts'), ...args], { env: { ...process.env, ...env }, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.status !== 0 || !last.startsWith('{')) throw new Error(`ring-mode ${args[0]} failed (exit ${r.status}): ${r.stderr.slice(-2000)}`);
  return JSON.parse(last) as Record<string, unknown>;
}

async function runOne(stack: Record<string, string>, spec: WorkloadSpec, mode: Mode, say: (s: string) => void): Promise<ModeResult> {
  const id = randomBytes(3).toString('hex');
  const env = { ...stack, OFFLOG_KEY_PREFIX: `rm${id}:`, OFFLOG_TABLE_PREFIX: `rm${id}_`, OFFLOG_RING_MODE: mode, OFFLOG_SLICE_SECONDS: String(SLICE_SECONDS) };
  const cfg = loadConfig(env);
  await drainQueue(cfg);
  await flushMemcached(cfg);
  const w = generate(spec, SLICE_SECONDS);
  const expected = expectedTotals(w);
  // The run's two slices: the current one and the next; the worker's clock is pinned in the second.
  const base = Math.floor(Date.now() / SLICE_MS) * SLICE_MS;
  say(`${spec.name} / ${mode}: client`);
  const client = new OffLogClient({ servers: cfg.gearmanServers });
  const c0 = performance.now();
  for (let i = 0; i < w.user.length; i++) {
    client.log(w.user[i]!, w.action[i]!, { at: base + w.slice[i]! * SLICE_MS + w.offsetMs[i]!, value: w.value[i]! });
    // Past its cap (1M events held) the client drops the oldest: held events are kept well below it, as bench/roles/client.ts does.
    if ((i & 0x3fff) === 0) {
      while (held(client) > 200_000) await new Promise((r) => setTimeout(r, 1));
      await new Promise((r) => setImmediate(r));
    }
  }
  if (!(await client.flush({ timeoutMs: 600_000 }))) throw new Error('the client could not hand every event to gearmand');
  if (client.stats().dropped > 0) throw new Error(`the client dropped ${client.stats().dropped} events`);
  const clientMs = performance.now() - c0;
  await client.close();
  const bytes0 = await memcachedBytes(cfg);
  say(`${spec.name} / ${mode}: worker`);
  const worker = role(env, ['worker', String(base + SLICE_MS + 1000)]);
  const bytes1 = await memcachedBytes(cfg);
  say(`${spec.name} / ${mode}: flush`);
  const flushed = role(env, ['flush', String(base + 3 * SLICE_MS)]);
  const check = await checkCounts(cfg, `${cfg.tablePrefix}counts`, expected, base, SLICE_MS);
  dropTables(stack, ['counts', 'slices', 'state', 'dead_letters', 'migrations', 'counts_hourly', 'counts_daily', 'counts_weekly', 'watches', 'watched_events', 'actions', 'action_series'].map((t) => `${cfg.tablePrefix}${t}`));
  const n = w.user.length;
  const workerMs = Number(worker.ms);
  const flushMs = Number(flushed.ms);
  return {
    workload: spec.name,
    mode,
    events: n,
    clientMs: Math.round(clientMs),
    workerMs,
    flushMs,
    endToEndPerSecond: Math.round(n / ((clientMs + workerMs + flushMs) / 1000)),
    workerPerSecond: Math.round(n / (workerMs / 1000)),
    opsPerEvent: Number(((Number(worker.ops) + Number(flushed.ops)) / n).toPrecision(3)),
    workerOps: Number(worker.ops),
    flushOps: Number(flushed.ops),
    ringBytesPerSlice: Math.round((bytes1 - bytes0) / 2),
    flushRows: Number(flushed.rows),
    flushRowsPerSecond: Math.round(Number(flushed.rows) / (flushMs / 1000)),
    flushPeakRssMb: Number(flushed.peakRssMb),
    workerPeakRssMb: Number(worker.peakRssMb),
    exact: check.ok && Number(worker.events) === n,
    mismatches: check.examples,
  };
}

export interface Decision {
  foldsDefault: boolean;
  reasons: string[];
}

/** Issue 19's rule: folds becomes the default only if every clause holds in the same run. */
export function decide(results: readonly ModeResult[]): Decision {
  const reasons: string[] = [];
  const get = (w: string, m: Mode) => results.find((r) => r.workload === w && r.mode === m);
  let ok = true;
  const clause = (holds: boolean, text: string): void => {
    reasons.push(`${holds ? 'holds' : 'FAILS'}: ${text}`);
    ok &&= holds;
  };
  for (const w of ['uniform', 'zipf', 'dense']) {
    const c = get(w, 'counters');
    const f = get(w, 'folds');
    if (!c || !f) {
      clause(false, `${w}: not measured in this run`);
      continue;
    }
    clause(f.exact && c.exact, `${w}: every row exact in both modes (crash-proofs: npm test's model and fault tests)`);
    if (w !== 'dense') {
      clause(f.endToEndPerSecond >= c.endToEndPerSecond, `${w}: end to end folds ${f.endToEndPerSecond}/s ≥ counters ${c.endToEndPerSecond}/s`);
      clause(f.ringBytesPerSlice <= c.ringBytesPerSlice, `${w}: ring bytes/slice folds ${f.ringBytesPerSlice} ≤ counters ${c.ringBytesPerSlice}`);
    } else {
      clause(f.ringBytesPerSlice <= 3 * c.ringBytesPerSlice, `dense: ring bytes/slice folds ${f.ringBytesPerSlice} ≤ 3 × counters ${c.ringBytesPerSlice}`);
    }
    clause(f.flushMs <= 1.2 * c.flushMs, `${w}: flush folds ${f.flushMs} ms ≤ 1.2 × counters ${c.flushMs} ms`);
  }
  return { foldsDefault: ok, reasons };
}

export function render(results: readonly ModeResult[], decision: Decision): string {
  const head = ['workload', 'mode', 'events', 'e2e ev/s', 'worker ev/s', 'mc ops/ev', 'ring B/slice', 'flush ms', 'flush rows/s', 'flush peak RSS MB', 'exact'];
  const rows = results.map((r) => [r.workload, r.mode, String(r.events), String(r.endToEndPerSecond), String(r.workerPerSecond), String(r.opsPerEvent), String(r.ringBytesPerSlice), String(r.flushMs), String(r.flushRowsPerSecond), String(r.flushPeakRssMb), r.exact ? 'yes' : `NO (${r.mismatches[0] ?? ''})`]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  const load = os.loadavg().map((l) => l.toFixed(2)).join(' ');
  return [
    `ring modes, side by side (${os.cpus().length} × ${os.cpus()[0]?.model ?? 'cpu'}, load ${load}; not final on a shared machine)`,
    line(head),
    ...rows.map(line),
    `decision rule: folds ${decision.foldsDefault ? 'BECOMES' : 'does NOT become'} the default`,
    ...decision.reasons.map((r) => `  ${r}`),
  ].join('\n');
}

export async function ringModes(options: { quick: boolean; only?: string[]; say?: (s: string) => void }): Promise<{ results: ModeResult[]; decision: Decision }> {
  const say = options.say ?? (() => undefined);
  const specs: WorkloadSpec[] = [...workloadSpecs(options.quick), denseSpec(options.quick)].filter((s) => !options.only || options.only.includes(s.name));
  const stack = stackEnv();
  const results: ModeResult[] = [];
  for (const spec of specs) for (const mode of MODES) results.push(await runOne(stack, spec, mode, say));
  return { results, decision: decide(results) };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const argv = process.argv.slice(2);
  const quick = argv.includes('--quick');
  const onlyAt = argv.indexOf('--only');
  const only = onlyAt >= 0 ? argv[onlyAt + 1]?.split(',') : undefined;
  const stack = stackEnv();
  const started = servicesUp(stack);
  let code = 0;
  try {
    const { results, decision } = await ringModes({ quick, ...(only ? { only } : {}), say: (s) => process.stderr.write(`${s}\n`) });
    process.stdout.write(`${render(results, decision)}\n`);
    if (results.some((r) => !r.exact)) code = 1;
  } finally {
    if (started) servicesDown(stack);
  }
  process.exit(code);
}
