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
