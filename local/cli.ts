/**
 * `offlog` — the operator's command line.
 *   offlog services up|down|status     local gearmand, memcached, MariaDB (native, loopback)
 *   offlog migrate                     apply the schema migrations not applied yet
 *   offlog worker [--until-idle]       run a worker (long-lived unless --until-idle)
 *   offlog flush [--now ISO-8601 [--force]]  flush finished slices to MySQL (a --now ahead of the clock needs --force)
 *   offlog status                      queues, ring, watermark and lag
 *   offlog deadletters [--limit N]     move dead letters into MySQL and show the latest
 *   offlog watch add|rm|list [--user N | --action N]   the watch lists (raw records kept, ActivityWatched published)
 *   offlog watched [--until-idle]      drain offlog.watched into MySQL and onto the bus (long-lived unless --until-idle)
 *   offlog rollup --from ISO --to ISO  recompute the hourly and daily rollups of every hour and day in the range
 *   offlog report series|top|timeline|health|actions [--from T --to T | --last 30d] [--step 10m|1h|1d]
 *                 [--action N | --actions 1,2] [--user N] [--limit N] [--slices N] [--json]
 *                                      the dashboard's reports as tables (or the API's JSON)
 *   offlog actions list | set ID NAME | rm ID   action names, shown wherever an action id is
 *   offlog prune [--now ISO-8601]      delete rows past their retention, in small batches
 *   offlog agent [--socket PATH] [--tcp PORT]   the per-host agent PHP logs through (docs/php.md), until SIGTERM
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { loadConfig } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { drainDeadLetters } from '../lib/pipeline/deadletter.ts';
import { checkFlushTime } from '../lib/pipeline/flush.ts';
import { Runtime } from '../lib/runtime.ts';
import { busCommand } from './bus-commands.ts';
import { actions, REPORT_OPTIONS, report } from './report-commands.ts';
import { status } from './status.ts';
import { agentCommand } from './agent-command.ts';
import { FlushClockError, InputError } from '../lib/base/errors.ts';

const USAGE = `usage: offlog services up|down|status | migrate | worker [--until-idle] | flush [--now ISO-8601 [--force]] | status | deadletters [--limit N]
       | watch add|rm|list [--user N | --action N] | watched [--until-idle] | rollup --from ISO-8601 --to ISO-8601
       | report series|top|timeline|health|actions [--from T --to T | --last 30d] [--step 10m|1h|1d] [--action N | --actions 1,2] [--user N] [--limit N] [--slices N] [--json]
       | actions list | actions set ID NAME | actions rm ID | prune [--now ISO-8601] | agent [--socket PATH] [--tcp PORT]`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === 'services') {
    const script = fileURLToPath(new URL('./services.sh', import.meta.url));
    return spawnSync('bash', [script, ...rest], { stdio: 'inherit' }).status ?? 1;
  }
  if (command === 'agent') {
    const rt = new Runtime(loadConfig(process.env));
    return agentCommand(rt.config, rt.log, rest);
  }
  const { values, positionals } = parseArgs({
    args: rest,
    options: {
      'until-idle': { type: 'boolean' }, now: { type: 'string' }, force: { type: 'boolean' }, limit: { type: 'string' },
      ...REPORT_OPTIONS,
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length > 0 && command !== 'watch' && command !== 'report' && command !== 'actions') {
    process.stderr.write(`offlog ${command}: unexpected ${JSON.stringify(positionals.join(' '))}\n${USAGE}\n`);
    return 64;
  }
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
      case 'watch':
      case 'watched':
      case 'rollup':
        print(await busCommand(rt, command, positionals, values));
        return 0;
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

const print = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
};

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: Error) => {
    const plain = err instanceof ConfigError || err instanceof FlushClockError || err instanceof InputError;
    process.stderr.write(`offlog: ${plain ? err.message : err.stack ?? err.message}\n`);
    process.exit(plain ? 78 : 1);
  },
);
