// EventBridge schedule: delete rows past their retention, in small batches. By hand: {"now": ISO-8601}.
import { getRuntime } from './runtime.ts';

export async function handler(event: { time?: string; now?: string } | null) {
  const given = event?.now ?? event?.time;
  return (await getRuntime()).prune(given === undefined ? new Date() : new Date(given));
}
