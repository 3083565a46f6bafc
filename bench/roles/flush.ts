/**
 * Bench role: the scheduled flush, run once with an explicit "now" two slices
 * after the worker's clock, so both of the run's slices are finished and
 * flushable. Tables are created and both pool connections the flush uses (the
 * lock's and the slice transaction's) are opened before the clock starts.
 */
import { flush } from '../../lib/flush/flush.ts';
import { Ring } from '../../lib/count/ring.ts';
import { Store } from '../../lib/flush/store.ts';
import { config, cpuMs, logger, params, peakRssMb, round1, runRole, send, waitForGo, type GoMessage } from './common.ts';

export interface FlushParams {
  sliceSeconds: number;
}

export interface FlushGo extends GoMessage {
  nowMs: number;
}

runRole(async () => {
  const p = params<FlushParams>();
  const cfg = config();
  const log = logger('bench-flush');
  const store = new Store({ url: cfg.mysqlUrl, tablePrefix: cfg.tablePrefix });
  const ring = new Ring({ servers: cfg.memcachedServers, keyPrefix: cfg.keyPrefix, sliceSeconds: p.sliceSeconds, ringSlices: cfg.ringSlices });
  await store.migrate();
  const warm = await Promise.all([store.pool.getConnection(), store.pool.getConnection()]);
  for (const c of warm) c.release();
  await ring.bootTimes();

  send({ type: 'ready' });
  const go = await waitForGo<FlushGo>();
  const opsBefore = ring.ops;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await flush({ ring, store, sliceSeconds: p.sliceSeconds, ringSlices: cfg.ringSlices, log }, new Date(go.nowMs));
  const ms = performance.now() - t0;
  const cpu = cpuMs(cpu0);
  const memcachedOps = ring.ops - opsBefore;
  await Promise.all([store.close(), ring.close()]);
  return {
    result,
    ms: Math.round(ms),
    rowsPerSecond: Math.round(result.rows / (ms / 1000)),
    memcachedOps,
    cpu,
    peakRssMb: round1(peakRssMb()),
  };
});
