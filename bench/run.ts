/**
 * `npm run bench` — OffLog's benchmark (issue 5).
 *
 *   node --import tsx bench/run.ts [--quick] [--runs N] [--only uniform,zipf,statsd,cost,memory]
 *        [--no-naive] [--no-statsd] [--no-cost] [--no-memory] [--profile] [--keep] [--strict] [--out FILE]
 *        [--batch-size N] [--max-jobs-per-fold N]   (tuning experiments; default: the library's defaults)
 *
 * For each workload (bench/workloads.ts), each run:
 *   1. three children start and get ready off the clock: flush (tables
 *      migrated, connections open), worker (clock pinned in the run's second
 *      slice), client (workload generated in memory);
 *   2. go: the client logs everything through OffLogClient.log() while the
 *      worker, at the same time on the other core, folds the jobs into
 *      memcached;
 *   3. when the worker has counted the last event, the flush writes both
 *      slices to MariaDB with "now" two slices later; the end-to-end time
 *      stops when it returns (rows committed);
 *   4. off the clock: every row of the counts table is checked against the
 *      exact expected totals — a wrong total fails the benchmark (exit 1),
 *      however fast it was;
 *   5. the naive baseline: one autocommitted upsert per event, 8 connections.
 * Then StatsD (loss at OffLog's rate and at 10,000/s) and the client's cost
 * per call and event-loop delay, and the client's heap while logging 10M events
 * with no server up (bench/roles/client-memory.ts). Results: a table on stdout, everything in
 * bench/results.json (medians, min, max over the runs, and the machine).
 *
 * Exit status: 0 when every total was exact (targets missed are reported,
 * not fatal, unless --strict: then 2), 1 when anything was counted wrong.
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { loadConfig, type Config } from '../lib/base/config.ts';
import { Progress } from './progress.ts';
import {
  atLeast, below, fmt, rssGrowth, spread, spreadCells, table, thin,
  type ClientResult, type E2ERun, type FlushRoleResult, type NaiveResult, type Spread, type Target, type WorkerResult,
} from './report.ts';
import { checkCounts, checkCountsBySlice, cpuDelta, drainQueue, dropTables, flushMemcached, machine, memcachedStats, REPO, serverCpuMs, serverRss, servicesDown, servicesUp, stackEnv, udpReceiveBufferErrors, type Machine } from './stack.ts';
import { findStatsd, StatsdDaemon } from './statsd.ts';
import type { MemoryResult } from './roles/client-memory.ts';
import type { CeilingMethod } from './roles/ceiling.ts';
import type { SteadySecond } from './roles/client-steady.ts';
import type { SteadyFlushRun } from './roles/flush-steady.ts';
import { expectedBySlice, expectedTotals, generate, opsFloor, workloadSpecs, type Expected, type WorkloadName, type WorkloadSpec } from './workloads.ts';
import type { TableCheck } from './stack.ts';
import { sleep } from '../lib/base/backoff.ts';
import { render as renderModes, ringModes } from './ring-modes.ts';

// ── options ──

interface Options {
  quick: boolean;
  runs: number;
  /** Which parts run: workload names, `statsd`, `cost` (default: all). */
  only: string[] | null;
  naive: boolean;
  statsd: boolean;
  cost: boolean;
  /** The client's memory bound with every server down. */
  memory: boolean;
  profile: boolean;
  keep: boolean;
  strict: boolean;
  out: string;
  /** Tuning experiments: OffLogClient batchSize and Worker maxJobsPerFold (default: the library's). */
  batchSize: number | null;
  maxJobsPerFold: number | null;
  /** Worker process counts the end-to-end runs are made with (issue 13: 1 and 2). */
  workers: number[];
  /** The database's ceiling, measured on each run's rows after its flush (bench/roles/ceiling.ts). */
  ceiling: boolean;
  /** The steady-state run: a fixed offered rate over several short slices, the flush in the background. */
  steady: boolean;
  /** Both ring modes side by side, and issue 19's decision rule (bench/ring-modes.ts). */
  modes: boolean;
}

function parseArgs(argv: string[]): Options {
  const o: Options = {
    quick: false, runs: 0, only: null, naive: true, statsd: true, cost: true, memory: true, profile: false, keep: false, strict: false, out: join(REPO, 'bench/results.json'),
    batchSize: null, maxJobsPerFold: null, workers: [1, 2], ceiling: true, steady: true, modes: true,
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    if (a === '--quick') o.quick = true;
    else if (a === '--runs') o.runs = Number(value());
    else if (a === '--only') o.only = value().split(',');
    else if (a === '--no-naive') o.naive = false;
    else if (a === '--no-statsd') o.statsd = false;
    else if (a === '--no-cost') o.cost = false;
    else if (a === '--no-memory') o.memory = false;
    else if (a === '--profile') o.profile = true;
    else if (a === '--keep') o.keep = true;
    else if (a === '--strict') o.strict = true;
    else if (a === '--out') o.out = value();
    else if (a === '--batch-size') o.batchSize = Number(value());
    else if (a === '--max-jobs-per-fold') o.maxJobsPerFold = Number(value());
    else if (a === '--workers') o.workers = value().split(',').map(Number);
    else if (a === '--no-ceiling') o.ceiling = false;
    else if (a === '--no-steady') o.steady = false;
    else if (a === '--no-modes') o.modes = false;
    else if (a === '--steady') o.only = [...(o.only ?? []), 'steady'];
    else if (a === '-h' || a === '--help') {
      console.log('usage: npm run bench -- [--quick] [--runs N] [--only uniform,zipf,steady,statsd,cost,memory,modes] [--steady] [--no-modes] [--workers 1,2] [--no-naive] [--no-ceiling] [--no-steady] [--no-statsd] [--no-cost] [--no-memory] [--profile] [--keep] [--strict] [--out FILE] [--batch-size N] [--max-jobs-per-fold N]');
      process.exit(0);
    } else throw new Error(`unknown option ${a} (try --help)`);
  }
  if (o.only) {
    const parts = ['uniform', 'zipf', 'steady', 'statsd', 'cost', 'memory', 'modes'];
    for (const part of o.only) if (!parts.includes(part)) throw new Error(`--only: unknown part ${part} (${parts.join(', ')})`);
    o.statsd &&= o.only.includes('statsd');
    o.cost &&= o.only.includes('cost');
    o.memory &&= o.only.includes('memory');
    o.steady &&= o.only.includes('steady');
    o.modes &&= o.only.includes('modes');
  }
  if (o.workers.length === 0 || o.workers.some((w) => !Number.isInteger(w) || w < 1 || w > 8)) throw new Error('--workers: a list of whole numbers 1–8, such as 1,2');
  // Quick is CI-sized: one run. Full: medians need at least three.
  if (o.runs === 0) o.runs = o.quick ? 1 : 3;
  if (!Number.isInteger(o.runs) || o.runs < 1) throw new Error('--runs must be a whole number ≥ 1');
  return o;
}

const opts = parseArgs(process.argv.slice(2));
const SLICE_SECONDS = 600;
const SLICE_MS = SLICE_SECONDS * 1000;
/** Naive SQL: a sample long enough for a steady rate, short enough not to dominate. */
const NAIVE = opts.quick ? { maxEvents: 5_000, maxSeconds: 10 } : { maxEvents: 50_000, maxSeconds: 30 };
const STATSD = { flushIntervalMs: 2_000, seconds: opts.quick ? 3 : 10, port: Number(process.env.OFFLOG_BENCH_STATSD_PORT ?? 8135), prefix: 'offlog.' };
const COST = opts.quick ? { calls: 200_000, rounds: 4, eldSeconds: 3, eldRate: 100_000 } : { calls: 1_000_000, rounds: 10, eldSeconds: 10, eldRate: 100_000 };
/** Client memory bound: a cap far below the events logged, so nearly all of them must be dropped (and counted). */
const MEMORY = { events: opts.quick ? 1_000_000 : 10_000_000, maxBufferedEvents: 100_000 };
/** What the cap may cost in heap: generous bytes per buffered event (its share of a JSON batch string), plus a constant. */
const MEMORY_ALLOWANCE = { bytesPerEvent: 100, constantMb: 16 };
const progress = new Progress();
const env = stackEnv();
const profileDir = join(env.OFFLOG_DATA_DIR!, 'profiles');

// ── child processes ──

const live = new Set<ChildProcess>();

/** One bench child (bench/roles/NAME.ts): ready → go → done, progress in between. */
class Role<R> {
  readonly child: ChildProcess;
  readonly ready: Promise<void>;
  readonly done: Promise<R>;
  readonly exited: Promise<void>;
  onProgress: (m: Record<string, unknown>) => void = () => undefined;
  /** A worker's count of events, each time it changes. */
  onEvents: (events: number) => void = () => undefined;
  private readonly awaited = new Map<string, (m: Record<string, unknown>) => void>();

  constructor(readonly name: string, params: object, childEnv: Record<string, string>, execArgv: string[] = []) {
    this.child = fork(join(REPO, 'bench/roles', `${name}.ts`), [], {
      execArgv: ['--import', 'tsx', ...execArgv],
      env: { ...process.env, ...childEnv, BENCH_PARAMS: JSON.stringify(params) },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    live.add(this.child);
    let markReady!: () => void;
    let settle!: { resolve: (r: R) => void; reject: (e: Error) => void };
    let failReady!: (e: Error) => void;
    this.ready = new Promise<void>((resolve, reject) => ((markReady = resolve), (failReady = reject)));
    this.done = new Promise<R>((resolve, reject) => (settle = { resolve, reject }));
    this.exited = new Promise<void>((resolve) => this.child.once('exit', () => (live.delete(this.child), resolve())));
    // Nobody may be awaiting these yet when a child dies early; the caller sees the failure when it does.
    this.ready.catch(() => undefined);
    this.done.catch(() => undefined);
    this.child.on('message', (m: { type: string; result?: R; message?: string }) => {
      if (m.type === 'ready') markReady();
      else if (m.type === 'progress') this.onProgress(m as unknown as Record<string, unknown>);
      else if (m.type === 'events') this.onEvents(Number((m as unknown as { events: number }).events));
      else if (this.awaited.has(m.type)) this.awaited.get(m.type)!(m as unknown as Record<string, unknown>);
      else if (m.type === 'done') settle.resolve(m.result!);
      else if (m.type === 'error') {
        const err = new Error(`bench role ${name} failed: ${m.message}`);
        failReady(err);
        settle.reject(err);
      }
    });
    this.child.once('exit', (code, signal) => {
      const err = new Error(`bench role ${name} exited (${signal ?? `code ${code}`}) before reporting`);
      failReady(err);
      settle.reject(err);
    });
  }

  /** Resolves on the child's first message of this type (or rejects if it fails first). */
  message(type: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      this.awaited.set(type, resolve);
      this.done.then(() => reject(new Error(`bench role ${this.name} finished without saying "${type}"`)), reject);
    });
  }

  go(extra: Record<string, unknown> = {}): void {
    this.child.send({ type: 'go', ...extra });
  }

  tell(type: string, extra: Record<string, unknown> = {}): void {
    this.child.send({ type, ...extra });
  }

  kill(): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
  }
}

/** Runs `fn` with the given roles; whatever happens, none of them outlives it. */
async function withRoles<T>(roles: Role<unknown>[], fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } finally {
    for (const r of roles) r.kill();
    await Promise.all(roles.map((r) => r.exited));
  }
}

// ── one end-to-end run ──

async function e2eRun(cfg: Config, spec: WorkloadSpec, expected: Expected, run: number, workers: number): Promise<E2ERun> {
  const leftovers = await drainQueue(cfg);
  if (leftovers > 0) progress.note(`  (drained ${leftovers} job(s) left in the bench gearmand by an earlier run)`);
  await flushMemcached(cfg);
  const evictionsBefore = (await memcachedStats(cfg)).evictions;

  // A prefix of its own per run: nothing from another run can be counted or read.
  const id = `${Date.now().toString(36)}${run}`;
  const keyPrefix = `b${id}:`;
  const tablePrefix = `b${id}_`;
  const runEnv = { ...env, OFFLOG_KEY_PREFIX: keyPrefix, OFFLOG_TABLE_PREFIX: tablePrefix, OFFLOG_SLICE_SECONDS: String(SLICE_SECONDS) };
  // Slices a few ahead of the real clock: well clear of anything memcached saw before.
  const base = Math.floor(Date.now() / SLICE_MS) + 3;
  const baseMs = base * SLICE_MS;
  const workerNow = baseMs + SLICE_MS + 1_000; // the worker writes slice base+1; base is "previous", not late
  const flushNow = baseMs + 3 * SLICE_MS; // two slices after the worker's: both slices are finished
  const n = spec.events;

  // --profile: V8 CPU profiles of the roles (summarise with bench/profile-summary.ts).
  const prof = (role: string): string[] => (opts.profile ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=${role}-${spec.name}-${workers}w-${run}.cpuprofile`] : []);
  const flushRole = new Role<FlushRoleResult>('flush', { sliceSeconds: SLICE_SECONDS }, runEnv, prof('flush'));
  const workerRoles = Array.from({ length: workers }, (_, w) => new Role<WorkerResult>('worker', { nowMs: workerNow, sliceSeconds: SLICE_SECONDS, maxJobsPerFold: opts.maxJobsPerFold }, runEnv, prof(`worker${w + 1}`)));
  const clientRole = new Role<ClientResult>('client', { workload: spec.name, quick: opts.quick, sliceSeconds: SLICE_SECONDS, baseMs, batchSize: opts.batchSize }, runEnv, prof('client'));

  return withRoles([flushRole, ...workerRoles, clientRole], async () => {
    await Promise.all([flushRole.ready, clientRole.ready, ...workerRoles.map((w) => w.ready)]);
    let logged = 0;
    const counts = workerRoles.map(() => 0);
    let stored = 0;
    const label = `${spec.name} ×${workers} run ${run}/${opts.runs}`;
    progress.start(label);
    const show = (): void => progress.update(stored / n, `client ${fmtShort(logged)}/${fmtShort(n)}  worker${workers > 1 ? 's' : ''} ${fmtShort(stored)}/${fmtShort(n)}`);
    clientRole.onProgress = (m) => ((logged = Number(m.logged)), show());
    // The moment the workers together have counted the last event (which implies the
    // client's last batch was acknowledged), the flush starts: every worker reports its count as it changes.
    let countedAt = 0;
    let lastChange = performance.now();
    const counted = new Promise<void>((resolve, reject) => {
      workerRoles.forEach((w, i) => {
        w.onEvents = (events) => {
          counts[i] = events;
          stored = counts.reduce((a, b) => a + b, 0);
          lastChange = performance.now();
          show();
          if (stored >= n && countedAt === 0) {
            countedAt = performance.now();
            resolve();
          }
        };
        w.done.catch(reject);
      });
      const stall = setInterval(() => {
        if (countedAt !== 0) clearInterval(stall);
        else if (performance.now() - lastChange > 120_000) {
          clearInterval(stall);
          reject(new Error(`workers stalled: ${stored} of ${n} events counted, nothing new for 120 s`));
        }
      }, 1000);
    });
    const cpu0 = serverCpuMs(env);
    const t0 = performance.now();
    for (const w of workerRoles) w.go();
    clientRole.go();
    await counted;
    for (const w of workerRoles) w.tell('stop');
    const cpu1 = serverCpuMs(env);
    progress.update(1, 'flushing to MariaDB');
    flushRole.go({ nowMs: flushNow });
    const flush = await flushRole.done;
    const e2eMs = performance.now() - t0;
    const cpu2 = serverCpuMs(env);
    const [client, ...workerResults] = await Promise.all([clientRole.done, ...workerRoles.map((w) => w.done)]);
    const worker = mergeWorkers(workerResults as WorkerResult[], countedAt - t0, n);
    progress.update(1, 'checking every row');

    const check = await checkCounts(cfg, `${tablePrefix}counts`, expected, baseMs, SLICE_MS);
    const problems = correctness(spec, expected, client as ClientResult, worker, flush, base);
    if (!check.ok) problems.push(`counts table: ${check.mismatches} mismatch(es) in ${check.rows} rows (expected ${check.expectedRows}): ${check.examples.join('; ')}`);
    const evictions = (await memcachedStats(cfg)).evictions - evictionsBefore;
    if (evictions > 0) problems.push(`memcached evicted ${evictions} item(s) during the run (raise OFFLOG_BENCH_MEMCACHED_MB)`);

    const sliceRows = flush.result.slices.map((s) => s.rows);
    const nonEmpty = sliceRows.filter((r) => r > 0).length;
    // Issue 5: statements per slice ≤ pairs/500 + a small constant — 5 per slice
    // (transaction, slice record, commit …) and 5 per flush (lock, watermark, state).
    const bound = Math.floor(sliceRows.reduce((b, rows) => b + rows / 500 + 5, 5));
    const { rssSamples, ...workerRest } = worker;
    const serversRssMb = serverRss(env);
    progress.end();
    return {
      run,
      workers,
      baseMs,
      keyPrefix,
      tablePrefix,
      events: n,
      pairs: expected.pairs,
      e2eMs: Math.round(e2eMs),
      eventsPerSecond: Math.round(n / (e2eMs / 1000)),
      timeline: { clientAckedMs: (client as ClientResult).ackMs, workerFirstFoldMs: worker.firstFoldAtMs, countedMs: Math.round(countedAt - t0), flushMs: flush.ms, e2eMs: Math.round(e2eMs) },
      serverCpuMs: { ingest: cpuDelta(cpu0, cpu1), flush: cpuDelta(cpu1, cpu2) },
      client: client as ClientResult,
      worker: { ...workerRest, rssSamples: thin(rssSamples, 120) },
      ceiling: null,
      flush,
      check,
      problems,
      statements: {
        total: flush.result.statements,
        bound,
        perNonEmptySlice: Math.round((flush.result.statements / Math.max(1, nonEmpty)) * 10) / 10,
        nonEmptySlices: nonEmpty,
        pairsOver500: Math.round((expected.pairs / Math.max(1, nonEmpty) / 500) * 10) / 10,
      },
      memcachedOpsPerEvent: Math.round((worker.ringOps / n) * 1000) / 1000,
      // Each worker's memory against its own share of the events; the worst of them.
      workerRss: (workerResults as WorkerResult[]).map((w) => rssGrowth(w.rssSamples, w.stats.events)).reduce((a, b) => (b.growthMb > a.growthMb ? b : a)),
      serversRssMb,
      naive: null,
    };
  });
}

/**
 * Several worker processes as one: counts and CPU add up; time spent per
 * stage is the mean per worker; the wall rate runs from the first fold of
 * any worker to the moment all of them together had counted the workload;
 * the busy rate is what they could do together if never starved (the sum of
 * each one's events over its busy time).
 */
function mergeWorkers(ws: WorkerResult[], countedMs: number, n: number): WorkerResult {
  if (ws.length === 1) return ws[0]!;
  const stats = { ...ws[0]!.stats };
  for (const w of ws.slice(1)) for (const k of Object.keys(stats) as (keyof typeof stats)[]) stats[k] += w.stats[k];
  const keys = [...new Set(ws.flatMap((w) => Object.keys(w.breakdown)))];
  const breakdown = Object.fromEntries(keys.map((k) => [k, Math.round(ws.reduce((a, w) => a + (w.breakdown[k] ?? 0), 0) / ws.length)]));
  const firstFoldAtMs = Math.min(...ws.map((w) => w.firstFoldAtMs));
  const wallMs = Math.max(1, countedMs - firstFoldAtMs);
  const cpu = { userMs: ws.reduce((a, w) => a + w.cpu.userMs, 0), systemMs: ws.reduce((a, w) => a + w.cpu.systemMs, 0) };
  const busy = ws.every((w) => w.busyMs !== null);
  return {
    stats,
    ringOps: ws.reduce((a, w) => a + w.ringOps, 0),
    firstFoldAtMs,
    doneAtMs: Math.max(...ws.map((w) => w.doneAtMs)),
    wallMs,
    busyMs: busy ? Math.round(ws.reduce((a, w) => a + w.busyMs!, 0) / ws.length) : null,
    breakdown,
    eventsPerSecondWall: Math.round(n / (wallMs / 1000)),
    eventsPerSecondBusy: busy ? Math.round(ws.reduce((a, w) => a + w.stats.events / (w.busyMs! / 1000), 0)) : null,
    cpu,
    cpuUsPerEvent: Math.round(((cpu.userMs + cpu.systemMs) * 1000 / Math.max(1, n)) * 10) / 10,
    peakRssMb: Math.max(...ws.map((w) => w.peakRssMb)),
    rssSamples: ws[0]!.rssSamples,
  };
}

/** The database's ceiling on this run's rows (bench/roles/ceiling.ts), after its flush and check. */
async function ceilingRun(spec: WorkloadSpec, run: E2ERun, baseMs: number): Promise<CeilingMethod[]> {
  const role = new Role<{ methods: CeilingMethod[] }>('ceiling', { workload: spec.name, quick: opts.quick, sliceSeconds: SLICE_SECONDS, baseMs, countsTable: `${run.tablePrefix}counts`, rotate: run.run - 1 }, env);
  return withRoles([role], async () => {
    await role.ready;
    progress.start(`${spec.name} database ceiling ${run.run}/${opts.runs}`);
    role.onProgress = (m) => progress.update(Number(m.done) / Number(m.total), String(m.method));
    role.go();
    const { methods } = await role.done;
    progress.end();
    return methods;
  });
}

/** Everything the children reported that says an event was lost, doubled or misplaced. */
function correctness(spec: WorkloadSpec, expected: Expected, client: ClientResult, worker: WorkerResult, flush: FlushRoleResult, base: number): string[] {
  const p: string[] = [];
  const n = spec.events;
  const s = client.stats;
  if (!client.allAcknowledged || s.accepted !== n || s.acknowledged !== n || s.dropped !== 0) {
    p.push(`client: accepted ${s.accepted}, acknowledged ${s.acknowledged}, dropped ${s.dropped} of ${n}`);
  }
  const w = worker.stats;
  if (w.events !== n) p.push(`worker counted ${w.events} events, expected ${n}`);
  if (w.late !== 0) p.push(`worker: ${w.late} late events (the pinned clock should make none)`);
  if (w.deadLetters !== 0) p.push(`worker: ${w.deadLetters} dead letters`);
  const r = flush.result;
  if (!r.ran) p.push('flush did not run (lock held?)');
  for (const [i, slice] of [base, base + 1].entries()) {
    const rep = r.slices.find((x) => x.slice === slice);
    if (!rep) p.push(`flush: slice ${slice} not flushed`);
    else {
      if (rep.status !== 'flushed') p.push(`flush: slice ${slice} is ${rep.status}: ${rep.note}`);
      if (rep.rows !== expected.pairsPerSlice[i]) p.push(`flush: slice ${slice} has ${rep.rows} rows, expected ${expected.pairsPerSlice[i]}`);
    }
  }
  if (r.pairsMissing !== 0) p.push(`flush: ${r.pairsMissing} pairs missing from memcached`);
  return p;
}

// ── the steady-state run ──

/** Offered rate, slice length and slices: production's shape (a flush per slice, in the background), shorter slices. */
const STEADY = opts.quick ? { rate: 50_000, sliceSeconds: 5, slices: 4, flushOffsetMs: 500 } : { rate: 100_000, sliceSeconds: 10, slices: 6, flushOffsetMs: 500 };

interface SteadyClientResult {
  events: number;
  sliceStarts: number[];
  firstSlice: number;
  seconds: SteadySecond[];
  durationMs: number;
  allAcknowledged: boolean;
  stats: ClientResult['stats'];
  peakRssMb: number;
}

interface SteadyResult {
  offered: number;
  sliceSeconds: number;
  slices: number;
  events: number;
  /** Events logged per second of the run: what the client managed against its schedule. */
  clientRate: number;
  clientSecondMin: number;
  /** Events counted into memcached per 2-second window (the first and last windows left out). */
  ingestWindows: number[];
  ingestMin: number;
  ingestMedian: number;
  /** The most events logged but not yet counted at any moment, and as seconds of offered traffic. */
  backlogMax: number;
  backlogMaxSeconds: number;
  /** Ingest and loop delay while a flush ran versus while none did. */
  ingestDuringFlush: number | null;
  ingestOutsideFlush: number | null;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
  loopDelayP99DuringFlushMs: number | null;
  loopDelayP99OutsideFlushMs: number | null;
  /** Per slice flushed on schedule: ms from the slice's end, and from when the slice guard let the flush take it (one slice later), to its commit. */
  lags: { slice: number; rows: number; fromEndMs: number; fromFlushableMs: number }[];
  flushes: { startMs: number; ms: number; rows: number }[];
  workerStats: WorkerResult['stats'];
  check: TableCheck;
  checkedAcrossSlices: boolean;
  problems: string[];
}

async function steadyRun(cfg: Config): Promise<SteadyResult> {
  await drainQueue(cfg);
  await flushMemcached(cfg);
  const id = `${Date.now().toString(36)}s`;
  const tablePrefix = `b${id}_`;
  const L = STEADY.sliceSeconds * 1000;
  const runEnv = { ...env, OFFLOG_KEY_PREFIX: `b${id}:`, OFFLOG_TABLE_PREFIX: tablePrefix, OFFLOG_SLICE_SECONDS: String(STEADY.sliceSeconds), OFFLOG_RING_SLICES: '6' };
  // Zipf users and actions as the zipf workload, with values on half the events; a seed of its own.
  const zipf = workloadSpecs(false).find((w) => w.name === 'zipf')!;
  const spec: WorkloadSpec = { ...zipf, events: STEADY.rate * STEADY.sliceSeconds * STEADY.slices + STEADY.rate, valueShare: 0.5, seed: 0x5eed_0003 };
  const flusher = new Role<{ runs: SteadyFlushRun[]; peakRssMb: number }>('flush-steady', { sliceSeconds: STEADY.sliceSeconds, offsetMs: STEADY.flushOffsetMs }, runEnv);
  const worker = new Role<WorkerResult>('worker', { nowMs: null, sliceSeconds: STEADY.sliceSeconds, maxJobsPerFold: opts.maxJobsPerFold }, runEnv);
  const client = new Role<SteadyClientResult>('client-steady', { spec, rate: STEADY.rate, sliceSeconds: STEADY.sliceSeconds, slices: STEADY.slices }, runEnv);
  return withRoles([flusher, worker, client], async () => {
    await Promise.all([flusher.ready, worker.ready, client.ready]);
    // From the next boundary at least a second away: the run is whole slices.
    const startMs = Math.ceil((Date.now() + 1000) / L) * L;
    const runMs = STEADY.slices * L;
    const counted: { at: number; events: number }[] = [{ at: startMs, events: 0 }];
    let events = 0;
    worker.onEvents = (n) => {
      events = n;
      counted.push({ at: Date.now(), events: n });
    };
    progress.start(`steady ${fmtShort(STEADY.rate)} ev/s × ${STEADY.slices} slices of ${STEADY.sliceSeconds} s`);
    const tick = setInterval(() => progress.update(Math.min(1, (Date.now() - startMs) / runMs), `counted ${fmtShort(events)}`), 250);
    flusher.go();
    worker.go();
    client.go({ startMs });
    const c = await client.done;
    for (let last = Date.now(); events < c.events; ) {
      await sleep(20);
      if (counted[counted.length - 1]!.at > last) last = counted[counted.length - 1]!.at;
      if (Date.now() - last > 60_000) throw new Error(`steady: the worker counted ${events} of ${c.events} events and nothing more for 60 s`);
    }
    worker.tell('stop');
    const w = await worker.done;
    flusher.tell('final', { nowMs: (c.firstSlice + STEADY.slices + 2) * L + 1000 });
    const f = await flusher.done;
    clearInterval(tick);
    progress.update(1, 'checking every row');

    // Exact totals: slice k holds events sliceStarts[k] … sliceStarts[k + 1] − 1 of the workload.
    const w8 = generate(spec, STEADY.sliceSeconds, c.events);
    const sliceOfEvent = new Uint8Array(c.events);
    for (let k = 0; k < c.sliceStarts.length; k++) sliceOfEvent.fill(k, c.sliceStarts[k], c.sliceStarts[k + 1] ?? c.events);
    const moved = w.stats.late + w.stats.movedPastWatermark > 0;
    const expected = expectedBySlice(w8, sliceOfEvent, moved);
    const check = await checkCountsBySlice(cfg, `${tablePrefix}counts`, expected, c.firstSlice * L, L, moved);
    const problems: string[] = [];
    if (!c.allAcknowledged || c.stats.dropped !== 0) problems.push(`client: ${c.stats.acknowledged} of ${c.events} acknowledged, ${c.stats.dropped} dropped`);
    if (w.stats.events !== c.events) problems.push(`worker counted ${w.stats.events} events, the client logged ${c.events}`);
    if (!check.ok) problems.push(`counts table: ${check.mismatches} mismatch(es) in ${check.rows} rows (expected ${check.expectedRows}): ${check.examples.join('; ')}`);
    for (const r of f.runs) for (const sl of r.result.slices) if (sl.status !== 'flushed' && sl.rows > 0) problems.push(`slice ${sl.sliceStart} is ${sl.status}: ${sl.note}`);
    if (!opts.keep) dropTables(env, ['counts', 'slices', 'state', 'dead_letters'].map((t) => `${tablePrefix}${t}`));
    progress.end();
    return steadyFigures(c, w, f.runs, startMs, counted, check, moved, problems);
  });
}

/** Counted events at time `at` (the last report at or before it). */
function countedAt(counted: { at: number; events: number }[], at: number): number {
  let n = 0;
  for (const c of counted) if (c.at <= at) n = c.events;
  return n;
}

function steadyFigures(
  c: SteadyClientResult, w: WorkerResult, runs: SteadyFlushRun[], startMs: number, counted: { at: number; events: number }[],
  check: TableCheck, moved: boolean, problems: string[],
): SteadyResult {
  const L = STEADY.sliceSeconds * 1000;
  const endMs = startMs + STEADY.slices * L;
  const scheduled = runs.filter((r) => !r.final);
  const flushing = (a: number, b: number): boolean => scheduled.some((r) => r.startMs < b && r.endMs > a && r.result.rows > 0);
  // Ingest per 2-second window; the first and last windows are ramp-up and drain.
  const ingestWindows: number[] = [];
  for (let t = startMs + 2000; t + 2000 <= endMs - 2000; t += 2000) ingestWindows.push((countedAt(counted, t + 2000) - countedAt(counted, t)) / 2);
  // Ingest with and without a flush running, over 250 ms steps of the run.
  const during = { events: 0, ms: 0 };
  const outside = { events: 0, ms: 0 };
  for (let t = startMs + 2000; t + 250 <= endMs - 2000; t += 250) {
    const into = flushing(t, t + 250) ? during : outside;
    into.events += countedAt(counted, t + 250) - countedAt(counted, t);
    into.ms += 250;
  }
  // Backlog: logged on schedule by then, minus counted.
  let backlogMax = 0;
  for (let t = startMs; t <= endMs; t += 100) {
    const logged = Math.min(c.events, Math.floor(((t - startMs) / 1000) * STEADY.rate));
    backlogMax = Math.max(backlogMax, logged - countedAt(counted, t));
  }
  const secs = c.seconds.filter((x) => x.t >= 1 && x.t < STEADY.slices * STEADY.sliceSeconds - 1);
  const p99s = (xs: SteadySecond[]): number | null => spread(xs.map((x) => x.loopDelayP99Ms))?.median ?? null;
  const lags: SteadyResult['lags'] = [];
  for (let k = 0; k < STEADY.slices; k++) {
    const slice = c.firstSlice + k;
    const run = scheduled.find((r) => r.result.slices.some((x) => x.slice === slice));
    if (!run) continue; // flushed only by the final flush, after ingest ended
    const sliceEnd = (slice + 1) * L;
    lags.push({ slice: k, rows: run.result.slices.find((x) => x.slice === slice)!.rows, fromEndMs: run.endMs - sliceEnd, fromFlushableMs: run.endMs - (sliceEnd + L) });
  }
  const windows = spread(ingestWindows);
  return {
    offered: STEADY.rate,
    sliceSeconds: STEADY.sliceSeconds,
    slices: STEADY.slices,
    events: c.events,
    clientRate: Math.round(c.events / (c.durationMs / 1000)),
    clientSecondMin: Math.min(...secs.map((x) => x.logged)),
    ingestWindows: ingestWindows.map(Math.round),
    ingestMin: Math.round(windows?.min ?? 0),
    ingestMedian: Math.round(windows?.median ?? 0),
    backlogMax,
    backlogMaxSeconds: Math.round((backlogMax / STEADY.rate) * 100) / 100,
    ingestDuringFlush: during.ms > 0 ? Math.round(during.events / (during.ms / 1000)) : null,
    ingestOutsideFlush: outside.ms > 0 ? Math.round(outside.events / (outside.ms / 1000)) : null,
    loopDelayP99Ms: spread(secs.map((x) => x.loopDelayP99Ms))?.max ?? 0,
    loopDelayMaxMs: Math.max(0, ...secs.map((x) => x.loopDelayMaxMs)),
    loopDelayP99DuringFlushMs: p99s(secs.filter((x) => flushing(startMs + x.t * 1000, startMs + (x.t + 1) * 1000))),
    loopDelayP99OutsideFlushMs: p99s(secs.filter((x) => !flushing(startMs + x.t * 1000, startMs + (x.t + 1) * 1000))),
    lags,
    flushes: scheduled.filter((r) => r.result.rows > 0).map((r) => ({ startMs: r.startMs - startMs, ms: r.endMs - r.startMs, rows: r.result.rows })),
    workerStats: w.stats,
    check,
    checkedAcrossSlices: moved,
    problems,
  };
}

// ── the naive SQL baseline ──

async function naiveRun(cfg: Config, spec: WorkloadSpec, run: number): Promise<NaiveResult> {
  const id = `${Date.now().toString(36)}${run}`;
  const table = `b${id}_naive_counts`;
  const base = Math.floor(Date.now() / SLICE_MS) + 3;
  const baseMs = base * SLICE_MS;
  const role = new Role<NaiveResult>('naive', { workload: spec.name, quick: opts.quick, sliceSeconds: SLICE_SECONDS, baseMs, table, ...NAIVE, connections: 8 }, env);
  return withRoles([role], async () => {
    await role.ready;
    const sample = Math.min(NAIVE.maxEvents, spec.events);
    progress.start(`${spec.name} naive SQL ${run}/${opts.runs}`);
    role.onProgress = (m) => progress.update(Number(m.events) / sample, `${fmtShort(Number(m.events))}/${fmtShort(sample)} events`);
    role.go();
    const result = await role.done;
    progress.update(1, 'checking every row');
    // The sample is the workload's first `events` events: check them exactly too.
    const expected = expectedTotals(generate(spec, SLICE_SECONDS, result.events));
    result.check = await checkCounts(cfg, table, expected, baseMs, SLICE_MS);
    if (!opts.keep) dropTables(env, [table]);
    progress.end();
    return result;
  });
}

// ── StatsD ──

interface StatsdRun {
  run: number;
  targetRate: number;
  achievedRate: number;
  sent: number;
  counted: number;
  lostPercent: number;
  metricsReceived: number;
  udpRcvbufErrors: number | null;
  senderErrors: number;
  senderCpuMs: number;
}

async function statsdRuns(daemon: StatsdDaemon, rates: number[]): Promise<StatsdRun[]> {
  const out: StatsdRun[] = [];
  for (let run = 1; run <= opts.runs; run++) {
    for (const rate of rates) {
      daemon.reset();
      const udp0 = udpReceiveBufferErrors();
      const role = new Role<{ sent: number; achievedRate: number; errors: number; cpu: { userMs: number; systemMs: number } }>(
        'statsd-feed',
        { port: daemon.port, rate, seconds: STATSD.seconds, quick: opts.quick, prefix: STATSD.prefix },
        env,
      );
      const feed = await withRoles([role], async () => {
        await role.ready;
        const total = rate * STATSD.seconds;
        progress.start(`statsd ${fmtShort(rate)}/s ${run}/${opts.runs}`);
        role.onProgress = (m) => progress.update(Number(m.sent) / total, `${fmtShort(Number(m.sent))} sent`);
        role.go();
        return role.done;
      });
      progress.update(1, 'waiting for statsd to flush');
      const flushed = await daemon.settle();
      const udp1 = udpReceiveBufferErrors();
      progress.end();
      out.push({
        run,
        targetRate: rate,
        achievedRate: feed.achievedRate,
        sent: feed.sent,
        counted: flushed.counted,
        lostPercent: Math.round((1 - flushed.counted / feed.sent) * 10_000) / 100,
        metricsReceived: flushed.metricsReceived,
        udpRcvbufErrors: udp0 === null || udp1 === null ? null : udp1 - udp0,
        senderErrors: feed.errors,
        senderCpuMs: feed.cpu.userMs + feed.cpu.systemMs,
      });
    }
  }
  return out;
}

// ── client cost ──

interface CostResult {
  batch: number;
  calls: { log: number; increment: number; incrementBuffered: number };
  logNs: { median: number; p99: number; mean: number; min: number; max: number };
  incrementNs: { median: number; p99: number; mean: number; min: number; max: number };
  incrementBufferedNs: { median: number; p99: number; mean: number; min: number; max: number };
  eventLoopDelay: {
    resolutionMs: number;
    idle: { p50Ms: number; p99Ms: number; maxMs: number; samples: number };
    logging: { p50Ms: number; p99Ms: number; maxMs: number; samples: number; rate: number; seconds: number; events: number; acknowledged: boolean };
  };
  peakRssMb: number;
}

async function costRuns(cfg: Config, statsdPort: number): Promise<CostResult[]> {
  const out: CostResult[] = [];
  for (let run = 1; run <= opts.runs; run++) {
    const role = new Role<CostResult>('client-cost', { quick: opts.quick, ...COST, statsdPort }, env);
    out.push(
      await withRoles([role], async () => {
        await role.ready;
        progress.start(`client cost ${run}/${opts.runs}`);
        role.onProgress = (m) => progress.update(Number(m.round) / Number(m.rounds), `round ${m.round}/${m.rounds}, then ${COST.eldSeconds * 1.5} s of loop delay`);
        role.go();
        return role.done;
      }),
    );
    progress.end();
    // Its events went to the bench gearmand; they must never reach a counted run.
    await drainQueue(cfg);
  }
  return out;
}

// ── client memory bound ──

async function memoryRun(): Promise<MemoryResult> {
  const role = new Role<MemoryResult>('client-memory', MEMORY, env, ['--expose-gc']);
  const result = await withRoles([role], async () => {
    await role.ready;
    progress.start(`client memory: ${fmt(MEMORY.events)} events, no server up`);
    role.onProgress = (m) => progress.update(Number(m.done) / Number(m.total), `${fmt(Number(m.done))} logged`);
    role.go();
    return role.done;
  });
  progress.end();
  return result;
}

function memoryTarget(r: MemoryResult): Target {
  const allowedMb = (r.maxBufferedEvents * MEMORY_ALLOWANCE.bytesPerEvent) / (1024 * 1024) + MEMORY_ALLOWANCE.constantMb;
  const growth = r.heapMaxMb - r.heapBeforeMb;
  return {
    name: `client heap, ${fmtShort(r.events)} events, no server`,
    actual: `+${fmt(growth, 1)} MB (${fmt(r.buffered)} buffered, ${fmt(r.dropped)} dropped${r.droppedExact ? ', exact' : ', NOT exact'})`,
    goal: `≤ cap ${fmt(r.maxBufferedEvents)} × ${MEMORY_ALLOWANCE.bytesPerEvent} B + ${MEMORY_ALLOWANCE.constantMb} MB = ${fmt(allowedMb, 1)} MB`,
    ratio: growth > 0 ? allowedMb / growth : null,
    pass: growth <= allowedMb && r.droppedExact,
  };
}

// ── main ──

interface WorkloadReport {
  spec: WorkloadSpec;
  /** Fewest memcached operations per event possible at folds of the runs' size (and 2×, 3×): see opsFloor. */
  opsFloors: { foldEvents: number; opsPerEvent: number }[];
  /** Worker processes of these runs. */
  workers: number;
  pairs: number;
  pairsPerSlice: [number, number];
  runs: E2ERun[];
  summary: Record<string, Spread | null>;
}

async function main(): Promise<number> {
  const startedAt = new Date();
  let startedServices = false;
  let daemon: StatsdDaemon | null = null;
  const stop = async (): Promise<void> => {
    for (const c of live) c.kill('SIGKILL');
    await daemon?.stop();
    if (startedServices) servicesDown(env);
  };
  process.once('SIGINT', () => {
    progress.end();
    console.error('\ninterrupted: stopping children' + (startedServices ? ' and the bench servers' : ''));
    void stop().finally(() => process.exit(130));
  });

  try {
    startedServices = servicesUp(env);
    const cfg = loadConfig({ ...env, OFFLOG_KEY_PREFIX: 'bench:', OFFLOG_TABLE_PREFIX: 'bench_' });
    const mc = await memcachedStats(cfg);
    if (mc.limitMb < 1024 && !opts.quick) progress.note(`warning: the bench memcached has only ${mc.limitMb} MB (started earlier without OFFLOG_BENCH_MEMCACHED_MB); zipf may evict`);
    const m = await machine(cfg);
    const reference = loadReference();
    const load = { before: os.loadavg().map((x) => Math.round(x * 100) / 100), busiest: busiestProcesses() };
    const specs = workloadSpecs(opts.quick).filter((s) => !opts.only || opts.only.includes(s.name));
    if (opts.profile) mkdirSync(profileDir, { recursive: true });
    progress.note(`OffLog bench: ${opts.quick ? 'quick' : 'full'} mode, ${opts.runs} run(s); ${m.cpuModel}, ${m.cores} cores, node ${m.node}`);

    const workloads: WorkloadReport[] = [];
    for (const spec of specs) {
      progress.note(`${spec.name}: generating ${fmt(spec.events)} events and their exact totals`);
      const expected = expectedTotals(generate(spec, SLICE_SECONDS));
      const byWorkers = new Map<number, E2ERun[]>(opts.workers.map((w) => [w, []]));
      for (let r = 1; r <= opts.runs; r++) {
        // Worker counts take turns within each round, so drift in the machine's load hits them alike.
        for (const workers of opts.workers) {
          const run = await e2eRun(cfg, spec, expected, r, workers);
          const first = workers === opts.workers[0];
          if (first && opts.naive) run.naive = await naiveRun(cfg, spec, r);
          if (first && opts.ceiling && run.problems.length === 0) run.ceiling = await ceilingRun(spec, run, run.baseMs);
          byWorkers.get(workers)!.push(run);
          const ok = run.problems.length === 0 && (run.naive?.check?.ok ?? true);
          const best = run.ceiling ? Math.max(...run.ceiling.map((c) => c.rowsPerSecond)) : null;
          progress.note(
            `  ${spec.name} ×${workers} run ${r}: ${fmt(run.eventsPerSecond)} events/s end to end, flush ${fmt(run.flush.rowsPerSecond)} rows/s` +
              (best ? ` (database ceiling ${fmt(best)})` : '') +
              (run.naive ? `, naive SQL ${fmt(run.naive.eventsPerSecond)}/s` : '') +
              (ok ? ', totals exact' : `, WRONG: ${[...run.problems, ...(run.naive?.check?.ok === false ? ['naive table wrong'] : [])].join(' | ')}`),
          );
          if (!opts.keep) dropTables(env, ['counts', 'slices', 'state', 'dead_letters', 'counts_ceiling'].map((t) => `${run.tablePrefix}${t}`));
          if (opts.profile) {
            for (const [role, res] of [['client', run.client], ['worker1', run.worker], ['flush', run.flush]] as const) {
              progress.note(`    profile: node --import tsx bench/profile-summary.ts ${join(profileDir, `${role}-${spec.name}-${workers}w-${r}.cpuprofile`)} --from-ms ${res.goAtMs ?? 0}`);
            }
          }
        }
      }
      // The floor of memcached operations per event at the folds the runs made, and at 2 and 3 times that (issue 13).
      const foldEvents = Math.round(spread(byWorkers.get(opts.workers[0]!)!.map((r) => r.worker.stats.events / Math.max(1, r.worker.stats.folds)))?.median ?? 80_000);
      const w = generate(spec, SLICE_SECONDS);
      const opsFloors = [1, 2, 3].map((k) => ({ foldEvents: foldEvents * k, opsPerEvent: Math.round(opsFloor(w, foldEvents * k) * 1000) / 1000 }));
      for (const [workers, runs] of byWorkers) workloads.push({ spec, workers, pairs: expected.pairs, pairsPerSlice: expected.pairsPerSlice, runs, summary: summarise(runs), opsFloors });
    }

    const steady = opts.steady ? await steadyRun(cfg) : null;
    if (steady) {
      progress.note(
        `  steady: offered ${fmt(steady.offered)} ev/s, client ${fmt(steady.clientRate)}, ingest (2 s windows) min ${fmt(steady.ingestMin)} median ${fmt(steady.ingestMedian)}, ` +
          `lag after flushable max ${fmt(Math.max(0, ...steady.lags.map((l) => l.fromFlushableMs)))} ms` + (steady.problems.length === 0 ? ', totals exact' : `, WRONG: ${steady.problems.join(' | ')}`),
      );
    }

    let statsd: { runs: StatsdRun[]; skipped?: string } | null = null;
    let cost: CostResult[] = [];
    const statsJs = opts.statsd || opts.cost ? findStatsd(env.OFFLOG_DATA_DIR!) : null;
    if ((opts.statsd || opts.cost) && statsJs) {
      daemon = new StatsdDaemon(statsJs, env.OFFLOG_DATA_DIR!, STATSD.port, STATSD.flushIntervalMs, STATSD.prefix);
      await daemon.start();
    }
    if (opts.statsd) {
      if (!daemon) statsd = { runs: [], skipped: 'statsd is not installed: add it as a devDependency, or `npm install --prefix .data/bench/npm statsd@0.9.0`' };
      else {
        const uniform = workloads.find((w) => w.spec.name === 'uniform');
        const offlogRate = Math.round(uniform?.summary.e2eEventsPerSecond?.median ?? 100_000);
        statsd = { runs: await statsdRuns(daemon, [offlogRate, 10_000]) };
      }
      if (statsd.skipped) progress.note(`StatsD skipped: ${statsd.skipped}`);
    }
    // hot-shots needs somewhere to send; without statsd it sends to a closed port, which still costs the same syscall.
    if (opts.cost) cost = await costRuns(cfg, daemon?.port ?? STATSD.port);
    await daemon?.stop();
    daemon = null;
    await drainQueue(cfg);
    const memory = opts.memory ? await memoryRun() : null;

    const targets = judge(workloads, statsd?.runs ?? [], cost);
    if (memory) targets.push(memoryTarget(memory));
    const targets13 = judge13(workloads, steady, reference);
    if (opts.quick) {
      // 100k–200k events are a few dozen jobs: start-up and the last partial fold dominate, so the rates say nothing.
      for (const t of [...targets, ...targets13]) {
        if (/^(end to end|speed-up|flush|\d+ workers vs|peak RSS)/.test(t.name)) Object.assign(t, { pass: null, note: `quick mode: too short to judge${t.note ? `; ${t.note}` : ''}` });
      }
    }
    const failures = [
      ...workloads.flatMap((w) => w.runs.flatMap((r) => [
        ...r.problems.map((p) => `${configName(w)} run ${r.run}: ${p}`),
        ...(r.naive?.check && !r.naive.check.ok ? [`${configName(w)} run ${r.run}: naive table: ${r.naive.check.examples.join('; ')}`] : []),
      ])),
      ...(steady?.problems ?? []).map((p) => `steady: ${p}`),
    ];
    // Issue 19: counters and folds on the same workloads (plus dense), and whether folds should be the default.
    const modes = opts.modes ? await ringModes({ quick: opts.quick, say: (line) => progress.note(`ring modes: ${line}`) }) : null;
    if (modes?.results.some((r) => !r.exact)) failures.push(...modes.results.filter((r) => !r.exact).map((r) => `ring modes ${r.workload}/${r.mode}: ${r.mismatches.join('; ')}`));
    const results = {
      benchmark: 'offlog (issue 5)',
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      mode: opts.quick ? 'quick' : 'full',
      runs: opts.runs,
      settings: { batchSize: opts.batchSize ?? 'library default', maxJobsPerFold: opts.maxJobsPerFold ?? 'library default', sliceSeconds: SLICE_SECONDS, naive: NAIVE, statsd: STATSD, cost: COST, memory: { ...MEMORY, allowance: MEMORY_ALLOWANCE }, stack: { gearman: env.OFFLOG_GEARMAN_SERVERS, memcached: env.OFFLOG_MEMCACHED_SERVERS, mysqlPort: env.OFFLOG_MYSQL_PORT, memcachedMb: mc.limitMb } },
      machine: { ...m, loadAtStart: load.before, loadAtEnd: os.loadavg().map((x) => Math.round(x * 100) / 100), busiestAtStart: load.busiest },
      correct: failures.length === 0,
      failures,
      targets,
      targets13,
      workloads: Object.fromEntries(workloads.map((w) => [configName(w), { spec: w.spec, workers: w.workers, pairs: w.pairs, pairsPerSlice: w.pairsPerSlice, opsFloors: w.opsFloors, summary: w.summary, runs: w.runs }])),
      steady,
      statsd: statsd && { ...statsd, summary: statsdSummary(statsd.runs) },
      clientCost: cost.length > 0 ? { summary: costSummary(cost), runs: cost } : null,
      clientMemory: memory,
      ringModes: modes,
    };
    writeFileSync(opts.out, `${JSON.stringify(results, null, 2)}\n`);
    console.log(render(m, workloads, statsd, cost, targets, failures, steady, targets13));
    if (modes) console.log(`\n${renderModes(modes.results, modes.decision)}`);
    console.log(`\nresults: ${opts.out}`);
    if (failures.length > 0) return 1;
    if (opts.strict && targets.some((t) => t.pass === false)) return 2;
    return 0;
  } finally {
    progress.end();
    await stop();
  }
}

// ── summaries and targets ──

const METRICS: [key: string, get: (r: E2ERun) => number | null | undefined][] = [
  ['e2eEventsPerSecond', (r) => r.eventsPerSecond],
  ['e2eSeconds', (r) => r.e2eMs / 1000],
  ['clientEventsPerSecond', (r) => r.client.eventsPerSecond],
  ['clientCpuUsPerEvent', (r) => r.client.cpuUsPerEvent],
  ['clientBlockedMs', (r) => r.client.blockedMs],
  ['workerEventsPerSecondWall', (r) => r.worker.eventsPerSecondWall],
  ['workerEventsPerSecondBusy', (r) => r.worker.eventsPerSecondBusy],
  ['workerCpuUsPerEvent', (r) => r.worker.cpuUsPerEvent],
  ['workerFolds', (r) => r.worker.stats.folds],
  ['workerEventsPerFold', (r) => r.worker.stats.events / Math.max(1, r.worker.stats.folds)],
  ['workerMemcachedOps', (r) => r.worker.stats.memcachedOps],
  ['workerRingOps', (r) => r.worker.ringOps],
  ['memcachedOpsPerEvent', (r) => r.memcachedOpsPerEvent],
  ['flushRows', (r) => r.flush.result.rows],
  ['flushMs', (r) => r.flush.ms],
  ['flushRowsPerSecond', (r) => r.flush.rowsPerSecond],
  ['flushStatements', (r) => r.statements.total],
  ['flushStatementBound', (r) => r.statements.bound],
  ['flushStatementsPerSlice', (r) => r.statements.perNonEmptySlice],
  ['flushMemcachedOps', (r) => r.flush.memcachedOps],
  ['clientPeakRssMb', (r) => r.client.peakRssMb],
  ['workerPeakRssMb', (r) => r.worker.peakRssMb],
  ['flushPeakRssMb', (r) => r.flush.peakRssMb],
  ['workerRssGrowthMb', (r) => r.workerRss.growthMb],
  ['gearmandRssMb', (r) => r.serversRssMb.gearmand],
  ['memcachedRssMb', (r) => r.serversRssMb.memcached],
  ['mariadbRssMb', (r) => r.serversRssMb.mariadb],
  ['naiveEventsPerSecond', (r) => r.naive?.eventsPerSecond],
  ['naiveEvents', (r) => r.naive?.events],
  ['naiveStatementsPerEvent', (r) => r.naive?.statementsPerEvent],
  ['naivePeakRssMb', (r) => r.naive?.peakRssMb],
  ['speedupVsNaive', (r) => (r.naive ? r.eventsPerSecond / r.naive.eventsPerSecond : null)],
  ['workerTakeMs', (r) => r.worker.breakdown.takeMs],
  ['workerSleepMs', (r) => r.worker.breakdown.sleepMs],
  ['workerDecodeFoldAckMs', (r) => r.worker.breakdown.decodeFoldAckMs],
  ['workerMemcachedApplyMs', (r) => r.worker.breakdown.memcachedApplyMs],
  // The fold protocol (claims, fold lists, commits); runs before claims.ts reported the marks' read and write here.
  ['workerMemcachedMarksMs', (r) => ['memcachedClaimMs', 'memcachedAnnounceMs', 'memcachedCommitMs', 'memcachedAppliedJobsMs', 'memcachedMarkAppliedMs'].reduce((n, k) => n + (r.worker.breakdown[k] ?? 0), 0)],
  ['workerMemcachedEnterLeaveMs', (r) => (r.worker.breakdown.memcachedEnterMs ?? 0) + (r.worker.breakdown.memcachedLeaveMs ?? 0)],
  ['clientAckedAtMs', (r) => r.timeline.clientAckedMs],
  ['workerFirstFoldAtMs', (r) => r.timeline.workerFirstFoldMs],
  ['countedAtMs', (r) => r.timeline.countedMs],
  ['clientCpuMs', (r) => r.client.cpu.userMs + r.client.cpu.systemMs],
  ['workerCpuMs', (r) => r.worker.cpu.userMs + r.worker.cpu.systemMs],
  ['flushCpuMs', (r) => r.flush.cpu.userMs + r.flush.cpu.systemMs],
  ['gearmandCpuIngestMs', (r) => r.serverCpuMs.ingest.gearmand],
  ['memcachedCpuIngestMs', (r) => r.serverCpuMs.ingest.memcached],
  ['memcachedCpuFlushMs', (r) => r.serverCpuMs.flush.memcached],
  ['mariadbCpuFlushMs', (r) => r.serverCpuMs.flush.mariadb],
];

function summarise(runs: E2ERun[]): Record<string, Spread | null> {
  return Object.fromEntries(METRICS.map(([key, get]) => [key, spread(runs.map(get))]));
}

function statsdSummary(runs: StatsdRun[]): Record<string, { achievedRate: Spread | null; lostPercent: Spread | null }> {
  const rates = [...new Set(runs.map((r) => r.targetRate))];
  return Object.fromEntries(rates.map((rate) => {
    const rs = runs.filter((r) => r.targetRate === rate);
    return [String(rate), { achievedRate: spread(rs.map((r) => r.achievedRate)), lostPercent: spread(rs.map((r) => r.lostPercent)) }];
  }));
}

function costSummary(cost: CostResult[]): Record<string, Spread | null> {
  return {
    logMedianNs: spread(cost.map((c) => c.logNs.median)),
    logP99Ns: spread(cost.map((c) => c.logNs.p99)),
    incrementMedianNs: spread(cost.map((c) => c.incrementNs.median)),
    incrementP99Ns: spread(cost.map((c) => c.incrementNs.p99)),
    incrementBufferedMedianNs: spread(cost.map((c) => c.incrementBufferedNs.median)),
    incrementBufferedP99Ns: spread(cost.map((c) => c.incrementBufferedNs.p99)),
    loopDelayP99Ms: spread(cost.map((c) => c.eventLoopDelay.logging.p99Ms)),
    loopDelayMaxMs: spread(cost.map((c) => c.eventLoopDelay.logging.maxMs)),
    idleLoopDelayP99Ms: spread(cost.map((c) => c.eventLoopDelay.idle.p99Ms)),
  };
}

function judge(workloads: WorkloadReport[], statsd: StatsdRun[], cost: CostResult[]): Target[] {
  const t: Target[] = [];
  const w = (name: WorkloadName): WorkloadReport | undefined => workloads.find((x) => x.spec.name === name);
  const med = (name: WorkloadName, key: string): number | null => w(name)?.summary[key]?.median ?? null;
  const u = w('uniform');
  const z = w('zipf');
  if (u) t.push(atLeast('end to end, uniform', med('uniform', 'e2eEventsPerSecond'), 100_000, 'ev/s'));
  if (z) t.push(atLeast('end to end, zipf', med('zipf', 'e2eEventsPerSecond'), 400_000, 'ev/s'));
  // Ratio of the medians (the table's row is the median of each run's own ratio).
  if (u) t.push(atLeast('speed-up vs naive SQL, uniform', ratioOf(u), 15, '×'));
  if (z) t.push(atLeast('speed-up vs naive SQL, zipf', ratioOf(z), 50, '×'));
  for (const x of workloads) {
    const worst = Math.max(...x.runs.map((r) => r.statements.total / r.statements.bound));
    const r0 = x.runs[0]!;
    t.push({
      name: `SQL statements per slice, ${configName(x)}`,
      actual: `${fmt(r0.statements.perNonEmptySlice, 1)}/slice (${r0.statements.total} total)`,
      goal: `≤ pairs/500 + 5 (${fmt(r0.statements.pairsOver500, 1)} + 5; total ≤ ${r0.statements.bound})`,
      ratio: 1 / worst,
      pass: worst <= 1,
    });
  }
  const allExact = workloads.every((x) => x.runs.every((r) => r.problems.length === 0));
  if (statsd.length > 0) {
    const lossy = statsd.filter((r) => r.lostPercent > 0);
    const worst = statsd.reduce((a, b) => (b.lostPercent > a.lostPercent ? b : a));
    t.push({
      name: 'lost counts where StatsD loses',
      actual: `OffLog ${allExact ? '0 %' : 'NOT exact'}; StatsD up to ${fmt(worst.lostPercent, 2)} % at ${fmtShort(worst.targetRate)}/s`,
      goal: 'OffLog 0 %',
      ratio: null,
      pass: allExact,
      note: lossy.length === 0 ? 'StatsD lost nothing at these rates on this run' : undefined,
    });
  }
  for (const x of workloads) t.push(atLeast(`flush rows/s, ${configName(x)}`, x.summary.flushRowsPerSecond?.median, 100_000, 'rows/s', `${fmt(x.summary.flushRows?.median)} rows`));
  for (const x of workloads) {
    const growth = Math.max(...x.runs.map((r) => r.workerRss.growthMb));
    // A run of a handful of folds is all warm-up: too short to say whether memory levels off.
    // Per worker process: two workers share the folds, and each one's memory is judged on its own.
    const tooShort = x.runs.some((r) => r.worker.stats.folds / r.workers < 20);
    t.push({
      name: `worker RSS flat, ${configName(x)}`,
      actual: `max growth after 50 %: ${fmt(growth, 1)} MB`,
      goal: '≤ 32 MB or 15 %',
      ratio: null,
      pass: tooShort ? null : x.runs.every((r) => r.workerRss.flat),
      note: tooShort ? 'fewer than 20 folds per worker: too short to judge' : undefined,
    });
  }
  if (cost.length > 0) {
    const s = costSummary(cost);
    t.push(below('client log() median', s.logMedianNs?.median, 1000, 'ns'));
    const lg = s.logMedianNs?.median ?? null;
    for (const [which, hs] of [['defaults', s.incrementMedianNs?.median ?? null], ['buffered', s.incrementBufferedMedianNs?.median ?? null]] as const) {
      t.push({
        name: `client log() ≤ hot-shots increment(), ${which}`,
        actual: `${fmt(lg, 1)} vs ${fmt(hs, 1)} ns`,
        goal: 'log() ≤ increment()',
        ratio: lg !== null && hs !== null ? hs / lg : null,
        pass: lg !== null && hs !== null ? lg <= hs : null,
      });
    }
    t.push(below('event-loop delay p99 at 100k ev/s', s.loopDelayP99Ms?.median, 2, 'ms', `idle p99 ${fmt(s.idleLoopDelayP99Ms?.median, 2)} ms`));
  }
  for (const x of workloads) t.push(atLeast(`client→gearmand, ${configName(x)}`, x.summary.clientEventsPerSecond?.median, 300_000, 'ev/s'));
  return t;
}

/** "zipf" for one worker process, "zipf ×2" for two. */
function configName(x: WorkloadReport): string {
  return x.workers === 1 ? x.spec.name : `${x.spec.name} ×${x.workers}`;
}

/** What the reference results (bench/reference-results.json, the run the README quotes) say a role's peak RSS was. */
interface Reference { rssMb: Record<string, Record<string, number>>; startedAt: string }

function loadReference(): Reference | null {
  try {
    const r = JSON.parse(readFileSync(join(REPO, 'bench/reference-results.json'), 'utf8')) as { startedAt: string; workloads: Record<string, { summary: Record<string, Spread | null> }> };
    const rssMb: Reference['rssMb'] = {};
    for (const [name, w] of Object.entries(r.workloads)) {
      if (name.includes('×')) continue;
      rssMb[name] = Object.fromEntries((['client', 'worker', 'flush'] as const).map((role) => [role, w.summary[`${role}PeakRssMb`]?.median ?? NaN]));
    }
    return { rssMb, startedAt: r.startedAt };
  } catch {
    return null;
  }
}

/** The fastest way this MariaDB took a run's rows (median over the runs), atomic methods only or all. */
function ceilingOf(x: WorkloadReport, atomicOnly: boolean): { name: string; rowsPerSecond: number } | null {
  const runs = x.runs.filter((r) => r.ceiling);
  if (runs.length === 0) return null;
  const names = runs[0]!.ceiling!.filter((c) => c.atomic || !atomicOnly).map((c) => c.name);
  const medians = names.map((name) => ({ name, rowsPerSecond: spread(runs.map((r) => r.ceiling!.find((c) => c.name === name)?.rowsPerSecond))?.median ?? 0 }));
  return medians.reduce((a, b) => (b.rowsPerSecond > a.rowsPerSecond ? b : a));
}

/** Issue 13's targets, each met or missed. */
function judge13(workloads: WorkloadReport[], steady: SteadyResult | null, reference: Reference | null): Target[] {
  const t: Target[] = [];
  const names = [...new Set(workloads.map((x) => x.spec.name))];
  const configs = (name: string): WorkloadReport[] => workloads.filter((x) => x.spec.name === name);
  const one = (name: string): WorkloadReport | undefined => configs(name).find((x) => x.workers === 1) ?? configs(name)[0];
  const best = (name: string): WorkloadReport => configs(name).reduce((a, b) => ((b.summary.e2eEventsPerSecond?.median ?? 0) > (a.summary.e2eEventsPerSecond?.median ?? 0) ? b : a));
  for (const [name, goal] of [['zipf', 400_000], ['uniform', 350_000]] as const) {
    if (!names.includes(name)) continue;
    const b = best(name);
    t.push(atLeast(`end to end, ${name}`, b.summary.e2eEventsPerSecond?.median, goal, 'ev/s', `best of ${configs(name).map((x) => `${x.workers} worker${x.workers > 1 ? 's' : ''}`).join(' / ')}: ${b.workers}`));
  }
  if (names.includes('zipf')) {
    const naive = one('zipf')!.summary.naiveEventsPerSecond?.median;
    const e2e = best('zipf').summary.e2eEventsPerSecond?.median;
    t.push(atLeast('end to end vs naive SQL, zipf', naive && e2e ? e2e / naive : null, 30, '×', naive ? `naive ${fmt(naive)} ev/s in the same run` : 'naive SQL not run'));
  }
  for (const name of names) {
    const x = one(name)!;
    const flushRate = x.summary.flushRowsPerSecond?.median ?? null;
    const ceiling = ceilingOf(x, false);
    const atomic = ceilingOf(x, true);
    const goal = ceiling ? Math.min(200_000, 0.9 * ceiling.rowsPerSecond) : 200_000;
    t.push({
      ...atLeast(`flush, ${name}`, flushRate, Math.round(goal), 'rows/s'),
      goal: ceiling ? `≥ min(200,000, 0.9 × ceiling ${fmt(ceiling.rowsPerSecond)}) = ${fmt(goal)} rows/s` : '≥ 200,000 rows/s (ceiling not measured)',
      note: ceiling && flushRate ? `${fmt(flushRate / ceiling.rowsPerSecond, 2)}× the ceiling (${ceiling.name}); ${fmt(flushRate / atomic!.rowsPerSecond, 2)}× the fastest atomic way (${atomic!.name})` : undefined,
    });
  }
  for (const [name, goal] of [['zipf', 0.5], ['uniform', 1.0]] as const) {
    if (!names.includes(name)) continue;
    const all = configs(name).map((x) => `${x.workers}w ${fmt(x.summary.memcachedOpsPerEvent?.median, 3)}`).join(', ');
    const floors = one(name)!.opsFloors.map((f) => `${fmt(f.opsPerEvent, 3)} at ${fmtShort(f.foldEvents)}-event folds`).join(', ');
    const v = one(name)!.summary.memcachedOpsPerEvent?.median ?? null;
    t.push({ name: `worker memcached ops per event, ${name}`, actual: v === null ? 'n/a' : fmt(v, 3), goal: `≤ ${goal}`, ratio: v ? goal / v : null, pass: v === null ? null : v <= goal, note: `${all}; one op per counter a fold touches ≈ ${floors}` });
  }
  for (const name of names) {
    const cs = configs(name).sort((a, b) => a.workers - b.workers);
    if (cs.length < 2) continue;
    const base = cs[0]!.summary.e2eEventsPerSecond?.median ?? null;
    for (const c of cs.slice(1)) {
      const v = c.summary.e2eEventsPerSecond?.median ?? null;
      const wr = (x: WorkloadReport): number | null => x.summary.workerEventsPerSecondWall?.median ?? null;
      t.push({
        name: `${c.workers} workers vs ${cs[0]!.workers}, ${name}: never slower`,
        actual: `${fmt(v)} vs ${fmt(base)} ev/s end to end`,
        goal: '≥ 1.00×',
        ratio: v !== null && base ? v / base : null,
        pass: v !== null && base !== null ? v >= base : null,
        note: `worker stage ${fmt(wr(c))} vs ${fmt(wr(cs[0]!))} ev/s (${fmt((wr(c) ?? 0) / (wr(cs[0]!) || 1), 2)}×)`,
      });
    }
  }
  if (steady) {
    const ok = steady.clientRate >= 0.99 * steady.offered && steady.ingestMin >= 0.95 * steady.offered;
    t.push({
      name: 'steady: ingest never below the offered rate',
      actual: `client ${fmt(steady.clientRate)}, ingest per 2 s min ${fmt(steady.ingestMin)} ev/s; backlog max ${fmt(steady.backlogMaxSeconds, 2)} s`,
      goal: `${fmt(steady.offered)} ev/s (client ≥ 99 %, every 2 s window ≥ 95 %)`,
      ratio: steady.ingestMin / steady.offered,
      pass: ok,
      note: steady.ingestDuringFlush !== null ? `ingest ${fmt(steady.ingestDuringFlush)} ev/s while a flush ran, ${fmt(steady.ingestOutsideFlush)} otherwise` : undefined,
    });
    const worst = steady.lags.length > 0 ? Math.max(...steady.lags.map((l) => l.fromFlushableMs)) : null;
    const sliceMs = steady.sliceSeconds * 1000;
    t.push({
      name: 'steady: flush lag under one slice',
      actual: worst === null ? 'n/a' : `max ${fmt(worst)} ms after the slice could be taken (${fmt(Math.max(...steady.lags.map((l) => l.fromEndMs)))} ms after its end)`,
      goal: `< ${fmt(sliceMs)} ms`,
      ratio: worst ? sliceMs / worst : null,
      pass: worst === null ? null : worst < sliceMs,
      note: 'the slice guard lets the flush take a slice one slice after it ends; measured from then',
    });
  }
  if (reference) {
    for (const name of names) {
      const x = one(name)!;
      const ref = reference.rssMb[name];
      if (!ref) continue;
      const roles = (['client', 'worker', 'flush'] as const).map((role) => ({ role, now: x.summary[`${role}PeakRssMb`]?.median ?? NaN, then: ref[role] ?? NaN }));
      const worst = roles.reduce((a, b) => (b.now / b.then > a.now / a.then ? b : a));
      t.push({
        name: `peak RSS no higher than the reference, ${name}`,
        actual: roles.map((r) => `${r.role} ${fmt(r.now)}`).join(' / ') + ' MB',
        goal: `≤ ${roles.map((r) => fmt(r.then)).join(' / ')} MB (+5 % run-to-run noise)`,
        ratio: worst.then / worst.now,
        pass: roles.every((r) => r.now <= r.then * 1.05),
        note: `reference run of ${reference.startedAt.slice(0, 10)}`,
      });
    }
  }
  for (const x of workloads) {
    const worst = Math.max(...x.runs.map((r) => r.statements.total / r.statements.bound));
    t.push({ name: `SQL statements per slice, ${configName(x)}`, actual: `${fmt(x.runs[0]!.statements.perNonEmptySlice, 1)}/slice`, goal: '≤ pairs/500 + 5', ratio: 1 / worst, pass: worst <= 1 });
  }
  return t;
}

function ratioOf(w: WorkloadReport): number | null {
  const e = w.summary.e2eEventsPerSecond?.median;
  const n = w.summary.naiveEventsPerSecond?.median;
  return e && n ? e / n : null;
}

// ── the printed report ──

function render(
  m: Machine, workloads: WorkloadReport[], statsd: { runs: StatsdRun[]; skipped?: string } | null, cost: CostResult[], targets: Target[], failures: string[],
  steady: SteadyResult | null, targets13: Target[],
): string {
  const out: string[] = [];
  out.push(`OffLog benchmark — ${opts.quick ? 'quick' : 'full'} mode, ${opts.runs} run(s) per measurement (median, min, max)`);
  if (opts.batchSize || opts.maxJobsPerFold) out.push(`tuning experiment: client batchSize ${opts.batchSize ?? 'default'}, worker maxJobsPerFold ${opts.maxJobsPerFold ?? 'default'}`);
  out.push(`machine: ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}, node ${m.node}, load ${m.loadAverage.join(' ')}`);
  out.push(`servers: ${m.gearmand}; memcached ${m.memcached}; MariaDB ${m.mariadb}`);
  const rows: [label: string, key: string, digits: number][] = [
    ['end to end: log() → rows committed (ev/s)', 'e2eEventsPerSecond', 0],
    ['  end-to-end time (s)', 'e2eSeconds', 2],
    ['  client: last batch acked by gearmand at (ms)', 'clientAckedAtMs', 0],
    ['  worker: first fold at (ms)', 'workerFirstFoldAtMs', 0],
    ['  worker: last event in memcached at (ms)', 'countedAtMs', 0],
    ['  then flush (ms)', 'flushMs', 0],
    ['client → gearmand acked (ev/s)', 'clientEventsPerSecond', 0],
    ['  client CPU (ms)', 'clientCpuMs', 0],
    ['  client CPU per event (µs)', 'clientCpuUsPerEvent', 2],
    ['  client paused for back-pressure (ms)', 'clientBlockedMs', 0],
    ['  gearmand CPU while client+worker ran (ms)', 'gearmandCpuIngestMs', 0],
    ['worker → memcached, wall (ev/s)', 'workerEventsPerSecondWall', 0],
    ['worker → memcached, busy time only (ev/s)', 'workerEventsPerSecondBusy', 0],
    ['  worker time: taking jobs from gearmand (ms)', 'workerTakeMs', 0],
    ['  worker time: asleep, no jobs queued (ms)', 'workerSleepMs', 0],
    ['  worker time: decode + fold + ack (ms)', 'workerDecodeFoldAckMs', 0],
    ['  worker time: ring.apply, memcached (ms)', 'workerMemcachedApplyMs', 0],
    ['  worker time: claims, fold lists, commits (was: job marks), memcached (ms)', 'workerMemcachedMarksMs', 0],
    ['  worker time: enter + leave slices, memcached (ms)', 'workerMemcachedEnterLeaveMs', 0],
    ['  worker CPU (ms)', 'workerCpuMs', 0],
    ['  worker CPU per event (µs)', 'workerCpuUsPerEvent', 2],
    ['  folds (jobs stored together)', 'workerFolds', 0],
    ['  events per fold', 'workerEventsPerFold', 0],
    ['  memcached ops (worker.stats.memcachedOps)', 'workerMemcachedOps', 0],
    ['  memcached ops incl. job marks (ring.ops)', 'workerRingOps', 0],
    ['  memcached ops per event', 'memcachedOpsPerEvent', 3],
    ['  memcached CPU while client+worker ran (ms)', 'memcachedCpuIngestMs', 0],
    ['flush rows', 'flushRows', 0],
    ['flush (rows/s)', 'flushRowsPerSecond', 0],
    ['  flush CPU (ms)', 'flushCpuMs', 0],
    ['  memcached CPU during flush (ms)', 'memcachedCpuFlushMs', 0],
    ['  mariadb CPU during flush (ms)', 'mariadbCpuFlushMs', 0],
    ['  SQL statements (flush)', 'flushStatements', 0],
    ['  SQL statements per non-empty slice', 'flushStatementsPerSlice', 1],
    ['  memcached ops (flush)', 'flushMemcachedOps', 0],
    ['peak RSS client (MB, incl. workload arrays)', 'clientPeakRssMb', 0],
    ['peak RSS worker (MB)', 'workerPeakRssMb', 0],
    ['  worker RSS growth after 50 % (MB)', 'workerRssGrowthMb', 1],
    ['peak RSS flush (MB)', 'flushPeakRssMb', 0],
    ['gearmand RSS after the run (MB)', 'gearmandRssMb', 0],
    ['memcached RSS after the run (MB)', 'memcachedRssMb', 0],
    ['mariadb RSS after the run (MB)', 'mariadbRssMb', 0],
    ['naive SQL: 1 upsert per event, 8 conns (ev/s)', 'naiveEventsPerSecond', 0],
    ['  naive sample (events)', 'naiveEvents', 0],
    ['  naive SQL statements per event', 'naiveStatementsPerEvent', 2],
    ['speed-up end to end vs naive (×)', 'speedupVsNaive', 1],
  ];
  for (const w of workloads) {
    const s = w.spec;
    out.push('');
    out.push(`${s.name}, ${w.workers} worker process${w.workers > 1 ? 'es' : ''}: ${fmt(s.events)} events, ${fmt(w.pairs)} (slice, user, action) pairs — ${fmt(s.users)} users${s.userSkew ? ` (Zipf s=${s.userSkew})` : ''} × ${s.actions} actions${s.actionSkew ? ` (Zipf s=${s.actionSkew})` : ''}, 2 slices${s.valueShare ? ', values on half' : ''}`);
    out.push(table(['metric', 'median', 'min', 'max'], rows.map(([l, key, d]) => [l, ...spreadCells(w.summary[key] ?? null, d)])));
  }
  for (const name of [...new Set(workloads.map((w) => w.spec.name))]) {
    const cs = workloads.filter((w) => w.spec.name === name).sort((a, b) => a.workers - b.workers);
    if (cs.length > 1) {
      // Per stage, per worker count: where the end-to-end time goes as workers are added.
      const stage: [string, (w: WorkloadReport) => number | null | undefined, number][] = [
        ['end to end (ev/s)', (w) => w.summary.e2eEventsPerSecond?.median, 0],
        ['client → gearmand: last batch acked at (ms)', (w) => w.summary.clientAckedAtMs?.median, 0],
        ['client → gearmand (ev/s)', (w) => w.summary.clientEventsPerSecond?.median, 0],
        ['gearmand → worker: time taking jobs, per worker (ms)', (w) => w.summary.workerTakeMs?.median, 0],
        ['worker: decode + fold + ack, per worker (ms)', (w) => w.summary.workerDecodeFoldAckMs?.median, 0],
        ['worker → memcached: ring.apply, per worker (ms)', (w) => w.summary.workerMemcachedApplyMs?.median, 0],
        ['worker → memcached: claims/commits + enter/leave, per worker (ms)', (w) => (w.summary.workerMemcachedMarksMs?.median ?? 0) + (w.summary.workerMemcachedEnterLeaveMs?.median ?? 0), 0],
        ['workers: last event in memcached at (ms)', (w) => w.summary.countedAtMs?.median, 0],
        ['worker stage, wall (ev/s)', (w) => w.summary.workerEventsPerSecondWall?.median, 0],
        ['worker stage, busy time only (ev/s)', (w) => w.summary.workerEventsPerSecondBusy?.median, 0],
        ['memcached ops per event', (w) => w.summary.memcachedOpsPerEvent?.median, 3],
        ['memcached CPU while client+workers ran (ms)', (w) => w.summary.memcachedCpuIngestMs?.median, 0],
        ['gearmand CPU while client+workers ran (ms)', (w) => w.summary.gearmandCpuIngestMs?.median, 0],
        ['workers CPU, all processes (ms)', (w) => w.summary.workerCpuMs?.median, 0],
        ['flush (ms)', (w) => w.summary.flushMs?.median, 0],
        ['flush (rows/s)', (w) => w.summary.flushRowsPerSecond?.median, 0],
      ];
      out.push('');
      out.push(`${name}: workers that scale — per stage, medians (${cs.map((c) => `${c.workers} worker${c.workers > 1 ? 's' : ''}`).join(' vs ')})`);
      out.push(table(['stage', ...cs.map((c) => `${c.workers} worker${c.workers > 1 ? 's' : ''}`), `${cs[cs.length - 1]!.workers} / ${cs[0]!.workers}`], stage.map(([label, get, d]) => {
        const v = cs.map(get);
        return [label, ...v.map((x) => fmt(x, d)), fmt((v[v.length - 1] ?? NaN) / (v[0] ?? NaN), 2)];
      })));
    }
    const x = cs[0]!;
    const runs = x.runs.filter((r) => r.ceiling);
    if (runs.length > 0) {
      const flush = spread(runs.map((r) => r.flush.rowsPerSecond));
      out.push('');
      out.push(`${name}: the database's ceiling — the same ${fmt(x.pairs)} rows, each method into a fresh table, one transaction per slice unless noted (rows/s)`);
      out.push(table(['method', 'median', 'min', 'max', 'flush / this'], [
        ...runs[0]!.ceiling!.map((c) => {
          const sp = spread(runs.map((r) => r.ceiling!.find((k) => k.name === c.name)?.rowsPerSecond));
          return [c.name, ...spreadCells(sp), fmt((flush?.median ?? NaN) / (sp?.median ?? NaN), 2)];
        }),
        ['OffLog flush (memcached → LOAD DATA, key order; same runs)', ...spreadCells(flush), '1.00'],
      ]));
    }
  }
  if (steady) {
    out.push('');
    out.push(`steady state: ${fmt(steady.offered)} ev/s offered for ${steady.slices} slices of ${steady.sliceSeconds} s (${fmt(steady.events)} events), 1 worker, the flush every slice ${STEADY.flushOffsetMs} ms after the boundary`);
    out.push(table(['figure', 'value'], [
      ['client: logged (ev/s), whole run', fmt(steady.clientRate)],
      ['client: fewest events logged in a second', fmt(steady.clientSecondMin)],
      ['ingest into memcached per 2 s window: min / median (ev/s)', `${fmt(steady.ingestMin)} / ${fmt(steady.ingestMedian)}`],
      ['ingest while a flush ran / while none did (ev/s)', `${fmt(steady.ingestDuringFlush)} / ${fmt(steady.ingestOutsideFlush)}`],
      ['backlog (logged, not yet counted): max', `${fmt(steady.backlogMax)} events = ${fmt(steady.backlogMaxSeconds, 2)} s`],
      ['client event-loop delay p99, worst second / max (ms)', `${fmt(steady.loopDelayP99Ms, 2)} / ${fmt(steady.loopDelayMaxMs, 2)}`],
      ['client event-loop delay p99, median second during flushes / outside (ms)', `${fmt(steady.loopDelayP99DuringFlushMs, 3)} / ${fmt(steady.loopDelayP99OutsideFlushMs, 3)}`],
      ...steady.lags.map((l) => [`slice ${l.slice + 1}: ${fmt(l.rows)} rows committed, after its end / after it could be taken (ms)`, `${fmt(l.fromEndMs)} / ${fmt(l.fromFlushableMs)}`]),
      ['flushes with rows: start (s into the run) / duration (ms) / rows', steady.flushes.map((f) => `${fmt(f.startMs / 1000, 1)}/${fmt(f.ms)}/${fmt(f.rows)}`).join('  ')],
      ['totals', steady.check.ok ? `exact (${fmt(steady.check.rows)} rows${steady.checkedAcrossSlices ? ', per pair across slices: some events were late' : ''})` : 'WRONG'],
    ], 'lr'));
  }
  if (statsd) {
    out.push('');
    if (statsd.skipped) out.push(`StatsD: skipped — ${statsd.skipped}`);
    else {
      out.push(`StatsD (npm statsd, UDP loopback, flushInterval ${STATSD.flushIntervalMs} ms) fed by hot-shots for ${STATSD.seconds} s, one counter per (user, action):`);
      const rates = [...new Set(statsd.runs.map((r) => r.targetRate))];
      out.push(table(
        ['target rate (ev/s)', 'achieved ev/s', 'min', 'max', 'lost % (median)', 'min', 'max', 'kernel UDP drops'],
        rates.map((rate) => {
          const rs = statsd.runs.filter((r) => r.targetRate === rate);
          return [fmt(rate), ...spreadCells(spread(rs.map((r) => r.achievedRate))), ...spreadCells(spread(rs.map((r) => r.lostPercent)), 2), fmt(spread(rs.map((r) => r.udpRcvbufErrors))?.median)];
        }),
      ));
    }
  }
  if (cost.length > 0) {
    const s = costSummary(cost);
    out.push('');
    out.push(`client cost per call (batches of ${cost[0]!.batch} calls timed with hrtime, ${fmt(cost[0]!.calls.log)} calls each per run):`);
    out.push(table(['call', 'median ns', 'min', 'max', 'p99 ns', 'min', 'max'], [
      ['OffLogClient.log(user, action)', ...spreadCells(s.logMedianNs ?? null, 1), ...spreadCells(s.logP99Ns ?? null, 1)],
      ['hot-shots increment(name), defaults', ...spreadCells(s.incrementMedianNs ?? null, 1), ...spreadCells(s.incrementP99Ns ?? null, 1)],
      ['hot-shots increment(name), maxBufferSize 1432', ...spreadCells(s.incrementBufferedMedianNs ?? null, 1), ...spreadCells(s.incrementBufferedP99Ns ?? null, 1)],
    ]));
    out.push(table(['event-loop delay (beyond the 1 ms timer)', 'p99 ms', 'min', 'max'], [
      [`logging ${fmt(COST.eldRate)} ev/s for ${COST.eldSeconds} s`, ...spreadCells(s.loopDelayP99Ms ?? null, 3)],
      ['  max while logging', ...spreadCells(s.loopDelayMaxMs ?? null, 3)],
      ['idle, same process (machine noise)', ...spreadCells(s.idleLoopDelayP99Ms ?? null, 3)],
    ]));
  }
  out.push('');
  out.push('targets (issue 5):');
  out.push(table(['target', 'measured', 'goal', 'ratio', 'result'], targets.map((t) => [
    t.name, t.actual, t.goal, t.ratio === null ? '' : `${fmt(t.ratio, 2)}×`, (t.pass === null ? 'n/a' : t.pass ? 'PASS' : 'FAIL') + (t.note ? `  (${t.note})` : ''),
  ]), 'lllrl'));
  if (targets13.length > 0) {
    out.push('');
    out.push('targets (issue 13):');
    out.push(table(['target', 'measured', 'goal', 'ratio', 'result'], targets13.map((t) => [
      t.name, t.actual, t.goal, t.ratio === null ? '' : `${fmt(t.ratio, 2)}×`, (t.pass === null ? 'n/a' : t.pass ? 'MET' : 'MISSED') + (t.note ? `  (${t.note})` : ''),
    ]), 'lllrl'));
  }
  out.push('');
  if (failures.length === 0) out.push(`correctness: every total exact in every run (${workloads.reduce((n, w) => n + w.runs.length, 0)} OffLog runs, every row checked)`);
  else out.push(`CORRECTNESS FAILED:\n  ${failures.join('\n  ')}`);
  return out.join('\n');
}

/** The machine is shared: who else was busy when the bench started (ps, top five by CPU). */
function busiestProcesses(): string[] {
  try {
    const out = execFileSync('ps', ['-eo', 'pcpu,comm', '--sort=-pcpu'], { encoding: 'utf8' });
    return out.split('\n').slice(1, 6).map((l) => l.trim()).filter(Boolean);
  } catch {
    return [];
  }
}

function fmtShort(x: number): string {
  if (x >= 1e6) return `${(x / 1e6).toFixed(x >= 1e7 ? 0 : 1)}M`;
  if (x >= 1e3) return `${(x / 1e3).toFixed(x >= 1e4 ? 0 : 1)}k`;
  return String(x);
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    progress.end();
    console.error(err instanceof Error ? err.stack : err);
    process.exitCode = 1;
  },
);
