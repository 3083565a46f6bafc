/**
 * `npm run bench:php` — the PHP paths side by side, in one run (issue 20):
 *   logSimple   one Gearman job per event (the original PHP client)
 *   batch       one offlog.batch job per request, straight to gearmand (no agent)
 *   agent       OffLog\Client → `offlog agent` → OffLogClient → gearmand
 * each with PHP processes simulating requests of 1, 3 and 10 events
 * (clients/php/tests/fixtures/requests.php). Per run: log() median, end of
 * request p50/p99 (the work after the response), events/s end to end (from
 * the first PHP process starting to the flush committing rows in MySQL, one
 * worker in this process), every row checked exactly against every event
 * logged, and the agent's RSS. A direct job PHP gave up on after its timeout
 * is shown as dropped; the rows tell whether gearmand had it after all.
 * Then a steady agent run of --rss-seconds (default 120; --quick: 10) for
 * the agent's memory over time.
 *
 *   node --import tsx bench/php.ts [--quick] [--paths logSimple,batch,agent] [--procs 4] [--rss-seconds N] [--out bench/results-php.json]
 *
 * Servers: the bench stack (bench/stack.ts: local/services.sh in .data/bench,
 * ports from OFFLOG_BENCH_*). Exit 1 when a total was wrong.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { RowDataPacket } from 'mysql2/promise';
import { loadConfig } from '../lib/base/config.ts';
import { createLogger } from '../lib/base/log.ts';
import { queryAgent } from '../lib/send/agent.ts';
import { Runtime } from '../lib/runtime.ts';
import { drainQueue, machine, REPO, servicesDown, servicesUp, stackEnv } from './stack.ts';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const opt = (name: string, fallback: number): number => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : fallback);
const PROCS = opt('--procs', 4);
const RSS_SECONDS = opt('--rss-seconds', quick ? 10 : 120);
const OUT = args.includes('--out') ? args[args.indexOf('--out') + 1]! : join(REPO, 'bench/results-php.json');
const REQUESTS_PHP = join(REPO, 'clients/php/tests/fixtures/requests.php');
const SLICE = 600;
/** Events per path and request size: logSimple and the direct batch are ~1,400 jobs/s at best, so they get few. */
const EVENTS = quick ? { logSimple: 400, batch: 2_400, agent: 120_000 } : { logSimple: 12_000, batch: 120_000, agent: 2_400_000 };
type Path = keyof typeof EVENTS;
/** --paths agent,batch: run only those (default: all three). */
const PATHS = (args.includes('--paths') ? args[args.indexOf('--paths') + 1]!.split(',') : ['logSimple', 'batch', 'agent']) as Path[];
for (const p of PATHS) if (!(p in EVENTS)) throw new Error(`--paths: unknown path ${p} (logSimple, batch, agent)`);

interface PhpOut { logged: number; sent: number; fallback: number; dropped: number; requests: number; logP50Ns: number; endP50Ns: number; endP99Ns: number }
interface RunResult {
  path: Path; eventsPerRequest: number; events: number; seconds: number; eventsPerSecond: number; exact: boolean; mismatches: number;
  logP50Us: number; endP50Us: number; endP99Us: number; sentViaAgent: number; fallback: number; dropped: number;
  agentRssMb: { first: number; max: number; last: number } | null;
}

const env = stackEnv();
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? 0;

function php(arg: object): Promise<PhpOut> {
  return new Promise((ok, fail) => {
    const child = spawn('php', [REQUESTS_PHP, JSON.stringify(arg)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => (code === 0 ? ok(JSON.parse(out) as PhpOut) : fail(new Error(`php exited ${code}: ${out}${err.slice(0, 2000)}`))));
  });
}

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

async function startAgent(socket: string): Promise<ChildProcess> {
  rmSync(`${socket}.state`, { force: true });
  const child = spawn(process.execPath, [join(REPO, 'bin/offlog.js'), 'agent', '--socket', socket], { env: { ...process.env, ...env, OFFLOG_LOG_LEVEL: 'warn' }, stdio: 'inherit' });
  for (let i = 0; i < 400; i++) {
    if (await queryAgent(socket, 200).then(() => true, () => false)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('the agent did not start');
}

async function stopAgent(child: ChildProcess): Promise<void> {
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

/** One path at one request size: PHP processes → (agent) → gearmand → worker → memcached → flush → MySQL rows, checked. */
async function run(path: Path, eventsPerRequest: number, socket: string, seconds?: number): Promise<RunResult> {
  const id = randomBytes(3).toString('hex');
  const config = loadConfig({ ...env, OFFLOG_KEY_PREFIX: `bp${id}:`, OFFLOG_TABLE_PREFIX: `bp${id}_`, OFFLOG_SLICE_SECONDS: String(SLICE) });
  const rt = new Runtime(config, createLogger('warn', 'bench-php'));
  await rt.store.migrate();
  await drainQueue(config);
  const slice = Math.floor(Date.now() / 1000 / SLICE) + 3;
  const at = slice * SLICE * 1000 + 1000;
  const agent = path === 'agent' ? await startAgent(socket) : null;
  const worker = rt.worker({}, { now: () => at });
  const working = worker.run();
  const requests = Math.ceil(EVENTS[path] / eventsPerRequest / PROCS);
  const rss: number[] = [];
  const sampler = agent ? setInterval(() => rss.push(rssMb(agent.pid!)), 200) : null;
  const t0 = performance.now();
  const outs = await Promise.all(Array.from({ length: PROCS }, (_, p) => php({
    proc: p, events: eventsPerRequest, users: 10_000, at, gearman: config.gearmanServers.map((s) => `${s.host}:${s.port}`).join(','),
    socket: path === 'agent' ? socket : '', mode: path === 'logSimple' ? 'logSimple' : 'client', ...(seconds ? { seconds } : { requests }),
  })));
  const total = outs.reduce((s, o) => s + o.logged, 0);
  const delivered = outs.reduce((s, o) => s + o.sent + o.fallback, 0);
  while (worker.stats.events < delivered) await new Promise((r) => setTimeout(r, 5));
  // A direct job that timed out in PHP (counted dropped there) may still have reached gearmand: wait for quiet.
  for (let seen = -1; seen !== worker.stats.events;) {
    seen = worker.stats.events;
    await new Promise((r) => setTimeout(r, 300));
  }
  worker.stop();
  await working;
  await rt.flush(new Date((slice + 2) * SLICE * 1000));
  const elapsed = (performance.now() - t0) / 1000;
  if (sampler) clearInterval(sampler);
  if (agent) await stopAgent(agent);
  // The exact totals requests.php's events add up to (logSimple carries no value: 0).
  const expected = new Map<string, [number, number]>();
  outs.forEach((o, p) => {
    for (let r = 0; r < o.requests; r++) {
      for (let i = 0; i < eventsPerRequest; i++) {
        const key = `${(p * 7919 + r) % 10_000}:${1 + ((r + i) % 5)}`;
        const cur = expected.get(key) ?? [0, 0];
        expected.set(key, [cur[0] + 1, cur[1] + (path === 'logSimple' ? 0 : 1 + (i % 3))]);
      }
    }
  });
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(`SELECT user_id, action_id, count, value_sum FROM \`${config.tablePrefix}counts\``);
  let mismatches = Math.abs(rows.length - expected.size);
  for (const r of rows) {
    const e = expected.get(`${r.user_id}:${r.action_id}`);
    if (!e || e[0] !== Number(r.count) || e[1] !== Number(r.value_sum)) mismatches++;
  }
  await rt.close();
  const result: RunResult = {
    path, eventsPerRequest, events: total, seconds: elapsed, eventsPerSecond: Math.round(total / elapsed), exact: mismatches === 0, mismatches,
    logP50Us: median(outs.map((o) => o.logP50Ns)) / 1000, endP50Us: median(outs.map((o) => o.endP50Ns)) / 1000, endP99Us: Math.max(...outs.map((o) => o.endP99Ns)) / 1000,
    sentViaAgent: outs.reduce((s, o) => s + o.sent, 0), fallback: outs.reduce((s, o) => s + o.fallback, 0), dropped: outs.reduce((s, o) => s + o.dropped, 0),
    agentRssMb: rss.length ? { first: rss[0]!, max: Math.max(...rss), last: rss[rss.length - 1]! } : null,
  };
  process.stderr.write(`${JSON.stringify(result)}\n`);
  return result;
}

async function main(): Promise<number> {
  const started = servicesUp(env);
  const dir = join(env.OFFLOG_DATA_DIR!, 'php');
  mkdirSync(dir, { recursive: true });
  const socket = join(dir, 'agent.sock');
  try {
    const results: RunResult[] = [];
    for (const size of [1, 3, 10]) for (const path of PATHS) results.push(await run(path, size, socket));
    const steady = await run('agent', 3, socket, RSS_SECONDS);
    const m = await machine(loadConfig(env));
    const table = results.map((r) => `${r.path.padEnd(10)} ${String(r.eventsPerRequest).padStart(3)} ev/req  ${String(r.eventsPerSecond).padStart(8)} ev/s  log() p50 ${r.logP50Us.toFixed(2)} µs  end p50 ${r.endP50Us.toFixed(1)} µs p99 ${r.endP99Us.toFixed(1)} µs  ${r.exact ? 'exact' : `WRONG (${r.mismatches} rows)`}  fallback ${r.fallback}${r.dropped ? `  dropped by PHP ${r.dropped} (timeouts; the rows say whether they arrived)` : ''}${r.agentRssMb ? `  agent RSS ${r.agentRssMb.first.toFixed(0)}→${r.agentRssMb.max.toFixed(0)} MB` : ''}`);
    const rss = steady.agentRssMb!;
    console.log(`PHP paths (${PROCS} PHP processes; ${m.cores} cores, ${m.cpuModel}; load ${m.loadAverage.join(' ')})\n${table.join('\n')}`);
    console.log(`steady agent run, ${RSS_SECONDS} s: ${steady.eventsPerSecond} ev/s, agent RSS first ${rss.first.toFixed(1)} MB, max ${rss.max.toFixed(1)} MB, last ${rss.last.toFixed(1)} MB, ${steady.exact ? 'exact' : 'WRONG'}`);
    writeFileSync(OUT, `${JSON.stringify({ at: new Date().toISOString(), quick, procs: PROCS, machine: m, results, steady }, null, 2)}\n`);
    return [...results, steady].every((r) => r.exact) ? 0 : 1;
  } finally {
    if (started && !args.includes('--keep')) servicesDown(env);
  }
}

main().then((code) => process.exit(code), (err: Error) => {
  console.error(err.stack ?? err.message);
  process.exit(1);
});
