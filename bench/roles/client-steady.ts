/**
 * Bench role: the application of the steady-state run. From the slice
 * boundary it is given, it logs a fixed offered rate through
 * OffLogClient.log() with the real clock (`at` = now), for a whole number of
 * slices, every millisecond the events that are due by then — as a busy site
 * would, not as fast as it can.
 *
 * It reports, per second: events logged and acknowledged by gearmand, and the
 * event-loop delay (p99 and max of a monitorEventLoopDelay histogram reset
 * every second), so the orchestrator can set them against the flush's
 * windows. It also reports the first event index of each slice: with `at`
 * never going back, slice k holds the events from boundary k to boundary
 * k + 1, which is all the orchestrator needs to know the exact totals.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { OffLogClient } from '../../lib/send/client.ts';
import { sliceOf } from '../../lib/domain/slice.ts';
import { generate, type WorkloadSpec } from '../workloads.ts';
import { config, cpuMs, logger, params, peakRssMb, round1, runRole, send, sleep, waitForGo, type GoMessage } from './common.ts';

export interface SteadyClientParams {
  spec: WorkloadSpec;
  rate: number;
  sliceSeconds: number;
  /** How many slices to log (from the boundary the `go` message names). */
  slices: number;
}

export interface SteadyClientGo extends GoMessage {
  /** Epoch ms of the slice boundary to start at. */
  startMs: number;
}

export interface SteadySecond {
  /** Seconds since the start. */
  t: number;
  logged: number;
  acknowledged: number;
  loopDelayP99Ms: number;
  loopDelayMaxMs: number;
}

const RESOLUTION_MS = 1;

runRole(async () => {
  const p = params<SteadyClientParams>();
  const cfg = config();
  const w = generate(p.spec, p.sliceSeconds);
  const client = new OffLogClient({ servers: cfg.gearmanServers, logger: logger('bench-client-steady') });

  send({ type: 'ready' });
  const { startMs } = await waitForGo<SteadyClientGo>();
  const endMs = startMs + p.slices * p.sliceSeconds * 1000;
  const firstSlice = sliceOf(startMs, p.sliceSeconds);
  while (Date.now() < startMs) await sleep(Math.min(50, Math.max(1, startMs - Date.now())));

  const cpu0 = process.cpuUsage();
  const h = monitorEventLoopDelay({ resolution: RESOLUTION_MS });
  h.enable();
  const seconds: SteadySecond[] = [];
  const sliceStarts: number[] = [0];
  let logged = 0;
  let lastSecond = 0;
  let loggedAtSecond = 0;
  const delay = (ns: number): number => Math.max(0, Math.round((ns / 1e6 - RESOLUTION_MS) * 1000) / 1000);
  for (let now = Date.now(); now < endMs; now = Date.now()) {
    const due = Math.min(w.user.length, Math.floor(((now - startMs) / 1000) * p.rate));
    // `at` = now for every event logged in this tick: never going back, so slices are index ranges.
    const slice = sliceOf(now, p.sliceSeconds) - firstSlice;
    while (sliceStarts.length <= slice) sliceStarts.push(logged);
    for (; logged < due; logged++) {
      if (w.hasValue[logged]) client.log(w.user[logged]!, w.action[logged]!, { value: w.value[logged]!, at: now });
      else client.log(w.user[logged]!, w.action[logged]!, { at: now });
    }
    const second = Math.floor((now - startMs) / 1000);
    if (second > lastSecond) {
      seconds.push({ t: lastSecond, logged: logged - loggedAtSecond, acknowledged: client.stats().acknowledged, loopDelayP99Ms: delay(h.percentile(99)), loopDelayMaxMs: delay(h.max) });
      send({ type: 'progress', second, logged, acknowledged: client.stats().acknowledged });
      h.reset();
      lastSecond = second;
      loggedAtSecond = logged;
    }
    await sleep(1);
  }
  h.disable();
  const loggedAt = Date.now();
  const acked = await client.flush({ timeoutMs: 120_000 });
  const cpu = cpuMs(cpu0);
  const stats = await client.close({ timeoutMs: 10_000 });
  return {
    events: logged,
    sliceStarts,
    firstSlice,
    seconds,
    durationMs: loggedAt - startMs,
    allAcknowledged: acked,
    stats,
    cpu,
    peakRssMb: round1(peakRssMb()),
  };
});
