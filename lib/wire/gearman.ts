/**
 * The one place that speaks Gearman: the handful of binary packets OffLog
 * uses (CAN_DO, SET_CLIENT_ID, GRAB_JOB_UNIQ → JOB_ASSIGN_UNIQ | NO_JOB,
 * PRE_SLEEP → NOOP, WORK_COMPLETE, SUBMIT_JOB{,_HIGH,_LOW}_BG → JOB_CREATED,
 * ERROR) and the admin text protocol's `status`. One server per connection,
 * requests answered in order.
 *
 * Owned rather than taken from the `gearman` npm package: that package hides
 * its socket and leaves Nagle's algorithm on (a worker then waits on delayed
 * ACKs and manages ~23 jobs/s); the fix was a patch-package postinstall that
 * an app installing OffLog never runs. Here the socket is ours and opened
 * with noDelay, and nothing depends on install scripts.
 */
import net from 'node:net';
import { label, type HostPort } from '../base/servers.ts';
import { GearmanUnavailableError } from '../base/errors.ts';

export type Priority = 'low' | 'normal' | 'high';

export interface Job {
  handle: string;
  fn: string;
  unique: string;
  data: Buffer;
  /** The connection the job came on: it must be acknowledged there. */
  conn: GearmanConnection;
}

/** Packet types (gearman.org/protocol), only those sent or handled here. */
const CAN_DO = 1;
const PRE_SLEEP = 4;
const NOOP = 6;
const JOB_CREATED = 8;
const NO_JOB = 10;
const WORK_COMPLETE = 13;
const SUBMIT_JOB_BG = 18;
const ERROR = 19;
const SET_CLIENT_ID = 22;
const GRAB_JOB_UNIQ = 30;
const JOB_ASSIGN_UNIQ = 31;
const SUBMIT_JOB_HIGH_BG = 32;
const SUBMIT_JOB_LOW_BG = 34;
const SUBMIT_BG: Record<Priority, number> = { low: SUBMIT_JOB_LOW_BG, normal: SUBMIT_JOB_BG, high: SUBMIT_JOB_HIGH_BG };

const REQ = Buffer.from('\0REQ', 'latin1');
const RES = Buffer.from('\0RES', 'latin1');
const HEADER = 12;

/** One request packet: `\0REQ`, type, size, then the arguments joined by NUL (the last may hold NULs). */
export function encodePacket(type: number, args: (string | Buffer)[]): Buffer {
  const parts = args.map((a) => (typeof a === 'string' ? Buffer.from(a, 'utf8') : a));
  const size = parts.reduce((n, p) => n + p.length, 0) + Math.max(0, parts.length - 1);
  const out = Buffer.allocUnsafe(HEADER + size);
  REQ.copy(out, 0);
  out.writeUInt32BE(type, 4);
  out.writeUInt32BE(size, 8);
  let at = HEADER;
  parts.forEach((p, i) => {
    if (i > 0) out[at++] = 0;
    at += p.copy(out, at);
  });
  return out;
}

/** Splits a body into `count` NUL-separated arguments; the last keeps any NULs it holds. */
function splitArgs(body: Buffer, count: number): Buffer[] {
  const args: Buffer[] = [];
  let from = 0;
  for (let i = 0; i < count - 1; i++) {
    const nul = body.indexOf(0, from);
    if (nul < 0) break;
    args.push(body.subarray(from, nul));
    from = nul + 1;
  }
  args.push(body.subarray(from));
  return args;
}

/**
 * Cuts the byte stream into response packets. Chunks are joined only once a
 * whole packet has arrived, so a 1 MiB job costs one copy, not one per chunk.
 */
export class PacketReader {
  private chunks: Buffer[] = [];
  private length = 0;
  private type = 0;
  private size = -1;

  push(chunk: Buffer): { type: number; body: Buffer }[] {
    this.chunks.push(chunk);
    this.length += chunk.length;
    const packets: { type: number; body: Buffer }[] = [];
    for (;;) {
      if (this.size < 0) {
        if (this.length < HEADER) break;
        const head = this.flatten();
        if (!head.subarray(0, 4).equals(RES)) throw new Error(`not a Gearman response (starts ${head.subarray(0, 4).toString('hex')})`);
        this.type = head.readUInt32BE(4);
        this.size = head.readUInt32BE(8);
      }
      if (this.length < HEADER + this.size) break;
      const all = this.flatten();
      packets.push({ type: this.type, body: all.subarray(HEADER, HEADER + this.size) });
      const rest = all.subarray(HEADER + this.size);
      this.chunks = rest.length > 0 ? [rest] : [];
      this.length = rest.length;
      this.size = -1;
    }
    return packets;
  }

  private flatten(): Buffer {
    if (this.chunks.length > 1) this.chunks = [Buffer.concat(this.chunks, this.length)];
    return this.chunks[0]!;
  }
}

type Waiter<T> = { resolve: (v: T) => void; reject: (e: Error) => void };

/**
 * A request gearmand has not answered yet. WORK_COMPLETE gets no reply when
 * it succeeds but an ERROR when gearmand does not know the job, so it holds
 * a place too: until a reply to a later request shows it passed.
 */
type Pending =
  | { kind: 'submit'; waiter: Waiter<string> }
  | { kind: 'grab'; waiter: Waiter<Job | null> }
  | { kind: 'complete' };

export class GearmanConnection {
  readonly server: HostPort;
  private readonly socket: net.Socket;
  private readonly reader = new PacketReader();
  private closed = false;
  private closeError: Error | undefined;
  /** gearmand answers a connection's requests strictly in order: one FIFO of them, oldest first, matches each reply to its request. */
  private readonly pending: Pending[] = [];
  /** Pending sleep() calls: each leaves the set when it ends, however it ends. */
  private readonly sleepers = new Set<() => void>();
  private readonly closeListeners: ((err: Error) => void)[] = [];

  private constructor(server: HostPort, socket: net.Socket) {
    this.server = server;
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      let packets;
      try {
        packets = this.reader.push(chunk);
      } catch (err) {
        this.fail(new GearmanUnavailableError(`gearmand ${label(server)}: ${(err as Error).message}`));
        return;
      }
      for (const p of packets) this.receive(p.type, p.body);
    });
    socket.on('error', (err) => this.fail(new GearmanUnavailableError(`gearmand ${label(server)}: ${err.message}`)));
    socket.on('close', () => this.fail(new GearmanUnavailableError(`gearmand ${label(server)} closed the connection`)));
  }

  private receive(type: number, body: Buffer): void {
    switch (type) {
      case JOB_CREATED:
        this.answer('submit')?.resolve(body.toString('utf8'));
        return;
      case JOB_ASSIGN_UNIQ: {
        const [handle, fn, unique, data] = splitArgs(body, 4);
        this.answer('grab')?.resolve({ handle: handle!.toString('utf8'), fn: fn!.toString('utf8'), unique: unique?.toString('utf8') ?? '', data: data ?? Buffer.alloc(0), conn: this });
        return;
      }
      case NO_JOB:
        this.answer('grab')?.resolve(null);
        return;
      case NOOP:
        for (const done of [...this.sleepers]) done();
        return;
      case ERROR: {
        // The oldest request is the one refused; gearmand keeps the connection.
        const [code, text] = splitArgs(body, 2).map((b) => b.toString('utf8'));
        const refused = this.pending.shift();
        // A refused WORK_COMPLETE names a job gearmand no longer holds for us: nothing waits on it, and nothing is left to redo.
        if (refused !== undefined && refused.kind !== 'complete') {
          refused.waiter.reject(new GearmanUnavailableError(`gearmand ${label(this.server)} answered ERROR ${code}: ${text ?? ''}`));
        }
        return;
      }
      default:
      // Nothing else is asked for; anything else (a stray ECHO_RES, say) is ignored.
    }
  }

  static connect(server: HostPort, timeoutMs = 3000): Promise<GearmanConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: server.host, port: server.port, noDelay: true });
      const conn = new GearmanConnection(server, socket);
      const timer = setTimeout(() => {
        conn.close();
        reject(new GearmanUnavailableError(`gearmand ${label(server)}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      conn.onClose((err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(conn);
      });
    });
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  /** Called once when the connection is lost or closed; every pending request has been rejected. */
  onClose(listener: (err: Error) => void): void {
    if (this.closed) listener(this.closeError!);
    else this.closeListeners.push(listener);
  }

  /** Queues a background job; resolves with its handle once gearmand answers JOB_CREATED. */
  submitBackground(fn: string, data: Buffer | string, unique: string, priority: Priority = 'normal'): Promise<string> {
    if (this.closed) return Promise.reject(this.closeError);
    return new Promise((resolve, reject) => {
      this.pending.push({ kind: 'submit', waiter: { resolve, reject } });
      this.send(SUBMIT_BG[priority], [fn, unique, data]);
    });
  }

  // ── worker side ──

  canDo(fn: string): void {
    this.send(CAN_DO, [fn]);
  }

  setWorkerId(id: string): void {
    this.send(SET_CLIENT_ID, [id]);
  }

  /** Asks for one job; null when the queue is empty. A connection may hold several jobs at once. */
  grab(): Promise<Job | null> {
    if (this.closed) return Promise.reject(this.closeError);
    return new Promise((resolve, reject) => {
      this.pending.push({ kind: 'grab', waiter: { resolve, reject } });
      this.send(GRAB_JOB_UNIQ, []);
    });
  }

  /** PRE_SLEEP, then resolves when gearmand says NOOP (work arrived) or after `maxMs`. */
  sleep(maxMs: number): Promise<void> {
    if (this.closed) return Promise.reject(this.closeError);
    return new Promise((resolve) => {
      // NOOP, close() and the timer all end a sleep through the set, so nothing of it outlives it.
      const done = (): void => {
        clearTimeout(timer);
        this.sleepers.delete(done);
        resolve();
      };
      const timer = setTimeout(done, maxMs);
      this.sleepers.add(done);
      this.send(PRE_SLEEP, []);
    });
  }

  /** Callbacks this connection holds (close listeners and pending sleeps): a long-lived worker's must stay flat. */
  get listenerCount(): number {
    return this.closeListeners.length + this.sleepers.size;
  }

  /** Acknowledges a job: gearmand forgets it. Only after its counts are stored. */
  complete(handle: string): void {
    if (this.closed) return;
    this.pending.push({ kind: 'complete' });
    this.send(WORK_COMPLETE, [handle, '']);
  }

  close(): void {
    this.fail(new GearmanUnavailableError(`gearmand ${label(this.server)}: connection closed`));
  }

  /**
   * The request a JOB_CREATED, JOB_ASSIGN or NO_JOB answers: the oldest one
   * after the completions it proves went through. A reply of the wrong kind
   * means the two sides no longer agree on the order: the connection is
   * failed (everything pending is rejected) rather than a reply handed to
   * the wrong request.
   */
  private answer(kind: 'submit'): Waiter<string> | undefined;
  private answer(kind: 'grab'): Waiter<Job | null> | undefined;
  private answer(kind: 'submit' | 'grab'): Waiter<string> | Waiter<Job | null> | undefined {
    while (this.pending[0]?.kind === 'complete') this.pending.shift();
    const head = this.pending[0];
    if (head !== undefined && head.kind === kind) {
      this.pending.shift();
      return head.waiter;
    }
    this.fail(new GearmanUnavailableError(`gearmand ${label(this.server)} sent a reply to a ${kind} while ${head ? `a ${head.kind}` : 'nothing'} was pending`));
    return undefined;
  }

  private send(type: number, args: (string | Buffer)[]): void {
    if (!this.closed) this.socket.write(encodePacket(type, args));
  }

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    for (const p of this.pending.splice(0)) if (p.kind !== 'complete') p.waiter.reject(err);
    for (const done of [...this.sleepers]) done();
    for (const l of this.closeListeners.splice(0)) l(err);
    // end() lets writes already made (a WORK_COMPLETE) reach gearmand; a socket still connecting has none.
    if (this.socket.connecting) this.socket.destroy();
    else this.socket.end();
  }
}

export interface FunctionStatus { queued: number; running: number; workers: number }

/** gearmand's text admin protocol: `status` → per function queued/running/workers. */
export function adminStatus(server: HostPort, timeoutMs = 3000): Promise<Map<string, FunctionStatus>> {
  return adminCommand(server, 'status', timeoutMs).then((lines) => {
    const result = new Map<string, FunctionStatus>();
    for (const line of lines) {
      const [fn, queued, running, workers] = line.split('\t');
      if (fn && workers !== undefined) result.set(fn, { queued: Number(queued), running: Number(running), workers: Number(workers) });
    }
    return result;
  });
}

/** Sends one admin command and collects lines up to the closing ".". */
export function adminCommand(server: HostPort, command: string, timeoutMs = 3000): Promise<string[]> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: server.host, port: server.port, noDelay: true });
    let text = '';
    const timer = setTimeout(() => finish(new GearmanUnavailableError(`gearmand ${label(server)}: admin "${command}" timed out`)), timeoutMs);
    function finish(err?: Error, lines?: string[]): void {
      clearTimeout(timer);
      socket.destroy();
      if (err) reject(err);
      else resolve(lines!);
    }
    socket.on('connect', () => socket.write(`${command}\n`));
    socket.on('data', (chunk) => {
      text += chunk.toString('utf8');
      if (text === '.\n' || text.endsWith('\n.\n') || /^(OK|ERR)[^\n]*\n$/.test(text)) {
        finish(undefined, text.split('\n').filter((l) => l !== '' && l !== '.'));
      }
    });
    socket.on('error', (e) => finish(new GearmanUnavailableError(`gearmand ${label(server)}: ${e.message}`)));
    socket.on('close', () => finish(new GearmanUnavailableError(`gearmand ${label(server)}: admin connection closed`)));
  });
}
