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
];
