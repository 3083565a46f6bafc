/**
 * The one place that speaks Gearman. A promise-shaped wrapper over the bare
 * `gearman` package: one server per connection, requests answered in order.
 *
 * The package leaves Nagle's algorithm on and hides its socket; we patch it to
 * call setNoDelay(true) (patches/gearman+2.1.0.patch, applied by patch-package
 * on install) — without it a worker manages about 23 jobs/s.
 */
import gearman, { type GearmanSocket } from 'gearman';
import net from 'node:net';
import { label, type HostPort } from '../base/config.ts';
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
  private readonly socket: GearmanSocket;
  private closed = false;
  private closeError: Error | undefined;
  /** gearmand answers a connection's requests strictly in order: one FIFO of them, oldest first, matches each reply to its request. */
  private readonly pending: Pending[] = [];
  /** Pending sleep() calls: each leaves the set when it ends, however it ends. */
  private readonly sleepers = new Set<() => void>();
  private readonly closeListeners: ((err: Error) => void)[] = [];

  private constructor(server: HostPort, socket: GearmanSocket) {
    this.server = server;
    this.socket = socket;
    socket.on('JOB_CREATED', (handle) => this.answer('submit')?.resolve(handle));
    socket.on('ERROR', (code, text) => {
      // The oldest request is the one refused; gearmand keeps the connection.
      const refused = this.pending.shift();
      // A refused WORK_COMPLETE names a job gearmand no longer holds for us: nothing waits on it, and nothing is left to redo.
      if (refused !== undefined && refused.kind !== 'complete') {
        refused.waiter.reject(new GearmanUnavailableError(`gearmand ${label(server)} answered ERROR ${code}: ${text}`));
      }
    });
    socket.on('JOB_ASSIGN_UNIQ', (j) =>
      this.answer('grab')?.resolve({ handle: j.handle, fn: j.func_name, unique: j.unique_id, data: j.payload, conn: this }),
    );
    socket.on('NO_JOB', () => this.answer('grab')?.resolve(null));
    socket.on('NOOP', () => this.wakeSleepers());
    socket.on('error', (err) => this.fail(new GearmanUnavailableError(`gearmand ${label(server)}: ${err.message}`)));
    socket.on('close', () => this.fail(new GearmanUnavailableError(`gearmand ${label(server)} closed the connection`)));
  }

  static connect(server: HostPort, timeoutMs = 3000): Promise<GearmanConnection> {
    return new Promise((resolve, reject) => {
      const socket = gearman(server.host, server.port);
      const conn = new GearmanConnection(server, socket);
      const timer = setTimeout(() => {
        conn.close();
        reject(new GearmanUnavailableError(`gearmand ${label(server)}: no connection within ${timeoutMs} ms`));
      }, timeoutMs);
      conn.onClose((err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.connect(() => {
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
      this.socket.submitJob(fn, data, { background: true, priority, unique_id: unique });
    });
  }

  // ── worker side ──

  canDo(fn: string): void {
    this.socket.addFunction(fn);
  }

  setWorkerId(id: string): void {
    this.socket.setWorkerId(id);
  }

  /** Asks for one job; null when the queue is empty. A connection may hold several jobs at once. */
  grab(): Promise<Job | null> {
    if (this.closed) return Promise.reject(this.closeError);
    return new Promise((resolve, reject) => {
      this.pending.push({ kind: 'grab', waiter: { resolve, reject } });
      this.socket.grabUniqueJob();
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
      this.socket.preSleep();
    });
  }

  /** Callbacks this connection holds (close listeners and pending sleeps): a long-lived worker's must stay flat. */
  get listenerCount(): number {
    return this.closeListeners.length + this.sleepers.size;
  }

  private wakeSleepers(): void {
    for (const done of [...this.sleepers]) done();
  }

  /** Acknowledges a job: gearmand forgets it. Only after its counts are stored. */
  complete(handle: string): void {
    if (this.closed) return;
    this.pending.push({ kind: 'complete' });
    this.socket.sendWorkComplete(handle, '');
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

  private fail(err: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.closeError = err;
    for (const p of this.pending.splice(0)) if (p.kind !== 'complete') p.waiter.reject(err);
    this.wakeSleepers();
    for (const l of this.closeListeners.splice(0)) l(err);
    this.socket.close();
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
