/**
 * `offlog status`: queue depth per function, the ring's slices and memcached's
 * figures, the watermark and lag, and a verdict: what is down or behind. Its
 * own module so that a test can run it and measure its memory on a big slice.
 */
import { label } from '../lib/base/config.ts';
import { FN_BATCH } from '../lib/domain/contract.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import type { Runtime } from '../lib/runtime.ts';
import { busStatus, type BusStatus } from './bus-commands.ts';
import { adminStatus, type FunctionStatus } from '../lib/wire/gearman.ts';
import { readBacklog, type Backlog } from '../lib/flush/backlog.ts';
import { queryAgent, type AgentStats } from '../lib/send/agent.ts';

const STATUS_BATCH_PAIRS = 5000;
/** The flush runs once a slice: one slice of lag is the wait for the next run, two is a missed one. */
const LAG_ALLOWED_SLICES = 1;

export type GearmanStatus = { server: string; functions: Record<string, FunctionStatus> } | { server: string; error: string };
export interface MemcachedFigures { server: string; pid: number; bootedAt: number; items: number; bytes: number; limitBytes: number; evictions: number }
export interface RingSlice { slice: number; start: string; pairs: number; events: string; late: string; pairsMissing: number; sumsSaturated: number; corrupt: number }
export type MysqlStatus =
  | { server: string; watermark: string | null; lagSlices: number | null; problems: Record<string, unknown>[]; recent: number }
  | { server: string; error: string };

export interface Status {
  now: string;
  gearman: GearmanStatus[];
  memcached: MemcachedFigures[] | { servers: string[]; error: string };
  ring: RingSlice[];
  mysql: MysqlStatus;
  bus: BusStatus;
  /** Slices not yet published or rolled up, and a publish that keeps failing. */
  backlog: Backlog | { error: string };
  /** The local agent's stats (`offlog agent`), or why it did not answer (normal on a host without PHP). */
  agent: AgentStats | { socket: string; error: string };
  /** True when nothing is down or behind; `problems` says what is. */
  healthy: boolean;
  problems: string[];
}

const mysqlServer = (url: string): string => {
  const u = new URL(url);
  return `${u.hostname}:${u.port || '3306'}`;
};

export async function status(rt: Runtime): Promise<Status> {
  const c = rt.config;
  const now = Date.now();
  const gearman: GearmanStatus[] = await Promise.all(
    c.gearmanServers.map(async (s) => {
      try {
        return { server: label(s), functions: Object.fromEntries(await adminStatus(s)) };
      } catch (err) {
        return { server: label(s), error: (err as Error).message };
      }
    }),
  );
  let memcached: Status['memcached'];
  const ring: RingSlice[] = [];
  try {
    memcached = await rt.ring.bootTimes();
    const current = sliceOf(now, c.sliceSeconds);
    for (let s = current - c.ringSlices + 1; s <= current; s++) {
      // Streamed a batch at a time and only counted: memory stays at one batch whatever the slice's size.
      const reader = await rt.ring.openSlice(s as SliceId, STATUS_BATCH_PAIRS);
      while ((await reader.next()) !== null);
      const t = reader.totals();
      ring.push({
        slice: s, start: new Date(sliceStartMs(s as SliceId, c.sliceSeconds)).toISOString(), pairs: t.rows, events: t.events?.toString() ?? '0',
        late: t.late.toString(), pairsMissing: t.missingPairs, sumsSaturated: t.saturated, corrupt: t.corrupt,
      });
    }
  } catch (err) {
    memcached = { servers: c.memcachedServers.map(label), error: (err as Error).message };
  }
  let mysql: MysqlStatus;
  const server = mysqlServer(c.mysqlUrl);
  try {
    const watermark = await rt.store.watermark();
    const current = sliceOf(now, c.sliceSeconds);
    const lagSlices = watermark === null ? null : current - 2 - sliceOf(watermark.getTime(), c.sliceSeconds);
    const recent = await rt.store.recentSlices(10);
    mysql = { server, watermark: watermark?.toISOString() ?? null, lagSlices, problems: recent.filter((r) => r.status !== 'flushed'), recent: recent.length };
  } catch (err) {
    mysql = { server, error: (err as Error).message };
  }
  // The local agent, if one runs on this host (not running is normal on a host without PHP).
  const agent = await queryAgent(c.agent.socketPath).catch((err: Error) => ({ socket: c.agent.socketPath, error: err.message }));
  // Publishing and rollups: what waits, and a publish that keeps failing (the health card reads the same).
  const backlog = await readBacklog(rt.store).catch((err: Error) => ({ error: err.message }));
  const partial = { now: new Date(now).toISOString(), gearman, memcached, ring, mysql, bus: await busStatus(rt), backlog, agent };
  const problems = verdict(partial);
  return { ...partial, healthy: problems.length === 0, problems };
}

/** What is down or behind, one line each; empty when all is well. */
export function verdict(s: Omit<Status, 'healthy' | 'problems'>): string[] {
  const out: string[] = [];
  for (const g of s.gearman) if ('error' in g) out.push(`gearmand ${g.server} is down: ${g.error}`);
  if ('error' in s.memcached) out.push(`memcached (${s.memcached.servers.join(', ')}) is down: ${s.memcached.error}`);
  if ('error' in s.mysql) out.push(`MySQL ${s.mysql.server} is down: ${s.mysql.error}`);
  else if (s.mysql.lagSlices !== null && s.mysql.lagSlices > LAG_ALLOWED_SLICES) out.push(`the flush is ${s.mysql.lagSlices} slices behind (watermark ${s.mysql.watermark}): is its schedule running? \`offlog flush\` catches up`);
  const queued = s.gearman.reduce((n, g) => n + ('functions' in g ? (g.functions[FN_BATCH]?.queued ?? 0) : 0), 0);
  const workers = s.gearman.reduce((n, g) => n + ('functions' in g ? (g.functions[FN_BATCH]?.workers ?? 0) : 0), 0);
  if ('publishFailingSince' in s.backlog && s.backlog.publishFailingSince !== null) {
    out.push(`publishing to the event bus has failed since ${s.backlog.publishFailingSince} (${s.backlog.publishFailedRuns} run(s); last: ${s.backlog.lastPublishError ?? 'unknown'}): rollups wait; in a VPC, is there an \`events\` endpoint or a NAT?`);
  }
  if (queued > 0 && workers === 0) out.push(`${queued} ${FN_BATCH} jobs wait and no worker is connected: start one (\`offlog worker\`)`);
  return out;
}
