/**
 * The SDK's options and signals: servers as 'host:port' text with an
 * OFFLOG_GEARMAN_SERVERS default, the 'error' and 'drop' events (and their
 * onError / onDrop callbacks), and mock mode for an application's tests.
 * Outages are real: a port nothing listens on.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { OffLogClient, resolveServers, type DropEvent, type OffLogClientError } from '../lib/client.ts';
import { freePort } from './daemons.ts';

test('servers: host:port text, lists, arrays of text or objects; OFFLOG_GEARMAN_SERVERS by default; a bad one is a TypeError naming it', () => {
  assert.deepEqual(resolveServers('10.0.0.5:4731, gm2'), [{ host: '10.0.0.5', port: 4731 }, { host: 'gm2', port: 4730 }]);
  assert.deepEqual(resolveServers(['a:1', { host: 'b', port: 2 }, '[::1]:3']), [{ host: 'a', port: 1 }, { host: 'b', port: 2 }, { host: '::1', port: 3 }]);
  assert.deepEqual(resolveServers(undefined, { OFFLOG_GEARMAN_SERVERS: 'g1:4000,g2:4001' }), [{ host: 'g1', port: 4000 }, { host: 'g2', port: 4001 }]);
  assert.deepEqual(resolveServers(undefined, {}), [{ host: '127.0.0.1', port: 4730 }]);
  assert.throws(() => resolveServers(undefined, { OFFLOG_GEARMAN_SERVERS: 'g1:99999' }), { name: 'TypeError', message: 'OFFLOG_GEARMAN_SERVERS: "g1:99999" is not host:port' });
  assert.throws(() => resolveServers(['ok:1', 'bad host']), { message: 'servers[1]: "bad host" is not host:port' });
  assert.throws(() => resolveServers([{ host: 'x', port: 0 }]), { message: /^servers\[0\]: must be 'host:port' or \{ host, port \}/ });
  assert.throws(() => resolveServers([]), { message: 'servers: at least one Gearman server is needed' });
});

test("'error': a server that cannot be reached is reported once per outage, with its address; onError gets the same", async () => {
  const port = await freePort();
  const viaOption: OffLogClientError[] = [];
  const client = new OffLogClient({ servers: `127.0.0.1:${port}`, onError: (e) => viaOption.push(e) });
  const viaEvent: OffLogClientError[] = [];
  client.on('error', (e) => viaEvent.push(e));
  client.log(1, 1);
  const deadline = Date.now() + 5000;
  while (viaEvent.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  await new Promise((r) => setTimeout(r, 500)); // retries meanwhile: still one outage
  await client.close({ timeoutMs: 50 });
  assert.equal(viaEvent.length, 1);
  assert.equal(viaOption.length, 1);
  assert.equal(viaEvent[0]!.server, `127.0.0.1:${port}`);
  assert.match(viaEvent[0]!.message, new RegExp(`^Gearman server 127\\.0\\.0\\.1:${port} is down \\(.*ECONNREFUSED.*\\); the client uses the others and retries it$`));
});

test("no 'error' listener: an outage never throws at the application", async () => {
  const client = new OffLogClient({ servers: `127.0.0.1:${await freePort()}` });
  client.log(1, 1);
  await new Promise((r) => setTimeout(r, 300));
  const stats = await client.close({ timeoutMs: 50 });
  assert.equal(stats.dropped, 1);
});

test("'drop': events past the memory cap, and those left at close(), are reported with their reason; the figures equal stats()", async () => {
  const drops: DropEvent[] = [];
  const client = new OffLogClient({ servers: `127.0.0.1:${await freePort()}`, batchSize: 5, maxBufferedEvents: 10, onDrop: (d) => drops.push(d) });
  client.on('error', () => undefined);
  for (let i = 0; i < 30; i++) client.log(i, 1);
  const stats = await client.close({ timeoutMs: 50 });
  const memory = drops.filter((d) => d.reason === 'memory').reduce((n, d) => n + d.events, 0);
  const atClose = drops.filter((d) => d.reason === 'closeTimeout').reduce((n, d) => n + d.events, 0);
  assert.deepEqual([memory, atClose], [stats.droppedBecause.memory, stats.droppedBecause.closeTimeout]);
  assert.equal(memory, 20);
  assert.equal(atClose, 10);
  assert.equal(drops.at(-1)!.totalDropped, 30);
});

test('mock: events are validated and recorded, never sent; the PHP-era aliases record what they mean', async () => {
  const client = new OffLogClient({ mock: true, servers: 'nowhere:1' });
  const at = Date.UTC(2026, 0, 1);
  client.log(1, 2);
  client.log('18446744073709551615', 3, { value: 4, at, payload: 'p' });
  client.logSimpleAction(5, 6);
  client.logWatchedUser(7, 8, 'w', { at });
  client.logWatchedAction(9, 10);
  client.logErrorReturn(11, 12, 'e');
  assert.throws(() => client.log(1, 0), { name: 'InputError', message: /^actionId: / });
  assert.deepEqual(
    client.recorded.map((e) => [e.userId, e.actionId, e.value, e.payload, e.watched, e.priority]),
    [
      ['1', 2, 0, undefined, false, 'normal'], ['18446744073709551615', 3, 4, 'p', false, 'normal'], ['5', 6, 0, undefined, false, 'normal'],
      ['7', 8, 0, 'w', true, 'normal'], ['9', 10, 0, undefined, true, 'normal'], ['11', 12, 0, 'e', false, 'high'],
    ],
  );
  assert.equal(client.recorded[1]!.at, at);
  await client.send([{ userId: '13', actionId: 14, value: 0, at }]);
  assert.equal(await client.flush(), true);
  const stats = await client.close();
  assert.deepEqual([stats.accepted, stats.acknowledged, stats.buffered, stats.inFlight, stats.dropped], [7, 7, 0, 0, 0]);
  assert.deepEqual(stats.servers, {});
  client.recorded.length = 0;
  assert.equal(client.recorded.length, 0);
});
