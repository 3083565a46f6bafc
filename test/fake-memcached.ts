/**
 * A tiny in-memory memcached for the cases a real one cannot be made to
 * show: a server that answers the meta commands in the pre-1.6.10 wording
 * (`OK` where 1.6.10+ says `HD`), or one with no meta commands at all
 * (`ERROR` to `ma` and `mn`). It speaks the text commands OffLog sends
 * (get, set, add, incr, decr, delete, stats) and `ma`/`mn` as told, and
 * counts every `ma` it applied, so a test can tell a fold applied once from
 * one applied again.
 */
import net from 'node:net';
import type { Scope } from './daemons.ts';

export type MetaDialect = 'old-wording' | 'none';

export class FakeMemcached {
  readonly items = new Map<string, string>();
  /** `ma` commands applied (each one changed a counter). */
  metaApplied = 0;
  private readonly sockets = new Set<net.Socket>();
  private constructor(private readonly server: net.Server, readonly port: number, private readonly dialect: MetaDialect) {}

  static async start(t: Scope, dialect: MetaDialect): Promise<FakeMemcached> {
    let fake: FakeMemcached | undefined;
    const server = net.createServer((socket) => fake!.serve(socket));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    fake = new FakeMemcached(server, (server.address() as net.AddressInfo).port, dialect);
    t.after(() => fake!.close());
    return fake;
  }

  close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    return new Promise((r) => this.server.close(() => r()));
  }

  private serve(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => undefined);
    let buf = Buffer.alloc(0);
    socket.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let out = '';
      for (;;) {
        const lf = buf.indexOf('\r\n');
        if (lf < 0) break;
        const line = buf.toString('latin1', 0, lf);
        const [cmd, key = '', ...rest] = line.split(' ');
        if (cmd === 'set' || cmd === 'add' || cmd === 'append') {
          const bytes = Number(rest[2]);
          if (buf.length < lf + 2 + bytes + 2) break;
          const value = buf.toString('latin1', lf + 2, lf + 2 + bytes);
          buf = buf.subarray(lf + 2 + bytes + 2);
          if (cmd === 'append') out += this.items.has(key) ? (this.items.set(key, this.items.get(key)! + value), 'STORED\r\n') : 'NOT_STORED\r\n';
          else if (cmd === 'add' && this.items.has(key)) out += 'NOT_STORED\r\n';
          else (this.items.set(key, value), (out += 'STORED\r\n'));
          continue;
        }
        buf = buf.subarray(lf + 2);
        out += this.answer(cmd!, key, rest, line);
      }
      if (out) socket.write(out, 'latin1');
    });
  }

  private answer(cmd: string, key: string, rest: string[], line: string): string {
    switch (cmd) {
      case 'get': {
        let out = '';
        for (const k of [key, ...rest]) {
          const v = this.items.get(k);
          if (v !== undefined) out += `VALUE ${k} 0 ${Buffer.byteLength(v, 'latin1')}\r\n${v}\r\n`;
        }
        return `${out}END\r\n`;
      }
      case 'incr':
      case 'decr': {
        const v = this.items.get(key);
        if (v === undefined) return 'NOT_FOUND\r\n';
        const n = cmd === 'incr' ? BigInt(v.trim()) + BigInt(rest[0]!) : BigInt(v.trim()) > BigInt(rest[0]!) ? BigInt(v.trim()) - BigInt(rest[0]!) : 0n;
        this.items.set(key, n.toString());
        return `${n}\r\n`;
      }
      case 'version':
        // Recent enough for OffLog's version check: what is on trial here is what it answers to meta commands.
        return 'VERSION 1.6.21\r\n';
      case 'delete':
        return this.items.delete(key) ? 'DELETED\r\n' : 'NOT_FOUND\r\n';
      case 'stats':
        return `STAT pid ${process.pid}\r\nSTAT uptime 100\r\nSTAT time ${Math.floor(Date.now() / 1000)}\r\nSTAT curr_items ${this.items.size}\r\nSTAT bytes 0\r\nSTAT limit_maxbytes 1\r\nSTAT evictions 0\r\nEND\r\n`;
      case 'ma': {
        if (this.dialect === 'none') return 'ERROR\r\n';
        const flag = (f: string): string | undefined => rest.find((x) => x.startsWith(f))?.slice(1);
        const delta = BigInt(flag('D') ?? '1');
        const v = this.items.get(key);
        const n = v === undefined ? BigInt(flag('J') ?? '0') : BigInt(v) + delta;
        this.items.set(key, n.toString());
        this.metaApplied++;
        // The old wording: OK where 1.6.10+ says HD (and it is not held back by q).
        return rest.includes('v') ? `VA ${n.toString().length} ${flag('O') !== undefined ? `O${flag('O')}` : ''}\r\n${n}\r\n`.replace(' \r\n', '\r\n') : 'OK\r\n';
      }
      case 'mn':
        return this.dialect === 'none' ? 'ERROR\r\n' : 'MN\r\n';
      default:
        return line === '' ? '' : 'ERROR\r\n';
    }
  }
}
