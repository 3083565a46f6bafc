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
import tls from 'node:tls';

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

/**
 * memcached answered in a way this client does not speak: a meta command
 * answered `ERROR` (a server without them) or `OK` (the wording before
 * 1.6.10). What the request applied is unknown, and sending it again would
 * only apply it again: a caller must not retry it as an outage.
 */
export class MemcacheProtocolError extends MemcacheError {
  override name = 'MemcacheProtocolError';
}

/**
 * The server answers but cannot be used as configured. Not an outage:
 * retrying meets the same server, so callers stop instead of holding work
 * for it, and an operator reads the reason.
 */
export class MemcacheUnusableError extends MemcacheError {
  override name = 'MemcacheUnusableError';
}

/** Too old for the meta commands OffLog sends, or a version it cannot read. */
export class MemcacheVersionError extends MemcacheUnusableError {
  override name = 'MemcacheVersionError';
}

/** TLS could not be set up: the certificate was refused (CA, name, dates), or the server does not speak TLS. */
export class MemcacheTlsError extends MemcacheUnusableError {
  override name = 'MemcacheTlsError';
}

/** Node's codes for a TLS handshake that will fail the same way every time (EPROTO: the server does not speak TLS). */
const TLS_REFUSALS = /^(ERR_TLS_CERT_ALTNAME_INVALID|ERR_SSL_.*|EPROTO|CERT_.*|DEPTH_ZERO_SELF_SIGNED_CERT|SELF_SIGNED_CERT_IN_CHAIN|UNABLE_TO_.*)$/;

/** The oldest memcached whose replies OffLog understands: `ma`'s `HD`/`NS` wording and `mn` (1.6.10). */
export const MIN_MEMCACHED_VERSION = '1.6.10';

/** TLS to memcached (ElastiCache with in-transit encryption): the CA bundle to trust, PEM; omitted: Node's own roots. */
export interface MemcacheTls {
  ca?: string;
}

export interface MemcacheOptions {
  connectTimeoutMs?: number;
  opTimeoutMs?: number;
  /** Connect with TLS; null or omitted: plain TCP. */
  tls?: MemcacheTls | null;
}

export type MemcacheOp =
  | { kind: 'incr'; key: string; amount: number | bigint }
  | { kind: 'decr'; key: string; amount: number | bigint }
  | { kind: 'add'; key: string; value: Buffer | string; ttl: number }
  | { kind: 'set'; key: string; value: Buffer | string; ttl: number }
  | { kind: 'append'; key: string; value: Buffer | string }
  | { kind: 'delete'; key: string }
  | { kind: 'get'; key: string }
  /** Meta get of the value and its CAS (`mg <key> v c`): a CasValue, or null when absent. */
  | { kind: 'mg'; key: string }
  /** Meta set (`ms <key> <len> T<ttl>`), only over the item whose CAS is `cas` when given (`C<cas>`): stored or not. */
  | { kind: 'ms'; key: string; value: Buffer | string; ttl: number; cas?: bigint };

/** Keys for arithMany: an array, or an object that makes key i when asked (a caller with a hundred thousand counters need not hold their keys). */
export interface KeyList {
  readonly length: number;
  at(i: number): string | undefined;
}

/** An item's value with its CAS: what `mg` answers, and what `ms … C<cas>` needs to replace it only if unchanged. */
export interface CasValue {
  value: Buffer;
  cas: bigint;
}

/** incr/decr: new value or null (NOT_FOUND); add/set/append/delete/ms: done or not; get: value or null; mg: CasValue or null; version: its text. */
export type MemcacheReply = bigint | boolean | Buffer | CasValue | null;

type Expect = 'incr' | 'store' | 'delete' | 'get' | 'stats' | 'ok' | 'meta' | 'mg' | 'ms' | 'version';

/**
 * What arithMany does with one counter. A counter known to exist is sent a
 * plain `incr` (for memcached the cheapest increment; measured against a
 * quiet meta `ma`, which saves the reply but costs more to parse). One that
 * may not exist yet is upserted: incremented, or created with the amount,
 * in one atomic `ma … N`, where `add` and then `incr` took two operations
 * whenever another writer had made it.
 */
export const Arith = {
  /** `incr`. Flag 1: incremented; 0: not found; 2: incremented and wrapped past 2^64 − 1. */
  INCR: 0,
  /** Upsert, quietly (memcached answers only a creation). Flag 1. */
  UPSERT: 1,
  /** Upsert, reading the new value back. Flag 1: incremented; 3: created; 2: incremented and wrapped. */
  UPSERT_READ: 2,
} as const;

/**
 * An `incr`'s flag when its counter holds something that is not a number:
 * memcached refused it and changed nothing. (An upsert refused so says no
 * key; it is only counted: see arithMany's `notNumbers`.)
 */
export const NOT_A_NUMBER = 4;

/**
 * With `flagHigh`, an `incr`'s or reading upsert's flag when the counter was
 * incremented (not created, not wrapped) and is now at least 2^62: a sum
 * that close to 2^64 may wrap on a later increment, which the Ring must be
 * able to find even if its writer dies before holding it (see Ring.markHigh).
 */
export const HIGH = 5;

interface Pending {
  /** Replies expected. */
  readonly count: number;
  /** What reply i answers: one Expect per reply, or one for all of them (getMulti, arithMany). */
  readonly expects: readonly Expect[] | Expect;
  /** Names command i and its key, so a server error can say which; built only when one happens. */
  readonly what: (i: number) => string;
  /** Replies so far (exec, getMulti, stats). */
  readonly replies: MemcacheReply[];
  /** arithMany: byte flagsAt + i is command i's flag (see Arith). */
  readonly flags: Uint8Array | null;
  readonly flagsAt: number;
  /** arithMany: the amounts, to see a wrap (a new value below the amount). */
  readonly amounts?: readonly (number | bigint)[];
  /** arithMany: each command's Arith mode; `incr` replies come in order, to the next INCR from `cursor` on. */
  readonly modes?: ArrayLike<number>;
  cursor?: number;
  /** arithMany: the piece's `incr` replies still to come (its incrs are sent first, so its first replies are theirs). */
  incrsLeft?: number;
  /** arithMany: counters refused as not numbers are counted here. */
  readonly notNumbers?: { count: number };
  /** arithMany: flag values at or past 2^62 (HIGH). */
  readonly flagHigh?: boolean;
  /** Replies in so far. */
  done: number;
  /** getMulti collects here; exec's single-key get replies in `replies`. */
  readonly found: Map<string, Buffer> | null;
  /** getCounters collects here: values as text, aligned with the keys asked for. */
  readonly aligned?: Aligned;
  readonly stats: Record<string, string>;
  failure: MemcacheError | null;
  resolve(p: Pending): void;
  reject(e: Error): void;
}

/** The parts of a request `send` needs; the rest of a Pending is its state. */
type Request = Pick<Pending, 'count' | 'expects' | 'what' | 'flags' | 'flagsAt' | 'found' | 'amounts' | 'modes' | 'cursor' | 'aligned' | 'incrsLeft' | 'notNumbers' | 'flagHigh'>;

/** getCounters' state: the keys asked for, in order, the values found so far, and the next key a reply may be for. */
interface Aligned {
  readonly keys: readonly string[];
  readonly values: (string | undefined)[];
  next: number;
}

const MAX_U64 = 2n ** 64n - 1n;
// memcached caps a command line at 2048 bytes; beyond ~100 keys a line only delays the first reply.
const GET_MAX_KEYS = 100;
const GET_MAX_BYTES = 2000;
/** Commands per write in arithMany: ~200 KB, enough to keep memcached busy while the next is built. */
const BULK_CHUNK = 4096;

export class MemcacheConnection {
  readonly address: MemcacheAddress;
  private readonly label: string;
  private readonly connectTimeoutMs: number;
  private readonly opTimeoutMs: number;
  private readonly tls: MemcacheTls | null;
  private socket: net.Socket | null = null;
  /**
   * Writes waiting for the server's version to be checked, or null once it
   * is: nothing is sent to a server before it is known to parse it as meant
   * (an old one would apply an `incr` and then misread the `ma` after it).
   */
  private held: { parts: (string | Buffer)[]; encoding: BufferEncoding }[] | null = null;
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
  /** The op timeout's timer (see watch) and when a byte last came in, or the wait began. */
  private watchdog: NodeJS.Timeout | null = null;
  private progressAt = 0;

  /** The version the server gave at the last connect, once checked. */
  serverVersion: string | null = null;

  constructor(address: MemcacheAddress, options: MemcacheOptions = {}) {
    this.address = { host: address.host, port: address.port };
    this.label = `memcached ${address.host}:${address.port}`;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 2000;
    this.opTimeoutMs = options.opTimeoutMs ?? 5000;
    this.tls = options.tls ?? null;
  }

  async exec(ops: readonly MemcacheOp[]): Promise<MemcacheReply[]> {
    if (ops.length === 0) return [];
    // Validation throws before anything is written, so a bad op never half-applies a batch.
    const parts: (string | Buffer)[] = [];
    const expects: Expect[] = [];
    let text = '';
    for (const op of ops) {
      checkKey(op.key);
      switch (op.kind) {
        case 'incr':
        case 'decr':
          text += `${op.kind} ${op.key} ${checkAmount(op.key, op.amount)}\r\n`;
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
        case 'mg':
          text += `mg ${op.key} v c\r\n`;
          expects.push('mg');
          break;
        case 'ms': {
          const v = op.value;
          const cas = op.cas === undefined ? '' : ` C${checkAmount(op.key, op.cas)}`;
          text += `ms ${op.key} ${typeof v === 'string' ? Buffer.byteLength(v) : v.length} T${checkTtl(op.key, op.ttl)}${cas}\r\n`;
          if (typeof v === 'string') text += `${v}\r\n`;
          else {
            parts.push(text, v);
            text = '\r\n';
          }
          expects.push('ms');
          break;
        }
        default: // from untyped callers: a command sent without its expected reply would desync the stream
          throw new MemcacheError(`unknown memcached op ${JSON.stringify((op as { kind: unknown }).kind)}`);
      }
    }
    parts.push(text);
    const what = (i: number): string => `${ops[i]!.kind} ${ops[i]!.key}`;
    return (await this.send(parts, { count: expects.length, expects, what, flags: null, flagsAt: 0, found: null })).replies;
  }

  /**
   * Increments or upserts each key by its amount, in the Arith mode given
   * for it, pipelined: one write per BULK_CHUNK commands, so memcached is
   * already working through the first while the next is built, and no reply
   * object per key.
   * Resolves to one flag per key (see Arith). `incr` replies come in order;
   * an upsert that reads its value carries its index (`O`), and a quiet one
   * says nothing unless it created the key, so each piece ends with `mn`,
   * whose answer closes it. Created keys expire after `ttl` seconds.
   *
   * A counter that holds something other than a number is refused by
   * memcached and changes nothing: that command is skipped (flag
   * NOT_A_NUMBER for an `incr`) and counted in `notNumbers`, and the rest of
   * the batch stands. Each piece sends its `incr`s before its upserts, so
   * that the refusal (which names no key) of an `incr` can be placed.
   *
   * `keysValid: true` skips checking each key: for callers that build keys
   * from parts they have already checked (the Ring: a validated ASCII prefix
   * and decimal numbers). A key with a space or a line break would
   * desynchronise the stream, so anything else must leave it false.
   */
  async arithMany(keys: KeyList, amounts: readonly (number | bigint)[], modes: ArrayLike<number>, ttl: number, options: { keysValid?: boolean; notNumbers?: { count: number }; flagHigh?: boolean } = {}): Promise<Uint8Array> {
    if (keys.length !== amounts.length || keys.length !== modes.length) {
      throw new MemcacheError(`arithMany: ${keys.length} keys, ${amounts.length} amounts and ${modes.length} modes`);
    }
    for (let i = 0; i < keys.length; i++) {
      if (options.keysValid !== true) checkKey(keys.at(i)!);
      if (!isU64(amounts[i]!)) checkAmount(keys.at(i)!, amounts[i]!);
      const m = modes[i]!;
      if (m !== Arith.INCR && m !== Arith.UPSERT && m !== Arith.UPSERT_READ) throw new MemcacheError(`arithMany: unknown mode ${m} for ${keys.at(i)}`);
    }
    checkTtl('arithMany', ttl);
    // A quiet upsert says nothing unless it creates: its flag starts as success.
    const flags = new Uint8Array(keys.length).fill(1);
    const requests: Promise<Pending>[] = [];
    const upsert = ` N${ttl} J`;
    for (let from = 0; from < keys.length; from += BULK_CHUNK) {
      const to = Math.min(keys.length, from + BULK_CHUNK);
      let text = '';
      let incrs = 0;
      for (let i = from; i < to; i++) {
        if (modes[i] !== Arith.INCR) continue;
        text += `incr ${keys.at(i)} ${amounts[i]!}\r\n`;
        incrs++;
      }
      for (let i = from; i < to; i++) {
        const a = amounts[i]!;
        const m = modes[i];
        // A quiet creation answers HD with no index: nothing to learn from it.
        if (m === Arith.UPSERT) text += `ma ${keys.at(i)} q${upsert}${a} D${a}\r\n`;
        else if (m === Arith.UPSERT_READ) text += `ma ${keys.at(i)} v O${i - from}${upsert}${a} D${a}\r\n`;
      }
      text += 'mn\r\n';
      const what = (): string => `incr/ma ${keys.at(from)} and ${to - from - 1} more`;
      const piece = { count: 1, expects: 'meta', what, flags, flagsAt: from, found: null, amounts, modes, cursor: from, incrsLeft: incrs, notNumbers: options.notNumbers, flagHigh: options.flagHigh } as const;
      requests.push(this.send([text], piece, options.keysValid === true ? 'latin1' : 'utf8'));
    }
    await Promise.all(requests);
    return flags;
  }

  async getMulti(keys: readonly string[]): Promise<Map<string, Buffer>> {
    const found = new Map<string, Buffer>();
    const unique = [...new Set(keys)];
    if (unique.length === 0) return found;
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
      what.push(n > 1 ? `get ${first} and ${n - 1} more` : `get ${first}`);
    }
    await this.send([text], { count: what.length, expects: 'get', what: (i) => what[i]!, flags: null, flagsAt: 0, found });
    return found;
  }

  /**
   * Multi-get of counters (or any short ASCII values): the values as text,
   * in the order of `keys`, undefined where a key is missing. For the flush,
   * which reads a million counters a slice: memcached answers a multi-key
   * `get` in the order asked, so each reply is matched to its key by walking
   * the list, with no key string made and no map kept per reply, and each
   * value becomes a string straight from the socket's bytes. Trailing
   * spaces (memcached pads a counter in place when it gets shorter) are
   * dropped. `keysValid` as for arithMany.
   */
  async getCounters(keys: readonly string[], options: { keysValid?: boolean } = {}): Promise<(string | undefined)[]> {
    const values = new Array<string | undefined>(keys.length).fill(undefined);
    if (keys.length === 0) return values;
    let text = '';
    let lines = 0;
    for (let i = 0; i < keys.length; ) {
      let line = 'get';
      for (let n = 0; i < keys.length && n < GET_MAX_KEYS; i++, n++) {
        const key = keys[i]!;
        if (options.keysValid !== true) {
          checkKey(key);
          // Replies are matched byte for character: only ASCII keys can be.
          if (!/^[!-~]+$/.test(key)) throw new MemcacheError(`getCounters: key ${JSON.stringify(key)} is not ASCII`);
        }
        if (n > 0 && line.length + 1 + key.length > GET_MAX_BYTES) break;
        line += ` ${key}`;
      }
      text += `${line}\r\n`;
      lines++;
    }
    const aligned: Aligned = { keys, values, next: 0 };
    await this.send([text], { count: lines, expects: 'get', what: () => `get ${keys[0]} and ${keys.length - 1} more`, flags: null, flagsAt: 0, found: null, aligned }, options.keysValid === true ? 'latin1' : 'utf8');
    return values;
  }

  async stats(): Promise<Record<string, string>> {
    return (await this.send(['stats\r\n'], { count: 1, expects: 'stats', what: () => 'stats', flags: null, flagsAt: 0, found: null })).stats;
  }

  async flushAll(): Promise<void> {
    await this.send(['flush_all\r\n'], { count: 1, expects: 'ok', what: () => 'flush_all', flags: null, flagsAt: 0, found: null });
  }

  /** Lets requests already sent finish (each within its timeout), then closes for good. */
  async close(): Promise<void> {
    this.closed = true;
    const socket = this.socket;
    const closing = [...this.open].map((s) => new Promise((resolve) => s.once('close', resolve)));
    // With nothing in flight there is nothing to wait for; otherwise the FIN
    // follows the last request and memcached answers all of them before closing.
    if (socket && this.pending.length === 0) this.fail(socket, new MemcacheUnavailableError(`${this.label}: connection closed`));
    else if (this.held === null) socket?.end(); // else checkVersion ends it once the held requests are written
    await Promise.all(closing);
  }

  private send(parts: (string | Buffer)[], request: Request, encoding: BufferEncoding = 'utf8'): Promise<Pending> {
    if (this.closed) return Promise.reject(new MemcacheError(`${this.label}: connection was closed by close()`));
    const socket = this.socket ?? this.connect();
    return new Promise<Pending>((resolve, reject) => {
      // The wait starts now if nothing else was waiting; otherwise it runs from the last byte received.
      if (this.pending.length === 0) this.progressAt = performance.now();
      this.pending.push({ ...request, replies: [], done: 0, stats: {}, failure: null, resolve, reject });
      this.watch(socket);
      // Held until the server's version is known (see checkVersion).
      if (this.held) this.held.push({ parts, encoding });
      else write(socket, parts, encoding);
    });
  }

  private connect(): net.Socket {
    const { host, port } = this.address;
    const socket = this.tls
      ? tls.connect({ host, port, ca: this.tls.ca, servername: net.isIP(host) === 0 ? host : undefined })
      : net.connect({ host, port });
    socket.setNoDelay(true);
    this.socket = socket;
    this.open.add(socket);
    const connectTimer = setTimeout(() => {
      this.fail(socket, new MemcacheUnavailableError(`${this.label}: cannot connect within ${this.connectTimeoutMs} ms`));
    }, this.connectTimeoutMs);
    socket.once(this.tls ? 'secureConnect' : 'connect', () => clearTimeout(connectTimer));
    socket.on('data', (chunk: Buffer) => this.onData(socket, chunk));
    socket.on('error', (e: NodeJS.ErrnoException) => {
      const refused = this.tls !== null && TLS_REFUSALS.test(e.code ?? '');
      this.fail(socket, refused
        ? new MemcacheTlsError(`${this.label}: TLS refused (${e.code}: ${e.message}); check OFFLOG_MEMCACHED_TLS, OFFLOG_MEMCACHED_CA_FILE and that the server name is the one its certificate gives`)
        : new MemcacheUnavailableError(`${this.label}: ${e.message}`));
    });
    socket.on('end', () => this.fail(socket, new MemcacheUnavailableError(`${this.label}: connection closed by the server`)));
    socket.on('close', () => {
      this.open.delete(socket);
      clearTimeout(connectTimer);
      this.fail(socket, new MemcacheUnavailableError(`${this.label}: connection closed`));
    });
    this.checkVersion(socket);
    return socket;
  }

  /**
   * The op timeout, per connection and by progress: it fires when requests
   * wait and nothing has been received for opTimeoutMs. A timer per request
   * from when it was sent timed out the last pieces of a large batch while
   * memcached was still answering the first ones, and the retry then applied
   * again what memcached had read (see arithMany).
   */
  private watch(socket: net.Socket): void {
    if (this.watchdog !== null) return;
    const check = (): void => {
      this.watchdog = null;
      if (socket !== this.socket || this.pending.length === 0) return;
      const quiet = performance.now() - this.progressAt;
      if (quiet < this.opTimeoutMs) {
        this.watchdog = setTimeout(check, this.opTimeoutMs - quiet);
        return;
      }
      this.fail(socket, new MemcacheUnavailableError(
        `${this.label}: no reply within ${this.opTimeoutMs} ms (nothing received while ${this.pending.length} request(s) waited); connection dropped, writes in flight may or may not have been applied`));
    };
    this.watchdog = setTimeout(check, this.opTimeoutMs);
  }

  /**
   * Asks the server its version before anything else on this connection
   * and holds every other write until the answer is in: a server older than
   * MIN_MEMCACHED_VERSION fails everything in flight with
   * MemcacheVersionError, having been sent nothing else.
   */
  private checkVersion(socket: net.Socket): void {
    this.held = [];
    this.serverVersion = null;
    new Promise<Pending>((resolve, reject) => {
      // The watchdog (see watch) times the answer out like any other.
      if (this.pending.length === 0) this.progressAt = performance.now();
      this.pending.push({ count: 1, expects: 'version', what: () => 'version', flags: null, flagsAt: 0, found: null, replies: [], done: 0, stats: {}, failure: null, resolve, reject });
      this.watch(socket);
      socket.write('version\r\n');
    }).then((p) => {
      if (socket !== this.socket) return;
      const version = String(p.replies[0]);
      const refusal = versionRefusal(version);
      if (refusal !== null) {
        this.fail(socket, new MemcacheVersionError(`${this.label}: ${refusal}`));
        return;
      }
      this.serverVersion = version;
      const held = this.held ?? [];
      this.held = null;
      for (const h of held) write(socket, h.parts, h.encoding);
      if (this.closed) socket.end(); // close() came while the check was out: now the FIN can follow the last request
    }, (err: Error) => {
      // Failed with its connection: everything held failed with it. Refused by the server: not a memcached to use.
      if (socket === this.socket) this.fail(socket, new MemcacheVersionError(`${this.label}: "version" was refused (${err.message}); is this memcached?`));
    });
  }

  /** Rejects everything in flight on `socket` (the first with `first`, when given) and forgets it; the next call reconnects. */
  private fail(socket: net.Socket, error: MemcacheError, first?: MemcacheError): void {
    if (socket !== this.socket) return; // already failed; its late events mean nothing
    this.socket = null;
    this.held = null;
    socket.destroy();
    this.chunks = [];
    this.buffered = this.needed = 0;
    this.value = null;
    const pending = this.pending;
    this.pending = [];
    if (this.watchdog !== null) clearTimeout(this.watchdog);
    this.watchdog = null;
    pending.forEach((p, i) => p.reject(i === 0 && first ? first : error));
  }

  private onData(socket: net.Socket, chunk: Buffer): void {
    if (socket !== this.socket) return;
    this.progressAt = performance.now();
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered < this.needed) return;
    const buf = this.chunks.length === 1 ? chunk : Buffer.concat(this.chunks, this.buffered);
    let used: number;
    try {
      used = this.parse(buf);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      const dropped = new MemcacheUnavailableError(`${this.label}: protocol out of sync (${why}); connection dropped`);
      // The request being answered gets the protocol error; those behind it only lost their connection.
      this.fail(socket, dropped, e instanceof MemcacheProtocolError ? e : undefined);
      return;
    }
    this.chunks = used === buf.length ? [] : [buf.subarray(used)];
    this.buffered = buf.length - used;
  }

  /**
   * Consumes whole replies from `buf`; returns how far it got and leaves
   * `needed` set for the rest. Replies are recognised by their bytes: a
   * string is made only for a number exec must return, a key, or an error.
   */
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
      const eol = lf - 1; // the CR
      if (buf[eol] !== 13 || lf === pos) throw new Error('line not ended by CRLF');
      const expect = typeof p.expects === 'string' ? p.expects : p.expects[p.done]!;
      const first = buf[pos]!;
      if (expect === 'get' && first === 0x56 /* V */ && startsWith(buf, pos, eol, VALUE)) {
        // VALUE <key> <flags> <bytes>: the block is taken whole or not at all, so it may split anywhere.
        const keyEnd = buf.indexOf(0x20, pos + VALUE.length);
        const flagsEnd = keyEnd < 0 || keyEnd >= eol ? -1 : buf.indexOf(0x20, keyEnd + 1);
        const length = flagsEnd < 0 || flagsEnd >= eol ? -1 : readDecimal(buf, flagsEnd + 1, eol);
        if (keyEnd === pos + VALUE.length || length < 0) throw new Error(`bad line "${buf.toString('latin1', pos, Math.min(eol, pos + 100))}"`);
        const start = lf + 1;
        const end = start + length;
        if (end + 2 > buf.length) {
          this.needed = end + 2 - pos;
          return pos;
        }
        if (buf[end] !== 13 || buf[end + 1] !== 10) throw new Error(`value of ${buf.toString('utf8', pos + VALUE.length, keyEnd)} not ended by CRLF`);
        const a = p.aligned;
        if (a) {
          // Replies come in the order asked, missing keys left out: the first key from `next` on that matches is this one.
          const from = pos + VALUE.length;
          let k = a.next;
          while (k < a.keys.length && !sameKey(buf, from, keyEnd, a.keys[k]!)) k++;
          if (k === a.keys.length) throw new Error(`a value for ${buf.toString('utf8', from, keyEnd)}, which was not asked for`);
          let last = end;
          while (last > start && buf[last - 1] === 0x20) last--;
          a.values[k] = buf.toString('latin1', start, last);
          a.next = k + 1;
          pos = end + 2;
          continue;
        }
        const key = buf.toString('utf8', pos + VALUE.length, keyEnd);
        // A copy, because a slice would pin the whole socket chunk for as long as the caller keeps the value.
        const data = Buffer.from(buf.subarray(start, end));
        if (p.found) p.found.set(key, data);
        else this.value = data;
        pos = end + 2;
        continue;
      }
      if (expect === 'mg' && first === 0x56 /* V */ && buf[pos + 1] === 0x41 /* A */ && buf[pos + 2] === 0x20) {
        // VA <bytes> c<cas>, then the value: taken whole or not at all.
        const lenEnd = indexOfIn(buf, 0x20, pos + 3, eol);
        const length = readDecimal(buf, pos + 3, lenEnd);
        const c = buf.indexOf(' c', lenEnd, 'latin1');
        if (length < 0 || c < 0 || c >= eol) throw new Error(`bad line "${buf.toString('latin1', pos, Math.min(eol, pos + 100))}"`);
        const start = lf + 1;
        const end = start + length;
        if (end + 2 > buf.length) {
          this.needed = end + 2 - pos;
          return pos;
        }
        if (buf[end] !== 13 || buf[end + 1] !== 10) throw new Error('meta value not ended by CRLF');
        const casEnd = indexOfIn(buf, 0x20, c + 2, eol);
        const cas = readDecimalBig(buf, c + 2, casEnd);
        if (cas === null) throw new Error(`bad CAS in "${buf.toString('latin1', pos, Math.min(eol, pos + 100))}"`);
        pos = end + 2;
        this.answer(p, { value: Buffer.from(buf.subarray(start, end)), cas });
        continue;
      }
      if (expect === 'meta' && !is(buf, pos, eol, MN)) {
        // One line per `incr`, in order, and per upsert that says anything (a creation, a value); `mn`'s MN ends the piece.
        const flags = p.flags!;
        const modes = p.modes!;
        const c1 = eol - pos >= 2 ? buf[pos + 1]! : 0;
        if (p.incrsLeft! > 0) {
          // One line per `incr`, in order, before any upsert's (see arithMany).
          let k = p.cursor!;
          while (k < flags.length && modes[k] !== Arith.INCR) k++;
          if (k === flags.length) throw new Error(`an incr reply "${buf.toString('latin1', pos, Math.min(eol, pos + 40))}" with no incr left`);
          p.cursor = k + 1;
          p.incrsLeft!--;
          if (isDigit(first)) flags[k] = wrapped(buf, pos, eol, p.amounts![k]!) ? 2 : p.flagHigh === true && high(buf, pos, eol) ? HIGH : 1;
          else if (is(buf, pos, eol, NOT_FOUND)) flags[k] = 0;
          else if (startsWith(buf, pos, eol, NOT_NUMERIC)) {
            flags[k] = NOT_A_NUMBER;
            if (p.notNumbers) p.notNumbers.count++;
          } else if (startsWith(buf, pos, eol, CLIENT_ERROR) || startsWith(buf, pos, eol, SERVER_ERROR)) {
            p.failure ??= new MemcacheError(`${this.label}: ${buf.toString('utf8', pos, eol)} (${p.what(0)})`);
          } else {
            throw new MemcacheProtocolError(`${this.label} answered "${buf.toString('utf8', pos, Math.min(eol, pos + 100))}" to incr, which is no reply OffLog knows. ` +
              `What this batch of ${p.what(0)} applied is unknown, so it is not sent again`);
          }
          pos = lf + 1;
          continue;
        }
        if (first === 0x56 /* V */ && c1 === 0x41 /* A */ && buf[pos + 2] === 0x20) {
          // VA <bytes> O<i>, then the value: taken whole or not at all.
          const lenEnd = indexOfIn(buf, 0x20, pos + 3, eol);
          const length = readDecimal(buf, pos + 3, lenEnd);
          const i = opaqueOf(buf, pos, eol);
          if (length < 0 || i < 0 || p.flagsAt + i >= flags.length) throw new Error(`bad line "${buf.toString('latin1', pos, Math.min(eol, pos + 100))}"`);
          const start = lf + 1;
          const end = start + length;
          if (end + 2 > buf.length) {
            this.needed = end + 2 - pos;
            return pos;
          }
          if (buf[end] !== 13 || buf[end + 1] !== 10) throw new Error('meta value not ended by CRLF');
          const k = p.flagsAt + i;
          const amount = p.amounts![k]!;
          // Sums are never 0, so a value equal to the amount was made by this command (see Arith).
          flags[k] = wrapped(buf, start, end, amount) ? 2 : sameValue(buf, start, end, amount) ? 3 : p.flagHigh === true && high(buf, start, end) ? HIGH : 1;
          pos = end + 2;
          continue;
        }
        if (first === 0x48 /* H */ && c1 === 0x44 /* D */ && eol - pos === 2) {
          pos = lf + 1; // a quiet upsert created its key
          continue;
        }
        if (startsWith(buf, pos, eol, NOT_NUMERIC)) {
          // An upsert refused (its counter is not a number): nothing done, and the rest of the piece stands.
          if (p.notNumbers) p.notNumbers.count++;
          pos = lf + 1;
          continue;
        }
        // NS or a client/server error fails the whole piece once its MN is in: which counters it reached is unknown.
        const line = buf.toString('utf8', pos, eol);
        if (!line.startsWith('CLIENT_ERROR ') && !line.startsWith('SERVER_ERROR ') && !line.startsWith('NS')) {
          // ERROR (no meta commands: its `mn` gets one too, so no MN ever ends the piece), OK (the old
          // wording) or anything else: this server does not speak the meta protocol OffLog needs.
          const said = line === 'ERROR' ? 'ERROR to a meta command (ma/mn): it has no meta commands'
            : line === 'OK' ? '"OK" to a meta command (ma): the wording before memcached 1.6.10 (or -o meta_response_old)'
            : `"${line.slice(0, 100)}" to a meta command (ma/mn), which is no reply OffLog knows`;
          throw new MemcacheProtocolError(`${this.label} answered ${said}. OffLog needs memcached 1.6.10 or later with its default meta replies. ` +
            `What this batch of ${p.what(0)} applied is unknown, so it is not sent again`);
        }
        p.failure ??= new MemcacheError(`${this.label}: ${line} (${p.what(0)})`);
        pos = lf + 1;
        continue;
      }
      if (expect === 'stats' && startsWith(buf, pos, eol, STAT)) {
        const line = buf.toString('utf8', pos, eol);
        const sp = line.indexOf(' ', 5);
        p.stats[line.slice(5, sp)] = line.slice(sp + 1);
        pos = lf + 1;
        continue;
      }
      let reply: MemcacheReply | undefined;
      switch (expect) {
        case 'incr':
          if (isDigit(first)) reply = BigInt(buf.toString('latin1', pos, eol));
          else if (is(buf, pos, eol, NOT_FOUND)) reply = null;
          break;
        case 'store':
          if (is(buf, pos, eol, STORED)) reply = true;
          else if (is(buf, pos, eol, NOT_STORED)) reply = false;
          break;
        case 'delete':
          if (is(buf, pos, eol, DELETED)) reply = true;
          else if (is(buf, pos, eol, NOT_FOUND)) reply = false;
          break;
        case 'get':
          if (is(buf, pos, eol, END)) reply = this.value;
          break;
        case 'stats':
          if (is(buf, pos, eol, END)) reply = true;
          break;
        case 'ok':
          if (is(buf, pos, eol, OK)) reply = true;
          break;
        case 'version':
          if (startsWith(buf, pos, eol, VERSION)) reply = Buffer.from(buf.subarray(pos + VERSION.length, eol));
          break;
        case 'meta':
          // MN: the piece is done; every incr answers one line, so none may be left.
          if (p.incrsLeft) throw new MemcacheProtocolError(`${this.label} ended a batch of ${p.what(0)} with ${p.incrsLeft} incr(s) unanswered`);
          reply = true;
          break;
        case 'mg':
          if (is(buf, pos, eol, EN)) reply = null; // a value came as a VA block, above
          break;
        case 'ms':
          if (is(buf, pos, eol, HD)) reply = true;
          else if (is(buf, pos, eol, NS) || is(buf, pos, eol, EX) || is(buf, pos, eol, NF)) reply = false;
          break;
      }
      if (reply === undefined) {
        // An error line takes the place of exactly one reply (memcached swallows the
        // data block of a refused store), so the stream stays in step and only this
        // request fails, once all its replies are in.
        const line = buf.toString('utf8', pos, eol);
        if (line !== 'ERROR' && !line.startsWith('CLIENT_ERROR ') && !line.startsWith('SERVER_ERROR ')) {
          throw new Error(`unexpected reply "${line.slice(0, 100)}" to ${expect}`);
        }
        p.failure ??= new MemcacheError(`${this.label}: ${line} (${p.what(p.done)})`);
        reply = null;
      }
      pos = lf + 1;
      this.value = null;
      // arithMany's flags were set line by line; its one reply is the MN that ends the piece.
      if (expect !== 'meta') p.replies.push(reply);
      this.countReply(p);
    }
    return pos;
  }

  /** A whole reply of `p` is in (one that needs no line of its own after it, as mg's VA block). */
  private answer(p: Pending, reply: MemcacheReply): void {
    p.replies.push(reply);
    this.countReply(p);
  }

  /** Counts one reply of `p`; with the last one in, settles it. */
  private countReply(p: Pending): void {
    if (++p.done === p.count) {
      this.pending.shift();
      if (p.failure) p.reject(p.failure);
      else p.resolve(p);
    }
  }
}

/**
 * memcached's incr wraps silently at 2^64: the new value (the digits at
 * buf[pos, eol), possibly padded with spaces) is below the amount added
 * exactly when it wrapped. Cheap for the common case: up to 15 digits are an
 * exact number, and a longer reply is larger than any amount below 10^15.
 */
function wrapped(buf: Buffer, pos: number, eol: number, amount: number | bigint): boolean {
  let end = eol;
  while (end > pos && buf[end - 1] === 0x20) end--;
  if (end - pos <= 15) {
    let v = 0;
    for (let i = pos; i < end; i++) v = v * 10 + (buf[i]! - 0x30);
    return v < amount;
  }
  if (typeof amount === 'number' && amount < 1e15) return false;
  return BigInt(buf.toString('latin1', pos, end)) < BigInt(amount);
}

/** Whether the decimal buf[pos, eol) (trailing spaces allowed) is at least 2^62. */
function high(buf: Buffer, pos: number, eol: number): boolean {
  let end = eol;
  while (end > pos && buf[end - 1] === 0x20) end--;
  const digits = end - pos;
  if (digits !== TWO_TO_62.length) return digits > TWO_TO_62.length;
  return buf.toString('latin1', pos, end) >= TWO_TO_62;
}

const TWO_TO_62 = (2n ** 62n).toString();
const VALUE = Buffer.from('VALUE ');
const STAT = Buffer.from('STAT ');
const NOT_FOUND = Buffer.from('NOT_FOUND');
const STORED = Buffer.from('STORED');
const NOT_STORED = Buffer.from('NOT_STORED');
const DELETED = Buffer.from('DELETED');
const END = Buffer.from('END');
const OK = Buffer.from('OK');
const MN = Buffer.from('MN');
const CLIENT_ERROR = Buffer.from('CLIENT_ERROR ');
const SERVER_ERROR = Buffer.from('SERVER_ERROR ');
/** memcached's refusal of incr/decr/ma on a value that is not a number (it names no key). */
const NOT_NUMERIC = Buffer.from('CLIENT_ERROR cannot increment or decrement non-numeric value');
const EN = Buffer.from('EN');
const HD = Buffer.from('HD');
const NS = Buffer.from('NS');
const EX = Buffer.from('EX');
const NF = Buffer.from('NF');
const VERSION = Buffer.from('VERSION ');

/** Corked, the whole batch leaves in one writev, whatever mix of strings and Buffers it is. */
function write(socket: net.Socket, parts: readonly (string | Buffer)[], encoding: BufferEncoding): void {
  socket.cork();
  for (const part of parts) {
    if (typeof part === 'string') socket.write(part, encoding);
    else socket.write(part);
  }
  socket.uncork();
}

/** Why OffLog cannot use a memcached that answers `version` with this, or null when it can. */
export function versionRefusal(version: string): string | null {
  const m = /^(\d+)\.(\d+)\.(\d+)/.exec(version);
  const min = MIN_MEMCACHED_VERSION.split('.').map(Number);
  if (!m) return `cannot read its version ${JSON.stringify(version.slice(0, 60))}; OffLog needs memcached ${MIN_MEMCACHED_VERSION} or later`;
  const got = [Number(m[1]), Number(m[2]), Number(m[3])];
  for (let i = 0; i < 3; i++) {
    if (got[i]! > min[i]!) return null;
    if (got[i]! < min[i]!) {
      return `memcached ${version} is too old: OffLog needs ${MIN_MEMCACHED_VERSION} or later (its meta commands' HD/NS replies); on ElastiCache choose engine 1.6.22`;
    }
  }
  return null;
}

/** The index a meta reply line buf[pos, eol) carries as `O<i>`, or -1 without one. */
function opaqueOf(buf: Buffer, pos: number, eol: number): number {
  for (let i = pos + 2; i < eol - 1; i++) {
    if (buf[i] === 0x20 && buf[i + 1] === 0x4f /* O */) return readDecimal(buf, i + 2, indexOfIn(buf, 0x20, i + 2, eol));
  }
  return -1;
}

/** The first `byte` in buf[from, to), or `to`. */
function indexOfIn(buf: Buffer, byte: number, from: number, to: number): number {
  for (let i = from; i < to; i++) if (buf[i] === byte) return i;
  return to;
}

/** Whether the decimal buf[pos, end) (trailing spaces allowed) equals `amount`. */
function sameValue(buf: Buffer, pos: number, end: number, amount: number | bigint): boolean {
  while (end > pos && buf[end - 1] === 0x20) end--;
  const text = typeof amount === 'number' ? String(amount) : amount.toString();
  if (end - pos !== text.length) return false;
  for (let i = 0; i < text.length; i++) if (buf[pos + i] !== text.charCodeAt(i)) return false;
  return true;
}

/** Whether buf[from, to) holds exactly the characters of `key` (ASCII, as every key OffLog makes). */
function sameKey(buf: Buffer, from: number, to: number, key: string): boolean {
  if (to - from !== key.length) return false;
  for (let i = 0; i < key.length; i++) if (buf[from + i] !== key.charCodeAt(i)) return false;
  return true;
}

/** Whether the line buf[pos, eol) is exactly `word`. */
function is(buf: Buffer, pos: number, eol: number, word: Buffer): boolean {
  if (eol - pos !== word.length) return false;
  for (let i = 0; i < word.length; i++) if (buf[pos + i] !== word[i]) return false;
  return true;
}

/** Whether the line buf[pos, eol) starts with `word`. */
function startsWith(buf: Buffer, pos: number, eol: number, word: Buffer): boolean {
  if (eol - pos < word.length) return false;
  for (let i = 0; i < word.length; i++) if (buf[pos + i] !== word[i]) return false;
  return true;
}

/** The decimal number in buf[from, to), or -1 when it is not one (or has more than 15 digits). */
function readDecimal(buf: Buffer, from: number, to: number): number {
  if (to <= from || to - from > 15) return -1;
  let n = 0;
  for (let i = from; i < to; i++) {
    const c = buf[i]!;
    if (!isDigit(c)) return -1;
    n = n * 10 + (c - 48);
  }
  return n;
}

/** The decimal number in buf[from, to) as a bigint (a CAS may exceed 2^53), or null when it is not one. */
function readDecimalBig(buf: Buffer, from: number, to: number): bigint | null {
  if (to <= from || to - from > 20) return null;
  for (let i = from; i < to; i++) if (!isDigit(buf[i]!)) return null;
  return BigInt(buf.toString('latin1', from, to));
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

function isU64(amount: number | bigint): boolean {
  return typeof amount === 'number' ? Number.isSafeInteger(amount) && amount >= 0 : amount >= 0n && amount <= MAX_U64;
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
