/**
 * Bench role: the scheduled flush of the steady-state run, in the background
 * of ingest as in production: once per slice, `offsetMs` after each slice
 * boundary (an EventBridge schedule at the slice's rate), with the real clock
 * as "now". Each run's start, end and slices are reported, so that the
 * orchestrator can tell when each slice's rows were committed and what ingest
 * did meanwhile. On `final` (ingest over, every event counted) it flushes
 * once more with "now" two slices past the last one written, so every slice
 * of the run is in MariaDB for the exact check.
 */
import { flush, type FlushResult } from '../../lib/flush/flush.ts';
import { Ring } from '../../lib/count/ring.ts';
import { Store } from '../../lib/flush/store.ts';
import { config, logger, params, peakRssMb, round1, runRole, send, sleep, waitForGo, type GoMessage } from './common.ts';

export interface SteadyFlushParams {
  sliceSeconds: number;
  offsetMs: number;
}

export interface SteadyFlushRun {
  startMs: number;
  endMs: number;
  final: boolean;
  result: FlushResult;
}

runRole(async () => {
  const p = params<SteadyFlushParams>();
  const cfg = config();
  const log = logger('bench-flush-steady');
  const store = new Store({ url: cfg.mysqlUrl, tablePrefix: cfg.tablePrefix });
  const ring = new Ring({ servers: cfg.memcachedServers, keyPrefix: cfg.keyPrefix, sliceSeconds: p.sliceSeconds, ringSlices: cfg.ringSlices });
  await store.migrate();
  await ring.bootTimes();
  const deps = { ring, store, sliceSeconds: p.sliceSeconds, ringSlices: cfg.ringSlices, log };
  let finalAt: number | null = null;
  process.on('message', (m: { type?: string; nowMs?: number }) => {
    if (m?.type === 'final') finalAt = m.nowMs!;
  });

  send({ type: 'ready' });
  await waitForGo<GoMessage>();
  const runs: SteadyFlushRun[] = [];
  const sliceMs = p.sliceSeconds * 1000;
  const once = async (now: number, final: boolean): Promise<void> => {
    const startMs = Date.now();
    const result = await flush(deps, new Date(now));
    runs.push({ startMs, endMs: Date.now(), final, result });
    send({ type: 'progress', flushes: runs.length, rows: result.rows });
  };
  for (;;) {
    const next = (Math.floor(Date.now() / sliceMs) + 1) * sliceMs + p.offsetMs;
    while (finalAt === null && Date.now() < next) await sleep(Math.min(20, next - Date.now()));
    if (finalAt !== null) break;
    await once(Date.now(), false);
  }
  await once(finalAt!, true);
  await Promise.all([store.close(), ring.close()]);
  return { runs, peakRssMb: round1(peakRssMb()) };
});
