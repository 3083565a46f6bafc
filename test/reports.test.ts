/**
 * The reports against MariaDB: known 10-minute rows, rolled up, then every
 * report compared with SQL over the raw rows (ranges with ragged edges, so
 * the whole-day / hourly / 10-minute split is exercised), the 400s that name
 * their parameter, the token, and the health verdict.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { rollup } from '../lib/publish/rollup.ts';
import { handleReport, type ReportDeps } from '../lib/report/api.ts';
import { decompose, type SeriesReport, type TimelineReport, type TopReport } from '../lib/report/queries.ts';
import { topUsers } from '../lib/report/top.ts';
import { prng, testRuntime } from './support.ts';

const DAY = 86_400_000;
const SLICE = 600_000;
const TOKEN = 'report-token-0123456789';
const rt = testRuntime();
const p = rt.config.tablePrefix;
/** Three UTC days of data, starting at midnight. */
const START = Date.UTC(2026, 0, 10);
const END = START + 3 * DAY;
let deps: ReportDeps;

const get = async (path: string, query: Record<string, string> = {}, headers: Record<string, string> = {}) => {
  const res = await handleReport({ method: 'GET', path, query, headers }, deps);
  return { status: res.statusCode, body: JSON.parse(res.body) as Record<string, unknown> };
};
const sql = async (text: string, params: unknown[] = []) => (await rt.store.pool.query<RowDataPacket[]>(text, params))[0];

before(async () => {
  await rt.store.migrate();
  deps = { ...rt.reportDeps, token: undefined, now: () => END };
  // Users 1–60 (user 7 busy), actions 1–4 (1 common, 4 rare), about a third of slices active per pair.
  const random = prng(11);
  const rows: string[] = [];
  for (let ms = START; ms < END; ms += SLICE) {
    for (let user = 1; user <= 60; user++) {
      for (let action = 1; action <= 4; action++) {
        if (random() > (user === 7 ? 0.9 : 0.35 / action)) continue;
        const count = 1 + Math.floor(random() * (user === 7 ? 40 : 5));
        rows.push(`(FROM_UNIXTIME(${ms / 1000}), ${user}, ${action}, ${count}, ${count * (action === 3 ? 250 : 0)})`);
      }
    }
  }
  // One user id above 2^53, to check that ids and sums travel as exact strings.
  rows.push(`(FROM_UNIXTIME(${(START + DAY + 5 * SLICE) / 1000}), 18446744073709551615, 2, 3, 18446744073709551000)`);
  for (let i = 0; i < rows.length; i += 5000) {
    await rt.store.pool.query(`INSERT INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum) VALUES ${rows.slice(i, i + 5000).join(',')}`);
  }
  await rollup(rt.store, START, END);
  await rt.store.pool.query(`INSERT INTO \`${p}actions\` (action_id, name, updated_at) VALUES (1, 'logon', NOW()), (3, 'purchase', NOW())`);
});
after(() => rt.close());

test('decompose tiles a range exactly with days, hours and slices', () => {
  const from = START + 2 * 3_600_000 + 2 * SLICE; // 02:20 on day 1
  const to = START + 2 * DAY + 5 * 3_600_000 + 4 * SLICE; // 05:40 on day 3
  const pieces = decompose(from, to);
  assert.deepEqual(pieces.map((x) => x.table), ['counts', 'hourly', 'daily', 'hourly', 'counts']);
  for (let i = 1; i < pieces.length; i++) assert.equal(pieces[i]!.fromMs, pieces[i - 1]!.toMs, 'no gap, no overlap');
  assert.equal(pieces[0]!.fromMs, from);
  assert.equal(pieces.at(-1)!.toMs, to);
  assert.deepEqual(decompose(START + SLICE, START + 3 * SLICE).map((x) => x.table), ['counts']);
  assert.deepEqual(decompose(START, START + DAY).map((x) => x.table), ['daily']);
  assert.deepEqual(decompose(START + SLICE, START + 5 * 3_600_000).map((x) => x.table), ['counts', 'hourly']);
});

test('series: zero-filled, at each step, equal to the sums of the 10-minute rows', async () => {
  for (const [step, size] of [['10m', SLICE], ['1h', 3_600_000], ['1d', DAY]] as const) {
    const from = new Date(START + DAY / 2).toISOString();
    const to = new Date(END + DAY).toISOString(); // runs a day past the data: zeros there
    const { status, body } = await get('/api/series', { from, to, step });
    assert.equal(status, 200, JSON.stringify(body));
    const s = body as unknown as SeriesReport;
    const fromMs = Math.floor((START + DAY / 2) / size) * size;
    assert.equal(s.t[0], fromMs);
    assert.equal(s.t.length, (END + DAY - fromMs) / size, 'one bucket per step, no gaps');
    assert.ok(s.t.every((t, i) => i === 0 || t - s.t[i - 1]! === size));
    assert.deepEqual(s.lines.map((l) => [l.action.id, l.action.name]), [[1, 'logon'], [2, null], [3, 'purchase'], [4, null]]);
    for (const line of s.lines) {
      const [want] = await sql(
        `SELECT CAST(COALESCE(SUM(count), 0) AS CHAR) c, CAST(COALESCE(SUM(value_sum), 0) AS CHAR) v FROM \`${p}counts\` WHERE action_id = ? AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?)`,
        [line.action.id, fromMs / 1000, (END + DAY) / 1000],
      );
      assert.deepEqual(line.total, { count: want!.c, valueSum: want!.v }, `${step} action ${line.action.id}`);
      assert.equal(line.count.length, s.t.length);
      assert.ok(line.count.slice(-(DAY / size)).every((c) => c === '0'), 'zero-filled after the data');
    }
    // One bucket checked against SQL, users included.
    const i = Math.floor(s.t.length / 3);
    const [b] = await sql(
      `SELECT CAST(SUM(count) AS CHAR) c, COUNT(DISTINCT user_id) u FROM \`${p}counts\` WHERE action_id = 1 AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?)`,
      [s.t[i]! / 1000, (s.t[i]! + size) / 1000],
    );
    assert.equal(s.lines[0]!.count[i], b!.c);
    assert.equal(s.lines[0]!.users[i], Number(b!.u));
  }
});

test('top users over ragged ranges equal a GROUP BY over the raw rows, ids and sums exact', async () => {
  const ranges = [
    [START + 2 * 3_600_000 + 2 * SLICE, START + 2 * DAY + 5 * 3_600_000 + 4 * SLICE],
    [START, END],
    [START + DAY + 3 * SLICE, START + DAY + 9 * SLICE],
  ];
  let deeper = 0;
  for (const [from, to] of ranges) {
    for (const [action, limit] of [[1, 15], [2, 15], [4, 15], [1, 1], [3, 5], [1, 1000]] as const) {
      const { status, body } = await get('/api/top', { from: new Date(from!).toISOString(), to: new Date(to!).toISOString(), action: String(action), limit: String(limit) });
      assert.equal(status, 200, JSON.stringify(body));
      const r = body as unknown as TopReport;
      const want = await sql(
        `SELECT CAST(user_id AS CHAR) u, CAST(SUM(count) AS CHAR) c, CAST(SUM(value_sum) AS CHAR) v FROM \`${p}counts\`
         WHERE action_id = ? AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?) GROUP BY user_id ORDER BY SUM(count) DESC, user_id LIMIT ?`,
        [action, from! / 1000, to! / 1000, limit],
      );
      assert.deepEqual(r.users.map((u) => [u.userId, u.count, u.valueSum]), want.map((w) => [w.u, w.c, w.v]), `action ${action} limit ${limit} ${new Date(from!).toISOString()}`);
      assert.equal(r.stats.method, 'threshold');
      // The same, reading the lists 2 rows at a time: many rounds, the same exact answer.
      const slow = await topUsers(rt.store, action, decompose(from!, to!), limit, 2);
      assert.deepEqual(slow.rows.map((u) => [u.userId, String(u.count), String(u.valueSum)]), want.map((w) => [w.u, w.c, w.v]));
      if (slow.stats.rounds > 2) deeper++;
    }
  }
  assert.ok(deeper > 0, 'the small first depth took several rounds');
  const big = (await get('/api/top', { from: new Date(START).toISOString(), to: new Date(END).toISOString(), action: '2', limit: '1000' })).body as unknown as TopReport;
  assert.ok(big.users.some((u) => u.userId === '18446744073709551615' && u.valueSum === '18446744073709551000'));
  assert.equal((big.users[0]!).userId, '7', 'the busy user leads');
});

test('timeline of one user at each step equals the raw rows', async () => {
  for (const step of ['10m', '1h', '1d']) {
    const { status, body } = await get('/api/timeline', { user: '7', from: new Date(START + 3 * 3_600_000).toISOString(), to: new Date(START + 2 * DAY).toISOString(), step });
    assert.equal(status, 200, JSON.stringify(body));
    const r = body as unknown as TimelineReport;
    const size = step === '10m' ? SLICE : step === '1h' ? 3_600_000 : DAY;
    const fromMs = Math.floor((START + 3 * 3_600_000) / size) * size;
    const want = await sql(
      `SELECT action_id a, CAST(SUM(count) AS CHAR) c, CAST(SUM(value_sum) AS CHAR) v FROM \`${p}counts\` WHERE user_id = 7 AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?) GROUP BY action_id ORDER BY SUM(count) DESC, action_id`,
      [fromMs / 1000, (START + 2 * DAY) / 1000],
    );
    assert.deepEqual(r.lines.map((l) => [l.action.id, l.total.count, l.total.valueSum]), want.map((w) => [Number(w.a), w.c, w.v]), step);
    const i = r.t.findIndex((t, k) => r.lines[0]!.count[k] !== '0');
    const [b] = await sql(
      `SELECT CAST(SUM(count) AS CHAR) c FROM \`${p}counts\` WHERE user_id = 7 AND action_id = ? AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?)`,
      [r.lines[0]!.action.id, r.t[i]! / 1000, (r.t[i]! + size) / 1000],
    );
    assert.equal(r.lines[0]!.count[i], b!.c);
  }
  const nobody = (await get('/api/timeline', { user: '999', last: '30d' })).body as unknown as TimelineReport;
  assert.deepEqual(nobody.lines, []);
});

test('a bad parameter is a 400 that names it', async () => {
  const cases: [string, Record<string, string>, string, RegExp][] = [
    ['/api/series', { from: 'yesterday' }, 'from', /^from: must be epoch milliseconds or an ISO-8601/],
    ['/api/series', { from: '2026-01-12T00:00:00Z', to: '2026-01-11T00:00:00Z' }, 'to', /^to: must be after from \(2026-01-12T00:00:00.000Z\)/],
    ['/api/series', { from: '2026-02-30T00:00:00Z' }, 'from', /^from: /],
    ['/api/series', { last: '30d', step: '10m', to: '2026-06-01T00:00:00Z', from: '2026-01-01T00:00:00Z' }, 'last', /either from or last/],
    ['/api/series', { from: '2025-01-01T00:00:00Z', to: '2026-01-01T00:00:00Z', step: '10m' }, 'step', /52560 points; at most 10000/],
    ['/api/series', { step: 'week' }, 'step', /^step: must be one of/],
    ['/api/series', { actions: '1,0' }, 'actions[1]', /1 to 65535, got "0"/],
    ['/api/series', { colour: 'red' }, 'colour', /is not a parameter of this report/],
    ['/api/top', {}, 'action', /^action: is required$/],
    ['/api/top', { action: '1', limit: '1001' }, 'limit', /at most 1000/],
    ['/api/top', { action: '1', limit: 'ten' }, 'limit', /whole number/],
    ['/api/timeline', { user: '-1' }, 'user', /unsigned 64-bit/],
    ['/api/timeline', { user: '18446744073709551616' }, 'user', /unsigned 64-bit/],
    ['/api/health', { slices: '0' }, 'slices', /at least 1/],
    ['/api/series', { last: '99999999d' }, 'last', /number followed by/],
  ];
  for (const [path, query, field, message] of cases) {
    const { status, body } = await get(path, query);
    assert.equal(status, 400, `${path} ${JSON.stringify(query)}: ${JSON.stringify(body)}`);
    assert.equal(body.field, field, JSON.stringify(body));
    assert.match(String(body.error), message);
  }
  assert.equal((await get('/api/nothing')).status, 404);
  assert.equal((await handleReport({ method: 'POST', path: '/api/series', query: {}, headers: {} }, deps)).statusCode, 405);
  // Parameters reach SQL as values only: a quote is an invalid id, not SQL.
  const inj = await get('/api/timeline', { user: "1' OR '1'='1" });
  assert.equal(inj.status, 400);
});

test('with a token set, reads need it; the page itself holds no data', async () => {
  const locked = { ...deps, token: TOKEN };
  const read = (headers: Record<string, string>) => handleReport({ method: 'GET', path: '/api/series', query: { last: '1d' }, headers }, locked);
  assert.equal((await read({})).statusCode, 401);
  assert.equal((await read({ authorization: `Bearer ${TOKEN}x` })).statusCode, 401);
  assert.equal((await read({ authorization: TOKEN })).statusCode, 401);
  assert.equal((await read({ authorization: `Bearer ${TOKEN}` })).statusCode, 200);
  const page = await handleReport({ method: 'GET', path: '/', query: {}, headers: {} }, locked);
  assert.equal(page.statusCode, 200);
  assert.match(page.headers['content-type']!, /^text\/html/);
  assert.match(page.body, /uPlot/);
  assert.doesNotMatch(page.body, /<script[^>]+src=|<link[^>]+href=/i, 'nothing loaded from elsewhere');
});

test('health: slice problems, lag and servers, each named', async () => {
  const slices = `${p}slices`;
  const at = (k: number) => new Date(END - k * SLICE);
  await rt.store.pool.query(
    `INSERT INTO \`${slices}\` (slice_start, status, row_count, pairs_missing, chunks_missing, events, late, note, flushed_at) VALUES
     (?, 'flushed', 10, 0, 0, 100, 0, '', NOW(3)), (?, 'incomplete', 8, 2, 0, 90, 5, 'memcached restarted', NOW(3)), (?, 'lost', 0, 0, 0, NULL, 0, 'left the ring', NOW(3))`,
    [at(3), at(4), at(5)],
  );
  const { status, body } = await get('/api/health', { slices: '10' });
  assert.equal(status, 200);
  const h = body as unknown as import('../lib/report/health.ts').HealthReport;
  assert.equal(h.level, 'problem');
  assert.ok(!('error' in h.flush) && h.flush.lagSlices === 1 && h.flush.watermark === at(3).toISOString());
  assert.ok(!('error' in h.slices));
  if (!('error' in h.slices)) {
    assert.deepEqual(h.slices.recent.map((s) => s.status), ['flushed', 'incomplete', 'lost']);
    assert.deepEqual(h.slices.totals, { late: '5', pairsMissing: 2, lost: 1, incomplete: 1, corrupt: 0, saturated: 0, maybeDuplicated: 0 });
  }
  assert.ok(h.reasons.some((r) => /1 recent slices lost/.test(r)));
  assert.ok(h.reasons.some((r) => /2 pairs missing/.test(r)));
  assert.ok(h.reasons.some((r) => /5 late events/.test(r)));
  assert.equal(h.gearman.length, 1);
  assert.equal(h.gearman[0]!.error, undefined);
  assert.ok(!('error' in h.memcached) && h.memcached[0]!.limitBytes > 0);
});

test('the CLI answers as the API does: names, tables, JSON, and flags named in errors', () => {
  const env = { ...process.env, OFFLOG_TABLE_PREFIX: p, OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_LOG_LEVEL: 'warn' };
  const cli = (...args: string[]) => spawnSync(process.execPath, ['bin/offlog.js', ...args], { env, encoding: 'utf8' });
  const set = cli('actions', 'set', '4', 'password', 'reset');
  assert.equal(set.status, 0, set.stderr);
  const range = ['--from', new Date(START).toISOString(), '--to', new Date(END).toISOString()];
  const json = cli('report', 'top', '--action', '1', '--limit', '5', '--json', ...range);
  assert.equal(json.status, 0, json.stderr);
  const top = JSON.parse(json.stdout) as TopReport;
  assert.equal(top.users.length, 5);
  assert.equal(top.action.name, 'logon');
  const table = cli('report', 'series', '--step', '1d', ...range);
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /password reset \(4\)/);
  assert.match(table.stdout, /^total\s/m);
  const bad = cli('report', 'top', '--action', '1', '--limit', '5000');
  assert.equal(bad.status, 2); // a usage error
  assert.match(bad.stderr, /--limit: must be at most 1000, got "5000"/);
  const list = cli('actions', 'list');
  assert.match(list.stdout, /4\s+password reset/);
});
