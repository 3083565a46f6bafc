/**
 * The deployable artifacts, proven outside the repo: `osls package` once,
 * each function's zip unzipped into a temporary folder far from any
 * node_modules, its handler loaded by plain `node` (no tsx) and invoked with
 * the event Lambda would give it, against the test servers:
 *   ingest ← an API Gateway HTTP API (payload v2) request → 202, a job queued;
 *   worker ← two pollers whose context runs out → the queue drained, both back before their deadline;
 *   flush  ← an EventBridge Scheduled Event → the rows, exactly.
 * The secrets come the deployed way: the token from SSM, the MySQL URL from
 * Secrets Manager, through the bundled AWS SDK against a local stand-in.
 * Also `osls invoke local -f ingest --data …`, as the README shows it.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { OffLogClient } from '../lib/send/client.ts';
import { sliceOf } from '../lib/domain/slice.ts';
import { adminStatus } from '../lib/wire/gearman.ts';
import { FN_BATCH } from '../lib/domain/contract.ts';
import { fakeAws, type FakeAws } from './fake-aws.ts';
import { cleanEnv, oslsPackage, run } from './osls.ts';
import { drainQueues, readCounts, testRuntime } from './support.ts';

const SLICE = 2;
const TOKEN = 'artifact-token-0123456789';
const rt = testRuntime({ OFFLOG_SLICE_SECONDS: String(SLICE), OFFLOG_RING_SLICES: '60' });
/** The functions invoked here; every function's zip is checked for what it holds and its size. */
const FUNCTIONS = ['ingest', 'worker', 'flush'] as const;
const ALL_FUNCTIONS = ['ingest', 'worker', 'flush', 'watched', 'rollup', 'report', 'prune'] as const;
const work = mkdtempSync(join(tmpdir(), 'offlog-artifact-'));
let aws: FakeAws;
const zipSizes: Record<string, number> = {};
/** Each function's environment as the CloudFormation template sets it. */
const functionEnv: Record<string, Record<string, string>> = {};

before(async () => {
  assert.ok(!work.startsWith(process.cwd()), 'the artifacts are tried outside the repo');
  await drainQueues(rt.config);
  await rt.store.migrate();
  const db = new URL(rt.config.mysqlUrl);
  aws = await fakeAws({
    parameters: { '/offlog/test/ingest-token': TOKEN },
    // The shape RDS writes into a managed secret.
    secrets: { 'offlog/test/mysql': JSON.stringify({ engine: 'mysql', username: db.username, password: decodeURIComponent(db.password), host: db.hostname, port: Number(db.port), dbname: db.pathname.slice(1) }) },
  });
  // Packaged with the settings of a deployment that keeps its secrets in SSM and Secrets Manager.
  const c = rt.config;
  await oslsPackage(join(work, 'package'), {
    OFFLOG_GEARMAN_SERVERS: c.gearmanServers.map((s) => `${s.host}:${s.port}`).join(','),
    OFFLOG_MEMCACHED_SERVERS: c.memcachedServers.map((s) => `${s.host}:${s.port}`).join(','),
    OFFLOG_MYSQL_URL_SECRET: 'offlog/test/mysql',
    OFFLOG_INGEST_TOKEN_PARAMETER: '/offlog/test/ingest-token',
    OFFLOG_SLICE_SECONDS: String(c.sliceSeconds),
    OFFLOG_RING_SLICES: String(c.ringSlices),
    OFFLOG_KEY_PREFIX: c.keyPrefix,
    OFFLOG_TABLE_PREFIX: c.tablePrefix,
    OFFLOG_LOG_LEVEL: 'warn',
  });
  const template = JSON.parse(readFileSync(join(work, 'package', 'cloudformation-template-update-stack.json'), 'utf8')) as {
    Resources: Record<string, { Properties: { Environment: { Variables: Record<string, string> } } }>;
  };
  for (const fn of ALL_FUNCTIONS) {
    const zip = join(work, 'package', `${fn}.zip`);
    zipSizes[fn] = statSync(zip).size;
    mkdirSync(join(work, fn));
    const unzip = await run('unzip', ['-q', zip, '-d', join(work, fn)]);
    assert.equal(unzip.code, 0, unzip.stderr);
  }
  for (const fn of FUNCTIONS) functionEnv[fn] = template.Resources[`${fn[0]!.toUpperCase()}${fn.slice(1)}LambdaFunction`]!.Properties.Environment.Variables;
  // What the Lambda runtime does, reduced: load the handler, call it with (event, context), print the answer.
  writeFileSync(join(work, 'invoke.cjs'), `
const [dir, fn, remainingMs] = process.argv.slice(2);
const { handler } = require(require('node:path').join(dir, 'handlers', fn + '.cjs'));
const deadline = Date.now() + Number(remainingMs);
const context = { functionName: 'offlog-local-' + fn, awsRequestId: require('node:crypto').randomUUID(), callbackWaitsForEmptyEventLoop: true,
  getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()) };
let input = '';
process.stdin.on('data', (c) => (input += c)).on('end', async () => {
  const started = Date.now();
  try {
    const result = await handler(JSON.parse(input), context);
    process.stdout.write(JSON.stringify({ result, ms: Date.now() - started }));
    process.exit(0);
  } catch (err) {
    process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }));
    process.exit(1);
  }
});
`);
});

after(async () => {
  rmSync(work, { recursive: true, force: true });
  await aws?.close();
  await rt.close();
});

/** Invokes an unzipped function with plain node, from its own folder, with the environment its template gives it. */
async function invoke(fn: (typeof FUNCTIONS)[number], event: unknown, remainingMs = 10_000): Promise<{ result: any; ms: number }> {
  const env = { PATH: process.env.PATH!, ...aws.env, ...functionEnv[fn] };
  const r = await run('node', [join(work, 'invoke.cjs'), join(work, fn), fn, String(remainingMs)], { cwd: join(work, fn), env, input: JSON.stringify(event), timeoutMs: remainingMs + 20_000 });
  assert.equal(r.code, 0, `${fn} failed:\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout) as { result: any; ms: number };
}

const queued = async (): Promise<number> => (await adminStatus(rt.config.gearmanServers[0]!)).get(FN_BATCH)?.queued ?? 0;

function httpApiEvent(body: string, token: string) {
  const now = Date.now();
  return {
    version: '2.0', routeKey: 'POST /events', rawPath: '/events', rawQueryString: '',
    headers: { accept: '*/*', authorization: `Bearer ${token}`, 'content-length': String(Buffer.byteLength(body)), 'content-type': 'application/json', host: 'abc123.execute-api.eu-west-1.amazonaws.com', 'user-agent': 'curl/8.5.0', 'x-forwarded-for': '203.0.113.7', 'x-forwarded-port': '443', 'x-forwarded-proto': 'https' },
    requestContext: {
      accountId: '123456789012', apiId: 'abc123', domainName: 'abc123.execute-api.eu-west-1.amazonaws.com', domainPrefix: 'abc123',
      http: { method: 'POST', path: '/events', protocol: 'HTTP/1.1', sourceIp: '203.0.113.7', userAgent: 'curl/8.5.0' },
      requestId: randomUUID(), routeKey: 'POST /events', stage: '$default', time: new Date(now).toUTCString(), timeEpoch: now,
    },
    // HTTP APIs base64-encode bodies they do not take for text.
    body: Buffer.from(body).toString('base64'), isBase64Encoded: true,
  };
}

test('each zip holds only its bundled JavaScript and source map, under 1 MB', async () => {
  const zips = readdirSync(join(work, 'package')).filter((f) => f.endsWith('.zip')).sort();
  assert.deepEqual(zips, ALL_FUNCTIONS.map((fn) => `${fn}.zip`).sort(), 'one zip per function, and no other');
  for (const fn of ALL_FUNCTIONS) {
    const files = readdirSync(join(work, fn), { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).map((d) => join(d.parentPath, d.name).slice(join(work, fn).length + 1)).sort();
    assert.deepEqual(files, [`handlers/${fn}.cjs`, `handlers/${fn}.cjs.map`]);
    assert.ok(zipSizes[fn]! <= 1024 * 1024, `${fn}.zip is ${zipSizes[fn]} bytes`);
  }
  // The folder cannot reach the repo's packages: a bundle that needed one would fail below.
  const probe = await run('node', ['-e', "require.resolve('mysql2')"], { cwd: join(work, 'flush'), env: { PATH: process.env.PATH! } });
  assert.notEqual(probe.code, 0, 'mysql2 resolves from the artifact folder');
});

const expected = new Map<string, [number, number]>();
const count = (user: number | string, action: number, value = 0) => {
  const k = `${user}:${action}`;
  const cur = expected.get(k) ?? [0, 0];
  expected.set(k, [cur[0] + 1, cur[1] + value]);
};
let lastEventAt = 0;

test('ingest: an HTTP API v2 request gets 202 and queues one job; a wrong token gets 401 and queues none', async () => {
  const body = JSON.stringify({ events: [{ userId: 7, actionId: 1, value: 5 }, { userId: 7, actionId: 1 }, { userId: '18446744073709551615', actionId: 2, value: 3 }] });
  const { result } = await invoke('ingest', httpApiEvent(body, TOKEN));
  lastEventAt = Date.now();
  assert.equal(result.statusCode, 202, JSON.stringify(result));
  assert.deepEqual(JSON.parse(result.body), { accepted: 3 });
  count(7, 1, 5);
  count(7, 1);
  count('18446744073709551615', 2, 3);
  assert.equal(await queued(), 1);

  const denied = await invoke('ingest', httpApiEvent(body, 'not-the-token-0000000000'));
  assert.equal(denied.result.statusCode, 401, 'the token read from SSM is enforced');
  assert.equal(await queued(), 1);
});

test('worker: two pollers whose time runs out drain the queue between them and return before their deadline', async () => {
  // Twenty more jobs from the SDK, so that there is something to share.
  const client = new OffLogClient({ servers: rt.config.gearmanServers, logger: rt.log });
  for (let j = 0; j < 20; j++) {
    for (let i = 0; i < 50; i++) {
      client.log(100 + i, 1 + (j % 3), { value: j });
      count(100 + i, 1 + (j % 3), j);
    }
    assert.equal(await client.flush({ timeoutMs: 10_000 }), true);
  }
  await client.close();
  lastEventAt = Date.now();
  assert.equal(await queued(), 21);

  const REMAINING_MS = 8000;
  const pollers = await Promise.all([1, 2].map((poller) => invoke('worker', { poller }, REMAINING_MS)));
  // A worker counts an event into the slice it receives it in: on a loaded machine (two cold
  // starts) that can be seconds after it was logged, so the flush below waits from here.
  lastEventAt = Date.now();
  for (const { ms } of pollers) assert.ok(ms < REMAINING_MS, `a poller returned after ${ms} ms of its ${REMAINING_MS}`);
  assert.equal(pollers.reduce((n, p) => n + p.result.jobs, 0), 21);
  assert.equal(pollers.reduce((n, p) => n + p.result.events, 0), 3 + 20 * 50);
  assert.equal(await queued(), 0);
});

test('flush: an EventBridge Scheduled Event writes every finished slice, exactly', async () => {
  // The event's time is "now"; wait until the events' slice is two behind it, as the schedule would.
  const due = (sliceOf(lastEventAt, SLICE) + 2) * SLICE * 1000 + 1000;
  await new Promise((r) => setTimeout(r, Math.max(0, due - Date.now())));
  const time = new Date(Math.floor(Date.now() / 1000) * 1000).toISOString().replace('.000Z', 'Z');
  const event = {
    version: '0', id: randomUUID(), 'detail-type': 'Scheduled Event', source: 'aws.events', account: '123456789012', time, region: 'eu-west-1',
    resources: ['arn:aws:events:eu-west-1:123456789012:rule/offlog-local-FlushEventsRuleSchedule1-ABCDEF'], detail: {},
  };
  const { result } = await invoke('flush', event);
  assert.equal(result.ran, true, JSON.stringify(result));
  assert.equal(result.now, new Date(time).toISOString());

  const totals = new Map<string, [number, number]>();
  for (const [key, [c, v]] of await readCounts(rt)) {
    const k = key.split(':').slice(1).join(':');
    const cur = totals.get(k) ?? [0, 0];
    totals.set(k, [cur[0] + Number(c), cur[1] + Number(v)]);
  }
  assert.deepEqual(totals, expected);
  // Each process above was a cold start: 2 ingest, 2 worker, 1 flush. Only ingest reads the token.
  assert.equal(aws.calls.filter((c) => c === 'secretsmanager:offlog/test/mysql').length, 5);
  assert.equal(aws.calls.filter((c) => c === 'ssm:/offlog/test/ingest-token').length, 2);
});

test('osls invoke local -f ingest --data \'{"userId":1,"actionId":2}\' answers 202 and queues the event', async () => {
  await drainQueues(rt.config);
  const r = await run('node_modules/.bin/osls', ['invoke', 'local', '-f', 'ingest', '--data', '{"userId":1,"actionId":2}'], {
    env: cleanEnv({ OFFLOG_GEARMAN_SERVERS: rt.config.gearmanServers.map((s) => `${s.host}:${s.port}`).join(','), OFFLOG_LOG_LEVEL: 'warn' }),
    timeoutMs: 60_000,
  });
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  const answer = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as { statusCode: number; body: string };
  assert.equal(answer.statusCode, 202);
  assert.deepEqual(JSON.parse(answer.body), { accepted: 1 });
  assert.equal(await queued(), 1);
  await drainQueues(rt.config);
});
