/** The CLI's bus commands: watch lists, the watched drain, rollups by hand. */
import { ConfigError } from '../lib/base/errors.ts';
import { parseAt } from '../lib/domain/contract.ts';
import { addWatch, listWatches, removeWatch, type WatchKind } from '../lib/count/watch.ts';
import { rollup } from '../lib/publish/rollup.ts';
import type { Runtime } from '../lib/runtime.ts';
import type { RowDataPacket } from 'mysql2/promise';
import { Argument, type Command } from 'commander';
import type { Cli } from './cli-context.ts';

export function registerBus(program: Command, cli: Cli): void {
  program
    .command('watch')
    .description('the watch lists: a watched user\'s or action\'s events keep their raw record and are published as ActivityWatched')
    .addArgument(new Argument('[verb]', 'what to do').choices(['add', 'rm', 'list']).default('list'))
    .option('--user <id>', 'a user id (unsigned 64-bit)')
    .option('--action <id>', 'an action id (1-65535)')
    .action(async (verb: string, o: Args) => cli.print(await busCommand(await cli.runtime(), 'watch', [verb], o)));
  program
    .command('watched')
    .description('drain offlog.watched into MySQL and onto the bus (runs until stopped)')
    .option('--until-idle', 'stop when the queue is empty')
    .action(async (o: Args) => cli.print(await busCommand(await cli.runtime(), 'watched', [], o)));
  program
    .command('rollup')
    .description('recompute the hourly, daily and weekly rollups of every hour and day in a range')
    .requiredOption('--from <time>', 'ISO-8601 start, with its zone')
    .requiredOption('--to <time>', 'ISO-8601 end, with its zone')
    .action(async (o: Args) => cli.print(await busCommand(await cli.runtime(), 'rollup', [], o)));
}

interface Args { user?: string; action?: string; from?: string; to?: string; untilIdle?: boolean }

export async function busCommand(rt: Runtime, command: string, positionals: string[], args: Args): Promise<unknown> {
  switch (command) {
    case 'watch':
      return watch(rt, positionals, args);
    case 'watched': {
      const drain = rt.watchedDrain();
      for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => drain.stop());
      return drain.run({ idle: args.untilIdle === true });
    }
    case 'rollup': {
      const from = time('--from', args.from);
      const to = time('--to', args.to);
      if (to <= from) throw new ConfigError(`--to: ${args.to} is not after --from ${args.from}`);
      return { from: new Date(from).toISOString(), to: new Date(to).toISOString(), ...(await rollup(rt.store, from, to)) };
    }
  }
  throw new ConfigError(`unknown command ${command}`);
}

async function watch(rt: Runtime, positionals: string[], args: Args): Promise<unknown> {
  const [verb, ...extra] = positionals;
  if (extra.length > 0) throw new ConfigError(`watch: unexpected ${JSON.stringify(extra.join(' '))}`);
  if (verb === 'list' || verb === undefined) {
    const watches = await listWatches(rt.store);
    return {
      users: watches.filter((w) => w.kind === 'user').map((w) => w.id),
      actions: watches.filter((w) => w.kind === 'action').map((w) => Number(w.id)),
      note: `a running worker sees a change within ${rt.config.watchListTtlSeconds} s (OFFLOG_WATCHLIST_TTL_SECONDS)`,
    };
  }
  if (verb !== 'add' && verb !== 'rm') throw new ConfigError(`watch: "${verb}" is not add, rm or list`);
  if ((args.user === undefined) === (args.action === undefined)) throw new ConfigError(`watch ${verb}: give exactly one of --user N or --action N`);
  const kind: WatchKind = args.user !== undefined ? 'user' : 'action';
  const id = (args.user ?? args.action)!;
  const changed = verb === 'add' ? await addWatch(rt.store, kind, id) : await removeWatch(rt.store, kind, id);
  return { [verb === 'add' ? 'added' : 'removed']: changed, kind, id, note: changed ? `a running worker sees it within ${rt.config.watchListTtlSeconds} s` : verb === 'add' ? 'already watched' : 'was not watched' };
}

/** The same rules as an event's `at`: a date, or a date-time with its zone. */
export type BusStatus = {
  eventBus: string | null; unpublishedSlices: number; oldestUnpublishedSlice: string | null; unpublishedWatched: number;
  oldestUnpublishedWatched: string | null; watchedUsers: number; watchedActions: number;
} | { eventBus: string | null; error: string };

/** For `offlog status`: the bus, what waits to be published, and the watch lists. */
export async function busStatus(rt: Runtime): Promise<BusStatus> {
  const t = rt.store.tables;
  try {
    const [[slices]] = await rt.store.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n, MIN(slice_start) AS oldest FROM \`${t.slices}\` WHERE published_at IS NULL`);
    const [[watched]] = await rt.store.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n, MIN(received_at) AS oldest FROM \`${t.watched}\` WHERE published_at IS NULL`);
    const watches = await listWatches(rt.store);
    return {
      eventBus: rt.config.eventBus ?? null,
      unpublishedSlices: Number(slices!.n),
      oldestUnpublishedSlice: (slices!.oldest as Date | null)?.toISOString() ?? null,
      unpublishedWatched: Number(watched!.n),
      oldestUnpublishedWatched: (watched!.oldest as Date | null)?.toISOString() ?? null,
      watchedUsers: watches.filter((w) => w.kind === 'user').length,
      watchedActions: watches.filter((w) => w.kind === 'action').length,
    };
  } catch (err) {
    return { eventBus: rt.config.eventBus ?? null, error: (err as Error).message };
  }
}

function time(flag: string, value: string | undefined): number {
  if (value === undefined) throw new ConfigError(`${flag}: required (an ISO-8601 time, e.g. 2026-11-29T00:00:00Z)`);
  return parseAt(value, Number.NaN, flag);
}
