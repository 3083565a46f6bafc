/**
 * Bench role: the application. Logs a whole workload through OffLogClient.log()
 * as fast as gearmand takes it, then waits for client.flush() — every batch
 * acknowledged by gearmand (JOB_CREATED) — which is what "client→gearmand
 * events/s" measures.
 *
 * The loop hands the event loop back every YIELD_EVERY events: a real
 * application's requests end and its loop turns; without that, nothing would
 * ever be sent while the loop runs. When more than MAX_OUTSTANDING events wait
 * for gearmand the loop pauses (and says for how long): a load generator must
 * not outrun the client's memory bound, or the run would measure dropping.
 */
import { OffLogClient, type ClientStats } from '../../lib/send/client.ts';
import { generate, workloadSpecs, type WorkloadName } from '../workloads.ts';
import { config, cpuMs, logger, params, peakRssMb, round1, rssMb, runRole, send, sleep, waitForGo, yieldToLoop } from './common.ts';

export interface ClientParams {
  workload: WorkloadName;
  quick: boolean;
  sliceSeconds: number;
  /** Start (epoch ms) of the first of the run's two slices. */
  baseMs: number;
  /** OffLogClient batchSize (events per job); null = the library default. */
  batchSize: number | null;
}

const YIELD_EVERY = 1_000;
const MAX_OUTSTANDING = 200_000;
const RESUME_BELOW = 100_000;
/** Events not yet acknowledged: waiting here or with gearmand. */
const outstanding = (s: ClientStats): number => s.buffered + s.inFlight;

runRole(async () => {
  const p = params<ClientParams>();
  const cfg = config();
  const spec = workloadSpecs(p.quick).find((s) => s.name === p.workload)!;
  const w = generate(spec, p.sliceSeconds);
  const sliceMs = p.sliceSeconds * 1000;
  const rssAfterGenerate = rssMb();
  const client = new OffLogClient({ servers: cfg.gearmanServers, logger: logger('bench-client'), ...(p.batchSize ? { batchSize: p.batchSize } : {}) });

  send({ type: 'ready' });
  await waitForGo();

  const n = spec.events;
  let logged = 0;
  const progress = setInterval(() => send({ type: 'progress', logged, acknowledged: client.stats().acknowledged }), 250);
  progress.unref();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  let blockedMs = 0;
  let pauses = 0;
  for (let i = 0; i < n; i++) {
    const at = p.baseMs + w.slice[i]! * sliceMs + w.offsetMs[i]!;
    if (w.hasValue[i]) client.log(w.user[i]!, w.action[i]!, { value: w.value[i]!, at });
    else client.log(w.user[i]!, w.action[i]!, { at });
    logged = i + 1;
    if (logged % YIELD_EVERY === 0) {
      const s = client.stats();
      if (outstanding(s) > MAX_OUTSTANDING) {
        const b0 = performance.now();
        pauses++;
        while (outstanding(client.stats()) > RESUME_BELOW) await sleep(1);
        blockedMs += performance.now() - b0;
      } else {
        await yieldToLoop();
      }
    }
  }
  const loggedAt = performance.now();
  const acked = await client.flush({ timeoutMs: 30 * 60_000 });
  const ackedAt = performance.now();
  const cpu = cpuMs(cpu0);
  clearInterval(progress);
  const stats = await client.close({ timeoutMs: 10_000 });
  return {
    events: n,
    allAcknowledged: acked,
    logLoopMs: Math.round(loggedAt - t0),
    ackMs: Math.round(ackedAt - t0),
    blockedMs: Math.round(blockedMs),
    pauses,
    eventsPerSecond: Math.round(n / ((ackedAt - t0) / 1000)),
    cpu,
    cpuUsPerEvent: round1(((cpu.userMs + cpu.systemMs) * 1000) / n),
    stats,
    rssAfterGenerateMb: round1(rssAfterGenerate),
    workloadArraysMb: round1((n * 15) / 1048576),
    peakRssMb: round1(peakRssMb()),
  };
});
