/**
 * The flush: every finished slice after the watermark goes from the ring to
 * MySQL, one transaction per slice, under a lock so that two flushes never
 * interleave. Slices that left the ring before being flushed are recorded as
 * lost, never skipped silently.
 */
import type { Logger } from './log.ts';
import type { Ring, SliceContents } from './ring.ts';
import { flushableRange, sliceOf, sliceStartMs, type SliceId } from './slice.ts';
import type { SliceRecord, Store } from './store.ts';

export interface FlushDeps {
  ring: Ring;
  store: Store;
  sliceSeconds: number;
  ringSlices: number;
  log: Logger;
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
  note: string;
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

export async function flush(deps: FlushDeps, now: Date, options: { lockWaitSeconds?: number } = {}): Promise<FlushResult> {
  const { ring, store, sliceSeconds, ringSlices, log } = deps;
  const started = performance.now();
  const statementsBefore = store.statements;
  const result: FlushResult = { ran: false, now: now.toISOString(), slices: [], rows: 0, pairsMissing: 0, lostSlices: 0, statements: 0, durationMs: 0 };

  const ran = await store.withFlushLock(options.lockWaitSeconds ?? 10, async () => {
    const current = sliceOf(now.getTime(), sliceSeconds);
    const { oldest, newest } = flushableRange(current, ringSlices);
    const watermark = await store.watermark();
    let next = watermark === null ? oldest : ((sliceOf(watermark.getTime(), sliceSeconds) + 1) as SliceId);

    if (next < oldest) {
      // Flushes were missed for longer than the ring holds: say so, once, and move on.
      const count = oldest - next;
      const note = `${count} slice(s) from ${iso(next, sliceSeconds)} to ${iso((oldest - 1) as SliceId, sliceSeconds)} left the ring before they were flushed`;
      log.error({ lostSlices: count }, note);
      const last = (oldest - 1) as SliceId;
      await store.writeSlice(new Date(sliceStartMs(last, sliceSeconds)), null, record('lost', null, note));
      result.slices.push(report(last, 'lost', null, note, sliceSeconds));
      result.lostSlices += count;
      next = oldest;
    }

    const restartedAt = await memcachedRestart(ring, store, log);
    for (let s = next; s <= newest; s = (s + 1) as SliceId) {
      const contents = await ring.read(s);
      const { status, note } = judge(contents, restartedAt !== null && restartedAt * 1000 > sliceStartMs(s, sliceSeconds), restartedAt);
      await store.writeSlice(new Date(sliceStartMs(s, sliceSeconds)), contents, record(status, contents, note));
      const r = report(s, status, contents, note, sliceSeconds);
      result.slices.push(r);
      result.rows += r.rows;
      result.pairsMissing += r.pairsMissing;
      if (status !== 'flushed') log.error(r, `slice ${r.sliceStart} is incomplete: ${note}`);
    }
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

function judge(c: SliceContents, restarted: boolean, restartedAt: number | null): { status: SliceRecord['status']; note: string } {
  const notes: string[] = [];
  if (restarted) notes.push(`memcached restarted at ${new Date(restartedAt! * 1000).toISOString()}, after this slice began: earlier counts are gone`);
  if (c.missingPairs > 0) notes.push(`${c.missingPairs} pair(s) listed but their counters are gone (evicted or restarted)`);
  if (c.missingChunks > 0) notes.push(`${c.missingChunks} register chunk(s) gone: their pairs cannot be found`);
  const counted = c.rows.reduce((n, r) => n + r.count, 0n);
  if (c.events !== null && counted < c.events) notes.push(`rows hold ${counted} events but workers counted ${c.events}`);
  return { status: notes.length > 0 ? 'incomplete' : 'flushed', note: notes.join('; ') };
}

/** The newest boot time of a memcached server that restarted since the last flush, or null. */
async function memcachedRestart(ring: Ring, store: Store, log: Logger): Promise<number | null> {
  let restartedAt: number | null = null;
  for (const b of await ring.bootTimes()) {
    const before = (await store.getState(`memcached_boot:${b.server}`))?.split('@');
    if (before !== undefined && (Number(before[0]) !== b.pid || Math.abs(Number(before[1]) - b.bootedAt) > BOOT_TOLERANCE_S)) {
      log.error({ server: b.server, bootedAt: new Date(b.bootedAt * 1000).toISOString() }, 'memcached restarted since the last flush');
      restartedAt = Math.max(restartedAt ?? 0, b.bootedAt);
    }
  }
  return restartedAt;
}

async function rememberBootTimes(ring: Ring, store: Store): Promise<void> {
  for (const b of await ring.bootTimes()) await store.setState(`memcached_boot:${b.server}`, `${b.pid}@${b.bootedAt}`);
}

function record(status: SliceRecord['status'], c: SliceContents | null, note: string): SliceRecord {
  return {
    status,
    rows: c?.rows.length ?? 0,
    pairsMissing: c?.missingPairs ?? 0,
    chunksMissing: c?.missingChunks ?? 0,
    events: c?.events ?? null,
    late: c?.late ?? 0n,
    note,
  };
}

function report(slice: SliceId, status: SliceRecord['status'], c: SliceContents | null, note: string, sliceSeconds: number): SliceReport {
  return {
    slice,
    sliceStart: iso(slice, sliceSeconds),
    status,
    rows: c?.rows.length ?? 0,
    pairsMissing: c?.missingPairs ?? 0,
    chunksMissing: c?.missingChunks ?? 0,
    events: c?.events?.toString() ?? null,
    late: (c?.late ?? 0n).toString(),
    note,
  };
}

const iso = (s: SliceId, sliceSeconds: number): string => new Date(sliceStartMs(s, sliceSeconds)).toISOString();
