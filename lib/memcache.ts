/**
 * A pipelined memcached text-protocol client for one server per connection.
 *
 * Not memjs: it decodes 64-bit incr results wrongly above 2^32, its retries can
 * apply an increment twice, it hangs when memcached restarts and it cannot
 * multi-get. Here a batch goes out in one write and its replies are matched in
 * order; any doubt about the stream (loss, timeout, a reply we cannot place)
 * drops the socket, so a late reply can never be taken for another request's.
 */
import net from 'node:net';

export interface MemcacheAddress {
  host: string;
  port: number;
}

/** memcached answered ERROR, CLIENT_ERROR or SERVER_ERROR, or a request was refused before sending. */
export class MemcacheError extends Error {
  override name = 'MemcacheError';
}

/** No answer: cannot connect, connection lost, or timed out. Writes in flight may or may not have been applied. */
export class MemcacheUnavailableError extends MemcacheError {
  override name = 'MemcacheUnavailableError';
}

export type MemcacheOp =
  | { kind: 'incr'; key: string; amount: number | bigint }
  | { kind: 'add'; key: string; value: Buffer | string; ttl: number }
  | { kind: 'set'; key: string; value: Buffer | string; ttl: number }
  | { kind: 'append'; key: string; value: Buffer | string }
  | { kind: 'delete'; key: string }
  | { kind: 'get'; key: string };

/** incr: new value or null (NOT_FOUND); add/set/append/delete: done or not; get: value or null. */
export type MemcacheReply = bigint | boolean | Buffer | null;

type Expect = 'incr' | 'store' | 'delete' | 'get' | 'stats' | 'ok';

interface Pending {
  readonly expects: Expect[];
  /** Each command and its key, so a server error can name them. */
  readonly what: string[];
  /** One per expect; its length is how far the replies have got. */
  readonly replies: MemcacheReply[];
  /** getMulti collects here; exec's single-key get replies in `replies`. */
  readonly found: Map<string, Buffer> | null;
  readonly stats: Record<string, string>;
  failure: MemcacheError | null;
  timer: NodeJS.Timeout;
  resolve(p: Pending): void;
  reject(e: Error): void;
}

const MAX_U64 = 2n ** 64n - 1n;
// memcached caps a command line at 2048 bytes; beyond ~100 keys a line only delays the first reply.
const GET_MAX_KEYS = 100;
const GET_MAX_BYTES = 2000;

export class MemcacheConnection {
  readonly address: MemcacheAddress;
  private readonly label: string;
  private readonly connectTimeoutMs: number;
  private readonly opTimeoutMs: number;
  private socket: net.Socket | null = null;
  /** Sockets whose handle is not yet closed, current or failed: close() waits for all of them. */
  private readonly open = new Set<net.Socket>();
  private closed = false;
  private pending: Pending[] = [];
  // Unparsed input is kept as chunks and joined only once enough has arrived
  // (`needed`), so a large value arriving in many pieces is copied once, not once per piece.
  private chunks: Buffer[] = [];
  private buffered = 0;
  private needed = 0;
  private value: Buffer | null = null;

  constructor(address: MemcacheAddress, options: { connectTimeoutMs?: number; opTimeoutMs?: number } = {}) {
    this.address = { host: address.host, port: address.port };
    this.label = `memcached ${address.host}:${address.port}`;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 2000;
    this.opTimeoutMs = options.opTimeoutMs ?? 5000;
  }

  async exec(ops: readonly MemcacheOp[]): Promise<MemcacheReply[]> {
    if (ops.length === 0) return [];
    // Validation throws before anything is written, so a bad op never half-applies a batch.
    const parts: (string | Buffer)[] = [];
    const expects: Expect[] = [];
    const what: string[] = [];
    let text = '';
    for (const op of ops) {
      checkKey(op.key);
      what.push(`${op.kind} ${op.key}`);
      switch (op.kind) {
        case 'incr':
          text += `incr ${op.key} ${checkAmount(op.key, op.amount)}\r\n`;
          expects.push('incr');
          break;
        case 'add':
        case 'set':
        case 'append': {
          const ttl = op.kind === 'append' ? 0 : checkTtl(op.key, op.ttl);
          const v = op.value;
          text += `${op.kind} ${op.key} 0 ${ttl} ${typeof v === 'string' ? Buffer.byteLength(v) : v.length}\r\n`;
          if (typeof v === 'string') text += `${v}\r\n`;
          else {
            parts.push(text, v);
            text = '\r\n';
          }
          expects.push('store');
          break;
        }
        case 'delete':
          text += `delete ${op.key}\r\n`;
          expects.push('delete');
          break;
        case 'get':
          text += `get ${op.key}\r\n`;
          expects.push('get');
          break;
        default: // from untyped callers: a command sent without its expected reply would desync the stream
          throw new MemcacheError(`unknown memcached op ${JSON.stringify((op as { kind: unknown }).kind)}`);
      }
    }
    parts.push(text);
    return (await this.send(parts, expects, what, null)).replies;
  }

  async getMulti(keys: readonly string[]): Promise<Map<string, Buffer>> {
    const found = new Map<string, Buffer>();
    const unique = [...new Set(keys)];
    if (unique.length === 0) return found;
    const expects: Expect[] = [];
    const what: string[] = [];
    let text = '';
    for (let i = 0; i < unique.length; ) {
      let line = 'get';
      let bytes = line.length;
      const first = unique[i]!;
      let n = 0;
      for (; i < unique.length && n < GET_MAX_KEYS; i++, n++) {
        const key = unique[i]!;
        checkKey(key);
        bytes += 1 + Buffer.byteLength(key);
        if (n > 0 && bytes > GET_MAX_BYTES) break;
        line += ` ${key}`;
      }
      text += `${line}\r\n`;
      expects.push('get');
      what.push(n > 1 ? `get ${first} and ${n - 1} more` : `get ${first}`);
    }
    await this.send([text], expects, what, found);
    return found;
  }

  async stats(): Promise<Record<string, string>> {
    return (await this.send(['stats\r\n'], ['stats'], ['stats'], null)).stats;
  }

  async flushAll(): Promise<void> {
    await this.send(['flush_all\r\n'], ['ok'], ['flush_all'], null);
  }

  /** Lets requests already sent finish (each within its timeout), then closes for good. */
  async close(): Promise<void> {
    this.closed = true;
    const socket = this.socket;
    const closing = [...this.open].map((s) => new Promise((resolve) => s.once('close', resolve)));
    // With nothing in flight there is nothing to wait for; otherwise the FIN
    // follows the last request and memcached answers all of them before closing.
    if (socket && this.pending.length === 0) this.fail(socket, new MemcacheUnavailableError(`${this.label}: connection closed`));
    else socket?.end();
    await Promise.all(closing);
  }

  private send(parts: (string | Buffer)[], expects: Expect[], what: string[], found: Map<string, Buffer> | null): Promise<Pending> {
    if (this.closed) return Promise.reject(new MemcacheError(`${this.label}: connection was closed by close()`));
    const socket = this.socket ?? this.connect();
    return new Promise<Pending>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.fail(socket, new MemcacheUnavailableError(
          `${this.label}: no reply within ${this.opTimeoutMs} ms; connection dropped, writes in flight may or may not have been applied`));
      }, this.opTimeoutMs);
      this.pending.push({ expects, what, replies: [], found, stats: {}, failure: null, timer, resolve, reject });
      // Corked, the whole batch leaves in one writev, whatever mix of strings and Buffers it is.
      socket.cork();
      for (const part of parts) socket.write(part);
      socket.uncork();
    });
  }

  private connect(): net.Socket {
    const socket = net.connect({ host: this.address.host, port: this.address.port });
    socket.setNoDelay(true);
    this.socket = socket;
    this.open.add(socket);
    const connectTimer = setTimeout(() => {
      this.fail(socket, new MemcacheUnavailableError(`${this.label}: cannot connect within ${this.connectTimeoutMs} ms`));
    }, this.connectTimeoutMs);
    socket.once('connect', () => clearTimeout(connectTimer));
    socket.on('data', (chunk: Buffer) => this.onData(socket, chunk));
    socket.on('error', (e) => this.fail(socket, new MemcacheUnavailableError(`${this.label}: ${e.message}`)));
    socket.on('end', () => this.fail(socket, new MemcacheUnavailableError(`${this.label}: connection closed by the server`)));
    socket.on('close', () => {
      this.open.delete(socket);
      clearTimeout(connectTimer);
      this.fail(socket, new MemcacheUnavailableError(`${this.label}: connection closed`));
    });
    return socket;
  }

  /** Rejects everything in flight on `socket` and forgets it; the next call reconnects. */
  private fail(socket: net.Socket, error: MemcacheError): void {
    if (socket !== this.socket) return; // already failed; its late events mean nothing
    this.socket = null;
    socket.destroy();
    this.chunks = [];
    this.buffered = this.needed = 0;
    this.value = null;
    const pending = this.pending;
    this.pending = [];
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(error);
    }
  }

  private onData(socket: net.Socket, chunk: Buffer): void {
    if (socket !== this.socket) return;
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered < this.needed) return;
    const buf = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.buffered);
    let used: number;
    try {
      used = this.parse(buf);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      this.fail(socket, new MemcacheUnavailableError(`${this.label}: protocol out of sync (${why}); connection dropped`));
      return;
    }
    this.chunks = used === buf.length ? [] : [buf.subarray(used)];
    this.buffered = buf.length - used;
  }

  /** Consumes whole replies from `buf`; returns how far it got and leaves `needed` set for the rest. */
  private parse(buf: Buffer): number {
    let pos = 0;
    this.needed = 0;
    while (pos < buf.length) {
      const p = this.pending[0];
      if (!p) throw new Error('data arrived with no request waiting');
      const lf = buf.indexOf(10, pos);
      if (lf < 0) {
        this.needed = buf.length - pos + 1;
        return pos;
      }
      if (buf[lf - 1] !== 13 || lf === pos) throw new Error('line not ended by CRLF');
      const line = buf.toString('utf8', pos, lf - 1);
      const expect = p.expects[p.replies.length]!;
      let reply: MemcacheReply | undefined;
      if (expect === 'get' && line.startsWith('VALUE ')) {
        // VALUE <key> <flags> <bytes>: the block is taken whole or not at all, so it may split anywhere.
        const [, key, , size] = line.split(' ');
        const length = Number(size);
        if (key === undefined || !Number.isSafeInteger(length) || length < 0) throw new Error(`bad line "${line}"`);
        const start = lf + 1;
        const end = start + length;
        if (end + 2 > buf.length) {
          this.needed = end + 2 - pos;
          return pos;
        }
        if (buf[end] !== 13 || buf[end + 1] !== 10) throw new Error(`value of ${key} not ended by CRLF`);
        // A copy, because a slice would pin the whole socket chunk for as long as the caller keeps the value.
        const data = Buffer.from(buf.subarray(start, end));
        if (p.found) p.found.set(key, data);
        else this.value = data;
        pos = end + 2;
        continue;
      }
      if (expect === 'stats' && line.startsWith('STAT ')) {
        const sp = line.indexOf(' ', 5);
        p.stats[line.slice(5, sp)] = line.slice(sp + 1);
        pos = lf + 1;
        continue;
      }
      pos = lf + 1;
      switch (expect) {
        case 'incr':
          if (line === 'NOT_FOUND') reply = null;
          else if (isDigit(line.charCodeAt(0))) reply = BigInt(line);
          break;
        case 'store':
          if (line === 'STORED') reply = true;
          else if (line === 'NOT_STORED') reply = false;
          break;
        case 'delete':
          if (line === 'DELETED') reply = true;
          else if (line === 'NOT_FOUND') reply = false;
          break;
        case 'get':
          if (line === 'END') reply = this.value;
          break;
        case 'stats':
        case 'ok':
          if (line === (expect === 'ok' ? 'OK' : 'END')) reply = true;
          break;
      }
      if (reply === undefined) {
        // An error line takes the place of exactly one reply (memcached swallows the
        // data block of a refused store), so the stream stays in step and only this
        // request fails, once all its replies are in.
        if (line !== 'ERROR' && !line.startsWith('CLIENT_ERROR ') && !line.startsWith('SERVER_ERROR ')) {
          throw new Error(`unexpected reply "${line.slice(0, 100)}" to ${expect}`);
        }
        p.failure ??= new MemcacheError(`${this.label}: ${line} (${p.what[p.replies.length]})`);
        reply = null;
      }
      this.value = null;
      p.replies.push(reply);
      if (p.replies.length === p.expects.length) {
        this.pending.shift();
        clearTimeout(p.timer);
        if (p.failure) p.reject(p.failure);
        else p.resolve(p);
      }
    }
    return pos;
  }
}

function isDigit(c: number): boolean {
  return c >= 48 && c <= 57;
}

function checkKey(key: string): void {
  let ok = key.length > 0 && key.length <= 250;
  for (let i = 0; ok && i < key.length; i++) {
    const c = key.charCodeAt(i);
    ok = c > 32 && c !== 127;
  }
  // Only non-ASCII keys can be longer in bytes than in characters; skip the count for short ones.
  if (ok && key.length > 83) ok = Buffer.byteLength(key) <= 250;
  if (!ok) {
    throw new MemcacheError(`invalid memcached key ${JSON.stringify(key)}: must be 1-250 bytes with no spaces or control characters`);
  }
}

function checkAmount(key: string, amount: number | bigint): string {
  const ok = typeof amount === 'bigint' ? amount >= 0n && amount <= MAX_U64 : Number.isSafeInteger(amount) && amount >= 0;
  if (!ok) throw new MemcacheError(`incr ${key}: amount ${amount} is not an unsigned 64-bit integer`);
  return String(amount);
}

function checkTtl(key: string, ttl: number): number {
  if (!Number.isSafeInteger(ttl) || ttl < 0) throw new MemcacheError(`${key}: ttl ${ttl} is not a whole number of seconds >= 0`);
  return ttl;
}
