/**
 * Pipeline health in one read: recent slices (status, rows, events, late,
 * missing, lost), flush lag, Gearman queue depth, dead letters, memcached
 * fill and evictions. Each part is read on its own, so a server that is down
 * shows as that part's error, not as a failed report.
 */
import type { RowDataPacket } from 'mysql2/promise';
import { label, type HostPort } from '../base/config.ts';
import { FN_BATCH, FN_DEAD_LETTER, FN_LOG_SIMPLE } from '../domain/contract.ts';
import { sliceOf } from '../domain/slice.ts';
import { readBacklog, type Backlog } from '../flush/backlog.ts';
import type { Ring } from '../count/ring.ts';
import type { Store } from '../flush/store.ts';
import { adminStatus } from '../wire/gearman.ts';

export interface HealthDeps {
  store: Store;
  ring: Pick<Ring, 'bootTimes'>;
  gearmanServers: readonly HostPort[];
  sliceSeconds: number;
  /** Whether slices are published (OFFLOG_EVENT_BUS): without a bus, every slice stays unpublished and that is no fault. */
  busEnabled?: boolean;
}

export interface SliceHealth {
  sliceStart: string;
  status: string;
  rows: number;
  events: string | null;
  late: string;
  pairsMissing: number;
  chunksMissing: number;
  sumsSaturated: number;
  corruptItems: number;
  /** maybe-duplicated: at most this many events counted twice. */
  duplicateBound: string;
  note: string;
  flushedAt: string;
}

export type Part<T> = T | { error: string };

export interface HealthReport {
  now: string;
  /** ok: nothing to look at; warn: late events or a flush running behind; problem: counts were lost or the pipeline is stuck. */
  level: 'ok' | 'warn' | 'problem';
  reasons: string[];
  flush: Part<{ watermark: string | null; lagSlices: number | null; lagSeconds: number | null; lastFlushAt: string | null }>;
  slices: Part<{ recent: SliceHealth[]; totals: { late: string; pairsMissing: number; lost: number; incomplete: number; corrupt: number; saturated: number; maybeDuplicated: number } }>;
  gearman: { server: string; queued: number; running: number; workers: number; deadLettersQueued: number; functions?: Record<string, { queued: number; running: number; workers: number }>; error?: string }[];
  deadLetters: Part<{ stored: number; latest: { id: number; receivedAt: string; fn: string; error: string }[] }>;
  memcached: Part<{ server: string; items: number; bytes: number; limitBytes: number; fill: number; evictions: number }[]>;
  /** What waits after the flush: slices not on the bus, slices not rolled up, and a publish that keeps failing (see flush/backlog.ts). */
  backlog: Part<Backlog & { busEnabled: boolean }>;
}

const message = (err: unknown): string => (err instanceof Error ? err.message : String(err));

async function part<T>(fn: () => Promise<T>): Promise<Part<T>> {
  try {
    return await fn();
  } catch (err) {
    return { error: message(err) };
  }
}

export async function health(deps: HealthDeps, sliceCount: number, nowMs = Date.now()): Promise<HealthReport> {
  const { store, sliceSeconds } = deps;
  const t = store.tables;
  const [flush, slices, gearman, deadLetters, memcached, backlog] = await Promise.all([
    part(async () => {
      const [rows] = await store.pool.query<RowDataPacket[]>(`SELECT MAX(slice_start) AS w, MAX(flushed_at) AS f FROM \`${t.slices}\``);
      const w = (rows[0]?.w as Date | null) ?? null;
      const f = (rows[0]?.f as Date | null) ?? null;
      // The newest slice a flush may take now is two behind the current one (the slice guard).
      const newest = sliceOf(nowMs, sliceSeconds) - 2;
      const lag = w === null ? null : Math.max(0, newest - sliceOf(w.getTime(), sliceSeconds));
      return { watermark: w?.toISOString() ?? null, lagSlices: lag, lagSeconds: lag === null ? null : lag * sliceSeconds, lastFlushAt: f?.toISOString() ?? null };
    }),
    part(async () => {
      const [rows] = await store.pool.query<RowDataPacket[]>(
        `SELECT slice_start, status, row_count, events, late, pairs_missing, chunks_missing, sums_saturated, corrupt_items, duplicate_bound, note, flushed_at
         FROM \`${t.slices}\` ORDER BY slice_start DESC LIMIT ?`,
        [sliceCount],
      );
      const recent: SliceHealth[] = rows.map((r) => ({
        sliceStart: (r.slice_start as Date).toISOString(),
        status: String(r.status),
        rows: Number(r.row_count),
        events: r.events === null ? null : String(r.events),
        late: String(r.late),
        pairsMissing: Number(r.pairs_missing),
        chunksMissing: Number(r.chunks_missing),
        sumsSaturated: Number(r.sums_saturated),
        corruptItems: Number(r.corrupt_items),
        duplicateBound: String(r.duplicate_bound),
        note: String(r.note),
        flushedAt: (r.flushed_at as Date).toISOString(),
      }));
      const count = (s: string) => recent.filter((r) => r.status === s).length;
      return {
        recent,
        totals: {
          late: recent.reduce((n, r) => n + BigInt(r.late), 0n).toString(),
          pairsMissing: recent.reduce((n, r) => n + r.pairsMissing, 0),
          lost: count('lost'),
          incomplete: count('incomplete'),
          corrupt: count('corrupt'),
          saturated: count('saturated'),
          maybeDuplicated: count('maybe-duplicated'),
        },
      };
    }),
    Promise.all(
      deps.gearmanServers.map(async (s) => {
        try {
          const fns = await adminStatus(s);
          const ours = [FN_BATCH, FN_LOG_SIMPLE].map((fn) => fns.get(fn) ?? { queued: 0, running: 0, workers: 0 });
          return {
            server: label(s),
            queued: ours.reduce((n, f) => n + f.queued, 0),
            running: ours.reduce((n, f) => n + f.running, 0),
            workers: Math.max(...ours.map((f) => f.workers)),
            deadLettersQueued: fns.get(FN_DEAD_LETTER)?.queued ?? 0,
            functions: Object.fromEntries([FN_BATCH, FN_LOG_SIMPLE, FN_DEAD_LETTER].filter((fn) => fns.has(fn)).map((fn) => [fn, fns.get(fn)!])),
          };
        } catch (err) {
          return { server: label(s), queued: 0, running: 0, workers: 0, deadLettersQueued: 0, error: message(err) };
        }
      }),
    ),
    part(async () => {
      const [[count], latest] = await Promise.all([
        store.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n FROM \`${t.dead}\``).then(([r]) => r),
        store.deadLetters(5),
      ]);
      return {
        stored: Number(count?.n ?? 0),
        latest: latest.map((d) => ({ id: d.id, receivedAt: d.receivedAt.toISOString(), fn: d.fn, error: d.error.slice(0, 300) })),
      };
    }),
    part(async () =>
      (await deps.ring.bootTimes()).map((m) => ({
        server: m.server, items: m.items, bytes: m.bytes, limitBytes: m.limitBytes, fill: m.limitBytes > 0 ? m.bytes / m.limitBytes : 0, evictions: m.evictions,
      })),
    ),
    part(async () => ({ ...(await readBacklog(store)), busEnabled: deps.busEnabled === true })),
  ]);
  const { level, reasons } = judge({ flush, slices, gearman, deadLetters, memcached, backlog }, sliceSeconds, nowMs);
  return { now: new Date(nowMs).toISOString(), level, reasons, flush, slices, gearman, deadLetters, memcached, backlog };
}

const isError = (p: unknown): p is { error: string } => typeof p === 'object' && p !== null && 'error' in p;

/** Why someone should look: each reason is a sentence an operator can act on. */
function judge(h: Omit<HealthReport, 'now' | 'level' | 'reasons'>, sliceSeconds: number, nowMs: number): { level: HealthReport['level']; reasons: string[] } {
  const problems: string[] = [];
  const warnings: string[] = [];
  if (isError(h.flush)) problems.push(`MySQL: ${h.flush.error}`);
  else if (h.flush.lagSlices !== null && h.flush.lagSlices > 1) {
    (h.flush.lagSlices * sliceSeconds > 3600 ? problems : warnings).push(`the flush is ${h.flush.lagSlices} slices behind`);
  } else if (h.flush.watermark === null) warnings.push('nothing has been flushed yet');
  if (!isError(h.slices)) {
    const s = h.slices.totals;
    if (s.lost > 0) problems.push(`${s.lost} recent slices lost (left the ring before a flush)`);
    if (s.incomplete > 0) problems.push(`${s.incomplete} recent slices incomplete (${s.pairsMissing} pairs missing from memcached)`);
    if (s.corrupt > 0) problems.push(`${s.corrupt} recent slices with corrupt items`);
    if (s.maybeDuplicated > 0) {
      const bound = h.slices.recent.reduce((n, r) => n + BigInt(r.duplicateBound), 0n);
      problems.push(`${s.maybeDuplicated} recent slices maybe duplicated (a worker died or stalled mid-store): up to ${bound} events counted twice`);
    }
    if (s.saturated > 0) warnings.push(`${s.saturated} recent slices with value sums held at 2^64-1`);
    if (BigInt(s.late) > 0n) warnings.push(`${s.late} late events in recent slices`);
  }
  for (const g of h.gearman) if (g.error) problems.push(`gearmand ${g.server}: ${g.error}`);
  const queued = h.gearman.reduce((n, g) => n + g.queued, 0);
  const workers = h.gearman.reduce((n, g) => n + g.workers, 0);
  if (queued > 0 && workers === 0) warnings.push(`${queued} jobs queued and no worker connected`);
  const deadQueued = h.gearman.reduce((n, g) => n + g.deadLettersQueued, 0);
  if (deadQueued > 0) warnings.push(`${deadQueued} dead letters waiting on the queue (offlog deadletters moves them)`);
  if (isError(h.memcached)) problems.push(`memcached: ${h.memcached.error}`);
  else {
    const evictions = h.memcached.reduce((n, m) => n + m.evictions, 0);
    if (evictions > 0) warnings.push(`memcached evicted ${evictions} items since it started: counts may be missing`);
    if (h.memcached.some((m) => m.fill > 0.9)) warnings.push('memcached is over 90 % full');
  }
  if (isError(h.deadLetters)) problems.push(`dead letters: ${h.deadLetters.error}`);
  if (isError(h.backlog)) problems.push(`backlog: ${h.backlog.error}`);
  else judgeBacklog(h.backlog, sliceSeconds, nowMs, problems, warnings);
  return { level: problems.length > 0 ? 'problem' : warnings.length > 0 ? 'warn' : 'ok', reasons: [...problems, ...warnings] };
}


/** Publishing and rolling up: failing once is a warning (the next flush tries again); failing for three flushes, or a slice left an hour, is a problem. */
function judgeBacklog(b: Backlog & { busEnabled: boolean }, sliceSeconds: number, nowMs: number, problems: string[], warnings: string[]): void {
  if (b.busEnabled && b.publishFailedRuns > 0) {
    const since = b.publishFailingSince === null ? '' : ` since ${b.publishFailingSince}`;
    const text = `publishing SliceFlushed has failed${since} (${b.publishFailedRuns} flushes in a row, ${b.unpublished} slices waiting; last error: ${b.lastPublishError ?? 'unknown'}): `
      + 'check the bus, the function\'s events:PutEvents permission and, in a VPC, the com.amazonaws.<region>.events endpoint';
    (b.publishFailedRuns >= 3 ? problems : warnings).push(text);
  }
  if (b.notRolledUp > 0 && b.oldestNotRolledUpFlushedAt !== null) {
    const ageSeconds = (nowMs - Date.parse(b.oldestNotRolledUpFlushedAt)) / 1000;
    // The subscriber has half a slice and the repair runs with the next flush: older than two slices is behind.
    if (ageSeconds > 2 * sliceSeconds) {
      const text = `${b.notRolledUp} slices not rolled up (oldest ${b.oldestNotRolledUp}, flushed ${Math.round(ageSeconds / 60)} min ago): `
        + 'reports over hours and days miss them and prune keeps their raw rows; the flush repairs a few days a run (offlog rollup --from --to does it by hand)';
      (ageSeconds > 3600 ? problems : warnings).push(text);
    }
  }
}
