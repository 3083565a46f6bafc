/**
 * Daemons a fault test owns: its own gearmand or memcached on a port of its
 * own, killed and restarted at will, and a TCP proxy to cut a connection to a
 * real server mid-stream. Only loopback; everything is stopped by PID.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { sleep } from '../lib/backoff.ts';

const DATA = join(process.env.OFFLOG_DATA_DIR ?? '.data/test', 'faults');

export class Daemon {
  private child: ChildProcess | undefined;
  constructor(readonly name: string, readonly port: number, private readonly argv: () => string[]) {}

  async start(): Promise<void> {
    const [cmd, ...args] = this.argv();
    this.child = spawn(cmd!, args, { stdio: 'ignore' });
    await waitForPort(this.port, `${this.name} on ${this.port}`);
  }

  /** SIGKILL: no chance to tidy up, like a crash. */
  async kill(): Promise<void> {
    const c = this.child;
    if (!c || c.exitCode !== null) return;
    const exited = new Promise((r) => c.once('exit', r));
    c.kill('SIGKILL');
    await exited;
  }

  async restart(): Promise<void> {
    await this.kill();
    await this.start();
  }
}

export function gearmand(port: number): Daemon {
  const dir = join(DATA, `gearmand-${port}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'empty.conf'), '');
  return new Daemon('gearmand', port, () => [
    'gearmand', `--config-file=${join(dir, 'empty.conf')}`, '--listen=127.0.0.1', `--port=${port}`,
    '--queue-type=libsqlite3', `--libsqlite3-db=${join(dir, 'queue.sqlite')}`, '--hashtable-buckets=100003',
    '--log-file=stderr', '--verbose=ERROR',
  ]);
}

export function memcached(port: number): Daemon {
  return new Daemon('memcached', port, () => ['memcached', '-u', 'root', '-l', '127.0.0.1', '-p', String(port), '-U', '0', '-m', '256']);
}

export async function waitForPort(port: number, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        resolve(true);
      });
      s.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} did not start within ${timeoutMs} ms`);
    await sleep(50);
  }
}

/** A TCP proxy in front of a real server: `cut()` drops every connection and refuses new ones until `heal()`. */
export class Proxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  constructor(readonly port: number, private readonly target: number) {}

  async start(): Promise<void> {
    this.server = net.createServer((client) => {
      const upstream = net.connect({ host: '127.0.0.1', port: this.target });
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((r) => this.server!.listen(this.port, '127.0.0.1', r));
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
