/** Shared test helpers: isolated config per test, queue draining, exact-total queries. */
import { randomBytes } from 'node:crypto';
import { after, before } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { loadConfig, type Config } from '../lib/base/config.ts';
import { createLogger } from '../lib/base/log.ts';
import { Runtime } from '../lib/runtime.ts';
import { purgeQueues } from '../lib/send/queues.ts';
import { sliceStartMs, type SliceId } from '../lib/domain/slice.ts';

/** Where `npm test` put its servers: the only OFFLOG_* settings a test takes from its environment. */
const SERVER_VARS = ['OFFLOG_GEARMAN_SERVERS', 'OFFLOG_MEMCACHED_SERVERS', 'OFFLOG_MYSQL_URL', 'OFFLOG_LOG_LEVEL'] as const;

/**
 * Config for one test: the test servers, DESIGN.md's defaults for everything
 * else (whatever OFFLOG_* the caller's shell exports), key and table prefixes
 * of the test's own, then the test's overrides.
 */
export function testConfig(overrides: Record<string, string> = {}): Config {
  const id = randomBytes(4).toString('hex');
  const servers = Object.fromEntries(SERVER_VARS.map((k) => [k, process.env[k]]));
  return loadConfig({ ...servers, OFFLOG_KEY_PREFIX: `t${id}:`, OFFLOG_TABLE_PREFIX: `t${id}_`, ...overrides });
}

export function testRuntime(overrides: Record<string, string> = {}): Runtime {
  const config = testConfig(overrides);
  return new Runtime(config, createLogger(process.env.OFFLOG_LOG_LEVEL ?? 'warn', 'test'));
}

/** The start (ms) of a slice a few slices from now: after memcached started, well clear of the current one. */
export function futureSlice(sliceSeconds: number, ahead = 3): SliceId {
  return (Math.floor(Date.now() / 1000 / sliceSeconds) + ahead) as SliceId;
}

export const startOf = (s: SliceId, sliceSeconds: number): number => sliceStartMs(s, sliceSeconds);

/** Empties the queues a worker reads, so jobs left by an aborted run cannot leak into a count. */
export const drainQueues = (config: Config): Promise<number> => purgeQueues(config.gearmanServers);

/**
 * A test file's runtimes: `fresh(overrides)` makes one with `make` (on top of
 * `defaults`); the queues are drained before the file's first test (leftovers
 * of an aborted run) and every runtime is closed after its last.
 */
export function runtimesFor(defaults: Record<string, string>, make: (env: Record<string, string>) => Runtime = testRuntime): (overrides?: Record<string, string>) => Runtime {
  const runtimes: Runtime[] = [];
  const fresh = (overrides: Record<string, string> = {}): Runtime => {
    const rt = make({ ...defaults, ...overrides });
    runtimes.push(rt);
    return rt;
  };
  before(async () => {
    await drainQueues(fresh().config);
  });
  after(async () => {
    await Promise.all(runtimes.map((rt) => rt.close()));
  });
  return fresh;
}
export { prng } from '../lib/base/prng.ts';

export interface CountRow { slice: number; userId: string; actionId: number; count: string; valueSum: string }

/** Every row of the test's counts table, keyed `${sliceStartMs}:${user}:${action}` → [count, valueSum]. */
export async function readCounts(rt: Runtime): Promise<Map<string, [string, string]>> {
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(
    `SELECT UNIX_TIMESTAMP(slice_start) * 1000 AS s, user_id, action_id, count, value_sum FROM \`${rt.config.tablePrefix}counts\``,
  );
  return new Map(rows.map((r) => [`${Number(r.s)}:${r.user_id}:${r.action_id}`, [String(r.count), String(r.value_sum)]]));
}

/** Expected totals, built the same way as readCounts' keys. */
export class Expected {
  readonly rows = new Map<string, [bigint, bigint]>();
  add(sliceStart: number, userId: string | number, actionId: number, value = 0, times = 1): void {
    const key = `${sliceStart}:${userId}:${actionId}`;
    const cur = this.rows.get(key) ?? [0n, 0n];
    this.rows.set(key, [cur[0] + BigInt(times), cur[1] + BigInt(value) * BigInt(times)]);
  }
  asStrings(): Map<string, [string, string]> {
    return new Map([...this.rows].map(([k, [c, v]]) => [k, [c.toString(), v.toString()]]));
  }
}

