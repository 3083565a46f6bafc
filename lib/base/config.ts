/**
 * Configuration: the OFFLOG_* environment, parsed and validated once at start
 * and passed in from there. Nothing below lib/ reads process.env.
 */
// A namespace import, so that a bundle keeps only the parts of zod used here (`import { z }` keeps all of it, locales included).
import { readFileSync } from 'node:fs';
import * as z from 'zod';
import { ConfigError } from './errors.ts';
import { parseServerList, type HostPort } from './servers.ts';

export { label, type HostPort } from './servers.ts';

export interface Config {
  gearmanServers: HostPort[];
  memcachedServers: HostPort[];
  /** The memcached pool before the last change: read (never written) until its slices have left the ring. */
  previousMemcachedServers: HostPort[];
  /** TLS to memcached (OFFLOG_MEMCACHED_TLS), with the CA bundle read from OFFLOG_MEMCACHED_CA_FILE; null: plain TCP. */
  memcachedTls: { ca?: string } | null;
  mysqlUrl: string;
  sliceSeconds: number;
  ringSlices: number;
  tablePrefix: string;
  keyPrefix: string;
  /** When set, HTTP ingest requires `Authorization: Bearer <token>`. */
  ingestToken: string | undefined;
  /** Largest HTTP body accepted, in bytes. */
  maxBodyBytes: number;
  /** Largest number of events in one HTTP request. */
  maxBatchEvents: number;
  /** Events a worker folds together at most (a job over it is dead-lettered); undefined: the ring mode's cap. */
  maxFoldEvents: number | undefined;
  logLevel: string;
  /** EventBridge bus (name or ARN) for SliceFlushed and ActivityWatched; unset: nothing is published. */
  eventBus: string | undefined;
  /** An EventBridge emulator's URL (local use only: requests carry dummy credentials). */
  eventBridgeEndpoint: string | undefined;
  /** Watched raw events older than this are pruned. */
  watchedRetentionDays: number;
  /** How old the worker's copy of the watch lists may get before it is re-read (in the background). */
  watchListTtlSeconds: number;
  /** How long a worker's lease outlives its last fold: a claim of an undecided fold whose lease is gone is taken over (claims.ts). */
  leaseSeconds: number;
  // ── reports and retention ──
  /** When set, every report read (API and dashboard data) requires `Authorization: Bearer <token>`. */
  reportToken: string | undefined;
  /** Days the 10-minute rows (and their per-slice series and slice records) are kept. */
  retentionDays: number;
  /** Days the hourly rollups are kept. */
  hourlyRetentionDays: number;
  /** Days the daily rollups are kept; 0 = for ever. */
  dailyRetentionDays: number;
  // ── ring mode (docs/ring-modes.md) ──
  /** `counters` (incremented counters per pair) or `folds` (immutable blobs per fold, counted once by their commit record). */
  ringMode: RingMode;
  /** Jobs a worker folds together at most; undefined: the mode's default (16 in counters, 64 in folds). */
  jobsPerFold: number | undefined;
  /** Test hook: SIGKILL this process at the n-th time a worker reaches `step` of a fold (folds mode); undefined in production. */
  fault: FaultSpec | undefined;
  // ── the agent (`offlog agent`) ──
  agent: {
    socketPath: string;
    /** Also listen on 127.0.0.1:tcpPort. */
    tcpPort: number | undefined;
    /** Unacknowledged events past which the agent stops reading its sockets. */
    maxHeld: number;
    maxFrameBytes: number;
    /** Its crash checkpoint; unset: the socket path + `.state`. */
    stateFile: string | undefined;
    statsSeconds: number;
  };
}

export type RingMode = 'counters' | 'folds';
/** OFFLOG_FAULT: send `signal` to this process the n-th time a worker reaches `step`. */
export interface FaultSpec { step: string; n: number; signal: 'SIGKILL' | 'SIGSTOP' }

const hostPort = (fallback: string, defaultPort: number) =>
  z.string().default(fallback).transform((value, ctx): HostPort[] => {
    const servers = parseServerList(value, defaultPort);
    if (typeof servers === 'string') {
      ctx.addIssue({ code: 'custom', message: servers });
      return z.NEVER;
    }
    return servers;
  });

/** memcached's longest relative expiry (30 days); a larger exptime is read as a Unix time. */
export const MAX_RING_TTL_S = 2_592_000;

const int = (min: number, max: number, fallback: number) =>
  z
    .string()
    .regex(/^\d+$/, 'must be a whole number')
    .default(String(fallback))
    .transform(Number)
    .pipe(z.number().int().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`));

const schema = z.object({
  OFFLOG_GEARMAN_SERVERS: hostPort('127.0.0.1:4730', 4730),
  OFFLOG_MEMCACHED_SERVERS: hostPort('127.0.0.1:11211', 11211),
  OFFLOG_MEMCACHED_PREVIOUS_SERVERS: hostPort('', 11211).optional(),
  OFFLOG_MEMCACHED_TLS: z.enum(['true', 'false', '1', '0'], 'must be true or false').default('false').transform((v) => v === 'true' || v === '1'),
  OFFLOG_MEMCACHED_CA_FILE: z.string().optional(),
  OFFLOG_MYSQL_URL: z
    .string()
    .regex(/^mysql:\/\/[^/]+\/\w+/, 'must look like mysql://user:password@host:port/database')
    .default('mysql://offlog:offlog@127.0.0.1:3306/offlog'),
  OFFLOG_SLICE_SECONDS: int(1, 86_400, 600),
  // At least 3: one slice being written, one between, one being read.
  OFFLOG_RING_SLICES: int(3, 1_000, 6),
  OFFLOG_TABLE_PREFIX: z.string().regex(/^[A-Za-z0-9_]{0,32}$/, 'letters, digits and _ only (at most 32)').default('ol_'),
  OFFLOG_KEY_PREFIX: z.string().regex(/^[!-~]{0,64}$/, 'printable ASCII without spaces (at most 64)').default('ol:'),
  OFFLOG_INGEST_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  OFFLOG_MAX_BODY_BYTES: int(1_024, 64 * 1024 * 1024, 1024 * 1024),
  OFFLOG_MAX_BATCH_EVENTS: int(1, 1_000_000, 10_000),
  // Unset: the ring mode's own cap (see Runtime.worker).
  OFFLOG_MAX_FOLD_EVENTS: z.string().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(1, 'must be at least 1').max(10_000_000, 'must be at most 10000000')).optional(),
  OFFLOG_REPORT_TOKEN: z.string().min(16, 'must be at least 16 characters').optional(),
  OFFLOG_RETENTION_DAYS: int(1, 100_000, 35),
  OFFLOG_HOURLY_RETENTION_DAYS: int(1, 100_000, 400),
  OFFLOG_DAILY_RETENTION_DAYS: int(0, 100_000, 0),
  OFFLOG_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
  // A bus name (AWS: [/.-_A-Za-z0-9], at most 256) or its ARN.
  OFFLOG_EVENT_BUS: z.string().regex(/^(arn:[A-Za-z0-9\-]+:events:[a-z0-9\-]+:\d{12}:event-bus\/)?[/.\-_A-Za-z0-9]{1,256}$/, 'must be an event bus name ([/.-_A-Za-z0-9], at most 256) or its ARN').optional(),
  OFFLOG_EVENTBRIDGE_ENDPOINT: z.string().regex(/^https?:\/\/[^\s/]+(\/\S*)?$/, 'must be an http(s) URL, e.g. http://127.0.0.1:4010').optional(),
  OFFLOG_WATCHED_RETENTION_DAYS: int(1, 36_500, 30),
  OFFLOG_WATCHLIST_TTL_SECONDS: int(1, 3_600, 30),
  OFFLOG_RING_MODE: z.enum(['counters', 'folds']).default('counters'),
  OFFLOG_JOBS_PER_FOLD: z.string().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(1, 'must be at least 1').max(4096, 'must be at most 4096')).optional(),
  // The step names are FOLD_STEPS (lib/count/fold-writer.ts); repeated here so that config stays free of pipeline imports.
  OFFLOG_FAULT: z
    .string()
    .regex(/^(claimed|announced|blobs|committed|acked):[1-9]\d{0,8}(:SIGKILL|:SIGSTOP)?$/, 'must be <step>:<n>[:SIGKILL|:SIGSTOP], step one of claimed, announced, blobs, committed, acked, n >= 1 (e.g. blobs:3)')
    .transform((v): FaultSpec => {
      const [step, n, signal] = v.split(':');
      return { step: step!, n: Number(n), signal: signal === 'SIGSTOP' ? 'SIGSTOP' : 'SIGKILL' };
    })
    .optional(),
  OFFLOG_LEASE_SECONDS: int(1, 3_600, 30),
  OFFLOG_AGENT_SOCKET: z.string().regex(/^\/?[^\0]{1,100}$/, 'must be a path of at most 100 characters (a unix socket path is short)').default('/run/offlog/agent.sock'),
  OFFLOG_AGENT_TCP_PORT: z.string().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(1, 'must be at least 1').max(65_535, 'must be at most 65535')).optional(),
  OFFLOG_AGENT_MAX_HELD: int(100, 10_000_000, 100_000),
  OFFLOG_AGENT_MAX_FRAME_BYTES: int(1_024, 16 * 1024 * 1024, 256 * 1024),
  OFFLOG_AGENT_STATE_FILE: z.string().min(1).optional(),
  OFFLOG_AGENT_STATS_SECONDS: int(0, 86_400, 60),
});

/** ElastiCache Serverless endpoints: `<name>-<id>.serverless.<region>.cache.amazonaws.com` (refused: see loadConfig). */
const SERVERLESS_CACHE = /\.serverless\.[a-z0-9-]+\.cache\.amazonaws\.com(\.cn)?$/i;

/** Parses the environment; throws one ConfigError listing every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = {}): Config {
  // Empty strings mean "unset" so that `OFFLOG_LOG_LEVEL= cmd` falls back to the default.
  const present = Object.fromEntries(Object.entries(env).filter(([k, v]) => k.startsWith('OFFLOG_') && v !== ''));
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message} (got ${JSON.stringify(present[String(i.path[0])])})`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join('\n  ')}`);
  }
  const e = parsed.data;
  // Rollups are recomputed from the finer rows, so a finer level must never outlive a coarser one.
  const crossChecks: string[] = [];
  if (e.OFFLOG_HOURLY_RETENTION_DAYS < e.OFFLOG_RETENTION_DAYS) crossChecks.push(`OFFLOG_HOURLY_RETENTION_DAYS: must be at least OFFLOG_RETENTION_DAYS (${e.OFFLOG_RETENTION_DAYS}) (got ${e.OFFLOG_HOURLY_RETENTION_DAYS})`);
  if (e.OFFLOG_DAILY_RETENTION_DAYS !== 0 && e.OFFLOG_DAILY_RETENTION_DAYS < e.OFFLOG_HOURLY_RETENTION_DAYS) crossChecks.push(`OFFLOG_DAILY_RETENTION_DAYS: must be 0 (for ever) or at least OFFLOG_HOURLY_RETENTION_DAYS (${e.OFFLOG_HOURLY_RETENTION_DAYS}) (got ${e.OFFLOG_DAILY_RETENTION_DAYS})`);
  // The HTTP ingest must not accept a job the worker refuses.
  if (e.OFFLOG_MAX_FOLD_EVENTS !== undefined && e.OFFLOG_MAX_FOLD_EVENTS < e.OFFLOG_MAX_BATCH_EVENTS) crossChecks.push(`OFFLOG_MAX_FOLD_EVENTS: must be at least OFFLOG_MAX_BATCH_EVENTS (${e.OFFLOG_MAX_BATCH_EVENTS}), or the worker refuses jobs the HTTP ingest accepts (got ${e.OFFLOG_MAX_FOLD_EVENTS})`);
  // memcached reads an exptime above 30 days as an absolute Unix time: every ring key would be born expired.
  if (e.OFFLOG_SLICE_SECONDS * e.OFFLOG_RING_SLICES > MAX_RING_TTL_S) {
    crossChecks.push(`OFFLOG_SLICE_SECONDS × OFFLOG_RING_SLICES: the ring's lifetime (${e.OFFLOG_SLICE_SECONDS} × ${e.OFFLOG_RING_SLICES} = ${e.OFFLOG_SLICE_SECONDS * e.OFFLOG_RING_SLICES} s) must be at most ${MAX_RING_TTL_S} s (30 days): memcached takes a longer expiry as an absolute time, so every key would be born expired`);
  }
  if (crossChecks.length > 0) throw new ConfigError(`invalid configuration:\n  ${crossChecks.join('\n  ')}`);
  for (const key of ['OFFLOG_MEMCACHED_SERVERS', 'OFFLOG_MEMCACHED_PREVIOUS_SERVERS'] as const) {
    const serverless = (e[key] ?? []).find((s) => SERVERLESS_CACHE.test(s.host));
    if (serverless) {
      throw new ConfigError(`${key}: ${serverless.host} is an ElastiCache Serverless endpoint, which OffLog does not support: `
        + 'it hides a fleet behind one address, so a node that loses the ring cannot be told (its "stats" is no stable process identity), '
        + 'and it refuses a GET over 16 KB. Use a node-based ElastiCache for Memcached cluster (engine 1.6.22) and list its nodes.');
    }
  }
  if (e.OFFLOG_MEMCACHED_CA_FILE !== undefined && !e.OFFLOG_MEMCACHED_TLS) {
    throw new ConfigError('OFFLOG_MEMCACHED_CA_FILE is set but OFFLOG_MEMCACHED_TLS is not true: set OFFLOG_MEMCACHED_TLS=true to use it');
  }
  let memcachedTls: Config['memcachedTls'] = null;
  if (e.OFFLOG_MEMCACHED_TLS) {
    memcachedTls = {};
    if (e.OFFLOG_MEMCACHED_CA_FILE !== undefined) {
      try {
        memcachedTls.ca = readFileSync(e.OFFLOG_MEMCACHED_CA_FILE, 'utf8');
      } catch (err) {
        throw new ConfigError(`OFFLOG_MEMCACHED_CA_FILE: cannot read ${JSON.stringify(e.OFFLOG_MEMCACHED_CA_FILE)}: ${(err as Error).message}`);
      }
      if (!memcachedTls.ca.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(`OFFLOG_MEMCACHED_CA_FILE: ${JSON.stringify(e.OFFLOG_MEMCACHED_CA_FILE)} holds no PEM certificate`);
    }
  }
  return {
    gearmanServers: e.OFFLOG_GEARMAN_SERVERS,
    memcachedServers: e.OFFLOG_MEMCACHED_SERVERS,
    previousMemcachedServers: e.OFFLOG_MEMCACHED_PREVIOUS_SERVERS ?? [],
    memcachedTls,
    mysqlUrl: e.OFFLOG_MYSQL_URL,
    sliceSeconds: e.OFFLOG_SLICE_SECONDS,
    ringSlices: e.OFFLOG_RING_SLICES,
    tablePrefix: e.OFFLOG_TABLE_PREFIX,
    keyPrefix: e.OFFLOG_KEY_PREFIX,
    ingestToken: e.OFFLOG_INGEST_TOKEN,
    maxBodyBytes: e.OFFLOG_MAX_BODY_BYTES,
    maxBatchEvents: e.OFFLOG_MAX_BATCH_EVENTS,
    maxFoldEvents: e.OFFLOG_MAX_FOLD_EVENTS,
    logLevel: e.OFFLOG_LOG_LEVEL,
    eventBus: e.OFFLOG_EVENT_BUS,
    eventBridgeEndpoint: e.OFFLOG_EVENTBRIDGE_ENDPOINT,
    watchedRetentionDays: e.OFFLOG_WATCHED_RETENTION_DAYS,
    watchListTtlSeconds: e.OFFLOG_WATCHLIST_TTL_SECONDS,
    leaseSeconds: e.OFFLOG_LEASE_SECONDS,
    reportToken: e.OFFLOG_REPORT_TOKEN,
    retentionDays: e.OFFLOG_RETENTION_DAYS,
    hourlyRetentionDays: e.OFFLOG_HOURLY_RETENTION_DAYS,
    dailyRetentionDays: e.OFFLOG_DAILY_RETENTION_DAYS,
    ringMode: e.OFFLOG_RING_MODE,
    jobsPerFold: e.OFFLOG_JOBS_PER_FOLD,
    fault: e.OFFLOG_FAULT,
    agent: {
      socketPath: e.OFFLOG_AGENT_SOCKET,
      tcpPort: e.OFFLOG_AGENT_TCP_PORT,
      maxHeld: e.OFFLOG_AGENT_MAX_HELD,
      maxFrameBytes: e.OFFLOG_AGENT_MAX_FRAME_BYTES,
      stateFile: e.OFFLOG_AGENT_STATE_FILE,
      statsSeconds: e.OFFLOG_AGENT_STATS_SECONDS,
    },
  };
}
