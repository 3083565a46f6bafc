/**
 * The MySQL side: migrations, the per-slice upserts, the watermark and the
 * flush lock. SQL text is fixed and values travel as parameters, with one
 * exception: the counts upsert, whose VALUES text is built here from values
 * checked to be plain integers (see upsertCountsSql).
 */
import mysql, { type Pool, type PoolConnection, type RowDataPacket } from 'mysql2/promise';
import type { CountRows } from '../domain/counts.ts';
import { isU64Decimal } from '../domain/u64.ts';
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
  /** Rows per multi-row upsert statement. */
  rowsPerStatement?: number;
}

export type SliceStatus = 'flushed' | 'incomplete' | 'lost' | 'corrupt' | 'saturated';

export interface SliceRecord {
  status: SliceStatus;
  rows: number;
  pairsMissing: number;
  chunksMissing: number;
  events: bigint | null;
  late: bigint;
  sumsSaturated: number;
  corruptItems: number;
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
  /** Table names, prefixed. */
  readonly tables: Tables;
  /** The most rows one upsert may carry (the flush reads memcached in batches of this size). */
  readonly rowsPerStatement: number;
  /** SQL statements issued since start (benchmarks and tests count them). */
  statements = 0;

  constructor(options: StoreOptions) {
    // DATETIME columns hold UTC: the session time zone is pinned so nothing shifts them.
    this.pool = mysql.createPool({
      uri: options.url, timezone: 'Z', connectionLimit: 4, supportBigNumbers: true, bigNumberStrings: true, dateStrings: false, queryFormat: formatQuery,
    });
    this.pool.on('connection', (c) => c.query("SET time_zone = '+00:00'"));
    const p = options.tablePrefix;
    this.tables = { counts: `${p}counts`, slices: `${p}slices`, state: `${p}state`, dead: `${p}dead_letters`, migrations: `${p}migrations`, hourly: `${p}counts_hourly`, daily: `${p}counts_daily`,
      watches: `${p}watches`, watched: `${p}watched_events`, actions: `${p}actions`, series: `${p}action_series`,
    };
    this.rowsPerStatement = options.rowsPerStatement ?? DEFAULT_ROWS_PER_STATEMENT;
    if (!Number.isSafeInteger(this.rowsPerStatement) || this.rowsPerStatement < 1) throw new RangeError(`rowsPerStatement must be a whole number >= 1, not ${options.rowsPerStatement}`);
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
   * streams the rows through `write`, one multi-row upsert per call, and
   * returns the record, written last; nothing is visible until the COMMIT,
   * and any failure rolls the whole slice back.
   */
  async writeSlice(sliceStart: Date, fill: (write: (rows: CountRows) => Promise<void>) => Promise<SliceRecord>): Promise<SliceRecord> {
    const conn = await this.pool.getConnection();
    try {
      await this.run(conn, 'START TRANSACTION');
      const record = await fill(async (rows) => {
        if (rows.length === 0) return;
        if (rows.length > this.rowsPerStatement) throw new RangeError(`${rows.length} rows in one upsert; at most ${this.rowsPerStatement}`);
        await this.run(conn, upsertCountsSql(this.tables.counts, sliceStart, rows));
      });
      await this.run(
        conn,
        `INSERT INTO \`${this.tables.slices}\` (slice_start, status, row_count, pairs_missing, chunks_missing, events, late, sums_saturated, corrupt_items, note, flushed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NOW(3))
         ON DUPLICATE KEY UPDATE status = VALUES(status), row_count = VALUES(row_count), pairs_missing = VALUES(pairs_missing),
           chunks_missing = VALUES(chunks_missing), events = VALUES(events), late = VALUES(late), sums_saturated = VALUES(sums_saturated),
           corrupt_items = VALUES(corrupt_items), note = VALUES(note), flushed_at = VALUES(flushed_at)`,
        [
          sliceStart, record.status, record.rows, record.pairsMissing, record.chunksMissing, record.events?.toString() ?? null, record.late.toString(),
          record.sumsSaturated, record.corruptItems, record.note.slice(0, 1024),
        ],
      );
      await this.run(conn, 'COMMIT');
      return record;
    } catch (err) {
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
export function upsertCountsSql(table: string, sliceStart: Date, rows: CountRows): string {
  const at = `'${sqlDateTime(sliceStart)}'`;
  const { users, actions, counts, valueSums } = rows;
  let values = '';
  for (let i = 0; i < rows.length; i++) {
    const user = users[i]!;
    const action = actions[i]!;
    const count = counts[i]!;
    const sum = valueSums[i]!;
    if (!isU64Decimal(user)) throw new StoreValueError(`row ${i}: user id ${JSON.stringify(user)} is not an unsigned 64-bit integer`);
    if (!Number.isInteger(action) || action < 1 || action > 0xffff) throw new StoreValueError(`row ${i}: action id ${action} is not an integer 1–65535`);
    if (!isU64Decimal(count)) throw new StoreValueError(`row ${i}: count ${JSON.stringify(count)} is not an unsigned 64-bit integer`);
    if (!isU64Decimal(sum)) throw new StoreValueError(`row ${i}: value sum ${JSON.stringify(sum)} is not an unsigned 64-bit integer`);
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
