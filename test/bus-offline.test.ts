/**
 * The bus on one machine, with no AWS, as `npm start` runs it: serverless-offline
 * 14 with serverless-offline-aws-eventbridge 2.2.4 (through local/offline-eventbridge.cjs),
 * on free ports. POST /events → worker → the flush function (Lambda endpoint)
 * → SliceFlushed on the mock bus → the rollup function → hourly and daily rows.
 * Then a watched user's event → the watched function → stored and published.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import type { RowDataPacket } from 'mysql2/promise';
import { sleep } from '../lib/base/backoff.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { addWatch } from '../lib/count/watch.ts';
import { freePort, portInUse, serverlessOffline } from './daemons.ts';
import { drainQueues, readCounts, testRuntime } from './support.ts';

const BUS = 'offlog-test-bus';
const rt = testRuntime();
let HTTP_PORT = 0;
let LAMBDA_PORT = 0;
let BUS_PORT = 0;
let MQTT_PORT = 0;
let stopOffline: (() => void) | undefined;
let output: () => string = () => '';

before(async () => {
  await drainQueues(rt.config);
  await rt.store.migrate();
  // Before any worker reads the lists (a running worker would see it within OFFLOG_WATCHLIST_TTL_SECONDS).
  await addWatch(rt.store, 'user', '99');
  const c = rt.config;
  [BUS_PORT, MQTT_PORT] = [await freePort(), await freePort()];
  const offline = await serverlessOffline({
    OFFLOG_EVENTBRIDGE_PORT: String(BUS_PORT),
    OFFLOG_EVENTBRIDGE_MQTT_PORT: String(MQTT_PORT),
    OFFLOG_EVENT_BUS: BUS,
    OFFLOG_KEY_PREFIX: c.keyPrefix,
    OFFLOG_TABLE_PREFIX: c.tablePrefix,
  });
  [HTTP_PORT, LAMBDA_PORT, stopOffline, output] = [offline.httpPort, offline.lambdaPort, offline.stop, offline.output];
});

after(async () => {
  stopOffline?.();
  await rt.close();
});

async function invoke(fn: string, payload: unknown): Promise<Record<string, unknown>> {
  const lambda = new LambdaClient({ endpoint: `http://127.0.0.1:${LAMBDA_PORT}`, region: 'eu-west-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
  try {
    const res = await lambda.send(new InvokeCommand({ FunctionName: `offlog-local-${fn}`, Payload: Buffer.from(JSON.stringify(payload)) }));
    const body = JSON.parse(Buffer.from(res.Payload!).toString()) as Record<string, unknown>;
    if (res.FunctionError) throw new Error(`${fn} failed: ${JSON.stringify(body)}`);
    return body;
  } finally {
    lambda.destroy();
  }
}

const post = (body: unknown) => fetch(`http://127.0.0.1:${HTTP_PORT}/events`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });

test('the local bus listens on loopback only, on the ports it was given', async () => {
  assert.equal(await portInUse(BUS_PORT), true);
  assert.equal(await portInUse(MQTT_PORT), true);
  assert.match(output(), new RegExp(`Mock PutEvents endpoint on http://127\\.0\\.0\\.1:${BUS_PORT}`));
});

test('POST → worker → flush → SliceFlushed on the local bus → rollup function → hourly and daily rows', async () => {
  const acceptedAt = Date.now();
  const res = await post({ events: [{ userId: 42, actionId: 1, value: 5 }, { userId: 42, actionId: 1, value: 2 }, { userId: 7, actionId: 2 }] });
  assert.equal(res.status, 202);
  assert.equal((await rt.worker().run({ idle: true })).events, 3);

  const slice = sliceOf(acceptedAt, rt.config.sliceSeconds);
  const now = new Date(sliceStartMs((slice + 3) as SliceId, rt.config.sliceSeconds) + 1000);
  const result = (await invoke('flush', { now: now.toISOString(), force: true })) as { ran: boolean; slices: unknown[]; published: { published: number; failed: number } };
  assert.equal(result.ran, true);
  assert.equal(result.published.failed, 0);
  assert.equal(result.published.published, result.slices.length, 'every slice flushed went on the bus');

  // The plugin hands each SliceFlushed to the rollup function; its rows appear, summing to the 10-minute rows.
  const counts = await readCounts(rt);
  assert.equal(counts.size, 2);
  const byPair = (rows: RowDataPacket[]) => {
    const m = new Map<string, [bigint, bigint]>();
    for (const r of rows) {
      const k = `${r.user_id}:${r.action_id}`;
      const cur = m.get(k) ?? [0n, 0n];
      m.set(k, [cur[0] + BigInt(r.count), cur[1] + BigInt(r.value_sum)]);
    }
    return [...m].map(([k, [c, v]]) => `${k}=${c}/${v}`).sort();
  };
  const want = ['42:1=2/7', '7:2=1/0'];
  const table = (name: 'hourly' | 'daily') => rt.store.pool.query<RowDataPacket[]>(`SELECT user_id, action_id, count, value_sum FROM \`${rt.store.tables[name]}\``).then(([r]) => r);
  const deadline = Date.now() + 30_000;
  // The rows commit before serverless-offline prints the invocation's report line, so wait for both.
  const rolledUp = async () => byPair(await table('daily')).join() === want.join() && /\(λ: rollup\) RequestId/.test(output());
  while (Date.now() < deadline && !(await rolledUp())) await sleep(200);
  assert.deepEqual(byPair(await table('hourly')), want);
  assert.deepEqual(byPair(await table('daily')), want);
  assert.match(output(), /\(λ: rollup\) RequestId/);
  const [unpublished] = await rt.store.pool.query<RowDataPacket[]>(`SELECT COUNT(*) AS n FROM \`${rt.store.tables.slices}\` WHERE published_at IS NULL`);
  assert.equal(Number(unpublished[0]!.n), 0);
});

test('a watched user: worker → offlog.watched → the watched function → stored and published on the local bus', async () => {
  const res = await post({ events: [{ userId: 99, actionId: 4, value: 3, payload: 'seen' }, { userId: 98, actionId: 4, payload: 'not kept' }] });
  assert.equal(res.status, 202);
  const stats = await rt.worker().run({ idle: true });
  assert.equal(stats.watched, 1);
  const drained = (await invoke('watched', { idle: true })) as { stored: number; published: number };
  assert.deepEqual([drained.stored, drained.published], [1, 1]);
  const [rows] = await rt.store.pool.query<RowDataPacket[]>(`SELECT user_id, action_id, value, payload, reasons, published_at FROM \`${rt.store.tables.watched}\``);
  assert.deepEqual(rows.map((r) => [String(r.user_id), Number(r.action_id), Number(r.value), r.payload, r.reasons, r.published_at !== null]), [['99', 4, 3, 'seen', 'user', true]]);
});
