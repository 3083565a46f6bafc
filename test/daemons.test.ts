/**
 * The test daemon helper: it refuses a port something already listens on
 * (so a test never talks to an orphan of an earlier run), and what a test
 * started is stopped when the test fails, even when its process just exits.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { test } from 'node:test';
import { sleep } from '../lib/base/backoff.ts';
import { Daemon, portInUse } from './daemons.ts';

test('a daemon refuses to start on a port already in use, naming the port', async (t) => {
  const squatter = net.createServer();
  await new Promise<void>((r) => squatter.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => squatter.close(r)));
  const { port } = squatter.address() as net.AddressInfo;
  const d = new Daemon('memcached', port, () => ['memcached', '-u', 'root', '-l', '127.0.0.1', '-p', String(port), '-U', '0']);
  t.after(() => d.kill());
  await assert.rejects(d.start(), (err: Error) => err.message.includes(`port ${port}`) && /already in use/.test(err.message));
  assert.equal(d.pid, undefined, 'nothing was started');
});

/** Alive: the process exists and is not a zombie waiting to be reaped. */
function alive(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z';
  } catch {
    return false;
  }
}

for (const how of ['throw', 'exit'] as const) {
  test(`a test that fails (${how === 'throw' ? 'its body throws' : 'its process exits mid-test'}) leaves no daemon behind`, async (t) => {
    // Its own process group, so that if the helper let the daemon keep the child alive, both go at the deadline.
    const child = spawn(process.execPath, ['--import', 'tsx', 'test/fixtures/failing-daemon-test.ts', how], { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    t.after(killGroup);
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    const deadline = setTimeout(killGroup, 30_000);
    const [code, signal] = await new Promise<[number | null, string | null]>((r) => child.once('exit', (c, s) => r([c, s])));
    clearTimeout(deadline);
    assert.equal(signal, null, 'the child test ended by itself (a daemon kept it running until it was killed)');
    assert.notEqual(code, 0, 'the child test failed');
    const m = /DAEMON_PID=(\d+) PORT=(\d+)/.exec(stderr);
    assert.ok(m, `the child started a memcached: ${stderr}`);
    const [pid, port] = [Number(m[1]), Number(m[2])];
    // A killed daemon is reaped by whoever inherits it: allow a moment.
    for (let i = 0; i < 40 && alive(pid); i++) await sleep(50);
    const survived = alive(pid);
    if (survived) process.kill(pid, 'SIGKILL'); // and not leave it behind ourselves
    assert.equal(survived, false, `memcached ${pid} outlived its test`);
    assert.equal(await portInUse(port), false, `port ${port} still answers`);
  });
}
