/**
 * The PHP client and the agent, with real PHP: the PHPUnit suite, and PHP
 * processes logging through a real `offlog agent` (a child process) into
 * gearmand, the worker, memcached and MySQL, counted exactly. Also: the
 * agent stopped, SIGKILLed, gearmand down too, fuzzed frames, and PHP-FPM.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { queryAgent, type AgentStats } from '../lib/send/agent.ts';
import type { SliceId } from '../lib/domain/slice.ts';
import { freePort, gearmand, waitForPort, type Daemon } from './daemons.ts';
import { fastcgiGet } from './fastcgi.ts';
import { Expected, futureSlice, readCounts, startOf, testRuntime } from './support.ts';
import { status } from '../local/status.ts';

const SLICE = 600;
const base = futureSlice(SLICE);
const AT = startOf(base, SLICE) + 1000;
const FLUSH_NOW = new Date(startOf((base + 2) as SliceId, SLICE));
const PHP_DIR = resolve('clients/php');
const REQUESTS_PHP = join(PHP_DIR, 'tests/fixtures/requests.php');
const DATA = join(process.env.OFFLOG_DATA_DIR ?? '.data/test', 'php');
mkdirSync(DATA, { recursive: true });

/** A private directory for one test's sockets and state. */
const scratch = (): string => mkdtempSync(join(DATA, 'run-'));

// ── the agent, as a child process (so it can be SIGKILLed) ──

class AgentProcess {
  readonly lines: string[] = [];
  private constructor(readonly child: ChildProcess, readonly socket: string) {}

  static async start(socket: string, gearman: string, env: Record<string, string> = {}): Promise<AgentProcess> {
    const child = spawn(process.execPath, ['bin/offlog.js', 'agent', '--socket', socket], {
      env: { ...process.env, OFFLOG_GEARMAN_SERVERS: gearman, OFFLOG_LOG_LEVEL: 'info', ...env },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    const a = new AgentProcess(child, socket);
    let partial = '';
    child.stderr!.on('data', (d: Buffer) => {
      const parts = (partial + d.toString()).split('\n');
      partial = parts.pop()!;
      a.lines.push(...parts);
    });
    process.once('exit', () => child.kill('SIGKILL'));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`agent exited ${child.exitCode}:\n${a.lines.join('\n')}`);
      try {
        await queryAgent(socket, 500);
        return a;
      } catch {
        if (Date.now() > deadline) throw new Error(`agent did not start:\n${a.lines.join('\n')}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  stats(): Promise<AgentStats> {
    return queryAgent(this.socket);
  }

  /** Sends a signal and waits for the exit code. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.child.exitCode;
    const exited = new Promise<number | null>((r) => this.child.once('exit', (code) => r(code)));
    this.child.kill(signal);
    return exited;
  }

  /** The log lines (JSON) whose message contains `text`. */
  said(text: string): { msg: string; [k: string]: unknown }[] {
    return this.lines.filter((l) => l.includes(text)).map((l) => JSON.parse(l) as { msg: string });
  }
}

// ── simulated PHP requests ──

interface PhpRun {
  logged: number; sent: number; fallback: number; dropped: number; invalid: number; buffered: number;
  logP50Ns: number; endP50Ns: number; endP99Ns: number; endMaxNs: number;
}

interface RunSpec { procs: number; requests: number; events: number; users: number; socket: string; gearman: string; sleepUs?: number; firstProc?: number }

/** `procs` PHP processes at once; resolves with each one's summed stats. */
async function runPhp(spec: RunSpec): Promise<PhpRun[]> {
  const runs = [];
  for (let p = 0; p < spec.procs; p++) {
    const arg = JSON.stringify({ proc: (spec.firstProc ?? 0) + p, requests: spec.requests, events: spec.events, users: spec.users, at: AT, socket: spec.socket, gearman: spec.gearman, sleepUs: spec.sleepUs ?? 0 });
    runs.push(new Promise<PhpRun>((ok, fail) => {
      const child = spawn('php', [REQUESTS_PHP, arg], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      child.stderr.on('data', (d: Buffer) => (err += d.toString()));
      child.on('exit', (code) => (code === 0 ? ok(JSON.parse(out) as PhpRun) : fail(new Error(`php exited ${code}: ${out}${err}`))));
    }));
  }
  return Promise.all(runs);
}

/** The totals requests.php's events add up to. */
function expectedOf(spec: RunSpec, into = new Expected()): Expected {
  for (let p = 0; p < spec.procs; p++) {
    const proc = (spec.firstProc ?? 0) + p;
    for (let r = 0; r < spec.requests; r++) {
      for (let i = 0; i < spec.events; i++) into.add(startOf(base, SLICE), (proc * 7919 + r) % spec.users, 1 + ((r + i) % 5), 1 + (i % 3));
    }
  }
  return into;
}

const sum = (runs: PhpRun[], k: keyof PhpRun): number => runs.reduce((s, r) => s + r[k], 0);

/** Runs the worker on `g` until idle, flushes, and reads the rows. */
async function countsVia(g: Daemon[], rt: ReturnType<typeof testRuntime>) {
  const worker = rt.worker({}, { gearmanServers: g.map((d) => ({ host: '127.0.0.1', port: d.port })), now: () => AT });
  await worker.run({ idle: true });
  await rt.flush(FLUSH_NOW);
  return readCounts(rt);
}

function totalCount(rows: Map<string, [string, string]>): number {
  let n = 0;
  for (const [count] of rows.values()) n += Number(count);
  return n;
}

async function isolated(t: { after(fn: () => unknown): void }) {
  const g = await gearmand(t);
  await g.start();
  const rt = testRuntime({ OFFLOG_GEARMAN_SERVERS: `127.0.0.1:${g.port}` });
  await rt.store.migrate();
  t.after(() => rt.close());
  return { g, rt, gearman: `127.0.0.1:${g.port}` };
}

// ── the tests ──

test('PHPUnit: the shared vectors and OffLog\\Client against real sockets and gearmand', async (t) => {
  const g = await gearmand(t);
  await g.start();
  const r = spawnSync('phpunit', ['--colors=never'], { cwd: PHP_DIR, env: { ...process.env, OFFLOG_TEST_GEARMAN: `127.0.0.1:${g.port}` }, encoding: 'utf8', timeout: 240_000 });
  assert.equal(r.status, 0, `phpunit failed:\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /OK \(\d+ tests/);
  assert.doesNotMatch(r.stdout, /Skipped|Incomplete|Risky/i, 'every PHP test ran');
});

test('Composer: the package installs from its path (no Packagist) and PSR-4 autoloads OffLog\\Client', async () => {
  const app = scratch();
  writeFileSync(join(app, 'composer.json'), JSON.stringify({
    repositories: [{ type: 'path', url: PHP_DIR, options: { symlink: false } }, { 'packagist.org': false }],
    require: { 'offlog/client': '@dev' }, 'minimum-stability': 'dev',
  }));
  const install = spawnSync('composer', ['install', '--no-interaction', '--no-progress'], { cwd: app, encoding: 'utf8', env: { ...process.env, COMPOSER_ALLOW_SUPERUSER: '1', COMPOSER_HOME: join(app, '.composer') }, timeout: 120_000 });
  assert.equal(install.status, 0, install.stderr);
  const run = spawnSync('php', ['-r', `require 'vendor/autoload.php'; $c = new OffLog\\Client(['agentSocket' => null, 'gearmanServers' => '', 'flushAtShutdown' => false]); $c->log(1, 2); echo json_encode($c->stats());`], { cwd: app, encoding: 'utf8' });
  assert.deepEqual(JSON.parse(run.stdout), { logged: 1, sent: 0, fallback: 0, dropped: 0, invalid: 0, buffered: 1 });
  rmSync(app, { recursive: true, force: true });
});

test('end to end: 8 PHP processes of 1, 3 and 10-event requests through the agent: exact rows, exact agent stats', async (t) => {
  const { g, rt, gearman } = await isolated(t);
  const socket = join(scratch(), 'agent.sock');
  const agent = await AgentProcess.start(socket, gearman);
  t.after(() => agent.stop('SIGKILL'));
  const specs: RunSpec[] = [1, 3, 10].map((events, k) => ({ procs: k === 1 ? 4 : 2, requests: 600, events, users: 500, socket, gearman, firstProc: k * 10 }));
  const runs = (await Promise.all(specs.map(runPhp))).flat();
  const total = specs.reduce((s, x) => s + x.procs * x.requests * x.events, 0);
  // A PHP process that gets ahead of the agent by a socket buffer finds it full and goes straight to gearmand: allowed, and counted.
  assert.deepEqual([sum(runs, 'logged'), sum(runs, 'sent') + sum(runs, 'fallback'), sum(runs, 'dropped')], [total, total, 0]);
  assert.ok(sum(runs, 'sent') > total / 2, `most went through the agent (${sum(runs, 'sent')} of ${total})`);
  const during = await agent.stats();
  assert.equal(during.received, sum(runs, 'sent'), 'the agent received exactly what PHP counted as sent to it');
  // `offlog status` shows the agent's figures.
  const statusRt = testRuntime({ OFFLOG_GEARMAN_SERVERS: gearman, OFFLOG_AGENT_SOCKET: socket });
  const shown = await status(statusRt).finally(() => statusRt.close());
  assert.equal((shown.agent as AgentStats).received, during.received);
  assert.equal(await agent.stop('SIGTERM'), 0, 'a clean drain exits 0');
  const stopped = agent.said('agent stopped')[0] as unknown as { stats: AgentStats };
  assert.deepEqual([stopped.stats.received, stopped.stats.sent, stopped.stats.dropped, stopped.stats.queueDepth], [during.received, during.received, 0, 0]);
  const expected = new Expected();
  for (const s of specs) expectedOf(s, expected);
  assert.deepEqual(await countsVia([g], rt), expected.asStrings());
});

test('agent stopped by SIGTERM mid-run: it drains, PHP falls back to gearmand, totals exact, and the next agent is told', async (t) => {
  const { g, rt, gearman } = await isolated(t);
  const socket = join(scratch(), 'agent.sock');
  const spec: RunSpec = { procs: 3, requests: 400, events: 3, users: 300, socket, gearman };
  const agent = await AgentProcess.start(socket, gearman);
  const first = await runPhp(spec);
  assert.equal(await agent.stop('SIGTERM'), 0);
  const second = await runPhp({ ...spec, firstProc: 3 });
  const total = 2 * 3 * 400 * 3;
  assert.deepEqual([sum(first, 'sent') + sum(first, 'fallback'), sum(second, 'sent'), sum(second, 'fallback'), sum([...first, ...second], 'dropped')], [total / 2, 0, total / 2, 0]);
  assert.equal(agent.said('agent stopped').length, 1);
  assert.equal(agent.said('ended uncleanly').length, 0);
  const expected = expectedOf({ ...spec, procs: 6 });
  assert.deepEqual(await countsVia([g], rt), expected.asStrings());
});

test('agent SIGKILLed mid-stream: the loss is within the stated bound, and reported when it restarts', async (t) => {
  const { g, rt, gearman } = await isolated(t);
  const socket = join(scratch(), 'agent.sock');
  let agent = await AgentProcess.start(socket, gearman, { OFFLOG_AGENT_MAX_HELD: '1000' });
  const spec: RunSpec = { procs: 4, requests: 3000, events: 3, users: 300, socket, gearman, sleepUs: 200 };
  const running = runPhp(spec);
  await new Promise((r) => setTimeout(r, 700));
  const before = await agent.stats();
  assert.ok(before.received > 0, 'the agent was mid-stream');
  assert.equal(await agent.stop('SIGKILL'), null);
  await new Promise((r) => setTimeout(r, 300));
  agent = await AgentProcess.start(socket, gearman, { OFFLOG_AGENT_MAX_HELD: '1000' });
  t.after(() => agent.stop('SIGKILL'));
  const runs = await running;
  const total = 4 * 3000 * 3;
  assert.equal(sum(runs, 'logged'), total);
  assert.equal(sum(runs, 'dropped'), 0);
  assert.ok(sum(runs, 'fallback') > 0, 'while no agent listened PHP went straight to gearmand');
  const report = agent.said('ended uncleanly');
  assert.equal(report.length, 1, agent.lines.join('\n'));
  const lastRun = (await agent.stats()).lastRun!;
  assert.equal(lastRun.upTo, before.lossBound);
  assert.equal(await agent.stop('SIGTERM'), 0);
  const counted = totalCount(await countsVia([g], rt));
  const lost = total - counted;
  assert.ok(lost >= 0 && lost <= lastRun.upTo, `lost ${lost}, bound ${lastRun.upTo}`);
  // Nothing is counted twice: every row is at most what was logged.
  const expected = expectedOf(spec).asStrings();
  for (const [k, [count]] of await readCounts(rt)) assert.ok(Number(count) <= Number(expected.get(k)![0]), k);
  t.diagnostic(`SIGKILL: ${lost} events lost of ${total}; reported bound ${lastRun.upTo}; held at the last checkpoint ${lastRun.held}`);
});

test('gearmand hung behind the agent: the agent stops reading at its bound, PHP falls back to another gearmand, totals exact', async (t) => {
  const { g, rt, gearman } = await isolated(t);
  const slow = await gearmand(t);
  await slow.start();
  const socket = join(scratch(), 'agent.sock');
  const agent = await AgentProcess.start(socket, `127.0.0.1:${slow.port}`, { OFFLOG_AGENT_MAX_HELD: '1000' });
  t.after(() => agent.stop('SIGKILL'));
  slow.pause(); // SIGSTOP: connections stay open, nothing is acknowledged
  t.after(() => slow.resume());
  const spec: RunSpec = { procs: 2, requests: 3000, events: 3, users: 300, socket, gearman };
  const runs = await runPhp(spec);
  const held = await agent.stats();
  const total = 2 * 3000 * 3;
  assert.equal(sum(runs, 'dropped'), 0);
  assert.equal(sum(runs, 'sent') + sum(runs, 'fallback'), total);
  assert.ok(sum(runs, 'fallback') > 0, 'a full socket sent PHP straight to gearmand');
  assert.ok(held.paused && held.pauses >= 1, 'the agent stopped reading');
  assert.ok(held.queueDepth <= held.lossBound, `held ${held.queueDepth}, bound ${held.lossBound}`);
  assert.equal(held.dropped, 0);
  // What the agent did read is all still there: gearmand comes back, the agent drains, nothing is lost.
  slow.resume();
  assert.equal(await agent.stop('SIGTERM'), 0);
  const stopped = agent.said('agent stopped')[0] as unknown as { stats: AgentStats };
  assert.deepEqual([stopped.stats.received, stopped.stats.sent, stopped.stats.dropped], [sum(runs, 'sent'), sum(runs, 'sent'), 0]);
  assert.deepEqual(await countsVia([g, slow], rt), expectedOf(spec).asStrings());
});

test('gearmand down too: every event is a counted drop, and the end of a request stays quick', async () => {
  const dead = await freePort();
  const spec: RunSpec = { procs: 2, requests: 300, events: 3, users: 50, socket: join(scratch(), 'none.sock'), gearman: `127.0.0.1:${dead}` };
  const runs = await runPhp(spec);
  assert.deepEqual([sum(runs, 'logged'), sum(runs, 'dropped'), sum(runs, 'sent'), sum(runs, 'fallback')], [1800, 1800, 0, 0]);
  for (const r of runs) {
    // No connect timeout is waited out (gearmanTimeoutMs is 1 s): refusals come back at once. Loose, for a busy 2-core machine.
    assert.ok(r.endMaxNs < 200_000_000, `slowest end of request ${r.endMaxNs} ns with nothing reachable`);
    assert.ok(r.logP50Ns < 50_000, `log() p50 ${r.logP50Ns} ns`);
  }
});

test('a direct job whose answer came too late is counted once: the retry reuses its unique id', async (t) => {
  const { g, rt } = await isolated(t);
  // A proxy that passes jobs to gearmand at once but holds its answers 600 ms: past PHP's 300 ms timeout,
  // so PHP retries a job gearmand already queued (as a gearmand slow to answer under load does).
  const slowPort = await freePort();
  const proxy = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: g.port });
    client.on('data', (d) => upstream.write(d));
    // Answers are binary packets (\0RES, type, size): only JOB_CREATED (type 8) is held back.
    let buf = Buffer.alloc(0);
    upstream.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      while (buf.length >= 12 && buf.length >= 12 + buf.readUInt32BE(8)) {
        const packet = buf.subarray(0, 12 + buf.readUInt32BE(8));
        buf = buf.subarray(packet.length);
        if (packet.readUInt32BE(4) === 8) setTimeout(() => client.destroyed || client.write(packet), 600);
        else client.write(packet);
      }
    });
    for (const s of [client, upstream]) s.on('error', () => undefined);
    t.after(() => upstream.destroy());
  });
  await new Promise<void>((res) => proxy.listen(slowPort, '127.0.0.1', res));
  t.after(() => proxy.close());
  const page = `require ${JSON.stringify(join(PHP_DIR, 'autoload.php'))};
    $c = new OffLog\\Client(['agentSocket' => null, 'gearmanServers' => '127.0.0.1:${slowPort}', 'gearmanTimeoutMs' => 300, 'flushAtShutdown' => false, 'logger' => fn () => null]);
    for ($i = 0; $i < 4; $i++) $c->log(7, 1, 1, ${AT});
    $c->flush();
    echo json_encode($c->stats());`;
  // Not spawnSync: the proxy runs on this process's event loop.
  const child = spawn('php', ['-r', page], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  assert.equal(await new Promise((res) => child.once('exit', res)), 0);
  assert.equal((JSON.parse(out) as PhpRun).dropped, 4, 'both tries timed out: PHP counts them dropped');
  await new Promise((res) => setTimeout(res, 1000));
  const e = new Expected();
  e.add(startOf(base, SLICE), 7, 1, 1, 4);
  assert.deepEqual(await countsVia([g], rt), e.asStrings(), 'gearmand had the job, once');
});

test('fuzzed frames at the agent: each is named in one log line and counted, and no good event on any connection is lost', async (t) => {
  const { g, rt, gearman } = await isolated(t);
  const socket = join(scratch(), 'agent.sock');
  const agent = await AgentProcess.start(socket, gearman, { OFFLOG_AGENT_MAX_FRAME_BYTES: '4096' });
  t.after(() => agent.stop('SIGKILL'));
  let seed = 12345;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  const good = (u: number) => `{"v":1,"e":[[${u},2,1,${AT}]]}`;
  const bad = [
    () => '{"v":1,"e":[[1,0,1,1]]}', // actionId 0
    () => '{"v":1,"e":[["x",2,1,1]]}', // userId
    () => '{"v":1,"e":[[1,2,-1,1]]}', // value
    () => '{"v":1,"e":[[1,2,1,"soon"]]}', // at
    () => `{"v":1,"e":[[1,2,1,1,"${'x'.repeat(5000)}"]]}`, // over-long frame
    () => '{"v":9,"e":[]}', // version
    () => '{"v":1,"e":[[1,2,1,1],', // truncated JSON
    () => '!{"v":1,"e":[[1,2]]}', // tuple shape
    () => 'GET / HTTP/1.1', // not a frame at all
    () => 'report {"fallback":-1}',
    () => Buffer.from(Array.from({ length: 40 }, () => rand(255) + 1).filter((b) => b !== 10)).toString('latin1'),
  ];
  const connect = () => new Promise<net.Socket>((ok, fail) => {
    const s = net.connect({ path: socket }, () => ok(s));
    s.on('error', fail);
  });
  // Three writers: one sends only good frames, one mixes, one sends junk and leaves mid-frame.
  const [clean, mixed, junk] = await Promise.all([connect(), connect(), connect()]);
  let goodSent = 0;
  let badSent = 0;
  const expected = new Expected();
  for (let i = 0; i < 2000; i++) {
    const u = i % 100;
    clean.write(`${good(u)}\n`);
    expected.add(startOf(base, SLICE), u, 2, 1);
    goodSent++;
    if (i % 4 === 0) {
      mixed.write(`${bad[rand(bad.length)]!()}\n`);
      badSent++;
    } else {
      mixed.write(`${good(u)}\n`);
      expected.add(startOf(base, SLICE), u, 2, 1);
      goodSent++;
    }
    // Random bytes split at random points: frames in pieces across writes.
    const junkFrame = `${bad[rand(bad.length)]!()}\n`;
    const cut = rand(junkFrame.length);
    junk.write(junkFrame.slice(0, cut));
    junk.write(junkFrame.slice(cut));
    badSent++;
  }
  junk.write('{"v":1,"e":[[1,2,1,'); // and leaves mid-frame
  await new Promise((r) => setTimeout(r, 300));
  junk.destroy();
  clean.end();
  mixed.end();
  await new Promise((r) => setTimeout(r, 300));
  const s = await agent.stats();
  const rejected = s.rejected.frames + s.rejected.overlong + s.rejected.unknown;
  assert.equal(s.received, goodSent, 'every good event arrived');
  assert.equal(rejected, badSent, 'every bad frame counted once');
  assert.equal(s.rejected.cutMidFrame, 1);
  const warned = agent.said('bad frame');
  assert.equal(warned.length, badSent + 1, 'one log line per bad frame');
  assert.ok(warned.some((w) => w.msg.includes('actionId')) && warned.some((w) => w.msg.includes('value')) && warned.some((w) => w.msg.includes('longer than')));
  assert.equal(await agent.stop('SIGTERM'), 0);
  assert.deepEqual(await countsVia([g], rt), expected.asStrings());
});

test('PHP-FPM: the response is complete before the client sends (fastcgi_finish_request), and the events arrive', async (t) => {
  const { gearman } = await isolated(t);
  const dir = scratch();
  const socket = join(dir, 'agent.sock');
  const agent = await AgentProcess.start(socket, gearman);
  t.after(() => agent.stop('SIGKILL'));
  const port = await freePort();
  const conf = join(dir, 'fpm.conf');
  writeFileSync(conf, [
    '[global]', `pid = ${join(dir, 'fpm.pid')}`, `error_log = ${join(dir, 'fpm.log')}`, 'daemonize = no',
    '[offlog]', `listen = 127.0.0.1:${port}`, 'pm = static', 'pm.max_children = 2', 'clear_env = no', 'catch_workers_output = yes',
    ...(process.getuid?.() === 0 ? ['user = root', 'group = root'] : []),
  ].join('\n'));
  const script = join(dir, 'page.php');
  // The page logs 5 events and answers; a shutdown function registered after the client's then sleeps 1.5 s.
  writeFileSync(script, `<?php
require ${JSON.stringify(join(PHP_DIR, 'autoload.php'))};
$c = new OffLog\\Client(['agentSocket' => ${JSON.stringify(socket)}, 'gearmanServers' => ${JSON.stringify(gearman)}]);
for ($i = 0; $i < 5; $i++) $c->log(100 + $i, 3, 1, ${AT});
register_shutdown_function(function () use ($c) { usleep(1500000); file_put_contents(${JSON.stringify(join(dir, 'after.json'))}, json_encode($c->stats())); });
echo "page done";
`);
  const fpmBin = ['php-fpm', 'php-fpm8.2'].find((b) => spawnSync('sh', ['-c', `command -v ${b}`]).status === 0);
  assert.ok(fpmBin, 'php-fpm is installed (local/services.sh installs it)');
  const fpm = spawn(fpmBin, ['-y', conf, '-F', ...(process.getuid?.() === 0 ? ['-R'] : [])], { stdio: 'ignore' });
  // SIGTERM, not SIGKILL: the master then stops its workers too (a killed master leaves them running).
  t.after(async () => {
    if (fpm.exitCode !== null || fpm.signalCode !== null) return;
    const exited = new Promise((res) => fpm.once('exit', res));
    fpm.kill('SIGTERM');
    await exited;
  });
  process.once('exit', () => fpm.kill('SIGTERM'));
  await waitForPort(port, 'php-fpm');
  const res = await fastcgiGet(port, script);
  assert.match(res.stdout, /page done$/);
  assert.equal(res.appStatus, 0);
  assert.ok(res.endedAfterMs < 1000, `the response ended after ${res.endedAfterMs} ms, before the 1.5 s shutdown work: fastcgi_finish_request ran`);
  // The agent got the events after the response ended, while the page was still in its shutdown sleep.
  const deadline = Date.now() + 1200;
  let got = 0;
  while (Date.now() < deadline && (got = (await agent.stats()).received) < 5) await new Promise((r) => setTimeout(r, 20));
  assert.equal(got, 5);
  // The page's last shutdown function writes what the client counted once its sleep is over.
  const after = join(dir, 'after.json');
  for (let i = 0; i < 100 && !existsSync(after); i++) await new Promise((r) => setTimeout(r, 100));
  assert.deepEqual(JSON.parse(readFileSync(after, 'utf8')), { logged: 5, sent: 5, fallback: 0, dropped: 0, invalid: 0, buffered: 0 });
  rmSync(dir, { recursive: true, force: true });
});
