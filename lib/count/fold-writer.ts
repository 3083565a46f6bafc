/**
 * Ring mode `folds`, the worker's side: stores one fold so that each of its
 * jobs counts exactly once, whatever crashes and whenever.
 *
 *   1. claim each job (`add j:{unique}`): a job claimed by a committed fold is a
 *      duplicate and is left out; one held by an aborted fold, or by an open
 *      fold whose worker's lease ran out, is taken over (see resolve);
 *   2. announce the fold on each slice it touches (the slice's fold list);
 *   3. re-read the flush's watermark: a slice taken meanwhile may have been
 *      read without this fold, so the fold is aborted and done again as a new
 *      fold, its events moved to the first open slice (counted late);
 *   4. `set` its blobs (immutable, per slice);
 *   5. commit: `add f:F c …` — the one point where the fold starts to count.
 *      A flush that got there first (`add f:F a`) makes it fail: again, as a new fold.
 *
 * The caller acknowledges the jobs after store() resolves. A crash anywhere
 * before 5 leaves an open or aborted fold that no flush counts; its jobs come
 * back from gearmand and their claims are taken over. A crash after 5 leaves
 * a committed fold whose redelivered jobs find their claims and are skipped.
 */
import type { Logger } from '../base/log.ts';
import type { Deltas } from '../domain/aggregate.ts';
import { foldBlobs, foldEvents } from '../domain/foldblob.ts';
import { sliceOf, type SliceId } from '../domain/slice.ts';
import type { FoldBlobs } from './fold-blobs.ts';
import type { ClaimHolder, FoldClaims, FoldDecision, FoldId, SettleOptions } from './claims.ts';

export type { FoldId } from './claims.ts';

/** What the fold protocol needs of claims.ts (its Claims class; the model test runs the same class on a fake memcached). */
export interface FoldProtocol {
  readonly lease: string;
  newFold(): FoldId;
  renewLease(): Promise<void>;
  claim(uniques: readonly string[], fold: FoldId): Promise<Map<string, ClaimHolder | null>>;
  announce(fold: FoldId, events: ReadonlyMap<SliceId, number>): Promise<void>;
  commit(fold: FoldId, totals: ReadonlyMap<SliceId, number>): Promise<boolean>;
  abort(fold: FoldId): Promise<FoldDecision>;
  decision(fold: FoldId): Promise<FoldDecision>;
  leaseAlive(lease: string): Promise<boolean>;
  takeOver(unique: string, holder: ClaimHolder, fold: FoldId): Promise<boolean>;
  foldsOf(slice: SliceId): Promise<{ fold: FoldId; events: number }[]>;
  claimFold(uniques: readonly string[], options?: SettleOptions): Promise<FoldClaims>;
}

/** The worker stopped while a claim was still held by another worker's open fold: the fold's jobs go back to gearmand. */
export class FoldStoppedError extends Error {
  override name = 'FoldStoppedError';
}

/** The step boundaries a fault hook may stop a worker at (OFFLOG_FAULT=<step>:<n>). */
export const FOLD_STEPS = ['claimed', 'announced', 'blobs', 'committed', 'acked'] as const;
export type FoldStep = (typeof FOLD_STEPS)[number];

export interface FoldWriterDeps {
  claims: FoldProtocol;
  blobs: FoldBlobs;
  /** The flush's watermark, as the ring publishes it (Ring.watermark). */
  watermark(): Promise<SliceId | null>;
  sliceSeconds: number;
  now: () => number;
  sleep: (ms: number) => Promise<void>;
  log: Logger;
  /** Called at each step boundary (the fault hook; the model test's crash points are finer). */
  reached?: (step: FoldStep) => void;
  /** How long a claim held by an open fold of a live worker is waited for before that fold is aborted (default: Claims', twice the lease). */
  holderWaitMs?: number;
}

/** A fold's jobs as the writer sees them: their unique ids, and how to fold them leaving some out. */
export interface FoldJobs {
  /** Unique ids of the jobs whose events are in build()'s deltas ('' = none: such a job cannot be claimed, and counts as today). */
  uniques: readonly string[];
  /** The fold's deltas without the jobs in `skip` (duplicates found while claiming). */
  build(skip: ReadonlySet<string>): Deltas;
}

export interface StoreOptions {
  /** A fold that already holds every job's claim (settled): the first try. */
  claimed?: FoldId | null;
  /** Told of each new fold tried, and of the one it replaces. */
  track?: (fold: FoldId, previous: FoldId | null) => void;
  /** The worker's folds being stored: a job one of them holds is a duplicate here. */
  inFlight?: ReadonlySet<FoldId>;
  /**
   * Folds this same fold was stored as before (a try cut short by an outage): never in flight, whatever
   * `inFlight` says. Their claims are settled like any other's: committed (the reply was lost) → duplicate; open → taken over.
   */
  own?: ReadonlySet<FoldId>;
  /** True once the worker is stopping: waiting for a claim's holder ends. */
  stopped?: () => boolean;
}

export interface StoredFold {
  deltas: Deltas;
  /** Jobs left out: another fold committed them. */
  duplicates: ReadonlySet<string>;
  /** Folds tried: more than 1 when a flush took a slice or aborted the fold meanwhile. */
  attempts: number;
  /** The fold that committed (null when there was nothing to store). */
  fold: FoldId | null;
}

/** A fold is tried again (a new fold) at most this many times in a row before the store fails. */
const MAX_ATTEMPTS = 20;

export class FoldWriter {
  /** The highest watermark seen: never lowered (a memcached that lost it must not send events back into a flushed slice). */
  private wm: SliceId | null = null;

  constructor(private readonly deps: FoldWriterDeps) {}

  /**
   * Stores the fold. `claimed`: a fold whose claims on every job were made
   * and settled already (the worker's prepare), tried first. `track` is told
   * of each new fold tried (and the one it replaces), `inFlight` are the
   * worker's folds being stored (their claims are not taken over).
   */
  async store(jobs: FoldJobs, options: StoreOptions = {}): Promise<StoredFold> {
    const { claims, blobs, reached } = this.deps;
    const duplicates = new Set<string>();
    const uniques = [...new Set(jobs.uniques.filter(Boolean))];
    let deltas = jobs.build(duplicates);
    let previous: FoldId | null = options.claimed ?? null;
    const tried = new Set<FoldId>([...(options.own ?? []), ...(previous === null ? [] : [previous])]);
    for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
      let fold: FoldId;
      if (attempt === 1 && options.claimed) fold = options.claimed;
      else {
        // Claimed afresh: the claims the last fold holds (aborted now) are taken over, and jobs committed meanwhile found.
        // This store's own earlier folds are aborted now, not in flight: their claims are taken over, never taken for duplicates.
        const inFlight = new Set([...(options.inFlight ?? [])].filter((f) => !tried.has(f)));
        const c = await claims.claimFold(uniques.filter((u) => !duplicates.has(u)), { inFlight, ...(this.deps.holderWaitMs === undefined ? {} : { waitMs: this.deps.holderWaitMs }), ...(options.stopped ? { stopped: options.stopped } : {}) });
        options.track?.(c.fold, previous);
        previous = fold = c.fold;
        tried.add(fold);
        if (c.unresolved.length > 0) throw new FoldStoppedError(`stopped while ${c.unresolved.length} job(s) were claimed by another worker's open fold (first: ${c.unresolved[0]})`);
        if (c.duplicates.length > 0) {
          for (const u of c.duplicates) duplicates.add(u);
          deltas = jobs.build(duplicates);
        }
      }
      if (deltas.pairs.length === 0 && deltas.late.size === 0) {
        // Nothing left to count (every job a duplicate, or none had events): the fold commits empty, so its claims stand.
        if (await claims.commit(fold, new Map())) return { deltas, duplicates, attempts: attempt, fold };
        continue;
      }
      await claims.renewLease();
      reached?.('claimed');
      deltas = this.aboveWatermark(deltas);
      const events = foldEvents(deltas);
      await claims.announce(fold, events);
      reached?.('announced');
      // After the announcement: a flush that takes a slice from now on finds this fold in its list.
      if (this.taken(deltas, await this.readWatermark())) {
        await claims.abort(fold);
        continue;
      }
      await blobs.write(fold, foldBlobs(deltas));
      reached?.('blobs');
      if (await claims.commit(fold, events)) {
        reached?.('committed');
        return { deltas, duplicates, attempts: attempt, fold };
      }
      // A flush aborted it (it took a slice, or this worker was paused past its lease): again, as a new fold.
      this.deps.log.warn({ fold, attempt }, 'fold aborted by a flush before its commit; storing it again as a new fold');
      await this.readWatermark();
    }
    throw new Error(`a fold was aborted ${MAX_ATTEMPTS} times in a row: is a flush running with a clock far ahead?`);
  }

  private async readWatermark(): Promise<SliceId | null> {
    const wm = await this.deps.watermark();
    if (wm !== null && (this.wm === null || wm > this.wm)) this.wm = wm;
    return this.wm;
  }

  private taken(deltas: Deltas, wm: SliceId | null): boolean {
    return wm !== null && deltas.slices().some((s) => s <= wm);
  }

  /** The deltas with every slice at or below the known watermark moved to the first open slice (late). */
  private aboveWatermark(deltas: Deltas): Deltas {
    const wm = this.wm;
    if (!this.taken(deltas, wm)) return deltas;
    const current = sliceOf(this.deps.now(), this.deps.sliceSeconds);
    return deltas.movedAbove(wm!, Math.max(current, wm! + 1) as SliceId);
  }
}
