/**
 * The one helper for daemons a test owns: its own gearmand or memcached on a
 * free loopback port, killed and restarted at will, and a TCP proxy to cut a
 * connection to a real server mid-stream.
 *
 * A daemon is stopped by PID when its test ends, pass or fail (`t.after`),
 * and any still running when the process exits is killed then: a failed run
 * must not leave a server for the next run to talk to. For the same reason a
 * daemon refuses to start on a port something already listens on.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { sleep } from '../lib/base/backoff.ts';

const DATA = join(process.env.OFFLOG_DATA_DIR ?? '.data/test', 'faults');

/**
 * What owns a daemon and stops it when done: a node:test TestContext (its
 * `after`), or a Cleanup for code that runs outside node:test (the chaos run).
 */
export interface Scope {
  after(fn: () => unknown): void;
}

/** A Scope outside node:test: `run()` calls every registered stop, newest first, errors ignored. */
export class Cleanup implements Scope {
  private readonly fns: (() => unknown)[] = [];
  after(fn: () => unknown): void {
    this.fns.push(fn);
  }
  async run(): Promise<void> {
    for (const fn of this.fns.splice(0).reverse()) await Promise.resolve().then(fn).catch(() => undefined);
  }
}

/** Every child started here and not yet reaped: killed on exit whatever happened. */
const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

/** A port nothing listens on now (the kernel's pick). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((r) => server.close(r));
  return port;
}

export async function portInUse(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

export class Daemon {
  private child: ChildProcess | undefined;
  constructor(readonly name: string, readonly port: number, private readonly argv: () => string[]) {}

  /** The running daemon's PID, if one runs. */
  get pid(): number | undefined {
    const c = this.child;
    return c && c.exitCode === null && c.signalCode === null ? c.pid : undefined;
  }

  async start(): Promise<void> {
    if (await portInUse(this.port)) {
      throw new Error(`${this.name}: port ${this.port} is already in use; an orphan from an earlier run? (ss -ltnp 'sport = :${this.port}' names it)`);
    }
    const [cmd, ...args] = this.argv();
    const child = spawn(cmd!, args, { stdio: 'ignore' });
    this.child = child;
    live.add(child);
    child.once('exit', () => live.delete(child));
    await waitForPort(this.port, `${this.name} on ${this.port}`);
  }

  /** SIGKILL: no chance to tidy up, like a crash. */
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }

  /** SIGSTOP: the daemon keeps its connections but answers nothing, like a hung server. */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  /** SIGCONT after pause(). */
  resume(): void {
    this.child?.kill('SIGCONT');
  }

  async restart(): Promise<void> {
    await this.kill();
    await this.start();
  }
}

/** A gearmand of the test's own (persistent sqlite queue), on a free port; stopped when the test ends. */
export async function gearmand(t: Scope): Promise<Daemon> {
  const port = await freePort();
  const dir = join(DATA, `gearmand-${port}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'empty.conf'), '');
  const d = new Daemon('gearmand', port, () => [
    'gearmand', `--config-file=${join(dir, 'empty.conf')}`, '--listen=127.0.0.1', `--port=${port}`,
    '--queue-type=libsqlite3', `--libsqlite3-db=${join(dir, 'queue.sqlite')}`, '--hashtable-buckets=100003',
    '--log-file=stderr', '--verbose=ERROR',
  ]);
  t.after(() => d.kill());
  return d;
}

/** A memcached of the test's own, on a free port (256 MB unless told); stopped when the test ends. */
export async function memcached(t: Scope, megabytes = 256): Promise<Daemon> {
  const port = await freePort();
  const d = new Daemon('memcached', port, () => ['memcached', '-u', 'root', '-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', String(megabytes)]);
  t.after(() => d.kill());
  return d;
}

export async function waitForPort(port: number, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await portInUse(port))) {
    if (Date.now() > deadline) throw new Error(`${what} did not start within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/**
/**
 * How a Proxy slows the server's replies (a latency proxy): they are passed on
 * in pieces of `chunkBytes`, each `delayMs` after the one before, as from a
 * server that is slow but keeps answering.
 */
export interface SlowReplies {
  delayMs: number;
  chunkBytes: number;
}

export interface ProxyOptions {
  /** Replies may be held `latencyMs` (set at any time) before they are passed on. */
  latency?: boolean;
  /** The first `latencyMs` (implies `latency`). */
  latencyMs?: number;
  /** Replies trickle through in pieces (see SlowReplies). */
  slow?: SlowReplies;
}

/**
 * A TCP proxy on a free port in front of a real server: `cut()` drops every
 * connection and refuses new ones until `heal()`. Requests always go through
 * at once, so the server still does the work when it would; only replies are
 * slowed (see ProxyOptions).
 */
export class Proxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  /** Delay added to every reply from now on (ms), with `latency`. */
  latencyMs = 0;
  private constructor(readonly port: number, private readonly target: number, private readonly options: ProxyOptions) {}

  static async start(t: Scope, target: number, options: ProxyOptions = {}): Promise<Proxy> {
    const p = new Proxy(await freePort(), target, options);
    p.latencyMs = options.latencyMs ?? 0;
    await p.start();
    t.after(() => p.cut());
    return p;
  }

  private async start(): Promise<void> {
    this.server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: this.target });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream);
      if (this.options.slow) this.trickle(upstream, client, this.options.slow);
      else if (this.options.latency || this.options.latencyMs !== undefined) this.delay(upstream, client);
      else upstream.pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => this.server!.listen(this.port, '127.0.0.1', r));
  }

  /** Each reply leaves `latencyMs` after it came, never before the one before it. */
  private delay(from: net.Socket, to: net.Socket): void {
    let sent = Promise.resolve();
    from.on('data', (chunk: Buffer) => {
      const due = Date.now() + this.latencyMs;
      sent = sent.then(() => (this.latencyMs > 0 ? sleep(due - Date.now()) : undefined)).then(() => {
        if (!to.destroyed) to.write(chunk);
      });
    });
  }

  /** Passes `from`'s bytes on to `to` in pieces of chunkBytes, one every delayMs, in order. */
  private trickle(from: net.Socket, to: net.Socket, slow: SlowReplies): void {
    const queue: Buffer[] = [];
    let pumping = false;
    const pump = async (): Promise<void> => {
      pumping = true;
      while (queue.length > 0 && !to.destroyed) {
        await sleep(slow.delayMs);
        to.write(queue.shift()!);
      }
      pumping = false;
    };
    from.on('data', (chunk: Buffer) => {
      for (let o = 0; o < chunk.length; o += slow.chunkBytes) queue.push(chunk.subarray(o, o + slow.chunkBytes));
      if (!pumping) void pump();
    });
  }

  async cut(): Promise<void> {
    // close() only calls back once every connection is gone, so destroy them first.
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  }

  heal(): Promise<void> {
    return this.start();
  }
}

/**
 * `osls offline start` on free ports with `env` on top of this process's
 * environment (schedules pushed a day out so none fires mid-test); resolves
 * once it serves, with its HTTP and Lambda ports, what it has printed so far
 * (`output()`) and `stop()` (kills its whole process group; also done on exit
 * if the caller never gets to it).
 */
export async function serverlessOffline(env: Record<string, string>): Promise<{ httpPort: number; lambdaPort: number; stop: () => void; output: () => string }> {
  const [httpPort, lambdaPort, websocketPort, albPort] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const child = spawn('node_modules/.bin/osls', ['offline', 'start'], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      OFFLOG_HTTP_PORT: String(httpPort), OFFLOG_LAMBDA_PORT: String(lambdaPort), OFFLOG_WEBSOCKET_PORT: String(websocketPort), OFFLOG_ALB_PORT: String(albPort),
      // The local bus (mock PutEvents and its MQTT broker) on free ports too.
      OFFLOG_EVENTBRIDGE_PORT: String(await freePort()), OFFLOG_EVENTBRIDGE_MQTT_PORT: String(await freePort()),
      OFFLOG_FLUSH_SCHEDULE: 'rate(1 day)', OFFLOG_PRUNE_SCHEDULE: 'rate(1 day)',
      ...env,
    },
  });
  live.add(child);
  child.once('exit', () => live.delete(child));
  const stop = () => {
    if (child.pid && child.exitCode === null && child.signalCode === null) process.kill(-child.pid, 'SIGTERM');
  };
  process.once('exit', stop);
  const output = await untilOutput(child, 'Server ready', 60_000, 'serverless-offline');
  return { httpPort, lambdaPort, stop, output };
}

/**
 * Waits until a child's stdout or stderr holds `marker`; rejects when it exits first or
 * `timeoutMs` passes, with what it printed. Returns a reader of everything printed so far.
 */
export function untilOutput(child: ChildProcess, marker: string, timeoutMs: number, what: string): Promise<() => string> {
  let output = '';
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not get ready in ${timeoutMs / 1000} s:\n${output}`)), timeoutMs);
    const watch = (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes(marker)) {
        clearTimeout(timer);
        resolve(() => output);
      }
    };
    child.stdout!.on('data', watch);
    child.stderr!.on('data', watch);
    child.once('exit', (code) => reject(new Error(`${what} exited ${code}:\n${output}`)));
  });
}
