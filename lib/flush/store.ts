/**
 * The MySQL side: migrations, the per-slice upserts, the watermark and the
 * flush lock. SQL text is fixed and values travel as parameters, with one
 * exception: the counts upsert, whose VALUES text is built here from values
 * checked to be plain integers (see upsertCountsSql).
 */
import { once } from 'node:events';
import { PassThrough, type Writable } from 'node:stream';
import mysql, { type Pool, type PoolConnection, type RowDataPacket } from 'mysql2/promise';
import type { CountRows } from '../domain/counts.ts';
import { isU64Decimal } from '../domain/u64.ts';
import type { Logger } from '../base/log.ts';
import { RotatingPool } from '../wire/mysql-pool.ts';
import { MIGRATIONS, type Tables } from './migrations.ts';

/**
 * Rows per counts upsert. Each statement costs a round trip and a parse, so
 * bigger is cheaper, up to where one batch's memory and the statement's size
 * (≤ ~90 bytes a row: 5,000 rows ≈ 450 KB, far under the 4 MB
 * max_allowed_packet of the smallest MySQL default) start to matter.
 */
export const DEFAULT_ROWS_PER_STATEMENT = 2000;

/** A value for the counts table is not what the column holds; nothing was sent. */
export class StoreValueError extends Error {
  override name = 'StoreValueError';
}

export interface StoreOptions {
  url: string;
  tablePrefix: string;
  /** Rows per multi-row upsert statement, and per batch the flush reads from memcached. */
  rowsPerStatement?: number;
  /**
   * How a slice's rows reach the counts table (see writeSlice): `load` streams
   * them through one LOAD DATA LOCAL INFILE … REPLACE; `upsert` sends
   * multi-row upserts; `auto` (default) loads when this server and user
   * allow it (checked once), else upserts.
   */
  countsMethod?: CountsMethod | 'auto';
  /** After a probe failed without a refusal (a lock wait, a dropped connection), how long before probing again (default 60 s). */
  loadProbeRetryMs?: number;
  /**
   * Where the URL came from (the secret or parameter resolveSecrets read),
   * read again when the server refuses the password: a rotated secret then
   * reaches a warm process at its next query (see RotatingPool).
   */
  rereadUrl?: () => Promise<string>;
  /** Where a re-read is reported. */
  log?: Logger;
}

export type CountsMethod = 'load' | 'upsert';

/**
 * The server's answers that refuse LOAD DATA LOCAL … REPLACE for good: the
 * command not allowed (local_infile off: 1148, MySQL 8's 3948 and 4166), no
 * privilege for it (1044, 1142, 1227), or no counts table (1146).
 */
const LOAD_REFUSALS = new Set([1044, 1142, 1146, 1148, 1227, 3948, 4166]);

export type SliceStatus = 'flushed' | 'incomplete' | 'lost' | 'corrupt' | 'saturated' | 'maybe-duplicated';

export interface SliceRecord {
  status: SliceStatus;
  rows: number;
  pairsMissing: number;
  chunksMissing: number;
  events: bigint | null;
  late: bigint;
  sumsSaturated: number;
  corruptItems: number;
  /** Events of folds that may have written into the slice and never committed: at most this many are counted twice. */
  duplicateBound: bigint;
  note: string;
}

export interface DeadLetter {
  fn: string;
  unique: string;
  error: string;
  /** When the worker received the bad job. */
  receivedAt: Date;
  payload: Buffer;
}

export class Store {
  readonly pool: Pool;
  private readonly pools: RotatingPool;
  /** Table names, prefixed. */
  readonly tables: Tables;
  /** The most rows one upsert may carry (the flush reads memcached in batches of this size). */
  readonly rowsPerStatement: number;
  /** SQL statements issued since start (benchmarks and tests count them). */
  statements = 0;
  private method: Promise<CountsMethod> | null;

  constructor(options: StoreOptions) {
    // DATETIME columns hold UTC: the session time zone is pinned so nothing shifts them.
    this.pools = new RotatingPool(options.url, {
      options: { timezone: 'Z', connectionLimit: 4, supportBigNumbers: true, bigNumberStrings: true, dateStrings: false, queryFormat: formatQuery },
      onConnection: (c) => void c.query("SET time_zone = '+00:00'"),
      reread: options.rereadUrl,
      onReread: (changed) => changed
        ? options.log?.warn('MySQL refused the password; the re-read MySQL URL differs (a rotation): new connections use it')
        : options.log?.error('MySQL refused the password, and the MySQL URL read again is unchanged: fix the secret or the user'),
    });
    this.pool = this.pools.pool;
    const p = options.tablePrefix;
    this.tables = { counts: `${p}counts`, slices: `${p}slices`, state: `${p}state`, dead: `${p}dead_letters`, migrations: `${p}migrations`, hourly: `${p}counts_hourly`, daily: `${p}counts_daily`,
      watches: `${p}watches`, watched: `${p}watched_events`, actions: `${p}actions`, series: `${p}action_series`, weekly: `${p}counts_weekly`,
    };
    this.rowsPerStatement = options.rowsPerStatement ?? DEFAULT_ROWS_PER_STATEMENT;
    if (!Number.isSafeInteger(this.rowsPerStatement) || this.rowsPerStatement < 1) throw new RangeError(`rowsPerStatement must be a whole number >= 1, not ${options.rowsPerStatement}`);
    this.loadProbeRetryMs = options.loadProbeRetryMs ?? 60_000;
    const method = options.countsMethod ?? 'auto';
    this.method = method === 'auto' ? null : Promise.resolve(method);
  }

  /**
   * How this store writes counts: as asked, or (auto) `load` when an empty
   * LOAD DATA LOCAL … REPLACE into the counts table succeeds — the server
   * allows local_infile and the user may INSERT and DELETE (REPLACE) there —
   * else `upsert`, said once in the log by the caller. A refusal (see
   * LOAD_REFUSALS) settles it for the Store's life; any other failure of the
   * probe (a lock wait, a dropped connection) means upserts for now and a new
   * probe once loadProbeRetryMs have passed.
   */
  countsMethod(): Promise<CountsMethod> {
    if (this.method === null && Date.now() < this.probeAgainAt) return Promise.resolve('upsert');
    return (this.method ??= this.probeLoad().then(
      () => {
        this.loadProbeFailure = null;
        return 'load' as const;
      },
      (err: Error & { errno?: number }) => {
        if (err.errno !== undefined && LOAD_REFUSALS.has(err.errno)) {
          this.loadRefusal = err.message;
          this.loadProbeFailure = null;
          return 'upsert' as const;
        }
        this.loadProbeFailure = err.message;
        this.probeAgainAt = Date.now() + this.loadProbeRetryMs;
        this.method = null;
        return 'upsert' as const;
      },
    ));
  }

  /** Times a refused password led to a re-read URL and a new pool. */
  get passwordRotations(): number {
    return this.pools.rotations;
  }

  /** Why `auto` chose upserts for good (the server refused the probe), or null. */
  loadRefusal: string | null = null;
  /** Why the last probe failed without a refusal (upserts until it is probed again), or null. */
  loadProbeFailure: string | null = null;
  private probeAgainAt = 0;
  private readonly loadProbeRetryMs: number;

  private async probeLoad(): Promise<void> {
    const conn = await this.pool.getConnection();
    try {
      await this.run(conn, 'START TRANSACTION');
      await new CountsLoad(conn, this.tables.counts, new Date(0), () => this.statements++).end();
    } finally {
      await conn.query('ROLLBACK').catch(() => undefined);
      conn.release();
    }
  }

  /**
   * Applies the migrations this database has not had yet, in order, under a
   * lock (two deploys migrating at once take turns). Returns those applied.
   */
  async migrate(): Promise<number[]> {
    const t = this.tables;
    const conn = await this.pool.getConnection();
    const lock = `${t.migrations}.migrate`;
    try {
      const [got] = await this.run<RowDataPacket[]>(conn, 'SELECT GET_LOCK(CONCAT(DATABASE(), ?), 60) AS got', [lock]);
      if (Number(got[0]?.got) !== 1) throw new Error('migrate: another migration held the lock for 60 s');
      try {
        await this.run(conn, `CREATE TABLE IF NOT EXISTS \`${t.migrations}\` (
          version INT UNSIGNED NOT NULL PRIMARY KEY,
          name VARCHAR(255) NOT NULL,
          applied_at DATETIME(3) NOT NULL
        ) ENGINE=InnoDB`);
        const [rows] = await this.run<RowDataPacket[]>(conn, `SELECT version FROM \`${t.migrations}\``);
        const done = new Set(rows.map((r) => Number(r.version)));
        const applied: number[] = [];
        for (const m of MIGRATIONS) {
          if (done.has(m.version)) continue;
          for (const sql of m.statements(t)) await this.run(conn, sql);
          await this.run(conn, `INSERT INTO \`${t.migrations}\` (version, name, applied_at) VALUES (?, ?, NOW(3))`, [m.version, m.name]);
          applied.push(m.version);
        }
        return applied;
      } finally {
        await this.run(conn, 'SELECT RELEASE_LOCK(CONCAT(DATABASE(), ?))', [lock]).catch(() => undefined);
      }
    } finally {
      conn.release();
    }
  }

  /** The last slice flushed (or given up as lost), or null before the first flush. */
  async watermark(): Promise<Date | null> {
    const [rows] = await this.query<RowDataPacket[]>(`SELECT MAX(slice_start) AS w FROM \`${this.tables.slices}\``);
    return (rows[0]?.w as Date | null) ?? null;
  }

  /**
   * Writes one slice in one transaction: its rows (totals set, not added, so a
   * re-run changes nothing) and its record, which moves the watermark. `fill`
   * streams the rows through `write`, a batch per call, and returns the
   * record, written last; nothing is visible until the COMMIT, and any
   * failure rolls the whole slice back.
   *
   * The rows go out as one LOAD DATA LOCAL INFILE … REPLACE streamed from
   * the batches (method `load`: one statement however many rows, and the
   * server's fastest way in), or as one multi-row upsert per batch (`upsert`).
   * Either sets the totals. Rows in the counts table's key order (as the
   * slice reader gives them) go in fastest either way.
   */
  async writeSlice(sliceStart: Date, fill: (write: (rows: CountRows) => Promise<void>) => Promise<SliceRecord>): Promise<SliceRecord> {
    const method = await this.countsMethod();
    const conn = await this.pool.getConnection();
    let load: CountsLoad | null = null;
    try {
      await this.run(conn, 'START TRANSACTION');
      const record = await fill(async (rows) => {
        if (rows.length === 0) return;
        if (rows.length > this.rowsPerStatement) throw new RangeError(`${rows.length} rows in one batch; at most ${this.rowsPerStatement}`);
        if (method === 'upsert') await this.run(conn, upsertCountsSql(this.tables.counts, sliceStart, rows));
        else await (load ??= new CountsLoad(conn, this.tables.counts, sliceStart, () => this.statements++)).write(rows);
      });
      if (load !== null) await (load as CountsLoad).end();
      await this.run(
        conn,
        `INSERT INTO \`${this.tables.slices}\` (slice_start, status, row_count, pairs_missing, chunks_missing, events, late, sums_saturated, corrupt_items, duplicate_bound, note, flushed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NOW(3))
         ON DUPLICATE KEY UPDATE status = VALUES(status), row_count = VALUES(row_count), pairs_missing = VALUES(pairs_missing),
           chunks_missing = VALUES(chunks_missing), events = VALUES(events), late = VALUES(late), sums_saturated = VALUES(sums_saturated),
           corrupt_items = VALUES(corrupt_items), duplicate_bound = VALUES(duplicate_bound), note = VALUES(note), flushed_at = VALUES(flushed_at), rolled_up_at = NULL`,
        [
          sliceStart, record.status, record.rows, record.pairsMissing, record.chunksMissing, record.events?.toString() ?? null, record.late.toString(),
          record.sumsSaturated, record.corruptItems, record.duplicateBound.toString(), record.note.slice(0, 1024),
        ],
      );
      await this.run(conn, 'COMMIT');
      return record;
    } catch (err) {
      (load as CountsLoad | null)?.abort();
      await (load as CountsLoad | null)?.settled();
      await conn.query('ROLLBACK').catch(() => undefined);
      throw err;
    } finally {
      conn.release();
    }
  }

  /**
   * Runs `fn` holding the flush lock (MariaDB GET_LOCK, released if the holder's
   * connection dies). Returns null without running it when another flush holds
   * the lock for longer than `waitSeconds`.
   */
  async withFlushLock<T>(waitSeconds: number, fn: () => Promise<T>): Promise<T | null> {
    const conn = await this.pool.getConnection();
    const name = `${this.tables.slices}.flush`;
    try {
      const [rows] = await this.run<RowDataPacket[]>(conn, 'SELECT GET_LOCK(CONCAT(DATABASE(), ?), ?) AS got', [name, waitSeconds]);
      if (Number(rows[0]?.got) !== 1) return null;
      try {
        return await fn();
      } finally {
        await this.run(conn, 'SELECT RELEASE_LOCK(CONCAT(DATABASE(), ?))', [name]).catch(() => undefined);
      }
    } finally {
      conn.release();
    }
  }

  async getState(name: string): Promise<string | null> {
    const [rows] = await this.query<RowDataPacket[]>(`SELECT value FROM \`${this.tables.state}\` WHERE name = ?`, [name]);
    return (rows[0]?.value as string | undefined) ?? null;
  }

  async setState(name: string, value: string): Promise<void> {
    await this.query(`INSERT INTO \`${this.tables.state}\` (name, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)`, [name, value]);
  }

  async addDeadLetters(letters: readonly DeadLetter[]): Promise<void> {
    if (letters.length === 0) return;
    await this.query(`INSERT INTO \`${this.tables.dead}\` (received_at, function_name, job_unique, error, payload) VALUES ?`, [
      letters.map((d) => [d.receivedAt, d.fn.slice(0, 64), d.unique.slice(0, 255), d.error, d.payload]),
    ]);
  }

  async deadLetters(limit: number): Promise<{ id: number; receivedAt: Date; fn: string; unique: string; error: string; payload: Buffer }[]> {
    const [rows] = await this.query<RowDataPacket[]>(
      `SELECT id, received_at, function_name, job_unique, error, payload FROM \`${this.tables.dead}\` ORDER BY id DESC LIMIT ?`,
      [limit],
    );
    return rows.map((r) => ({ id: Number(r.id), receivedAt: r.received_at, fn: r.function_name, unique: r.job_unique, error: r.error, payload: r.payload }));
  }

  /**
   * Marks a slice already written incomplete (unless it is worse already),
   * adding `note`, and queues its SliceFlushed again (the bus replays are
   * harmless: rollups recompute).
   */
  async reportSlice(sliceStart: Date, note: string): Promise<void> {
    await this.query(
      `UPDATE \`${this.tables.slices}\` SET status = IF(status IN ('flushed', 'saturated'), 'incomplete', status),
         note = LEFT(CONCAT(note, IF(note = '', '', '; '), ?), 1024), published_at = NULL WHERE slice_start = ?`,
      [note, sliceStart],
    );
  }

  async recentSlices(limit: number): Promise<RowDataPacket[]> {
    const [rows] = await this.query<RowDataPacket[]>(`SELECT * FROM \`${this.tables.slices}\` ORDER BY slice_start DESC LIMIT ?`, [limit]);
    return rows;
  }

  async close(): Promise<void> {
    await this.pool.end();
  }

  private query<T extends RowDataPacket[] | mysql.ResultSetHeader = mysql.ResultSetHeader>(sql: string, params?: unknown[]): Promise<[T, unknown]> {
    this.statements++;
    return this.pool.query<T>(sql, params) as Promise<[T, unknown]>;
  }

  private run<T extends RowDataPacket[] | mysql.ResultSetHeader = mysql.ResultSetHeader>(conn: PoolConnection, sql: string, params?: unknown[]): Promise<[T, unknown]> {
    this.statements++;
    return conn.query<T>(sql, params) as Promise<[T, unknown]>;
  }
}

/** mysql2's own formatter, with the arguments its default path passes (the 3rd and 4th are missing from its typings). */
const mysqlFormat = mysql.format as unknown as (sql: string, values: unknown, stringifyObjects: boolean, timezone: string) => string;

/**
 * The pool's query formatter: mysql2's, except that a statement without
 * values is sent as it is. mysql2 would scan it for placeholders anyway, and
 * for a counts upsert (~100 KB of digits) that scan cost as much as building
 * the text; with no values to put in, the scan could never change a byte.
 * Values are formatted exactly as mysql2 does by default (Dates in UTC, the pool's `timezone`).
 */
function formatQuery(sql: string, values: unknown): string {
  if (values === undefined || values === null || (Array.isArray(values) && values.length === 0)) return sql;
  return mysqlFormat(sql, values, false, 'Z');
}

/**
 * The text of one multi-row counts upsert, with the values inline.
 *
 * Why inline text and not `VALUES ?`: mysql2 escapes a nested array value by
 * value (a Date formatted per row, every string scanned for quotes), which
 * made the driver the flush's bottleneck. Inline text is safe here because
 * nothing but digits reaches it: every user id, count and sum is checked to
 * be 1–20 ASCII digits and at most 2^64 − 1 (isU64Decimal), every action id
 * an integer 1–65535, and the slice start is formatted from a Date as
 * 'YYYY-MM-DD HH:MM:SS' and checked against that shape. Any other value
 * throws StoreValueError before a statement exists. The table name comes
 * from configuration, as in every other statement.
 */
/** The one rule for what may reach a statement's text: ids and totals as plain digits in range. */
function checkRow(i: number, user: string, action: number, count: string, sum: string): void {
    if (!isU64Decimal(user)) throw new StoreValueError(`row ${i}: user id ${JSON.stringify(user)} is not an unsigned 64-bit integer`);
    if (!Number.isInteger(action) || action < 1 || action > 0xffff) throw new StoreValueError(`row ${i}: action id ${action} is not an integer 1–65535`);
    if (!isU64Decimal(count)) throw new StoreValueError(`row ${i}: count ${JSON.stringify(count)} is not an unsigned 64-bit integer`);
    if (!isU64Decimal(sum)) throw new StoreValueError(`row ${i}: value sum ${JSON.stringify(sum)} is not an unsigned 64-bit integer`);
}

export function upsertCountsSql(table: string, sliceStart: Date, rows: CountRows): string {
  const at = `'${sqlDateTime(sliceStart)}'`;
  const { users, actions, counts, valueSums } = rows;
  let values = '';
  for (let i = 0; i < rows.length; i++) {
    const user = users[i]!;
    const action = actions[i]!;
    const count = counts[i]!;
    const sum = valueSums[i]!;
    checkRow(i, user, action, count, sum);
    values += `${i === 0 ? '' : ','}(${at},${user},${action},${count},${sum})`;
  }
  if (values === '') throw new StoreValueError('an upsert needs at least one row');
  return `INSERT INTO \`${table}\` (slice_start, user_id, action_id, count, value_sum) VALUES ${values} ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`;
}

/** A Date as a DATETIME literal's text, in UTC (the session's time zone is pinned to UTC). */
export function sqlDateTime(d: Date): string {
  const iso = Number.isNaN(d.getTime()) ? '' : d.toISOString();
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(iso)) throw new StoreValueError(`slice start ${String(d)} is not a date in years 0000–9999`);
  return `${iso.slice(0, 10)} ${iso.slice(11, 19)}`;
}

/**
 * One LOAD DATA LOCAL INFILE … REPLACE into the counts table, fed while it
 * runs: the statement is sent at once, MariaDB asks for the "file", and
 * mysql2 hands it this stream (the path MariaDB names is ignored: nothing
 * but these rows can be sent). Each write() is one batch as tab-separated
 * text, built from checked digits as the upsert's VALUES are; end() closes
 * the stream and checks that MariaDB took every row, with no warning.
 *
 * REPLACE sets a row that exists (a slice written again), as the upsert's
 * ON DUPLICATE KEY UPDATE does; it needs DELETE on the table.
 */
/** Bytes of LOAD DATA text a slice's write may leave unsent before it waits: a few batches. */
const SOCKET_BACKLOG = 1 << 20;

export class CountsLoad {
  private readonly stream = new PassThrough();
  private readonly result: Promise<mysql.ResultSetHeader>;
  private readonly at: string;
  private sent = 0;
  private failure: Error | null = null;

  /** The connection's socket (mysql2 keeps it as `stream`), for its back-pressure. */
  private readonly socket: Writable | undefined;

  constructor(conn: PoolConnection, table: string, sliceStart: Date, counted: () => void) {
    this.at = sqlDateTime(sliceStart);
    this.socket = (conn as unknown as { connection?: { stream?: Writable } }).connection?.stream;
    this.stream.on('error', (err) => (this.failure ??= err));
    counted();
    const sql = `LOAD DATA LOCAL INFILE 'offlog-counts' REPLACE INTO TABLE \`${table}\` CHARACTER SET ascii ` +
      "FIELDS TERMINATED BY '\\t' ESCAPED BY '' LINES TERMINATED BY '\\n' (slice_start, user_id, action_id, count, value_sum)";
    this.result = conn.query<mysql.ResultSetHeader>({ sql, infileStreamFactory: () => this.stream }).then(([r]) => r);
    // Awaited in end() or settled(); until then a failure must not count as unhandled.
    this.result.catch((err: Error) => (this.failure ??= err));
  }

  async write(rows: CountRows): Promise<void> {
    if (this.failure) throw this.failure;
    this.sent += rows.length;
    this.stream.write(countsTsv(this.at, rows));
    // mysql2 copies each chunk straight to the socket, so back-pressure is the socket's: past
    // SOCKET_BACKLOG unsent, wait (reading memcached no faster than MariaDB takes the rows, in
    // bounded memory). If the statement ends meanwhile (it failed), its error, not a wait forever.
    const socket = this.socket;
    if (socket && socket.writableLength > SOCKET_BACKLOG) {
      await Promise.race([once(socket, 'drain'), this.result.then(() => { throw new Error('LOAD DATA ended before its rows were sent'); })]);
    }
  }

  async end(): Promise<void> {
    this.stream.end();
    const r = await this.result;
    // "Records: N  Deleted: D  Skipped: S  Warnings: W": every row taken, none skipped or bent.
    const m = /Records: (\d+)\s+Deleted: \d+\s+Skipped: (\d+)\s+Warnings: (\d+)/.exec(r.info ?? '');
    if (!m || Number(m[1]) !== this.sent || m[2] !== '0' || m[3] !== '0') {
      throw new StoreValueError(`LOAD DATA took ${m ? `${m[1]} rows (${m[2]} skipped, ${m[3]} warnings)` : `an unknown number of rows ("${r.info}")`}; ${this.sent} were sent`);
    }
  }

  /**
   * Stops feeding rows: the statement finishes with what it had, for the
   * caller to roll back. (Ending the "file" keeps the protocol in step;
   * destroying the stream mid-statement would leave the connection unusable.)
   */
  abort(): void {
    this.stream.end();
  }

  /** Resolves once the statement has finished, whichever way. */
  async settled(): Promise<void> {
    await this.result.catch(() => undefined);
  }
}

/**
 * A batch of count rows as LOAD DATA text: one line per row, five
 * tab-separated fields. Only checked values reach it (see upsertCountsSql):
 * digits, and the slice start's fixed shape, so no field can hold a tab, a
 * line break or a backslash.
 */
export function countsTsv(sliceStart: string, rows: CountRows): string {
  const { users, actions, counts, valueSums } = rows;
  let text = '';
  for (let i = 0; i < rows.length; i++) {
    const user = users[i]!;
    const action = actions[i]!;
    const count = counts[i]!;
    const sum = valueSums[i]!;
    checkRow(i, user, action, count, sum);
    text += `${sliceStart}\t${user}\t${action}\t${count}\t${sum}\n`;
  }
  return text;
}
