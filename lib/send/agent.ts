/**
 * The agent: one per web host. Local processes (PHP first) write frames to a
 * unix socket (and, optionally, a loopback TCP port); each batch frame is
 * decoded with the contract's parser and handed to OffLogClient, which
 * batches across requests, fails over between Gearman servers and bounds its
 * memory. The agent never lets the client reach that bound: past `maxHeld`
 * unacknowledged events it stops reading every socket, the kernel buffers
 * fill, and writers see a full socket (PHP then sends straight to gearmand).
 *
 * Frames (docs/php.md): one per line —
 *   {"v":1,"e":[…]}          an offlog.batch body, normal priority
 *   !{"v":1,"e":[…]}         the same, high priority (errors)
 *   report {"fallback":n,"dropped":m}   what a client sent around the agent, for the stats
 *   stats                    answered with one JSON line of stats
 * and a control socket beside it (`<socket>.ctl`) that takes only `stats`
 * and is never paused, so the figures stay readable while the agent pushes back.
 */
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname } from 'node:path';
import { InputError } from '../base/errors.ts';
import type { Logger } from '../base/log.ts';
import { decodeBatch, excerpt } from '../domain/contract.ts';
import type { OffLogClient } from './client.ts';
import { FrameSplitter, type FrameSink } from './agent-frames.ts';

export interface AgentOptions {
  socketPath: string;
  /** Also listen on 127.0.0.1:tcpPort. */
  tcpPort?: number | undefined;
  /** Unacknowledged events past which the agent stops reading. */
  maxHeld: number;
  /** Bytes of unacknowledged batches past which it stops reading too. */
  maxHeldBytes: number;
  maxFrameBytes: number;
  /** Where the crash checkpoint lives. */
  stateFile: string;
  /** A stats line at info every so many seconds (0: never). */
  statsSeconds: number;
  checkpointMs?: number;
}

/** Who reads the agent's figures: `offlog status`, the `stats` frame, the stats line. */
export interface AgentStats {
  /** Events decoded from frames and handed to the client. */
  received: number;
  /** Events gearmand acknowledged. */
  sent: number;
  /** Events clients reported sending straight to gearmand (agent absent or full). */
  fallbackReported: number;
  /** Events clients reported dropping (agent and gearmand both unreachable). */
  droppedReported: number;
  /** Events the client gave up (close timeout; the memory cap is never reached). */
  dropped: number;
  /** Events held: received, neither acknowledged nor dropped. */
  queueDepth: number;
  rejected: { frames: number; overlong: number; cutMidFrame: number; unknown: number };
  connections: number;
  paused: boolean;
  pauses: number;
  /** What the previous run left, if it ended uncleanly. */
  lastRun: UncleanRun | null;
  /** The most a crash can lose, in events (held + one read), besides what sits unread in the kernel's socket buffers. */
  lossBound: number;
}

export interface UncleanRun {
  pid: number;
  /** Its last checkpoint (ISO-8601). */
  checkpointAt: string;
  /** Events it held then. */
  held: number;
  /** Up to this many events may be lost. */
  upTo: number;
}

interface Checkpoint {
  pid: number;
  clean: boolean;
  at: string;
  received: number;
  sent: number;
  held: number;
  lossBound: number;
}

/** The shortest event on the wire, `[0,1,0,0]` and its comma: the bound in events of a number of bytes. */
const MIN_EVENT_BYTES = 10;
/** What one socket read can carry past the pause point. */
const READ_BYTES = 64 * 1024;

export class Agent {
  private readonly servers: net.Server[] = [];
  private readonly conns = new Set<net.Socket>();
  private readonly controlConns = new Set<net.Socket>();
  private paused = false;
  private resumeTimer: NodeJS.Timeout | null = null;
  private checkpointTimer: NodeJS.Timeout | null = null;
  private statsTimer: NodeJS.Timeout | null = null;
  private lastRun: UncleanRun | null = null;
  private readonly c = {
    received: 0, fallbackReported: 0, droppedReported: 0, rejectedFrames: 0, overlong: 0, cutMidFrame: 0, unknown: 0, pauses: 0,
  };
  readonly lossBound: number;

  constructor(private readonly client: OffLogClient, private readonly o: AgentOptions, private readonly log: Logger) {
    this.lossBound = o.maxHeld + Math.ceil((o.maxFrameBytes + READ_BYTES) / MIN_EVENT_BYTES);
  }

  /** Reports an unclean previous run, then listens. */
  async start(): Promise<void> {
    this.lastRun = this.readLastRun();
    if (this.lastRun) {
      this.log.warn({ lastRun: this.lastRun }, `the last agent run (pid ${this.lastRun.pid}) ended uncleanly: up to ${this.lastRun.upTo} events may be lost (it held ${this.lastRun.held} at its last checkpoint, ${this.lastRun.checkpointAt})`);
    }
    await this.listenUnix();
    if (this.o.tcpPort !== undefined) await this.listen(net.createServer((s) => this.accept(s)), { host: '127.0.0.1', port: this.o.tcpPort });
    this.checkpoint(false);
    this.checkpointTimer = setInterval(() => this.checkpoint(false), this.o.checkpointMs ?? 200);
    this.checkpointTimer.unref();
    if (this.o.statsSeconds > 0) {
      this.statsTimer = setInterval(() => this.log.info({ stats: this.stats() }, 'agent stats'), this.o.statsSeconds * 1000);
      this.statsTimer.unref();
    }
    this.log.info({ socket: this.o.socketPath, tcpPort: this.o.tcpPort, maxHeld: this.o.maxHeld, lossBound: this.lossBound }, 'agent listening');
  }

  stats(): AgentStats {
    const s = this.client.stats();
    const c = this.c;
    return {
      received: c.received,
      sent: s.acknowledged,
      fallbackReported: c.fallbackReported,
      droppedReported: c.droppedReported,
      dropped: s.dropped,
      queueDepth: this.client.backlog().events,
      rejected: { frames: c.rejectedFrames, overlong: c.overlong, cutMidFrame: c.cutMidFrame, unknown: c.unknown },
      connections: this.conns.size,
      paused: this.paused,
      pauses: c.pauses,
      lastRun: this.lastRun,
      lossBound: this.lossBound,
    };
  }

  /**
   * SIGTERM: stop listening (new writers fall back to gearmand), read each
   * connection until it has been quiet for `quietMs` (at most `graceMs`), close
   * them, drain the client to gearmand, and mark the run clean.
   */
  async stop({ quietMs = 100, graceMs = 2000, drainMs = 30_000 } = {}): Promise<AgentStats> {
    // close() waits for every connection to end: data connections are read a while longer below, control ones just go.
    const closed = Promise.all(this.servers.splice(0).map((s) => new Promise((r) => s.close(r))));
    for (const s of this.controlConns) s.destroy();
    this.resumeAll();
    const deadline = Date.now() + graceMs;
    let seen = -1;
    while (this.conns.size > 0 && Date.now() < deadline && seen !== this.c.received + this.c.rejectedFrames) {
      seen = this.c.received + this.c.rejectedFrames;
      await new Promise((r) => setTimeout(r, quietMs));
    }
    for (const s of this.conns) s.destroy();
    await closed;
    await this.client.close({ timeoutMs: drainMs });
    for (const t of [this.resumeTimer, this.checkpointTimer, this.statsTimer]) if (t) clearInterval(t);
    const stats = this.stats();
    this.checkpoint(true);
    this.log.info({ stats }, 'agent stopped');
    return stats;
  }

  // ── sockets ──

  private async listenUnix(): Promise<void> {
    const path = this.o.socketPath;
    mkdirSync(dirname(path), { recursive: true });
    if (await answers(path)) throw new Error(`another agent already listens on ${path}`);
    // Stale sockets left by a crash.
    rmSync(path, { force: true });
    rmSync(controlPath(path), { force: true });
    await this.listen(net.createServer((s) => this.accept(s)), { path });
    await this.listen(net.createServer((s) => this.control(s)), { path: controlPath(path) });
  }

  /** The control socket: `stats` only, read even while the data sockets are paused. */
  private control(socket: net.Socket): void {
    const splitter = new FrameSplitter(64);
    const sink: FrameSink = {
      frame: (f) => {
        if (f.toString('latin1') === 'stats') socket.write(`${JSON.stringify(this.stats())}\n`);
        else this.reject('unknown', 'control frame', `is not "stats": ${excerpt(f.toString('utf8'))}`);
      },
      overlong: () => this.reject('overlong', 'control frame', 'is longer than 64 bytes'),
    };
    this.controlConns.add(socket);
    socket.on('data', (chunk: Buffer) => splitter.push(chunk, sink));
    socket.on('error', () => undefined);
    socket.on('close', () => this.controlConns.delete(socket));
  }

  private listen(server: net.Server, where: net.ListenOptions): Promise<void> {
    return new Promise((resolve, reject) => {
      server.once('error', reject).listen(where, () => {
        server.off('error', reject);
        this.servers.push(server);
        resolve();
      });
    });
  }

  private accept(socket: net.Socket): void {
    this.conns.add(socket);
    if (this.paused) socket.pause();
    const splitter = new FrameSplitter(this.o.maxFrameBytes);
    const sink: FrameSink = {
      frame: (f) => this.frame(f, socket),
      overlong: (bytes) => this.reject('overlong', 'frame', `is longer than ${this.o.maxFrameBytes} bytes (${bytes} seen); skipped up to its newline`),
    };
    socket.on('data', (chunk: Buffer) => {
      splitter.push(chunk, sink);
      this.pressure();
    });
    socket.on('error', () => undefined); // 'close' follows and says what matters
    socket.on('close', () => {
      this.conns.delete(socket);
      if (splitter.pending > 0) this.reject('cutMidFrame', 'frame', `the writer disconnected mid-frame (${splitter.pending} bytes without a newline); that frame is dropped`);
    });
  }

  private frame(f: Buffer, socket: net.Socket): void {
    if (f.length === 0) return;
    const first = f[0];
    if (first === 0x7b /* { */ || first === 0x21 /* ! */) {
      const high = first === 0x21;
      try {
        const events = decodeBatch(high ? f.subarray(1) : f, Date.now());
        this.client.append(events, high ? 'high' : 'normal');
        this.c.received += events.length;
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        this.reject('rejectedFrames', err.field, err.rule);
      }
    } else if (f.length === 5 && f.toString('latin1') === 'stats') {
      socket.write(`${JSON.stringify(this.stats())}\n`);
    } else if (f.subarray(0, 7).toString('latin1') === 'report ') {
      this.report(f.subarray(7));
    } else {
      this.reject('unknown', 'frame', `is not a batch ({…} or !{…}), "report {…}" or "stats": ${excerpt(f.subarray(0, 60).toString('utf8'))}`);
    }
  }

  private report(body: Buffer): void {
    let r: { fallback?: unknown; dropped?: unknown };
    try {
      r = JSON.parse(body.toString('utf8')) as typeof r;
    } catch {
      return this.reject('rejectedFrames', 'report', `is not JSON: ${excerpt(body.toString('utf8'))}`);
    }
    const count = (v: unknown): v is number => v === undefined || (Number.isSafeInteger(v) && (v as number) >= 0);
    if (typeof r !== 'object' || r === null || !count(r.fallback) || !count(r.dropped)) {
      return this.reject('rejectedFrames', 'report', `must be {"fallback": n, "dropped": n} with whole numbers, got ${excerpt(r)}`);
    }
    this.c.fallbackReported += (r.fallback as number | undefined) ?? 0;
    this.c.droppedReported += (r.dropped as number | undefined) ?? 0;
  }

  /** One log line naming what was wrong, one count; the connection carries on. */
  private reject(counter: 'rejectedFrames' | 'overlong' | 'cutMidFrame' | 'unknown', field: string, rule: string): void {
    this.c[counter]++;
    this.log.warn({ field, rejected: counter }, `agent: bad frame: ${field}: ${rule}`);
  }

  // ── pressure ──

  private pressure(): void {
    if (this.paused) return;
    const b = this.client.backlog();
    if (b.events < this.o.maxHeld && b.bytes < this.o.maxHeldBytes) return;
    this.paused = true;
    this.c.pauses++;
    for (const s of this.conns) s.pause();
    if (this.c.pauses === 1 || this.c.pauses % 1000 === 0) this.log.warn({ backlog: b, pauses: this.c.pauses }, 'agent: gearmand is not keeping up; reading paused (writers see a full socket)');
    this.resumeTimer = setInterval(() => {
      const now = this.client.backlog();
      if (now.events < this.o.maxHeld / 2 && now.bytes < this.o.maxHeldBytes / 2) this.resumeAll();
    }, 5);
  }

  private resumeAll(): void {
    if (this.resumeTimer) clearInterval(this.resumeTimer);
    this.resumeTimer = null;
    this.paused = false;
    for (const s of this.conns) s.resume();
  }

  // ── crash checkpoint ──

  private checkpoint(clean: boolean): void {
    const s = this.client.stats();
    const cp: Checkpoint = {
      pid: process.pid, clean, at: new Date().toISOString(), received: this.c.received, sent: s.acknowledged,
      held: this.client.backlog().events, lossBound: this.lossBound,
    };
    try {
      writeFileSync(`${this.o.stateFile}.tmp`, JSON.stringify(cp));
      renameSync(`${this.o.stateFile}.tmp`, this.o.stateFile);
    } catch (err) {
      this.log.warn({ err: (err as Error).message, stateFile: this.o.stateFile }, 'agent: cannot write its checkpoint; a crash will not be reported on restart');
    }
  }

  private readLastRun(): UncleanRun | null {
    let cp: Checkpoint;
    try {
      cp = JSON.parse(readFileSync(this.o.stateFile, 'utf8')) as Checkpoint;
    } catch {
      return null; // first run, or no state file
    }
    if (cp.clean) return null;
    return { pid: cp.pid, checkpointAt: cp.at, held: cp.held, upTo: cp.lossBound };
  }
}

/** Whether something accepts connections on a unix socket path. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** The control socket beside the data socket. */
export const controlPath = (socketPath: string): string => `${socketPath}.ctl`;

/** Asks a running agent for its stats over its control socket (`offlog status`). */
export function queryAgent(socketPath: string, timeoutMs = 2000): Promise<AgentStats> {
  const path = controlPath(socketPath);
  return new Promise((resolve, reject) => {
    const s = net.connect({ path });
    let buf = '';
    const timer = setTimeout(() => {
      s.destroy();
      reject(new Error(`the agent on ${path} did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    s.on('connect', () => s.write('stats\n'));
    s.on('data', (d) => {
      buf += d.toString('utf8');
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      s.destroy();
      resolve(JSON.parse(buf.slice(0, nl)) as AgentStats);
    });
    s.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`no agent on ${path}: ${err.message}`));
    });
  });
}
