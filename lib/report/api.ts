/**
 * The report function's HTTP side: GET / is the dashboard page, GET /api/*
 * are the reports as JSON. A bad parameter is a 400 naming it; with
 * OFFLOG_REPORT_TOKEN set, every /api read needs `Authorization: Bearer …`
 * (the page itself holds no data and asks for the token).
 */
import type { HttpRequest, HttpResponse } from '../base/http.ts';
import { tokenMatches } from '../base/token.ts';
import { InputError } from '../base/errors.ts';
import type { Logger } from '../base/log.ts';
import { health, type HealthDeps } from './health.ts';
import { dashboardPage } from './page.ts';
import { healthParams, noParams, seriesParams, timelineParams, topParams, type Query } from './params.ts';
import { ReportQueries } from './queries.ts';

export interface ReportRequest extends HttpRequest {
  method: string;
  path: string;
  query: Query;
}

export type ReportResponse = HttpResponse;

export interface ReportDeps extends HealthDeps {
  token: string | undefined;
  log: Logger;
  now?: () => number;
}

export async function handleReport(req: ReportRequest, deps: ReportDeps): Promise<ReportResponse> {
  const path = req.path.replace(/\/+$/, '') || '/';
  if (req.method !== 'GET' && req.method !== 'HEAD') return json(405, { error: `method: only GET is served here, got ${req.method}`, field: 'method' });
  if (path === '/') {
    return { statusCode: 200, headers: { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-cache', ...SECURITY_HEADERS }, body: dashboardPage() };
  }
  if (!path.startsWith('/api/')) return json(404, { error: `path: nothing at ${path}; the dashboard is at / and the reports under /api/`, field: 'path' });
  if (deps.token !== undefined && !tokenMatches(req.headers.authorization, deps.token)) {
    return json(401, { error: 'authorization: missing or wrong bearer token', field: 'authorization' });
  }
  const now = deps.now?.() ?? Date.now();
  const q = new ReportQueries(deps.store, deps.sliceSeconds);
  try {
    switch (path) {
      case '/api/actions':
        noParams(req.query);
        return json(200, { actions: await q.actions() });
      case '/api/series': {
        const p = seriesParams(req.query, now, deps.sliceSeconds);
        const ids = p.actions ?? (await q.actions()).map((a) => a.id);
        return json(200, await q.series(ids, p.fromMs, p.toMs, p.step));
      }
      case '/api/top': {
        const p = topParams(req.query, now, deps.sliceSeconds);
        return json(200, await q.top(p.action, p.fromMs, p.toMs, p.limit));
      }
      case '/api/timeline': {
        const p = timelineParams(req.query, now, deps.sliceSeconds);
        return json(200, await q.timeline(p.user, p.fromMs, p.toMs, p.step));
      }
      case '/api/health':
        return json(200, await health(deps, healthParams(req.query).slices, now));
      default:
        return json(404, { error: `path: no report at ${path} (actions, series, top, timeline, health)`, field: 'path' });
    }
  } catch (err) {
    if (err instanceof InputError) return json(400, { error: err.message, field: err.field });
    deps.log.error({ err: (err as Error).message, path }, 'report failed');
    return json(500, { error: 'the report failed; the function log has the cause' });
  }
}

const SECURITY_HEADERS = {
  // Everything the page needs is inline: nothing may be loaded from elsewhere.
  'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
};

function json(statusCode: number, body: unknown): ReportResponse {
  return { statusCode, headers: { 'content-type': 'application/json', 'cache-control': 'no-store', ...SECURITY_HEADERS }, body: JSON.stringify(body) };
}
