// Subscribed to SliceFlushed on the bus: recomputes the hours and days the slice falls in, so a replay changes nothing.
import { parseSliceFlushed } from '../lib/flush/outbox.ts';
import { rollup } from '../lib/publish/rollup.ts';
import { getRuntime } from './runtime.ts';

export async function handler(event: unknown) {
  const { fromMs, toMs } = parseSliceFlushed(event);
  const rt = await getRuntime();
  const result = await rollup(rt.store, fromMs, toMs);
  rt.log.info({ sliceStart: new Date(fromMs).toISOString(), ...result }, 'SliceFlushed: rolled up');
  return result;
}
