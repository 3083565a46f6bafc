/** `offlog report …` as text tables: the same JSON the API returns, laid out for a terminal. */
import type { HealthReport } from '../lib/report/health.ts';
import type { Action, SeriesReport, TimelineReport, TopReport } from '../lib/report/queries.ts';

const name = (a: Action): string => (a.name ? `${a.name} (${a.id})` : `action ${a.id}`);
const group = (s: string | number): string => String(s).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
const when = (ms: number | string): string => new Date(ms).toISOString().slice(0, 16).replace('T', ' ');

/** Columns padded to their widest cell; numbers right-aligned. */
export function table(head: string[], rows: string[][], numeric: boolean[] = []): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (numeric[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

export function formatSeries(s: SeriesReport): string {
  const head = ['bucket (UTC)', ...s.lines.map((l) => name(l.action))];
  const rows = s.t.map((t, i) => [when(t), ...s.lines.map((l) => group(l.count[i]!))]);
  rows.push(['total', ...s.lines.map((l) => group(l.total.count))]);
  return `${s.step} steps, ${when(s.from)} → ${when(s.to)} UTC\n${table(head, rows, head.map((_, i) => i > 0))}`;
}

export function formatTop(r: TopReport): string {
  const rows = r.users.map((u) => [String(u.rank), u.userId, group(u.count), group(u.valueSum)]);
  return `top users of ${name(r.action)}, ${when(r.from)} → ${when(r.to)} UTC\n${table(['#', 'user', 'count', 'value sum'], rows, [true, false, true, true])}`;
}

export function formatTimeline(r: TimelineReport): string {
  const rows: string[][] = [];
  for (let i = 0; i < r.t.length; i++) {
    for (const l of r.lines) if (l.count[i] !== '0') rows.push([when(r.t[i]!), name(l.action), group(l.count[i]!), group(l.valueSum[i]!)]);
  }
  for (const l of r.lines) rows.push(['total', name(l.action), group(l.total.count), group(l.total.valueSum)]);
  return `user ${r.userId}, ${r.step} steps, ${when(r.from)} → ${when(r.to)} UTC\n${table(['bucket (UTC)', 'action', 'count', 'value sum'], rows, [false, false, true, true])}`;
}

export function formatActions(actions: Action[]): string {
  return table(['id', 'name'], actions.map((a) => [String(a.id), a.name ?? '']), [true, false]);
}

export function formatHealth(h: HealthReport): string {
  const out = [`${h.level.toUpperCase()} at ${h.now}`, ...h.reasons.map((r) => `  - ${r}`)];
  if ('error' in h.flush) out.push(`flush: ${h.flush.error}`);
  else out.push(`flush: watermark ${h.flush.watermark ?? 'none'}, lag ${h.flush.lagSlices ?? '-'} slices, last flush ${h.flush.lastFlushAt ?? 'never'}`);
  for (const g of h.gearman) out.push(`gearmand ${g.server}: ${g.error ?? `${g.queued} queued, ${g.running} running, ${g.workers} workers, ${g.deadLettersQueued} dead letters queued`}`);
  if ('error' in h.memcached) out.push(`memcached: ${h.memcached.error}`);
  else for (const m of h.memcached) out.push(`memcached ${m.server}: ${(m.fill * 100).toFixed(1)} % full (${group(m.bytes)} of ${group(m.limitBytes)} bytes), ${group(m.items)} items, ${group(m.evictions)} evictions`);
  if ('error' in h.deadLetters) out.push(`dead letters: ${h.deadLetters.error}`);
  else out.push(`dead letters stored: ${h.deadLetters.stored}`);
  if (!('error' in h.slices)) {
    const rows = h.slices.recent.map((s) => [when(s.sliceStart), s.status, group(s.rows), s.events === null ? '-' : group(s.events), group(s.late), group(s.pairsMissing)]);
    out.push('', table(['slice (UTC)', 'status', 'rows', 'events', 'late', 'missing'], rows, [false, false, true, true, true, true]));
  }
  return out.join('\n');
}
