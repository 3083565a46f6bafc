/**
 * The schema, as numbered migrations applied in order and recorded in
 * `{prefix}migrations`. A migration is never edited once released: a change
 * is a new migration at the end of the list. Each runs as one statement where
 * it can (an ALTER with several clauses is atomic in InnoDB), so a crash
 * leaves a migration either applied or not.
 *
 * Version 1 is the schema as it was before migrations were numbered, written
 * with IF NOT EXISTS: a database created then is taken up without change.
 */
export interface Tables {
  counts: string;
  slices: string;
  state: string;
  dead: string;
  migrations: string;
  hourly: string;
  daily: string;
  watches: string;
  watched: string;
  /** Action names (`offlog actions set 1 logon`), shown wherever an action id is. */
  actions: string;
  /** Per-action totals per slice, hour and day: what a series reads (see rollup.ts). */
  series: string;
  /** Weekly rollup (weeks from Monday, UTC): top users' sorted lists over long ranges (see rollup.ts, report/top.ts). */
  weekly: string;
}

export interface Migration {
  version: number;
  name: string;
  statements(t: Tables): string[];
}

/** A table of totals per (time bucket, user, action): the 10-minute counts and their rollups share one shape. */
function countsTable(name: string, bucket: string, type: 'DATETIME' | 'DATE'): string {
  return `CREATE TABLE IF NOT EXISTS \`${name}\` (
        ${bucket} ${type} NOT NULL COMMENT 'UTC',
        user_id BIGINT UNSIGNED NOT NULL,
        action_id SMALLINT UNSIGNED NOT NULL,
        count BIGINT UNSIGNED NOT NULL,
        value_sum BIGINT UNSIGNED NOT NULL,
        PRIMARY KEY (${bucket}, user_id, action_id)
      ) ENGINE=InnoDB`;
}

/** The Monday (UTC) starting the week of a DATE column: the weekly rollup's bucket. */
export const WEEK_OF = (column: string): string => `(${column} - INTERVAL WEEKDAY(${column}) DAY)`;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'counts, slices, state, dead letters',
    statements: (t) => [
      countsTable(t.counts, 'slice_start', 'DATETIME'),
      `CREATE TABLE IF NOT EXISTS \`${t.slices}\` (
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
      `CREATE TABLE IF NOT EXISTS \`${t.state}\` (
        name VARCHAR(128) NOT NULL PRIMARY KEY,
        value VARCHAR(255) NOT NULL
      ) ENGINE=InnoDB`,
      `CREATE TABLE IF NOT EXISTS \`${t.dead}\` (
        id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
        received_at DATETIME(3) NOT NULL,
        function_name VARCHAR(64) NOT NULL,
        job_unique VARCHAR(255) NOT NULL,
        error TEXT NOT NULL,
        payload MEDIUMBLOB NOT NULL
      ) ENGINE=InnoDB`,
    ],
  },
  {
    version: 2,
    name: 'slices: `rows` (a reserved word) becomes row_count; corrupt and saturated slices',
    statements: (t) => [
      `ALTER TABLE \`${t.slices}\`
        CHANGE \`rows\` row_count INT UNSIGNED NOT NULL,
        MODIFY status ENUM('flushed','incomplete','lost','corrupt','saturated') NOT NULL,
        ADD COLUMN sums_saturated INT UNSIGNED NOT NULL DEFAULT 0 AFTER late,
        ADD COLUMN corrupt_items INT UNSIGNED NOT NULL DEFAULT 0 AFTER sums_saturated,
        MODIFY note VARCHAR(1024) NOT NULL DEFAULT ''`,
    ],
  },
  {
    version: 3,
    name: 'hourly and daily rollups of the 10-minute counts',
    statements: (t) => [
      countsTable(t.hourly, 'hour_start', 'DATETIME'),
      countsTable(t.daily, 'day_start', 'DATE'),
    ],
  },
  // Version 5 is the reports' (built in parallel); 4 is the bus's.
  {
    version: 4,
    name: 'the bus: slice outbox (published_at), watch lists, watched raw events',
    // MariaDB's IF NOT EXISTS makes the ALTER safe to re-run: the UPDATE after it
    // cannot share its statement, and a crash between the two must not wedge the migration.
    statements: (t) => [
      `ALTER TABLE \`${t.slices}\`
        ADD COLUMN IF NOT EXISTS published_at DATETIME(3) NULL DEFAULT NULL COMMENT 'UTC; NULL: SliceFlushed not yet on the bus (the outbox)',
        ADD INDEX IF NOT EXISTS unpublished (published_at, slice_start)`,
      // Slices flushed before the bus existed are not news: only slices flushed from now on are published.
      `UPDATE \`${t.slices}\` SET published_at = flushed_at WHERE published_at IS NULL`,
      `CREATE TABLE IF NOT EXISTS \`${t.watches}\` (
        kind ENUM('user','action') NOT NULL,
        id BIGINT UNSIGNED NOT NULL,
        added_at DATETIME(3) NOT NULL,
        PRIMARY KEY (kind, id)
      ) ENGINE=InnoDB`,
      `CREATE TABLE IF NOT EXISTS \`${t.watched}\` (
        id VARCHAR(200) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY COMMENT 'job unique # index: stable across redeliveries',
        at DATETIME(3) NOT NULL COMMENT 'UTC, the event''s time',
        user_id BIGINT UNSIGNED NOT NULL,
        action_id SMALLINT UNSIGNED NOT NULL,
        value BIGINT UNSIGNED NOT NULL,
        payload TEXT CHARACTER SET utf8mb4 NULL,
        reasons SET('explicit','user','action') NOT NULL,
        received_at DATETIME(3) NOT NULL COMMENT 'when first stored',
        deliveries SMALLINT UNSIGNED NOT NULL DEFAULT 1 COMMENT 'times the record reached the table (redeliveries are stored once)',
        published_at DATETIME(3) NULL DEFAULT NULL COMMENT 'NULL: ActivityWatched not yet on the bus',
        INDEX unpublished (published_at, received_at),
        INDEX by_time (at),
        INDEX by_user (user_id, at),
        INDEX by_action (action_id, at)
      ) ENGINE=InnoDB`,
    ],
  },
  {
    version: 5,
    name: 'reports: action names, per-action series, rollup indexes for top users and timelines',
    statements: (t) => [
      `CREATE TABLE IF NOT EXISTS \`${t.actions}\` (
        action_id SMALLINT UNSIGNED NOT NULL PRIMARY KEY,
        name VARCHAR(64) NOT NULL,
        updated_at DATETIME(3) NOT NULL
      ) ENGINE=InnoDB`,
      // One row per (action, step, bucket): a 30-day series is one short primary-key range,
      // whatever the number of users. \`users\` = distinct users of the action in the bucket.
      `CREATE TABLE IF NOT EXISTS \`${t.series}\` (
        action_id SMALLINT UNSIGNED NOT NULL,
        step ENUM('slice','hour','day') NOT NULL,
        bucket DATETIME NOT NULL COMMENT 'UTC',
        count BIGINT UNSIGNED NOT NULL,
        value_sum BIGINT UNSIGNED NOT NULL,
        users INT UNSIGNED NOT NULL,
        PRIMARY KEY (action_id, step, bucket)
      ) ENGINE=InnoDB`,
      // Top users read each hour's and each day's users of an action busiest first (by_action_count,
      // scanned backwards), then the exact totals of the few candidates (by_action_user: one short
      // range per user). One user's timeline reads by_action_user too, one range per action.
      // Both indexes cover their queries: the table itself is not read.
      `ALTER TABLE \`${t.hourly}\`
        ADD INDEX IF NOT EXISTS by_action_count (action_id, hour_start, count, user_id),
        ADD INDEX IF NOT EXISTS by_action_user (action_id, user_id, hour_start, count, value_sum)`,
      `ALTER TABLE \`${t.daily}\`
        ADD INDEX IF NOT EXISTS by_action_count (action_id, day_start, count, user_id),
        ADD INDEX IF NOT EXISTS by_action_user (action_id, user_id, day_start, count, value_sum)`,
    ],
  },
  {
    version: 6,
    name: 'weekly rollup: top users over a month read ~5 sorted lists, not ~31',
    // Filled here from the daily rows already there (a rollup from now on writes only the pairs it touches,
    // so a week rolled up before this migration would otherwise stay empty); the upsert makes a re-run harmless.
    statements: (t) => [
      countsTable(t.weekly, 'week_start', 'DATE'),
      `ALTER TABLE \`${t.weekly}\`
        ADD INDEX IF NOT EXISTS by_action_count (action_id, week_start, count, user_id)`,
      `INSERT INTO \`${t.weekly}\` (week_start, user_id, action_id, count, value_sum)
       SELECT ${WEEK_OF('day_start')}, user_id, action_id, LEAST(SUM(count), 18446744073709551615), LEAST(SUM(value_sum), 18446744073709551615)
       FROM \`${t.daily}\` GROUP BY 1, user_id, action_id
       ON DUPLICATE KEY UPDATE count = VALUES(count), value_sum = VALUES(value_sum)`,
    ],
  },
  {
    version: 7,
    name: 'slices: maybe-duplicated, with the bound on the events counted twice',
    statements: (t) => [
      `ALTER TABLE \`${t.slices}\`
        MODIFY status ENUM('flushed','incomplete','lost','corrupt','saturated','maybe-duplicated') NOT NULL,
        ADD COLUMN IF NOT EXISTS duplicate_bound BIGINT UNSIGNED NOT NULL DEFAULT 0
          COMMENT 'events of folds that may have written here and did not commit: at most this many counted twice' AFTER corrupt_items`,
    ],
  },
  {
    version: 8,
    name: 'slices: rolled_up_at, what the rollups hold (published_at only says EventBridge took the event)',
    // Slices from before are left NULL, whether or not a subscriber rolled them up: nothing recorded it, and
    // the flush's repair recomputes them (idempotent) a few days a run, oldest first, as it does any slice left behind.
    statements: (t) => [
      `ALTER TABLE \`${t.slices}\`
        ADD COLUMN IF NOT EXISTS rolled_up_at DATETIME(3) NULL DEFAULT NULL COMMENT 'UTC; NULL: the hourly, daily and weekly rollups do not hold this slice yet',
        ADD INDEX IF NOT EXISTS not_rolled_up (rolled_up_at, slice_start)`,
    ],
  },
];
