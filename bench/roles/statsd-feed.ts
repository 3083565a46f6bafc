/**
 * Bench role: feeds the StatsD daemon with hot-shots at a fixed rate, one
 * `increment()` per event of the uniform workload, named per (user, action)
 * like OffLog's counters — the same job, done the StatsD way. hot-shots runs
 * with its defaults (UDP, no client-side buffering), as most users run it.
 *
 * Pacing: every millisecond tick sends whatever is due (rate × elapsed − sent),
 * so short stalls are caught up rather than lost; the achieved rate is reported
 * next to the target, since a sender that cannot keep up is a finding too.
 */
import StatsD from 'hot-shots';
import { generate, workloadSpecs } from '../workloads.ts';
import { cpuMs, params, peakRssMb, round1, runRole, send, sleep, waitForGo } from './common.ts';

export interface FeedParams {
  port: number;
  rate: number;
  seconds: number;
  quick: boolean;
  prefix: string;
}

runRole(async () => {
  const p = params<FeedParams>();
  const total = Math.round(p.rate * p.seconds);
  const spec = workloadSpecs(p.quick).find((s) => s.name === 'uniform')!;
  const w = generate(spec, 600, Math.min(total, spec.events));
  // Names built before the clock starts: the feeder measures statsd, not string building.
  const names = new Array<string>(w.user.length);
  for (let i = 0; i < names.length; i++) names[i] = `${p.prefix}u${w.user[i]}.a${w.action[i]}`;
  let errors = 0;
  let firstError = '';
  const client = new StatsD({
    host: '127.0.0.1',
    port: p.port,
    errorHandler: (err: Error) => {
      errors++;
      firstError ||= err.message;
    },
  });

  send({ type: 'ready' });
  await waitForGo();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let sent = 0;
  let lastProgress = t0;
  while (sent < total) {
    const now = performance.now();
    const due = Math.min(total, Math.floor(((now - t0) / 1000) * p.rate));
    while (sent < due) client.increment(names[sent++ % names.length]!);
    if (now - lastProgress > 250) {
      lastProgress = now;
      send({ type: 'progress', sent });
    }
    await sleep(1);
  }
  const ms = performance.now() - t0;
  await new Promise<void>((resolve) => client.close(() => resolve()));
  return {
    targetRate: p.rate,
    sent,
    ms: Math.round(ms),
    achievedRate: Math.round(sent / (ms / 1000)),
    errors,
    firstError,
    cpu: cpuMs(cpu0),
    peakRssMb: round1(peakRssMb()),
  };
});
