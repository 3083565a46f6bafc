// POST /events (HTTP API) or a direct invoke whose event is the body itself.
import { ingest, type IngestResponse } from '../lib/send/ingest.ts';
import { getRuntime } from './runtime.ts';

interface HttpEvent { body?: string | null; isBase64Encoded?: boolean; headers?: Record<string, string | undefined>; requestContext?: unknown }

export async function handler(event: HttpEvent | object): Promise<IngestResponse> {
  const rt = await getRuntime();
  const http = 'requestContext' in event ? (event as HttpEvent) : undefined;
  const raw = http ? (http.body ?? '') : JSON.stringify(event);
  const body = http?.isBase64Encoded ? Buffer.from(raw, 'base64').toString('utf8') : raw;
  const headers = Object.fromEntries(Object.entries(http?.headers ?? {}).map(([k, v]) => [k.toLowerCase(), v]));
  return ingest({ body, headers }, { config: rt.config, client: rt.client, log: rt.log });
}
