/**
 * Builds the long-lived parts from a Config, once per process (a Lambda
 * container reuses them across invocations), each created on first use.
 */
import { OffLogClient } from './client.ts';
import type { Config } from './config.ts';
import { createLogger, type Logger } from './log.ts';
import { Ring } from './ring.ts';
import { Store } from './store.ts';

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
    return (this.ring_ ??= new Ring({ servers: c.memcachedServers, keyPrefix: c.keyPrefix, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices }));
  }

  get store(): Store {
    return (this.store_ ??= new Store({ url: this.config.mysqlUrl, tablePrefix: this.config.tablePrefix }));
  }

  get client(): OffLogClient {
    return (this.client_ ??= new OffLogClient({ servers: this.config.gearmanServers, logger: this.log }));
  }

  async close(): Promise<void> {
    await Promise.all([this.client_?.close({ timeoutMs: 5000 }), this.ring_?.close(), this.store_?.close()]);
  }
}
