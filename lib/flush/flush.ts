/**
 * The flush: every finished slice after the watermark goes from the ring to
 * MySQL, one transaction per slice, under a lock so that two flushes never
 * interleave. Slices that left the ring before being flushed are recorded as
 * lost, never skipped silently.
 *
 * A slice is streamed, not loaded: batches of store.rowsPerStatement pairs go
 * from memcached into the slice's open transaction, each read overlapping the
 * previous batch's upsert, so memory stays at a couple of batches whatever
 * the slice's size.
 *
 * Before reading a slice, the flush decides every fold listed on it
 * (claims.ts): a fold still open (its worker died or stalled mid-store) is
 * aborted, so it can never commit later, and a slice with a fold that may
 * have written counters without committing is reported `maybe-duplicated`,
 * with the bound (those folds' events there), never silently `flushed`.
 */
import { FlushClockError } from '../base/errors.ts';
import type { Logger } from '../base/log.ts';
import type { CountRows } from '../domain/counts.ts';
import { U64_MAX_TEXT } from '../domain/u64.ts';
import { Claims, ClaimsError } from '../count/claims.ts';
import type { Ring } from '../count/ring.ts';
import type { SliceTotals } from '../count/slice-reader.ts';
import { FoldSliceReader, type FoldReaderDeps } from './fold-reader.ts';
import { flushableRange, sliceOf, sliceStartMs, type SliceId } from '../domain/slice.ts';
import type { SliceRecord, Store } from './store.ts';

export interface FlushDeps {
  ring: Ring;
  store: Store;
  sliceSeconds: number;
  ringSlices: number;
  log: Logger;
  /** How long the flush waits for writers still inside a slice (default SEAL_WAIT_MS; tests shorten it). */
  sealWaitMs?: number;
  /** Ring mode `folds` (docs/ring-modes.md): slices are read by deciding their folds and summing the committed ones. Absent: `counters`. */
  folds?: FoldReaderDeps;
}

/** What the flush reads a slice with: SliceReader (counters) or FoldSliceReader (folds). */
interface RowSource {
  next(): Promise<CountRows | null>;
  totals(): SliceTotals;
}

export interface SliceReport {
  slice: SliceId;
  sliceStart: string;
  status: SliceRecord['status'];
  rows: number;
  pairsMissing: number;
  chunksMissing: number;
  events: string | null;
  late: string;
  sumsSaturated: number;
  corruptItems: number;
  /** At most this many of the slice's events are counted twice (see maybe-duplicated). */
  duplicateBound: string;
  note: string;
}

/** Folds listed on a slice that ended aborted: they may have written counters their successors wrote again. */
export interface UnfinishedFolds {
  folds: number;
  /** Their events in the slice: the most that can be counted twice. */
  bound: bigint;
  /** Why the fold list could not be read (it holds what OffLog never writes), if so. */
  unreadable?: string;
}

export interface FlushResult {
  /** False when another flush held the lock and this one gave way. */
  ran: boolean;
  now: string;
  slices: SliceReport[];
  rows: number;
  pairsMissing: number;
  lostSlices: number;
  statements: number;
  durationMs: number;
}

/** How far two readings of a memcached start time (whole seconds, time − uptime) may differ for the same process. */
const BOOT_TOLERANCE_S = 3;
/** How long the flush waits for writers still inside a slice it is about to read (see Ring.seal). */
const SEAL_WAIT_MS = 10_000;
/** How far ahead of this machine's clock a flush's "now" may be without --force. */
const CLOCK_TOLERANCE_MS = 60_000;

/**
 * A flush "now" ahead of the wall clock takes slices that workers are still
 * writing: their later events are not lost (the watermark sends them to the
 * next open slice, counted as late), but they leave the slice of their time.
 * So it needs `force`.
 */
export function checkFlushTime(now: Date, wallClockMs: number, force: boolean): void {
  if (Number.isNaN(now.getTime())) throw new FlushClockError('now: not a valid time');
  const ahead = now.getTime() - wallClockMs;
  if (ahead > CLOCK_TOLERANCE_MS && !force) {
    throw new FlushClockError(
      `now: ${now.toISOString()} is ${Math.round(ahead / 1000)} s ahead of this machine's clock. Flushing ahead closes slices that workers are still ` +
        'writing; their later events then go to the next open slice and are counted as late. Add --force (or "force": true) to do it anyway.',
    );
  }
}

export async function flush(deps: FlushDeps, now: Date, options: { lockWaitSeconds?: number } = {}): Promise<FlushResult> {
  const { ring, store, sliceSeconds, ringSlices, log } = deps;
  // The flush holds no claims: its lease is never written.
  const claims = new Claims(ring);
  const started = performance.now();
  const statementsBefore = store.statements;
  const result: FlushResult = { ran: false, now: now.toISOString(), slices: [], rows: 0, pairsMissing: 0, lostSlices: 0, statements: 0, durationMs: 0 };

  const ran = await store.withFlushLock(options.lockWaitSeconds ?? 10, async () => {
    if ((await store.countsMethod()) === 'upsert' && store.loadRefusal !== null) {
      log.warn({ reason: store.loadRefusal }, 'LOAD DATA LOCAL … REPLACE refused (local_infile off, or no DELETE on the counts table): writing counts with multi-row upserts, about half as fast');
    } else if (store.loadProbeFailure !== null) {
      log.warn({ reason: store.loadProbeFailure }, 'the LOAD DATA probe failed without a refusal (a lock wait, a dropped connection?): writing counts with upserts for now, probing again later');
    }
    const current = sliceOf(now.getTime(), sliceSeconds);
    const { oldest, newest } = flushableRange(current, ringSlices);
    const watermark = await store.watermark();
    let next = watermark === null ? oldest : ((sliceOf(watermark.getTime(), sliceSeconds) + 1) as SliceId);
    // Published again at every run: a memcached that restarted has lost it.
    if (watermark !== null) await ring.seal((next - 1) as SliceId, 0);

    if (next < oldest) {
      // Flushes were missed for longer than the ring holds: say so, once, and move on.
      const count = oldest - next;
      const note = `${count} slice(s) from ${iso(next, sliceSeconds)} to ${iso((oldest - 1) as SliceId, sliceSeconds)} left the ring before they were flushed`;
      log.error({ lostSlices: count }, note);
      const last = (oldest - 1) as SliceId;
      const lost = await store.writeSlice(new Date(sliceStartMs(last, sliceSeconds)), async () => record('lost', null, note, NONE_UNFINISHED));
      result.slices.push(report(last, lost, sliceSeconds));
      result.lostSlices += count;
      next = oldest;
    }

    const restartedAt = await memcachedRestart(ring, store, log);
    const readWithWriters = await writersLeftSince(ring, store, oldest, sliceSeconds, restartedAt, log);
    for (let s = next; s <= newest; s = (s + 1) as SliceId) {
      const restarted = restartedAt !== null && restartedAfter(restartedAt, sliceStartMs(s, sliceSeconds));
      // Writers see the slice as taken from here on; those already inside finish first.
      const inside = await ring.seal(s, deps.sealWaitMs ?? SEAL_WAIT_MS);
      // Folds mode decides the slice's folds itself (giving open ones time to commit) and counts only committed ones: nothing to report.
      const unfinished = deps.folds ? NONE_UNFINISHED : await unfinishedFolds(claims, s);
      if (inside > 0) {
        log.warn({ slice: iso(s, sliceSeconds), writers: inside, abortedFolds: unfinished.folds }, 'writers still inside the slice after the wait (a worker paused, or died mid-store?); reading it anyway: if one leaves later without an aborted fold to store again, the next flush marks the slice incomplete');
        readWithWriters.set(s, { inside, covered: unfinished.folds, readAt: Date.now() });
      }
      const written = await store.writeSlice(new Date(sliceStartMs(s, sliceSeconds)), async (write) => {
        const reader: RowSource = deps.folds ? await openFolds(deps.folds, s, store.rowsPerStatement, log, sliceSeconds) : await ring.openSlice(s, store.rowsPerStatement);
        await copyRows(reader, write);
        const totals = reader.totals();
        const { status, note } = judge(totals, restarted, restartedAt, inside, unfinished);
        return record(status, totals, note, unfinished);
      });
      const r = report(s, written, sliceSeconds);
      result.slices.push(r);
      result.rows += r.rows;
      result.pairsMissing += r.pairsMissing;
      if (r.status !== 'flushed') log.error(r, `slice ${r.sliceStart} is ${r.status}: ${r.note}`);
    }
    await store.setState(WRITERS_STATE, JSON.stringify(Object.fromEntries(readWithWriters)));
    await rememberBootTimes(ring, store);
    return true;
  });

  result.ran = ran === true;
  result.statements = store.statements - statementsBefore;
  result.durationMs = Math.round(performance.now() - started);
  if (!result.ran) log.warn({ now: result.now }, 'another flush holds the lock; this one gave way');
  else log.info({ ...result, slices: result.slices.length }, 'flush done');
  return result;
}

/**
 * Moves a slice's rows from the reader to the writer, reading the next batch
 * from memcached while the current one is being written, so neither server
 * waits for the other. The upsert is sent first (building its text and
 * writing it to the socket happen before write() returns), then the next
 * read starts: MariaDB, the slower side, never waits for the read's setup.
 */
async function copyRows(reader: RowSource, write: (rows: CountRows) => Promise<void>): Promise<void> {
  let rows = await reader.next();
  while (rows !== null) {
    const writing = write(rows);
    const reading = reader.next();
    // A read that fails while the write is pending must not count as an unhandled
    // rejection; the handler marks it handled, and awaiting it below still throws.
    reading.catch(() => undefined);
    await writing;
    rows = await reading;
  }
}

/** Folds mode: decides the slice's folds and sums the committed ones (fold-reader.ts), saying what it aborted. */
async function openFolds(deps: FoldReaderDeps, s: SliceId, batch: number, log: Logger, sliceSeconds: number): Promise<RowSource> {
  const reader = await FoldSliceReader.open(deps, s, batch);
  const c = reader.census;
  if (c.abortedHere > 0) log.warn({ slice: iso(s, sliceSeconds), ...c }, 'folds still open at the flush were aborted (their workers store them again, in a later slice)');
  else log.debug({ slice: iso(s, sliceSeconds), ...c }, 'folds decided');
  return reader;
}

/**
 * Decides every fold listed on the slice, aborting those still open (their
 * worker died or stalled mid-store: aborted, they can never commit), and
 * returns those that ended aborted: each may have written counters that the
 * fold which took its jobs over wrote again.
 */
async function unfinishedFolds(claims: Claims, slice: SliceId): Promise<UnfinishedFolds> {
  let listed: Awaited<ReturnType<Claims['foldsOf']>>;
  try {
    listed = await claims.foldsOf(slice);
  } catch (err) {
    // Like any item OffLog never writes: the slice is reported, and the flush goes on.
    if (err instanceof ClaimsError) return { folds: 0, bound: 0n, unreadable: err.message };
    throw err;
  }
  if (listed.length === 0) return NONE_UNFINISHED;
  const decisions = await claims.abortOpen(listed.map((f) => f.fold));
  let folds = 0;
  let bound = 0n;
  for (const { fold, events } of listed) {
    if (decisions.get(fold)?.state !== 'aborted') continue;
    folds++;
    bound += BigInt(events);
  }
  return { folds, bound };
}

const NONE_UNFINISHED: UnfinishedFolds = { folds: 0, bound: 0n };

/**
 * A slice's status: the worst of what was found (corrupt, then incomplete,
 * then maybe-duplicated, then saturated), with every finding in the note.
 */
export function judge(t: SliceTotals, restarted: boolean, restartedAt: number | null, writersInside = 0, unfinished: UnfinishedFolds = NONE_UNFINISHED): { status: SliceRecord['status']; note: string } {
  const notes: string[] = [];
  let status: SliceRecord['status'] = 'flushed';
  if (t.corrupt > 0) {
    status = 'corrupt';
    notes.push(`${t.corrupt} item(s) in memcached are not what OffLog writes and were skipped (first: ${t.corruptNote}); the other rows were written`);
  }
  if (unfinished.unreadable !== undefined) {
    status = 'corrupt';
    notes.push(`the slice's fold list is unreadable (${unfinished.unreadable}): whether a fold was counted twice cannot be told`);
  }
  const incomplete: string[] = [];
  if (restarted) incomplete.push(`memcached restarted at ${new Date(restartedAt! * 1000).toISOString()}, after this slice began: earlier counts are gone`);
  if (t.missingPairs > 0) incomplete.push(`${t.missingPairs} pair(s) listed but their counters are gone (evicted or restarted)`);
  if (t.missingChunks > 0) incomplete.push(`${t.missingChunks} register chunk(s) gone: their pairs cannot be found`);
  if (t.valueSumsMade !== null && BigInt(t.valueSumsFound) < t.valueSumsMade) {
    incomplete.push(`${t.valueSumsMade - BigInt(t.valueSumsFound)} value sum(s) gone (evicted or restarted): those pairs' sums read as 0`);
  }
  if (t.valueSumsMade === null && t.valueSumsFound > 0 && t.events !== null && t.eventsCountingSums === t.events) {
    // Every writer makes `vn` before its first value sum: sums without it mean `vn` was evicted, and with it the check above.
    incomplete.push(`the slice's count of value sums (vn) is gone (evicted) while ${t.valueSumsFound} value sum(s) were found: sums that were evicted too cannot be told from sums of 0`);
  }
  if (t.events !== null && t.counted < t.events) incomplete.push(`rows hold ${t.counted} events but workers counted ${t.events}`);
  if (incomplete.length > 0 && status === 'flushed') status = 'incomplete';
  notes.push(...incomplete);
  if (writersInside > 0) {
    notes.push(`${writersInside} writer(s) still inside the slice when it was read (a worker that died mid-store, or one paused: if it leaves, the next flush marks the slice incomplete)`);
  }
  if (unfinished.folds > 0) {
    if (status === 'flushed') status = 'maybe-duplicated';
    notes.push(`${unfinished.folds} fold(s) may have written here without committing (a worker died or stalled mid-store; aborted, their jobs are stored again): up to ${unfinished.bound} event(s) may be counted twice`);
  }
  if (t.saturated > 0) {
    if (status === 'flushed') status = 'saturated';
    const found = t.wrapsHeld > 0 ? ` (${t.wrapsHeld} found wrapped by memcached, their writer gone before holding them)` : '';
    notes.push(`${t.saturated} value sum(s) reached 2^64-1 (BIGINT UNSIGNED's maximum) and are held at ${U64_MAX_TEXT}${found}: the true sums may be larger`);
  }
  return { status, note: notes.join('; ') };
}

/**
 * Whether a memcached restart (its start time, whole seconds) may have taken
 * counts of a slice starting at `sliceStartMs`. memcached reports its start
 * up to a couple of seconds early (it starts its clock back), so a restart in
 * a slice's first seconds looked like one before it; within the tolerance, it
 * counts as after.
 */
export function restartedAfter(restartedAtS: number, sliceStartMs: number): boolean {
  return (restartedAtS + BOOT_TOLERANCE_S) * 1000 > sliceStartMs;
}

/**
 * The newest restart of any memcached server ever seen (its boot time, whole
 * seconds), or null. A restart found now (a server's pid or start time is
 * not what the last flush saw) is recorded at once, before any slice is
 * read: the boot times are overwritten at the end of every flush, and the
 * slices being written when it happened (the current one, the one before)
 * are flushed by later flushes, which must still see it. One time is
 * enough: a slice lost counts to a restart exactly when one happened after
 * it began, and then the newest did.
 */
async function memcachedRestart(ring: Ring, store: Store, log: Logger): Promise<number | null> {
  const recorded = await store.getState(RESTART_STATE);
  let restartedAt: number | null = recorded === null ? null : Number(recorded);
  let found = false;
  for (const b of await ring.bootTimes()) {
    const before = (await store.getState(`memcached_boot:${b.server}`))?.split('@');
    if (before !== undefined && (Number(before[0]) !== b.pid || Math.abs(Number(before[1]) - b.bootedAt) > BOOT_TOLERANCE_S)) {
      log.error({ server: b.server, bootedAt: new Date(b.bootedAt * 1000).toISOString() }, 'memcached restarted since the last flush');
      if (restartedAt === null || b.bootedAt > restartedAt) (restartedAt = b.bootedAt), (found = true);
    }
  }
  if (found) await store.setState(RESTART_STATE, String(restartedAt));
  return restartedAt;
}

/**
 * Slices read with writers still inside (slice → how many, and how many of
 * them the flush found an aborted fold for), kept from one flush to the next.
 * A writer that died mid-store never leaves (its count stays until the key
 * expires): its partial fold is in the slice, and its jobs are redelivered
 * and taken over. A live writer paused past the wait leaves once it has
 * stored the rest of its fold, after the read: if the flush aborted that
 * fold, the writer stores it again elsewhere (Worker.store) and nothing is
 * missing; if not, those counts are in no row. So a slice whose count of
 * writers has dropped by more than its aborted folds since its read is
 * marked incomplete; one that leaves the ring first is forgotten.
 */
async function writersLeftSince(ring: Ring, store: Store, oldest: SliceId, sliceSeconds: number, restartedAt: number | null, log: Logger): Promise<Map<SliceId, WritersRead>> {
  const pending = new Map<SliceId, WritersRead>();
  const text = await store.getState(WRITERS_STATE);
  for (const [key, read] of Object.entries(text === null ? {} : (JSON.parse(text) as Record<string, WritersRead | number>))) {
    const slice = Number(key) as SliceId;
    if (slice < oldest) continue;
    const { inside, covered, readAt } = typeof read === 'number' ? { inside: read, covered: 0, readAt: undefined } : read;
    const left = inside - (await ring.writersIn(slice));
    if (left <= covered) {
      pending.set(slice, { inside, covered, readAt });
      continue;
    }
    // A restart after the read empties `w` whether its writers left or died inside: which it was cannot be told, so the note names the restart.
    const lostCount = restartedAt !== null && readAt !== undefined && restartedAfter(restartedAt, readAt);
    const note = lostCount
      ? `memcached restarted at ${new Date(restartedAt * 1000).toISOString()}, after this slice was read with ${inside} writer(s) inside: whether ${left - covered} of them left afterwards or died inside cannot be told; what a live one stored after the read is not in these rows`
      : `${left - covered} writer(s) still inside when the slice was read left afterwards (a live worker paused past the flush's wait): what they stored after the read is not in these rows`;
    log.error({ slice: iso(slice, sliceSeconds), writers: left - covered }, note);
    await store.reportSlice(new Date(sliceStartMs(slice, sliceSeconds)), note);
  }
  return pending;
}

/** Writers inside a slice when it was read, how many of them had a fold the flush aborted, and when (ms; absent in state written before it was kept). */
interface WritersRead { inside: number; covered: number; readAt?: number | undefined }

const WRITERS_STATE = 'slices_read_with_writers_inside';

/** Where the newest memcached restart seen is kept (see memcachedRestart). */
const RESTART_STATE = 'memcached_restarted_at';

async function rememberBootTimes(ring: Ring, store: Store): Promise<void> {
  for (const b of await ring.bootTimes()) await store.setState(`memcached_boot:${b.server}`, `${b.pid}@${b.bootedAt}`);
}

function record(status: SliceRecord['status'], t: SliceTotals | null, note: string, unfinished: UnfinishedFolds): SliceRecord {
  return {
    status,
    rows: t?.rows ?? 0,
    pairsMissing: t?.missingPairs ?? 0,
    chunksMissing: t?.missingChunks ?? 0,
    events: t?.events ?? null,
    late: t?.late ?? 0n,
    sumsSaturated: t?.saturated ?? 0,
    corruptItems: t?.corrupt ?? 0,
    duplicateBound: unfinished.bound,
    note,
  };
}

function report(slice: SliceId, r: SliceRecord, sliceSeconds: number): SliceReport {
  return {
    slice,
    sliceStart: iso(slice, sliceSeconds),
    status: r.status,
    rows: r.rows,
    pairsMissing: r.pairsMissing,
    chunksMissing: r.chunksMissing,
    events: r.events?.toString() ?? null,
    late: r.late.toString(),
    sumsSaturated: r.sumsSaturated,
    corruptItems: r.corruptItems,
    duplicateBound: r.duplicateBound.toString(),
    note: r.note,
  };
}

const iso = (s: SliceId, sliceSeconds: number): string => new Date(sliceStartMs(s, sliceSeconds)).toISOString();
