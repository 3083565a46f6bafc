/**
 * HTTP ingest: authenticate, check size, validate the whole body, then hand
 * it to Gearman as one job. All or nothing: a bad event rejects the batch.
 */
import { tokenMatches } from '../base/token.ts';
import type { OffLogClient } from './client.ts';
import type { Config } from '../base/config.ts';
import { GearmanUnavailableError, InputError } from '../base/errors.ts';
import { parseBody } from '../domain/contract.ts';
import type { HttpRequest, HttpResponse } from '../base/http.ts';
import type { Logger } from '../base/log.ts';

export interface IngestRequest extends HttpRequest {
  body: string;
}

export type IngestResponse = HttpResponse;

export async function ingest(req: IngestRequest, deps: { config: Config; client: OffLogClient; log: Logger; now?: number }): Promise<IngestResponse> {
  const { config, client, log } = deps;
  if (config.ingestToken !== undefined && !tokenMatches(req.headers.authorization, config.ingestToken)) {
    return reply(401, { error: 'authorization: missing or wrong bearer token', field: 'authorization' });
  }
  const size = Buffer.byteLength(req.body);
  if (size > config.maxBodyBytes) return reply(413, { error: `body: ${size} bytes is over the limit of ${config.maxBodyBytes}`, field: 'body' });
  let events;
  try {
    events = parseBody(req.body, deps.now ?? Date.now(), config.maxBatchEvents);
  } catch (err) {
    if (err instanceof InputError) return reply(400, { error: err.message, field: err.field });
    throw err;
  }
  try {
    await client.send(events);
  } catch (err) {
    if (err instanceof GearmanUnavailableError) {
      log.error({ err: err.message, events: events.length }, 'ingest: no Gearman server took the job');
      return reply(503, { error: 'no Gearman server is taking jobs; retry later' });
    }
    throw err;
  }
  return reply(202, { accepted: events.length });
}

function reply(statusCode: number, body: object): IngestResponse {
  return { statusCode, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
}
