/** `offlog report …` and `offlog actions …`: the dashboard's reports on the command line, and action names. */
import { ConfigError } from '../lib/base/errors.ts';
import { parseActionId } from '../lib/domain/contract.ts';
import { handleReport } from '../lib/report/api.ts';
import { ReportQueries, type Action } from '../lib/report/queries.ts';
import type { Runtime } from '../lib/runtime.ts';
import { formatActions, formatHealth, formatSeries, formatTimeline, formatTop } from './report-format.ts';

const USAGE = `usage: offlog report series|top|timeline|health|actions [--from T --to T | --last 30d] [--step 10m|1h|1d] [--action N | --actions 1,2] [--user N] [--limit N] [--slices N] [--json]
       | offlog actions list | actions set ID NAME | actions rm ID`;

export const REPORT_OPTIONS = {
  from: { type: 'string' }, to: { type: 'string' }, last: { type: 'string' }, step: { type: 'string' }, action: { type: 'string' },
  actions: { type: 'string' }, user: { type: 'string' }, slices: { type: 'string' }, json: { type: 'boolean' },
} as const;
const REPORT_QUERY = ['from', 'to', 'last', 'step', 'action', 'actions', 'user', 'limit', 'slices'] as const;

/** The API's own handler answers, so the CLI validates and reads exactly as GET /api/<kind> does. */
export async function report(rt: Runtime, positionals: string[], values: Record<string, string | boolean | undefined>): Promise<number> {
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
