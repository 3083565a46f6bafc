/**
 * Bench role: one OffLog worker process (the orchestrator may start several),
 * started before the client so that both run at once. Its clock (`now`) is
 * pinned inside the run's second slice, so every event lands in its own slice
 * and none is late (or, for the steady-state run, it is the real clock).
 *
 * It reports its event count whenever it changes (`events`); the
 * orchestrator adds up every worker's, and says `stop` once the whole
 * workload is counted. What the worker spent up to its last fold is what it
 * reports: stopping (which can wait out a sleeping grab) is not the run's.
 *
 * Two throughputs come out of it:
 *  - wall: events / (last fold stored − first job taken). While the client is
 *    slower this is the client's pace, not the worker's;
 *  - busy: events / time when a fold was being prepared (decode + fold) or
 *    stored (memcached + acknowledge) — the two overlap, and overlapping time
 *    counts once. That is what one worker could do if never starved.
 * `busy` needs the time of each fold, which Worker does not expose, so the
 * instance's private `prepare` and `store` methods are wrapped (bench only;
 * if they are ever renamed the busy figure reads null and nothing else changes).
 */
import { Ring } from '../../lib/count/ring.ts';
import { Worker } from '../../lib/count/worker.ts';
import { config, cpuMs, logger, params, peakRssMb, round1, RssSampler, runRole, send, sleep, waitForGo } from './common.ts';

export interface WorkerParams {
  /** The worker's pinned clock, epoch ms; null = the real clock. */
  nowMs: number | null;
  sliceSeconds: number;
  /** Worker maxJobsPerFold; null = the library default. */
  maxJobsPerFold: number | null;
}

runRole(async () => {
  const p = params<WorkerParams>();
  const cfg = config();
  const log = logger('bench-worker');
  const ring = new Ring({ servers: cfg.memcachedServers, keyPrefix: cfg.keyPrefix, sliceSeconds: p.sliceSeconds, ringSlices: cfg.ringSlices });
  await ring.bootTimes(); // connect now, not on the clock
  const pinned = p.nowMs;
  const worker = new Worker({ gearmanServers: cfg.gearmanServers, sliceSeconds: p.sliceSeconds, ring, log, ...(pinned === null ? {} : { now: () => pinned }) }, p.maxJobsPerFold ? { maxJobsPerFold: p.maxJobsPerFold } : {});

  // Where the worker's time goes, fold by fold: taking jobs from gearmand,
  // sleeping for work, preparing folds (decode, fold), the memcached calls,
  // and storing (memcached, dead letters, acknowledging).
  const spent: Record<string, number> = {};
  let firstFoldAt: number | null = null;
  let t0 = 0;
  // Busy time: while at least one fold is being prepared or stored.
  let active = 0;
  let activeSince = 0;
  let busy = 0;
  const timed = (target: object, method: string, bucket: string, foldStage = false): boolean => {
    const obj = target as Record<string, unknown>;
    const original = obj[method];
    if (typeof original !== 'function') return false;
    spent[bucket] = 0;
    obj[method] = async (...args: unknown[]) => {
      const start = performance.now();
      if (foldStage) {
        firstFoldAt ??= start - t0;
        if (active++ === 0) activeSince = start;
      }
      try {
        return await (original as (...a: unknown[]) => Promise<unknown>).apply(target, args);
      } finally {
        const end = performance.now();
        spent[bucket]! += end - start;
        if (foldStage && --active === 0) busy += end - activeSince;
      }
    };
    return true;
  };
  const hasBusy = timed(worker, 'prepare', 'prepareMs', true) && timed(worker, 'store', 'storeMs', true);
  timed(worker, 'take', 'takeMs');
  timed(worker, 'waitForWork', 'sleepMs');
  // The fold protocol (claims.ts): the jobs' claims, the slices' fold lists, the commit.
  timed(worker.claims, 'claim', 'memcachedClaimMs');
  timed(ring, 'apply', 'memcachedApplyMs');
  timed(worker.claims, 'announce', 'memcachedAnnounceMs');
  timed(worker.claims, 'commit', 'memcachedCommitMs');
  // The writer's announcement around each fold (Ring.enter / Ring.leave): what the flush protocol costs.
  timed(ring, 'enter', 'memcachedEnterMs');
  timed(ring, 'leave', 'memcachedLeaveMs');

  let stopAsked = false;
  process.on('message', (m: { type?: string }) => {
    if (m?.type === 'stop') stopAsked = true;
  });
  send({ type: 'ready' });
  await waitForGo();
  const rss = new RssSampler(100, () => worker.stats.events);
  const cpu0 = process.cpuUsage();
  t0 = performance.now();
  const running = worker.run();
  running.catch(() => undefined);
  let doneAt = t0;
  let atDone: Record<string, number> = { ...spent, busyMs: 0 };
  let cpuAtDone = process.cpuUsage(cpu0);
  let lastEvents = 0;
  // Polling a counter every 2 ms costs nothing measurable and reports a fold within 2 ms.
  while (!stopAsked) {
    await Promise.race([sleep(2), running]);
    const events = worker.stats.events;
    if (events !== lastEvents) {
      lastEvents = events;
      doneAt = performance.now();
      // What was spent up to the last fold: waiting for `stop` afterwards is not the run's.
      atDone = { ...spent, busyMs: busy + (active > 0 ? doneAt - activeSince : 0) };
      cpuAtDone = process.cpuUsage(cpu0);
      send({ type: 'events', events });
    }
  }
  const cpu = { userMs: Math.round(cpuAtDone.user / 1000), systemMs: Math.round(cpuAtDone.system / 1000) };
  rss.stop();
  worker.stop();
  const stats = await running;
  await ring.close();
  const first = firstFoldAt ?? 0;
  const wallMs = doneAt - t0 - first;
  const busyMs = hasBusy ? atDone.busyMs! : null;
  const memcachedMs = (atDone.memcachedAppliedJobsMs ?? 0) + (atDone.memcachedApplyMs ?? 0) + (atDone.memcachedMarkAppliedMs ?? 0) +
    (atDone.memcachedEnterMs ?? 0) + (atDone.memcachedLeaveMs ?? 0);
  const breakdown = Object.fromEntries(Object.entries(atDone).map(([k, v]) => [k, Math.round(v)]));
  // Decode and fold (prepare) plus the store's own work (acknowledging, dead letters): the fold time that is not memcached's.
  if (hasBusy) breakdown.decodeFoldAckMs = Math.round(atDone.prepareMs! + atDone.storeMs! - memcachedMs);
  return {
    stats,
    ringOps: ring.ops,
    firstFoldAtMs: Math.round(first),
    doneAtMs: Math.round(doneAt - t0),
    wallMs: Math.round(wallMs),
    busyMs: busyMs === null ? null : Math.round(busyMs),
    breakdown,
    eventsPerSecondWall: Math.round(stats.events / (wallMs / 1000)),
    eventsPerSecondBusy: busyMs === null ? null : Math.round(stats.events / (busyMs / 1000)),
    cpu,
    cpuUsPerEvent: round1(((cpu.userMs + cpu.systemMs) * 1000) / Math.max(1, stats.events)),
    peakRssMb: round1(peakRssMb()),
    rssSamples: rss.samples,
  };
});
