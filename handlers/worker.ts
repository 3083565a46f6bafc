// The poller: drains jobs until shortly before this invocation's time runs out.
import { Worker } from '../lib/worker.ts';
import { getRuntime } from './runtime.ts';

const MARGIN_MS = 5000;

export async function handler(_event: unknown, context?: { getRemainingTimeInMillis?: () => number }) {
  const rt = getRuntime();
  const remaining = context?.getRemainingTimeInMillis?.() ?? 60_000;
  const worker = new Worker({ gearmanServers: rt.config.gearmanServers, sliceSeconds: rt.config.sliceSeconds, ring: rt.ring, log: rt.log });
  return worker.run({ deadlineMs: Date.now() + Math.max(1000, remaining - MARGIN_MS) });
}
