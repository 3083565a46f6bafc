/**
 * Bench role: what logging costs the application.
 *
 * 1. ns per call of OffLogClient.log(user, action) and of hot-shots
 *    increment(`offlog.u<user>.a<action>`), median and p99 — hot-shots both
 *    with its defaults (a datagram per call) and with maxBufferSize set.
 *
 *    Timed in batches of BATCH calls with process.hrtime.bigint(), divided by
 *    BATCH. Per-call timing would mostly measure the clock: hrtime.bigint()
 *    itself costs tens of ns (a BigInt allocation plus the clock read), about
 *    what log() costs, and its resolution shows. Over 100 calls that overhead
 *    is < 1 ns a call. The price is that the percentiles are of 100-call
 *    averages: a rare slow call (the one that seals a 500-event batch) is
 *    spread over its batch rather than standing alone — which is also how it
 *    is felt by an application that logs many events per request.
 *
 *    The two clients are measured in alternating rounds so that noise from a
 *    shared machine lands on both. Between rounds (off the clock) the loop
 *    turns, so OffLog sends its batches and hot-shots its datagrams; OffLog's
 *    background sending is thus not inside log() — it is in the client CPU per
 *    event reported by the throughput run — whereas hot-shots does its socket
 *    send inside increment().
 *
 * 2. Event-loop delay (perf_hooks.monitorEventLoopDelay) while logging
 *    `eldRate` events/s for `eldSeconds`, everything included: log(), sealing,
 *    sending, acknowledgements. The histogram's samples include its own
 *    resolution interval, which is subtracted; an idle baseline is measured
 *    first to show what the machine alone contributes.
 *
 * Every event goes to the bench's gearmand; the orchestrator drains the queue
 * afterwards, so none of them reaches a counted run.
 */
import StatsD from 'hot-shots';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { OffLogClient } from '../../lib/send/client.ts';
import { generate, workloadSpecs } from '../workloads.ts';
import { config, logger, params, peakRssMb, round1, runRole, send, sleep, waitForGo, yieldToLoop } from './common.ts';

export interface CostParams {
  quick: boolean;
  calls: number;
  rounds: number;
  eldSeconds: number;
  eldRate: number;
  statsdPort: number;
}

const BATCH = 100;
const ELD_RESOLUTION_MS = 1;

runRole(async () => {
  const p = params<CostParams>();
  const cfg = config();
  const spec = workloadSpecs(p.quick).find((s) => s.name === 'uniform')!;
  const w = generate(spec, 600, Math.min(spec.events, 100_000));
  const m = w.user.length;
  const client = new OffLogClient({ servers: cfg.gearmanServers, logger: logger('bench-cost') });
  // hot-shots as most run it (one datagram per call), and with its client-side
  // buffering (one datagram per ~1.4 KB of metrics), its cheapest setting.
  const hs = new StatsD({ host: '127.0.0.1', port: p.statsdPort, errorHandler: () => undefined });
  const hsBuffered = new StatsD({ host: '127.0.0.1', port: p.statsdPort, maxBufferSize: 1432, bufferFlushInterval: 100, errorHandler: () => undefined });

  let k = 0;
  const logOne = (): void => {
    client.log(w.user[k]!, w.action[k]!);
    if (++k === m) k = 0;
  };
  const incrementOne = (): void => {
    hs.increment(`offlog.u${w.user[k]}.a${w.action[k]}`);
    if (++k === m) k = 0;
  };
  const incrementBuffered = (): void => {
    hsBuffered.increment(`offlog.u${w.user[k]}.a${w.action[k]}`);
    if (++k === m) k = 0;
  };

  /** Times `calls` calls in batches; returns ns per call of each batch. */
  const measure = async (fn: () => void, calls: number, out: number[]): Promise<void> => {
    const batches = Math.ceil(calls / BATCH);
    for (let b = 0; b < batches; b++) {
      const t = process.hrtime.bigint();
      for (let j = 0; j < BATCH; j++) fn();
      out.push(Number(process.hrtime.bigint() - t) / BATCH);
      // Off the clock: let sends and acknowledgements run, and keep OffLog's buffer
      // below its memory bound (dropping would make log() cheaper than it is).
      if (b % 10 === 9) {
        await yieldToLoop();
        while (client.stats().buffered + client.stats().inFlight > 200_000) await sleep(1);
      }
    }
  };

  send({ type: 'ready' });
  await waitForGo();

  // Warm-up: let V8 optimise both paths before anything is recorded.
  const scratch: number[] = [];
  await measure(logOne, 50_000, scratch);
  await measure(incrementOne, 50_000, scratch);
  await measure(incrementBuffered, 50_000, scratch);

  const logNs: number[] = [];
  const incNs: number[] = [];
  const incBufNs: number[] = [];
  const perRound = Math.ceil(p.calls / p.rounds);
  for (let r = 0; r < p.rounds; r++) {
    await measure(logOne, perRound, logNs);
    await measure(incrementOne, perRound, incNs);
    await measure(incrementBuffered, perRound, incBufNs);
    send({ type: 'progress', round: r + 1, rounds: p.rounds });
  }
  await client.flush({ timeoutMs: 120_000 });

  // Event-loop delay: idle first, then while logging at eldRate.
  const idle = await loopDelay(p.eldSeconds / 2, () => undefined);
  let logged = 0;
  const busy = await loopDelay(p.eldSeconds, (elapsedMs) => {
    const due = Math.floor((elapsedMs / 1000) * p.eldRate);
    while (logged < due) {
      logOne();
      logged++;
    }
  });
  const acked = await client.flush({ timeoutMs: 120_000 });
  const stats = await client.close({ timeoutMs: 10_000 });
  await new Promise<void>((resolve) => hs.close(() => resolve()));
  await new Promise<void>((resolve) => hsBuffered.close(() => resolve()));

  return {
    batch: BATCH,
    calls: { log: logNs.length * BATCH, increment: incNs.length * BATCH, incrementBuffered: incBufNs.length * BATCH },
    logNs: summary(logNs),
    incrementNs: summary(incNs),
    incrementBufferedNs: summary(incBufNs),
    eventLoopDelay: { resolutionMs: ELD_RESOLUTION_MS, idle, logging: { ...busy, rate: p.eldRate, seconds: p.eldSeconds, events: logged, acknowledged: acked } },
    clientStats: stats,
    peakRssMb: round1(peakRssMb()),
  };
});

/** Runs `tick` every millisecond for `seconds` while the event-loop delay histogram records. */
async function loopDelay(seconds: number, tick: (elapsedMs: number) => void): Promise<{ p50Ms: number; p99Ms: number; maxMs: number; samples: number }> {
  const h = monitorEventLoopDelay({ resolution: ELD_RESOLUTION_MS });
  h.enable();
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    tick(performance.now() - t0);
    await sleep(1);
  }
  h.disable();
  const ms = (ns: number): number => Math.max(0, Math.round((ns / 1e6 - ELD_RESOLUTION_MS) * 1000) / 1000);
  return { p50Ms: ms(h.percentile(50)), p99Ms: ms(h.percentile(99)), maxMs: ms(h.max), samples: h.count };
}

function summary(ns: number[]): { median: number; p99: number; mean: number; min: number; max: number } {
  const s = [...ns].sort((a, b) => a - b);
  const at = (q: number): number => s[Math.min(s.length - 1, Math.floor(q * s.length))]!;
  const r = (x: number): number => Math.round(x * 10) / 10;
  return { median: r(at(0.5)), p99: r(at(0.99)), mean: r(s.reduce((a, b) => a + b, 0) / s.length), min: r(s[0]!), max: r(s[s.length - 1]!) };
}
