/**
 * The SDK as an app gets it: `npm pack`, then `npm install <tarball>` into a
 * fresh app in a temporary folder outside the repo (no tsx there, no
 * TypeScript sources in the package, no install scripts run). A plain
 * JavaScript app logs events through the SDK; the package's own `offlog` bin
 * migrates, runs the worker and flushes; the rows are then read from
 * ol_counts, exactly. A TypeScript app type-checks against the shipped .d.ts.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { REPO, run } from './osls.ts';
import { drainQueues, readCounts, testRuntime } from './support.ts';

const rt = testRuntime();
const work = mkdtempSync(join(tmpdir(), 'offlog-sdk-'));
const app = join(work, 'app');
let tarball = '';

before(async () => {
  await drainQueues(rt.config);
  const packed = await run('npm', ['pack', '--pack-destination', work, '--json'], { timeoutMs: 120_000 });
  assert.equal(packed.code, 0, packed.stderr);
  tarball = join(work, (JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string }[])[0]!.filename);
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'some-app', version: '1.0.0', type: 'module', private: true }));
  // The SDK's dependencies are in npm's cache after the repo's own install; the registry is asked only if not.
  const installed = await run('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app, timeoutMs: 180_000 });
  assert.equal(installed.code, 0, `${installed.stdout}\n${installed.stderr}`);
});

after(async () => {
  rmSync(work, { recursive: true, force: true });
  await rt.close();
});

/** The app's environment: where the servers are, and this test's own tables and keys. */
const appEnv = () => {
  const c = rt.config;
  return {
    PATH: process.env.PATH!,
    HOME: process.env.HOME ?? work,
    OFFLOG_GEARMAN_SERVERS: c.gearmanServers.map((s) => `${s.host}:${s.port}`).join(','),
    OFFLOG_MEMCACHED_SERVERS: c.memcachedServers.map((s) => `${s.host}:${s.port}`).join(','),
    OFFLOG_MYSQL_URL: c.mysqlUrl,
    OFFLOG_KEY_PREFIX: c.keyPrefix,
    OFFLOG_TABLE_PREFIX: c.tablePrefix,
    OFFLOG_LOG_LEVEL: 'warn',
  };
};

test('the package holds compiled JavaScript, .d.ts files and the bin; no TypeScript sources, no install scripts', async () => {
  const pkg = join(app, 'node_modules', 'offlog');
  const files = readdirSync(pkg, { recursive: true }).map(String);
  assert.ok(files.includes(join('dist', 'lib', 'index.js')) && files.includes(join('dist', 'lib', 'index.d.ts')) && files.includes(join('dist', 'local', 'cli.js')));
  assert.deepEqual(files.filter((f) => f.endsWith('.ts') && !f.endsWith('.d.ts')), []);
  const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as { scripts?: Record<string, string>; dependencies: Record<string, string> };
  assert.deepEqual(Object.keys(manifest.scripts ?? {}).filter((s) => /install/.test(s)), []);
  assert.deepEqual(Object.keys(manifest.dependencies).sort(), ['mysql2', 'pino', 'zod']);
  assert.equal(existsSync(join(app, 'node_modules', 'tsx')), false, 'nothing to run TypeScript with');
  assert.equal(existsSync(join(app, 'node_modules', 'gearman')), false);
});

test('a plain JavaScript app logs through the SDK; the offlog bin migrates, works and flushes; ol_counts has every event', async () => {
  const env = appEnv();
  const offlog = (...args: string[]) => run(join(app, 'node_modules', '.bin', 'offlog'), args, { cwd: app, env, timeoutMs: 60_000 });
  const migrated = await offlog('migrate');
  assert.equal(migrated.code, 0, migrated.stderr);

  writeFileSync(join(app, 'log.js'), `
import { OffLogClient, loadConfig } from 'offlog';
const { gearmanServers } = loadConfig(process.env);
const client = new OffLogClient({ servers: gearmanServers });
for (let user = 1; user <= 200; user++) {
  client.log(user, 1);
  client.log(user, 2, { value: user });
}
client.log('18446744073709551615', 3, { value: 7 });
process.stdout.write(JSON.stringify(await client.close({ timeoutMs: 10000 })));
`);
  const startedAt = Date.now();
  const logged = await run('node', ['log.js'], { cwd: app, env });
  assert.equal(logged.code, 0, logged.stderr);
  const stats = JSON.parse(logged.stdout) as { accepted: number; acknowledged: number; dropped: number };
  assert.deepEqual([stats.accepted, stats.acknowledged, stats.dropped], [401, 401, 0]);

  const worked = await offlog('worker', '--until-idle');
  assert.equal(worked.code, 0, worked.stderr);
  assert.equal((JSON.parse(worked.stdout) as { events: number }).events, 401);

  // Flush as if three slices had passed: the events' slice (and the next, should they straddle) are finished then.
  const slice = sliceOf(startedAt, rt.config.sliceSeconds);
  const now = new Date(sliceStartMs((slice + 3) as SliceId, rt.config.sliceSeconds));
  const flushed = await offlog('flush', '--now', now.toISOString(), '--force');
  assert.equal(flushed.code, 0, flushed.stderr);

  const totals = new Map<string, [string, string]>();
  for (const [key, [c, v]] of await readCounts(rt)) {
    const k = key.split(':').slice(1).join(':');
    const cur = totals.get(k) ?? ['0', '0'];
    totals.set(k, [String(Number(cur[0]) + Number(c)), String(Number(cur[1]) + Number(v))]);
  }
  const expected = new Map<string, [string, string]>();
  for (let user = 1; user <= 200; user++) {
    expected.set(`${user}:1`, ['1', '0']);
    expected.set(`${user}:2`, ['1', String(user)]);
  }
  expected.set('18446744073709551615:3', ['1', '7']);
  assert.deepEqual(new Map([...totals].sort()), new Map([...expected].sort()));
});

test('a TypeScript app type-checks against the shipped declarations, and a wrong argument is caught', async () => {
  writeFileSync(join(app, 'index.ts'), `
import { OffLogClient, loadConfig, InputError, type ClientStats, type LogEvent } from 'offlog';
const client = new OffLogClient({ servers: loadConfig(process.env).gearmanServers });
client.log(1n, 2, { value: 3, at: new Date() });
// @ts-expect-error an action is a number
client.log(1, 'logon');
const event: LogEvent = { userId: '1', actionId: 2, value: 0, at: Date.now() };
const stats: ClientStats = await client.close();
export const seen: [number, string, LogEvent] = [stats.accepted, InputError.name, event];
`);
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, types: ['node'], typeRoots: [join(REPO, 'node_modules', '@types')] },
    files: ['index.ts'],
  }));
  const checked = await run(join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', '.'], { cwd: app, env: { PATH: process.env.PATH! } });
  assert.equal(checked.code, 0, checked.stdout + checked.stderr);
});
