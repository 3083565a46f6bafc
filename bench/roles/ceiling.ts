/**
 * Bench role: the database's ceiling, measured on the rows the flush just
 * wrote (the same run's workload, regenerated from its seed), with every way
 * of putting them into a table shaped like ol_counts that issue 13 names:
 *
 *   - multi-row upserts of 1,000 and 5,000 rows per statement;
 *   - LOAD DATA LOCAL INFILE … REPLACE, streamed as mysql2 does it for the flush;
 *   - LOAD DATA into a staging (temporary) table, then one
 *     INSERT … SELECT … ON DUPLICATE KEY UPDATE;
 *   - two connections writing disjoint key ranges at once (two transactions
 *     per slice, so not atomic: a reference, not a candidate);
 *   - rows in register order (the order workers first met the pairs, which
 *     is how memcached lists them) versus in primary-key order.
 *
 * Every method writes both slices, one transaction per slice as the flush
 * does, into a fresh table; SQL text is built before the clock starts, so
 * the figure is MariaDB's (and the wire's), not JavaScript's. The order of
 * the methods rotates from run to run, so no method always follows the same
 * one (InnoDB keeps flushing the previous method's pages for a while).
 */
import mysql from 'mysql2/promise';
import { Readable } from 'node:stream';
import type { CountRows } from '../../lib/domain/counts.ts';
import { countsTsv, sqlDateTime, upsertCountsSql } from '../../lib/flush/store.ts';
import { expectedTotals, generate, workloadSpecs, type WorkloadName } from '../workloads.ts';
import { config, params, runRole, send, waitForGo } from './common.ts';

export interface CeilingParams {
  workload: WorkloadName;
  quick: boolean;
  sliceSeconds: number;
  baseMs: number;
  /** The run's counts table: the shape to copy. */
  countsTable: string;
  /** Which method goes first (rotates with the run number). */
  rotate: number;
}

export interface CeilingMethod {
  name: string;
  /** One transaction per slice on one connection: a candidate for the flush. */
  atomic: boolean;
  rows: number;
  ms: number;
  rowsPerSecond: number;
}

type Order = 'register' | 'key';
interface SliceRows { start: Date; register: CountRows; key: CountRows }

/** A method: `prepare` builds a slice's text off the clock; `write` sends it, on the clock. */
interface Method {
  name: string;
  atomic: boolean;
  prepare(table: string, s: SliceRows): (string | Buffer)[];
  write(conns: mysql.Connection[], table: string, text: (string | Buffer)[]): Promise<void>;
}

const tsv = (s: SliceRows, rows: CountRows): Buffer => Buffer.from(countsTsv(sqlDateTime(s.start), rows), 'latin1');
const upserts = (table: string, s: SliceRows, rows: CountRows, per: number): string[] => batches(rows, per).map((b) => upsertCountsSql(table, s.start, b));

function upsertMethod(per: number, order: Order): Method {
  return {
    name: `upsert, ${per.toLocaleString('en-US')} rows/statement, ${order} order`,
    atomic: true,
    prepare: (table, s) => upserts(table, s, s[order], per),
    write: (conns, _table, text) => txn(conns[0]!, async (c) => {
      for (const sql of text) await c.query(sql as string);
    }),
  };
}

function loadMethod(order: Order): Method {
  return {
    name: `LOAD DATA LOCAL … REPLACE, ${order} order`,
    atomic: true,
    prepare: (_table, s) => [tsv(s, s[order])],
    write: (conns, table, [text]) => txn(conns[0]!, (c) => loadInto(c, table, text as Buffer)),
  };
}

function stagingMethod(order: Order): Method {
  return {
    name: `staging table + INSERT … SELECT … ON DUPLICATE KEY, ${order} order`,
    atomic: true,
    prepare: (_table, s) => [tsv(s, s[order])],
    write: async (conns, table, [text]) => {
      const c = conns[0]!;
      await c.query('DROP TEMPORARY TABLE IF EXISTS ceiling_staging');
      await c.query(`CREATE TEMPORARY TABLE ceiling_staging (slice_start DATETIME NOT NULL, user_id BIGINT UNSIGNED NOT NULL,
        action_id SMALLINT UNSIGNED NOT NULL, count BIGINT UNSIGNED NOT NULL, value_sum BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB`);
      await txn(c, async () => {
        await loadInto(c, 'ceiling_staging', text as Buffer, '');
        await c.query(`INSERT INTO \`${table}\` ${COLUMNS} SELECT slice_start, user_id, action_id, count, value_sum FROM ceiling_staging
          ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`);
      });
    },
  };
}

/** Two connections at once, each a transaction over half the key range: not atomic (two commits). */
function twoConnectionsMethod(how: 'upsert' | 'load'): Method {
  const halves = (s: SliceRows): CountRows[] => {
    const half = Math.ceil(s.key.length / 2);
    return [slice(s.key, 0, half), slice(s.key, half, s.key.length)];
  };
  return {
    name: `2 connections, disjoint key ranges, ${how === 'load' ? 'LOAD DATA' : 'upsert 5,000'}, key order (not atomic)`,
    atomic: false,
    prepare: (table, s) => halves(s).map((h) => (how === 'load' ? tsv(s, h) : upserts(table, s, h, 5000).join('\u0000'))),
    write: (conns, table, text) => Promise.all(text.map((t, i) => txn(conns[i]!, async (c) => {
      if (how === 'load') await loadInto(c, table, t as Buffer);
      else for (const sql of (t as string).split('\u0000')) await c.query(sql);
    }))).then(() => undefined),
  };
}

const METHODS: Method[] = [
  upsertMethod(1000, 'register'),
  upsertMethod(5000, 'register'),
  upsertMethod(5000, 'key'),
  loadMethod('register'),
  loadMethod('key'),
  stagingMethod('register'),
  stagingMethod('key'),
  twoConnectionsMethod('upsert'),
  twoConnectionsMethod('load'),
];

const COLUMNS = '(slice_start, user_id, action_id, count, value_sum)';

async function txn(c: mysql.Connection, fn: (c: mysql.Connection) => Promise<void>): Promise<void> {
  await c.query('START TRANSACTION');
  try {
    await fn(c);
    await c.query('COMMIT');
  } catch (err) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw err;
  }
}

async function loadInto(c: mysql.Connection, table: string, text: Buffer, mode = 'REPLACE'): Promise<void> {
  const sql = `LOAD DATA LOCAL INFILE 'ceiling' ${mode} INTO TABLE \`${table}\` CHARACTER SET ascii FIELDS TERMINATED BY '\\t' ESCAPED BY '' LINES TERMINATED BY '\\n' ${COLUMNS}`;
  // Streamed in 64 KiB pieces, as a flush's batches would arrive.
  const stream = Readable.from((function* () {
    for (let o = 0; o < text.length; o += 65536) yield text.subarray(o, o + 65536);
  })());
  await c.query({ sql, infileStreamFactory: () => stream });
}

function slice(rows: CountRows, from: number, to: number): CountRows {
  return { length: to - from, users: rows.users.slice(from, to), actions: rows.actions.slice(from, to), counts: rows.counts.slice(from, to), valueSums: rows.valueSums.slice(from, to) };
}

function batches(rows: CountRows, per: number): CountRows[] {
  const out: CountRows[] = [];
  for (let i = 0; i < rows.length; i += per) out.push(slice(rows, i, Math.min(rows.length, i + per)));
  return out;
}

runRole(async () => {
  const p = params<CeilingParams>();
  const cfg = config();
  const spec = workloadSpecs(p.quick).find((s) => s.name === p.workload)!;
  const expected = expectedTotals(generate(spec, p.sliceSeconds));
  const sliceMs = p.sliceSeconds * 1000;
  // Rows per slice in register order: the order in which the workload first meets each pair.
  const register: CountRows[] = [0, 1].map(() => ({ length: 0, users: [], actions: [], counts: [], valueSums: [] }));
  for (const [key, i] of expected.index) {
    const action = key % 65536;
    const rest = (key - action) / 65536;
    const user = rest % 2 ** 26;
    const r = register[(rest - user) / 2 ** 26]!;
    r.users.push(String(user));
    r.actions.push(action);
    r.counts.push(String(expected.count[i]));
    r.valueSums.push(String(expected.valueSum[i]));
  }
  const slices: SliceRows[] = register.map((r, s) => {
    r.length = r.users.length;
    const order = Array.from({ length: r.length }, (_, i) => i).sort((a, b) => Number(r.users[a]) - Number(r.users[b]) || r.actions[a]! - r.actions[b]!);
    const key: CountRows = { length: r.length, users: order.map((i) => r.users[i]!), actions: order.map((i) => r.actions[i]!), counts: order.map((i) => r.counts[i]!), valueSums: order.map((i) => r.valueSums[i]!) };
    return { start: new Date(p.baseMs + s * sliceMs), register: r, key };
  });
  const rows = expected.pairs;
  const conns = await Promise.all([0, 1].map(() => mysql.createConnection({ uri: cfg.mysqlUrl, timezone: 'Z' })));
  for (const c of conns) await c.query("SET time_zone = '+00:00'");

  send({ type: 'ready' });
  await waitForGo();
  const results: CeilingMethod[] = [];
  const order = METHODS.map((_, i) => METHODS[(i + p.rotate) % METHODS.length]!);
  for (const [k, m] of order.entries()) {
    send({ type: 'progress', done: k, total: METHODS.length, method: m.name });
    const table = `${p.countsTable}_ceiling`;
    await conns[0]!.query(`DROP TABLE IF EXISTS \`${table}\``);
    await conns[0]!.query(`CREATE TABLE \`${table}\` LIKE \`${p.countsTable}\``);
    // Both slices' text, built now, off the clock.
    const text = slices.map((s) => m.prepare(table, s));
    const t0 = performance.now();
    for (const t of text) await m.write(conns, table, t);
    const ms = performance.now() - t0;
    const [[counted]] = (await conns[0]!.query(`SELECT COUNT(*) AS n FROM \`${table}\``)) as unknown as [[{ n: number }]];
    if (Number(counted!.n) !== rows) throw new Error(`${m.name}: ${counted!.n} rows in the table, expected ${rows}`);
    await conns[0]!.query(`DROP TABLE \`${table}\``);
    results.push({ name: m.name, atomic: m.atomic, rows, ms: Math.round(ms), rowsPerSecond: Math.round(rows / (ms / 1000)) });
  }
  await Promise.all(conns.map((c) => c.end()));
  // Reported in the fixed order, whatever order they ran in.
  results.sort((a, b) => METHODS.findIndex((m) => m.name === a.name) - METHODS.findIndex((m) => m.name === b.name));
  return { methods: results };
});
