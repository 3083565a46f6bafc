/**
 * Draining the dead-letter queue into MySQL: anything on that queue (it is
 * open to every Gearman client) is stored and the drain goes on, and a dead
 * letter keeps the time the worker received the bad job.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { HostPort } from '../lib/base/config.ts';
import { FN_BATCH, FN_DEAD_LETTER, type DeadLetterJob } from '../lib/domain/contract.ts';
import { drainDeadLetters } from '../lib/flush/deadletter.ts';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import { gearmand } from './daemons.ts';
import { testRuntime } from './support.ts';

const local = (port: number): HostPort => ({ host: '127.0.0.1', port });

async function submit(server: HostPort, jobs: { fn: string; unique: string; data: Buffer | string }[]): Promise<void> {
  const conn = await GearmanConnection.connect(server);
  try {
    for (const j of jobs) await conn.submitBackground(j.fn, j.data, j.unique, 'low');
  } finally {
    conn.close();
  }
}

test('dead letters: a misshapen one is stored whole as unreadable and the drain goes on; each keeps its receive time', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const server = local(g.port);
  const rt = testRuntime();
  t.after(() => rt.close());
  await rt.store.migrate();

  const letter = (unique: string, receivedAt: string, payload: Buffer): string =>
    JSON.stringify({ fn: FN_BATCH, unique, handle: 'H:x:1', error: `offlog.batch: bad ${unique}`, receivedAt, payload: payload.toString('base64') } satisfies DeadLetterJob);
  const binary = Buffer.from([0xff, 0x00, 0xfe, 0x0d, 0x0a]);
  const good = [
    { unique: 'good-1', receivedAt: '2026-01-02T03:04:05.678Z', payload: Buffer.from('{"v":9}') },
    { unique: 'good-2', receivedAt: '2025-12-31T23:59:59.001Z', payload: binary },
  ];
  // Valid JSON of the wrong shape (each once aborted every drain, always on the same job), and worse.
  const bad: { unique: string; data: Buffer | string; field: RegExp }[] = [
    { unique: 'dl-number', data: '{"fn": 1}', field: /dead letter\.fn:/ },
    { unique: 'dl-null', data: 'null', field: /dead letter:/ },
    { unique: 'dl-array', data: '[1,2]', field: /dead letter:/ },
    { unique: 'dl-no-payload', data: JSON.stringify({ ...JSON.parse(letter('x', '2026-01-01T00:00:00.000Z', binary)), payload: undefined }), field: /dead letter\.payload:/ },
    { unique: 'dl-payload-not-base64', data: letter('x', '2026-01-01T00:00:00.000Z', binary).replace(/"payload":"[^"]*"/, '"payload":"%%%"'), field: /dead letter\.payload:/ },
    { unique: 'dl-bad-time', data: letter('x', '2026-02-30T00:00:00.000Z', binary), field: /dead letter\.receivedAt:/ },
    { unique: 'dl-year-0', data: letter('x', '0000-01-01T00:00:00.000Z', binary), field: /dead letter\.receivedAt:/ },
    { unique: 'dl-not-json', data: Buffer.concat([Buffer.from('{"fn":'), binary]), field: /dead letter: is not JSON/ },
  ];
  await submit(server, [
    { fn: FN_DEAD_LETTER, unique: 'q-good-1', data: letter(good[0]!.unique, good[0]!.receivedAt, good[0]!.payload) },
    ...bad.map((b) => ({ fn: FN_DEAD_LETTER, unique: b.unique, data: b.data })),
    { fn: FN_DEAD_LETTER, unique: 'q-good-2', data: letter(good[1]!.unique, good[1]!.receivedAt, good[1]!.payload) },
  ]);

  const drainStart = Date.now();
  assert.equal(await drainDeadLetters([server], rt.store), bad.length + good.length);
  assert.equal(await drainDeadLetters([server], rt.store), 0, 'nothing is left on the queue to abort the next drain');

  const rows = new Map((await rt.store.deadLetters(100)).map((r) => [r.unique, r]));
  assert.equal(rows.size, bad.length + good.length);
  for (const gl of good) {
    const row = rows.get(gl.unique)!;
    assert.deepEqual([row.fn, row.error, row.receivedAt.toISOString()], [FN_BATCH, `offlog.batch: bad ${gl.unique}`, gl.receivedAt], 'the time the worker received it, to the millisecond');
    assert.ok(row.payload.equals(gl.payload));
  }
  for (const b of bad) {
    const row = rows.get(b.unique);
    assert.ok(row, `${b.unique} was not stored`);
    assert.match(row.error, /^unreadable dead letter/, b.unique);
    assert.match(row.error, b.field, b.unique);
    assert.ok(row.payload.equals(Buffer.isBuffer(b.data) ? b.data : Buffer.from(b.data)), `${b.unique}: stored byte for byte`);
    assert.ok(row.receivedAt.getTime() >= drainStart - 1000, `${b.unique}: no receive time to keep, so the drain's`);
  }
});

test('dead letters: the worker stamps when it received the bad job, and a later drain keeps that time', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const server = local(g.port);
  const rt = testRuntime();
  t.after(() => rt.close());
  await rt.store.migrate();

  await submit(server, [{ fn: FN_BATCH, unique: 'garbage-1', data: 'not a batch' }]);
  const before = Date.now();
  const worker = rt.worker({}, { gearmanServers: [server] });
  await worker.run({ idle: true });
  const after = Date.now();
  assert.equal(worker.stats.deadLetters, 1);
  await new Promise((r) => setTimeout(r, 1500)); // the drain comes later

  assert.equal(await drainDeadLetters([server], rt.store), 1);
  const [row] = await rt.store.deadLetters(10);
  assert.equal(row?.unique, 'garbage-1');
  const at = row.receivedAt.getTime();
  assert.ok(at >= before - 5 && at <= after + 5, `received ${row.receivedAt.toISOString()}, worker ran ${new Date(before).toISOString()}…${new Date(after).toISOString()}`);
  assert.equal(row.payload.toString(), 'not a batch');
});
