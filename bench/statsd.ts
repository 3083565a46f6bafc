/**
 * Runs Etsy's `statsd` daemon (npm package `statsd`) on loopback UDP with the
 * bench's counting backend (bench/statsd-backend.cjs), and tells how much of
 * what was sent reached a flush.
 *
 * statsd is looked up in the project's node_modules first (as a devDependency),
 * then in <bench data dir>/npm, where it can be installed without touching
 * package.json: `npm install --prefix .data/bench/npm statsd@0.9.0`.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { REPO } from './stack.ts';

export interface StatsdFlush {
  type: 'statsd-flush';
  timestamp: number;
  flushes: number;
  thisFlush: number;
  keys: number;
  counted: number;
  metricsReceived: number;
  packetsReceived: number;
}

export function findStatsd(dataDir: string): string | null {
  for (const base of [REPO, join(dataDir, 'npm')]) {
    try {
      const path = createRequire(join(base, 'package.json')).resolve('statsd/stats.js');
      if (existsSync(path)) return path;
    } catch {
      // not there
    }
  }
  return null;
}

export class StatsdDaemon {
  private child: ChildProcess | null = null;
  private last: StatsdFlush | null = null;
  private waiters: (() => void)[] = [];

  constructor(
    private readonly statsJs: string,
    private readonly dataDir: string,
    readonly port: number,
    readonly flushIntervalMs: number,
    readonly prefix: string,
  ) {}

  async start(): Promise<void> {
    const dir = join(this.dataDir, 'statsd');
    mkdirSync(dir, { recursive: true });
    const configFile = join(dir, 'config.js');
    // statsd evaluates its config file as a JavaScript object literal.
    writeFileSync(
      configFile,
      JSON.stringify(
        {
          address: '127.0.0.1',
          port: this.port,
          mgmt_address: '127.0.0.1',
          mgmt_port: this.port + 1,
          flushInterval: this.flushIntervalMs,
          backends: [join(REPO, 'bench/statsd-backend.cjs')],
          deleteCounters: true,
          offlogBench: { prefix: this.prefix },
        },
        null,
        2,
      ),
    );
    const child = fork(this.statsJs, [configFile], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
    this.child = child;
    child.on('message', (m: unknown) => {
      if ((m as { type?: string }).type === 'statsd-flush') {
        this.last = m as StatsdFlush;
        for (const w of this.waiters.splice(0)) w();
      }
    });
    // Ready once it has flushed once: the socket is bound and the backend loaded.
    await this.nextFlush(this.flushIntervalMs * 3);
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Starts a new measurement (the backend forgets its totals). */
  reset(): void {
    this.child?.send({ type: 'reset' });
  }

  /**
   * Waits until a full flush interval has passed with nothing new counted,
   * after at least two flushes: then everything that will ever arrive has.
   */
  async settle(): Promise<StatsdFlush> {
    await this.nextFlush(this.flushIntervalMs * 3);
    let before = this.last!.counted;
    for (let i = 0; i < 20; i++) {
      await this.nextFlush(this.flushIntervalMs * 3);
      if (this.last!.counted === before) break;
      before = this.last!.counted;
    }
    return this.last!;
  }

  private nextFlush(timeoutMs: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`statsd did not flush within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  async stop(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGTERM');
    await exited;
    this.child = null;
  }
}
