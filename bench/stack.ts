/**
 * The benchmark's own servers and what it does to them outside the clock:
 * start/stop the bench stack (local/services.sh with its own data dir and
 * ports), describe the machine, empty the queue and the cache between runs,
 * check a counts table row by row against the expected totals, and drop a
 * run's tables.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import mysql from 'mysql2';
import type { Config } from '../lib/base/config.ts';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import { MemcacheConnection } from '../lib/wire/memcache.ts';
import { FN_BATCH, FN_DEAD_LETTER, FN_LOG_SIMPLE } from '../lib/domain/contract.ts';
import { pairKey, sliceKey, type Expected, type SliceExpected } from './workloads.ts';
import { purgeQueues } from '../lib/send/queues.ts';

export const REPO = resolve(import.meta.dirname, '..');

/** The bench stack: its own data dir and ports, so it never touches the dev or test servers. */
export function stackEnv(): Record<string, string> {
  const e = process.env;
  const dataDir = resolve(REPO, e.OFFLOG_BENCH_DATA_DIR ?? '.data/bench');
  const gearman = e.OFFLOG_BENCH_GEARMAN_PORT ?? '4750';
  const memcached = e.OFFLOG_BENCH_MEMCACHED_PORT ?? '11231';
  const mysqlPort = e.OFFLOG_BENCH_MYSQL_PORT ?? '3326';
  return {
    OFFLOG_DATA_DIR: dataDir,
    OFFLOG_GEARMAN_PORT: gearman,
    OFFLOG_MEMCACHED_PORT: memcached,
    OFFLOG_MYSQL_PORT: mysqlPort,
    // 5,000,000 zipf events make ~1,000,000 pairs = ~2,000,000 items; 2 GB leaves
    // room so that nothing is evicted (an eviction would show as a wrong total).
    OFFLOG_MEMCACHED_MB: e.OFFLOG_BENCH_MEMCACHED_MB ?? '2048',
    OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${gearman}`,
    OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${memcached}`,
    OFFLOG_MYSQL_URL: `mysql://offlog:offlog@127.0.0.1:${mysqlPort}/offlog`,
    OFFLOG_LOG_LEVEL: e.OFFLOG_LOG_LEVEL ?? 'warn',
  };
}

function services(command: 'up' | 'down' | 'status', env: Record<string, string>, quiet = false): number {
  const r = spawnSync('bash', [join(REPO, 'local/services.sh'), command], {
    env: { ...process.env, ...env },
    stdio: quiet ? 'ignore' : ['ignore', 'inherit', 'inherit'],
  });
  return r.status ?? 1;
}

/** Starts what is not running; returns true when this call started the stack (and so should stop it). */
export function servicesUp(env: Record<string, string>): boolean {
  if (services('status', env, true) === 0) return false;
  if (services('up', env) !== 0) throw new Error('local/services.sh up failed (see above)');
  return true;
}

export function servicesDown(env: Record<string, string>): void {
  services('down', env);
}

const firstLine = (cmd: string, args: string[]): string => {
  try {
    const text = execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PATH: `${process.env.PATH}:/usr/sbin:/sbin` } });
    return text.split('\n').map((l) => l.trim()).find(Boolean) ?? 'unknown';
  } catch {
    return 'unknown';
  }
};

export interface Machine {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  loadAverage: number[];
  os: string;
  node: string;
  gearmand: string;
  memcached: string;
  mariadb: string;
}

export async function machine(cfg: Config): Promise<Machine> {
  const cpus = os.cpus();
  let mariadb = 'unknown';
  try {
    const c = mysql.createConnection({ uri: cfg.mysqlUrl }).promise();
    const [rows] = await c.query('SELECT VERSION() AS v');
    mariadb = String((rows as { v: string }[])[0]?.v);
    await c.end();
  } catch {
    // reported as unknown
  }
  return {
    cpuModel: cpus[0]?.model ?? 'unknown',
    cores: os.availableParallelism(),
    memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    loadAverage: os.loadavg().map((x) => Math.round(x * 100) / 100),
    os: `${os.type()} ${os.release()}`,
    node: process.version,
    gearmand: firstLine('gearmand', ['--version']),
    memcached: firstLine('memcached', ['-V']),
    mariadb,
  };
}

/** Completes every queued job without doing it: leftovers of an aborted run, or the client-cost events. */
export const drainQueue = (cfg: Config): Promise<number> => purgeQueues(cfg.gearmanServers);

/**
 * Empties the bench memcached between runs. Each run has its own key prefix
 * anyway; this only keeps earlier runs' items from crowding memory (keys live
 * an hour), which could otherwise evict a counter mid-run.
 */
export async function flushMemcached(cfg: Config): Promise<void> {
  for (const s of cfg.memcachedServers) {
    const c = new MemcacheConnection(s);
    await c.flushAll();
    await c.close();
  }
}

export async function memcachedStats(cfg: Config): Promise<{ limitMb: number; evictions: number }> {
  const c = new MemcacheConnection(cfg.memcachedServers[0]!);
  const s = await c.stats();
  await c.close();
  return { limitMb: Number(s.limit_maxbytes) / 2 ** 20, evictions: Number(s.evictions) };
}

/**
 * The offlog user may not DROP (local/services.sh grants it no more than the
 * app needs), so a run's tables are dropped as root over the stack's own
 * socket, like services.sh provisions it.
 */
export function dropTables(env: Record<string, string>, tables: string[]): boolean {
  const client = ['mariadb', 'mysql'].find((c) => spawnSync('sh', ['-c', `command -v ${c}`]).status === 0);
  if (!client || tables.length === 0) return false;
  const sql = `DROP TABLE IF EXISTS ${tables.map((t) => `\`${t}\``).join(', ')}`;
  const r = spawnSync(client, ['--no-defaults', `--socket=${join(env.OFFLOG_DATA_DIR!, 'mysql/mysqld.sock')}`, '--user=root', 'offlog', '-e', sql], { stdio: 'ignore' });
  return r.status === 0;
}

export interface TableCheck {
  ok: boolean;
  rows: number;
  expectedRows: number;
  mismatches: number;
  /** The first few differences, for the report. */
  examples: string[];
}

/**
 * Reads every row of a counts table (streamed: a million rows never sit in
 * memory at once) and compares each with the expected (count, value_sum).
 * Exact: a row too many, a row missing or any total off by one fails.
 */
export async function checkCounts(cfg: Config, table: string, expected: Expected, baseMs: number, sliceMs: number): Promise<TableCheck> {
  const conn = mysql.createConnection({ uri: cfg.mysqlUrl, supportBigNumbers: true, bigNumberStrings: true });
  const seen = new Uint8Array(expected.pairs);
  const examples: string[] = [];
  let rows = 0;
  let mismatches = 0;
  const bad = (what: string): void => {
    mismatches++;
    if (examples.length < 5) examples.push(what);
  };
  try {
    const stream = conn.query(`SELECT UNIX_TIMESTAMP(slice_start) AS s, user_id, action_id, count, value_sum FROM \`${table}\``).stream();
    for await (const row of stream as AsyncIterable<{ s: string | number; user_id: string; action_id: number; count: string; value_sum: string }>) {
      rows++;
      const slice = (Number(row.s) * 1000 - baseMs) / sliceMs;
      const where = `slice ${slice} user ${row.user_id} action ${row.action_id}`;
      const i = slice === 0 || slice === 1 ? expected.index.get(pairKey(slice, Number(row.user_id), Number(row.action_id))) : undefined;
      if (i === undefined) {
        bad(`${where}: unexpected row (count ${row.count})`);
        continue;
      }
      if (seen[i]) bad(`${where}: duplicate row`);
      seen[i] = 1;
      if (row.count !== String(expected.count[i]) || row.value_sum !== String(expected.valueSum[i])) {
        bad(`${where}: count ${row.count} value_sum ${row.value_sum}, expected ${expected.count[i]} / ${expected.valueSum[i]}`);
      }
    }
  } finally {
    conn.end();
  }
  const missing = expected.pairs - seen.reduce((n, x) => n + x, 0);
  if (missing > 0) bad(`${missing} expected row(s) missing`);
  return { ok: mismatches === 0 && rows === expected.pairs, rows, expectedRows: expected.pairs, mismatches, examples };
}

/**
 * checkCounts for any number of slices (the steady-state run): every row of
 * `table` against `expected`, slice index = (slice start − firstMs) / sliceMs;
 * with `acrossSlices`, rows of a pair add up over the slices first.
 */
export async function checkCountsBySlice(cfg: Config, table: string, expected: SliceExpected, firstMs: number, sliceMs: number, acrossSlices: boolean): Promise<TableCheck> {
  const conn = mysql.createConnection({ uri: cfg.mysqlUrl, supportBigNumbers: true, bigNumberStrings: true });
  const got = new Map<number, [bigint, bigint]>();
  const examples: string[] = [];
  let rows = 0;
  let mismatches = 0;
  const bad = (what: string): void => {
    mismatches++;
    if (examples.length < 5) examples.push(what);
  };
  try {
    const stream = conn.query(`SELECT UNIX_TIMESTAMP(slice_start) AS s, user_id, action_id, count, value_sum FROM \`${table}\``).stream();
    for await (const row of stream as AsyncIterable<{ s: string | number; user_id: string; action_id: number; count: string; value_sum: string }>) {
      rows++;
      const slice = (Number(row.s) * 1000 - firstMs) / sliceMs;
      const key = sliceKey(acrossSlices ? 0 : slice, Number(row.user_id), Number(row.action_id));
      if (!Number.isInteger(slice) || slice < 0) {
        bad(`slice ${slice} user ${row.user_id} action ${row.action_id}: a row outside the run`);
        continue;
      }
      const cur = got.get(key) ?? [0n, 0n];
      got.set(key, [cur[0] + BigInt(row.count), cur[1] + BigInt(row.value_sum)]);
    }
  } finally {
    conn.end();
  }
  for (const [key, [c, v]] of got) {
    const i = expected.index.get(key);
    if (i === undefined) bad(`key ${key}: unexpected row (count ${c})`);
    else if (c !== BigInt(expected.count[i]!) || v !== BigInt(expected.valueSum[i]!)) bad(`key ${key}: count ${c} value_sum ${v}, expected ${expected.count[i]} / ${expected.valueSum[i]}`);
  }
  const missing = [...expected.index.keys()].filter((k) => !got.has(k)).length;
  if (missing > 0) bad(`${missing} expected pair(s) missing`);
  return { ok: mismatches === 0, rows, expectedRows: expected.pairs, mismatches, examples };
}

/** Current RSS of the bench stack's daemons, MB (from their pid files). */
export function serverRss(env: Record<string, string>): Record<string, number | null> {
  const dir = env.OFFLOG_DATA_DIR!;
  const read = (pidFile: string): number | null => {
    try {
      const pid = readFileSync(join(dir, pidFile), 'utf8').trim();
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return m ? Math.round(Number(m[1]) / 102.4) / 10 : null;
    } catch {
      return null;
    }
  };
  return { gearmand: read('gearmand/gearmand.pid'), memcached: read('memcached/memcached.pid'), mariadb: read('mysql/mysqld.pid') };
}

let clockTicks: number | null = null;

/**
 * CPU time (user + system, ms) each bench daemon has used so far, from
 * /proc/PID/stat: differences between two readings say which server was busy
 * while the client and worker ran, and while the flush did.
 */
export function serverCpuMs(env: Record<string, string>): Record<string, number | null> {
  clockTicks ??= Number(firstLine('getconf', ['CLK_TCK'])) || 100;
  const dir = env.OFFLOG_DATA_DIR!;
  const read = (pidFile: string): number | null => {
    try {
      const pid = readFileSync(join(dir, pidFile), 'utf8').trim();
      // Fields after the ")" that closes the command name: utime and stime are the 12th and 13th.
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return Math.round(((Number(f[11]) + Number(f[12])) * 1000) / clockTicks!);
    } catch {
      return null;
    }
  };
  return { gearmand: read('gearmand/gearmand.pid'), memcached: read('memcached/memcached.pid'), mariadb: read('mysql/mysqld.pid') };
}

export function cpuDelta(a: Record<string, number | null>, b: Record<string, number | null>): Record<string, number | null> {
  return Object.fromEntries(Object.keys(a).map((k) => [k, a[k] === null || b[k] === null ? null : b[k]! - a[k]!]));
}

/** UDP datagrams the kernel dropped because a receive buffer was full (machine-wide counter). */
export function udpReceiveBufferErrors(): number | null {
  try {
    const lines = readFileSync('/proc/net/snmp', 'utf8').split('\n').filter((l) => l.startsWith('Udp:'));
    const names = lines[0]!.split(/\s+/);
    const values = lines[1]!.split(/\s+/);
    const i = names.indexOf('RcvbufErrors');
    return i >= 0 ? Number(values[i]) : null;
  } catch {
    return null;
  }
}
