/**
 * Configuration: the OFFLOG_* environment, parsed and validated once at start
 * and passed in from there. Nothing below lib/ reads process.env.
 */
// A namespace import, so that a bundle keeps only the parts of zod used here (`import { z }` keeps all of it, locales included).
import * as z from 'zod';
import { ConfigError } from './errors.ts';

export interface HostPort { host: string; port: number }

/** `host:port`, for logs and messages. */
export const label = (s: HostPort): string => `${s.host}:${s.port}`;

export interface Config {
  gearmanServers: HostPort[];
  memcachedServers: HostPort[];
  /** The memcached pool before the last change: read (never written) until its slices have left the ring. */
  previousMemcachedServers: HostPort[];
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
  logLevel: string;
  /** EventBridge bus (name or ARN) for SliceFlushed and ActivityWatched; unset: nothing is published. */
  eventBus: string | undefined;
  /** An EventBridge emulator's URL (local use only: requests carry dummy credentials). */
  eventBridgeEndpoint: string | undefined;
  /** Watched raw events older than this are pruned. */
  watchedRetentionDays: number;
  /** How old the worker's copy of the watch lists may get before it is re-read (in the background). */
  watchListTtlSeconds: number;
  // ── reports and retention ──
  /** When set, every report read (API and dashboard data) requires `Authorization: Bearer <token>`. */
  reportToken: string | undefined;
  /** Days the 10-minute rows (and their per-slice series and slice records) are kept. */
  retentionDays: number;
  /** Days the hourly rollups are kept. */
  hourlyRetentionDays: number;
  /** Days the daily rollups are kept; 0 = for ever. */
  dailyRetentionDays: number;
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

const hostPort = (fallback: string, defaultPort: number) =>
  z.string().default(fallback).transform((value, ctx): HostPort[] => {
    const servers: HostPort[] = [];
    for (const item of value.split(',').map((s) => s.trim()).filter(Boolean)) {
      const m = /^([A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\])(?::(\d{1,5}))?$/.exec(item);
      const port = m?.[2] === undefined ? defaultPort : Number(m[2]);
      if (!m || port < 1 || port > 65535) {
        ctx.addIssue({ code: 'custom', message: `"${item}" is not host:port` });
        return z.NEVER;
      }
      servers.push({ host: m[1]!.replace(/^\[|\]$/g, ''), port });
    }
    if (servers.length === 0) {
      ctx.addIssue({ code: 'custom', message: 'needs at least one host:port' });
      return z.NEVER;
    }
    return servers;
  });

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
  OFFLOG_AGENT_SOCKET: z.string().regex(/^\/?[^\0]{1,100}$/, 'must be a path of at most 100 characters (a unix socket path is short)').default('/run/offlog/agent.sock'),
  OFFLOG_AGENT_TCP_PORT: z.string().regex(/^\d+$/, 'must be a whole number').transform(Number).pipe(z.number().int().min(1, 'must be at least 1').max(65_535, 'must be at most 65535')).optional(),
  OFFLOG_AGENT_MAX_HELD: int(100, 10_000_000, 100_000),
  OFFLOG_AGENT_MAX_FRAME_BYTES: int(1_024, 16 * 1024 * 1024, 256 * 1024),
  OFFLOG_AGENT_STATE_FILE: z.string().min(1).optional(),
  OFFLOG_AGENT_STATS_SECONDS: int(0, 86_400, 60),
});

/** Parses the environment; throws one ConfigError listing every bad variable. */
export function loadConfig(env: Record<string, string | undefined> = {}): Config {
  // Empty strings mean "unset" so that `OFFLOG_X= cmd` falls back to the default.
  const present = Object.fromEntries(Object.entries(env).filter(([k, v]) => k.startsWith('OFFLOG_') && v !== ''));
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message} (got ${JSON.stringify(present[String(i.path[0])])})`);
    throw new ConfigError(`invalid configuration:\n  ${lines.join('\n  ')}`);
  }
  const e = parsed.data;
  // Rollups are recomputed from the finer rows, so a finer level must never outlive a coarser one.
  const retention: string[] = [];
  if (e.OFFLOG_HOURLY_RETENTION_DAYS < e.OFFLOG_RETENTION_DAYS) retention.push(`OFFLOG_HOURLY_RETENTION_DAYS: must be at least OFFLOG_RETENTION_DAYS (${e.OFFLOG_RETENTION_DAYS}) (got ${e.OFFLOG_HOURLY_RETENTION_DAYS})`);
  if (e.OFFLOG_DAILY_RETENTION_DAYS !== 0 && e.OFFLOG_DAILY_RETENTION_DAYS < e.OFFLOG_HOURLY_RETENTION_DAYS) retention.push(`OFFLOG_DAILY_RETENTION_DAYS: must be 0 (for ever) or at least OFFLOG_HOURLY_RETENTION_DAYS (${e.OFFLOG_HOURLY_RETENTION_DAYS}) (got ${e.OFFLOG_DAILY_RETENTION_DAYS})`);
  if (retention.length > 0) throw new ConfigError(`invalid configuration:\n  ${retention.join('\n  ')}`);
  return {
    gearmanServers: e.OFFLOG_GEARMAN_SERVERS,
    memcachedServers: e.OFFLOG_MEMCACHED_SERVERS,
    previousMemcachedServers: e.OFFLOG_MEMCACHED_PREVIOUS_SERVERS ?? [],
    mysqlUrl: e.OFFLOG_MYSQL_URL,
    sliceSeconds: e.OFFLOG_SLICE_SECONDS,
    ringSlices: e.OFFLOG_RING_SLICES,
    tablePrefix: e.OFFLOG_TABLE_PREFIX,
    keyPrefix: e.OFFLOG_KEY_PREFIX,
    ingestToken: e.OFFLOG_INGEST_TOKEN,
    maxBodyBytes: e.OFFLOG_MAX_BODY_BYTES,
    maxBatchEvents: e.OFFLOG_MAX_BATCH_EVENTS,
    logLevel: e.OFFLOG_LOG_LEVEL,
    eventBus: e.OFFLOG_EVENT_BUS,
    eventBridgeEndpoint: e.OFFLOG_EVENTBRIDGE_ENDPOINT,
    watchedRetentionDays: e.OFFLOG_WATCHED_RETENTION_DAYS,
    watchListTtlSeconds: e.OFFLOG_WATCHLIST_TTL_SECONDS,
    reportToken: e.OFFLOG_REPORT_TOKEN,
    retentionDays: e.OFFLOG_RETENTION_DAYS,
    hourlyRetentionDays: e.OFFLOG_HOURLY_RETENTION_DAYS,
    dailyRetentionDays: e.OFFLOG_DAILY_RETENTION_DAYS,
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
