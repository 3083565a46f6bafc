/**
 * `offlog` — the operator's command line.
 *   offlog services up|down|status     local gearmand, memcached, MariaDB (native, loopback)
 *   offlog migrate                     apply the schema migrations not applied yet
 *   offlog worker [--until-idle]       run a worker (long-lived unless --until-idle)
 *   offlog flush [--now ISO-8601 [--force]]  flush finished slices to MySQL (a --now ahead of the clock needs --force)
 *   offlog status                      queues, ring, watermark and lag
 *   offlog deadletters [--limit N]     move dead letters into MySQL and show the latest
 *   offlog report series|top|timeline|health|actions [--from T --to T | --last 30d] [--step 10m|1h|1d]
 *                 [--action N | --actions 1,2] [--user N] [--limit N] [--slices N] [--json]
 *                                      the dashboard's reports as tables (or the API's JSON)
 *   offlog actions list | set ID NAME | rm ID   action names, shown wherever an action id is
 *   offlog prune [--now ISO-8601]      delete rows past their retention, in small batches
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadConfig } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { drainDeadLetters } from '../lib/pipeline/deadletter.ts';
import { checkFlushTime } from '../lib/pipeline/flush.ts';
import { adminStatus } from '../lib/wire/gearman.ts';
import { label } from '../lib/base/config.ts';
import { Runtime } from '../lib/runtime.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { FlushClockError } from '../lib/base/errors.ts';
import { parseActionId } from '../lib/domain/contract.ts';
import { handleReport } from '../lib/report/api.ts';
import { ReportQueries, type Action } from '../lib/report/queries.ts';
import { formatActions, formatHealth, formatSeries, formatTimeline, formatTop } from './report-format.ts';

const USAGE = `usage: offlog services up|down|status | migrate | worker [--until-idle] | flush [--now ISO-8601 [--force]] | status | deadletters [--limit N]
       | report series|top|timeline|health|actions [--from T --to T | --last 30d] [--step 10m|1h|1d] [--action N | --actions 1,2] [--user N] [--limit N] [--slices N] [--json]
       | actions list | actions set ID NAME | actions rm ID | prune [--now ISO-8601]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'services') {
    const script = fileURLToPath(new URL('./services.sh', import.meta.url));
    return spawnSync('bash', [script, ...rest], { stdio: 'inherit' }).status ?? 1;
  }
  const { values, positionals } = parseArgs({
    args: rest,
    options: {
      'until-idle': { type: 'boolean' }, now: { type: 'string' }, force: { type: 'boolean' }, limit: { type: 'string' },
      ...REPORT_OPTIONS,
    },
    strict: true,
    allowPositionals: true,
  });
  if (positionals.length > 0 && command !== 'report' && command !== 'actions') throw new ConfigError(`${command}: unexpected argument ${positionals[0]}\n${USAGE}`);
  const rt = new Runtime(loadConfig(process.env));
  const c = rt.config;
  try {
    switch (command) {
      case 'migrate':
        rt.log.info({ tablePrefix: c.tablePrefix, applied: await rt.store.migrate() }, 'schema up to date');
        return 0;
      case 'worker': {
        const worker = rt.worker();
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.stop());
        print(await worker.run({ idle: values['until-idle'] === true }));
        return 0;
      }
      case 'flush': {
        const now = values.now === undefined ? new Date() : new Date(values.now);
        if (Number.isNaN(now.getTime())) throw new ConfigError(`--now: ${JSON.stringify(values.now)} is not an ISO-8601 time`);
        checkFlushTime(now, Date.now(), values.force === true);
        const result = await rt.flush(now);
        print(result);
        return result.ran ? 0 : 75; // EX_TEMPFAIL: another flush held the lock
      }
      case 'status':
        print(await status(rt));
        return 0;
      case 'deadletters': {
        const moved = await drainDeadLetters(c.gearmanServers, rt.store);
        const letters = await rt.store.deadLetters(Number(values.limit ?? 20));
        print({ moved, latest: letters.map((d) => ({ ...d, payload: d.payload.toString('utf8').slice(0, 200) })) });
        return 0;
      }
      case 'report':
        return await report(rt, positionals, values);
      case 'actions':
        return await actions(rt, positionals);
      case 'prune': {
        const now = values.now === undefined ? new Date() : new Date(values.now);
        if (Number.isNaN(now.getTime())) throw new ConfigError(`--now: ${JSON.stringify(values.now)} is not an ISO-8601 time`);
        print(await rt.prune(now));
        return 0;
      }
      default:
        process.stderr.write(`${USAGE}\n`);
        return 64;
    }
  } finally {
    await rt.close();
  }
}

const REPORT_OPTIONS = {
  from: { type: 'string' }, to: { type: 'string' }, last: { type: 'string' }, step: { type: 'string' }, action: { type: 'string' },
  actions: { type: 'string' }, user: { type: 'string' }, slices: { type: 'string' }, json: { type: 'boolean' },
} as const;
const REPORT_QUERY = ['from', 'to', 'last', 'step', 'action', 'actions', 'user', 'limit', 'slices'] as const;

/** The API's own handler answers, so the CLI validates and reads exactly as GET /api/<kind> does. */
async function report(rt: Runtime, positionals: string[], values: Record<string, string | boolean | undefined>): Promise<number> {
  const [kind, extra] = positionals;
  const formats: Record<string, (body: never) => string> = {
    series: formatSeries, top: formatTop, timeline: formatTimeline, health: formatHealth, actions: (b: { actions: Action[] }) => formatActions(b.actions),
  };
  if (kind === undefined || !(kind in formats) || extra !== undefined) throw new ConfigError(`report: say which one: series, top, timeline, health or actions\n${USAGE}`);
  const query = Object.fromEntries(REPORT_QUERY.filter((k) => values[k] !== undefined).map((k) => [k, String(values[k])]));
  const res = await handleReport({ method: 'GET', path: `/api/${kind}`, query, headers: {} }, { ...rt.reportDeps, token: undefined });
  if (res.statusCode !== 200) {
    const body = JSON.parse(res.body) as { error: string; field?: string };
    // The API names query parameters; on the command line they are flags.
    throw new ConfigError(body.field && (REPORT_QUERY as readonly string[]).includes(body.field) ? `--${body.error}` : body.error);
  }
  process.stdout.write(`${values.json === true ? res.body : formats[kind]!(JSON.parse(res.body) as never)}\n`);
  return 0;
}

async function actions(rt: Runtime, positionals: string[]): Promise<number> {
  const [sub, id, ...name] = positionals;
  const q = new ReportQueries(rt.store, rt.config.sliceSeconds);
  if (sub === 'list' || sub === undefined) {
    process.stdout.write(`${formatActions(await q.actions())}\n`);
    return 0;
  }
  const actionId = (() => {
    try {
      return parseActionId(id, 'ID');
    } catch (err) {
      throw new ConfigError(`actions ${sub}: ${(err as Error).message}`);
    }
  })();
  if (sub === 'set') {
    const text = name.join(' ').trim();
    if (text.length === 0 || text.length > 64) throw new ConfigError(`actions set: NAME: must be 1 to 64 characters, got ${JSON.stringify(text)}`);
    await q.setActionName(actionId, text);
    process.stdout.write(`action ${actionId} is now named ${JSON.stringify(text)}\n`);
    return 0;
  }
  if (sub === 'rm') {
    process.stdout.write((await q.removeActionName(actionId)) ? `action ${actionId} has no name now\n` : `action ${actionId} had no name\n`);
    return 0;
  }
  throw new ConfigError(`actions: list, set ID NAME or rm ID, not ${JSON.stringify(sub)}`);
}

const STATUS_BATCH_PAIRS = 5000;

async function status(rt: Runtime) {
  const c = rt.config;
  const now = Date.now();
  const gearman = await Promise.all(
    c.gearmanServers.map(async (s) => {
      try {
        return { server: label(s), functions: Object.fromEntries(await adminStatus(s)) };
      } catch (err) {
        return { server: label(s), error: (err as Error).message };
      }
    }),
  );
  let memcached: unknown;
  const slices: unknown[] = [];
  try {
    memcached = await rt.ring.bootTimes();
    const current = sliceOf(now, c.sliceSeconds);
    for (let s = current - c.ringSlices + 1; s <= current; s++) {
      // Streamed a batch at a time and only counted: memory stays at one batch whatever the slice's size.
      const reader = await rt.ring.openSlice(s as SliceId, STATUS_BATCH_PAIRS);
      while ((await reader.next()) !== null);
      const t = reader.totals();
      slices.push({
        slice: s, start: new Date(sliceStartMs(s as SliceId, c.sliceSeconds)).toISOString(), pairs: t.rows, events: t.events?.toString() ?? '0',
        late: t.late.toString(), pairsMissing: t.missingPairs, sumsSaturated: t.saturated.toString(), corrupt: t.corrupt,
      });
    }
  } catch (err) {
    memcached = { error: (err as Error).message };
  }
  let mysql: unknown;
  try {
    const watermark = await rt.store.watermark();
    const current = sliceOf(now, c.sliceSeconds);
    const lagSlices = watermark === null ? null : current - 2 - sliceOf(watermark.getTime(), c.sliceSeconds);
    const recent = await rt.store.recentSlices(10);
    mysql = { watermark: watermark?.toISOString() ?? null, lagSlices, problems: recent.filter((r) => r.status !== 'flushed'), recent: recent.length };
  } catch (err) {
    mysql = { error: (err as Error).message };
  }
  return { now: new Date(now).toISOString(), gearman, memcached, ring: slices, mysql };
}

const print = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
};

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    const plain = err instanceof ConfigError || err instanceof FlushClockError;
    process.stderr.write(`offlog: ${plain ? err.message : err.stack ?? err.message}\n`);
    process.exit(plain ? 78 : 1);
  },
);
