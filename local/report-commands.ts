/** `offlog report …` and `offlog actions …`: the dashboard's reports on the command line, and action names. */
import { ConfigError } from '../lib/base/errors.ts';
import { parseActionId } from '../lib/domain/contract.ts';
import { handleReport } from '../lib/report/api.ts';
import { ReportQueries, type Action } from '../lib/report/queries.ts';
import type { Runtime } from '../lib/runtime.ts';
import { formatActions, formatHealth, formatSeries, formatTimeline, formatTop } from './report-format.ts';

import { Argument, type Command } from 'commander';
import type { Cli } from './cli-context.ts';

export function registerReports(program: Command, cli: Cli): void {
  program
    .command('report')
    .description('the dashboard\'s reports as tables (or the API\'s JSON); the parameters are GET /api/<kind>\'s, checked the same way')
    .addArgument(new Argument('<kind>', 'which report').choices(['series', 'top', 'timeline', 'health', 'actions']))
    .option('--from <time>', 'range start: ISO-8601 with a zone, or epoch ms (default: a day before --to)')
    .option('--to <time>', 'range end (default: now)')
    .option('--last <span>', 'instead of --from/--to: 90m, 6h, 30d')
    .option('--step <step>', 'auto, 10m, 1h or 1d (series, timeline)')
    .option('--action <id>', 'one action (top: required)')
    .option('--actions <ids>', 'several actions, 1,2 (series)')
    .option('--user <id>', 'a user (timeline: required)')
    .option('--limit <n>', 'top: how many users, 1-1000 (100)')
    .option('--slices <n>', 'health: recent slices to list, 1-1000 (36)')
    .option('--json', 'print the API\'s JSON')
    .addHelpText('after', '\nExamples:\n  offlog report series --last 7d --step 1h\n  offlog report top --action 1 --last 30d --limit 20\n  offlog report timeline --user 42 --last 30d')
    .action(async (kind: string, o: Record<string, string | boolean | undefined>) => {
      cli.exitCode = await report(await cli.runtime(), [kind], o);
    });
  program
    .command('actions')
    .description('action names, shown wherever an action id is')
    .addArgument(new Argument('[verb]', 'list, set ID NAME, or rm ID').choices(['list', 'set', 'rm']).default('list'))
    .argument('[id]', 'the action id (set, rm)')
    .argument('[name...]', 'the name (set)')
    .addHelpText('after', '\nExamples:\n  offlog actions set 1 logon\n  offlog actions set 2 "failed logon"\n  offlog actions rm 2')
    .action(async (verb: string, id: string | undefined, name: string[]) => {
      cli.exitCode = await actions(await cli.runtime(), [verb, ...(id === undefined ? [] : [id]), ...name]);
    });
}

const REPORT_QUERY = ['from', 'to', 'last', 'step', 'action', 'actions', 'user', 'limit', 'slices'] as const;

/** The API's own handler answers, so the CLI validates and reads exactly as GET /api/<kind> does. */
export async function report(rt: Runtime, positionals: string[], values: Record<string, string | boolean | undefined>): Promise<number> {
  const [kind, extra] = positionals;
  const formats: Record<string, (body: never) => string> = {
    series: formatSeries, top: formatTop, timeline: formatTimeline, health: formatHealth, actions: (b: { actions: Action[] }) => formatActions(b.actions),
  };
  if (kind === undefined || !(kind in formats) || extra !== undefined) throw new ConfigError('report: say which one: series, top, timeline, health or actions');
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

export async function actions(rt: Runtime, positionals: string[]): Promise<number> {
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
