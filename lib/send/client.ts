/**
 * OffLogClient: the application's side. `log()` validates, appends to an
 * in-memory batch and returns — no I/O on the caller's stack. Batches (5000
 * events, 1 MiB or 20 ms, whichever comes first) go out as `offlog.batch`
 * background jobs, spread over the Gearman servers, each kept until gearmand
 * answers JOB_CREATED; a server that fails is rested with
 * backoff and its unacknowledged batches move to another. Memory is bounded:
 * past the cap the oldest batches are dropped and counted.
 *
 * Each batch carries a unique id. gearmand merges a re-sent batch that is
 * still queued, and the worker skips one it already applied, so a batch
 * re-sent after a lost acknowledgement is counted once.
 *
 * Nothing is silent: a server that goes down is an 'error' event (once per
 * outage), events given up are a 'drop' event; both are also options
 * (`onError`, `onDrop`), like hot-shots' errorHandler. `mock: true` records
 * events instead of sending them, for the application's own tests.
 *
 * This module is part of the SDK's light entry (lib/client.ts): it may import
 * only node builtins and other modules of that entry, never a package.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { GearmanUnavailableError } from '../base/errors.ts';
import { label, parseServer, parseServerList, type HostPort } from '../base/servers.ts';
import { batchOf, encodeBatch, encodeTuple, FN_BATCH, parseActionId, parseAt, parsePayload, parseUserId, parseValue, type LogEvent } from '../domain/contract.ts';
import { GearmanConnection, type Priority } from '../wire/gearman.ts';

/** The part of a logger the client uses (pino's Logger has it), so that the client's types need no logging library. */
export interface ClientLogger {
  debug(fields: object, message: string): void;
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
}

/** A server: `'host:port'` text (port 4730 when left out) or `{ host, port }`. */
export type ServerAddress = string | HostPort;

export interface OffLogClientOptions {
  /**
   * The Gearman servers: `'10.0.0.5:4730'`, a comma-separated list, or an
   * array. Default: the OFFLOG_GEARMAN_SERVERS environment variable, else
   * 127.0.0.1:4730 (the SDK runs in the application, which has no OffLog
   * Config: this is the one place it reads the environment).
   */
  servers?: string | readonly ServerAddress[];
  /**
   * Record events in `recorded` instead of sending them: no connection, no
   * timers. For the application's own tests. `stats()` counts them as acknowledged.
   */
  mock?: boolean;
  /** Called as the 'error' event is emitted (a server down, once per outage). */
  onError?: (err: OffLogClientError) => void;
  /** Called as the 'drop' event is emitted (events given up). */
  onDrop?: (drop: DropEvent) => void;
  /**
   * Events per job (default 5000). Big jobs matter: gearmand's persistent
   * queue costs about a millisecond per job (an sqlite insert, then a delete),
   * whatever its size.
   */
  batchSize?: number;
  /** Bytes of JSON per job at most (default 1 MiB): events with big payloads go out in smaller batches. */
  maxBatchBytes?: number;
  /** How long a partly filled batch may wait, ms. */
  lingerMs?: number;
  /** Cap on events held (buffered + sent but not acknowledged). */
  maxBufferedEvents?: number;
  /** Cap on bytes of encoded batches held. */
  maxBufferedBytes?: number;
  /** Unacknowledged jobs per connection. */
  window?: number;
  /** Where the client logs outages and drops: a pino logger, or anything with these three methods. */
  logger?: ClientLogger;
}

/** A server the client could not reach or lost; the client goes on with the others and retries this one. */
export interface OffLogClientError extends Error {
  /** `host:port`. */
  server: string;
}

/** Events the client gave up: they will never be counted. */
export interface DropEvent {
  events: number;
  reason: 'memory' | 'closeTimeout';
  /** Every event dropped so far, for any reason. */
  totalDropped: number;
}

/** An event as `mock: true` records it, after the same validation as a real send. */
export interface RecordedEvent {
  userId: string;
  actionId: number;
  value: number;
  at: number;
  payload: string | undefined;
  /** Sent with logWatchedAction / logWatchedUser. */
  watched: boolean;
  priority: 'normal' | 'high';
}

export interface OffLogClientEvents {
  error: [err: OffLogClientError];
  drop: [drop: DropEvent];
}

const DEFAULT_GEARMAN = '127.0.0.1:4730';
const GEARMAN_PORT = 4730;

/** The servers option, or the environment's default, as addresses; a TypeError names what is wrong. */
export function resolveServers(servers: OffLogClientOptions['servers'], env: Record<string, string | undefined> = process.env): HostPort[] {
  const given = servers ?? (env.OFFLOG_GEARMAN_SERVERS?.trim() || DEFAULT_GEARMAN);
  const from = servers === undefined && env.OFFLOG_GEARMAN_SERVERS?.trim() ? 'OFFLOG_GEARMAN_SERVERS' : 'servers';
  if (typeof given === 'string') {
    const list = parseServerList(given, GEARMAN_PORT);
    if (typeof list === 'string') throw new TypeError(`${from}: ${list}`);
    return list;
  }
  if (given.length === 0) throw new TypeError('servers: at least one Gearman server is needed');
  return given.map((s, i) => {
    if (typeof s !== 'string') {
      if (typeof s?.host !== 'string' || !Number.isInteger(s.port) || s.port < 1 || s.port > 65535) throw new TypeError(`servers[${i}]: must be 'host:port' or { host, port }, got ${JSON.stringify(s)}`);
      return { host: s.host, port: s.port };
    }
    const one = parseServer(s, GEARMAN_PORT);
    if (typeof one === 'string') throw new TypeError(`servers[${i}]: ${one}`);
    return one;
  });
}

export interface LogOptions {
  value?: number;
  /** Epoch ms or a Date; defaults to now. */
  at?: number | Date;
  payload?: string;
}

export interface ServerStats {
  state: 'up' | 'down' | 'connecting' | 'idle';
  sentJobs: number;
  acknowledgedJobs: number;
  errors: number;
  reconnects: number;
}

/** Always balances: accepted = acknowledged + dropped + buffered + inFlight. */
export interface ClientStats {
  accepted: number;
  /** Events with a server now or acknowledged (acknowledged + inFlight). */
  sent: number;
  acknowledged: number;
  /** Events held here, not yet with a server. */
  buffered: number;
  /** Events sent to gearmand, not yet acknowledged. */
  inFlight: number;
  /** Never acknowledged and given up: past the memory cap, or still unacknowledged when close() ran out of time. */
  dropped: number;
  droppedBecause: { memory: number; closeTimeout: number };
  reconnects: number;
  servers: Record<string, ServerStats>;
}

interface Batch {
  unique: string;
  body: string;
  events: number;
  priority: Priority;
}

interface Server {
  address: HostPort;
  conn: GearmanConnection | null;
  /** The connection attempt under way, shared by every caller that needs this server meanwhile. */
  opening: Promise<GearmanConnection> | null;
  downUntil: number;
  backoffMs: number;
  inflight: number;
  everConnected: boolean;
  /** When the current outage began (null: none): an outage is logged once at warn, and its end once at info. */
  downSince: number | null;
  stats: ServerStats;
}

const MIN_BACKOFF_MS = 50;
const MAX_BACKOFF_MS = 5000;
/** Events per job unless told otherwise (see batchSize). */
export const DEFAULT_BATCH_EVENTS = 5000;

export class OffLogClient extends EventEmitter<OffLogClientEvents> {
  /** What `mock: true` recorded, oldest first (always empty otherwise). `recorded.length = 0` clears it. */
  readonly recorded: RecordedEvent[] = [];
  private readonly mock: boolean;
  private readonly batchSize: number;
  private readonly maxBatchBytes: number;
  private readonly lingerMs: number;
  private readonly maxEvents: number;
  private readonly maxBytes: number;
  private readonly window: number;
  private readonly logger: ClientLogger | undefined;
  private readonly servers: Server[];
  private readonly idPrefix = `${randomBytes(6).toString('base64url')}-`;
  private seq = 0;

  /** Events not yet sealed into a batch, already encoded as tuples. */
  private normal: string[] = [];
  private high: string[] = [];
  /** Whether `normal` / `high` hold a watched tuple: only such a batch is written as version 2. */
  private normalWatched = false;
  private highWatched = false;
  /** Bytes of the tuples in `normal` (ASCII but for payloads, whose bytes are counted generously). */
  private normalBytes = 0;
  private lingerTimer: NodeJS.Timeout | null = null;
  /** Sealed batches waiting for a server, oldest first. */
  private readonly queue: Batch[] = [];
  /** Batches a server has and has not acknowledged: each leaves exactly once, acknowledged, given back, or dropped by close(). */
  private readonly inFlight = new Set<Batch>();
  private inFlightEvents = 0;
  /** Events and bytes of sealed batches, queued or in flight (what the memory cap bounds). */
  private heldEvents = 0;
  private heldBytes = 0;
  private pumpScheduled = false;
  private retryTimer: NodeJS.Timeout | null = null;
  private next = 0;
  private closed = false;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly counters = { accepted: 0, sent: 0, acknowledged: 0, droppedMemory: 0, droppedClose: 0, reconnects: 0 };

  constructor(options: OffLogClientOptions = {}) {
    super();
    this.mock = options.mock === true;
    // With no listener, Node would throw an 'error' event at the caller: the client must never do that.
    if (options.onError) this.on('error', options.onError);
    if (options.onDrop) this.on('drop', options.onDrop);
    this.batchSize = options.batchSize ?? DEFAULT_BATCH_EVENTS;
    this.maxBatchBytes = options.maxBatchBytes ?? 1024 * 1024;
    this.lingerMs = options.lingerMs ?? 20;
    this.maxEvents = options.maxBufferedEvents ?? 1_000_000;
    this.maxBytes = options.maxBufferedBytes ?? 64 * 1024 * 1024;
    this.window = options.window ?? 32;
    this.logger = options.logger;
    this.servers = (this.mock ? [] : resolveServers(options.servers)).map((address) => ({
      address,
      conn: null,
      opening: null,
      downUntil: 0,
      backoffMs: MIN_BACKOFF_MS,
      inflight: 0,
      everConnected: false,
      downSince: null,
      stats: { state: 'idle', sentJobs: 0, acknowledgedJobs: 0, errors: 0, reconnects: 0 },
    }));
  }

  /**
   * Counts one event. Returns at once; never throws for a network fault.
   * Throws a TypeError for an invalid argument: a programming error.
   */
  log(userId: number | string | bigint, actionId: number, options?: LogOptions): void {
    this.push(userId, actionId, options, 'normal');
  }

  /** Alias of `log(userId, actionId)`: the PHP client's name, kept for teams porting line by line. */
  logSimpleAction(userId: number | string | bigint, actionId: number): void {
    this.push(userId, actionId, undefined, 'normal');
  }

  /**
   * Counts the event and keeps its raw record (time, user, action, value,
   * payload) in the watched-events table, published as `ActivityWatched`,
   * whatever the watch lists say. The PHP client had two names for it.
   */
  logWatchedAction(userId: number | string | bigint, actionId: number, payload?: string, options?: Omit<LogOptions, 'payload'>): void {
    this.push(userId, actionId, { ...options, payload }, 'normal', true);
  }

  logWatchedUser(userId: number | string | bigint, actionId: number, payload?: string, options?: Omit<LogOptions, 'payload'>): void {
    this.push(userId, actionId, { ...options, payload }, 'normal', true);
  }

  /** Error-type actions go out at high priority (SUBMIT_JOB_HIGH_BG), ahead of the queue. */
  logErrorReturn(userId: number | string | bigint, actionId: number, payload?: string): void {
    this.push(userId, actionId, payload === undefined ? undefined : { payload }, 'high');
  }

  /**
   * Sends already-validated events as one job now, bypassing the buffer: for
   * the HTTP ingest, which must answer 503 rather than keep what it cannot place.
   */
  async send(events: readonly LogEvent[]): Promise<void> {
    if (this.mock) {
      for (const e of events) this.recorded.push({ userId: e.userId, actionId: e.actionId, value: e.value, at: e.at, payload: e.payload, watched: e.watched === true, priority: 'normal' });
      this.counters.accepted += events.length;
      this.counters.sent += events.length;
      this.counters.acknowledged += events.length;
      return;
    }
    const batch: Batch = { unique: this.nextId(), body: encodeBatch(events), events: events.length, priority: 'normal' };
    const errors: string[] = [];
    for (let i = 0; i < this.servers.length; i++) {
      const server = this.servers[(this.next + i) % this.servers.length]!;
      let conn: GearmanConnection | null = null;
      try {
        conn = server.conn?.isOpen ? server.conn : await this.open(server);
        await conn.submitBackground(FN_BATCH, batch.body, batch.unique, batch.priority);
        this.next = (this.next + i + 1) % this.servers.length;
        this.counters.accepted += events.length;
        this.counters.sent += events.length;
        this.counters.acknowledged += events.length;
        server.stats.sentJobs++;
        server.stats.acknowledgedJobs++;
        return;
      } catch (err) {
        errors.push((err as Error).message);
        if (conn) this.markDown(server, err as Error, conn); // open() marks its own failures
      }
    }
    throw new GearmanUnavailableError(`no Gearman server took the job: ${errors.join('; ')}`);
  }

  /** Sends what is buffered and resolves when gearmand has acknowledged all of it (or `timeoutMs` passed). */
  async flush(options: { timeoutMs?: number } = {}): Promise<boolean> {
    this.seal();
    if (this.isIdle()) return true;
    this.schedulePump();
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        const i = this.idleWaiters.indexOf(done);
        if (i >= 0) this.idleWaiters.splice(i, 1);
        resolve(false);
      }, options.timeoutMs ?? 30_000);
      const done = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      this.idleWaiters.push(done);
    });
  }

  /** Drains (up to `timeoutMs`), then closes every connection; what could not be sent is counted as dropped. */
  async close(options: { timeoutMs?: number } = {}): Promise<ClientStats> {
    await this.flush(options);
    this.closed = true;
    if (this.lingerTimer) clearTimeout(this.lingerTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    const before = this.counters.droppedClose;
    for (const b of this.queue.splice(0)) this.counters.droppedClose += b.events;
    // Unacknowledged at the deadline: given up here, so the rejections closing brings are not counted again.
    for (const b of this.inFlight) this.counters.droppedClose += b.events;
    if (this.counters.droppedClose > before) this.emitDrop(this.counters.droppedClose - before, 'closeTimeout');
    this.counters.sent -= this.inFlightEvents;
    this.inFlight.clear();
    this.inFlightEvents = 0;
    this.heldEvents = 0;
    this.heldBytes = 0;
    for (const s of this.servers) {
      s.conn?.close();
      s.conn = null;
    }
    return this.stats();
  }

  stats(): ClientStats {
    const servers: Record<string, ServerStats> = {};
    for (const s of this.servers) servers[label(s.address)] = { ...s.stats };
    const c = this.counters;
    return {
      accepted: c.accepted,
      sent: c.sent,
      acknowledged: c.acknowledged,
      buffered: this.heldEvents - this.inFlightEvents + this.normal.length + this.high.length,
      inFlight: this.inFlightEvents,
      dropped: c.droppedMemory + c.droppedClose,
      droppedBecause: { memory: c.droppedMemory, closeTimeout: c.droppedClose },
      reconnects: c.reconnects,
      servers,
    };
  }

  // ── the hot path ──

  private push(userId: number | string | bigint, actionId: number, o: LogOptions | undefined, priority: Priority, watched = false): void {
    if (this.closed) throw new TypeError('OffLogClient is closed');
    // The contract's own rules (InputError is a TypeError): the client refuses exactly what the worker would.
    const user = parseUserId(typeof userId === 'bigint' ? userId.toString() : userId);
    const action = parseActionId(actionId);
    let tuple: string;
    if (o === undefined) {
      tuple = encodeTuple(user, action, 0, Date.now(), undefined);
    } else {
      const at = o.at instanceof Date ? o.at.getTime() : o.at;
      tuple = encodeTuple(user, action, parseValue(o.value), parseAt(at, Date.now()), parsePayload(o.payload), watched);
    }
    if (this.mock) {
      const at = o?.at instanceof Date ? o.at.getTime() : o?.at;
      this.record({ userId: user, actionId: action, value: parseValue(o?.value), at: parseAt(at, Date.now()), payload: parsePayload(o?.payload), watched, priority: priority === 'high' ? 'high' : 'normal' });
      return;
    }
    this.add(tuple, priority, watched, o?.payload !== undefined);
  }

  /** `mock: true`: the event is kept in `recorded`, counted as sent and acknowledged, and goes nowhere. */
  private record(event: RecordedEvent): void {
    this.counters.accepted++;
    this.counters.sent++;
    this.counters.acknowledged++;
    this.recorded.push(event);
  }

  /**
   * Events already validated by the contract's parsers (the agent decoded
   * them): buffered like log()'s, without parsing them again.
   */
  append(events: readonly LogEvent[], priority: Priority = 'normal'): void {
    if (this.closed) throw new TypeError('OffLogClient is closed');
    if (this.mock) {
      for (const e of events) this.record({ userId: e.userId, actionId: e.actionId, value: e.value, at: e.at, payload: e.payload, watched: e.watched === true, priority: priority === 'high' ? 'high' : 'normal' });
      return;
    }
    for (const e of events) {
      const watched = e.watched === true;
      this.add(encodeTuple(e.userId, e.actionId, e.value, e.at, e.payload, watched), priority, watched, e.payload !== undefined, priority === 'high');
    }
    // High priority seals at once, but a list of them goes as one batch, not one each.
    if (priority === 'high' && events.length > 0) this.seal();
  }

  /** Events and (about) bytes held here, neither acknowledged nor dropped: what a caller pushing back watches. */
  backlog(): { events: number; bytes: number } {
    return { events: this.heldEvents + this.normal.length + this.high.length, bytes: this.heldBytes + this.normalBytes };
  }

  private add(tuple: string, priority: Priority, watched: boolean, hasPayload: boolean, deferHigh = false): void {
    this.counters.accepted++;
    const buf = priority === 'high' ? this.high : this.normal;
    buf.push(tuple);
    if (watched) {
      if (priority === 'high') this.highWatched = true;
      else this.normalWatched = true;
    }
    // A tuple's length in UTF-16 units, ×3 when a payload may hold non-ASCII: an upper bound on its bytes, without encoding it.
    if (priority === 'normal') this.normalBytes += hasPayload ? tuple.length * 3 + 1 : tuple.length + 1;
    if (buf.length >= this.batchSize || this.normalBytes >= this.maxBatchBytes || (priority === 'high' && !deferHigh)) this.seal();
    else if (this.lingerTimer === null) {
      this.lingerTimer = setTimeout(() => this.seal(), this.lingerMs);
      this.lingerTimer.unref();
    }
  }

  /** Turns the open buffers into batches and schedules sending them. */
  private seal(): void {
    if (this.lingerTimer) {
      clearTimeout(this.lingerTimer);
      this.lingerTimer = null;
    }
    for (const priority of ['high', 'normal'] as const) {
      const buf = priority === 'high' ? this.high : this.normal;
      if (buf.length === 0) continue;
      const watched = priority === 'high' ? this.highWatched : this.normalWatched;
      const batch: Batch = { unique: this.nextId(), body: batchOf(buf, watched), events: buf.length, priority };
      if (priority === 'high') {
        this.high = [];
        this.highWatched = false;
        this.queue.unshift(batch);
      } else {
        this.normal = [];
        this.normalWatched = false;
        this.normalBytes = 0;
        this.queue.push(batch);
      }
      this.heldEvents += batch.events;
      this.heldBytes += batch.body.length;
    }
    this.enforceBound();
    this.schedulePump();
  }

  /** Past the cap, the oldest batches not yet with a server go first. */
  private enforceBound(): void {
    while ((this.heldEvents > this.maxEvents || this.heldBytes > this.maxBytes) && this.queue.length > 0) {
      const oldest = this.queue.findIndex((b) => b.priority === 'normal');
      const [b] = this.queue.splice(oldest >= 0 ? oldest : 0, 1);
      this.heldEvents -= b!.events;
      this.heldBytes -= b!.body.length;
      this.counters.droppedMemory += b!.events;
      this.emitDrop(b!.events, 'memory');
      if (this.counters.droppedMemory === b!.events || this.counters.droppedMemory % 100_000 < b!.events) {
        this.logger?.warn({ dropped: this.counters.droppedMemory }, 'OffLogClient buffer full: dropping the oldest events');
      }
    }
  }

  private schedulePump(): void {
    if (this.pumpScheduled || this.closed) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  /** Hands queued batches to servers with room in their window, round robin. */
  private pump(): void {
    const now = Date.now();
    while (this.queue.length > 0) {
      const server = this.pickServer();
      if (!server) break;
      const batch = this.queue.shift()!;
      this.submit(server, batch);
    }
    if (this.queue.length > 0) {
      // Nobody can take more now: connect the servers whose rest is over, and look again later.
      let wake = Infinity;
      for (const s of this.servers) {
        if (s.conn === null && s.opening === null) {
          if (s.downUntil <= now) void this.open(s).then(() => this.schedulePump(), () => this.schedulePump());
          else wake = Math.min(wake, s.downUntil);
        }
      }
      if (wake !== Infinity && this.retryTimer === null) {
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          this.pump();
        }, Math.max(1, wake - now));
        this.retryTimer.unref();
      }
    }
    this.checkIdle();
  }

  private pickServer(): Server | undefined {
    for (let i = 0; i < this.servers.length; i++) {
      const s = this.servers[(this.next + i) % this.servers.length]!;
      if (s.conn?.isOpen && s.inflight < this.window) {
        this.next = (this.next + i + 1) % this.servers.length;
        return s;
      }
    }
    return undefined;
  }

  private submit(server: Server, batch: Batch): void {
    server.inflight++;
    server.stats.sentJobs++;
    this.counters.sent += batch.events;
    this.inFlight.add(batch);
    this.inFlightEvents += batch.events;
    const settled = (): boolean => {
      server.inflight--;
      if (!this.inFlight.delete(batch)) return false; // close() already counted it as dropped
      this.inFlightEvents -= batch.events;
      return true;
    };
    const conn = server.conn!;
    conn.submitBackground(FN_BATCH, batch.body, batch.unique, batch.priority).then(
      () => {
        if (!settled()) return;
        server.stats.acknowledgedJobs++;
        server.backoffMs = MIN_BACKOFF_MS;
        this.counters.acknowledged += batch.events;
        this.heldEvents -= batch.events;
        this.heldBytes -= batch.body.length;
        this.schedulePump();
      },
      (err: Error) => {
        // Not acknowledged: give it back, at the front, for a live server.
        if (!settled()) return;
        this.counters.sent -= batch.events;
        this.queue.unshift(batch);
        this.markDown(server, err, conn);
        this.schedulePump();
      },
    );
  }

  /** Connects to a server, or joins the attempt already under way: one connection per server, whoever asks. */
  private open(server: Server): Promise<GearmanConnection> {
    server.opening ??= this.connect(server).finally(() => {
      server.opening = null;
    });
    return server.opening;
  }

  private async connect(server: Server): Promise<GearmanConnection> {
    server.stats.state = 'connecting';
    try {
      const conn = await GearmanConnection.connect(server.address);
      if (this.closed) {
        conn.close();
        throw new GearmanUnavailableError('client closed');
      }
      if (server.everConnected) {
        server.stats.reconnects++;
        this.counters.reconnects++;
      }
      server.everConnected = true;
      if (server.downSince !== null) {
        this.logger?.info({ server: label(server.address), downMs: Date.now() - server.downSince }, 'Gearman server back');
        server.downSince = null;
      }
      server.conn = conn;
      server.stats.state = 'up';
      conn.onClose((err) => this.markDown(server, err, conn));
      return conn;
    } catch (err) {
      this.markDown(server, err as Error, null);
      throw err;
    }
  }

  /**
   * `failed` is the connection that failed (null: a connection attempt). A
   * failure of a connection the server no longer uses is old news: it must not
   * close or rest the one that replaced it.
   */
  private markDown(server: Server, err: Error, failed: GearmanConnection | null): void {
    if (failed !== server.conn) return;
    if (server.conn && server.conn.isOpen) server.conn.close();
    const wasUp = server.stats.state === 'up' || server.stats.state === 'connecting';
    server.conn = null;
    if (wasUp) {
      server.stats.errors++;
      server.downUntil = Date.now() + server.backoffMs;
      server.backoffMs = Math.min(MAX_BACKOFF_MS, server.backoffMs * 2);
      if (!this.closed) {
        // Every failed attempt of one outage at debug: a server down for an hour is one warning, not 700.
        const level = server.downSince === null ? 'warn' : 'debug';
        if (server.downSince === null) this.emitError(server, err);
        server.downSince ??= Date.now();
        this.logger?.[level]({ server: label(server.address), err: err.message, retryInMs: server.downUntil - Date.now() }, 'Gearman server down; resting it');
      }
    }
    server.stats.state = 'down';
  }

  private emitError(server: Server, err: Error): void {
    if (this.listenerCount('error') === 0) return;
    const e = new GearmanUnavailableError(`Gearman server ${label(server.address)} is down (${err.message}); the client uses the others and retries it`) as GearmanUnavailableError & OffLogClientError;
    e.server = label(server.address);
    this.emit('error', e);
  }

  private emitDrop(events: number, reason: DropEvent['reason']): void {
    this.emit('drop', { events, reason, totalDropped: this.counters.droppedMemory + this.counters.droppedClose });
  }

  private isIdle(): boolean {
    return this.queue.length === 0 && this.normal.length === 0 && this.high.length === 0 && this.servers.every((s) => s.inflight === 0);
  }

  private checkIdle(): void {
    if (this.idleWaiters.length > 0 && this.isIdle()) for (const w of this.idleWaiters.splice(0)) w();
  }

  private nextId(): string {
    return this.idPrefix + (++this.seq).toString(36);
  }
}

