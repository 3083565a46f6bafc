/**
 * Report parameters: the query string of a GET (or the CLI's flags, turned
 * into the same strings), checked with zod and aligned to the step they are
 * read at. A bad value throws InputError naming the parameter, which the API
 * answers with 400.
 *
 * Times are ISO-8601 with a zone, or epoch milliseconds; `last=30d` (m, h, d)
 * is a shorthand for from = to − 30 days. `to` defaults to now and `from` to
 * a day before `to`. Ranges are widened to whole steps (series, timeline) or
 * whole slices (top users): the reply says which range was read.
 */
// A namespace import, as in config.ts: `import { z }` would put all of zod, locales included, in the bundle.
import * as z from 'zod';
import { InputError } from '../base/errors.ts';
import { parseActionId, parseAt, parseUserId } from '../domain/contract.ts';
import { stepMs, type Step } from './queries.ts';
import { DAY_MS, HOUR_MS } from './range.ts';

/** The longest range any query reads. */
export const MAX_RANGE_DAYS = 3660;
/** The most buckets a series or timeline returns (10-minute steps over a month are 4,320). */
export const MAX_POINTS = 10_000;
export const MAX_TOP = 1000;
export const MAX_SERIES_ACTIONS = 50;

export type Query = Record<string, string | undefined>;

interface Range { fromMs: number; toMs: number }

const STEP_NAMES: Record<string, Step | 'auto'> = { auto: 'auto', slice: 'slice', '10m': 'slice', hour: 'hour', '1h': 'hour', day: 'day', '1d': 'day' };
const LAST = /^(\d{1,6})([mhd])$/;
const UNIT_MS = { m: 60_000, h: HOUR_MS, d: DAY_MS } as const;

/** One zod field per parameter; each message is the rule, the field name is added by `check`. */
const fields = {
  from: z.string().optional(),
  to: z.string().optional(),
  last: z.string().regex(LAST, 'must be a number followed by m, h or d (like 90m, 6h, 30d)').optional(),
  step: z.string().refine((s) => s in STEP_NAMES, 'must be one of auto, 10m (slice), 1h (hour), 1d (day)').optional(),
  action: z.string().optional(),
  actions: z.string().optional(),
  user: z.string().optional(),
  limit: z.string().regex(/^\d{1,4}$/, `must be a whole number from 1 to ${MAX_TOP}`).transform(Number)
    .pipe(z.number().min(1, `must be a whole number from 1 to ${MAX_TOP}`).max(MAX_TOP, `must be at most ${MAX_TOP}`)).optional(),
  slices: z.string().regex(/^\d{1,4}$/, 'must be a whole number from 1 to 1000').transform(Number)
    .pipe(z.number().min(1, 'must be at least 1').max(1000, 'must be at most 1000')).optional(),
};
type Fields = typeof fields;

function check<K extends keyof Fields>(query: Query, keys: readonly K[]): { [P in K]: z.output<Fields[P]> } {
  for (const name of Object.keys(query)) {
    if (!(keys as readonly string[]).includes(name)) throw new InputError(name, `is not a parameter of this report (it takes ${keys.length === 0 ? 'none' : keys.join(', ')})`);
  }
  const shape = Object.fromEntries(keys.map((k) => [k, fields[k]])) as Pick<Fields, K>;
  const parsed = z.object(shape).safeParse(query);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = String(issue.path[0] ?? 'query');
    throw new InputError(field, `${issue.message}, got ${JSON.stringify(query[field])}`);
  }
  return parsed.data as { [P in K]: z.output<Fields[P]> };
}

function time(raw: string, field: string): number {
  // Epoch milliseconds arrive as digits in a query string.
  return parseAt(/^\d{1,15}$/.test(raw) ? Number(raw) : raw, 0, field);
}

function range(q: { from?: string | undefined; to?: string | undefined; last?: string | undefined }, nowMs: number): Range {
  if (q.from !== undefined && q.last !== undefined) throw new InputError('last', 'give either from or last, not both');
  const toMs = q.to === undefined ? nowMs : time(q.to, 'to');
  let fromMs: number;
  if (q.last !== undefined) {
    const [, n, unit] = LAST.exec(q.last)!;
    fromMs = toMs - Number(n) * UNIT_MS[unit as keyof typeof UNIT_MS];
    if (fromMs < 0) throw new InputError('last', `reaches before 1970, got ${JSON.stringify(q.last)}`);
  } else {
    fromMs = q.from === undefined ? toMs - DAY_MS : time(q.from, 'from');
  }
  if (toMs <= fromMs) throw new InputError('to', `must be after from (${new Date(fromMs).toISOString()}), got ${new Date(toMs).toISOString()}`);
  if (toMs - fromMs > MAX_RANGE_DAYS * DAY_MS) throw new InputError('from', `the range may span at most ${MAX_RANGE_DAYS} days, got ${((toMs - fromMs) / DAY_MS).toFixed(1)}`);
  return { fromMs, toMs };
}

function align(r: Range, size: number): Range {
  return { fromMs: Math.floor(r.fromMs / size) * size, toMs: Math.ceil(r.toMs / size) * size };
}

/** The step a range is read at: explicit, or the finest that keeps a chart under ~1,500 points. */
function pickStep(name: string | undefined, r: Range, sliceSeconds: number): Step {
  const chosen = STEP_NAMES[name ?? 'auto']!;
  if (chosen !== 'auto') return chosen;
  const span = r.toMs - r.fromMs;
  return span <= 1500 * sliceSeconds * 1000 ? 'slice' : span <= 1500 * HOUR_MS ? 'hour' : 'day';
}

function stepped(q: { step?: string | undefined }, r: Range, sliceSeconds: number): Range & { step: Step } {
  const step = pickStep(q.step, r, sliceSeconds);
  const a = align(r, stepMs(step, sliceSeconds));
  const points = (a.toMs - a.fromMs) / stepMs(step, sliceSeconds);
  if (points > MAX_POINTS) {
    throw new InputError('step', `${q.step ?? step} over this range is ${points} points; at most ${MAX_POINTS}: choose a coarser step or a shorter range`);
  }
  return { ...a, step };
}

function actionList(raw: string | undefined): number[] | null {
  if (raw === undefined || raw === '' || raw === 'all') return null;
  const parts = raw.split(',');
  if (parts.length > MAX_SERIES_ACTIONS) throw new InputError('actions', `at most ${MAX_SERIES_ACTIONS} actions, got ${parts.length}`);
  return [...new Set(parts.map((p, i) => parseActionId(p.trim(), parts.length === 1 ? 'actions' : `actions[${i}]`)))];
}

export interface SeriesParams extends Range { step: Step; actions: number[] | null }
export function seriesParams(query: Query, nowMs: number, sliceSeconds: number): SeriesParams {
  const q = check(query, ['from', 'to', 'last', 'step', 'actions', 'action']);
  if (q.action !== undefined && q.actions !== undefined) throw new InputError('action', 'give either action or actions, not both');
  return { ...stepped(q, range(q, nowMs), sliceSeconds), actions: actionList(q.actions ?? q.action) };
}

export interface TopParams extends Range { action: number; limit: number }
export function topParams(query: Query, nowMs: number, sliceSeconds: number): TopParams {
  const q = check(query, ['from', 'to', 'last', 'action', 'limit']);
  const action = parseActionId(q.action, 'action');
  return { ...align(range(q, nowMs), sliceSeconds * 1000), action, limit: q.limit ?? 100 };
}

export interface TimelineParams extends Range { step: Step; user: string }
export function timelineParams(query: Query, nowMs: number, sliceSeconds: number): TimelineParams {
  const q = check(query, ['from', 'to', 'last', 'step', 'user']);
  const user = parseUserId(q.user, 'user');
  return { ...stepped(q, range(q, nowMs), sliceSeconds), user };
}

export interface HealthParams { slices: number }
export function healthParams(query: Query): HealthParams {
  const q = check(query, ['slices']);
  return { slices: q.slices ?? 36 };
}

export function noParams(query: Query): void {
  check(query, []);
}
