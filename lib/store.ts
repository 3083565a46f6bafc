/**
 * The MySQL side: migrations, the per-slice upserts, the watermark and the
 * flush lock. All SQL text is fixed; every value travels as a parameter.
 */
import mysql, { type Pool, type PoolConnection, type RowDataPacket } from 'mysql2/promise';
import type { SliceContents } from './ring.ts';

export interface StoreOptions {
  url: string;
  tablePrefix: string;
  /** Rows per multi-row upsert statement. */
  rowsPerStatement?: number;
}

export type SliceStatus = 'flushed' | 'incomplete' | 'lost';

export interface SliceRecord {
  status: SliceStatus;
  rows: number;
  pairsMissing: number;
  chunksMissing: number;
  events: bigint | null;
  late: bigint;
  note: string;
}

export interface DeadLetter {
  fn: string;
  unique: string;
  error: string;
  payload: Buffer;
}

export class Store {
  readonly pool: Pool;
  private readonly t: { counts: string; slices: string; state: string; dead: string };
  private readonly rowsPerStatement: number;
  /** SQL statements issued since start (benchmarks and tests count them). */
  statements = 0;

  constructor(options: StoreOptions) {
    // DATETIME columns hold UTC: the session time zone is pinned so nothing shifts them.
    this.pool = mysql.createPool({ uri: options.url, timezone: 'Z', connectionLimit: 4, supportBigNumbers: true, bigNumberStrings: true, dateStrings: false });
    this.pool.on('connection', (c) => c.query("SET time_zone = '+00:00'"));
    const p = options.tablePrefix;
    this.t = { counts: `${p}counts`, slices: `${p}slices`, state: `${p}state`, dead: `${p}dead_letters` };
    this.rowsPerStatement = options.rowsPerStatement ?? 2000;
  }

  /** Idempotent: creates what is missing, changes nothing that exists. */
  async migrate(): Promise<void> {
    const { counts, slices, state, dead } = this.t;
    for (const sql of [
      `CREATE TABLE IF NOT EXISTS \`${counts}\` (
        slice_start DATETIME NOT NULL COMMENT 'UTC',
        user_id BIGINT UNSIGNED NOT NULL,
        action_id SMALLINT UNSIGNED NOT NULL,
        count BIGINT UNSIGNED NOT NULL,
        value_sum BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (slice_start, user_id, action_id)
      ) ENGINE=InnoDB`,
      `CREATE TABLE IF NOT EXISTS \`${slices}\` (
        slice_start DATETIME NOT NULL PRIMARY KEY COMMENT 'UTC; MAX() is the flush watermark',
        status ENUM('flushed','incomplete','lost') NOT NULL,
        \`rows\` INT UNSIGNED NOT NULL,
        pairs_missing INT UNSIGNED NOT NULL,
        chunks_missing INT UNSIGNED NOT NULL,
        events BIGINT UNSIGNED NULL,
        late BIGINT UNSIGNED NOT NULL,
        note VARCHAR(255) NOT NULL DEFAULT '',
        flushed_at DATETIME(3) NOT NULL
      ) ENGINE=InnoDB`,
      `CREATE TABLE IF NOT EXISTS \`${state}\` (
        name VARCHAR(128) NOT NULL PRIMARY KEY,
        value VARCHAR(255) NOT NULL
      ) ENGINE=InnoDB`,
      `CREATE TABLE IF NOT EXISTS \`${dead}\` (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        received_at DATETIME(3) NOT NULL,
        function_name VARCHAR(64) NOT NULL,
        job_unique VARCHAR(255) NOT NULL,
        error TEXT NOT NULL,
        payload MEDIUMBLOB NOT NULL
      ) ENGINE=InnoDB`,
    ]) {
      await this.query(sql);
    }
  }

  /** The last slice flushed (or given up as lost), or null before the first flush. */
  async watermark(): Promise<Date | null> {
    const [rows] = await this.query<RowDataPacket[]>(`SELECT MAX(slice_start) AS w FROM \`${this.t.slices}\``);
    return (rows[0]?.w as Date | null) ?? null;
  }

  /**
   * Writes one slice in one transaction: its rows (totals set, not added, so a
   * re-run changes nothing) and its record, which moves the watermark.
   */
  async writeSlice(sliceStart: Date, contents: SliceContents | null, record: SliceRecord): Promise<void> {
    const conn = await this.pool.getConnection();
    try {
      await this.run(conn, 'START TRANSACTION');
      const rows = contents?.rows ?? [];
      for (let i = 0; i < rows.length; i += this.rowsPerStatement) {
        const values = rows
          .slice(i, i + this.rowsPerStatement)
          .map((r) => [sliceStart, r.userId, r.actionId, r.count.toString(), r.valueSum.toString()]);
        await this.run(
          conn,
          `INSERT INTO \`${this.t.counts}\` (slice_start, user_id, action_id, count, value_sum) VALUES ?
           ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`,
          [values],
        );
      }
      await this.run(
        conn,
        `INSERT INTO \`${this.t.slices}\` (slice_start, status, \`rows\`, pairs_missing, chunks_missing, events, late, note, flushed_at)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, NOW(3))
         ON DUPLICATE KEY UPDATE status = VALUES(status), \`rows\` = VALUES(\`rows\`), pairs_missing = VALUES(pairs_missing),
           chunks_missing = VALUES(chunks_missing), events = VALUES(events), late = VALUES(late), note = VALUES(note), flushed_at = VALUES(flushed_at)`,
        [sliceStart, record.status, record.rows, record.pairsMissing, record.chunksMissing, record.events?.toString() ?? null, record.late.toString(), record.note.slice(0, 255)],
      );
      await this.run(conn, 'COMMIT');
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
    const name = `${this.t.slices}.flush`;
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
    const [rows] = await this.query<RowDataPacket[]>(`SELECT value FROM \`${this.t.state}\` WHERE name = ?`, [name]);
    return (rows[0]?.value as string | undefined) ?? null;
  }

  async setState(name: string, value: string): Promise<void> {
    await this.query(`INSERT INTO \`${this.t.state}\` (name, value) VALUES (?, ?) ON DUPLICATE KEY UPDATE value = VALUES(value)`, [name, value]);
  }

  async addDeadLetters(letters: readonly DeadLetter[]): Promise<void> {
    if (letters.length === 0) return;
    await this.query(`INSERT INTO \`${this.t.dead}\` (received_at, function_name, job_unique, error, payload) VALUES ?`, [
      letters.map((d) => [new Date(), d.fn.slice(0, 64), d.unique.slice(0, 255), d.error, d.payload]),
    ]);
  }

  async deadLetters(limit: number): Promise<{ id: number; receivedAt: Date; fn: string; unique: string; error: string; payload: Buffer }[]> {
    const [rows] = await this.query<RowDataPacket[]>(
      `SELECT id, received_at, function_name, job_unique, error, payload FROM \`${this.t.dead}\` ORDER BY id DESC LIMIT ?`,
      [limit],
    );
    return rows.map((r) => ({ id: Number(r.id), receivedAt: r.received_at, fn: r.function_name, unique: r.job_unique, error: r.error, payload: r.payload }));
  }

  async recentSlices(limit: number): Promise<RowDataPacket[]> {
    const [rows] = await this.query<RowDataPacket[]>(`SELECT * FROM \`${this.t.slices}\` ORDER BY slice_start DESC LIMIT ?`, [limit]);
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
