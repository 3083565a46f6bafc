// EventBridge schedule: the event's `time` is "now". By hand: {"now": "<ISO-8601>"} or nothing.
import { flush } from '../lib/flush.ts';
import { getRuntime } from './runtime.ts';

export async function handler(event: { time?: string; now?: string } | null) {
  const rt = getRuntime();
  const given = event?.now ?? event?.time;
  const now = given === undefined ? new Date() : new Date(given);
  if (Number.isNaN(now.getTime())) throw new Error(`now: ${JSON.stringify(given)} is not an ISO-8601 time`);
  const { config: c, ring, store, log } = rt;
  return flush({ ring, store, sliceSeconds: c.sliceSeconds, ringSlices: c.ringSlices, log }, now);
}
