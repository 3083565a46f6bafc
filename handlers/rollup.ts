// Subscribed to SliceFlushed on the bus: recomputes the hours and days the slice falls in, so a replay changes nothing.
import { parseSliceFlushed } from '../lib/pipeline/outbox.ts';
import { rollup } from '../lib/pipeline/rollup.ts';
import { getRuntime } from './runtime.ts';

export async function handler(event: unknown) {
  const { fromMs, toMs } = parseSliceFlushed(event);
  return rollup(getRuntime().store, fromMs, toMs);
}
