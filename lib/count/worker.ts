/**
 * The worker: takes jobs from every Gearman server, folds the jobs it holds
 * into one set of deltas, stores them in the ring, and only then acknowledges
 * each job. While memcached is unreachable it holds what it has, takes nothing
 * new and retries; the jobs stay Gearman's until they are acknowledged.
 *
 * Each fold F claims its jobs (claims.ts) before storing anything, so a
 * second copy of a job (a client's re-send to another gearmand, a
 * redelivery) is never folded by two workers at once; announces F on every
 * slice it writes into; stores its counts; commits F; then acknowledges.
 *
 * Two folds overlap: while one is being stored (memcached's time, mostly),
 * the next is taken from gearmand, decoded, folded and claimed (this
 * process's time). Stores still happen one after the other, each fold's jobs
 * are acknowledged only after its own counts and commit are in memcached,
 * and at most two folds are held at once.
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
import { Claims, type FoldId } from './claims.ts';
import { sliceOf, type SliceId } from '../domain/slice.ts';
import { watchedOfColumns, watchedOfEvents, type WatchList, type WatchSnapshot } from './watch.ts';
import { WatchedSender } from '../publish/watched.ts';
import { FoldStoppedError, type FoldWriter } from './fold-writer.ts';

/** The worker was stopped (or reached its deadline) while memcached was unreachable: its jobs stay Gearman's. */
export class WorkerStoppedError extends Error {
  override name = 'WorkerStoppedError';
}

/**
 * Jobs folded together at most. A fold is what a crash between storing it and
 * committing it can count twice (the flush then reports its slices
 * maybe-duplicated, with its events as the bound), and two folds (one stored, one prepared)
 * are what the worker holds in memory: 16 × 5,000-event jobs keeps both small
 * (80,000 events; ~220 MB peak RSS in the bench) for ~10 % less throughput than 64.
 */
export const DEFAULT_MAX_JOBS_PER_FOLD = 16;

/**
 * Events folded together at most (OFFLOG_MAX_FOLD_EVENTS): what one crash or
 * one broken store can count twice. Jobs past it wait for the next fold; a
 * single job over it is refused (dead-lettered), since a job is folded whole
 * or not at all.
 */
export const DEFAULT_MAX_FOLD_EVENTS = 80_000;

/** fold()'s answer for a job that does not fit in the fold: it goes in the next one. */
const CARRY = Symbol('carry');

const NONE: ReadonlySet<string> = new Set();

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
  /** The fold protocol on `ring` (its lease time from config); made with the defaults when absent. */
  claims?: Claims;
  /** Ring mode `folds` (docs/ring-modes.md): folds are stored by this writer (on the same Claims). Absent: `counters`. */
  folds?: FoldWriter;
  /** The fault hook (OFFLOG_FAULT), told of the `acked` step; the writer is told of the others. */
  reached?: (step: string) => void;
}

export interface WorkerOptions {
  /** Jobs held and folded together at most (each connection grabs its share). */
  maxJobsPerFold?: number;
  /** Connections per Gearman server; more connections hold more jobs at once. */
  connectionsPerServer?: number;
  /** Events folded together at most (see DEFAULT_MAX_FOLD_EVENTS). */
  maxFoldEvents?: number;
}

export interface WorkerStats {
  jobs: number;
  events: number;
  late: number;
  deadLetters: number;
  /** Copies of jobs another fold stored or is storing (redeliveries, re-sends), found by their claims and skipped. */
  duplicatesSkipped: number;
  /** Folds found aborted at their commit (by the flush, or by a worker that took their claims over): their slices are reported maybe-duplicated. */
  foldsAborted: number;
  folds: number;
  memcachedOps: number;
  storeRetries: number;
  /** Events sent to a later slice because the flush had already taken theirs (a clock behind the flush's). */
  movedPastWatermark: number;
  /** Counters memcached wrapped past 2^64 − 1, held at 2^64 − 1 instead. */
  wrapped: number;
  /** Raw records of watched events handed to the `offlog.watched` queue. */
  watched: number;
  /** Events in the largest fold stored (never above maxFoldEvents). */
  largestFold: number;
  /** Counters memcached refused because they hold something that is not a number: those increments were skipped (the flush reports the slice corrupt). */
  notNumbers: number;
}

/** Stop conditions for `run`: drain until idle, or until a deadline (a Lambda's remaining time). */
export interface RunUntil {
  idle?: boolean;
  deadlineMs?: number;
}

/** A fold between being prepared (decoded, folded) and stored. */
interface Fold {
  /** The fold's id: its claims, its entries in the slices' fold lists, its decision record. */
  id: FoldId;
  /** Every job taken: all are acknowledged once the fold is stored. */
  jobs: Job[];
  deltas: Deltas;
  /** Jobs whose events are in `deltas`: claimed by the fold. */
  applied: Job[];
  dead: { job: Job; error: string }[];
  /** Jobs left out as claimed by another fold (or copies of another job of the fold). */
  skipped: number;
  /** Jobs taken that did not fit under maxFoldEvents: the next fold's, in order. */
  carried: Job[];
  /** Raw records of watched events, by the job that carried them: queued before the fold is stored. */
  watched: { job: Job; records: WatchedRecord[] }[];
  /** When the jobs were taken: a fold made again without some of them (folds mode) places events the same way. */
  receivedAt: number;
}

export class Worker {
  readonly stats: WorkerStats = { jobs: 0, events: 0, late: 0, deadLetters: 0, duplicatesSkipped: 0, foldsAborted: 0, folds: 0, memcachedOps: 0, storeRetries: 0, movedPastWatermark: 0, wrapped: 0, watched: 0, notNumbers: 0, largestFold: 0 };
  private conns: GearmanConnection[] = [];
  private stopping = false;
  /** The run's deadline (a Lambda's remaining time): retries stop there too. */
  private deadlineMs = Infinity;
  /** The highest flush watermark seen: never lowered, so a memcached that lost it cannot send a count back into a flushed slice. */
  private watermark: SliceId | null = null;
  private readonly now: () => number;
  private readonly maxJobs: number;
  private readonly maxFoldEvents: number;
  /** Jobs taken that the last fold could not hold: folded next, before anything new is taken. */
  private carried: Job[] = [];
  private readonly perServer: number;
  readonly claims: Claims;
  /** The folds being stored: a copy, in the next fold, of one of their jobs is skipped (they finish it or hand it back). */
  private readonly inFlight = new Set<FoldId>();
  /** Reused by every batch job: decoding allocates nothing per event. */
  private readonly columns = newEventColumns();
  private readonly watchedSender: WatchedSender;

  constructor(private readonly deps: WorkerDeps, options: WorkerOptions = {}) {
    this.now = deps.now ?? Date.now;
    this.maxJobs = options.maxJobsPerFold ?? DEFAULT_MAX_JOBS_PER_FOLD;
    this.maxFoldEvents = options.maxFoldEvents ?? DEFAULT_MAX_FOLD_EVENTS;
    this.perServer = options.connectionsPerServer ?? 1;
    this.watchedSender = new WatchedSender(deps.gearmanServers);
    this.claims = deps.claims ?? new Claims(deps.ring);
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
          if (until.idle) throw new GearmanUnavailableError(`no Gearman server answers (${this.deps.gearmanServers.map(label).join(', ')})`);
          await sleep(1000);
          continue;
        }
        const jobs = this.carried.length > 0 ? this.carried.splice(0) : await this.take();
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
   * Decodes and folds the jobs, then claims them for a new fold (one round
   * trip: Claims.claimFold). Bad jobs are set aside as dead letters.
   *
   * The claims are made after folding: the adds wait behind the fold being
   * stored on the same memcached connection, and folding meanwhile is the
   * point of the overlap. A job claimed by another fold (rare: a redelivery
   * after a crash, a client's re-send) is settled as claims.ts says: a
   * duplicate is left out (folding again without it), a dead or aborted
   * holder's claim is taken over.
   */
  private async prepare(jobs: Job[]): Promise<Fold> {
    const { claims } = this;
    const receivedAt = this.now();
    let fold = this.foldAll(jobs, receivedAt, NONE);
    const uniques = fold.applied.map((j) => j.unique);
    // A retry after an outage starts a new fold; the claims an earlier attempt made are this worker's, and taken over.
    const claimed = await retry(() => claims.claimFold(uniques, { inFlight: this.inFlight, stopped: () => this.stopped() }), this.retrying(jobs.length));
    if (claimed.unresolved.length > 0) {
      throw new WorkerStoppedError(`stopped while waiting for another worker's fold to decide; ${jobs.length} job(s) left with gearmand`);
    }
    if (claimed.duplicates.length > 0) {
      // Over the same jobs only: one carried before would now fit, but it was not claimed.
      const carried = fold.carried;
      fold = this.foldAll(fold.jobs, receivedAt, new Set(claimed.duplicates));
      fold.carried.push(...carried);
    }
    fold.id = claimed.fold;
    this.stats.duplicatesSkipped += fold.skipped;
    this.carried = fold.carried;
    return fold;
  }

  /** Folds every job whose unique id is not in `skip` (nor met earlier in `jobs`) into a new Fold. */
  private foldAll(jobs: Job[], receivedAt: number, skip: ReadonlySet<string>): Fold {
    const current = sliceOf(receivedAt, this.deps.sliceSeconds);
    const fold: Fold = { id: '', jobs: [], deltas: new Deltas(), applied: [], dead: [], skipped: 0, watched: [], carried: [], receivedAt };
    const seen = new Set<string>();
    const watch = this.deps.watchList?.current() ?? null;
    for (const job of jobs) {
      if (fold.carried.length > 0) {
        fold.carried.push(job);
        continue;
      }
      fold.jobs.push(job);
      if (job.unique && (skip.has(job.unique) || seen.has(job.unique))) {
        fold.skipped++;
        continue;
      }
      try {
        const records = this.fold(job, fold.deltas, receivedAt, current, watch);
        if (records === CARRY) {
          fold.jobs.pop();
          fold.carried.push(job);
          continue;
        }
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
   * throws) none. Returns the raw records the job owes the watch lists, or
   * CARRY when the job would take the fold past maxFoldEvents (it goes in the
   * next fold). A job over the limit on its own is refused.
   */
  private fold(job: Job, deltas: Deltas, receivedAt: number, current: SliceId, watch: WatchSnapshot | null): WatchedRecord[] | null | typeof CARRY {
    const { sliceSeconds } = this.deps;
    // Stable across redeliveries: gearmand keeps a job's unique (and makes one up for a job sent without).
    const jobId = job.unique || `handle:${job.handle}`;
    const fits = (n: number): boolean => {
      if (deltas.events + n <= this.maxFoldEvents) return true;
      if (deltas.events > 0) return false;
      throw new InputError('events', `the job has ${n} events; a worker folds at most ${this.maxFoldEvents} at once (OFFLOG_MAX_FOLD_EVENTS), and a job whole or not at all: send it as smaller jobs`);
    };
    if (job.fn === FN_BATCH) {
      // The fast path reads what OffLogClient writes; anything else is decoded (and judged) by decodeBatch.
      if (decodeBatchColumns(job.data, this.columns)) {
        if (!fits(this.columns.length)) return CARRY;
        deltas.addColumns(this.columns, current, sliceSeconds);
        return watch === null ? null : watchedOfColumns(this.columns, watch, jobId);
      }
      const events = decodeBatch(job.data, receivedAt);
      if (!fits(events.length)) return CARRY;
      deltas.addAll(events, current, sliceSeconds);
      return watchedOfEvents(events, watch, jobId);
    } else if (job.fn === FN_LOG_SIMPLE) {
      const event = parseLogSimple(job.data, receivedAt);
      if (!fits(1)) return CARRY;
      deltas.add(event, current, sliceSeconds);
      return watchedOfEvents([event], watch, jobId);
    }
    throw new InputError('function', `unknown function ${excerpt(job.fn)}`);
  }

  /**
   * Queues the fold's watched records on `offlog.watched` (persistent, like
   * every queue) before its counts are stored: once the fold commits a
   * redelivery is skipped, so the records must be safe first. A crash after
   * this and before the commit sends them again, under the same ids, which
   * the drain stores once. While no gearmand takes them the fold
   * is held, as when memcached is away.
   */
  private async queueWatched(fold: Fold, retrying: Parameters<typeof retry>[1]): Promise<void> {
    for (const { job, records } of fold.watched) {
      await retry(() => this.watchedSender.send(job, records), {
        stopped: retrying.stopped,
        retryable: (err) => err instanceof GearmanUnavailableError,
        onError: (err, attempt, delayMs) => this.deps.log.warn({ err: err.message, attempt, delayMs }, 'no gearmand took the watched records; holding the fold and retrying'),
      }).catch((err: Error) => {
        throw new WorkerStoppedError(`stopped while no gearmand took the watched records; ${fold.jobs.length} job(s) left with gearmand (${err.message})`);
      });
      this.stats.watched += records.length;
    }
  }

  /**
   * Stores a fold's counts (see applyOutsideFlushed: announced, stored,
   * committed), dead-letters its bad jobs, then acknowledges every one.
   * memcached being unreachable is retried (the jobs stay held) until it
   * answers or the worker stops: stopped before the counts are in, the jobs
   * go back to gearmand; after, they are acknowledged even without the
   * commit (the flush then aborts the fold and reports its slices). Any
   * other failure to store dead-letters the fold's jobs with the reason and
   * aborts the fold, so nothing can stall here.
   */
  private async store(fold: Fold): Promise<void> {
    if (this.deps.folds) return this.storeFold(fold, this.deps.folds);
    const { log } = this.deps;
    const { jobs } = fold;
    let { id, applied, deltas, dead } = fold;
    this.inFlight.add(id);
    try {
      const retrying = this.retrying(jobs.length);
      if (fold.watched.length > 0) await this.queueWatched(fold, retrying);
      if (deltas.pairs.length > 0) {
        try {
          for (;;) {
            let tries = 0;
            const stored = await retry(async () => {
              // An outage broke the last try, which may have written part of the counts: that fold is
              // aborted (its slices are then reported maybe-duplicated, not silently counted twice) and
              // the jobs are folded again under a new id, as when the flush aborts a fold (below).
              if (tries++ > 0) {
                if ((await this.claims.abort(id)).state === 'committed') return { deltas, committed: true };
                this.stats.foldsAborted++;
                this.inFlight.delete(id);
                ({ id, applied, deltas } = await this.refold(applied));
                this.inFlight.add(id);
                if (deltas.pairs.length === 0) return { deltas, committed: true };
              }
              return this.applyOutsideFlushed(deltas, id, applied.length);
            }, retrying);
            deltas = stored.deltas;
            if (stored.committed) break;
            // Aborted while it was being stored (paused past its lease, or past the flush's wait): what it
            // wrote after the flush read the slice is in no row, so the fold is done again under a new id,
            // into an open slice. What the flush did read of it is reported there as maybe-duplicated.
            this.inFlight.delete(id);
            const again = await this.refold(applied);
            ({ id, applied, deltas } = again);
            this.inFlight.add(id);
            log.warn({ fold: again.id, jobs: applied.length, events: deltas.events }, 'the fold was aborted while being stored; storing it again under a new id');
            if (deltas.pairs.length === 0) break;
          }
        } catch (err) {
          // An outage is retried until the worker stops (see retrying), so this one ended with a stop.
          if (err instanceof MemcacheUnavailableError) {
            throw new WorkerStoppedError(`stopped while memcached was unreachable; ${jobs.length} job(s) left with gearmand (${(err as Error).message})`);
          }
          // A memcached OffLog cannot use: no job is at fault, so none is parked; the worker stops and gearmand keeps them.
          if (err instanceof MemcacheUnusableError) throw err;
          // Not a memcached outage: retrying would fail the same way forever. Park the jobs, with the reason.
          log.error({ err: (err as Error).message, jobs: applied.length }, 'storing a fold failed; its jobs are dead-lettered');
          dead = [...dead, ...applied.map((job) => ({ job, error: `store failed: ${(err as Error).message}` }))];
          deltas = new Deltas();
          // Its claims are released, and a slice it may have half written is reported (see flush).
          await this.claims.abort(id).catch((e: Error) => log.warn({ err: e.message, fold: id }, 'could not abort the failed fold; its claims lapse with the lease'));
        }
      } else if (applied.length > 0) {
        // Jobs with no events still hold claims: committed, their copies are skipped.
        await this.commit(id, new Map(), applied.length);
      }
      for (const { job, error } of dead) await this.deadLetter(job, error);
      for (const job of jobs) job.conn.complete(job.handle);
    } finally {
      this.inFlight.delete(id);
    }
    this.stats.folds++;
    this.stats.jobs += jobs.length;
    this.stats.events += deltas.events;
    this.stats.largestFold = Math.max(this.stats.largestFold, deltas.events);
    this.stats.late += deltas.lateEvents;
    if (deltas.lateEvents > 0) log.warn({ late: deltas.lateEvents }, 'late or future-dated events counted into the current slice');
  }

  /**
   * Ring mode `folds`: the fold, its jobs already claimed by prepare(), goes
   * through FoldWriter (announcement, watermark, blobs, commit: see
   * fold-writer.ts), then every job is acknowledged. A fold aborted on the
   * way (a flush took its slice, or it was paused past its lease) is stored
   * again as a new fold, which takes the claims over; jobs another fold
   * committed meanwhile are left out. Outages and failures as in store().
   */
  private async storeFold(fold: Fold, writer: FoldWriter): Promise<void> {
    const { log } = this.deps;
    const { id, jobs, applied } = fold;
    let dead = fold.dead;
    let deltas = fold.deltas;
    // Every fold the writer tries is this worker's own while it runs: a copy of one of its jobs in the next fold is a duplicate.
    this.inFlight.add(id);
    const tried = new Set<string>([id]);
    const track = (fold: string | null, previous: string | null): void => {
      if (previous !== null) this.inFlight.delete(previous);
      if (fold !== null) tried.add(fold), this.inFlight.add(fold);
    };
    try {
      const retrying = this.retrying(jobs.length);
      if (fold.watched.length > 0) await this.queueWatched(fold, retrying);
      const build = (skip: ReadonlySet<string>): Deltas => (skip.size === 0 ? fold.deltas : this.foldAll(applied, fold.receivedAt, skip).deltas);
      let first: string | null = id;
      try {
        const stored = await retry(() => {
          // A retry after an outage is a new fold (which takes over this one's claims).
          const claimed = first;
          first = null;
          return writer.store({ uniques: applied.map((j) => j.unique), build }, { claimed, track, inFlight: this.inFlight, own: tried, stopped: () => this.stopped() });
        }, retrying);
        deltas = stored.deltas;
        this.stats.duplicatesSkipped += stored.duplicates.size;
        if (stored.attempts > 1) this.stats.foldsAborted += stored.attempts - 1;
        this.stats.memcachedOps = this.deps.ring.ops;
      } catch (err) {
        if (err instanceof MemcacheUnavailableError || err instanceof FoldStoppedError) throw new WorkerStoppedError(`stopped while memcached was unreachable or a claim undecided; ${jobs.length} job(s) left with gearmand (${(err as Error).message})`);
        // A memcached OffLog cannot use: no job is at fault, so none is parked; the worker stops and gearmand keeps them.
        if (err instanceof MemcacheUnusableError) throw err;
        // Not a memcached outage: retrying would fail the same way forever. Park the jobs, with the reason.
        log.error({ err: (err as Error).message, jobs: applied.length }, 'storing a fold failed; its jobs are dead-lettered');
        dead = [...dead, ...applied.map((job) => ({ job, error: `store failed: ${(err as Error).message}` }))];
        deltas = new Deltas();
      }
      for (const { job, error } of dead) await this.deadLetter(job, error);
      for (const job of jobs) job.conn.complete(job.handle);
      this.deps.reached?.('acked');
    } finally {
      for (const f of tried) this.inFlight.delete(f);
    }
    this.stats.folds++;
    this.stats.jobs += jobs.length;
    this.stats.events += deltas.events;
    this.stats.late += deltas.lateEvents;
    if (deltas.lateEvents > 0) log.warn({ late: deltas.lateEvents }, 'late or future-dated events counted into the current slice');
  }

  /**
   * Commits fold `id` (retried through an outage; its counts are in, so a
   * stop only leaves it undecided, for the flush to abort and report). False
   * when it was found aborted (the flush took its slice, or a worker took its
   * claims over, while it was away): what it wrote after the flush's read is
   * in no row, so store() folds its jobs again (refold) before acknowledging.
   */
  private async commit(id: FoldId, totals: ReadonlyMap<SliceId, number>, jobs: number): Promise<boolean> {
    const { log } = this.deps;
    try {
      if (await retry(() => this.claims.commit(id, totals), this.retrying(jobs))) return true;
      this.stats.foldsAborted++;
      log.warn({ fold: id }, 'the fold was aborted while it was being stored (its lease lapsed, or the flush took its slice): its slices are reported maybe-duplicated');
      return false;
    } catch (err) {
      log.warn({ err: (err as Error).message, fold: id }, 'could not commit the stored fold; acknowledging its jobs anyway (the flush will abort it and report its slices maybe-duplicated)');
      return true;
    }
  }

  /**
   * A fold of the jobs of an aborted one, under a new id: their claims are
   * taken over from the aborted fold, and any a copy elsewhere has meanwhile
   * taken over and committed is left out as a duplicate.
   */
  private async refold(jobs: Job[]): Promise<Fold> {
    const receivedAt = this.now();
    let fold = this.foldAll(jobs, receivedAt, NONE);
    const claimed = await retry(() => this.claims.claimFold(fold.applied.map((j) => j.unique), { inFlight: this.inFlight, stopped: () => this.stopped() }), this.retrying(jobs.length));
    if (claimed.unresolved.length > 0) {
      throw new WorkerStoppedError(`stopped while waiting for another worker's fold to decide; ${jobs.length} job(s) left with gearmand`);
    }
    if (claimed.duplicates.length > 0) fold = this.foldAll(jobs, receivedAt, new Set(claimed.duplicates));
    fold.id = claimed.fold;
    this.stats.duplicatesSkipped += fold.skipped;
    return fold;
  }

  /**
   * Applies `deltas`, announced on their slices (see Ring.enter): any slice
   * the flush has already taken is moved, with its events counted as late,
   * to the first slice it has not. The fold is added to each slice's fold
   * list (its intent) with that announcement, before anything is written
   * there, and committed before the slices are left, so a flush never finds
   * a live, finished fold undecided. Returns the deltas as applied.
   */
  private async applyOutsideFlushed(folded: Deltas, id: FoldId, jobs: number): Promise<{ deltas: Deltas; committed: boolean }> {
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
        // The intent goes out with the announcement, in the same round trip: listed on a slice the
        // watermark then takes, the fold is only a harmless extra entry there.
        const perSlice = deltas.eventsPerSlice();
        const [wm] = await Promise.all([ring.enter(fresh), this.claims.announce(id, new Map(fresh.map((s) => [s, perSlice.get(s)!])))]);
        entered.push(...fresh);
        if (wm !== null && (this.watermark === null || wm > this.watermark)) this.watermark = wm;
        // Every slice is above `taken` now; if that is still the watermark, none is taken.
        if (this.watermark === taken) break;
      }
      const events = deltas.eventsPerSlice();
      // Moved into a slice announced before the move: listed again with its final events (readers keep the largest).
      if (deltas !== folded) await this.claims.announce(id, events);
      const before = ring.ops;
      const result = await ring.apply(deltas);
      this.stats.memcachedOps += ring.ops - before;
      this.stats.wrapped += result.wrapped;
      if (result.notNumbers > 0) {
        this.stats.notNumbers += result.notNumbers;
        log.error({ counters: result.notNumbers, slices: deltas.slices() }, 'counters in memcached hold something that is not a number: their increments were skipped, the rest of the fold is stored (the flush reports the slice corrupt)');
      }
      // Moves only ever go up, to above the last watermark: what moved is what the fold had at or below it.
      const moved = this.watermark === null ? 0 : folded.eventsThrough(this.watermark);
      if (moved > 0) {
        this.stats.movedPastWatermark += moved;
        log.warn({ watermark: this.watermark, events: moved }, 'events for slices the flush already took went to the next open slice (counted as late)');
      }
      // Retried on its own: an outage here must not apply the counts again.
      return { deltas, committed: await this.commit(id, events, jobs) };
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
