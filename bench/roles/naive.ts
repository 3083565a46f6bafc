/**
 * Bench role: the baseline OffLog replaces — one
 * `INSERT … ON DUPLICATE KEY UPDATE count = count + 1` per event, autocommit,
 * through a mysql2 pool of 8 connections kept busy by 8 concurrent loops.
 * It writes the first events of the same workload into a table of the same
 * shape, until `maxEvents` are written or `maxSeconds` pass (whichever comes
 * first): long enough for a steady rate, short enough not to dominate the run.
 * Events are taken in order from a shared counter, so the rows written are
 * exactly those of the first `events` events and the totals can be checked.
 */
import mysql from 'mysql2/promise';
import { generate, workloadSpecs, type WorkloadName } from '../workloads.ts';
import { config, cpuMs, params, peakRssMb, round1, runRole, send, waitForGo } from './common.ts';

export interface NaiveParams {
  workload: WorkloadName;
  quick: boolean;
  sliceSeconds: number;
  baseMs: number;
  table: string;
  maxEvents: number;
  maxSeconds: number;
  connections: number;
}

runRole(async () => {
  const p = params<NaiveParams>();
  const cfg = config();
  const spec = workloadSpecs(p.quick).find((s) => s.name === p.workload)!;
  const w = generate(spec, p.sliceSeconds, Math.min(p.maxEvents, spec.events));
  const sliceMs = p.sliceSeconds * 1000;
  const pool = mysql.createPool({ uri: cfg.mysqlUrl, timezone: 'Z', connectionLimit: p.connections, supportBigNumbers: true, bigNumberStrings: true });
  await pool.query(`CREATE TABLE IF NOT EXISTS \`${p.table}\` (
    slice_start DATETIME NOT NULL, user_id BIGINT UNSIGNED NOT NULL, action_id SMALLINT UNSIGNED NOT NULL,
    count BIGINT UNSIGNED NOT NULL, value_sum BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (slice_start, user_id, action_id)) ENGINE=InnoDB`);
  // Open all connections now, so connecting is not on the clock.
  const warm = await Promise.all(Array.from({ length: p.connections }, () => pool.getConnection()));
  for (const c of warm) c.release();
  const sliceStarts = [new Date(p.baseMs), new Date(p.baseMs + sliceMs)];

  send({ type: 'ready' });
  await waitForGo();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const deadline = t0 + p.maxSeconds * 1000;
  const n = w.user.length;
  let next = 0;
  let statements = 0;
  const progress = setInterval(() => send({ type: 'progress', events: next }), 250);
  progress.unref();
  const loop = async (): Promise<void> => {
    while (next < n && performance.now() < deadline) {
      const i = next++;
      // The slice's start is what the row is keyed by, as in ol_counts.
      await pool.query(
        'INSERT INTO `' + p.table + '` (slice_start, user_id, action_id, count, value_sum) VALUES (?, ?, ?, 1, ?) ON DUPLICATE KEY UPDATE count = count + 1, value_sum = value_sum + VALUES(value_sum)',
        [sliceStarts[w.slice[i]!], w.user[i], w.action[i], w.value[i]],
      );
      statements++;
    }
  };
  await Promise.all(Array.from({ length: p.connections }, loop));
  const ms = performance.now() - t0;
  clearInterval(progress);
  const cpu = cpuMs(cpu0);
  await pool.end();
  return {
    events: next,
    statements,
    ms: Math.round(ms),
    eventsPerSecond: Math.round(next / (ms / 1000)),
    statementsPerEvent: statements / Math.max(1, next),
    cpu,
    peakRssMb: round1(peakRssMb()),
  };
});
