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
import { prune, type PruneResult } from './pipeline/prune.ts';
import type { ReportDeps } from './report/api.ts';

export class Runtime {
  readonly log: Logger;
  private ring_: Ring | undefined;
  private store_: Store | undefined;
  private client_: OffLogClient | undefined;

  constructor(readonly config: Config, log?: Logger) {
    this.log = log ?? createLogger(config.logLevel);
  }

  get ring(): Ring {
    const c = this.config;
    return (this.ring_ ??= new Ring({
      servers: c.memcachedServers, previousServers: c.previousMemcachedServers, keyPrefix: c.keyPrefix, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices,
    }));
  }

  get store(): Store {
    return (this.store_ ??= new Store({ url: this.config.mysqlUrl, tablePrefix: this.config.tablePrefix }));
  }

  get client(): OffLogClient {
    return (this.client_ ??= new OffLogClient({ servers: this.config.gearmanServers, logger: this.log }));
  }

  /** A worker on this runtime's ring and Gearman servers; `deps` overrides (a test's clock, say). */
  worker(options: WorkerOptions = {}, deps: Partial<WorkerDeps> = {}): Worker {
    const c = this.config;
    return new Worker({ gearmanServers: c.gearmanServers, sliceSeconds: c.sliceSeconds, ring: this.ring, log: this.log, ...deps }, options);
  }

  get flushDeps(): FlushDeps {
    const c = this.config;
    return { ring: this.ring, store: this.store, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices, log: this.log };
  }

  /** Flushes every finished slice as of `now`. */
  flush(now: Date, options: { lockWaitSeconds?: number } = {}): Promise<FlushResult> {
    return flush(this.flushDeps, now, options);
  }

  /** What the report function and `offlog report` read with. */
  get reportDeps(): ReportDeps {
    const c = this.config;
    return { store: this.store, ring: this.ring, gearmanServers: c.gearmanServers, sliceSeconds: c.sliceSeconds, token: c.reportToken, log: this.log };
  }

  /** Deletes rows past their retention (OFFLOG_RETENTION_DAYS and the rollups' own), as of `now`. */
  prune(now: Date, options: { batchRows?: number; maxSeconds?: number } = {}): Promise<PruneResult> {
    const c = this.config;
    return prune(this.store, now, { rawDays: c.retentionDays, hourlyDays: c.hourlyRetentionDays, dailyDays: c.dailyRetentionDays, ...options }, this.log);
  }

  async close(): Promise<void> {
    await Promise.all([this.client_?.close({ timeoutMs: 5000 }), this.ring_?.close(), this.store_?.close()]);
  }
}
