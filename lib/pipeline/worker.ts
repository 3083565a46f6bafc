/**
 * The worker: takes jobs from every Gearman server, folds the jobs it holds
 * into one set of deltas, stores them in the ring, and only then acknowledges
 * each job. While memcached is unreachable it holds what it has, takes nothing
 * new and retries; the jobs stay Gearman's until they are acknowledged.
 *
 * Two folds overlap: while one is being stored (memcached's time, mostly),
 * the next is taken from gearmand, decoded and folded (this process's time).
 * Stores still happen one after the other, each fold's jobs are acknowledged
 * only after its own counts and marks are in memcached, and at most two folds
 * are held at once.
 */
import { Deltas } from '../domain/aggregate.ts';
import { retry, sleep } from '../base/backoff.ts';
import { label, type HostPort } from '../base/config.ts';
import { GearmanUnavailableError, InputError } from '../base/errors.ts';
import { decodeBatch, decodeBatchColumns, excerpt, FN_BATCH, FN_DEAD_LETTER, FN_LOG_SIMPLE, newEventColumns, parseLogSimple, type DeadLetterJob, type WatchedRecord } from '../domain/contract.ts';
import { GearmanConnection, type Job } from '../wire/gearman.ts';
import type { Logger } from '../base/log.ts';
import { MemcacheUnavailableError, MemcacheUnusableError } from '../wire/memcache.ts';
import type { Ring } from './ring.ts';
import { sliceOf, type SliceId } from '../domain/slice.ts';
import { watchedOfColumns, watchedOfEvents, type WatchList, type WatchSnapshot } from './watch.ts';
import { WatchedSender } from './watched.ts';

/** The worker was stopped (or reached its deadline) while memcached was unreachable: its jobs stay Gearman's. */
export class WorkerStoppedError extends Error {
  override name = 'WorkerStoppedError';
}

/**
 * Jobs folded together at most. A fold is what a crash between storing it and
 * marking its jobs can count twice, and two folds (one stored, one prepared)
 * are what the worker holds in memory: 16 × 5,000-event jobs keeps both small
 * (80,000 events; ~220 MB peak RSS in the bench) for ~10 % less throughput than 64.
 */
export const DEFAULT_MAX_JOBS_PER_FOLD = 16;

/** How long a starting worker waits for its first reading of the watch lists. */
const WATCH_LIST_WAIT_MS = 2000;

export interface WorkerDeps {
  gearmanServers: HostPort[];
  sliceSeconds: number;
  ring: Ring;
  log: Logger;
  /** Injectable clock (epoch ms) so tests can place events in chosen slices. */
  now?: () => number;
  /** The watch lists (read in the background); without them only events sent as watched keep their raw record. */
  watchList?: WatchList;
}

export interface WorkerOptions {
  /** Jobs held and folded together at most (each connection grabs its share). */
  maxJobsPerFold?: number;
  /** Connections per Gearman server; more connections hold more jobs at once. */
  connectionsPerServer?: number;
}

export interface WorkerStats {
  jobs: number;
  events: number;
  late: number;
  deadLetters: number;
  /** Redelivered jobs recognised as already applied and skipped. */
  duplicatesSkipped: number;
  folds: number;
  memcachedOps: number;
  storeRetries: number;
  /** Events sent to a later slice because the flush had already taken theirs (a clock behind the flush's). */
  movedPastWatermark: number;
  /** Counters memcached wrapped past 2^64 − 1, held at 2^64 − 1 instead. */
  wrapped: number;
  /** Raw records of watched events handed to the `offlog.watched` queue. */
  watched: number;
}

/** Stop conditions for `run`: drain until idle, or until a deadline (a Lambda's remaining time). */
export interface RunUntil {
  idle?: boolean;
  deadlineMs?: number;
}

/** A fold between being prepared (decoded, folded) and stored. */
interface Fold {
  /** Every job taken: all are acknowledged once the fold is stored. */
  jobs: Job[];
  deltas: Deltas;
  /** Jobs whose events are in `deltas`: marked applied once stored. */
  applied: Job[];
  dead: { job: Job; error: string }[];
  /** Jobs left out as already applied (or copies of another job of the fold). */
  skipped: number;
  /** Raw records of watched events, by the job that carried them: queued before the fold is stored. */
  watched: { job: Job; records: WatchedRecord[] }[];
}

export class Worker {
  readonly stats: WorkerStats = { jobs: 0, events: 0, late: 0, deadLetters: 0, duplicatesSkipped: 0, folds: 0, memcachedOps: 0, storeRetries: 0, movedPastWatermark: 0, wrapped: 0, watched: 0 };
  private conns: GearmanConnection[] = [];
  private stopping = false;
  /** The run's deadline (a Lambda's remaining time): retries stop there too. */
  private deadlineMs = Infinity;
  /** The highest flush watermark seen: never lowered, so a memcached that lost it cannot send a count back into a flushed slice. */
  private watermark: SliceId | null = null;
  private readonly now: () => number;
  private readonly maxJobs: number;
  private readonly perServer: number;
  /** Unique ids of the fold being stored: a copy of one of them in the next fold waits for it, then is skipped. */
  private storing = new Set<string>();
  /** Reused by every batch job: decoding allocates nothing per event. */
  private readonly columns = newEventColumns();
  private readonly watchedSender: WatchedSender;

  constructor(private readonly deps: WorkerDeps, options: WorkerOptions = {}) {
    this.now = deps.now ?? Date.now;
    this.maxJobs = options.maxJobsPerFold ?? DEFAULT_MAX_JOBS_PER_FOLD;
    this.perServer = options.connectionsPerServer ?? 1;
    this.watchedSender = new WatchedSender(deps.gearmanServers);
  }

  /** Processes jobs until stopped, idle (when asked) or past the deadline. */
  async run(until: RunUntil = {}): Promise<WorkerStats> {
    const { log } = this.deps;
    this.stopping = false;
    this.deadlineMs = until.deadlineMs ?? Infinity;
    // The fold being stored while the next one is prepared.
    let storing: Promise<void> | null = null;
    // A moment for the first reading of the watch lists; after that they are refreshed in the background.
    if (this.deps.watchList && !(await this.deps.watchList.waitReady(WATCH_LIST_WAIT_MS))) {
      log.warn({ waitedMs: WATCH_LIST_WAIT_MS }, 'watch lists not read yet: counting without them until they are (events sent as watched are still kept)');
    }
    try {
      while (!this.stopping && (until.deadlineMs === undefined || Date.now() < until.deadlineMs)) {
        await this.connect();
        if (this.conns.length === 0) {
          await storing;
          storing = null;
          if (until.idle) throw new Error(`no Gearman server answers (${this.deps.gearmanServers.map(label).join(', ')})`);
          await sleep(1000);
          continue;
        }
        const jobs = await this.take();
        if (jobs.length > 0) {
          const fold = await this.prepare(jobs);
          await storing;
          storing = this.store(fold);
          // Awaited before the next store or at the end; until then a failure must not count as unhandled.
          storing.catch(() => undefined);
          continue;
        }
        await storing;
        storing = null;
        if (until.idle) break;
        // Idle, the watch lists are kept fresh too, so the next job meets a change made meanwhile.
        this.deps.watchList?.current();
        await this.waitForWork(until.deadlineMs === undefined ? 1000 : Math.max(0, Math.min(1000, until.deadlineMs - Date.now())));
      }
      await storing;
    } catch (err) {
      // Stopped (or out of time) while memcached was away: what is held stays Gearman's, and that is a normal end.
      const stoppedWhileAway = err instanceof WorkerStoppedError || (this.stopped() && err instanceof MemcacheUnavailableError);
      if (!stoppedWhileAway) throw err;
      log.warn({ err: (err as Error).message }, 'worker stopped while memcached was unreachable; unacknowledged jobs go back to gearmand');
    } finally {
      // Whatever happened, a fold being stored finishes (or fails) before its connections close.
      await storing?.catch(() => undefined);
      for (const c of this.conns) c.close();
      this.conns = [];
      this.watchedSender.close();
    }
    log.info(this.stats, 'worker stopped');
    return this.stats;
  }

  /** Finishes the fold in hand (its jobs are stored and acknowledged), then `run` returns. */
  stop(): void {
    this.stopping = true;
  }

  /** Opens the connections that are missing; a server that is down is simply skipped this round. */
  private async connect(): Promise<void> {
    this.conns = this.conns.filter((c) => c.isOpen);
    const want = this.deps.gearmanServers.flatMap((s) => Array.from({ length: this.perServer }, () => s));
    for (const c of this.conns) want.splice(want.findIndex((s) => s.host === c.server.host && s.port === c.server.port), 1);
    await Promise.all(
      want.map(async (server) => {
        try {
          const conn = await GearmanConnection.connect(server);
          conn.setWorkerId(`offlog-worker-${process.pid}`);
          conn.canDo(FN_LOG_SIMPLE);
          conn.canDo(FN_BATCH);
          this.conns.push(conn);
        } catch (err) {
          this.deps.log.warn({ server: label(server), err: (err as Error).message }, 'gearmand unreachable; will retry');
        }
      }),
    );
  }

  /** Grabs up to maxJobsPerFold jobs, spread over the open connections, in one round trip each. */
  private async take(): Promise<Job[]> {
    const share = Math.max(1, Math.floor(this.maxJobs / this.conns.length));
    const grabs = this.conns.flatMap((c) => Array.from({ length: share }, () => c.grab().catch(() => null)));
    return (await Promise.all(grabs)).filter((j): j is Job => j !== null);
  }

  private async waitForWork(maxMs: number): Promise<void> {
    await Promise.race(this.conns.map((c) => c.sleep(maxMs).catch(() => undefined)));
  }

  /**
   * Decodes and folds the jobs not applied before (their marks say so; a
   * copy of a job of the fold being stored counts as applied, since it will
   * be before this fold is stored). Bad jobs are set aside as dead letters.
   *
   * The marks are read after folding: that read waits behind the fold being
   * stored on the same memcached connection, and folding meanwhile is the
   * point of the overlap. A job found applied (rare: after a crash or a
   * client's re-send) means folding again without it.
   */
  private async prepare(jobs: Job[]): Promise<Fold> {
    const { ring } = this.deps;
    const receivedAt = this.now();
    let fold = this.foldAll(jobs, receivedAt, this.storing);
    // Taken before asking memcached: a fold that finishes storing meanwhile has its marks written
    // before it leaves this set, so each of its jobs is in one or the other.
    const storing = this.storing;
    const already = await retry(() => ring.appliedJobs(fold.applied.map((j) => j.unique)), this.retrying(jobs.length));
    if (fold.applied.some((j) => j.unique && (already.has(j.unique) || storing.has(j.unique)))) {
      fold = this.foldAll(jobs, receivedAt, new Set([...already, ...storing]));
    }
    this.stats.duplicatesSkipped += fold.skipped;
    return fold;
  }

  /** Folds every job whose unique id is not in `skip` (nor met earlier in `jobs`) into a new Fold. */
  private foldAll(jobs: Job[], receivedAt: number, skip: ReadonlySet<string>): Fold {
    const current = sliceOf(receivedAt, this.deps.sliceSeconds);
    const fold: Fold = { jobs, deltas: new Deltas(), applied: [], dead: [], skipped: 0, watched: [] };
    const seen = new Set<string>();
    const watch = this.deps.watchList?.current() ?? null;
    for (const job of jobs) {
      if (job.unique && (skip.has(job.unique) || seen.has(job.unique))) {
        fold.skipped++;
        continue;
      }
      try {
        const records = this.fold(job, fold.deltas, receivedAt, current, watch);
        if (records !== null) fold.watched.push({ job, records });
        fold.applied.push(job);
        if (job.unique) seen.add(job.unique);
      } catch (err) {
        const error = err instanceof InputError ? err.message : `unexpected: ${(err as Error).message}`;
        fold.dead.push({ job, error });
      }
    }
    return fold;
  }

  /**
   * Decodes one job and adds its events to `deltas`: all of them, or (it
   * throws) none. Returns the raw records the job owes the watch lists.
   */
  private fold(job: Job, deltas: Deltas, receivedAt: number, current: SliceId, watch: WatchSnapshot | null): WatchedRecord[] | null {
    const { sliceSeconds } = this.deps;
    // Stable across redeliveries: gearmand keeps a job's unique (and makes one up for a job sent without).
    const jobId = job.unique || `handle:${job.handle}`;
    if (job.fn === FN_BATCH) {
      // The fast path reads what OffLogClient writes; anything else is decoded (and judged) by decodeBatch.
      if (decodeBatchColumns(job.data, this.columns)) {
        deltas.addColumns(this.columns, current, sliceSeconds);
        return watch === null ? null : watchedOfColumns(this.columns, watch, jobId);
      }
      const events = decodeBatch(job.data, receivedAt);
      deltas.addAll(events, current, sliceSeconds);
      return watchedOfEvents(events, watch, jobId);
    } else if (job.fn === FN_LOG_SIMPLE) {
      const event = parseLogSimple(job.data, receivedAt);
      deltas.add(event, current, sliceSeconds);
      return watchedOfEvents([event], watch, jobId);
    }
    throw new InputError('function', `unknown function ${excerpt(job.fn)}`);
  }

  /**
   * Queues the fold's watched records on `offlog.watched` (persistent, like
   * every queue) before its counts are stored: once its jobs are marked
   * applied a redelivery is skipped, so the records must be safe first. A
   * crash after this and before the marks sends them again, under the same
   * ids, which the drain stores once. While no gearmand takes them the fold
   * is held, as when memcached is away.
   */
  private async queueWatched(fold: Fold, retrying: Parameters<typeof retry>[1]): Promise<void> {
    for (const { job, records } of fold.watched) {
      await retry(() => this.watchedSender.send(job, records), {
        stopped: retrying.stopped,
        retryable: (err) => err instanceof GearmanUnavailableError,
        onError: (err, attempt, delayMs) => this.deps.log.warn({ err: err.message, attempt, delayMs }, 'no gearmand took the watched records; holding the fold and retrying'),
      }).catch((err: Error) => {
        this.storing = new Set();
        throw new WorkerStoppedError(`stopped while no gearmand took the watched records; ${fold.jobs.length} job(s) left with gearmand (${err.message})`);
      });
      this.stats.watched += records.length;
    }
  }

  /**
   * Stores a fold's counts, dead-letters its bad jobs, marks its jobs applied,
   * then acknowledges every one. memcached being unreachable is retried (the
   * jobs stay held) until it answers or the worker stops: stopped before the
   * counts are in, the jobs go back to gearmand; after, they are acknowledged
   * even without their marks. Any other failure to store dead-letters the
   * fold's jobs with the reason, so nothing can stall here.
   */
  private async store(fold: Fold): Promise<void> {
    const { ring, log } = this.deps;
    const { jobs, applied } = fold;
    let { deltas, dead } = fold;
    this.storing = new Set(applied.map((j) => j.unique).filter(Boolean));
    const retrying = this.retrying(jobs.length);
    if (fold.watched.length > 0) await this.queueWatched(fold, retrying);
    if (deltas.pairs.length > 0) {
      try {
        deltas = await retry(() => this.applyOutsideFlushed(deltas), retrying);
      } catch (err) {
        // An outage is retried until the worker stops (see retrying), so this one ended with a stop.
        if (err instanceof MemcacheUnavailableError) {
          this.storing = new Set();
          throw new WorkerStoppedError(`stopped while memcached was unreachable; ${jobs.length} job(s) left with gearmand (${(err as Error).message})`);
        }
        // A memcached OffLog cannot use: no job is at fault, so none is parked; the worker stops and gearmand keeps them.
        if (err instanceof MemcacheUnusableError) {
          this.storing = new Set();
          throw err;
        }
        // Not a memcached outage: retrying would fail the same way forever. Park the jobs, with the reason.
        log.error({ err: (err as Error).message, jobs: applied.length }, 'storing a fold failed; its jobs are dead-lettered');
        dead = [...dead, ...applied.map((job) => ({ job, error: `store failed: ${(err as Error).message}` }))];
        deltas = new Deltas();
      }
    }
    for (const { job, error } of dead) await this.deadLetter(job, error);
    const stored = applied.filter((j) => !dead.some((d) => d.job === j));
    try {
      await retry(() => ring.markApplied(stored.map((j) => j.unique)), retrying);
    } catch (err) {
      // The counts are in: a job handed back now would be counted again, so it is acknowledged
      // anyway. Without its mark, only a client's re-send of that same job could count twice.
      log.warn({ err: (err as Error).message, jobs: stored.length }, 'could not mark the stored jobs applied; acknowledging them anyway');
    }
    for (const job of jobs) job.conn.complete(job.handle);
    this.storing = new Set();
    this.stats.folds++;
    this.stats.jobs += jobs.length;
    this.stats.events += deltas.events;
    this.stats.late += deltas.lateEvents;
    if (deltas.lateEvents > 0) log.warn({ late: deltas.lateEvents }, 'late or future-dated events counted into the current slice');
  }

  /**
   * Applies `deltas`, announced on their slices (see Ring.enter): any slice
   * the flush has already taken is moved, with its events counted as late,
   * to the first slice it has not. Returns the deltas as applied.
   */
  private async applyOutsideFlushed(folded: Deltas): Promise<Deltas> {
    const { ring, log, sliceSeconds } = this.deps;
    const entered: SliceId[] = [];
    let deltas = folded;
    try {
      for (;;) {
        // Known taken slices are left before announcing anything; the watermark read after announcing may say more.
        const taken = this.watermark;
        if (taken !== null && deltas.slices().some((s) => s <= taken)) {
          deltas = deltas.movedAbove(taken, Math.max(sliceOf(this.now(), sliceSeconds), taken + 1) as SliceId);
        }
        const fresh = deltas.slices().filter((s) => !entered.includes(s));
        const wm = await ring.enter(fresh);
        entered.push(...fresh);
        if (wm !== null && (this.watermark === null || wm > this.watermark)) this.watermark = wm;
        // Every slice is above `taken` now; if that is still the watermark, none is taken.
        if (this.watermark === taken) break;
      }
      const before = ring.ops;
      const result = await ring.apply(deltas);
      this.stats.memcachedOps += ring.ops - before;
      this.stats.wrapped += result.wrapped;
      // Moves only ever go up, to above the last watermark: what moved is what the fold had at or below it.
      const moved = this.watermark === null ? 0 : folded.eventsThrough(this.watermark);
      if (moved > 0) {
        this.stats.movedPastWatermark += moved;
        log.warn({ watermark: this.watermark, events: moved }, 'events for slices the flush already took went to the next open slice (counted as late)');
      }
      return deltas;
    } finally {
      await ring.leave(entered).catch(() => undefined);
    }
  }

  private stopped(): boolean {
    return this.stopping || Date.now() >= this.deadlineMs;
  }

  /** Retry policy for memcached: while it is unreachable, with backoff, holding the jobs, until stopped or past the deadline. */
  private retrying(jobs: number): Parameters<typeof retry>[1] {
    return {
      stopped: () => this.stopped(),
      retryable: (err) => err instanceof MemcacheUnavailableError,
      onError: (err: Error, attempt: number, delayMs: number) => {
        this.stats.storeRetries++;
        this.deps.log.warn({ err: err.message, attempt, delayMs, jobs }, 'memcached unreachable; holding jobs and retrying');
      },
    };
  }

  /**
   * Keeps a bad job on the `offlog.deadletter` queue of the server it came from
   * (persistent, like every queue) for an operator to read; never retried as work.
   */
  private async deadLetter(job: Job, error: string): Promise<void> {
    this.stats.deadLetters++;
    this.deps.log.error({ fn: job.fn, unique: job.unique, handle: job.handle, error, excerpt: excerpt(job.data.toString('utf8'), 120) }, 'bad job dead-lettered');
    const letter: DeadLetterJob = { fn: job.fn, unique: job.unique, handle: job.handle, error, receivedAt: new Date().toISOString(), payload: job.data.toString('base64') };
    try {
      await job.conn.submitBackground(FN_DEAD_LETTER, JSON.stringify(letter), '', 'low');
    } catch (err) {
      // The job's connection is gone, so gearmand will hand the job out again and it comes back here.
      this.deps.log.warn({ err: (err as Error).message }, 'could not queue the dead letter; the job will be redelivered');
    }
  }
}
