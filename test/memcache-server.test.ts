/**
 * The memcached OffLog will talk to (lib/wire/memcache.ts at connect,
 * lib/base/config.ts): a server older than 1.6.10 is refused by its
 * `version` before anything else is sent, and not retried as an outage; TLS
 * against a real `memcached -Z` with a certificate made here; ElastiCache
 * Serverless refused by name.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import type { HostPort } from '../lib/base/config.ts';
import { ConfigError } from '../lib/base/errors.ts';
import { Deltas } from '../lib/domain/aggregate.ts';
import { FN_BATCH } from '../lib/domain/contract.ts';
import { OffLogClient } from '../lib/send/client.ts';
import { Ring } from '../lib/count/ring.ts';
import type { Runtime } from '../lib/runtime.ts';
import { adminStatus } from '../lib/wire/gearman.ts';
import { MemcacheConnection, MemcacheTlsError, MemcacheUnavailableError, MemcacheVersionError, versionRefusal } from '../lib/wire/memcache.ts';
import { Daemon, freePort, gearmand } from './daemons.ts';
import { futureSlice, startOf, testConfig, testRuntime } from './support.ts';

const local = (port: number): HostPort => ({ host: '127.0.0.1', port });
const runtimes: Runtime[] = [];
after(async () => {
  await Promise.all(runtimes.map((rt) => rt.close()));
});

/** A fake memcached: answers `version` with the given one, `incr` with 1, and records every line it was sent and every connection. */
async function fakeMemcached(t: { after(fn: () => unknown): void }, version: string, versionDelayMs = 0): Promise<{ port: number; lines: string[]; connections: () => number }> {
  const lines: string[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    let buffer = '';
    socket.on('data', (chunk: Buffer) => {
      buffer += chunk.toString('latin1');
      for (let nl = buffer.indexOf('\r\n'); nl >= 0; nl = buffer.indexOf('\r\n')) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 2);
        lines.push(line);
        if (line === 'version') setTimeout(() => socket.write(`VERSION ${version}\r\n`), versionDelayMs);
        else if (line.startsWith('incr ')) socket.write('1\r\n');
        else socket.write('ERROR\r\n');
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => {
    server.close(r);
    for (const s of sockets) s.destroy();
  }));
  return { port: (server.address() as net.AddressInfo).port, lines, connections: () => connections };
}

test('versionRefusal: 1.6.10 and later pass; older, or unreadable, is refused naming both versions', () => {
  for (const ok of ['1.6.10', '1.6.22', '1.6.38', '1.7.0', '2.0.0', '1.6.18-rc1']) assert.equal(versionRefusal(ok), null, ok);
  assert.match(versionRefusal('1.6.6')!, /memcached 1\.6\.6 is too old: OffLog needs 1\.6\.10 or later.*1\.6\.22/);
  assert.match(versionRefusal('1.5.22')!, /too old/);
  assert.match(versionRefusal('1.6.9')!, /too old/);
  assert.match(versionRefusal('unknown')!, /cannot read its version "unknown"/);
});

test('memcached 1.6.6: refused at connect with MemcacheVersionError, before any command reaches it', async (t) => {
  const fake = await fakeMemcached(t, '1.6.6');
  const mc = new MemcacheConnection(local(fake.port), { opTimeoutMs: 2000 });
  t.after(() => mc.close());
  const calls = [mc.exec([{ kind: 'incr', key: 'a', amount: 1 }]), mc.getMulti(['a', 'b'])];
  for (const call of calls) {
    await assert.rejects(call, (e: Error) =>
      e instanceof MemcacheVersionError && !(e instanceof MemcacheUnavailableError)
      && e.message === `memcached 127.0.0.1:${fake.port}: memcached 1.6.6 is too old: OffLog needs 1.6.10 or later (its meta commands' HD/NS replies); on ElastiCache choose engine 1.6.22`);
  }
  assert.deepEqual(fake.lines, ['version'], 'nothing but "version" was sent');
  assert.equal(mc.serverVersion, null);
});

test('memcached 1.6.10: the held commands go out once the version is checked', async (t) => {
  const fake = await fakeMemcached(t, '1.6.10');
  const mc = new MemcacheConnection(local(fake.port));
  t.after(() => mc.close());
  assert.deepEqual(await mc.exec([{ kind: 'incr', key: 'a', amount: 1 }, { kind: 'incr', key: 'b', amount: 2 }]), [1n, 1n]);
  assert.deepEqual(fake.lines, ['version', 'incr a 1', 'incr b 2']);
  assert.equal(mc.serverVersion, '1.6.10');
});

test('close() while the version check is out: the held request is still sent and answered, then the connection closes', async (t) => {
  const fake = await fakeMemcached(t, '1.6.22', 200);
  const mc = new MemcacheConnection(local(fake.port));
  const reply = mc.exec([{ kind: 'incr', key: 'a', amount: 1 }]);
  await mc.close();
  assert.deepEqual(await reply, [1n]);
  assert.deepEqual(fake.lines, ['version', 'incr a 1']);
  await assert.rejects(mc.exec([{ kind: 'incr', key: 'a', amount: 1 }]), /closed by close\(\)/);
});

test('a worker facing memcached 1.6.6 stops with the version error at once: no retry loop, no job dead-lettered, every job left queued', async (t) => {
  const fake = await fakeMemcached(t, '1.6.6');
  const g = await gearmand(t);
  await g.start();
  const rt = testRuntime({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}` });
  runtimes.push(rt);
  const base = futureSlice(600);
  const client = new OffLogClient({ servers: [local(g.port)], batchSize: 10 });
  for (let i = 0; i < 50; i++) client.log(i, 1, { at: startOf(base, 600) });
  assert.equal(await client.flush({ timeoutMs: 10_000 }), true);
  await client.close();
  assert.equal((await adminStatus(local(g.port))).get(FN_BATCH)?.queued, 5);

  const ring = new Ring({ servers: [local(fake.port)], keyPrefix: rt.config.keyPrefix, sliceSeconds: 600, ringSlices: 6 });
  t.after(() => ring.close());
  const worker = rt.worker({}, { gearmanServers: [local(g.port)], ring, now: () => startOf(base, 600) });
  const started = Date.now();
  await assert.rejects(worker.run({ idle: true }), (e: Error) => e instanceof MemcacheVersionError && /1\.6\.6 is too old/.test(e.message));
  assert.ok(Date.now() - started < 5000, `stopped in ${Date.now() - started} ms, not after retries`);
  assert.equal(worker.stats.storeRetries, 0, 'not retried as an outage');
  assert.equal(worker.stats.deadLetters, 0, 'no job is at fault: none dead-lettered');
  assert.ok(fake.lines.every((l) => l === 'version'), `only "version" reached the old server: ${JSON.stringify(fake.lines.slice(0, 5))}`);
  let queued = -1;
  for (let i = 0; i < 50 && queued !== 5; i++) {
    queued = (await adminStatus(local(g.port))).get(FN_BATCH)?.queued ?? 0;
    if (queued !== 5) await new Promise((r) => setTimeout(r, 100));
  }
  assert.equal(queued, 5, 'every job went back to gearmand');
});

test('TLS: a real memcached -Z with a certificate made here; trusted through the CA file, refused without it and over plain TCP', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'offlog-mctls-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=OffLog test CA', '-keyout', 'ca.key', '-out', 'ca.pem');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=localhost', '-keyout', 'server.key', '-out', 'server.csr');
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '2', '-extfile', 'ext.cnf', '-out', 'server.pem');
  const port = await freePort();
  const d = new Daemon('memcached -Z', port, () => [
    'memcached', '-u', 'root', '-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', '64',
    '-Z', '-o', `ssl_chain_cert=${join(dir, 'server.pem')},ssl_key=${join(dir, 'server.key')}`,
  ]);
  t.after(() => d.kill());
  await d.start();

  const config = testConfig({ OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${port}`, OFFLOG_MEMCACHED_TLS: 'true', OFFLOG_MEMCACHED_CA_FILE: join(dir, 'ca.pem') });
  assert.match(config.memcachedTls?.ca ?? '', /BEGIN CERTIFICATE/);
  const mc = new MemcacheConnection(local(port), { tls: config.memcachedTls, opTimeoutMs: 2000 });
  t.after(() => mc.close());
  assert.deepEqual(await mc.exec([{ kind: 'set', key: 'k', value: 'v', ttl: 60 }, { kind: 'get', key: 'k' }]), [true, Buffer.from('v')]);
  assert.match(mc.serverVersion ?? '', /^1\.6\.\d+/);

  // The whole write path over TLS: a Ring from that config stores a fold that reads back exact.
  const ring = new Ring({ servers: config.memcachedServers, keyPrefix: config.keyPrefix, sliceSeconds: 600, ringSlices: 6, tls: config.memcachedTls });
  t.after(() => ring.close());
  const base = futureSlice(600);
  const deltas = new Deltas();
  for (let i = 0; i < 1000; i++) deltas.add({ userId: String(i % 100), actionId: 1, value: 2, at: startOf(base, 600) }, base, 600);
  await ring.apply(deltas);
  const reader = await ring.openSlice(base, 5000);
  let rows = 0;
  let count = 0n;
  for (let batch = await reader.next(); batch !== null; batch = await reader.next()) {
    rows += batch.length;
    for (const c of batch.counts) count += BigInt(c);
  }
  assert.equal(rows, 100);
  assert.equal(count, 1000n);

  const untrusted = new MemcacheConnection(local(port), { tls: {}, opTimeoutMs: 2000 });
  t.after(() => untrusted.close());
  // Refused for good, not an outage: a worker stops on it (MemcacheUnusableError) instead of holding jobs and retrying.
  await assert.rejects(untrusted.exec([{ kind: 'get', key: 'k' }]), (e: Error) =>
    e instanceof MemcacheTlsError && !(e instanceof MemcacheUnavailableError) && /TLS refused \((SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_GET_ISSUER_CERT_LOCALLY|UNABLE_TO_VERIFY_LEAF_SIGNATURE):/.test(e.message));
  const wrongName = new MemcacheConnection({ host: 'localhost', port }, { tls: { ca: config.memcachedTls!.ca! }, opTimeoutMs: 2000 });
  t.after(() => wrongName.close());
  assert.deepEqual(await wrongName.exec([{ kind: 'get', key: 'k' }]), [Buffer.from('v')], 'by the name in its certificate too');
  const plain = new MemcacheConnection(local(port), { opTimeoutMs: 1000 });
  t.after(() => plain.close());
  await assert.rejects(plain.exec([{ kind: 'get', key: 'k' }]), MemcacheUnavailableError);
  // TLS to a plain memcached: the handshake fails the same way every time.
  const tlsToPlain = new MemcacheConnection(local(Number(new URL(`http://${process.env.OFFLOG_MEMCACHED_SERVERS}`).port)), { tls: {}, opTimeoutMs: 2000 });
  t.after(() => tlsToPlain.close());
  await assert.rejects(tlsToPlain.exec([{ kind: 'get', key: 'k' }]), (e: Error) => e instanceof MemcacheTlsError && /TLS refused \((EPROTO|ERR_SSL_WRONG_VERSION_NUMBER): .*wrong version number/i.test(e.message));
});

test('config: OFFLOG_MEMCACHED_TLS and its CA file checked at start; ElastiCache Serverless refused by name', () => {
  assert.equal(testConfig().memcachedTls, null);
  assert.deepEqual(testConfig({ OFFLOG_MEMCACHED_TLS: 'true' }).memcachedTls, {}, 'TLS with Node\'s own roots');
  assert.throws(() => testConfig({ OFFLOG_MEMCACHED_TLS: 'yes' }), /OFFLOG_MEMCACHED_TLS: must be true or false/);
  assert.throws(() => testConfig({ OFFLOG_MEMCACHED_TLS: 'true', OFFLOG_MEMCACHED_CA_FILE: '/nonexistent/ca.pem' }),
    (e: Error) => e instanceof ConfigError && /^OFFLOG_MEMCACHED_CA_FILE: cannot read "\/nonexistent\/ca.pem": ENOENT/.test(e.message));
  assert.throws(() => testConfig({ OFFLOG_MEMCACHED_CA_FILE: '/etc/hostname' }), /OFFLOG_MEMCACHED_TLS is not true/);
  assert.throws(() => testConfig({ OFFLOG_MEMCACHED_TLS: 'true', OFFLOG_MEMCACHED_CA_FILE: '/etc/hostname' }), /holds no PEM certificate/);
  assert.throws(() => testConfig({ OFFLOG_MEMCACHED_SERVERS: 'offlog-abc123.serverless.euw1.cache.amazonaws.com:11211' }),
    (e: Error) => e instanceof ConfigError
      && /^OFFLOG_MEMCACHED_SERVERS: offlog-abc123\.serverless\.euw1\.cache\.amazonaws\.com is an ElastiCache Serverless endpoint, which OffLog does not support/.test(e.message)
      && /16 KB/.test(e.message) && /node-based/.test(e.message));
  assert.throws(() => testConfig({ OFFLOG_MEMCACHED_PREVIOUS_SERVERS: 'x.serverless.use1.cache.amazonaws.com' }), /OFFLOG_MEMCACHED_PREVIOUS_SERVERS: .* ElastiCache Serverless/);
  assert.equal(testConfig({ OFFLOG_MEMCACHED_SERVERS: 'offlog.abc123.0001.euw1.cache.amazonaws.com:11211' }).memcachedServers.length, 1, 'a node-based cluster\'s node is fine');
});
