/**
 * Through serverless-offline, as a newcomer would run it: POST /events on
 * localhost, the worker, then the flush invoked through the Lambda endpoint
 * with an explicit time → the rows appear. A malformed body gets a 400 that
 * names the field.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { InvokeCommand, LambdaClient } from '@aws-sdk/client-lambda';
import { sliceOf, sliceStartMs } from '../lib/domain/slice.ts';
import { serverlessOffline } from './daemons.ts';
import { drainQueues, readCounts, testRuntime } from './support.ts';

let HTTP_PORT = 0;
let LAMBDA_PORT = 0;
const TOKEN = 'test-token-0123456789';
const rt = testRuntime({ OFFLOG_INGEST_TOKEN: TOKEN });
let stopOffline: (() => void) | undefined;

before(async () => {
  await drainQueues(rt.config);
  await rt.store.migrate();
  const c = rt.config;
  const offline = await serverlessOffline({ OFFLOG_KEY_PREFIX: c.keyPrefix, OFFLOG_TABLE_PREFIX: c.tablePrefix, OFFLOG_INGEST_TOKEN: TOKEN });
  [HTTP_PORT, LAMBDA_PORT, stopOffline] = [offline.httpPort, offline.lambdaPort, offline.stop];
});

after(async () => {
  stopOffline?.();
  await rt.close();
});

const post = (body: string, token = TOKEN) =>
  fetch(`http://127.0.0.1:${HTTP_PORT}/events`, { method: 'POST', body, headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` } });

test('POST /events → worker → flush via the Lambda endpoint → rows in ol_counts', async () => {
  const acceptedAt = Date.now();
  const one = await post(JSON.stringify({ userId: 42, actionId: 1 }));
  assert.equal(one.status, 202);
  assert.deepEqual(await one.json(), { accepted: 1 });
  const batch = await post(JSON.stringify({ events: [{ userId: 42, actionId: 1, value: 5 }, { userId: '18446744073709551615', actionId: 2, value: 7 }] }));
  assert.equal(batch.status, 202);
  assert.deepEqual(await batch.json(), { accepted: 2 });

  const bad = await post(JSON.stringify({ events: [{ userId: 1, actionId: 1 }, { userId: 1, actionId: 'one' }] }));
  assert.equal(bad.status, 400);
  const why = (await bad.json()) as { error: string; field: string };
  assert.equal(why.field, 'events[1].actionId');
  assert.match(why.error, /^events\[1\]\.actionId: must be an integer from 1 to 65535, got "one"$/);
  assert.equal((await post('{"userId": 1, "actionId": 1}', 'wrong-token-000000000')).status, 401);

  const worker = rt.worker();
  const stats = await worker.run({ idle: true });
  assert.equal(stats.events, 3, 'the rejected batch enqueued nothing');

  const slice = sliceOf(acceptedAt, rt.config.sliceSeconds);
  // Three slices on: the request may have crossed into the next slice after acceptedAt was read.
  const now = new Date(sliceStartMs(slice, rt.config.sliceSeconds) + 3 * rt.config.sliceSeconds * 1000 + 1000);
  const lambda = new LambdaClient({ endpoint: `http://127.0.0.1:${LAMBDA_PORT}`, region: 'eu-west-1', credentials: { accessKeyId: 'local', secretAccessKey: 'local' } });
  const res = await lambda.send(new InvokeCommand({ FunctionName: 'offlog-local-flush', Payload: Buffer.from(JSON.stringify({ now: now.toISOString(), force: true })) }));
  lambda.destroy();
  const result = JSON.parse(Buffer.from(res.Payload!).toString()) as { ran: boolean; rows: number };
  assert.equal(result.ran, true);

  const rows = await readCounts(rt);
  const start = Number([...rows.keys()][0]?.split(':')[0]);
  assert.ok([0, 1].map((k) => sliceStartMs((slice + k) as typeof slice, rt.config.sliceSeconds)).includes(start), `slice start ${start}`);
  assert.deepEqual(rows, new Map([[`${start}:42:1`, ['2', '5']], [`${start}:18446744073709551615:2`, ['1', '7']]]));
});
