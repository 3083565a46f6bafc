// EventBridge schedule: the event's `time` is "now". By hand: {"now": "<ISO-8601>", "force": true?} or nothing.
import { checkFlushTime } from '../lib/pipeline/flush.ts';
import { getRuntime } from './runtime.ts';

export async function handler(event: { time?: string; now?: string; force?: boolean } | null) {
  const given = event?.now ?? event?.time;
  const now = given === undefined ? new Date() : new Date(given);
  checkFlushTime(now, Date.now(), event?.force === true);
  return (await getRuntime()).flush(now);
}
