/**
 * The `offlog` CLI's conventions, run as a user runs it (bin/offlog.js in a
 * child process): help and version on stdout with exit 0 for the program and
 * every command; a usage error is one line on stderr and exit 2; a server
 * that cannot be reached is one line naming it and `offlog services up`;
 * `offlog status` exits 3 with a server down; and beside `npm start`'s local
 * bus, `offlog flush` publishes SliceFlushed there with nothing exported.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { after, test } from 'node:test';
import { makeCli } from '../local/cli-context.ts';
import { EXIT } from '../local/cli-errors.ts';
import { buildProgram } from '../local/cli-program.ts';
import { sliceOf, sliceStartMs, type SliceId } from '../lib/domain/slice.ts';
import { label } from '../lib/base/config.ts';
import { freePort } from './daemons.ts';
import { FakeBus } from './fakebus.ts';
import { drainQueues, testRuntime } from './support.ts';

const rt = testRuntime();
after(() => rt.close());

interface Ran { code: number | null; stdout: string; stderr: string }

/** The CLI with only the given environment (and PATH): nothing leaks in from the shell running the tests. */
function offlog(args: string[], env: Record<string, string> = {}): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bin/offlog.js', ...args], { env: { PATH: process.env.PATH!, OFFLOG_LOG_LEVEL: 'warn', ...env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** The test servers and this test's own tables and keys. */
const serverEnv = (): Record<string, string> => ({
  OFFLOG_GEARMAN_SERVERS: rt.config.gearmanServers.map(label).join(','),
  OFFLOG_MEMCACHED_SERVERS: rt.config.memcachedServers.map(label).join(','),
  OFFLOG_MYSQL_URL: rt.config.mysqlUrl,
  OFFLOG_TABLE_PREFIX: rt.config.tablePrefix,
  OFFLOG_KEY_PREFIX: rt.config.keyPrefix,
});

const oneLine = (r: Ran): void => {
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line on stderr, got:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
};

test('--help on the program and on every command prints usage on stdout and exits 0; --version prints the version', async () => {
  const commands = buildProgram(makeCli({})).commands.map((c) => c.name());
  assert.ok(commands.length >= 12 && commands.includes('status') && commands.includes('report'), commands.join(' '));
  const runs = await Promise.all([[], ...commands.map((c) => [c])].map((c) => offlog([...c, '--help'])));
  for (const [i, r] of runs.entries()) {
    const name = i === 0 ? 'offlog' : `offlog ${commands[i - 1]}`;
    assert.equal(r.code, 0, `${name} --help: ${r.stderr}`);
    assert.match(r.stdout, /^Usage: offlog/, name);
    assert.equal(r.stderr, '', name);
  }
  const version = await offlog(['--version']);
  assert.equal(version.code, 0);
  assert.equal(version.stdout.trim(), (JSON.parse(readFileSync('package.json', 'utf8')) as { version: string }).version);
});

test('usage errors: one line on stderr, exit 2, no stack trace', async () => {
  const cases: [string[], RegExp][] = [
    [['report', 'top', '--bogus'], /^offlog: unknown option '--bogus'/],
    [['flsh'], /^offlog: unknown command 'flsh'.*flush/],
    [['flush', '--now', 'yesterday'], /--now: "yesterday" is not an ISO-8601 time/],
    [['rollup', '--from', '2026-01-01T00:00:00Z'], /required option '--to <time>' not specified/],
    [['services', 'sideways'], /value 'sideways' is invalid for argument 'action'\. Allowed choices are up, down, status/],
    [['deadletters', '--limit', '-3'], /--limit/],
  ];
  const runs = await Promise.all(cases.map(([args]) => offlog(args)));
  for (const [i, r] of runs.entries()) {
    assert.equal(r.code, EXIT.usage, `${cases[i]![0].join(' ')}: ${r.stderr}`);
    oneLine(r);
    assert.match(r.stderr, cases[i]![1]);
  }
  const alone = await offlog([]);
  assert.equal(alone.code, EXIT.usage);
  assert.match(alone.stderr, /^Usage: offlog/);
  const badVariable = await offlog(['migrate'], { OFFLOG_SLICE_SECONDS: 'ten' });
  assert.equal(badVariable.code, EXIT.config);
  assert.match(badVariable.stderr, /OFFLOG_SLICE_SECONDS: must be a whole number \(got "ten"\)/);
});

test('a server that cannot be reached: one line naming it and `offlog services up`, exit 69', async () => {
  const closed = await freePort();
  assert.equal((await offlog(['migrate'], serverEnv())).code, 0);
  const mysql = await offlog(['migrate'], { ...serverEnv(), OFFLOG_MYSQL_URL: `mysql://offlog:offlog@127.0.0.1:${closed}/offlog` });
  assert.equal(mysql.code, EXIT.unavailable, mysql.stderr);
  oneLine(mysql);
  assert.match(mysql.stderr, new RegExp(`^offlog: cannot reach MySQL at 127\\.0\\.0\\.1:${closed} \\(ECONNREFUSED\\); start the local servers with \`offlog services up\`, or point OFFLOG_MYSQL_URL`));
  const memcached = await offlog(['flush'], { ...serverEnv(), OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${closed}` });
  assert.equal(memcached.code, EXIT.unavailable, memcached.stderr);
  assert.match(memcached.stderr, new RegExp(`cannot reach memcached at 127\\.0\\.0\\.1:${closed}.*offlog services up`));
  oneLine(memcached);  const gearmand = await offlog(['worker', '--until-idle'], { ...serverEnv(), OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${closed}`, OFFLOG_LOG_LEVEL: 'error' });
  assert.equal(gearmand.code, EXIT.unavailable, gearmand.stderr);
  assert.match(gearmand.stderr, new RegExp(`cannot reach gearmand at 127\\.0\\.0\\.1:${closed}.*offlog services up`));
  oneLine(gearmand);
});

test('a database without the schema: one line saying to run `offlog migrate`, exit 1', async () => {
  const r = await offlog(['flush'], { ...serverEnv(), OFFLOG_TABLE_PREFIX: 'never_migrated_', OFFLOG_LOG_LEVEL: 'error' });
  assert.equal(r.code, EXIT.failed, r.stderr);
  oneLine(r);
  assert.match(r.stderr, /^offlog: MySQL has no table never_migrated_\w+ \(the schema is not there\): run `offlog migrate`/);
});

test('offlog status: a table and exit 0 when all is up; exit 3 naming the server when one is down; --json for machines', async () => {
  const migrated = await offlog(['migrate'], serverEnv());
  assert.equal(migrated.code, 0, migrated.stderr);
  await drainQueues(rt.config);
  const healthy = await offlog(['status'], serverEnv());
  assert.equal(healthy.code, 0, healthy.stdout + healthy.stderr);
  assert.match(healthy.stdout, /^gearmand\s+127\.0\.0\.1:\d+\s+up/m);
  assert.match(healthy.stdout, /^memcached\s+127\.0\.0\.1:\d+\s+up/m);
  assert.match(healthy.stdout, /^MySQL\s+127\.0\.0\.1:\d+\s+up/m);
  assert.match(healthy.stdout, /^OK: every server is up/m);

  const closed = await freePort();
  const down = await offlog(['status'], { ...serverEnv(), OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${closed}` });
  assert.equal(down.code, EXIT.unhealthy, down.stdout + down.stderr);
  assert.match(down.stdout, new RegExp(`^memcached\\s+127\\.0\\.0\\.1:${closed}\\s+DOWN`, 'm'));
  assert.match(down.stdout, new RegExp(`^NOT OK:\\n  - memcached \\(127\\.0\\.0\\.1:${closed}\\) is down`, 'm'));
  const json = await offlog(['status', '--json'], { ...serverEnv(), OFFLOG_MEMCACHED_SERVERS: `127.0.0.1:${closed}` });
  assert.equal(json.code, EXIT.unhealthy);
  const parsed = JSON.parse(json.stdout) as { healthy: boolean; problems: string[] };
  assert.equal(parsed.healthy, false);
  assert.equal(parsed.problems.length, 1);
});

test('beside a local bus (npm start), offlog flush publishes SliceFlushed there with no bus variable exported', async (t) => {
  const bus = await FakeBus.start(t);
  const env = { ...serverEnv(), OFFLOG_EVENTBRIDGE_PORT: String(bus.port) };
  assert.equal((await offlog(['migrate'], env)).code, 0);
  await drainQueues(rt.config);
  const at = Date.now();
  for (let user = 1; user <= 30; user++) rt.client.log(user, 7, { at });
  assert.equal(await rt.client.flush({ timeoutMs: 10_000 }), true);
  const worked = await offlog(['worker', '--until-idle'], env);
  assert.equal(worked.code, 0, worked.stderr);
  const later = new Date(sliceStartMs((sliceOf(at, rt.config.sliceSeconds) + 3) as SliceId, rt.config.sliceSeconds)).toISOString();
  const flushed = await offlog(['flush', '--now', later, '--force'], env);
  assert.equal(flushed.code, 0, flushed.stderr);
  const slices = bus.accepted('SliceFlushed');
  const ours = slices.find((s) => s.detail.events === 30);
  assert.ok(ours, `a SliceFlushed with the 30 events, got ${JSON.stringify(slices.map((s) => s.detail))}`);
  assert.equal(ours.bus, 'offlog-local');

  // Configured beats found: a bus named in the environment is used as it is, and the mock is not asked.
  const before = bus.calls.length;
  const elsewhere = await offlog(['flush', '--now', later, '--force'], { ...env, OFFLOG_EVENT_BUS: 'somewhere-else' });
  assert.equal(elsewhere.code, 0, elsewhere.stderr);
  assert.equal(bus.calls.length, before);
});
