/**
 * The chaos run (issue 9 §6): the whole pipeline under steady load while a
 * seeded driver crashes and restarts its parts, then every total checked.
 *
 * Its own gearmand (persistent sqlite queue) and memcached on free ports, and
 * a TCP proxy in front of the test MariaDB, so "cut MySQL" is real: every
 * connection dropped, new ones refused, until healed. Workers are child
 * processes (test/chaos/worker.ts) so SIGKILL is a real crash. The client and
 * a flush every OFFLOG_SLICE_SECONDS (10) run in this process.
 *
 * Faults, from a schedule drawn from the seed before the run starts (the
 * first are one of each kind, store-kill twice, once at each point, so even
 * a short run meets every kind):
 *   worker-kill       SIGKILL a worker; restart it a moment later
 *   store-kill        SIGKILL a worker inside its next store: once its fold's
 *                     pair counters are in memcached (the fold is applied
 *                     again), or once its jobs are marked applied but not yet
 *                     acknowledged (redelivered, then skipped); restart it
 *   gearmand-restart  SIGKILL gearmand; start it again on the same port and queue
 *   mysql-cut         cut MySQL as the next flush writes its first slice (which
 *                     fails); heal it seconds later
 *   clock-skew        stop a worker (SIGTERM) and restart it with its clock
 *                     25 s or 15 s behind, or 5 s ahead
 *   memcached-restart SIGKILL memcached (every count in it is gone) and start
 *                     it again, empty, on the same port
 *   memcached-slow    every memcached reply to the workers delayed 50–800 ms
 *                     for a few seconds (a latency proxy; under the workers'
 *                     5 s operation timeout, so no store times out)
 * The seed, the schedule and every fault as it happens go to the run's log,
 * so a failing run can be replayed with `--seed`: the same faults, in the same
 * order, at the same offsets (the processes' interleaving is the OS's).
 *
 * What is checked at the end (the invariant). Each event's action id encodes
 * the slice of its own time (and one of four kinds), so every row of
 * ol_counts says which slice its events belong to, wherever they were counted:
 *   1. No loss, bounded duplicates: per (user, action) — that is, per (own
 *      slice, user, kind) — the counts summed over all slices are at least what
 *      the client sent, and the excess over all pairs is at most one fold per
 *      SIGKILLed worker (DEFAULT_MAX_JOBS_PER_FOLD × 500-event batches, the
 *      README's bound). Value sums likewise (exact when no event is duplicated).
 *   2. Late events are accounted for: per slice, the `late` figure the flush
 *      recorded equals the events counted there that belong to another slice
 *      (a worker's clock behind or ahead, a backlog after an outage, or the
 *      flush's watermark having taken their slice) — exactly, when nothing
 *      was duplicated, else within the duplicates.
 *   3. Every slice from the first event to the last is in ol_slices as
 *      `flushed` or `maybe-duplicated` (none lost, incomplete or corrupt); the
 *      client dropped nothing; no job was dead-lettered; no worker died on its own.
 *   4. After a SIGKILL inside a store, its fold's jobs were redelivered: each
 *      store-kill after the counters adds duplicates (at most its fold), each
 *      after its commit adds skipped jobs (never a duplicate).
 *   5. Duplicates are reported (docs/claims.md): events counted twice are at
 *      most the bounds the maybe-duplicated slices recorded, so none is silent.
 * A memcached restart loses counts, which the flush must report: slices may
 * then be `incomplete` (with a note naming the restart or what is gone), and
 * only events whose own slice lies within LOSS_WINDOW slices of an
 * `incomplete` one may be missing. So no slice reported `flushed` comes out
 * with fewer events than were sent to it (a loss near no incomplete slice is
 * a violation), and every slice begun before a restart and flushed after it
 * must be reported `incomplete`. A SIGKILL may leave pairs listed without
 * counters, or a register chunk number reserved and never written (the
 * register is written first, by design): a slice `incomplete` for that alone
 * is allowed after a SIGKILL, and excuses no loss.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RowDataPacket } from 'mysql2/promise';
import { pino } from 'pino';
import { sleep } from '../../lib/base/backoff.ts';
import { FN_BATCH } from '../../lib/domain/contract.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../../lib/domain/slice.ts';
import { OffLogClient } from '../../lib/send/client.ts';
import { DEFAULT_MAX_JOBS_PER_FOLD, type WorkerStats } from '../../lib/count/worker.ts';
import { Runtime } from '../../lib/runtime.ts';
import type { RingMode } from '../../lib/base/config.ts';
import { adminStatus } from '../../lib/wire/gearman.ts';
import { gearmand, memcached, Proxy, type Scope } from '../daemons.ts';
import { prng, readCounts, testConfig } from '../support.ts';

export const SLICE_SECONDS = 10;
/** 12 × 10 s: two minutes, far longer than any outage the run causes, so no slice leaves the ring unflushed. */
const RING_SLICES = 12;
/** Events per job: small, so the duplicate bound (a fold of jobs) stays tight. */
export const BATCH = 500;
const USERS = 500;
const KINDS = 4;
/** Slices an action id can name (mod): 1024 × 10 s, so runs up to MAX_SECONDS never alias. */
const SLICE_TAGS = 1024;
export const MAX_SECONDS = 3600;
const MAX_VALUE = 100;
export const FAULT_KINDS = ['worker-kill', 'store-kill', 'gearmand-restart', 'mysql-cut', 'clock-skew', 'memcached-restart', 'memcached-slow'] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];
const CLOCK_OFFSETS_MS = [-25_000, -15_000, 5_000];
/**
 * Slices either side of an `incomplete` one whose events may be lost: an event is
 * counted up to 3 slices from its own (a worker's clock 25 s behind, or 5 s
 * ahead, with 10-s slices), and a backlog after an outage moves it on further.
 */
const LOSS_WINDOW = 4;
const SLOW_MS = [50, 200, 800];
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface ChaosOptions {
  /** Seconds of load (faults happen during it); the drain and checks come after. */
  seconds: number;
  seed: number;
  /** Events per second. */
  rate?: number;
  workers?: number;
  /** The kinds of fault to cause (default: all). Without worker-kill, any duplicate is a violation. */
  kinds?: readonly FaultKind[];
  /** Progress and fault lines (they also go to the run's log file). */
  say?: (line: string) => void;
  /** OFFLOG_RING_MODE of the workers and the flush (default counters). In `folds` the duplicate bound is 0: over must be 0. */
  mode?: RingMode;
}

export interface Fault {
  /** Seconds after the load started. */
  at: number;
  kind: FaultKind;
  worker: number;
  /** worker-kill: ms before the restart; gearmand-restart: ms down; mysql-cut: ms of outage. */
  downMs: number;
  /** mysql-cut: ms into the flush's first slice write when the cut comes (the write waits for it, and fails). */
  cutDelayMs: number;
  /** clock-skew: the restarted worker's clock offset. */
  offsetMs: number;
  /** store-kill: where in the store the worker dies. */
  stage: 'counters' | 'marks';
  /** memcached-slow: the delay of each reply (downMs: for how long). */
  latencyMs: number;
}

export interface ChaosReport {
  seed: number;
  seconds: number;
  rate: number;
  faults: Record<FaultKind, number>;
  /** Store-kills that landed, by where in the store. */
  storeKills: { counters: number; marks: number; eventsApplied: number; jobsMarked: number };
  flushes: { ok: number; failed: number; gaveWay: number };
  events: {
    sent: number;
    counted: number;
    duplicates: number;
    duplicateBound: number;
    /** Duplicates by the start of their own slice (to set beside the faults' times in the log). */
    duplicatesBySlice: Record<string, number>;
    /** Counted in a slice other than their own. */
    displaced: number;
    /** The flush's `late` figures, summed. */
    late: number;
    /** Workers' stats (a killed worker's last report): moved past the flush's watermark. */
    movedPastWatermark: number;
    redeliveriesSkipped: number;
    /** Events missing where an `incomplete` slice (a memcached restart) allows it. */
    lostReported: number;
  };
  slices: { first: string; last: string; written: number; statuses: Record<string, number> };
  violations: string[];
  durationMs: number;
  logFile: string;
}

/** The fault schedule a seed gives: a pure function of (seed, seconds, workers), which is what makes a run replayable. */
export function schedule(seed: number, seconds: number, workers: number, kinds: readonly FaultKind[] = FAULT_KINDS): Fault[] {
  if (kinds.length === 0 || kinds.some((k) => !FAULT_KINDS.includes(k))) throw new RangeError(`kinds: some of ${FAULT_KINDS.join(', ')}, got ${kinds.join(', ')}`);
  const rand = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  const first: FaultKind[] = FAULT_KINDS.filter((k) => kinds.includes(k));
  if (kinds.includes('store-kill')) first.push('store-kill');
  for (let i = first.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [first[i], first[j]] = [first[j]!, first[i]!];
  }
  // After one of each: kills most often, the rest alike.
  const weighted = ([
    'worker-kill', 'worker-kill', 'store-kill', 'store-kill', 'gearmand-restart', 'gearmand-restart', 'mysql-cut', 'mysql-cut',
    'clock-skew', 'clock-skew', 'memcached-restart', 'memcached-slow', 'memcached-slow',
  ] as const).filter((k) => kinds.includes(k));
  const faults: Fault[] = [];
  let storeKills = 0;
  for (let at = 3 + rand() * 2; at < seconds - 2; at += 2 + rand() * 4) {
    const kind = first.shift() ?? pick(weighted);
    faults.push({
      at: Math.round(at * 10) / 10,
      kind,
      worker: Math.floor(rand() * workers),
      downMs: Math.round(200 + rand() * 2800),
      cutDelayMs: Math.round(rand() * 40),
      offsetMs: pick(CLOCK_OFFSETS_MS),
      // Store-kills take turns: after the counters, then after the marks.
      stage: kind === 'store-kill' && storeKills++ % 2 === 1 ? 'marks' : 'counters',
      latencyMs: pick(SLOW_MS),
    });
  }
  return faults;
}

/** The action id of an event of `kind` whose own time is in `slice`: the slice travels with the event into ol_counts. */
export const actionOf = (slice: number, kind: number): number => 1 + (slice % SLICE_TAGS) * KINDS + kind;

/** The slice an action id names, given any slice of the run (they all lie within SLICE_TAGS of each other). */
export const sliceOfAction = (actionId: number, anchor: number): number => {
  const tag = Math.floor((actionId - 1) / KINDS);
  return anchor + ((tag - (anchor % SLICE_TAGS) + SLICE_TAGS) % SLICE_TAGS);
};

/** What a worker prints as it kills itself inside a store (test/chaos/worker.ts). */
interface StoreKillLine { storeKill: 'counters' | 'marks'; events?: number; uniques?: string[] }
interface AppliedFoundLine { appliedFound: string[] }

/** One worker process slot: killed, stopped and restarted; its processes' last stats kept. */
class WorkerSlot {
  private proc: ChildProcess | null = null;
  private expectExit = false;
  offsetMs = 0;
  readonly finished: WorkerStats[] = [];
  /** What its store-kills left: events of folds killed after their counters, jobs of folds killed after their marks. */
  readonly killedHolding = { events: 0, uniques: [] as { unique: string; at: number }[] };
  /** Jobs its workers found already applied (their marks read back). */
  readonly appliedFound = new Set<string>();
  private last: WorkerStats | null = null;

  constructor(
    readonly id: number,
    private readonly env: NodeJS.ProcessEnv,
    private readonly logFile: string,
    private readonly onCrash: (slot: WorkerSlot, why: string) => void,
  ) {}

  start(offsetMs = this.offsetMs): void {
    this.offsetMs = offsetMs;
    this.expectExit = false;
    this.last = null;
    const proc = spawn(process.execPath, ['--import', 'tsx', join(REPO, 'test/chaos/worker.ts')], {
      cwd: REPO,
      env: { ...this.env, CHAOS_CLOCK_OFFSET_MS: String(offsetMs) },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    proc.stdin!.on('error', () => undefined);
    this.proc = proc;
    children.add(proc);
    let out = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const lines = out.split('\n');
      out = lines.pop()!;
      for (const line of lines) {
        try {
          const o = JSON.parse(line) as WorkerStats | StoreKillLine | AppliedFoundLine;
          if ('storeKill' in o) {
            if (o.storeKill === 'counters') this.killedHolding.events += o.events ?? 0;
            else for (const u of o.uniques ?? []) this.killedHolding.uniques.push({ unique: u, at: Date.now() });
          } else if ('appliedFound' in o) for (const u of o.appliedFound) this.appliedFound.add(u);
          else this.last = o;
        } catch {
          appendFileSync(this.logFile, `[worker ${this.id} pid ${proc.pid}] stdout: ${line}\n`);
        }
      }
    });
    proc.stderr!.on('data', (d: Buffer) => appendFileSync(this.logFile, `[worker ${this.id} pid ${proc.pid}] ${d}`));
    proc.once('exit', (code, signal) => {
      children.delete(proc);
      if (this.last) this.finished.push(this.last);
      this.last = null;
      if (this.proc === proc) this.proc = null;
      if (!this.expectExit) this.onCrash(this, `exited by itself (code ${code}, signal ${signal}); see ${this.logFile}`);
    });
  }

  get running(): boolean {
    return this.proc !== null;
  }

  async kill(): Promise<void> {
    await this.end('SIGKILL', 0);
  }

  /**
   * Has the worker SIGKILL itself inside its next store, at `stage` (see
   * test/chaos/worker.ts). Returns whether it did within `timeoutMs`; if not
   * (no fold came), it is SIGKILLed from here.
   */
  async killInStore(stage: 'counters' | 'marks', timeoutMs = 10_000): Promise<boolean> {
    const p = this.proc;
    if (!p) return false;
    this.expectExit = true;
    const exited = new Promise((r) => p.once('exit', r));
    p.stdin!.write(`kill-after ${stage}\n`);
    let timer: NodeJS.Timeout | undefined;
    const outcome = await Promise.race([exited.then(() => 'died'), new Promise((r) => (timer = setTimeout(r, timeoutMs, 'timeout')))]);
    clearTimeout(timer);
    if (outcome === 'died') return true;
    p.kill('SIGKILL');
    await exited;
    return false;
  }

  /** SIGTERM: the worker stores and acknowledges what it holds, then exits; SIGKILL after `graceMs`. Returns whether it had to be killed. */
  async stop(graceMs = 15_000): Promise<boolean> {
    return this.end('SIGTERM', graceMs);
  }

  private async end(signal: NodeJS.Signals, graceMs: number): Promise<boolean> {
    const p = this.proc;
    if (!p) return false;
    this.expectExit = true;
    const exited = new Promise((r) => p.once('exit', r));
    p.kill(signal);
    if (signal === 'SIGKILL') {
      await exited;
      return true;
    }
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise((r) => (timer = setTimeout(r, graceMs, 'timeout')));
    const outcome = await Promise.race([exited, late]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      p.kill('SIGKILL');
      await exited;
      return true;
    }
    return false;
  }
}

/** Worker processes not yet reaped: killed when this process exits, whatever happened. */
const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

export async function runChaos(options: ChaosOptions, scope: Scope): Promise<ChaosReport> {
  const { seconds, seed } = options;
  if (!(seconds >= 5 && seconds <= MAX_SECONDS)) throw new RangeError(`seconds: 5 … ${MAX_SECONDS}, got ${seconds}`);
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffff_ffff) throw new RangeError(`seed: an integer 0 … 2^32 − 1, got ${seed}`);
  const rate = options.rate ?? 3000;
  const nWorkers = options.workers ?? 2;
  const mode: RingMode = options.mode ?? 'counters';
  const started = Date.now();
  const dir = join(process.env.OFFLOG_DATA_DIR ?? join(REPO, '.data/test'), 'chaos');
  mkdirSync(dir, { recursive: true });
  const logFile = join(dir, `seed-${seed}-${new Date(started).toISOString().replace(/[:.]/g, '-')}.log`);
  const t0 = performance.now();
  const elapsed = (): string => `+${((performance.now() - t0) / 1000).toFixed(1)}s`;
  const say = (line: string): void => {
    appendFileSync(logFile, `${elapsed()} ${line}\n`);
    options.say?.(`${elapsed()} ${line}`);
  };
  const violations: string[] = [];
  const violation = (v: string): void => {
    violations.push(v);
    say(`VIOLATION: ${v}`);
  };

  const faults = schedule(seed, seconds, nWorkers, options.kinds);
  say(`chaos: ring mode ${mode}, seed ${seed}, ${seconds} s of load at ${rate} events/s, ${nWorkers} workers, ${SLICE_SECONDS}-s slices, flush every ${SLICE_SECONDS} s; log ${logFile}`);
  say(`schedule: ${faults.map((f) => `${f.at}s ${f.kind}${f.kind === 'clock-skew' ? ` ${f.offsetMs} ms` : ''}`).join(', ')}`);

  // ── servers ──
  const g = await gearmand(scope);
  await g.start();
  const mc = await memcached(scope);
  await mc.start();
  // The workers reach memcached through a proxy that can slow its replies (memcached-slow); the flush, directly.
  const mcProxy = await Proxy.start(scope, mc.port, { latency: true });
  const mysqlUrl = new URL(testConfig().mysqlUrl);
  const mysqlPort = Number(mysqlUrl.port);
  const proxy = await Proxy.start(scope, mysqlPort);
  mysqlUrl.port = String(proxy.port);
  // This process's logs (client, flush) go to the run's log, beside the faults they follow from.
  const log = pino({ name: 'chaos', level: process.env.OFFLOG_LOG_LEVEL ?? 'warn' }, pino.destination({ dest: logFile, append: true, sync: true }));
  const rt = new Runtime(testConfig({
    OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}`,
    OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${mc.port}`,
    OFFLOG_MYSQL_URL: mysqlUrl.toString(),
    OFFLOG_SLICE_SECONDS: String(SLICE_SECONDS),
    OFFLOG_RING_SLICES: String(RING_SLICES),
    OFFLOG_RING_MODE: mode,
  }), log);
  scope.after(() => rt.close());
  await rt.store.migrate();
  const c = rt.config;
  say(`gearmand :${g.port}, memcached :${mc.port} (workers via :${mcProxy.port}), MySQL :${mysqlPort} via proxy :${proxy.port}, prefixes ${c.keyPrefix} / ${c.tablePrefix}`);

  // ── workers ──
  const workerEnv: NodeJS.ProcessEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('OFFLOG_')));
  Object.assign(workerEnv, {
    OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}`,
    OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${mcProxy.port}`,
    OFFLOG_KEY_PREFIX: c.keyPrefix,
    OFFLOG_SLICE_SECONDS: String(SLICE_SECONDS),
    OFFLOG_RING_SLICES: String(RING_SLICES),
    OFFLOG_RING_MODE: mode,
    OFFLOG_LOG_LEVEL: 'warn',
    // A SIGKILLed worker's claims are taken over once its lease lapses: seconds, not the default 30, in a run this short.
    OFFLOG_LEASE_SECONDS: '3',
  });
  let ending = false;
  const restarts = new Set<Promise<void>>();
  const later = (ms: number, fn: () => void): void => {
    const p: Promise<void> = sleep(ms).then(fn).finally(() => restarts.delete(p));
    restarts.add(p);
  };
  const slots = Array.from({ length: nWorkers }, (_, i) =>
    new WorkerSlot(i, workerEnv, logFile, (slot, why) => {
      violation(`worker ${slot.id} ${why}`);
      if (!ending) later(1000, () => slot.running || slot.start());
    }),
  );
  scope.after(() => Promise.all(slots.map((s) => s.kill())));
  for (const s of slots) s.start(0);

  // ── load ──
  const client = new OffLogClient({ servers: c.gearmanServers, batchSize: BATCH, logger: rt.log });
  const expected = new Map<string, [number, number]>();
  const events = prng(seed ^ 0x5eed_c4a0);
  let sent = 0;
  const firstSlice = sliceOf(Date.now(), SLICE_SECONDS);
  const loadStart = Date.now();
  const loadEnd = loadStart + seconds * 1000;
  const logDue = (): void => {
    const now = Date.now();
    const due = Math.floor((Math.min(now, loadEnd) - loadStart) * (rate / 1000));
    for (; sent < due; sent++) {
      const user = Math.floor(events() * USERS);
      const action = actionOf(sliceOf(now, SLICE_SECONDS), Math.floor(events() * KINDS));
      const value = 1 + Math.floor(events() * MAX_VALUE);
      client.log(user, action, { at: now, value });
      const key = `${user}:${action}`;
      const e = expected.get(key);
      if (e) {
        e[0]++;
        e[1] += value;
      } else expected.set(key, [1, value]);
    }
  };
  const ticker = setInterval(logDue, 20);
  // If the run throws half-way, its scope's end stops the load, the flushes and the client.
  let aborted = false;
  let clientClosed = false;
  scope.after(async () => {
    aborted = true;
    clearInterval(ticker);
    if (!clientClosed) await client.close({ timeoutMs: 0 });
  });
  say('load starts (fault times count from here)');

  // ── flushes, every slice, and the MySQL cuts armed for them ──
  const counts = Object.fromEntries(FAULT_KINDS.map((k) => [k, 0])) as Record<FaultKind, number>;
  /** Store-kills that landed, by where. */
  const storeKills = { counters: 0, marks: 0 };
  const flushes = { ok: 0, failed: 0, gaveWay: 0 };
  const armedCuts: Fault[] = [];
  // A cut comes while a flush writes its first slice (a flush may take its seconds waiting for writers
  // before it writes anything, so a cut timed from its start could be over before the write).
  let cutting: Fault | null = null;
  let outage: Promise<void> | null = null;
  const writeSlice = rt.store.writeSlice.bind(rt.store);
  rt.store.writeSlice = async (...args) => {
    const cut = cutting;
    if (cut) {
      cutting = null;
      let cutDone!: () => void;
      const done = new Promise<void>((r) => (cutDone = r));
      outage = (async () => {
        await sleep(cut.cutDelayMs);
        await proxy.cut();
        counts['mysql-cut']++;
        say(`mysql-cut: ${cut.cutDelayMs} ms into the flush's first slice write, for ${cut.downMs} ms`);
        cutDone();
        await sleep(cut.downMs);
        await proxy.heal();
        say('mysql-cut: healed');
      })();
      await done;
    }
    return writeSlice(...args);
  };
  /** When the flush that wrote each slice began (ms), and the memcached restarts (down, up again). */
  const flushBegan = new Map<number, number>();
  const mcRestarts: { down: number; up: number }[] = [];
  const flushOnce = async (now: Date): Promise<boolean> => {
    cutting ??= armedCuts.shift() ?? null;
    const began = Date.now();
    try {
      const r = await rt.flush(now);
      for (const sl of r.slices) flushBegan.set(sl.slice, began);
      if (r.ran) flushes.ok++;
      else flushes.gaveWay++;
      const bad = r.slices.filter((s) => s.status !== 'flushed');
      say(`flush: ${r.slices.length} slice(s), ${r.rows} rows, ${r.durationMs} ms${bad.length > 0 ? `; NOT flushed: ${bad.map((s) => `${s.sliceStart} ${s.status} (${s.note})`).join('; ')}` : ''}`);
      return r.ran;
    } catch (err) {
      flushes.failed++;
      say(`flush failed: ${(err as Error).message}`);
      return false;
    } finally {
      await outage;
      outage = null;
    }
  };
  const flushLoop = (async () => {
    for (let next = loadStart + SLICE_SECONDS * 1000; next <= loadEnd; next += SLICE_SECONDS * 1000) {
      while (Date.now() < next && !aborted) await sleep(Math.min(500, next - Date.now()));
      if (aborted) return;
      await flushOnce(new Date());
    }
  })();

  // ── faults ──
  for (const f of faults) {
    await sleep(loadStart + f.at * 1000 - Date.now());
    const slot = slots[f.worker]!;
    switch (f.kind) {
      case 'worker-kill':
        if (!slot.running) {
          say(`worker-kill: worker ${slot.id} is down already; skipped`);
          break;
        }
        await slot.kill();
        counts['worker-kill']++;
        say(`worker-kill: worker ${slot.id} SIGKILLed; restart in ${f.downMs} ms`);
        later(f.downMs, () => {
          if (!slot.running && !ending) {
            slot.start(0);
            say(`worker ${slot.id} restarted`);
          }
        });
        break;
      case 'store-kill': {
        if (!slot.running) {
          say(`store-kill: worker ${slot.id} is down already; skipped`);
          break;
        }
        const inStore = await slot.killInStore(f.stage);
        counts[inStore ? 'store-kill' : 'worker-kill']++;
        if (inStore) storeKills[f.stage]++;
        say(`store-kill: worker ${slot.id} ${inStore ? `SIGKILLed itself after its fold's ${f.stage}` : 'took no fold in time: SIGKILLed'}; restart in ${f.downMs} ms`);
        later(f.downMs, () => {
          if (!slot.running && !ending) {
            slot.start(0);
            say(`worker ${slot.id} restarted`);
          }
        });
        break;
      }
      case 'memcached-restart':
        const down = Date.now();
        await mc.kill();
        counts['memcached-restart']++;
        say(`memcached-restart: SIGKILLed (its counts are gone), down for ${f.downMs} ms`);
        await sleep(f.downMs);
        await mc.start();
        mcRestarts.push({ down, up: Date.now() });
        say('memcached-restart: up, empty');
        break;
      case 'memcached-slow':
        mcProxy.latencyMs = f.latencyMs;
        counts['memcached-slow']++;
        say(`memcached-slow: replies to the workers delayed ${f.latencyMs} ms for ${f.downMs} ms`);
        later(f.downMs, () => {
          mcProxy.latencyMs = 0;
          say('memcached-slow: back to speed');
        });
        break;
      case 'gearmand-restart':
        await g.kill();
        counts['gearmand-restart']++;
        say(`gearmand-restart: SIGKILLed, down for ${f.downMs} ms`);
        await sleep(f.downMs);
        await g.start();
        say('gearmand-restart: up');
        break;
      case 'mysql-cut':
        armedCuts.push(f);
        say(`mysql-cut: armed for the next flush`);
        break;
      case 'clock-skew': {
        const killed = await slot.stop();
        if (killed) counts['worker-kill']++;
        slot.start(f.offsetMs);
        counts['clock-skew']++;
        say(`clock-skew: worker ${slot.id} ${killed ? 'SIGKILLed (did not stop in time)' : 'stopped'} and restarted with its clock ${f.offsetMs > 0 ? '+' : ''}${f.offsetMs} ms`);
        break;
      }
    }
  }

  // ── the end: load stops, queues drain, workers stop, every slice is flushed ──
  await sleep(loadEnd - Date.now());
  clearInterval(ticker);
  logDue();
  await flushLoop;
  const cs = await client.close({ timeoutMs: 120_000 });
  clientClosed = true;
  say(`load done: ${sent} events sent; client accepted ${cs.accepted}, acknowledged ${cs.acknowledged}, dropped ${cs.dropped}, reconnects ${cs.reconnects}`);
  if (cs.accepted !== sent || cs.acknowledged !== sent || cs.dropped !== 0) violation(`client: ${sent} logged, ${cs.accepted} accepted, ${cs.acknowledged} acknowledged, ${cs.dropped} dropped`);
  await Promise.all(restarts);
  for (const s of slots) if (!s.running) s.start(0);
  await drained(c.gearmanServers[0]!, 180_000).catch((err: Error) => violation(err.message));
  say('queue drained');
  ending = true;
  for (const s of slots) if (await s.stop()) counts['worker-kill']++;
  say('workers stopped');
  const maxAhead = Math.max(0, ...slots.map((s) => s.offsetMs), ...faults.filter((f) => f.kind === 'clock-skew').map((f) => f.offsetMs));
  // No writer is left, so slices ahead of the clock are finished too: flush as if the last one a worker could have written were two behind.
  const lastSlice = sliceOf(Date.now() + maxAhead, SLICE_SECONDS);
  const finalNow = new Date(sliceStartMs((lastSlice + 2) as SliceId, SLICE_SECONDS) + 1);
  let flushedAll = false;
  for (let attempt = 0; attempt < 5 && !flushedAll; attempt++) flushedAll = await flushOnce(finalNow);
  if (!flushedAll) violation('the final flush did not succeed in 5 attempts');

  // ── the checks ──
  const workerStats = slots.flatMap((s) => s.finished);
  const sum = (k: keyof WorkerStats): number => workerStats.reduce((n, w) => n + w[k], 0);
  if (sum('deadLetters') > 0) violation(`${sum('deadLetters')} job(s) dead-lettered`);
  const rows = await readCounts(rt);
  const [sliceRows] = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT UNIX_TIMESTAMP(slice_start) * 1000 AS s, status, row_count, events, late, duplicate_bound, note FROM \`${c.tablePrefix}slices\` ORDER BY slice_start`,
  );
  const got = new Map<string, [number, number]>();
  const displacedIn = new Map<number, number>();
  let counted = 0;
  let displaced = 0;
  for (const [key, [count, sum]] of rows) {
    const [ms, user, action] = key.split(':').map(Number) as [number, number, number];
    const slice = ms / 1000 / SLICE_SECONDS;
    const n = Number(count);
    counted += n;
    if (sliceOfAction(action, firstSlice) !== slice) {
      displaced += n;
      displacedIn.set(slice, (displacedIn.get(slice) ?? 0) + n);
    }
    const k = `${user}:${action}`;
    const cur = got.get(k) ?? [0, 0];
    got.set(k, [cur[0] + n, cur[1] + Number(sum)]);
  }
  // Slices a memcached restart made `incomplete`: the only place events may be missing (see the header).
  // A SIGKILL between listing a fold's new pairs and creating their counters may leave pairs listed
  // without counters (by design: reported, never hidden); when the redelivered fold lands in another
  // slice, that slice says `incomplete` though nothing is lost. So does a SIGKILL between reserving a
  // register chunk's number and writing the chunk ("register chunk(s) gone"). Allowed after a SIGKILL,
  // excusing no loss.
  const kills = counts['worker-kill'] + counts['store-kill'];
  const incomplete = new Set<number>();
  const listedOnly = new Set<number>();
  for (const r of sliceRows) {
    if (r.status !== 'incomplete') continue;
    const slice = Number(r.s) / 1000 / SLICE_SECONDS;
    const notes = String(r.note).split('; ');
    if (counts['memcached-restart'] > 0 && notes.some((n) => /^memcached restarted at /.test(n))) incomplete.add(slice);
    else if (kills > 0 && notes.every((n) => /^\d+ (pair\(s\) listed but their counters are gone|register chunk\(s\) gone)/.test(n))) listedOnly.add(slice);
  }
  const reported = (own: number): boolean => [...incomplete].some((s) => Math.abs(s - own) <= LOSS_WINDOW);
  let duplicates = 0;
  const duplicatesBySlice: Record<string, number> = {};
  let extraValue = 0;
  let lostPairs = 0;
  let lostReported = 0;
  for (const [k, [count, value]] of expected) {
    const [n, v] = got.get(k) ?? [0, 0];
    const own = sliceOfAction(Number(k.split(':')[1]), firstSlice);
    if (n < count || v < value) {
      if (reported(own)) lostReported += Math.max(0, count - n);
      else if (lostPairs++ < 5) violation(`lost: (user, action) ${k} counted ${n} (sum ${v}), sent ${count} (sum ${value}), and no slice near its own was reported incomplete`);
    }
    duplicates += Math.max(0, n - count);
    if (n > count) {
      const at = new Date(sliceStartMs(own as SliceId, SLICE_SECONDS)).toISOString();
      duplicatesBySlice[at] = (duplicatesBySlice[at] ?? 0) + n - count;
    }
    extraValue += Math.max(0, v - value);
  }
  if (lostPairs > 5) violation(`… ${lostPairs} (user, action) pairs lost events in all`);
  for (const k of got.keys()) if (!expected.has(k)) violation(`counted a (user, action) never sent: ${k}`);
  if (counted !== sent + duplicates - lostReported) violation(`counted ${counted} = sent ${sent} + duplicates ${duplicates} − lost where reported ${lostReported}? off by ${counted - sent - duplicates + lostReported}`);
  // Folds mode promises none: a fold counts once or not at all, whatever was killed.
  const duplicateBound = mode === 'folds' ? 0 : kills * DEFAULT_MAX_JOBS_PER_FOLD * BATCH;
  if (duplicates > duplicateBound) violation(`${duplicates} events counted twice, over the bound ${duplicateBound} (${mode === 'folds' ? 'ring mode folds: none may be' : `${kills} SIGKILLs × ${DEFAULT_MAX_JOBS_PER_FOLD} jobs × ${BATCH}`})`);
  if (duplicates === 0 && extraValue !== 0) violation(`value sums ${extraValue} over with no event counted twice`);
  if (extraValue > duplicates * MAX_VALUE) violation(`value sums ${extraValue} over: more than ${duplicates} duplicates × ${MAX_VALUE}`);
  // A SIGKILL inside a store leaves its jobs unacknowledged: gearmand hands them out again. A fold killed
  // after its counters is applied again (each of its events counted twice); jobs killed after their marks are skipped.
  const killedEvents = slots.reduce((n, s) => n + s.killedHolding.events, 0);
  const killedUniques = slots.flatMap((s) => s.killedHolding.uniques);
  const killedJobs = killedUniques.length;
  const found = new Set(slots.flatMap((s) => [...s.appliedFound]));
  if (counts['memcached-restart'] === 0 && duplicates < killedEvents) {
    violation(`${storeKills.counters} worker(s) SIGKILLed after their fold's counters (${killedEvents} events), yet only ${duplicates} events were counted twice: the folds were not applied again (acknowledged before they were stored?)`);
  }
  // A memcached restart soon after the kill may take the marks before the redelivered copy reads them.
  const notBack = killedUniques.filter((k) => !found.has(k.unique) && !mcRestarts.some((r) => r.down >= k.at && r.down < k.at + 10_000)).map((k) => k.unique);
  if (notBack.length > 0) {
    violation(`${notBack.length} of the ${killedJobs} jobs of folds SIGKILLed after their marks never came back to be found applied (acknowledged before they were marked?); first: ${notBack[0]}`);
  }

  let late = 0;
  let reportedBound = 0;
  const statuses: Record<string, number> = {};
  const written = new Set<number>();
  for (const r of sliceRows) {
    const slice = Number(r.s) / 1000 / SLICE_SECONDS;
    written.add(slice);
    statuses[r.status as string] = (statuses[r.status as string] ?? 0) + 1;
    const at = new Date(Number(r.s)).toISOString();
    if (r.status !== 'flushed' && (r.status !== 'maybe-duplicated' || mode === 'folds') && !incomplete.has(slice) && !listedOnly.has(slice)) violation(`slice ${at} is ${r.status}: ${r.note}`);
    reportedBound += Number(r.duplicate_bound);
    const recorded = Number(r.late);
    late += recorded;
    const found = displacedIn.get(slice) ?? 0;
    // An incomplete slice lost counts, its `late` counter among them.
    if (!incomplete.has(slice) && Math.abs(recorded - found) > duplicates) violation(`slice ${at}: late ${recorded} recorded, ${found} events counted there belong to another slice`);
  }
  // A slice begun before memcached restarted and read by a flush begun after it lost its earlier counts: it must say so.
  const statusOf = new Map(sliceRows.map((r) => [Number(r.s) / 1000 / SLICE_SECONDS, r.status as string]));
  for (const { down, up } of mcRestarts) {
    for (const [slice, began] of flushBegan) {
      if (sliceStartMs(slice as SliceId, SLICE_SECONDS) < down && began > up && statusOf.get(slice) === 'flushed') {
        violation(`slice ${new Date(sliceStartMs(slice as SliceId, SLICE_SECONDS)).toISOString()} began before memcached restarted (${new Date(down).toISOString()}) and was flushed after, yet it is reported flushed`);
      }
    }
  }
  const lastWritten = Math.max(...written);
  for (let s = firstSlice; s <= lastSlice; s++) if (!written.has(s)) violation(`slice ${new Date(sliceStartMs(s as SliceId, SLICE_SECONDS)).toISOString()} was never flushed`);
  for (const s of displacedIn.keys()) if (!written.has(s)) violation(`rows in slice ${s} that has no ol_slices row`);
  if (duplicates > reportedBound) violation(`${duplicates} events counted twice, but the maybe-duplicated slices bound only ${reportedBound}: a duplicate went unreported`);

  const report: ChaosReport = {
    seed,
    seconds,
    rate,
    faults: counts,
    storeKills: { ...storeKills, eventsApplied: killedEvents, jobsMarked: killedJobs },
    flushes,
    events: {
      sent,
      counted,
      duplicates,
      duplicateBound,
      duplicatesBySlice,
      displaced,
      late,
      movedPastWatermark: sum('movedPastWatermark'),
      redeliveriesSkipped: sum('duplicatesSkipped'),
      lostReported,
    },
    slices: {
      first: new Date(sliceStartMs(firstSlice, SLICE_SECONDS)).toISOString(),
      last: new Date(sliceStartMs(lastWritten as SliceId, SLICE_SECONDS)).toISOString(),
      written: sliceRows.length,
      statuses,
    },
    violations,
    durationMs: Date.now() - started,
    logFile,
  };
  appendFileSync(logFile, `${JSON.stringify(report)}\n`);
  return report;
}

/** Waits until gearmand holds no offlog.batch job, queued or running, twice in a row (a second apart). */
async function drained(server: { host: string; port: number }, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let quiet = 0;
  while (quiet < 2) {
    if (Date.now() > deadline) throw new Error(`the queue did not drain within ${timeoutMs} ms`);
    const s = await adminStatus(server).then((m) => m.get(FN_BATCH)).catch(() => undefined);
    quiet = s !== undefined && s.queued === 0 && s.running === 0 ? quiet + 1 : 0;
    await sleep(quiet === 1 ? 1000 : 250);
  }
}

/** The report in a few lines, for people. */
export function summary(r: ChaosReport): string {
  const f = r.faults;
  const e = r.events;
  return [
    `chaos seed ${r.seed}: ${r.seconds} s at ${r.rate} ev/s, ${Math.round(r.durationMs / 1000)} s in all — ${r.violations.length === 0 ? 'PASSED' : `FAILED (${r.violations.length} violation(s))`}`,
    `faults survived: ${f['worker-kill']} worker SIGKILLs, ${f['store-kill']} SIGKILLs inside a store (${r.storeKills.counters} after a fold's counters, holding ${r.storeKills.eventsApplied} events; ${r.storeKills.marks} after its marks, holding ${r.storeKills.jobsMarked} jobs), ${f['gearmand-restart']} gearmand restarts, ${f['mysql-cut']} MySQL cuts (${r.flushes.failed} flushes failed, ${r.flushes.ok} ok), ${f['clock-skew']} clock skews, ${f['memcached-restart']} memcached restarts, ${f['memcached-slow']} slow memcached spells`,
    `events: ${e.sent} sent, ${e.counted} counted, ${e.duplicates} duplicates (bound ${e.duplicateBound}${e.duplicates > 0 ? `; by own slice: ${Object.entries(e.duplicatesBySlice).map(([k, v]) => `${k.slice(11, 19)} ${v}`).join(', ')}` : ''}); ${e.displaced} counted outside their own slice (late recorded: ${e.late}; moved past the watermark: ${e.movedPastWatermark}); ${e.redeliveriesSkipped} redelivered jobs skipped; ${e.lostReported} lost in slices reported incomplete`,
    `slices: ${r.slices.written} written from ${r.slices.first} to ${r.slices.last}: ${Object.entries(r.slices.statuses).map(([k, v]) => `${v} ${k}`).join(', ')}`,
    ...r.violations.map((v) => `violation: ${v}`),
    `log: ${r.logFile}`,
  ].join('\n');
}
