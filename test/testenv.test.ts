/**
 * The tests must not depend on the caller's shell: an exported
 * OFFLOG_SLICE_SECONDS=2 once failed eight fault tests. testConfig() takes
 * only where the test servers are from its environment.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { loadConfig } from '../lib/base/config.ts';

test("testConfig() ignores the caller's OFFLOG_* settings and keeps only the test servers", async () => {
  const hostile = {
    OFFLOG_SLICE_SECONDS: '2', OFFLOG_RING_SLICES: '3', OFFLOG_KEY_PREFIX: 'x', OFFLOG_TABLE_PREFIX: 'zz_',
    OFFLOG_MAX_BATCH_EVENTS: '1', OFFLOG_MAX_BODY_BYTES: '2048', OFFLOG_INGEST_TOKEN: 'a-token-of-sixteen-chars',
  };
  const servers = {
    OFFLOG_GEARMAN_SERVERS: '127.0.0.1:4999', OFFLOG_MEMCACHED_SERVERS: '127.0.0.1:11999', OFFLOG_MYSQL_URL: 'mysql://u:p@127.0.0.1:3999/db', OFFLOG_LOG_LEVEL: 'error',
  };
  const script = `
    const { testConfig } = await import('./test/support.ts');
    const { loadConfig } = await import('./lib/base/config.ts');
    process.stdout.write(JSON.stringify({ test: testConfig(), plain: loadConfig(process.env) }));`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    env: { PATH: process.env.PATH ?? '', ...hostile, ...servers },
  });
  const { test: cfg, plain } = JSON.parse(stdout) as { test: Record<string, unknown>; plain: Record<string, unknown> };
  // The child did see the caller's settings: loadConfig reads them.
  assert.deepEqual([plain.sliceSeconds, plain.ringSlices, plain.keyPrefix, plain.tablePrefix], [2, 3, 'x', 'zz_']);
  // testConfig(): DESIGN.md's defaults, a key and table prefix of its own, and the test servers.
  const defaults = JSON.parse(JSON.stringify(loadConfig({}))) as Record<string, unknown>;
  assert.match(String(cfg.keyPrefix), /^t[0-9a-f]{8}:$/);
  assert.match(String(cfg.tablePrefix), /^t[0-9a-f]{8}_$/);
  assert.deepEqual(cfg.gearmanServers, [{ host: '127.0.0.1', port: 4999 }]);
  assert.deepEqual(cfg.memcachedServers, [{ host: '127.0.0.1', port: 11999 }]);
  assert.equal(cfg.mysqlUrl, servers.OFFLOG_MYSQL_URL);
  assert.equal(cfg.logLevel, 'error');
  const rest = (c: Record<string, unknown>) => {
    const { keyPrefix: _k, tablePrefix: _t, gearmanServers: _g, memcachedServers: _m, mysqlUrl: _u, logLevel: _l, ...others } = c;
    return others;
  };
  assert.deepEqual(rest(cfg), rest(defaults));
  assert.deepEqual([cfg.sliceSeconds, cfg.ringSlices], [600, 6]);
});
