/**
 * `npm run bench:reports` — the read side (issue 11) on a month of data.
 *
 *   node --import tsx bench/reports.ts [--quick] [--runs N] [--regenerate] [--keep] [--out FILE]
 *
 * 1. Data (made once, kept in .data/bench-reports and reused while its spec
 *    is unchanged): 30 days × 144 slices × 5,000 distinct (user, action)
 *    pairs per slice = 21.6M 10-minute rows, inserted slice by slice, each
 *    day then rolled up by rollup() as the `rollup` subscriber would (hourly,
 *    daily, weekly, per-action series). Data generated before the weekly
 *    rollup existed is reused: migration 6 fills the weekly rows from the
 *    daily ones. Users are drawn from 200,000 with a power law
 *    (a few heavy users, a long tail), actions from 8 with skewed weights.
 * 2. Queries, warmed once, then timed through the report function's own
 *    handler (parameters, SQL, JSON): per-action series over 30 days at each
 *    step, top 100 users of each action over 30 days (ragged edges: partial
 *    hours and days), one user's 30-day timeline (heavy and tail users).
 * 3. Dashboard first paint: serverless-offline serving GET / from this data,
 *    Chromium loading it; the time from navigation to the page's
 *    `offlog:data` mark (charts, top users and health drawn).
 * Each figure is printed against its target, met or missed; everything goes
 * to bench/results-reports.json.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';
import { loadConfig } from '../lib/base/config.ts';
import { createLogger } from '../lib/base/log.ts';
import { prng } from '../lib/base/prng.ts';
import { rollup } from '../lib/publish/rollup.ts';
import { handleReport } from '../lib/report/api.ts';
import { Runtime } from '../lib/runtime.ts';
import { machine, REPO, servicesDown, servicesUp, stackEnv } from './stack.ts';

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(name);
const value = (name: string, fallback: string) => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : fallback;
};
const QUICK = flag('--quick');
const RUNS = Number(value('--runs', QUICK ? '10' : '40'));
const OUT = resolve(REPO, value('--out', 'bench/results-reports.json'));
const SPEC = { days: QUICK ? 2 : 30, slicesPerDay: 144, pairsPerSlice: 5000, users: 200_000, actions: [0.3, 0.2, 0.15, 0.12, 0.09, 0.07, 0.05, 0.02], userSkew: 2.2, seed: 7, version: 1 };
const NAMES = ['logon', 'page view', 'search', 'post', 'comment', 'purchase', 'failed logon', 'password reset'];
const DAY = 86_400_000;
const SLICE = 600_000;
/** The data's last day ends at this midnight (fixed, so the generated data can be reused). */
const END = Date.UTC(2026, 10, 1);
const START = END - SPEC.days * DAY;
const TARGETS = { seriesP95: 50, topP95: 200, timelineP95: 50, firstPaint: 1000 };

const env: Record<string, string> = { ...stackEnv(), OFFLOG_DATA_DIR: resolve(REPO, process.env.OFFLOG_BENCH_DATA_DIR ?? '.data/bench-reports'), OFFLOG_MYSQL_BUFFER_POOL_MB: process.env.OFFLOG_BENCH_MYSQL_BUFFER_POOL_MB ?? '4096' };
const config = loadConfig({ ...env, OFFLOG_TABLE_PREFIX: QUICK ? 'rq_' : 'rb_', OFFLOG_KEY_PREFIX: 'rb:' });
const rt = new Runtime(config, createLogger(env.OFFLOG_LOG_LEVEL ?? 'warn', 'bench'));

function log(text: string): void {
  process.stderr.write(`${text}\n`);
}

async function generate(): Promise<void> {
  const spec = JSON.stringify(SPEC);
  await rt.store.migrate();
  if (!flag('--regenerate') && (await rt.store.getState('bench.reports.spec')) === spec) {
    log('bench:reports: data already generated with this spec; reusing it (--regenerate to redo)');
    return;
  }
  const t = rt.store.tables;
  for (const table of [t.counts, t.hourly, t.daily, t.weekly, t.series, t.actions]) await rt.store.pool.query(`TRUNCATE TABLE \`${table}\``);
  const random = prng(SPEC.seed);
  const cumulative = SPEC.actions.map((_, i) => SPEC.actions.slice(0, i + 1).reduce((a, b) => a + b, 0));
  const started = performance.now();
  for (let day = 0; day < SPEC.days; day++) {
    const dayStart = START + day * DAY;
    const inserts: Promise<unknown>[] = [];
    for (let s = 0; s < SPEC.slicesPerDay; s++) {
      const at = `FROM_UNIXTIME(${(dayStart + s * SLICE) / 1000})`;
      const seen = new Set<number>();
      const rows: string[] = [];
      while (rows.length < SPEC.pairsPerSlice) {
        const user = 1 + Math.floor(SPEC.users * random() ** SPEC.userSkew);
        const r = random();
        const action = 1 + cumulative.findIndex((c) => r < c);
        const key = user * 16 + action;
        if (seen.has(key)) continue;
        seen.add(key);
        const count = 1 + Math.floor(-Math.log(1 - random()) * 2);
        rows.push(`(${at},${user},${action},${count},${action === 6 ? count * (100 + Math.floor(random() * 4900)) : 0})`);
      }
      inserts.push(rt.store.pool.query(`INSERT INTO \`${t.counts}\` (slice_start, user_id, action_id, count, value_sum) VALUES ${rows.join(',')}`));
      if (inserts.length >= 4) await Promise.all(inserts.splice(0));
    }
    await Promise.all(inserts);
    await rollup(rt.store, dayStart, dayStart + DAY);
    const done = day + 1;
    const elapsed = (performance.now() - started) / 1000;
    log(`bench:reports: day ${done}/${SPEC.days} generated and rolled up (${(done * SPEC.slicesPerDay * SPEC.pairsPerSlice / 1e6).toFixed(1)}M rows, ${elapsed.toFixed(0)} s, ~${((elapsed / done) * (SPEC.days - done)).toFixed(0)} s to go)`);
  }
  for (const [i, name] of NAMES.entries()) await rt.store.pool.query(`INSERT INTO \`${t.actions}\` (action_id, name, updated_at) VALUES (?, ?, NOW(3)) ON DUPLICATE KEY UPDATE name = VALUES(name)`, [i + 1, name]);
  await rt.store.setState('bench.reports.spec', spec);
  log(`bench:reports: generated in ${((performance.now() - started) / 1000).toFixed(0)} s`);
}

interface Timing { name: string; runs: number; p50: number; p95: number; max: number; target: number | null; met: boolean | null; note: string }

const percentile = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
};

async function time(name: string, target: number | null, note: string, queries: (() => Promise<void>)[]): Promise<Timing> {
  for (const q of queries.slice(0, Math.min(queries.length, 8))) await q(); // warm-up: the first read of an index pays for the disk
  const ms: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const q = queries[i % queries.length]!;
    const t0 = performance.now();
    await q();
    ms.push(performance.now() - t0);
  }
  const r = { name, runs: ms.length, p50: percentile(ms, 50), p95: percentile(ms, 95), max: Math.max(...ms), target, met: target === null ? null : percentile(ms, 95) <= target, note };
  log(`bench:reports: ${name}: p50 ${r.p50.toFixed(1)} ms, p95 ${r.p95.toFixed(1)} ms, max ${r.max.toFixed(1)} ms`);
  return r;
}

async function report(path: string, query: Record<string, string>): Promise<unknown> {
  const res = await handleReport({ method: 'GET', path, query, headers: {} }, { ...rt.reportDeps, token: undefined, now: () => END });
  if (res.statusCode !== 200) throw new Error(`${path} ${JSON.stringify(query)}: ${res.statusCode} ${res.body}`);
  return JSON.parse(res.body);
}

async function queries(): Promise<Timing[]> {
  const from = new Date(START).toISOString();
  const to = new Date(END).toISOString();
  // Ragged: 30 days ending 25 minutes before the data's end, so every piece (days, hours, slices) is read.
  const raggedTo = new Date(END - 25 * 60_000).toISOString();
  const raggedFrom = new Date(END - 25 * 60_000 - SPEC.days * DAY).toISOString();
  const actions = SPEC.actions.map((_, i) => String(i + 1));
  const out: Timing[] = [];
  for (const [step, label] of [['1h', 'hourly'], ['10m', '10-minute'], ['1d', 'daily']] as const) {
    out.push(await time(`series, one action, ${SPEC.days} days, ${label}`, TARGETS.seriesP95, `${label} steps, each of the 8 actions in turn`, actions.map((a) => async () => void (await report('/api/series', { action: a, from, to, step })))));
  }
  out.push(await time(`series, all 8 actions, ${SPEC.days} days, hourly`, null, 'what the dashboard asks for', [async () => void (await report('/api/series', { from, to, step: '1h' }))]));
  const tops: { action: string; rounds: number; rowsRead: number }[] = [];
  out.push(await time(`top 100 users of an action, ${SPEC.days} days`, TARGETS.topP95, 'ragged edges; each of the 8 actions in turn', actions.map((a) => async () => {
    const r = (await report('/api/top', { action: a, from: raggedFrom, to: raggedTo, limit: '100' })) as { stats: { rounds: number; rowsRead: number } };
    tops.push({ action: a, rounds: r.stats.rounds, rowsRead: r.stats.rowsRead });
  })));
  out.push(await time(`top 1000 users of an action, ${SPEC.days} days`, null, 'the limit', [async () => void (await report('/api/top', { action: '1', from: raggedFrom, to: raggedTo, limit: '1000' }))]));
  const heavy = ['1', '2', '3', '10', '57'];
  const tail = ['150001', '170002', '190003', '199999', '123457'];
  out.push(await time(`timeline of one user, ${SPEC.days} days, hourly`, TARGETS.timelineP95, 'heavy and tail users alternately', [...heavy, ...tail].map((u) => async () => void (await report('/api/timeline', { user: u, from, to, step: '1h' })))));
  out.push(await time(`timeline of one user, ${SPEC.days} days, daily`, TARGETS.timelineP95, 'heavy and tail users alternately', [...heavy, ...tail].map((u) => async () => void (await report('/api/timeline', { user: u, from, to, step: '1d' })))));
  const byAction = new Map(tops.map((x) => [x.action, x]));
  log(`bench:reports: top-100 threshold algorithm, rounds and rows read per action: ${[...byAction.values()].map((x) => `${x.action}: ${x.rounds}/${x.rowsRead}`).join(', ')}`);
  return out;
}

async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

async function firstPaint(): Promise<Timing[]> {
  const ports = [await freePort(), await freePort(), await freePort(), await freePort()];
  const child = spawn(join(REPO, 'node_modules/.bin/osls'), ['offline', 'start'], {
    cwd: REPO, detached: true, stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env, ...env, OFFLOG_TABLE_PREFIX: config.tablePrefix, OFFLOG_KEY_PREFIX: config.keyPrefix, OFFLOG_REPORT_TOKEN: '',
      OFFLOG_HTTP_PORT: String(ports[0]), OFFLOG_LAMBDA_PORT: String(ports[1]), OFFLOG_WEBSOCKET_PORT: String(ports[2]), OFFLOG_ALB_PORT: String(ports[3]),
      OFFLOG_FLUSH_SCHEDULE: 'rate(1 day)', OFFLOG_PRUNE_SCHEDULE: 'rate(1 day)',
    },
  });
  const stop = () => child.pid && child.exitCode === null && process.kill(-child.pid, 'SIGTERM');
  process.once('exit', stop);
  try {
    await new Promise<void>((res, rej) => {
      let out = '';
      const timer = setTimeout(() => rej(new Error(`serverless-offline did not start:\n${out}`)), 60_000);
      const watch = (b: Buffer) => {
        out += b.toString();
        if (out.includes('Server ready')) {
          clearTimeout(timer);
          res();
        }
      };
      child.stdout!.on('data', watch);
      child.stderr!.on('data', watch);
    });
    const executablePath = process.env.OFFLOG_CHROMIUM ?? '/usr/bin/chromium';
    const browser = await chromium.launch({ executablePath, args: ['--no-sandbox', '--disable-gpu'] });
    const out: Timing[] = [];
    try {
      for (const [hash, label] of [[`from=${new Date(END - DAY).toISOString()}&to=${new Date(END).toISOString()}`, 'last 24 h (the default range)'], [`from=${new Date(START).toISOString()}&to=${new Date(END).toISOString()}`, `${SPEC.days} days`]] as const) {
        const runs: number[] = [];
        for (let i = 0; i < Math.min(RUNS, 10) + 1; i++) {
          // A fresh context each time: nothing cached, as a first visit.
          const context = await browser.newContext({ viewport: { width: 1360, height: 1000 } });
          const page = await context.newPage();
          await page.goto(`http://127.0.0.1:${ports[0]}/#${hash}`);
          await page.waitForFunction(() => performance.getEntriesByName('offlog:data').length > 0, undefined, { timeout: 30_000 });
          const ms = await page.evaluate(() => performance.getEntriesByName('offlog:data')[0]!.startTime);
          if (i > 0) runs.push(ms); // the first load warms serverless-offline's handler
          await context.close();
        }
        const t: Timing = { name: `dashboard first paint with data, ${label}`, runs: runs.length, p50: percentile(runs, 50), p95: percentile(runs, 95), max: Math.max(...runs), target: TARGETS.firstPaint, met: percentile(runs, 95) <= TARGETS.firstPaint, note: 'navigation → charts, top users and health drawn (Chromium, serverless-offline on this machine)' };
        log(`bench:reports: ${t.name}: p50 ${t.p50.toFixed(0)} ms, p95 ${t.p95.toFixed(0)} ms`);
        out.push(t);
      }
    } finally {
      await browser.close();
    }
    return out;
  } finally {
    stop();
  }
}

async function sizes(): Promise<Record<string, { rows: number; dataMb: number; indexMb: number }>> {
  const [rows] = await rt.store.pool.query<import('mysql2/promise').RowDataPacket[]>(
    `SELECT table_name t, table_rows r, data_length d, index_length i FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE ?`,
    [`${config.tablePrefix}%`],
  );
  return Object.fromEntries(rows.map((r) => [String(r.t), { rows: Number(r.r), dataMb: Math.round(Number(r.d) / 2 ** 20), indexMb: Math.round(Number(r.i) / 2 ** 20) }]));
}

async function main(): Promise<void> {
  const started = servicesUp(env);
  try {
    await generate();
    const [[exact]] = await rt.store.pool.query<import('mysql2/promise').RowDataPacket[]>(`SELECT COUNT(*) n FROM \`${rt.store.tables.counts}\``);
    const results = [...(await queries()), ...(await firstPaint())];
    const m = await machine(config);
    const tables = await sizes();
    const w = [48, 9, 9, 9, 8, 8];
    const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(w[i]!) : c.padStart(w[i]!))).join(' ');
    console.log(`\nReports on ${Number(exact!.n).toLocaleString('en')} 10-minute rows (${SPEC.days} days × ${SPEC.slicesPerDay} slices × ${SPEC.pairsPerSlice} pairs) plus rollups`);
    console.log(`machine: ${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.os}, Node ${m.node}, MariaDB ${m.mariadb} (buffer pool ${env.OFFLOG_MYSQL_BUFFER_POOL_MB} MB)\n`);
    console.log(line(['query', 'p50 ms', 'p95 ms', 'max ms', 'target', 'result']));
    for (const r of results) console.log(line([r.name, r.p50.toFixed(1), r.p95.toFixed(1), r.max.toFixed(1), r.target === null ? '' : `≤ ${r.target}`, r.met === null ? '' : r.met ? 'met' : 'MISSED']));
    mkdirSync(join(OUT, '..'), { recursive: true });
    writeFileSync(OUT, `${JSON.stringify({ at: new Date().toISOString(), spec: SPEC, rows: Number(exact!.n), machine: m, bufferPoolMb: Number(env.OFFLOG_MYSQL_BUFFER_POOL_MB), tables, results }, null, 2)}\n`);
    console.log(`\nresults: ${OUT}`);
  } finally {
    await rt.close();
    if (started && !flag('--keep')) servicesDown(env);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
