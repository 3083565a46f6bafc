/**
 * An in-memory memcached for the fold protocol's model test (test/folds-model.test.ts); not test/fake-memcached.ts, a wire-level fake server:
 * the commands the protocol uses (add, set, append, get, multi-get, incr,
 * decr, delete, mg with CAS, ms with C), each applied atomically, as
 * memcached does, with TTLs on a clock the test drives.
 *
 * Every command is an operation boundary: a Schedule numbers them across all
 * the model's processes, can kill the process about to issue the n-th
 * (before it reaches the server), and lets the processes' commands interleave
 * in a seeded order. This fakes the server only; the real protocol code runs
 * on it unchanged, through the same KvConn interface the real connection has.
 */
import type { MemcacheOp, MemcacheReply } from '../lib/wire/memcache.ts';
import type { KvConn } from '../lib/count/fold-blobs.ts';
import { prng } from '../lib/base/prng.ts';

interface Item { value: Buffer; cas: bigint; expires: number }

/** The process was killed at this boundary (the model's SIGKILL). */
export class Crash extends Error {
  override name = 'Crash';
}

export class MemoryMemcached {
  private readonly items = new Map<string, Item>();
  private cas = 0n;
  /** Seconds, driven by the test. */
  now = 1_000_000;

  private live(key: string): Item | undefined {
    const it = this.items.get(key);
    if (it && it.expires !== 0 && it.expires <= this.now) {
      this.items.delete(key);
      return undefined;
    }
    return it;
  }

  private put(key: string, value: Buffer | string, ttl: number): void {
    this.items.set(key, { value: Buffer.from(value), cas: ++this.cas, expires: ttl === 0 ? 0 : this.now + ttl });
  }

  /** One command, atomically; replies as MemcacheConnection.exec does. */
  apply(op: MemcacheOp | { kind: 'mg'; key: string } | { kind: 'ms'; key: string; value: Buffer | string; ttl: number; cas?: bigint }): MemcacheReply | { value: Buffer; cas: bigint } {
    const it = this.live(op.key);
    switch (op.kind) {
      case 'get':
        return it ? Buffer.from(it.value) : null;
      case 'mg':
        return it ? { value: Buffer.from(it.value), cas: it.cas } : null;
      case 'set':
        this.put(op.key, op.value, op.ttl);
        return true;
      case 'add':
        if (it) return false;
        this.put(op.key, op.value, op.ttl);
        return true;
      case 'ms':
        if (op.cas !== undefined && (!it || it.cas !== op.cas)) return false;
        this.put(op.key, op.value, op.ttl);
        return true;
      case 'append':
        if (!it) return false;
        it.value = Buffer.concat([it.value, Buffer.from(op.value)]);
        it.cas = ++this.cas;
        return true;
      case 'delete':
        return this.items.delete(op.key) && it !== undefined;
      case 'incr':
      case 'decr': {
        if (!it) return null;
        const n = BigInt(it.value.toString('latin1').trim());
        const next = op.kind === 'incr' ? (n + BigInt(op.amount)) & (2n ** 64n - 1n) : n > BigInt(op.amount) ? n - BigInt(op.amount) : 0n;
        it.value = Buffer.from(String(next));
        it.cas = ++this.cas;
        return next;
      }
      default:
        throw new Error(`fake memcached: unknown op ${JSON.stringify((op as { kind: unknown }).kind)}`);
    }
  }

  /** Items alive now, by key prefix (for assertions). */
  keys(prefix = ''): string[] {
    return [...this.items.keys()].filter((k) => k.startsWith(prefix) && this.live(k) !== undefined);
  }

  peek(key: string): Buffer | undefined {
    return this.live(key)?.value;
  }

  /** Bytes held (keys and values), like memcached's `bytes` minus its per-item overhead. */
  bytes(): number {
    let n = 0;
    for (const [k, it] of this.items) n += k.length + it.value.length;
    return n;
  }
}

/**
 * Numbers every operation of every process in a run. `crashAt` holds the
 * boundary numbers at which the process about to issue that operation dies;
 * `seed` (when given) makes each operation wait a random number of turns first,
 * so concurrent processes interleave in a seeded, replayable order.
 */
export class Schedule {
  /** Operations issued so far (the next boundary's number). */
  step = 0;
  /** Where processes died: boundary number → process name. */
  readonly crashes = new Map<number, string>();
  private readonly rand: (() => number) | null;

  /**
   * Boundaries at which a worker process (name starting with `w`) pauses, as
   * SIGSTOP would, until `paused` (set by the model) lets it go.
   */
  pauseAt: ReadonlySet<number> = new Set();
  paused: (proc: FakeProcess) => Promise<void> = async () => undefined;

  constructor(readonly crashAt: ReadonlySet<number> = new Set(), seed: number | null = null) {
    this.rand = seed === null ? null : prng(seed);
  }

  async boundary(proc: FakeProcess): Promise<void> {
    if (proc.dead) throw new Crash(`${proc.name} is dead`);
    if (this.rand !== null) for (let i = Math.floor(this.rand() * 4); i > 0; i--) await new Promise((r) => setImmediate(r));
    else await Promise.resolve();
    if (proc.dead) throw new Crash(`${proc.name} is dead`);
    const n = this.step++;
    if (this.pauseAt.has(n) && proc.name.startsWith('w')) await this.paused(proc);
    if (this.crashAt.has(n)) {
      proc.dead = true;
      this.crashes.set(n, proc.name);
      throw new Crash(`${proc.name} killed at boundary ${n}`);
    }
  }
}

/** One process of the model (a worker or a flush): once dead, every operation it tries fails. */
export class FakeProcess {
  dead = false;
  constructor(readonly name: string, readonly schedule: Schedule) {}
}

/** A connection of `proc` to `server`: what the protocol's code is given instead of a MemcacheConnection. */
export class FakeConn implements KvConn {
  constructor(readonly server: MemoryMemcached, readonly proc: FakeProcess) {}

  async exec(ops: readonly MemcacheOp[]): Promise<MemcacheReply[]> {
    const replies: MemcacheReply[] = [];
    for (const op of ops) {
      await this.proc.schedule.boundary(this.proc);
      replies.push(this.server.apply(op) as MemcacheReply);
    }
    return replies;
  }

  async getMulti(keys: readonly string[]): Promise<Map<string, Buffer>> {
    const found = new Map<string, Buffer>();
    for (const key of new Set(keys)) {
      await this.proc.schedule.boundary(this.proc);
      const v = this.server.apply({ kind: 'get', key });
      if (v instanceof Buffer) found.set(key, v);
    }
    return found;
  }
}
