/**
 * A mysql2 pool that survives a password rotation. A warm container keeps
 * the MySQL URL it read at cold start; once Secrets Manager (or SSM) holds a
 * new password and the server has it, every new connection is refused
 * (ER_ACCESS_DENIED_ERROR) until the container dies, which may be hours.
 * Here a refusal re-reads the URL from where it came from, and when it
 * changed, later work goes to a new pool built on it and the call that was
 * refused is made once more there. Connections already open stay on the
 * old pool until the store closes: one of them may be holding a lock.
 */
import mysql, { type Pool, type PoolOptions } from 'mysql2/promise';

/** Re-reads are at most this often: a secret that is wrong for good must not turn every query into an AWS call. */
const MIN_REREAD_MS = 10_000;

export interface RotatingPoolOptions {
  /** Everything but the URL, for each pool made. */
  options: Omit<PoolOptions, 'uri'>;
  /** Runs on every new connection of every pool made (session settings). */
  onConnection?: (conn: mysql.PoolConnection) => void;
  /** Where the URL came from, read again on a refusal; omitted: a refusal is final. */
  reread?: () => Promise<string>;
  /** Told after each re-read whether the URL had changed (a log line: a rotation is worth knowing about). */
  onReread?: (changed: boolean) => void;
  /** The clock, for the re-read limit (tests). */
  now?: () => number;
}

export const isAccessDenied = (err: unknown): boolean => (err as { code?: unknown } | null)?.code === 'ER_ACCESS_DENIED_ERROR';

export class RotatingPool {
  private current: Pool;
  private url: string;
  private readonly old: Pool[] = [];
  private rereading: Promise<void> | null = null;
  private lastReread = Number.NEGATIVE_INFINITY;
  /** Times a re-read found a new URL and a new pool was made (status and tests). */
  rotations = 0;
  /** The pool as callers use it: each call goes to the newest pool, and one refused for its password is retried once after a re-read. */
  readonly pool: Pool;

  constructor(url: string, private readonly o: RotatingPoolOptions) {
    this.url = url;
    this.current = this.make(url);
    const retried = new Set<PropertyKey>(['query', 'execute', 'getConnection']);
    this.pool = new Proxy({} as Pool, {
      get: (_target, prop) => {
        if (retried.has(prop)) return (...args: unknown[]) => this.call((p) => (p[prop as 'query'] as (...a: unknown[]) => Promise<unknown>)(...args));
        if (prop === 'end') return () => this.end();
        const value = Reflect.get(this.current, prop) as unknown;
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(this.current) : value;
      },
    });
  }

  private make(url: string): Pool {
    const pool = mysql.createPool({ ...this.o.options, uri: url });
    if (this.o.onConnection) pool.on('connection', this.o.onConnection);
    return pool;
  }

  private async call<T>(fn: (p: Pool) => Promise<T>): Promise<T> {
    const pool = this.current;
    try {
      return await fn(pool);
    } catch (err) {
      if (!isAccessDenied(err) || this.o.reread === undefined) throw err;
      let moved: boolean;
      try {
        moved = await this.rotate(pool);
      } catch (e) {
        throw new Error(`${(err as Error).message}; re-reading the MySQL URL after that failed too: ${(e as Error).message}`, { cause: err });
      }
      if (!moved) throw err;
      return fn(this.current);
    }
  }

  /** Re-reads the URL (one re-read at a time, at most every MIN_REREAD_MS); true when later work has a new pool to go to. */
  private async rotate(refused: Pool): Promise<boolean> {
    if (this.current !== refused) return true; // another call already moved on
    if (this.rereading === null) {
      const now = (this.o.now ?? Date.now)();
      if (now - this.lastReread < MIN_REREAD_MS) return false;
      this.lastReread = now;
      this.rereading = (async () => {
        const url = await this.o.reread!();
        this.o.onReread?.(url !== this.url);
        if (url === this.url) return;
        this.old.push(this.current);
        this.current = this.make(url);
        this.url = url;
        this.rotations++;
      })().finally(() => {
        this.rereading = null;
      });
    }
    await this.rereading;
    return this.current !== refused;
  }

  async end(): Promise<void> {
    await Promise.all([this.current, ...this.old].map((p) => p.end()));
  }
}
