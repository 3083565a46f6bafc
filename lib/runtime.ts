/**
 * The wiring: builds the long-lived parts from a Config once per process (a
 * Lambda container reuses them across invocations), each on first use, and
 * is the one place that knows what the worker and the flush are made of.
 * Handlers, the CLI and the tests all get them from here.
 */
import type { Config } from './base/config.ts';
import { createLogger, type Logger } from './base/log.ts';
import { OffLogClient } from './pipeline/client.ts';
import { flush, type FlushDeps, type FlushResult } from './pipeline/flush.ts';
import { Ring } from './pipeline/ring.ts';
import { Store } from './pipeline/store.ts';
import { Worker, type WorkerDeps, type WorkerOptions } from './pipeline/worker.ts';
import { createBus, type Bus } from './pipeline/bus.ts';
import { publishSlices, type OutboxResult } from './pipeline/outbox.ts';
import { WatchList } from './pipeline/watch.ts';
import { WatchedDrain } from './pipeline/watched.ts';
import { prune, type PruneResult } from './pipeline/prune.ts';
import { repairRollups, type RepairResult } from './pipeline/repair.ts';
import { readBacklog } from './pipeline/backlog.ts';
import { emfLine, stderrMetrics, type MetricSink } from './base/metrics.ts';
import type { ReportDeps } from './report/api.ts';

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

  /** A worker on this runtime's ring and Gearman servers; `deps` overrides (a test's clock, say). */
  worker(options: WorkerOptions = {}, deps: Partial<WorkerDeps> = {}): Worker {
    const c = this.config;
    return new Worker({ gearmanServers: c.gearmanServers, sliceSeconds: c.sliceSeconds, ring: this.ring, log: this.log, watchList: this.watchList, ...deps }, options);
  }

  /** The drain of watched raw records: MySQL, then the bus. */
  watchedDrain(): WatchedDrain {
    const c = this.config;
    return new WatchedDrain({ gearmanServers: c.gearmanServers, store: this.store, bus: this.bus, log: this.log, retentionDays: c.watchedRetentionDays });
  }

  get flushDeps(): FlushDeps {
    const c = this.config;
    return { ring: this.ring, store: this.store, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices, log: this.log };
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
