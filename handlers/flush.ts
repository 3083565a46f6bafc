// Scheduled: EventBridge Scheduler passes {"now": <the scheduled time>} (a scheduled rule's event has `time`).
// By hand: {"now": "<ISO-8601>", "force": true?} or nothing (the clock).
import { checkFlushTime } from '../lib/flush/flush.ts';
import { getRuntime } from './runtime.ts';

export async function handler(event: { time?: string; now?: string; force?: boolean } | null) {
  const given = event?.now ?? event?.time;
  const now = given === undefined ? new Date() : new Date(given);
  checkFlushTime(now, Date.now(), event?.force === true);
  return (await getRuntime()).flush(now);
}
