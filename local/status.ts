/**
 * `offlog status`: queue depth per function, the ring's slices and memcached's
 * figures, the watermark and lag. Its own module so that a test can run it
 * and measure its memory on a big slice.
 */
import { label } from '../lib/base/config.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import type { Runtime } from '../lib/runtime.ts';
import { busStatus } from './bus-commands.ts';
import { adminStatus } from '../lib/wire/gearman.ts';
import { queryAgent } from '../lib/agent/agent.ts';

const STATUS_BATCH_PAIRS = 5000;

export async function status(rt: Runtime) {
  const c = rt.config;
  const now = Date.now();
  const gearman = await Promise.all(
    c.gearmanServers.map(async (s) => {
      try {
        return { server: label(s), functions: Object.fromEntries(await adminStatus(s)) };
      } catch (err) {
        return { server: label(s), error: (err as Error).message };
      }
    }),
  );
  let memcached: unknown;
  const slices: unknown[] = [];
  try {
    memcached = await rt.ring.bootTimes();
    const current = sliceOf(now, c.sliceSeconds);
    for (let s = current - c.ringSlices + 1; s <= current; s++) {
      // Streamed a batch at a time and only counted: memory stays at one batch whatever the slice's size.
      const reader = await rt.ring.openSlice(s as SliceId, STATUS_BATCH_PAIRS);
      while ((await reader.next()) !== null);
      const t = reader.totals();
      slices.push({
        slice: s, start: new Date(sliceStartMs(s as SliceId, c.sliceSeconds)).toISOString(), pairs: t.rows, events: t.events?.toString() ?? '0',
        late: t.late.toString(), pairsMissing: t.missingPairs, sumsSaturated: t.saturated, corrupt: t.corrupt,
      });
    }
  } catch (err) {
    memcached = { error: (err as Error).message };
  }
  let mysql: unknown;
  try {
    const watermark = await rt.store.watermark();
    const current = sliceOf(now, c.sliceSeconds);
    const lagSlices = watermark === null ? null : current - 2 - sliceOf(watermark.getTime(), c.sliceSeconds);
    const recent = await rt.store.recentSlices(10);
    mysql = { watermark: watermark?.toISOString() ?? null, lagSlices, problems: recent.filter((r) => r.status !== 'flushed'), recent: recent.length };
  } catch (err) {
    mysql = { error: (err as Error).message };
  }
  // The local agent, if one runs on this host (not running is normal on a host without PHP).
  const agent = await queryAgent(c.agent.socketPath).catch((err: Error) => ({ socket: c.agent.socketPath, error: err.message }));
  return { now: new Date(now).toISOString(), gearman, memcached, ring: slices, mysql, bus: await busStatus(rt), agent };
}
