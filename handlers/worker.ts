// The poller: drains jobs until shortly before this invocation's time runs out.
// Each of the N scheduled pollers gets {"poller": i}; they differ only in that.
import { getRuntime } from './runtime.ts';

const MARGIN_MS = 5000;

export async function handler(_event: unknown, context?: { getRemainingTimeInMillis?: () => number }) {
  // The deadline is fixed before the cold start's secrets are fetched: that time is spent too.
  const deadlineMs = Date.now() + Math.max(1000, (context?.getRemainingTimeInMillis?.() ?? 60_000) - MARGIN_MS);
  return (await getRuntime()).worker().run({ deadlineMs });
}
