/**
 * What every benchmark child shares: its parameters (JSON in BENCH_PARAMS, set
 * by the orchestrator at fork time), the tiny IPC protocol
 *
 *   child → parent   { type: 'ready' }            set up, connected, warmed: nothing left that is not the work
 *   parent → child   { type: 'go', ... }          start the clock
 *   child → parent   { type: 'progress', ... }    for the progress bar (a few times a second)
 *   child → parent   { type: 'done', result }     then the child exits
 *   child → parent   { type: 'error', message }   then the child exits non-zero
 *
 * and how a process measures its own memory and CPU. Each role runs in its own
 * process so that its peak RSS and CPU time are its own, and so that the
 * client and the worker can run on both cores at once as they would in
 * production.
 */
import { loadConfig, type Config } from '../../lib/base/config.ts';
import { createLogger, type Logger } from '../../lib/base/log.ts';

export interface GoMessage {
  type: 'go';
  [key: string]: unknown;
}

export function params<T>(): T {
  const raw = process.env.BENCH_PARAMS;
  if (!raw) throw new Error('BENCH_PARAMS is not set: bench roles are started by bench/run.ts');
  return JSON.parse(raw) as T;
}

/** The bench stack's OFFLOG_* environment (ports, key and table prefixes of this run). */
export function config(): Config {
  return loadConfig(process.env);
}

export function logger(name: string): Logger {
  return createLogger(process.env.OFFLOG_LOG_LEVEL ?? 'warn', name);
}

export function send(message: Record<string, unknown>): void {
  process.send?.(message);
}

/**
 * When `go` arrived, ms since this process started (performance.now()). With
 * --cpu-prof, that is about where the profile's interesting part begins:
 * bench/profile-summary.ts --from-ms skips the setup before it.
 */
let goAtMs: number | null = null;

/** Resolves on the parent's `go`. */
export function waitForGo<T extends GoMessage = GoMessage>(): Promise<T> {
  return new Promise((resolve) => {
    const onMessage = (m: unknown): void => {
      if (typeof m === 'object' && m !== null && (m as { type?: unknown }).type === 'go') {
        process.off('message', onMessage);
        goAtMs = performance.now();
        resolve(m as T);
      }
    };
    process.on('message', onMessage);
  });
}

/**
 * Runs a role: reports its result (or its error) to the parent, then leaves.
 * Disconnecting IPC lets the process end on its own once its sockets close;
 * a short grace timer makes sure a lingering handle cannot keep it alive.
 */
export function runRole(main: () => Promise<Record<string, unknown>>): void {
  main().then(
    (result) => finish({ type: 'done', result: { ...result, goAtMs: goAtMs === null ? null : Math.round(goAtMs) } }, 0),
    (err: unknown) => finish({ type: 'error', message: err instanceof Error ? err.stack ?? err.message : String(err) }, 1),
  );
}

function finish(message: Record<string, unknown>, code: number): void {
  if (process.send) process.send(message, () => exit(code));
  else {
    console.log(JSON.stringify(message));
    exit(code);
  }
}

function exit(code: number): void {
  process.disconnect?.();
  process.exitCode = code;
  setTimeout(() => process.exit(code), 2000).unref();
}

/** Peak resident set size of this process so far, MB (getrusage ru_maxrss: exact, no sampling gaps). */
export function peakRssMb(): number {
  return process.resourceUsage().maxRSS / 1024;
}

export function rssMb(): number {
  return process.memoryUsage.rss() / (1024 * 1024);
}

/** Samples RSS (and heap) every `everyMs`: for "does the worker's memory stay flat as events go by". */
export class RssSampler {
  readonly samples: { t: number; rssMb: number; heapMb: number; progress: number }[] = [];
  private readonly timer: NodeJS.Timeout;
  private readonly t0 = performance.now();

  constructor(everyMs: number, private readonly progress: () => number) {
    this.timer = setInterval(() => this.sample(), everyMs);
    this.timer.unref();
  }

  sample(): void {
    const m = process.memoryUsage();
    this.samples.push({ t: Math.round(performance.now() - this.t0), rssMb: round1(m.rss / 1048576), heapMb: round1(m.heapUsed / 1048576), progress: this.progress() });
  }

  stop(): void {
    clearInterval(this.timer);
    this.sample();
  }
}

/** CPU time (user + system) spent since `from`, ms. */
export function cpuMs(from: NodeJS.CpuUsage): { userMs: number; systemMs: number } {
  const d = process.cpuUsage(from);
  return { userMs: Math.round(d.user / 1000), systemMs: Math.round(d.system / 1000) };
}

export const round1 = (x: number): number => Math.round(x * 10) / 10;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const yieldToLoop = (): Promise<void> => new Promise((r) => setImmediate(r));
