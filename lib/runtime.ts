/**
 * The wiring: builds the long-lived parts from a Config once per process (a
 * Lambda container reuses them across invocations), each on first use, and
 * is the one place that knows what the worker and the flush are made of.
 * Handlers, the CLI and the tests all get them from here.
 */
import type { Config } from './base/config.ts';
import { createLogger, type Logger } from './base/log.ts';
import { DEFAULT_BATCH_EVENTS, OffLogClient } from './send/client.ts';
import { flush, type FlushDeps, type FlushResult } from './flush/flush.ts';
import { Ring } from './count/ring.ts';
import { Claims } from './count/claims.ts';
import { Store } from './flush/store.ts';
import { DEFAULT_MAX_FOLD_EVENTS, Worker, type WorkerDeps, type WorkerOptions } from './count/worker.ts';
import { createBus, type Bus } from './publish/bus.ts';
import { publishSlices, type OutboxResult } from './flush/outbox.ts';
import { WatchList } from './count/watch.ts';
import { WatchedDrain } from './publish/watched.ts';
import { prune, type PruneResult } from './publish/prune.ts';
import { repairRollups, type RepairResult } from './publish/repair.ts';
import { readBacklog } from './flush/backlog.ts';
import { emfLine, stderrMetrics, type MetricSink } from './base/metrics.ts';
import type { ReportDeps } from './report/api.ts';
import { sleep } from './base/backoff.ts';
import { faultHook } from './base/fault.ts';
import { FoldBlobs } from './count/fold-blobs.ts';
import type { FoldReaderDeps } from './flush/fold-reader.ts';
import { FoldWriter, type FoldWriterDeps } from './count/fold-writer.ts';

/**
 * Jobs per fold in ring mode `folds`. Counters mode keeps folds at 16 jobs
 * because a fold is what a crash can count twice; folds mode counts none
 * twice, and each fold leaves one blob per slice in the ring, so larger folds
 * are what bound ring memory on a dense workload (few pairs, many events):
 * blobs repeat the same pairs once per fold (docs/ring-modes.md).
 */
export const FOLDS_MODE_JOBS_PER_FOLD = 64;
/**
 * Events a folds-mode fold holds at most: 64 full jobs. The counters cap
 * (DEFAULT_MAX_FOLD_EVENTS) bounds what a crash counts twice, which in folds
 * mode is nothing; smaller folds would only multiply the blobs a dense slice
 * keeps (docs/ring-modes.md).
 */
export const FOLDS_MODE_MAX_FOLD_EVENTS = FOLDS_MODE_JOBS_PER_FOLD * DEFAULT_BATCH_EVENTS;
/** How long the flush gives a fold still open on a slice to commit before it aborts it (folds mode). */
const FOLD_DECIDE_WAIT_MS = 10_000;

export class Runtime {
  readonly log: Logger;
  private ring_: Ring | undefined;
  private store_: Store | undefined;
  private client_: OffLogClient | undefined;
  private bus_: Bus | undefined;
  private watchList_: WatchList | undefined;

  /**
   * `mysqlUrl`: where config.mysqlUrl was read from (secrets.ts's
   * mysqlUrlReader), read again when MySQL refuses the password.
   * `metrics`: where the flush's metric lines go (CloudWatch EMF; stderr).
   */
  constructor(readonly config: Config, log?: Logger, private readonly sources: { mysqlUrl?: () => Promise<string>; metrics?: MetricSink } = {}) {
    this.log = log ?? createLogger(config.logLevel);
  }

  get ring(): Ring {
    const c = this.config;
    return (this.ring_ ??= new Ring({
      servers: c.memcachedServers, previousServers: c.previousMemcachedServers, keyPrefix: c.keyPrefix, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices, tls: c.memcachedTls,
    }));
  }

  get store(): Store {
    return (this.store_ ??= new Store({ url: this.config.mysqlUrl, tablePrefix: this.config.tablePrefix, rereadUrl: this.sources.mysqlUrl, log: this.log }));
  }

  get client(): OffLogClient {
    return (this.client_ ??= new OffLogClient({ servers: this.config.gearmanServers, logger: this.log }));
  }

  /** OFFLOG_EVENT_BUS on EventBridge, or a bus that publishes nothing when it is unset. */
  get bus(): Bus {
    return (this.bus_ ??= createBus(this.config, this.log));
  }

  /** The watch lists as the worker sees them: read from MySQL in the background, at most OFFLOG_WATCHLIST_TTL_SECONDS old. */
  get watchList(): WatchList {
    return (this.watchList_ ??= WatchList.fromStore(this.store, this.config.watchListTtlSeconds, this.log));
  }

  /**
   * A worker on this runtime's ring and Gearman servers; `deps` overrides (a
   * test's clock, say). In ring mode `folds` it stores through a FoldWriter
   * with a lease of its own (docs/ring-modes.md).
   */
  worker(options: WorkerOptions = {}, deps: Partial<WorkerDeps> = {}): Worker {
    const c = this.config;
    const ring = deps.ring ?? this.ring;
    // Each worker its own lease: two workers of one process are two workers to the fold protocol.
    const claims = deps.claims ?? new Claims(ring, { leaseSeconds: c.leaseSeconds });
    const base: WorkerDeps = { gearmanServers: c.gearmanServers, sliceSeconds: c.sliceSeconds, ring, log: this.log, watchList: this.watchList, ...deps, claims };
    if (c.jobsPerFold !== undefined) options = { maxJobsPerFold: c.jobsPerFold, ...options };
    if (c.ringMode !== 'folds') return new Worker(base, { maxFoldEvents: c.maxFoldEvents ?? DEFAULT_MAX_FOLD_EVENTS, ...options });
    const reached = faultHook(c.fault);
    // The writer shares the worker's Claims: the same lease, so its claims and the worker's prepare()'s are one worker's.
    const folds = deps.folds ?? this.foldWriter(ring, base.now ?? Date.now, { claims, ...(reached ? { reached } : {}) });
    return new Worker({ ...base, folds, ...(reached ? { reached } : {}) }, { maxJobsPerFold: FOLDS_MODE_JOBS_PER_FOLD, maxFoldEvents: c.maxFoldEvents ?? FOLDS_MODE_MAX_FOLD_EVENTS, ...options });
  }

  /** A fold-mode writer on `ring` (with a lease of its own unless `overrides` gives the worker's Claims); `overrides` for tests too. */
  foldWriter(ring: Ring = this.ring, now: () => number = Date.now, overrides: Partial<FoldWriterDeps> = {}): FoldWriter {
    return new FoldWriter({
      claims: new Claims(ring, { leaseSeconds: this.config.leaseSeconds }),
      blobs: this.foldBlobsOn(ring),
      watermark: () => ring.watermark(),
      sliceSeconds: this.config.sliceSeconds,
      now,
      sleep,
      log: this.log,
      ...overrides,
    });
  }

  /** Blob storage of ring mode `folds` on `ring` (this runtime's unless a test gives another). */
  foldBlobsOn(ring: Ring = this.ring): FoldBlobs {
    return new FoldBlobs({ keys: ring.keys, placement: ring.placement, conns: ring.connections, ttl: ring.ttl, countOps: (n) => (ring.ops += n) });
  }

  /** What the flush reads slices with in ring mode `folds`; undefined in `counters`. */
  get foldReaderDeps(): FoldReaderDeps | undefined {
    if (this.config.ringMode !== 'folds') return undefined;
    return { claims: new Claims(this.ring, { leaseSeconds: this.config.leaseSeconds }), blobs: this.foldBlobsOn(), now: Date.now, sleep, decideWaitMs: FOLD_DECIDE_WAIT_MS };
  }

  /** The drain of watched raw records: MySQL, then the bus. */
  watchedDrain(): WatchedDrain {
    const c = this.config;
    return new WatchedDrain({ gearmanServers: c.gearmanServers, store: this.store, bus: this.bus, log: this.log, retentionDays: c.watchedRetentionDays });
  }

  get flushDeps(): FlushDeps {
    const c = this.config;
    const folds = this.foldReaderDeps;
    return { ring: this.ring, store: this.store, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices, log: this.log, ...(folds ? { folds } : {}) };
  }

  /**
   * Flushes every finished slice as of `now`, then publishes SliceFlushed for
   * every slice not yet published (the outbox) — after the counts are
   * committed, even when the flush failed part way, and never failing it.
   */
  async flush(now: Date, options: { lockWaitSeconds?: number } = {}): Promise<FlushResult & { published: OutboxResult; rollups: RepairResult }> {
    let result: FlushResult;
    try {
      result = await flush(this.flushDeps, now, options);
    } catch (err) {
      await this.afterFlush();
      throw err;
    }
    return { ...result, ...(await this.afterFlush()) };
  }

  /**
   * The flush's follow-up, whether or not it failed part way: the outbox,
   * then the rollup repair (the subscriber's misses, or with no bus all the
   * rollups; see repair.ts), then the metric line the template's alarm
   * watches. None of it throws.
   */
  private async afterFlush(): Promise<{ published: OutboxResult; rollups: RepairResult }> {
    const { sliceSeconds } = this.config;
    const published = await publishSlices(this.store, this.bus, sliceSeconds, this.log);
    // With a bus, the subscriber gets half a slice to roll up what it was sent; the next flush does what it missed.
    const rollups = await repairRollups(this.store, { sliceSeconds, graceSeconds: this.bus.enabled ? Math.ceil(sliceSeconds / 2) : 0 }, this.log);
    if (this.bus.enabled) {
      const backlog = await readBacklog(this.store).catch(() => null);
      const failures = published.failed + (published.error !== undefined && published.failed === 0 ? 1 : 0);
      const gauges: Record<string, number> = backlog === null ? {} : { SlicesUnpublished: backlog.unpublished, SlicesNotRolledUp: backlog.notRolledUp };
      (this.sources.metrics ?? stderrMetrics)(emfLine({ PublishFailures: failures, ...gauges }, Date.now()));
    }
    return { published, rollups };
  }

  /** What the report function and `offlog report` read with. */
  get reportDeps(): ReportDeps {
    const c = this.config;
    return { store: this.store, ring: this.ring, gearmanServers: c.gearmanServers, sliceSeconds: c.sliceSeconds, busEnabled: c.eventBus !== undefined, token: c.reportToken, log: this.log };
  }

  /** Deletes rows past their retention (OFFLOG_RETENTION_DAYS and the rollups' own), as of `now`. */
  prune(now: Date, options: { batchRows?: number; maxSeconds?: number } = {}): Promise<PruneResult> {
    const c = this.config;
    return prune(this.store, now, { rawDays: c.retentionDays, hourlyDays: c.hourlyRetentionDays, dailyDays: c.dailyRetentionDays, ...options }, this.log);
  }

  async close(): Promise<void> {
    this.bus_?.close();
    this.watchList_?.close();
    await Promise.all([this.client_?.close({ timeoutMs: 5000 }), this.ring_?.close(), this.store_?.close()]);
  }
}
