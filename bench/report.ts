/**
 * Turning runs into numbers people read: medians with min and max over the
 * runs, the targets of issue 5 judged pass/fail with the ratio to the target,
 * and plain-text tables.
 */
import type { ClientStats } from '../lib/send/client.ts';
import type { FlushResult } from '../lib/flush/flush.ts';
import type { WorkerStats } from '../lib/count/worker.ts';
import type { CeilingMethod } from './roles/ceiling.ts';
import type { TableCheck } from './stack.ts';

// ── what the children report ──

export interface ClientResult {
  /** performance.now() in the child when `go` arrived (for profile-summary --from-ms). */
  goAtMs?: number | null;
  events: number;
  allAcknowledged: boolean;
  logLoopMs: number;
  ackMs: number;
  blockedMs: number;
  pauses: number;
  eventsPerSecond: number;
  cpu: { userMs: number; systemMs: number };
  cpuUsPerEvent: number;
  stats: ClientStats;
  rssAfterGenerateMb: number;
  workloadArraysMb: number;
  peakRssMb: number;
}

export interface RssSample { t: number; rssMb: number; heapMb: number; progress: number }

export interface WorkerResult {
  /** performance.now() in the child when `go` arrived (for profile-summary --from-ms). */
  goAtMs?: number | null;
  stats: WorkerStats;
  ringOps: number;
  firstFoldAtMs: number;
  doneAtMs: number;
  wallMs: number;
  busyMs: number | null;
  /** ms spent in: takeMs, sleepMs, prepareMs (take, decode, fold), storeMs (memcached, marks, acks), busyMs, memcachedApplyMs, … */
  breakdown: Record<string, number>;
  eventsPerSecondWall: number;
  eventsPerSecondBusy: number | null;
  cpu: { userMs: number; systemMs: number };
  cpuUsPerEvent: number;
  peakRssMb: number;
  rssSamples: RssSample[];
}

export interface FlushRoleResult {
  /** performance.now() in the child when `go` arrived (for profile-summary --from-ms). */
  goAtMs?: number | null;
  result: FlushResult;
  ms: number;
  rowsPerSecond: number;
  memcachedOps: number;
  cpu: { userMs: number; systemMs: number };
  peakRssMb: number;
}

export interface NaiveResult {
  events: number;
  statements: number;
  ms: number;
  eventsPerSecond: number;
  statementsPerEvent: number;
  cpu: { userMs: number; systemMs: number };
  peakRssMb: number;
  check?: TableCheck;
}

export interface E2ERun {
  run: number;
  /** Worker processes in this run. */
  workers: number;
  /** Start (epoch ms) of the first of the run's two slices. */
  baseMs: number;
  keyPrefix: string;
  tablePrefix: string;
  events: number;
  pairs: number;
  e2eMs: number;
  eventsPerSecond: number;
  /** Where the end-to-end time went, ms from "go". */
  timeline: { clientAckedMs: number; workerFirstFoldMs: number; countedMs: number; flushMs: number; e2eMs: number };
  /** CPU the daemons used while the client and worker ran (ingest) and during the flush. */
  serverCpuMs: { ingest: Record<string, number | null>; flush: Record<string, number | null> };
  client: ClientResult;
  worker: Omit<WorkerResult, 'rssSamples'> & { rssSamples: RssSample[] };
  flush: FlushRoleResult;
  check: TableCheck;
  /** Everything wrong with the run's correctness (empty = exact). */
  problems: string[];
  statements: { total: number; bound: number; perNonEmptySlice: number; nonEmptySlices: number; pairsOver500: number };
  memcachedOpsPerEvent: number;
  workerRss: { growthMb: number; flat: boolean; earlyMaxMb: number; lateMaxMb: number };
  serversRssMb: Record<string, number | null>;
  naive: NaiveResult | null;
  /** The database's ceiling on this run's rows (first worker count's runs only). */
  ceiling: CeilingMethod[] | null;
}

// ── statistics ──

export interface Spread { median: number; min: number; max: number; n: number }

export function spread(values: (number | null | undefined)[]): Spread | null {
  const v = values.filter((x): x is number => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  const median = v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
  return { median, min: v[0]!, max: v[v.length - 1]!, n: v.length };
}

/**
 * "Worker RSS flat": memory must not grow with the number of events processed.
 * Compares the highest RSS while the second half of the events went through
 * with the highest while the 10–50 % part did (the first 10 % are warm-up:
 * JIT, buffers, the first big folds). Flat = grew by at most 32 MB or 15 %.
 */
export function rssGrowth(samples: RssSample[], events: number): { growthMb: number; flat: boolean; earlyMaxMb: number; lateMaxMb: number } {
  const early = samples.filter((s) => s.progress >= events * 0.1 && s.progress < events * 0.5).map((s) => s.rssMb);
  const late = samples.filter((s) => s.progress >= events * 0.5).map((s) => s.rssMb);
  const earlyMax = early.length > 0 ? Math.max(...early) : samples.length > 0 ? samples[0]!.rssMb : 0;
  const lateMax = late.length > 0 ? Math.max(...late) : earlyMax;
  const growth = Math.round((lateMax - earlyMax) * 10) / 10;
  return { growthMb: growth, flat: growth <= Math.max(32, earlyMax * 0.15), earlyMaxMb: earlyMax, lateMaxMb: lateMax };
}

/** At most `max` samples, evenly picked, for results.json. */
export function thin<T>(xs: T[], max: number): T[] {
  if (xs.length <= max) return xs;
  const step = xs.length / max;
  return Array.from({ length: max }, (_, i) => xs[Math.floor(i * step)]!);
}

// ── targets ──

export interface Target {
  name: string;
  /** What was measured, as shown. */
  actual: string;
  goal: string;
  /** actual / goal, oriented so that ≥ 1 passes (null when not a ratio). */
  ratio: number | null;
  pass: boolean | null;
  note?: string;
}

export function atLeast(name: string, actual: number | null | undefined, goal: number, unit: string, note?: string): Target {
  if (actual === null || actual === undefined) return { name, actual: 'n/a', goal: `≥ ${fmt(goal)} ${unit}`, ratio: null, pass: null, note };
  return { name, actual: `${fmt(actual)} ${unit}`, goal: `≥ ${fmt(goal)} ${unit}`, ratio: actual / goal, pass: actual >= goal, note };
}

export function below(name: string, actual: number | null | undefined, goal: number, unit: string, note?: string): Target {
  if (actual === null || actual === undefined) return { name, actual: 'n/a', goal: `< ${fmt(goal)} ${unit}`, ratio: null, pass: null, note };
  return { name, actual: `${fmt(actual)} ${unit}`, goal: `< ${fmt(goal)} ${unit}`, ratio: actual === 0 ? Infinity : goal / actual, pass: actual < goal, note };
}

// ── text ──

export function fmt(x: number | null | undefined, digits?: number): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return x === Infinity ? '∞' : '–';
  const d = digits ?? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2);
  return x.toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
}

/** `align`: one letter a column, l or r (default: first column left, the rest right). */
export function table(headers: string[], rows: string[][], align = 'l'): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const left = (i: number): boolean => (align[i] ?? 'r') === 'l';
  const line = (cells: string[]): string =>
    cells.map((c, i) => (left(i) ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(headers), widths.map((w) => '─'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function spreadCells(s: Spread | null, digits?: number): string[] {
  if (!s) return ['–', '–', '–'];
  return [fmt(s.median, digits), fmt(s.min, digits), fmt(s.max, digits)];
}
