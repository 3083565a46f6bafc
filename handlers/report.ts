// GET / (the dashboard) and GET /api/* (reports as JSON), from an HTTP API (payload v2) event.
import { handleReport, type ReportResponse } from '../lib/report/api.ts';
import { getRuntime } from './runtime.ts';

interface HttpEvent { rawPath?: string; path?: string; httpMethod?: string; requestContext?: { http?: { method?: string } }; queryStringParameters?: Record<string, string | undefined> | null; headers?: Record<string, string | undefined> }

export async function handler(event: HttpEvent): Promise<ReportResponse> {
  const rt = await getRuntime();
  const headers = Object.fromEntries(Object.entries(event.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  const method = event.requestContext?.http?.method ?? event.httpMethod ?? 'GET';
  return handleReport({ method, path: event.rawPath ?? event.path ?? '/', query: event.queryStringParameters ?? {}, headers }, rt.reportDeps);
}
