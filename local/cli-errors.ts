/**
 * What the `offlog` CLI says and returns when a command does not succeed: one
 * exit-code table (documented in docs/operations.md, which a test holds to
 * this list), and one line on stderr for every failure an operator can act
 * on. Only an unexpected error (a bug) prints a stack trace.
 */
import { label, type Config, type HostPort } from '../lib/base/config.ts';
import { ConfigError, FlushClockError, GearmanUnavailableError, InputError } from '../lib/base/errors.ts';
import { MemcacheUnavailableError } from '../lib/wire/memcache.ts';

export const EXIT = {
  ok: 0,
  /** The command failed: the line says why (an unexpected error adds its stack trace, worth reporting). */
  failed: 1,
  /** Unknown command or option, a missing or malformed argument. */
  usage: 2,
  /** `offlog status`: a server is down, or the pipeline is behind. */
  unhealthy: 3,
  /** A server (gearmand, memcached, MySQL) could not be reached. */
  unavailable: 69,
  /** `offlog flush`: another flush holds the lock; run it again later. */
  busy: 75,
  /** An OFFLOG_* variable has a bad value. */
  config: 78,
} as const;

/** The table as docs/operations.md prints it: code, name, meaning. */
export const EXIT_TABLE: readonly [number, string][] = [
  [EXIT.ok, 'done'],
  [EXIT.failed, 'the command failed; the line says why (an unexpected error adds its stack trace: please report it)'],
  [EXIT.usage, 'usage: unknown command or option, missing or bad argument'],
  [EXIT.unhealthy, '`offlog status`: a server is down or the pipeline is behind'],
  [EXIT.unavailable, 'a server could not be reached (the line names it)'],
  [EXIT.busy, '`offlog flush`: another flush holds the lock; try again'],
  [EXIT.config, 'an OFFLOG_* variable is invalid (each one is named)'],
];

/** A bad argument found after parsing (a value the command itself refuses). */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** The configuration could not be loaded: kept apart from argument errors, for its own exit code. */
export class CliConfigError extends Error {
  override name = 'CliConfigError';
}

const NETWORK_CODES = new Set(['ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'ECONNRESET', 'PROTOCOL_CONNECTION_LOST']);

interface NetError { code?: unknown; address?: unknown; port?: unknown; errors?: unknown; cause?: unknown; message: string }

/** The errors behind `err` (AggregateError from a multi-address connect, a cause). */
function* chain(err: NetError): Generator<NetError> {
  yield err;
  if (Array.isArray(err.errors)) for (const e of err.errors) if (e instanceof Error) yield* chain(e as NetError);
  if (err.cause instanceof Error) yield* chain(err.cause as NetError);
}

const mysqlAddress = (url: string): string => {
  try {
    const u = new URL(url);
    return `${u.hostname}:${u.port || '3306'}`;
  } catch {
    return 'the MySQL URL';
  }
};

/** Which configured server an unreachable address is, so the line can name it and the variable that sets it. */
function whichServer(address: string | undefined, config: Config | undefined, err: Error): { kind: string; address: string; variable: string } {
  const servers: [string, HostPort[], string][] = config
    ? [['gearmand', config.gearmanServers, 'OFFLOG_GEARMAN_SERVERS'], ['memcached', [...config.memcachedServers, ...config.previousMemcachedServers], 'OFFLOG_MEMCACHED_SERVERS']]
    : [];
  for (const [kind, list, variable] of servers) {
    const hit = list.find((s) => label(s) === address || err.message.includes(label(s)));
    if (hit) return { kind, address: label(hit), variable };
  }
  if (config && (address === mysqlAddress(config.mysqlUrl) || err.message.includes(mysqlAddress(config.mysqlUrl)) || 'sqlState' in err || 'fatal' in err)) {
    return { kind: 'MySQL', address: mysqlAddress(config.mysqlUrl), variable: 'OFFLOG_MYSQL_URL' };
  }
  if (err instanceof GearmanUnavailableError) return { kind: 'gearmand', address: address ?? '?', variable: 'OFFLOG_GEARMAN_SERVERS' };
  if (err instanceof MemcacheUnavailableError) return { kind: 'memcached', address: address ?? '?', variable: 'OFFLOG_MEMCACHED_SERVERS' };
  return { kind: 'a server', address: address ?? '?', variable: 'the OFFLOG_*_SERVERS / OFFLOG_MYSQL_URL settings' };
}

/** A server that cannot be reached, named, or undefined when `err` is something else. */
export function unreachable(err: unknown, config: Config | undefined): string | undefined {
  if (!(err instanceof Error)) return undefined;
  for (const e of chain(err as NetError)) {
    const { code, address, port } = e;
    const network = (typeof code === 'string' && NETWORK_CODES.has(code)) || e instanceof GearmanUnavailableError || e instanceof MemcacheUnavailableError;
    if (!network) continue;
    const at = typeof address === 'string' && typeof port === 'number' ? `${address}:${port}` : undefined;
    const s = whichServer(at, config, e as Error);
    const why = typeof code === 'string' ? code : e.message;
    return `cannot reach ${s.kind} at ${s.address} (${why}); start the local servers with \`offlog services up\`, or point ${s.variable} at a running one`;
  }
  return undefined;
}

/** The table a query found missing (MySQL's ER_NO_SUCH_TABLE), or undefined. */
function missingTable(err: unknown): string | undefined {
  if (!(err instanceof Error) || (err as NetError).code !== 'ER_NO_SUCH_TABLE') return undefined;
  return /Table '(?:[^.']+\.)?([^']+)' doesn't exist/.exec(err.message)?.[1] ?? 'of OffLog\'s';
}

/** The exit code and the line for an error a command threw. */
export function describe(err: unknown, config: Config | undefined): { code: number; line: string } {
  const down = unreachable(err, config);
  if (down !== undefined) return { code: EXIT.unavailable, line: down };
  const table = missingTable(err);
  if (table !== undefined) return { code: EXIT.failed, line: `MySQL has no table ${table} (the schema is not there): run \`offlog migrate\` (or check OFFLOG_TABLE_PREFIX)` };
  if (err instanceof CliConfigError) return { code: EXIT.config, line: err.message };
  if (err instanceof UsageError || err instanceof ConfigError || err instanceof InputError || err instanceof FlushClockError) {
    return { code: EXIT.usage, line: err.message };
  }
  const e = err instanceof Error ? err : new Error(String(err));
  return { code: EXIT.failed, line: e.stack ?? e.message };
}
