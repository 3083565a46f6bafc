/**
 * The README's first screen, run as written: the commands in its code blocks
 * before the first `##` heading. `npm install && npm start` is started as a
 * person would (and stopped with Ctrl-C, SIGINT, at the end); `npm test` is
 * skipped, being what runs this test; every command of the second block then
 * runs in a shell, one after another, as a person types them (a second
 * apart). Against the test servers: the environment says where they are and
 * gives this run its own tables, keys and free ports for serverless-offline,
 * as `npm test` gives every test; the commands themselves are not changed,
 * except `localhost:3000` for the free HTTP port.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { sleep } from '../lib/base/backoff.ts';
import { freePort, untilOutput } from './daemons.ts';
import { REPO } from './osls.ts';

/** The code blocks of the README's first screen, each a list of commands without their comments. */
export function firstScreenCommands(readme: string): string[][] {
  const screen = readme.split(/^## /m)[0]!;
  return [...screen.matchAll(/^```sh\n([\s\S]*?)^```/gm)].map((m) =>
    m[1]!.split('\n').map((line) => line.replace(/\s{2,}#.*$/, '').trim()).filter((line) => line !== '' && !line.startsWith('#')),
  );
}

interface Ran { code: number | null; stdout: string; stderr: string }

function shell(command: string, env: NodeJS.ProcessEnv): Promise<Ran> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', command], { cwd: REPO, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('the README first screen: two blocks, the start and test commands first', () => {
  const blocks = firstScreenCommands(readFileSync(join(REPO, 'README.md'), 'utf8'));
  assert.equal(blocks.length, 2, JSON.stringify(blocks));
  assert.deepEqual(blocks[0], ['npm install && npm start', 'npm test']);
  assert.ok(blocks[1]!.length >= 3);
});

test('every command of the README first screen works as written against the test servers', { timeout: 600_000 }, async (t) => {
  const [start, session] = firstScreenCommands(readFileSync(join(REPO, 'README.md'), 'utf8')) as [string[], string[]];
  const id = randomBytes(3).toString('hex');
  const [http, lambda, websocket, alb, bus, mqtt] = await Promise.all([1, 2, 3, 4, 5, 6].map(() => freePort()));
  const env: NodeJS.ProcessEnv = {
    ...process.env, // npm test's: where the test servers are (OFFLOG_*_SERVERS, OFFLOG_MYSQL_URL, OFFLOG_*_PORT, OFFLOG_DATA_DIR)
    OFFLOG_TABLE_PREFIX: `readme${id}_`, OFFLOG_KEY_PREFIX: `readme${id}:`, OFFLOG_LOG_LEVEL: 'warn',
    OFFLOG_HTTP_PORT: String(http), OFFLOG_LAMBDA_PORT: String(lambda), OFFLOG_WEBSOCKET_PORT: String(websocket), OFFLOG_ALB_PORT: String(alb),
    OFFLOG_EVENTBRIDGE_PORT: String(bus), OFFLOG_EVENTBRIDGE_MQTT_PORT: String(mqtt),
  };
  // The second terminal: where the servers are, nothing about the bus (the CLI is to find npm start's).
  const terminal: NodeJS.ProcessEnv = { ...env };
  delete terminal.OFFLOG_EVENT_BUS;
  delete terminal.OFFLOG_EVENTBRIDGE_ENDPOINT;

  // Block one: `npm install && npm start` runs until Ctrl-C; `npm test` is this very run.
  assert.equal(start[1], 'npm test');
  const npmStart: ChildProcess = spawn('bash', ['-c', start[0]!], { cwd: REPO, env, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  const stop = () => {
    if (npmStart.pid && npmStart.exitCode === null && npmStart.signalCode === null) process.kill(-npmStart.pid, 'SIGINT');
  };
  process.once('exit', stop);
  t.after(async () => {
    stop();
    if (npmStart.exitCode === null && npmStart.signalCode === null) await new Promise((r) => npmStart.once('exit', r));
  });
  const output = await untilOutput(npmStart, 'Server ready', 240_000, 'npm start');
  assert.match(output(), /OffLog is running\./);

  // Block two, a command at a time.
  const results: Ran[] = [];
  for (const command of session) {
    await sleep(1000);
    const ran = await shell(command.replaceAll('localhost:3000', `localhost:${http}`), terminal);
    assert.equal(ran.code, 0, `${command}\n${ran.stdout}\n${ran.stderr}`);
    results.push(ran);
  }
  const byStart = (prefix: string): Ran => results[session.findIndex((c) => c.startsWith(prefix))]!;
  assert.equal(byStart('curl').stdout, '{"accepted":1}');
  const flushed = JSON.parse(byStart('npx offlog flush').stdout) as { ran: boolean; published: { published: number } };
  assert.equal(flushed.ran, true);
  assert.ok(flushed.published.published >= 1, `the flush published on npm start's bus: ${JSON.stringify(flushed.published)}`);
  assert.match(byStart('npx offlog report top').stdout, /^\s*1\s+42\s+1\s+5$/m);
  assert.match(byStart('npx offlog status').stdout, /^OK: every server is up/m);

  // "Then open http://localhost:3000/": the dashboard answers.
  const page = await fetch(`http://localhost:${http}/`);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /<html/i);
});
