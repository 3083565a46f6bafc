/** `offlog status` for a terminal: one line per server, the ring, the bus, and the verdict last. */
import type { Status } from './status.ts';
import { table } from './report-format.ts';

const group = (s: string | number): string => String(s).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
const ago = (ms: number): string => {
  const s = Math.max(0, Math.round(ms / 1000));
  return s < 120 ? `${s} s` : s < 7200 ? `${Math.round(s / 60)} min` : s < 172_800 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86_400)} d`;
};
const when = (iso: string | null): string => (iso === null ? '-' : iso.slice(0, 16).replace('T', ' '));

export function formatStatus(s: Status): string {
  const now = Date.parse(s.now);
  const servers: string[][] = [];
  for (const g of s.gearman) {
    if ('error' in g) servers.push(['gearmand', g.server, 'DOWN', g.error]);
    else {
      const fns = Object.entries(g.functions).filter(([fn]) => fn.startsWith('offlog.') || fn === 'logSimple');
      servers.push(['gearmand', g.server, 'up', fns.map(([fn, f]) => `${fn} ${group(f.queued)} queued/${f.workers} workers`).join(', ') || 'no queues yet']);
    }
  }
  if ('error' in s.memcached) for (const server of s.memcached.servers) servers.push(['memcached', server, 'DOWN', s.memcached.error]);
  else for (const m of s.memcached) servers.push(['memcached', m.server, 'up', `${group(m.items)} items, ${Math.round((100 * m.bytes) / Math.max(1, m.limitBytes))}% full, ${group(m.evictions)} evictions, up ${ago(now - m.bootedAt * 1000)}`]);
  if ('error' in s.mysql) servers.push(['MySQL', s.mysql.server, 'DOWN', s.mysql.error]);
  else {
    const n = s.mysql.lagSlices;
    const lag = n === null ? 'nothing flushed yet' : n < 0 ? 'flushed ahead of the clock (flush --now)' : `lag ${n} slice${n === 1 ? '' : 's'}`;
    servers.push(['MySQL', s.mysql.server, 'up', `watermark ${when(s.mysql.watermark)}, ${lag}, ${s.mysql.problems.length} problem slice(s) of the last ${s.mysql.recent}`]);
  }
  const bus = 'error' in s.bus
    ? `bus ${s.bus.eventBus ?? '(none)'}: ${s.bus.error}`
    : `bus ${s.bus.eventBus ?? '(none: nothing is published)'}: ${group(s.bus.unpublishedSlices)} slices and ${group(s.bus.unpublishedWatched)} watched records wait; watching ${s.bus.watchedUsers} users, ${s.bus.watchedActions} actions`;
  const ring = s.ring.length === 0
    ? 'ring: (not read: memcached is down)'
    : `ring (UTC)\n${table(['slice start', 'pairs', 'events', 'late', 'missing'], s.ring.map((r) => [when(r.start), group(r.pairs), group(r.events), group(r.late), group(r.pairsMissing)]), [false, true, true, true, true])}`;
  const verdict = s.healthy ? 'OK: every server is up and the flush is on time' : `NOT OK:\n${s.problems.map((p) => `  - ${p}`).join('\n')}`;
  return [`offlog status at ${when(s.now)} UTC`, table(['server', 'address', 'state', 'details'], servers), '', ring, '', bus, '', verdict].join('\n');
}
