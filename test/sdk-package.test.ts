/**
 * The SDK as an app gets it: `npm pack`, then `npm install <tarball>` into
 * fresh apps in a temporary folder outside the repo (no tsx there, no
 * TypeScript sources in the package, no install scripts run).
 *
 * Two apps: one installs the client alone (`npm install offlog`): its tree
 * holds nothing but offlog (no mysql2, pino or zod), and plain JavaScript
 * loads it with `require` and with `import`, sends real events and uses the
 * mock; its TypeScript, ESM and CommonJS, type-checks. The other is an
 * operator's host, with the server side's optional peers installed beside
 * it: the package's own `offlog` bin migrates, runs the worker and flushes,
 * and the rows are read from ol_counts, exactly.
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
const clientApp = join(work, 'client-app');
let tarball = '';
/** The server side's libraries at the ranges the package names for them (its optional peers). */
const repoManifest = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { peerDependencies: Record<string, string>; version: string };
const serverPeers = ['mysql2', 'pino', 'zod', 'commander'].map((d) => `${d}@${repoManifest.peerDependencies[d]}`);

before(async () => {
  await drainQueues(rt.config);
  const packed = await run('npm', ['pack', '--pack-destination', work, '--json'], { timeoutMs: 120_000 });
  assert.equal(packed.code, 0, packed.stderr);
  tarball = join(work, (JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string }[])[0]!.filename);
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'some-app', version: '1.0.0', type: 'module', private: true }));
  // The peers are in npm's cache after the repo's own install; the registry is asked only if not.
  const installed = await run('npm', ['install', tarball, ...serverPeers, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app, timeoutMs: 180_000 });
  assert.equal(installed.code, 0, `${installed.stdout}\n${installed.stderr}`);
  // A plain CommonJS app (no "type": "module"), installing the client in one line.
  mkdirSync(clientApp);
  writeFileSync(join(clientApp, 'package.json'), JSON.stringify({ name: 'client-app', version: '1.0.0', private: true }));
  const light = await run('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: clientApp, timeoutMs: 180_000 });
  assert.equal(light.code, 0, `${light.stdout}\n${light.stderr}`);
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

test('the package: compiled JavaScript (ESM and a CommonJS client), .d.ts and .d.cts files, the bin, a LICENSE; no sources, no install scripts, no dependencies', async () => {
  const pkg = join(app, 'node_modules', 'offlog');
  const files = readdirSync(pkg, { recursive: true }).map(String);
  for (const f of [['dist', 'lib', 'client.js'], ['dist', 'lib', 'client.d.ts'], ['dist', 'cjs', 'client.cjs'], ['dist', 'cjs', 'client.d.cts'], ['dist', 'lib', 'index.js'], ['dist', 'local', 'cli.js'], ['LICENSE']]) {
    assert.ok(files.includes(join(...f)), join(...f));
  }
  assert.deepEqual(files.filter((f) => /\.[cm]?ts$/.test(f) && !/\.d\.c?ts$/.test(f)), []);
  const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8')) as {
    private?: boolean; license: string; repository: { url: string }; scripts?: Record<string, string>; dependencies?: Record<string, string>;
    peerDependencies: Record<string, string>; peerDependenciesMeta: Record<string, { optional: boolean }>;
  };
  assert.equal(manifest.private, undefined);
  assert.equal(manifest.license, 'MIT');
  assert.match(readFileSync(join(pkg, 'LICENSE'), 'utf8'), /^MIT License/);
  assert.ok(manifest.repository.url.length > 0);
  assert.deepEqual(Object.keys(manifest.scripts ?? {}).filter((s) => /install/.test(s)), []);
  assert.deepEqual(Object.keys(manifest.dependencies ?? {}), [], 'the client needs no package');
  for (const d of ['mysql2', 'pino', 'zod', 'commander']) assert.equal(manifest.peerDependenciesMeta[d]?.optional, true, `${d}: an optional peer`);
  assert.equal(existsSync(join(app, 'node_modules', 'tsx')), false, 'nothing to run TypeScript with');
  assert.equal(existsSync(join(app, 'node_modules', 'gearman')), false);
});

test('the client installs alone: its tree is offlog and nothing else (no mysql2, pino or zod)', async () => {
  const entries = readdirSync(join(clientApp, 'node_modules')).filter((e) => !e.startsWith('.'));
  assert.deepEqual(entries, ['offlog']);
  // npm's own view of the tree: every package installed, at any depth (optional peers left out are listed without a version).
  const listed = await run('npm', ['ls', '--all', '--json'], { cwd: clientApp });
  type Node = { version?: string; dependencies?: Record<string, Node> };
  const installed = (deps: Record<string, Node> = {}): string[] =>
    Object.entries(deps).flatMap(([name, d]) => (d.version === undefined ? [] : [name, ...installed(d.dependencies)]));
  assert.deepEqual(installed((JSON.parse(listed.stdout) as Node).dependencies), ['offlog']);
  // Its bin says what the CLI needs, in one line, instead of a stack trace.
  const cli = await run(join(clientApp, 'node_modules', '.bin', 'offlog'), ['status'], { cwd: clientApp, env: { PATH: process.env.PATH! } });
  assert.equal(cli.code, 1);
  assert.match(cli.stderr, /^offlog: the CLI needs the server side's packages beside offlog \(\S+ is missing\): npm install mysql2 pino zod commander\n$/);
});

test('plain JavaScript loads the client with require and with import, sends events gearmand acknowledges, and records them in mock mode', async (t) => {
  t.after(() => drainQueues(rt.config));
  const env = { PATH: process.env.PATH!, OFFLOG_GEARMAN_SERVERS: rt.config.gearmanServers.map((s) => `${s.host}:${s.port}`).join(',') };
  writeFileSync(join(clientApp, 'send.cjs'), `
const { OffLogClient } = require('offlog');
const sub = require('offlog/client');
if (sub.OffLogClient !== OffLogClient) throw new Error('offlog and offlog/client differ');
(async () => {
  const client = new OffLogClient(); // servers from OFFLOG_GEARMAN_SERVERS
  const errors = [];
  client.on('error', (e) => errors.push(e.server));
  client.log(7, 1);
  client.logSimpleAction(7, 1);
  client.log('18446744073709551615', 2, { value: 3 });
  const stats = await client.close({ timeoutMs: 10000 });
  const mock = new OffLogClient({ mock: true });
  mock.log(42, 9, { value: 5 });
  process.stdout.write(JSON.stringify({ acknowledged: stats.acknowledged, dropped: stats.dropped, errors, recorded: mock.recorded.map((e) => [e.userId, e.actionId, e.value]) }));
})();
`);
  const cjs = await run('node', ['send.cjs'], { cwd: clientApp, env });
  assert.equal(cjs.code, 0, cjs.stderr);
  assert.deepEqual(JSON.parse(cjs.stdout), { acknowledged: 3, dropped: 0, errors: [], recorded: [['42', 9, 5]] });

  writeFileSync(join(clientApp, 'send.mjs'), `
import { OffLogClient, InputError } from 'offlog/client';
const client = new OffLogClient({ servers: process.env.OFFLOG_GEARMAN_SERVERS });
client.log(8, 1);
let refused = '';
try { client.log(-1, 1); } catch (e) { refused = e instanceof InputError ? e.message : 'other'; }
const stats = await client.close({ timeoutMs: 10000 });
process.stdout.write(JSON.stringify({ acknowledged: stats.acknowledged, refused }));
`);
  const esm = await run('node', ['send.mjs'], { cwd: clientApp, env });
  assert.equal(esm.code, 0, esm.stderr);
  const answer = JSON.parse(esm.stdout) as { acknowledged: number; refused: string };
  assert.equal(answer.acknowledged, 1);
  assert.match(answer.refused, /^userId: /);
});

test('TypeScript against the client alone, ESM and CommonJS, type-checks with no library types skipped', async () => {
  writeFileSync(join(clientApp, 'esm.mts'), `
import { OffLogClient, type DropEvent, type RecordedEvent } from 'offlog/client';
const client = new OffLogClient({ servers: ['127.0.0.1:4730', { host: '10.0.0.5', port: 4730 }], onDrop: (d: DropEvent) => void d.events });
client.on('error', (e) => void e.server);
client.log(1n, 2, { value: 3, at: new Date() });
// @ts-expect-error an action is a number
client.log(1, 'logon');
export const first: RecordedEvent | undefined = client.recorded[0];
`);
  writeFileSync(join(clientApp, 'cjs.cts'), `
import { OffLogClient, type ClientStats } from 'offlog';
const client = new OffLogClient({ mock: true });
client.logWatchedUser(1, 2, 'payload');
export const stats: ClientStats = client.stats();
`);
  writeFileSync(join(clientApp, 'tsconfig.json'), JSON.stringify({
    compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, types: ['node'], typeRoots: [join(REPO, 'node_modules', '@types')] },
    files: ['esm.mts', 'cjs.cts'],
  }));
  const checked = await run(join(REPO, 'node_modules', '.bin', 'tsc'), ['-p', '.'], { cwd: clientApp, env: { PATH: process.env.PATH! } });
  assert.equal(checked.code, 0, checked.stdout + checked.stderr);
});

test('a plain JavaScript app logs through the SDK; the offlog bin migrates, works and flushes; ol_counts has every event', async () => {
  const env = appEnv();
  const offlog = (...args: string[]) => run(join(app, 'node_modules', '.bin', 'offlog'), args, { cwd: app, env, timeoutMs: 60_000 });
  const migrated = await offlog('migrate');
  assert.equal(migrated.code, 0, migrated.stderr);

  writeFileSync(join(app, 'log.js'), `
import { OffLogClient } from 'offlog';
const client = new OffLogClient(); // OFFLOG_GEARMAN_SERVERS
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

test('an operator\'s TypeScript app (offlog/server with its peers) type-checks against the shipped declarations, and a wrong argument is caught', async () => {
  writeFileSync(join(app, 'index.ts'), `
import { OffLogClient, InputError, type ClientStats, type LogEvent } from 'offlog';
import { loadConfig } from 'offlog/server';
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
