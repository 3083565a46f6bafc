/** The operator's pipeline commands: servers, schema, worker, flush, status, dead letters, prune. */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Argument, Option, type Command } from 'commander';
import { drainDeadLetters } from '../lib/flush/deadletter.ts';
import { checkFlushTime } from '../lib/flush/flush.ts';
import { EXIT } from './cli-errors.ts';
import { isoTime, wholeNumber, type Cli } from './cli-context.ts';
import { status } from './status.ts';
import { formatStatus } from './status-format.ts';

export function registerOps(program: Command, cli: Cli): void {
  program
    .command('services')
    .description('start, stop or show the local gearmand, memcached and MariaDB (native, on 127.0.0.1, data under .data/)')
    .addArgument(new Argument('<action>', 'what to do').choices(['up', 'down', 'status']))
    .action((action: string) => {
      const script = fileURLToPath(new URL('./services.sh', import.meta.url));
      cli.exitCode = spawnSync('bash', [script, action], { stdio: 'inherit' }).status ?? EXIT.failed;
    });

  program
    .command('migrate')
    .description('apply the schema migrations not applied yet (under a lock)')
    .action(async () => {
      const rt = await cli.runtime();
      rt.log.info({ tablePrefix: rt.config.tablePrefix, applied: await rt.store.migrate() }, 'schema up to date');
    });

  program
    .command('worker')
    .description('count events: take jobs from gearmand into the memcached ring (runs until stopped)')
    .option('--until-idle', 'stop when the queue is empty')
    .action(async (o: { untilIdle?: boolean }) => {
      const worker = (await cli.runtime()).worker();
      for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => worker.stop());
      cli.print(await worker.run({ idle: o.untilIdle === true }));
    });

  program
    .command('flush')
    .description('write every finished slice to MySQL, then publish SliceFlushed (with `npm start` running: on its local bus)')
    .option('--now <time>', 'flush as if it were this ISO-8601 time (default: the clock)', isoTime('--now'))
    .option('--force', 'allow a --now more than a minute ahead of the clock')
    .addHelpText('after', '\nExit 75 when another flush holds the lock.\nExample, to see counts now rather than in ten minutes:\n  offlog flush --now "$(date -u -d \'+30 min\' +%FT%TZ)" --force')
    .action(async (o: { now?: Date; force?: boolean }) => {
      const now = o.now ?? new Date();
      checkFlushTime(now, Date.now(), o.force === true);
      const result = await (await cli.runtime()).flush(now);
      cli.print(result);
      if (!result.ran) cli.exitCode = EXIT.busy;
    });

  program
    .command('status')
    .description('servers, queues, the ring, the watermark and lag, the bus; exits 3 when something is down or behind')
    .option('--json', 'the same as JSON, for machines')
    .action(async (o: { json?: boolean }) => {
      const s = await status(await cli.runtime());
      if (o.json === true) cli.print(s);
      else process.stdout.write(`${formatStatus(s)}\n`);
      if (!s.healthy) cli.exitCode = EXIT.unhealthy;
    });

  program
    .command('deadletters')
    .description('move dead letters from gearmand into MySQL and show the latest')
    .option('--limit <n>', 'how many to show', wholeNumber('--limit', 1, 10_000), 20)
    .action(async (o: { limit: number }) => {
      const rt = await cli.runtime();
      const moved = await drainDeadLetters(rt.config.gearmanServers, rt.store);
      const letters = await rt.store.deadLetters(o.limit);
      cli.print({ moved, latest: letters.map((d) => ({ ...d, payload: d.payload.toString('utf8').slice(0, 200) })) });
    });

  program
    .command('prune')
    .description('delete rows past their retention (OFFLOG_*RETENTION_DAYS), in small batches')
    .addOption(new Option('--now <time>', 'prune as if it were this ISO-8601 time').argParser(isoTime('--now')))
    .action(async (o: { now?: Date }) => {
      cli.print(await (await cli.runtime()).prune(o.now ?? new Date()));
    });
}
