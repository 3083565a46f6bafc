// The poller of offlog.watched: stores and publishes watched records until shortly before this invocation's
// time runs out. By hand: {"idle": true} drains what is queued, publishes, and returns.
import { getRuntime } from './runtime.ts';

const MARGIN_MS = 5000;

export async function handler(event: { idle?: boolean } | null, context?: { getRemainingTimeInMillis?: () => number }) {
  const remaining = context?.getRemainingTimeInMillis?.() ?? 60_000;
  const deadlineMs = Date.now() + Math.max(1000, remaining - MARGIN_MS);
  return (await getRuntime()).watchedDrain().run({ deadlineMs, idle: event?.idle === true });
}
