/**
 * What the flush has left undone after its counts are in: slices whose
 * `SliceFlushed` EventBridge has not taken, slices the rollups do not hold
 * yet, and whether publishing keeps failing. The outbox records its failures
 * here (in the state table) and `offlog status` and the health card read
 * them back, so a publish that has failed since the morning — an `events`
 * VPC endpoint missing, say, where every PutEvents times out — is one line
 * an operator can see, not a log line among thousands.
 */
import type { RowDataPacket } from 'mysql2/promise';
import type { Store } from './store.ts';

const FAILING_SINCE = 'outbox.failing_since';
const FAILED_RUNS = 'outbox.failed_runs';
const LAST_ERROR = 'outbox.last_error';

export interface Backlog {
  /** Slices EventBridge has not taken (always all of them when no bus is configured: nothing is published). */
  unpublished: number;
  oldestUnpublished: string | null;
  /** Consecutive outbox runs that failed to publish something; 0 once one publishes everything it tried. */
  publishFailedRuns: number;
  /** When the current run of failures began, and the last failure's reason. */
  publishFailingSince: string | null;
  lastPublishError: string | null;
  /** Slices whose hours the rollups do not hold yet, and the flush time of the oldest (the repair takes those older than its grace). */
  notRolledUp: number;
  oldestNotRolledUp: string | null;
  oldestNotRolledUpFlushedAt: string | null;
}

/** After an outbox run that tried to publish: a failure extends the current run of failures, a clean run ends it. */
export async function recordPublishOutcome(store: Store, failed: number, error: string | undefined): Promise<void> {
  const t = store.tables.state;
  if (failed === 0 && error === undefined) {
    await store.pool.query(`DELETE FROM \`${t}\` WHERE name IN (?)`, [[FAILING_SINCE, FAILED_RUNS, LAST_ERROR]]);
    return;
  }
  const reason = (error ?? `${failed} slices not published`).slice(0, 255);
  await store.pool.query(
    `INSERT INTO \`${t}\` (name, value) VALUES (?, DATE_FORMAT(UTC_TIMESTAMP(), '%Y-%m-%dT%H:%i:%sZ')), (?, '1'), (?, ?)
     ON DUPLICATE KEY UPDATE value = CASE name WHEN ? THEN value WHEN ? THEN CAST(value AS UNSIGNED) + 1 ELSE VALUES(value) END`,
    [FAILING_SINCE, FAILED_RUNS, LAST_ERROR, reason, FAILING_SINCE, FAILED_RUNS],
  );
}

export async function readBacklog(store: Store): Promise<Backlog> {
  const t = store.tables;
  const [[published], [rolled], state] = await Promise.all([
    store.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n, MIN(slice_start) AS oldest FROM \`${t.slices}\` WHERE published_at IS NULL`).then(([r]) => r),
    store.pool.query<RowDataPacket[]>(
      `SELECT COUNT(*) AS n, MIN(slice_start) AS oldest, MIN(flushed_at) AS flushed FROM \`${t.slices}\` WHERE rolled_up_at IS NULL`,
    ).then(([r]) => r),
    store.pool.query<RowDataPacket[]>(`SELECT name, value FROM \`${t.state}\` WHERE name IN (?)`, [[FAILING_SINCE, FAILED_RUNS, LAST_ERROR]]).then(([r]) => r),
  ]);
  const value = (name: string): string | null => (state.find((r) => r.name === name)?.value as string | undefined) ?? null;
  const iso = (d: unknown): string | null => (d instanceof Date ? d.toISOString() : null);
  return {
    unpublished: Number(published?.n ?? 0),
    oldestUnpublished: iso(published?.oldest),
    publishFailedRuns: Number(value(FAILED_RUNS) ?? 0),
    publishFailingSince: value(FAILING_SINCE),
    lastPublishError: value(LAST_ERROR),
    notRolledUp: Number(rolled?.n ?? 0),
    oldestNotRolledUp: iso(rolled?.oldest),
    oldestNotRolledUpFlushedAt: iso(rolled?.flushed),
  };
}
