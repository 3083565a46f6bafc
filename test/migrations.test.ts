/**
 * Upgrading a database an older OffLog left behind: its schema as it was
 * before migrations were numbered (no migrations table, `rows` in the slices
 * table), holding data. `migrate()` must bring it up to date without losing
 * or changing a row, and then have nothing left to do.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { MIGRATIONS } from '../lib/flush/migrations.ts';
import { testRuntime } from './support.ts';

/** What `Store.migrate()` ran before migrations were numbered (lib/store.ts at 7e3780a^), frozen here on purpose. */
const OLD_SCHEMA = (p: string): string[] => [
  `CREATE TABLE IF NOT EXISTS \`${p}counts\` (
    slice_start DATETIME NOT NULL COMMENT 'UTC',
    user_id BIGINT UNSIGNED NOT NULL,
    action_id SMALLINT UNSIGNED NOT NULL,
    count BIGINT UNSIGNED NOT NULL,
    value_sum BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (slice_start, user_id, action_id)
  ) ENGINE=InnoDB`,
  `CREATE TABLE IF NOT EXISTS \`${p}slices\` (
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
  `CREATE TABLE IF NOT EXISTS \`${p}state\` (
    name VARCHAR(128) NOT NULL PRIMARY KEY,
    value VARCHAR(255) NOT NULL
  ) ENGINE=InnoDB`,
  `CREATE TABLE IF NOT EXISTS \`${p}dead_letters\` (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    received_at DATETIME(3) NOT NULL,
    function_name VARCHAR(64) NOT NULL,
    job_unique VARCHAR(255) NOT NULL,
    error TEXT NOT NULL,
    payload MEDIUMBLOB NOT NULL
  ) ENGINE=InnoDB`,
];

test('migrate() upgrades a database at the old schema, holding data: every row survives, `rows` becomes row_count', async (t) => {
  const rt = testRuntime();
  t.after(() => rt.close());
  const p = rt.config.tablePrefix;
  const pool = rt.store.pool;
  const q = async (sql: string, params?: unknown[]) => (await pool.query<RowDataPacket[]>(sql, params))[0];
  for (const sql of OLD_SCHEMA(p)) await q(sql);

  // Data as the old OffLog wrote it: counts up to 2^64 - 1, slices of each status (the old `rows` column among them), state, a binary dead letter.
  const counts: [string, string, number, string, string][] = [];
  for (let s = 0; s < 3; s++) {
    for (let u = 0; u < 500; u++) counts.push([`2026-01-01 00:${String(s * 10).padStart(2, '0')}:00`, String(u * 7919), 1 + (u % 5), String(u + 1), String(u * 3)]);
  }
  counts.push(['2026-01-01 00:30:00', '18446744073709551615', 65535, '18446744073709551615', '18446744073709551615']);
  await q(`INSERT INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum) VALUES ?`, [counts]);
  await q(`INSERT INTO \`${p}slices\` (slice_start, status, \`rows\`, pairs_missing, chunks_missing, events, late, note, flushed_at) VALUES ?`, [[
    ['2026-01-01 00:00:00', 'flushed', 500, 0, 0, '125250', '0', '', '2026-01-01 00:20:01.123'],
    ['2026-01-01 00:10:00', 'incomplete', 500, 7, 1, null, '12', 'memcached restarted', '2026-01-01 00:30:02.000'],
    ['2026-01-01 00:20:00', 'flushed', 4294967295, 0, 0, '18446744073709551615', '18446744073709551615', '', '2026-01-01 00:40:00.999'],
    ['2026-01-01 00:30:00', 'lost', 0, 0, 0, null, '0', 'left the ring before a flush: 00:30-00:50', '2026-01-01 01:00:00.000'],
  ]]);
  await q(`INSERT INTO \`${p}state\` (name, value) VALUES ('memcached:127.0.0.1:11211', '1234:1767225600')`);
  const payload = Buffer.from([0xff, 0x00, 0xfe, 0x0d, 0x0a, 0x27, 0x5c]);
  await q(`INSERT INTO \`${p}dead_letters\` (received_at, function_name, job_unique, error, payload) VALUES ('2026-01-01 00:05:00.250', 'offlog.batch', 'u-1', 'offlog.batch: is not valid JSON', ?)`, [payload]);

  const snapshot = async (table: string, order: string, columns = '*') => q(`SELECT ${columns} FROM \`${p}${table}\` ORDER BY ${order}`);
  const before = {
    counts: await snapshot('counts', 'slice_start, user_id, action_id'),
    state: await snapshot('state', 'name'),
    dead: await snapshot('dead_letters', 'id'),
    slices: await snapshot('slices', 'slice_start', 'slice_start, status, `rows` AS row_count, pairs_missing, chunks_missing, events, late, note, flushed_at'),
  };
  assert.equal(before.counts.length, 1501);

  const versions = MIGRATIONS.map((m) => m.version);
  assert.deepEqual(versions, Array.from({ length: versions.length }, (_, i) => i + 1), 'migrations are numbered 1..N');
  assert.deepEqual(await rt.store.migrate(), versions, 'a database from before numbered migrations gets every one, version 1 as a no-op');

  assert.deepEqual(await snapshot('counts', 'slice_start, user_id, action_id'), before.counts);
  assert.deepEqual(await snapshot('state', 'name'), before.state);
  assert.deepEqual(await snapshot('dead_letters', 'id'), before.dead);
  assert.ok((before.dead[0]!.payload as Buffer).equals(payload));
  const slices = await snapshot('slices', 'slice_start');
  assert.deepEqual(
    slices.map(({ sums_saturated: _s, corrupt_items: _c, published_at: _p, duplicate_bound: _d, rolled_up_at: _r, ...rest }) => rest),
    before.slices.map((r) => ({ ...r })),
    'every slice row, `rows` now under row_count',
  );
  assert.deepEqual(slices.map((r) => [r.sums_saturated, r.corrupt_items, String(r.duplicate_bound)]), slices.map(() => [0, 0, '0']));
  // Migration 4 (the bus's outbox) takes slices flushed before it as published: history is not replayed.
  assert.deepEqual(slices.map((r) => r.published_at), slices.map((r) => r.flushed_at));
  // Migration 7: nothing recorded which slices a subscriber rolled up, so all wait for the flush's repair (idempotent).
  assert.deepEqual(slices.map((r) => r.rolled_up_at), slices.map(() => null));
  assert.deepEqual(
    (await q(`SELECT status, row_count FROM \`${p}slices\` ORDER BY slice_start`)).map((r) => [r.status, Number(r.row_count)]),
    [['flushed', 500], ['incomplete', 500], ['flushed', 4294967295], ['lost', 0]],
  );
  const columns = (await q(`SHOW COLUMNS FROM \`${p}slices\``)).map((r) => r.Field as string);
  assert.ok(!columns.includes('rows') && columns.includes('row_count'), columns.join(', '));
  // Statuses added by migration 2 are accepted; the watermark reads as before.
  await q(`INSERT INTO \`${p}slices\` (slice_start, status, row_count, pairs_missing, chunks_missing, events, late, note, flushed_at) VALUES ('2026-01-01 00:40:00', 'corrupt', 1, 0, 0, 1, 0, 'x', NOW(3))`);
  assert.equal((await rt.store.watermark())?.toISOString(), '2026-01-01T00:40:00.000Z');
  // And migration 7's, with its bound.
  await q(`INSERT INTO \`${p}slices\` (slice_start, status, row_count, pairs_missing, chunks_missing, events, late, duplicate_bound, note, flushed_at) VALUES ('2026-01-01 00:50:00', 'maybe-duplicated', 1, 0, 0, 1, 0, 8000, 'x', NOW(3))`);
  assert.equal((await rt.store.watermark())?.toISOString(), '2026-01-01T00:50:00.000Z');
  // Migration 3's tables exist and are empty.
  const rollups = await q(`SELECT COUNT(*) AS n FROM \`${p}counts_hourly\` UNION ALL SELECT COUNT(*) FROM \`${p}counts_daily\``);
  assert.deepEqual(rollups.map((r) => Number(r.n)), [0, 0]);

  assert.deepEqual(await rt.store.migrate(), [], 'a second migrate applies nothing');
  const recorded = await q(`SELECT version, name FROM \`${p}migrations\` ORDER BY version`);
  assert.deepEqual(recorded.map((r) => [r.version, r.name]), MIGRATIONS.map((m) => [m.version, m.name]));
});
