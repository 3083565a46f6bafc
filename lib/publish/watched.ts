/**
 * Watched events' raw records, from the worker to MySQL and the bus, on a
 * path of their own so that counting never waits for either:
 *
 *   worker ──offlog.watched (persistent Gearman queue)──▶ drain ──▶ {p}watched_events ──▶ ActivityWatched
 *
 * The worker queues a job's records before it stores the job's counts
 * (WatchedSender). The drain (WatchedDrain: `offlog watched`, the `watched`
 * function) takes them, stores them keyed by their stable id — a record
 * delivered twice is stored once — and only then acknowledges the job, so
 * MySQL being down only leaves jobs queued. Stored records are published
 * from the table (`published_at` NULL until EventBridge accepted them), so a
 * bus outage only leaves them unpublished for the next round: each is
 * published once, or more only when a crash falls between the put and the
 * mark (subscribers deduplicate on the id). Records older than
 * OFFLOG_WATCHED_RETENTION_DAYS are pruned in small batches.
 */
import { createHash } from 'node:crypto';
import type { ResultSetHeader, RowDataPacket } from 'mysql2/promise';
import { retry, sleep } from '../base/backoff.ts';
import { label, type HostPort } from '../base/config.ts';
import { GearmanUnavailableError, InputError } from '../base/errors.ts';
import type { Logger } from '../base/log.ts';
import { decodeWatchedJob, encodeWatchedJob, excerpt, FN_DEAD_LETTER, FN_WATCHED, type DeadLetterJob, type WatchedRecord, type WatchReason } from '../domain/contract.ts';
import { GearmanConnection, type Job } from '../wire/gearman.ts';
import type { Bus, BusEntry } from './bus.ts';
import { withNamedLock } from '../flush/outbox.ts';
import type { Store } from '../flush/store.ts';

/** Records per `offlog.watched` job: a fold of 16 × 5,000 watched events becomes jobs of a few hundred KB. */
export const RECORDS_PER_JOB = 1000;
/** gearmand refuses longer unique ids. */
const MAX_UNIQUE = 64;

/** The unique of the `offlog.watched` job carrying chunk `chunk` of `job`'s records: the same at every redelivery, so gearmand merges copies still queued. */
export function watchedUnique(job: Pick<Job, 'unique' | 'handle'>, chunk: number): string {
  const id = job.unique || `handle:${job.handle}`;
  const plain = `w${chunk}:${id}`;
  return plain.length <= MAX_UNIQUE ? plain : `w${chunk}:#${createHash('sha256').update(id).digest('base64url')}`;
}

/** The worker's side: queues records on the job's own gearmand, or on any other when that one is gone. */
export class WatchedSender {
  private readonly conns = new Map<string, GearmanConnection>();
  constructor(private readonly servers: readonly HostPort[]) {}

  async send(job: Job, records: readonly WatchedRecord[]): Promise<void> {
    for (let i = 0; i < records.length; i += RECORDS_PER_JOB) {
      await this.submit(job, watchedUnique(job, i / RECORDS_PER_JOB), encodeWatchedJob(records.slice(i, i + RECORDS_PER_JOB)));
    }
  }

  close(): void {
    for (const c of this.conns.values()) c.close();
    this.conns.clear();
  }

  private async submit(job: Job, unique: string, body: string): Promise<void> {
    const errors: string[] = [];
    if (job.conn.isOpen) {
      try {
        await job.conn.submitBackground(FN_WATCHED, body, unique, 'normal');
        return;
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    // The drain reads every server, so any of them will do.
    for (const server of [job.conn.server, ...this.servers.filter((s) => label(s) !== label(job.conn.server))]) {
      try {
        let conn = this.conns.get(label(server));
        if (!conn?.isOpen) this.conns.set(label(server), (conn = await GearmanConnection.connect(server)));
        await conn.submitBackground(FN_WATCHED, body, unique, 'normal');
        return;
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    throw new GearmanUnavailableError(`no gearmand took the watched records: ${errors.join('; ')}`);
  }
}

/** What an `ActivityWatched` event carries. */
export interface ActivityWatchedDetail {
  /** Stable: the carrying job's unique, '#', the event's index in it. */
  id: string;
  at: string;
  /** Decimal text: user ids are unsigned 64-bit. */
  userId: string;
  actionId: number;
  value: number;
  payload: string | null;
  reasons: WatchReason[];
}

const ROWS_PER_INSERT = 500;
const PUBLISH_PER_ROUND = 500;
const PRUNE_BATCH = 1000;

/** Stores records by id, once; returns how many were new. */
export async function storeWatched(store: Store, records: readonly WatchedRecord[], receivedAt: Date): Promise<number> {
  let inserted = 0;
  for (let i = 0; i < records.length; i += ROWS_PER_INSERT) {
    const rows = records.slice(i, i + ROWS_PER_INSERT).map((r) => [r.id, new Date(r.at), r.userId, r.actionId, r.value, r.payload ?? null, r.reasons.join(','), receivedAt]);
    // Not INSERT IGNORE: that would turn any other error into a warning. A copy only counts its delivery,
    // which also tells new rows from copies: mysql2 reports 1 affected row per insert and 2 per changed row.
    const [res] = await store.pool.query<ResultSetHeader>(
      `INSERT INTO \`${store.tables.watched}\` (id, at, user_id, action_id, value, payload, reasons, received_at) VALUES ?
       ON DUPLICATE KEY UPDATE deliveries = LEAST(deliveries + 1, 65535)`,
      [rows],
    );
    inserted += 2 * rows.length - res.affectedRows;
  }
  return inserted;
}

export interface PublishResult {
  published: number;
  failed: number;
  error?: string;
}

/** Publishes unpublished records, oldest first, until none is left or one fails; never throws. */
export async function publishWatched(store: Store, bus: Bus, log: Logger): Promise<PublishResult> {
  const result: PublishResult = { published: 0, failed: 0 };
  if (!bus.enabled) {
    await bus.put([]);
    return result;
  }
  const t = store.tables.watched;
  try {
    await withNamedLock(store.pool, `${t}.publish`, 0, async (conn) => {
      for (;;) {
        const [rows] = await conn.query<RowDataPacket[]>(
          `SELECT id, at, user_id, action_id, value, payload, reasons FROM \`${t}\` WHERE published_at IS NULL ORDER BY received_at, id LIMIT ?`,
          [PUBLISH_PER_ROUND],
        );
        if (rows.length === 0) return;
        const entries: BusEntry[] = rows.map((r) => {
          const detail: ActivityWatchedDetail = {
            id: String(r.id),
            at: (r.at as Date).toISOString(),
            userId: String(r.user_id),
            actionId: Number(r.action_id),
            value: Number(r.value),
            payload: (r.payload as string | null) ?? null,
            reasons: String(r.reasons).split(',') as WatchReason[],
          };
          return { detailType: 'ActivityWatched', id: detail.id, detail: JSON.stringify(detail) };
        });
        const put = await bus.put(entries);
        if (put.published.length > 0) {
          await conn.query(`UPDATE \`${t}\` SET published_at = NOW(3) WHERE published_at IS NULL AND id IN (?)`, [put.published]);
        }
        result.published += put.published.length;
        result.failed += put.failed.length;
        if (put.failed.length > 0) {
          result.error = put.failed[0]!.error;
          return;
        }
        if (rows.length < PUBLISH_PER_ROUND) return;
      }
    });
  } catch (err) {
    result.error = (err as Error).message;
  }
  if (result.error !== undefined) log.warn({ published: result.published, failed: result.failed, error: result.error }, 'ActivityWatched: not all published; trying again later');
  return result;
}

/**
 * Deletes records whose time is older than the retention, in batches of
 * 1,000 (short statements, short locks). A record still unpublished is kept
 * until it too arrived longer ago than that. Returns how many went.
 */
export async function pruneWatched(store: Store, retentionDays: number, now = Date.now()): Promise<number> {
  const cutoff = new Date(now - retentionDays * 86_400_000);
  let pruned = 0;
  for (;;) {
    const [res] = await store.pool.query<ResultSetHeader>(
      `DELETE FROM \`${store.tables.watched}\` WHERE at < ? AND (published_at IS NOT NULL OR received_at < ?) ORDER BY at LIMIT ${PRUNE_BATCH}`,
      [cutoff, cutoff],
    );
    pruned += res.affectedRows;
    if (res.affectedRows < PRUNE_BATCH) return pruned;
    await sleep(20);
  }
}

export interface WatchedDeps {
  gearmanServers: HostPort[];
  store: Store;
  bus: Bus;
  log: Logger;
  retentionDays: number;
}

export interface WatchedStats {
  jobs: number;
  records: number;
  /** Records new to the table; the rest were copies of records already stored. */
  stored: number;
  duplicates: number;
  published: number;
  publishFailures: number;
  pruned: number;
  deadLetters: number;
  mysqlRetries: number;
}

/** Jobs taken per round at most. */
const JOBS_PER_ROUND = 32;
const PRUNE_EVERY_MS = 3_600_000;
const MAX_PUBLISH_BACKOFF_MS = 30_000;

/** The drain of `offlog.watched`: long-lived (`offlog watched`, `npm start`) or until idle or a deadline (the Lambda poller). */
export class WatchedDrain {
  readonly stats: WatchedStats = { jobs: 0, records: 0, stored: 0, duplicates: 0, published: 0, publishFailures: 0, pruned: 0, deadLetters: 0, mysqlRetries: 0 };
  private conns: GearmanConnection[] = [];
  private stopping = false;
  private deadlineMs = Infinity;
  private nextPruneAt = 0;
  private nextPublishAt = 0;
  private publishBackoffMs = 0;

  constructor(private readonly deps: WatchedDeps) {}

  async run(until: { idle?: boolean; deadlineMs?: number } = {}): Promise<WatchedStats> {
    const { log } = this.deps;
    this.stopping = false;
    this.deadlineMs = until.deadlineMs ?? Infinity;
    try {
      while (!this.stopped()) {
        await this.connect();
        if (this.conns.length === 0 && until.idle) throw new GearmanUnavailableError(`no Gearman server answers (${this.deps.gearmanServers.map(label).join(', ')})`);
        const jobs = await this.take();
        if (jobs.length > 0) {
          if (!(await this.storeJobs(jobs))) break;
          // Stored: publish now, so a record is on the bus within seconds of the event.
          this.nextPublishAt = Math.min(this.nextPublishAt, Date.now());
        }
        const published = await this.publishIfDue();
        await this.pruneIfDue();
        if (jobs.length > 0) continue;
        // Until idle: the queue is empty and publishing was tried since the last store.
        if (until.idle && published !== 'not due') break;
        if (this.conns.length === 0) await sleep(1000);
        else await Promise.race(this.conns.map((c) => c.sleep(Math.max(0, Math.min(1000, this.deadlineMs - Date.now()))).catch(() => undefined)));
      }
    } finally {
      for (const c of this.conns) c.close();
      this.conns = [];
    }
    log.info(this.stats, 'watched drain stopped');
    return this.stats;
  }

  stop(): void {
    this.stopping = true;
  }

  private stopped(): boolean {
    return this.stopping || Date.now() >= this.deadlineMs;
  }

  private async connect(): Promise<void> {
    this.conns = this.conns.filter((c) => c.isOpen);
    const open = new Set(this.conns.map((c) => label(c.server)));
    await Promise.all(
      this.deps.gearmanServers
        .filter((s) => !open.has(label(s)))
        .map(async (server) => {
          try {
            const conn = await GearmanConnection.connect(server);
            conn.setWorkerId(`offlog-watched-${process.pid}`);
            conn.canDo(FN_WATCHED);
            this.conns.push(conn);
          } catch (err) {
            this.deps.log.warn({ server: label(server), err: (err as Error).message }, 'gearmand unreachable; will retry');
          }
        }),
    );
  }

  private async take(): Promise<Job[]> {
    const jobs: Job[] = [];
    for (const conn of this.conns) {
      while (jobs.length < JOBS_PER_ROUND) {
        const job = await conn.grab().catch(() => null);
        if (job === null) break;
        jobs.push(job);
      }
    }
    return jobs;
  }

  /**
   * Stores the jobs' records, then acknowledges the jobs. While MySQL fails
   * the jobs are held and the insert retried; stopped meanwhile, they go
   * back to gearmand (false).
   */
  private async storeJobs(jobs: Job[]): Promise<boolean> {
    const { store, log } = this.deps;
    const records: WatchedRecord[] = [];
    for (const job of jobs) {
      try {
        records.push(...decodeWatchedJob(job.data));
      } catch (err) {
        await this.deadLetter(job, err instanceof InputError ? err.message : `unexpected: ${(err as Error).message}`);
      }
    }
    let stored: number;
    try {
      stored = await retry(() => storeWatched(store, records, new Date()), {
        stopped: () => this.stopped(),
        baseMs: 200,
        maxMs: 10_000,
        onError: (err, attempt, delayMs) => {
          this.stats.mysqlRetries++;
          log.warn({ err: err.message, attempt, delayMs, jobs: jobs.length }, 'MySQL refused the watched records; holding the jobs and retrying');
        },
      });
    } catch (err) {
      log.warn({ err: (err as Error).message, jobs: jobs.length }, 'stopped while MySQL was failing; the watched jobs go back to gearmand');
      for (const c of this.conns) c.close();
      this.conns = [];
      return false;
    }
    for (const job of jobs) job.conn.complete(job.handle);
    this.stats.jobs += jobs.length;
    this.stats.records += records.length;
    this.stats.stored += stored;
    this.stats.duplicates += records.length - stored;
    return true;
  }

  /** Publishes what is unpublished, when due (a failure backs off). */
  private async publishIfDue(): Promise<'done' | 'failed' | 'not due'> {
    if (Date.now() < this.nextPublishAt) return 'not due';
    const r = await publishWatched(this.deps.store, this.deps.bus, this.deps.log);
    this.stats.published += r.published;
    if (r.error === undefined) {
      this.publishBackoffMs = 0;
      this.nextPublishAt = Date.now() + 1000;
      return 'done';
    }
    // The bus (or MySQL) is away: back off, up to 30 s, rather than hammer it; storing goes on meanwhile.
    this.stats.publishFailures++;
    this.publishBackoffMs = Math.min(MAX_PUBLISH_BACKOFF_MS, Math.max(500, this.publishBackoffMs * 2));
    this.nextPublishAt = Date.now() + this.publishBackoffMs;
    return 'failed';
  }

  private async pruneIfDue(): Promise<void> {
    if (Date.now() < this.nextPruneAt) return;
    this.nextPruneAt = Date.now() + PRUNE_EVERY_MS;
    try {
      const pruned = await pruneWatched(this.deps.store, this.deps.retentionDays);
      this.stats.pruned += pruned;
      if (pruned > 0) this.deps.log.info({ pruned, retentionDays: this.deps.retentionDays }, 'old watched events pruned');
    } catch (err) {
      this.nextPruneAt = Date.now() + 60_000;
      this.deps.log.warn({ err: (err as Error).message }, 'pruning watched events failed; trying again in a minute');
    }
  }

  private async deadLetter(job: Job, error: string): Promise<void> {
    this.stats.deadLetters++;
    this.deps.log.error({ fn: job.fn, unique: job.unique, error, excerpt: excerpt(job.data.toString('utf8'), 120) }, 'bad watched job dead-lettered');
    const letter: DeadLetterJob = { fn: job.fn, unique: job.unique, handle: job.handle, error, receivedAt: new Date().toISOString(), payload: job.data.toString('base64') };
    await job.conn.submitBackground(FN_DEAD_LETTER, JSON.stringify(letter), '', 'low').catch(() => undefined);
  }
}
