/**
 * The dashboard in a real browser: Debian's Chromium (local/browser.sh)
 * driven by playwright-core, loading GET / from serverless-offline with a
 * report token set and known rows in MariaDB. Checks that the page asks for
 * the token (and the API refuses a read without it), that the charts drew,
 * that the numbers shown equal SQL totals, and that a bad range shows a
 * clear message. Screenshots go to .data/screenshots/ (git-ignored).
 */
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { RowDataPacket } from 'mysql2/promise';
import { chromium, type Browser, type Page } from 'playwright-core';
import { rollup } from '../lib/publish/rollup.ts';
import { serverlessOffline } from './daemons.ts';
import { prng, testRuntime } from './support.ts';

const TOKEN = 'dashboard-token-0123456789';
const SHOTS = join(process.env.OFFLOG_DATA_DIR ?? '.data/test', '..', 'screenshots');
const DAY = 86_400_000;
const SLICE = 600_000;
const rt = testRuntime({ OFFLOG_REPORT_TOKEN: TOKEN });
const p = rt.config.tablePrefix;
/** Two days of data, ending at the last full hour: the dashboard's range is fixed in its URL. */
const END = Math.floor(Date.now() / 3_600_000) * 3_600_000;
const START = END - 2 * DAY;
const RANGE = `from=${new Date(START).toISOString()}&to=${new Date(END).toISOString()}`;
const ACTIONS: [number, string][] = [[1, 'logon'], [2, 'failed logon'], [3, 'post'], [5, 'purchase']];
let base = '';
let browser: Browser;
let stopOffline = () => {};

const sql = async (text: string, params: unknown[] = []) => (await rt.store.pool.query<RowDataPacket[]>(text, params))[0];

before(async () => {
  await rt.store.migrate();
  // A daily rhythm with a busier afternoon, 200 users, four named actions.
  const random = prng(5);
  const rows: string[] = [];
  for (let ms = START; ms < END; ms += SLICE) {
    const hour = new Date(ms).getUTCHours();
    const activity = 0.25 + 0.75 * Math.sin((Math.PI * hour) / 24) ** 2;
    for (let user = 1; user <= 200; user++) {
      for (const [action] of ACTIONS) {
        if (random() > (activity * 0.3) / action) continue;
        const count = 1 + Math.floor(random() * (user <= 5 ? 20 : 4));
        rows.push(`(FROM_UNIXTIME(${ms / 1000}), ${user}, ${action}, ${count}, ${action === 5 ? count * (100 + user) : 0})`);
      }
    }
  }
  for (let i = 0; i < rows.length; i += 5000) {
    await rt.store.pool.query(`INSERT INTO \`${p}counts\` (slice_start, user_id, action_id, count, value_sum) VALUES ${rows.slice(i, i + 5000).join(',')}`);
  }
  await rollup(rt.store, START, END);
  for (const [id, name] of ACTIONS) await rt.store.pool.query(`INSERT INTO \`${p}actions\` (action_id, name, updated_at) VALUES (?, ?, NOW())`, [id, name]);
  await rt.store.pool.query(
    `INSERT INTO \`${p}slices\` (slice_start, status, row_count, pairs_missing, chunks_missing, events, late, note, flushed_at) VALUES
     (?, 'flushed', 412, 0, 0, 1730, 0, '', NOW(3)), (?, 'flushed', 398, 0, 0, 1702, 12, '', NOW(3)), (?, 'incomplete', 377, 3, 0, 1650, 0, 'memcached restarted', NOW(3))`,
    [new Date(END - SLICE), new Date(END - 2 * SLICE), new Date(END - 3 * SLICE)],
  );

  let httpPort: number;
  ({ httpPort, stop: stopOffline } = await serverlessOffline({
    OFFLOG_KEY_PREFIX: rt.config.keyPrefix, OFFLOG_TABLE_PREFIX: p, OFFLOG_REPORT_TOKEN: TOKEN,
  }));
  base = `http://127.0.0.1:${httpPort}`;
  browser = await chromium.launch({ executablePath: process.env.OFFLOG_CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'] });
  mkdirSync(SHOTS, { recursive: true });
});
after(async () => {
  await browser?.close();
  stopOffline();
  await rt.close();
});

/** Waits for a refresh to finish (the page marks it on <body>). */
async function settled(page: Page): Promise<void> {
  await page.waitForFunction(() => document.body.dataset.state === 'ready');
}

async function open(width: number, height: number, scale = 1): Promise<Page> {
  const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: scale });
  const page = await context.newPage();
  page.on('pageerror', (err) => assert.fail(`page error: ${err.message}`));
  return page;
}

/** Pixels of the canvas under `selector` within `tolerance` of the colour `hex`: proof that a series was drawn. */
const pixelsOf = (page: Page, selector: string, hex: string) =>
  page.evaluate(([sel, color]) => {
    const canvas = document.querySelector(`${sel} canvas`) as HTMLCanvasElement | null;
    if (!canvas) return -1;
    const want = [1, 3, 5].map((i) => parseInt(color.slice(i, i + 2), 16));
    const data = canvas.getContext('2d')!.getImageData(0, 0, canvas.width, canvas.height).data;
    let n = 0;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3]! > 200 && Math.abs(data[i]! - want[0]!) < 40 && Math.abs(data[i + 1]! - want[1]!) < 40 && Math.abs(data[i + 2]! - want[2]!) < 40) n++;
    }
    return n;
  }, [selector, hex] as const);

test('without the token the API refuses and the page asks for it; with it the dashboard shows the SQL totals', async () => {
  const refused = await fetch(`${base}/api/series?last=1d`);
  assert.equal(refused.status, 401);
  assert.equal(((await refused.json()) as { field: string }).field, 'authorization');

  const page = await open(1360, 1000);
  const started = performance.now();
  await page.goto(`${base}/#${RANGE}`);
  await settled(page);
  assert.equal(await page.isVisible('#token-form'), true, 'the token prompt shows');
  assert.equal(await page.isVisible('#main'), false, 'no data without the token');
  assert.match((await page.textContent('#notice'))!, /needs a token/);
  await page.screenshot({ path: join(SHOTS, 'dashboard-token.png') });

  await page.fill('#token', TOKEN);
  await page.click('#token-form button');
  await page.waitForFunction(() => document.getElementById('kpi-events')?.dataset.value !== undefined);
  await settled(page);
  const firstPaintMs = performance.now() - started;

  // Totals: the KPI and each action's legend figure against SUM over the 10-minute rows.
  const [all] = await sql(`SELECT CAST(SUM(count) AS CHAR) c, CAST(SUM(value_sum) AS CHAR) v FROM \`${p}counts\` WHERE slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?)`, [START / 1000, END / 1000]);
  assert.equal(await page.getAttribute('#kpi-events', 'data-value'), all!.c);
  assert.equal((await page.textContent('#kpi-events'))!.replaceAll(',', ''), all!.c, 'the number shown is the SQL total');
  assert.equal((await page.textContent('#kpi-value'))!.replaceAll(',', ''), all!.v);
  const perAction = await sql(`SELECT action_id a, CAST(SUM(count) AS CHAR) c FROM \`${p}counts\` WHERE slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?) GROUP BY action_id ORDER BY SUM(count) DESC`, [START / 1000, END / 1000]);
  const legend = await page.$$eval('#legend-actions b', (bs) => bs.map((b) => b.textContent!.replaceAll(',', '')));
  assert.deepEqual(legend, perAction.map((r) => r.c));
  assert.equal(await page.textContent('#kpi-busiest'), 'logon');

  // The charts drew: the busiest action's colour covers part of each canvas.
  assert.ok((await pixelsOf(page, '#chart-actions', '#3559e0')) > 300, 'events-per-action chart drew its lines');
  assert.ok((await pixelsOf(page, '#chart-action', '#3559e0')) > 300, 'selected-action chart drew');

  // Top users: the table equals a GROUP BY over the raw rows.
  const top = await sql(`SELECT CAST(user_id AS CHAR) u, CAST(SUM(count) AS CHAR) c, CAST(SUM(value_sum) AS CHAR) v FROM \`${p}counts\` WHERE action_id = 1 AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?) GROUP BY user_id ORDER BY SUM(count) DESC, user_id LIMIT 25`, [START / 1000, END / 1000]);
  const shown = await page.$$eval('#top-table tbody tr', (trs) => trs.map((tr) => [...tr.querySelectorAll('td')].slice(1, 4).map((td) => td.textContent!.replaceAll(',', ''))));
  assert.deepEqual(shown, top.map((r) => [r.u, r.c, r.v]));

  // Health: the incomplete slice and the late events show as badges.
  assert.equal(await page.textContent('#health-level'), 'problem');
  assert.match((await page.textContent('#h-slices'))!, /incomplete/);
  assert.equal(await page.textContent('#h-slices .b-missing'), 'missing 3');
  assert.equal(await page.textContent('#h-slices .b-late'), 'late 12');

  // A user from the table: the timeline's totals per action equal SQL.
  await page.click('#top-table tbody tr:first-child');
  await page.waitForSelector('#user-result:not([hidden])');
  const user = top[0]!.u as string;
  const mine = await sql(`SELECT action_id a, CAST(SUM(count) AS CHAR) c FROM \`${p}counts\` WHERE user_id = ? AND slice_start >= FROM_UNIXTIME(?) AND slice_start < FROM_UNIXTIME(?) GROUP BY action_id ORDER BY SUM(count) DESC, action_id`, [user, START / 1000, END / 1000]);
  const timeline = await page.$$eval('#user-table tbody td[data-count]', (tds) => tds.map((td) => td.textContent!.replaceAll(',', '')));
  assert.deepEqual(timeline, mine.map((r) => r.c));
  assert.ok((await pixelsOf(page, '#chart-user', '#3559e0')) > 50, 'timeline chart drew');
  await page.screenshot({ path: join(SHOTS, 'dashboard-desktop.png'), fullPage: true });
  console.log(`# dashboard: first paint with data ${Math.round(firstPaintMs)} ms after navigation (token typed in between)`);

  // A bad range: the message names what is wrong, in words.
  await page.fill('#from', new Date(END).toISOString().slice(0, 16));
  await page.fill('#to', new Date(START).toISOString().slice(0, 16));
  await page.click('#custom button');
  await page.waitForSelector('#notice:not([hidden])');
  await settled(page);
  const message = await page.textContent('#notice');
  assert.match(message!, /^This range cannot be shown: to: must be after from \(/);
  await page.screenshot({ path: join(SHOTS, 'dashboard-bad-range.png') });
  await page.fill('#from', 'last tuesday');
  await page.fill('#to', new Date(END).toISOString().slice(0, 16));
  await page.click('#custom button');
  await page.waitForFunction(() => /from:/.test(document.getElementById('notice')!.textContent ?? ''));
  assert.match((await page.textContent('#notice'))!, /^This range cannot be shown: from: must be epoch milliseconds or an ISO-8601 date-time/);
  await page.context().close();
});

test('on a phone-sized screen the dashboard fits the width and still draws', async () => {
  const page = await open(390, 844, 2);
  await page.addInitScript((t) => localStorage.setItem('offlog.reportToken', t), TOKEN);
  await page.goto(`${base}/#${RANGE}&user=1`);
  await page.waitForFunction(() => document.getElementById('kpi-events')?.dataset.value !== undefined);
  await settled(page);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page scrolls sideways by ${overflow}px`);
  assert.ok((await pixelsOf(page, '#chart-actions', '#3559e0')) > 100);
  await page.screenshot({ path: join(SHOTS, 'dashboard-phone.png'), fullPage: true });
  await page.context().close();
});
