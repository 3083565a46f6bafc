// The poller of offlog.watched: stores and publishes watched records until shortly before this invocation's time runs out.
import { getRuntime } from './runtime.ts';

const MARGIN_MS = 5000;

export async function handler(_event: unknown, context?: { getRemainingTimeInMillis?: () => number }) {
  const remaining = context?.getRemainingTimeInMillis?.() ?? 60_000;
  return getRuntime().watchedDrain().run({ deadlineMs: Date.now() + Math.max(1000, remaining - MARGIN_MS) });
}
