/**
 * The fold protocol's model (ring mode `folds`): two or three workers and a
 * flush run the real FoldWriter, FoldSliceReader and Claims against the
 * in-memory memcached (fake-memcached.ts), with a Gearman stand-in that
 * hands a crashed worker's unacknowledged jobs out again and delivers some
 * jobs twice (a client's re-send to a second gearmand).
 *
 * One run returns what the "database" got per slice and what memcached holds,
 * for test/folds-model.test.ts to judge.
 */
import { Deltas } from '../lib/domain/aggregate.ts';
import type { ActionId, LogEvent, UserId } from '../lib/domain/contract.ts';
import { sliceOf, type SliceId } from '../lib/domain/slice.ts';
import { FoldBlobs } from '../lib/count/fold-blobs.ts';
import { FoldSliceReader } from '../lib/flush/fold-reader.ts';
import { FoldWriter, type FoldId, type FoldProtocol } from '../lib/count/fold-writer.ts';
import { RingKeys } from '../lib/count/keys.ts';
import { Crash, FakeConn, MemoryMemcached, FakeProcess, Schedule } from './memory-memcached.ts';
import { createLogger } from '../lib/base/log.ts';

export const SLICE_SECONDS = 60;
export const RING_SLICES = 6;
const TTL = SLICE_SECONDS * RING_SLICES;
const PREFIX = 'm:';

export interface ModelJob { unique: string; events: { user: number; action: number; value: number; at: number }[] }

/** Makes the Claims of one process (a worker or a flush) on its connection. */
export type ClaimsFactory = (conn: FakeConn, keys: RingKeys, ttl: number, now: () => number) => FoldProtocol;

export interface ModelOptions {
  jobs: ModelJob[];
  /** Uniques delivered twice (to two "gearmands"). */
  copies: string[];
  workers: number;
  jobsPerFold: number;
  /** The mid-run flush (sealing the first slice) starts after this many folds were acknowledged; null: only the final flush. */
  flushAfterAcks: number | null;
  schedule: Schedule;
  claims: ClaimsFactory;
  /** When the run starts (epoch ms); the jobs' events are in its slice and the one before. */
  startMs: number;
  /**
   * How long a worker waits for a live holder's open fold (real time: Claims.settle sleeps for real) before
   * aborting it. 0 aborts it at once, which lets two live workers abort each other's folds for ever.
   */
  holderWaitMs?: number;
}

export interface ModelResult {
  /** Per slice flushed: rows by `user:action` → [count, sum]. */
  db: Map<SliceId, Map<string, [number, bigint]>>;
  /** Per slice flushed: what its reader said (events committed, counted, chunks missing, corrupt). */
  sliceTotals: Map<SliceId, { events: bigint | null; counted: bigint; missingChunks: number; corrupt: number; late: bigint }>;
  /** For each fold id seen committed in memcached: the uniques whose events it held. */
  committedUniques: Map<FoldId, Set<string>>;
  server: MemoryMemcached;
  restarts: number;
  acked: number;
  /** Folds the flushes found open and aborted. */
  abortedByFlush: number;
}

class Clock {
  ms: number;
  constructor(start: number, private readonly server: MemoryMemcached) {
    this.ms = start;
    server.now = Math.floor(start / 1000);
  }

  advance(ms: number): void {
    this.ms += ms;
    this.server.now = Math.floor(this.ms / 1000);
  }
}

const silent = createLogger('silent');

export async function runModel(o: ModelOptions): Promise<ModelResult> {
  const server = new MemoryMemcached();
  const clock = new Clock(o.startMs, server);
  const keys = new RingKeys(PREFIX);
  const now = (): number => clock.ms;
  const sleep = async (ms: number): Promise<void> => {
    clock.advance(ms);
    await new Promise((r) => setImmediate(r));
  };
  const current = sliceOf(o.startMs, SLICE_SECONDS);
  const first = (current - 1) as SliceId;

  // Gearman: jobs waiting, and held by a worker until acknowledged (or handed back when it dies).
  const pending: ModelJob[] = [...o.jobs, ...o.jobs.filter((j) => o.copies.includes(j.unique))];
  let held = 0;
  const waiting: (() => void)[] = [];
  const wake = (): void => {
    for (const w of waiting.splice(0)) w();
  };
  let acked = 0;
  // The mid-run flush waits on this (a promise, so it starts between two operations, not after the workers are done).
  let flushGo: () => void = () => undefined;
  const flushReady = new Promise<void>((r) => (flushGo = r));
  let restarts = 0;
  // What each fold was built from: filled when a fold is announced (before it can commit).
  const built = new Map<FoldId, Set<string>>();

  const connOf = (proc: FakeProcess): FakeConn => new FakeConn(server, proc);
  const blobsOf = (conn: FakeConn): FoldBlobs => new FoldBlobs({ keys, placement: { writer: () => 0, readers: () => [0] }, conns: [conn], ttl: TTL });
  const watermarkOf = (conn: FakeConn) => async (): Promise<SliceId | null> => {
    const [v] = await conn.exec([{ kind: 'get', key: keys.watermark() }]);
    return v instanceof Buffer ? (Number(v.toString()) as SliceId) : null;
  };

  const worker = async (name: string): Promise<void> => {
    for (let generation = 0; ; generation++) {
      const proc = new FakeProcess(`${name}#${generation}`, o.schedule);
      const conn = connOf(proc);
      const claims = o.claims(conn, keys, TTL, now);
      const announce = claims.announce.bind(claims);
      let lastBuilt = new Set<string>();
      claims.announce = async (fold, events) => {
        built.set(fold, lastBuilt);
        return announce(fold, events);
      };
      const writer = new FoldWriter({ claims, blobs: blobsOf(conn), watermark: watermarkOf(conn), sliceSeconds: SLICE_SECONDS, now, sleep, log: silent, holderWaitMs: o.holderWaitMs ?? 2_000 });
      let mine: ModelJob[] = [];
      const inFlight = new Set<FoldId>();
      try {
        for (let idle = 0; idle < 10_000; ) {
          mine = pending.splice(0, o.jobsPerFold);
          if (mine.length === 0) {
            if (held === 0) return;
            idle++;
            // Until another worker acknowledges its jobs or dies and hands them back.
            await new Promise<void>((r) => waiting.push(r));
            continue;
          }
          held += mine.length;
          const jobs = mine;
          const build = (skip: ReadonlySet<string>): Deltas => {
            const d = new Deltas();
            const seen = new Set<string>();
            const cur = sliceOf(clock.ms, SLICE_SECONDS);
            for (const j of jobs) {
              if (skip.has(j.unique) || seen.has(j.unique)) continue;
              seen.add(j.unique);
              for (const e of j.events) d.add({ userId: String(e.user) as UserId, actionId: e.action as ActionId, value: e.value, at: e.at } as LogEvent, cur, SLICE_SECONDS);
            }
            lastBuilt = seen;
            return d;
          };
          // As Worker does: the jobs are claimed when the fold is prepared, then the writer stores that fold
          // (and, if it is aborted, new ones), each of them in flight meanwhile.
          const pre = await claims.claimFold(jobs.map((j) => j.unique), { inFlight, waitMs: o.holderWaitMs ?? 2_000 });
          const preDuplicates = new Set(pre.duplicates);
          inFlight.add(pre.fold);
          const tried = [pre.fold];
          const track = (fold: FoldId, previous: FoldId | null): void => {
            if (previous !== null) inFlight.delete(previous);
            inFlight.add(fold);
            tried.push(fold);
          };
          try {
            await writer.store(
              { uniques: jobs.filter((j) => !preDuplicates.has(j.unique)).map((j) => j.unique), build: (skip) => build(new Set([...skip, ...preDuplicates])) },
              { claimed: pre.fold, inFlight, track },
            );
          } finally {
            for (const f of tried) inFlight.delete(f);
          }
          // Acknowledged: Gearman forgets them.
          held -= jobs.length;
          mine = [];
          wake();
          acked++;
          if (acked >= (o.flushAfterAcks ?? Infinity)) flushGo();
        }
        throw new Error(`${name}: waited too long for held jobs`);
      } catch (err) {
        if (!(err instanceof Crash)) throw err;
        // Killed: gearmand hands its jobs out again; the process restarts with a new lease. The dead
        // one's lease runs out (as if the others had waited its TTL out: their wait is in real time).
        server.apply({ kind: 'delete', key: keys.lease(claims.lease) });
        held -= mine.length;
        pending.unshift(...mine);
        restarts++;
        wake();
      }
    }
  };

  const db = new Map<SliceId, Map<string, [number, bigint]>>();
  const sliceTotals: ModelResult['sliceTotals'] = new Map();
  let abortedByFlush = 0;
  /** Seals and reads `slice` until a run of the flush gets through (a killed flush is started again; its transaction never committed). */
  const flushSlice = async (slice: SliceId): Promise<void> => {
    for (let generation = 0; ; generation++) {
      const proc = new FakeProcess(`flush${slice}#${generation}`, o.schedule);
      const conn = connOf(proc);
      try {
        const wm = await watermarkOf(conn)();
        if (wm === null || slice > wm) await conn.exec([{ kind: 'set', key: keys.watermark(), value: String(slice), ttl: 0 }]);
        const reader = await FoldSliceReader.open({ claims: o.claims(conn, keys, TTL, now), blobs: blobsOf(conn), now, sleep, decideWaitMs: 1_000 }, slice, 3);
        const rows = new Map<string, [number, bigint]>();
        for (let r = await reader.next(); r !== null; r = await reader.next()) {
          for (let i = 0; i < r.length; i++) rows.set(`${r.users[i]}:${r.actions[i]}`, [Number(r.counts[i]), BigInt(r.valueSums[i]!)]);
        }
        db.set(slice, rows);
        const t = reader.totals();
        abortedByFlush += reader.census.abortedHere;
        sliceTotals.set(slice, { events: t.events, counted: t.counted, missingChunks: t.missingChunks, corrupt: t.corrupt, late: t.late });
        return;
      } catch (err) {
        if (!(err instanceof Crash)) throw err;
        restarts++;
      }
    }
  };

  // A paused worker (SIGSTOP) stays stopped until the mid-run flush is over, which it starts at once: the flush
  // then meets the worker's fold open, and the worker wakes past its lease.
  let flushDone: () => void = () => undefined;
  const flushOver = new Promise<void>((r) => (flushDone = r));
  o.schedule.paused = async (proc) => {
    flushGo();
    if (process.env.MODEL_TRACE) console.log(`${proc.name} paused at step ${o.schedule.step}`);
    await flushOver;
    clock.advance(60_000);
  };
  const midFlush = async (): Promise<void> => {
    if (o.flushAfterAcks === null) return flushDone();
    if (o.flushAfterAcks > 0) await flushReady;
    if (process.env.MODEL_TRACE) console.log("mid flush at step", o.schedule.step, "acked", acked);
    await flushSlice(first);
    flushDone();
  };

  const workers = Promise.all(Array.from({ length: o.workers }, (_, i) => worker(`w${i + 1}`))).finally(() => (flushGo(), flushDone()));
  await Promise.all([workers, midFlush()]);
  // Every job acknowledged: the final flush takes every slice written (moved events go up to the clock's slice).
  const last = sliceOf(clock.ms, SLICE_SECONDS);
  for (let s = first; s <= last; s = (s + 1) as SliceId) if (!db.has(s)) await flushSlice(s);

  const committedUniques = new Map<FoldId, Set<string>>();
  for (const key of server.keys(`${PREFIX}f:`)) {
    if (server.peek(key)!.toString().startsWith('c')) {
      const fold = key.slice(`${PREFIX}f:`.length);
      committedUniques.set(fold, built.get(fold) ?? new Set(['?unknown']));
    }
  }
  return { db, sliceTotals, committedUniques, server, restarts, acked, abortedByFlush };
}

/** The jobs of a model run: `n` jobs of a few events each over a handful of pairs, in the run's slice and the one before. */
export function modelJobs(n: number, startMs: number, rand: () => number): ModelJob[] {
  const slice = sliceOf(startMs, SLICE_SECONDS);
  const jobs: ModelJob[] = [];
  for (let i = 0; i < n; i++) {
    const events: ModelJob['events'] = [];
    for (let k = 1 + Math.floor(rand() * 3); k > 0; k--) {
      const s = rand() < 0.5 ? slice : slice - 1;
      events.push({ user: 1 + Math.floor(rand() * 4), action: 1 + Math.floor(rand() * 2), value: rand() < 0.1 ? 2 ** 52 : Math.floor(rand() * 100), at: s * SLICE_SECONDS * 1000 + 1000 });
    }
    jobs.push({ unique: `job${i}`, events });
  }
  return jobs;
}

/** What the rows must total: each job once, per `user:action`, summed over every slice. */
export function expectedTotals(jobs: readonly ModelJob[]): Map<string, [number, bigint]> {
  const want = new Map<string, [number, bigint]>();
  for (const j of jobs) for (const e of j.events) {
    const k = `${e.user}:${e.action}`;
    const [c, s] = want.get(k) ?? [0, 0n];
    want.set(k, [c + 1, s + BigInt(e.value)]);
  }
  return want;
}

/** The rows of every flushed slice added up per `user:action`. */
export function flushedTotals(db: ModelResult['db']): Map<string, [number, bigint]> {
  const got = new Map<string, [number, bigint]>();
  for (const rows of db.values()) for (const [k, [c, s]] of rows) {
    const [c0, s0] = got.get(k) ?? [0, 0n];
    got.set(k, [c0 + c, s0 + s]);
  }
  return got;
}
