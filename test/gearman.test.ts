/**
 * GearmanConnection against the test gearmand: what a long-lived worker's
 * connection holds, and which request an ERROR reply belongs to.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, test } from 'node:test';
import { GearmanConnection } from '../lib/wire/gearman.ts';
import { testConfig } from './support.ts';

const server = testConfig().gearmanServers[0]!;
const conns: GearmanConnection[] = [];
async function connect(): Promise<GearmanConnection> {
  const conn = await GearmanConnection.connect(server);
  conns.push(conn);
  return conn;
}
after(() => {
  for (const c of conns) c.close();
});
// A function nobody else submits to, so grabs on it always find the queue empty.
const nobodysFunction = () => `test.idle.${randomBytes(4).toString('hex')}`;

test('idle sleeps hold nothing once they end: the connection keeps as many callbacks after 300 sleeps as before', async () => {
  const conn = await connect();
  conn.canDo(nobodysFunction());
  const before = conn.listenerCount;
  for (let i = 0; i < 300; i++) await conn.sleep(1);
  assert.equal(conn.listenerCount, before, 'one second of idling per sleep must not leave a callback behind');
  // Sleeps cut short by close() end too, and leave nothing.
  const sleeping = Promise.all([conn.sleep(60_000), conn.sleep(60_000)]);
  assert.equal(conn.listenerCount, before + 2);
  conn.close();
  await sleeping;
  assert.equal(conn.listenerCount, 0);
});

test('an ERROR answers the oldest request, even one that has no reply when it succeeds', async () => {
  const conn = await connect();
  const fn = nobodysFunction();
  conn.canDo(fn);
  const unique = `u-${randomBytes(4).toString('hex')}`;
  // gearmand answers a WORK_COMPLETE for a job it does not hold with ERROR JOB_NOT_FOUND; the grab and the submit
  // sent after it are both pending when that ERROR arrives, and must get their own replies.
  conn.complete('H:offlog-test:no-such-job');
  const grabbed = conn.grab();
  const submitted = conn.submitBackground(fn, 'payload', unique);
  assert.equal(await grabbed, null);
  assert.match(await submitted, /^H:/, 'the submit was queued, so it must resolve with its handle');
  const job = await conn.grab();
  assert.equal(job?.unique, unique, 'and the job really is on the queue');
  conn.complete(job.handle);

  // A submit gearmand refuses (a unique id over its 64 bytes), pending behind a grab: the submit is rejected, not the grab.
  const grab2 = conn.grab();
  const refused = conn.submitBackground(fn, 'payload', 'u'.repeat(65));
  const accepted = conn.submitBackground(fn, 'payload', `${unique}-2`);
  assert.equal(await grab2, null);
  await assert.rejects(refused, /ERROR .*too large/i);
  assert.match(await accepted, /^H:/);
  const job2 = await conn.grab();
  assert.equal(job2?.unique, `${unique}-2`);
  conn.complete(job2.handle);
  assert.equal(await conn.grab(), null, 'replies and requests still in step');
  assert.ok(conn.isOpen);
});
