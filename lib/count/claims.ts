/**
 * The fold protocol both ring modes share: claims, leases, fold lists and
 * decision records (docs/claims.md has the why; keys.ts the layout).
 *
 * - A fold F (a random 64-bit id) claims each of its jobs with an atomic
 *   `add j:{unique} "F lease"` before folding them in: a second copy of a
 *   job (a client's re-send to another gearmand, a redelivery) finds the
 *   claim and is resolved, never folded blind.
 * - Before F writes anything into a slice it appends "F:events" to the
 *   slice's fold list (its intent), so the flush knows every fold that may
 *   have written there.
 * - F ends with exactly one decision record, `f:F`, made with `add`:
 *   committed (with its per-slice event totals) or aborted. Whoever adds
 *   first wins, so a commit and an abort can never both succeed.
 * - Each worker holds a lease key, refreshed on every fold; a claim whose
 *   fold is undecided and whose lease is gone belongs to a dead worker: its
 *   fold is aborted and the claim taken over with CAS.
 *
 * All of it lives in the ring's memcached servers with the ring's TTL, except
 * the lease (short). Claims, decisions and leases are placed where every
 * worker of a rolling pool change agrees (Placement.agreed): an `add` is
 * atomic on one server only. A fold list goes with its slice's head (the
 * current pool) and is read from every server the slice may be on.
 */
import { randomBytes } from 'node:crypto';
import { sleep } from '../base/backoff.ts';
import type { SliceId } from '../domain/slice.ts';
import { MemcacheError, type CasValue, type MemcacheConnection, type MemcacheOp, type MemcacheReply } from '../wire/memcache.ts';
import { shardOfSlice, type RingKeys } from './keys.ts';
import type { Placement } from './placement.ts';

/** A fold's id: 16 lowercase hex digits (64 random bits). */
export type FoldId = string;

/**
 * Who holds a job's claim, with the claim's CAS (for takeOver). `fold` is ''
 * for an older version's "applied" mark (value "1"): that job was stored.
 */
export interface ClaimHolder {
  fold: FoldId;
  lease: string;
  cas: bigint;
}

export type FoldDecision =
  | { state: 'committed'; totals: Map<SliceId, number> }
  | { state: 'aborted' }
  | { state: 'open' };

/** What Claims needs of the ring (a Ring is one): its keys, servers, TTL and operation count. */
export interface ClaimsRing {
  readonly keys: RingKeys;
  readonly placement: Placement;
  readonly connections: readonly MemcacheConnection[];
  readonly ttl: number;
  ops: number;
}

export interface ClaimsOptions {
  /** How long a lease outlives its last renewal (OFFLOG_LEASE_SECONDS). */
  leaseSeconds?: number;
  /** This worker's lease id (tests); random otherwise. */
  lease?: string;
}

/** How the worker settles the claims it found held (see Claims.settle). */
export interface SettleOptions {
  /** Folds of this worker still being stored: a claim they hold is theirs to finish, so the copy is a duplicate. */
  inFlight?: ReadonlySet<FoldId>;
  /** How long to wait for a live holder to decide before aborting it (default: twice the lease). */
  waitMs?: number;
  /** The same wait, as a point in time (Date.now() ms): claimFold's attempts share one. */
  deadline?: number;
  /** Stop waiting (the worker is stopping): the job is then left unresolved, in `unresolved`. */
  stopped?: () => boolean;
}

export interface Settled {
  /** Claims now held by the fold (taken over from an aborted or dead fold, or found free): fold these jobs. */
  taken: string[];
  /** Jobs another fold stored or is storing: skip them (acknowledge without counting). */
  duplicates: string[];
  /** Not decided before the worker stopped: hand these back to gearmand. */
  unresolved: string[];
  /**
   * The fold gave way to a live fold with a smaller id (wait-die) and is
   * aborted now: start again with a new fold (claimFold does).
   */
  yielded: boolean;
}

/** A fold's claims, once settled (see claimFold). */
export interface FoldClaims {
  /** The fold that holds the claims of every job not in `duplicates` or `unresolved`. */
  fold: FoldId;
  /** Jobs another fold stored or is storing: acknowledge them without counting. */
  duplicates: string[];
  /** The worker stopped before these were settled: hand every job of the fold back (the fold is aborted). */
  unresolved: string[];
}

export const DEFAULT_LEASE_SECONDS = 30;
const FOLD_ID = /^[0-9a-f]{16}$/;
/** Rounds of claim/read/take-over for one job before giving up (each round means another writer changed the claim). */
const MAX_ROUNDS = 8;

export class ClaimsError extends MemcacheError {
  override name = 'ClaimsError';
}

export class Claims {
  readonly lease: string;
  readonly leaseSeconds: number;
  /** When the last renewal that succeeded was sent (ms). */
  private renewedAt = -Infinity;

  constructor(private readonly ring: ClaimsRing, options: ClaimsOptions = {}) {
    this.leaseSeconds = options.leaseSeconds ?? DEFAULT_LEASE_SECONDS;
    if (!Number.isSafeInteger(this.leaseSeconds) || this.leaseSeconds < 1) throw new RangeError(`leaseSeconds must be a whole number >= 1, got ${this.leaseSeconds}`);
    this.lease = options.lease ?? newId();
    checkId('lease', this.lease);
  }

  /** A new fold id (64 random bits). */
  newFold(): FoldId {
    return newId();
  }

  /** Refreshes this worker's lease: it is alive for leaseSeconds more. */
  async renewLease(): Promise<void> {
    const key = this.ring.keys.lease(this.lease);
    const sentAt = Date.now();
    await this.exec(this.home(key), [{ kind: 'set', key, value: String(process.pid), ttl: this.leaseSeconds }]);
    this.renewedAt = Math.max(this.renewedAt, sentAt);
  }

  /**
   * Claims each job for `fold` with one `add` each (one round trip per
   * server). The answer maps each unique to null (the fold holds it now,
   * including a claim it made before, on an attempt whose reply was lost)
   * or to its holder. Only held claims cost more: a read of their holder.
   * Empty uniques cannot be claimed and are left out.
   *
   * Renews the lease too, since others judge a claim by it: alongside the
   * claims (no extra round trip) while it has at least half its time left,
   * else first, so no claim is ever seen under a lapsed lease.
   */
  async claim(uniques: readonly string[], fold: FoldId): Promise<Map<string, ClaimHolder | null>> {
    checkId('fold', fold);
    const renewal = this.renewLease();
    if (Date.now() - this.renewedAt > this.leaseSeconds * 500) await renewal;
    else renewal.catch(() => undefined); // awaited below; meanwhile not unhandled
    const result = new Map<string, ClaimHolder | null>();
    let todo = [...new Set(uniques.filter((u) => u !== ''))];
    for (let round = 0; todo.length > 0; round++) {
      if (round === MAX_ROUNDS) throw new ClaimsError(`could not claim ${todo.length} job(s) (first: ${todo[0]}) in ${MAX_ROUNDS} rounds: their claims kept appearing and expiring`);
      const value = this.claimValue(fold);
      const added = await this.perKey(todo, (u) => ({ kind: 'add', key: this.ring.keys.job(u), value, ttl: this.ring.ttl }));
      const held = todo.filter((_, i) => added[i] !== true);
      for (let i = 0; i < todo.length; i++) if (added[i] === true) result.set(todo[i]!, null);
      const holders = await this.holders(held);
      todo = [];
      held.forEach((u, i) => {
        const h = holders[i]!;
        if (h === null) todo.push(u); // gone between the add and the read: claim again
        else result.set(u, h.fold === fold ? null : h);
      });
    }
    await renewal;
    return result;
  }

  /**
   * The intent: appends "F:events " to the fold list of each slice the fold
   * is about to write into (events: what it writes there). Must resolve
   * before any write into those slices. Safe to repeat (readers de-duplicate).
   */
  async announce(fold: FoldId, events: ReadonlyMap<SliceId, number>): Promise<void> {
    checkId('fold', fold);
    const byServer = new Map<number, MemcacheOp[]>();
    for (const [slice, n] of events) {
      const key = this.ring.keys.foldList(slice);
      const home = this.ring.placement.writer(shardOfSlice(slice));
      let ops = byServer.get(home);
      if (!ops) byServer.set(home, (ops = []));
      // The add makes the list if no fold made it yet; it never overwrites one.
      ops.push({ kind: 'add', key, value: '', ttl: this.ring.ttl }, { kind: 'append', key, value: `${fold}:${n} ` });
    }
    await Promise.all([...byServer].map(async ([server, ops]) => {
      const replies = await this.exec(server, ops);
      for (let i = 1; i < replies.length; i += 2) {
        if (replies[i] === true) continue;
        const key = (ops[i] as { key: string }).key;
        throw new ClaimsError(`could not append fold ${fold} to ${key} (made and gone at once: memcached is evicting within seconds)`);
      }
    }));
  }

  /**
   * The commit point: `add f:F "c slice:events,…"`. True when it stands
   * (made now, or by an earlier attempt of this fold), false when the fold
   * was aborted first.
   */
  async commit(fold: FoldId, totals: ReadonlyMap<SliceId, number>): Promise<boolean> {
    const detail = [...totals].map(([s, n]) => `${s}:${n}`).join(',');
    const d = await this.decide(fold, `c ${detail}`);
    return d.state === 'committed';
  }

  /** Aborts the fold unless it is decided already; resolves to the decision that stands. */
  abort(fold: FoldId): Promise<FoldDecision> {
    return this.decide(fold, 'a');
  }

  /**
   * The flush's side: aborts every one of `folds` still open (one `add` each,
   * pipelined per server), then reads the decisions that stood already
   * (one multi-get). Resolves to each fold's decision, none of them open.
   */
  async abortOpen(folds: readonly FoldId[]): Promise<Map<FoldId, FoldDecision>> {
    const out = new Map<FoldId, FoldDecision>();
    let todo = [...new Set(folds)];
    for (const f of todo) checkId('fold', f);
    for (let round = 0; todo.length > 0; round++) {
      if (round === MAX_ROUNDS) throw new ClaimsError(`could not decide ${todo.length} fold(s) (first: ${todo[0]}): their records kept appearing and expiring`);
      const added = await this.perKey(todo, (f) => ({ kind: 'add', key: this.ring.keys.decision(f), value: 'a', ttl: this.ring.ttl }));
      const decided = todo.filter((_, i) => added[i] !== true);
      todo.forEach((f, i) => added[i] === true && out.set(f, { state: 'aborted' }));
      const records = await this.perKey(decided, (f) => ({ kind: 'get', key: this.ring.keys.decision(f) }));
      todo = [];
      decided.forEach((f, i) => {
        const v = records[i];
        if (v instanceof Buffer) out.set(f, parseDecision(this.ring.keys.decision(f), v.toString('latin1')));
        else todo.push(f); // gone between the add and the get: abort again
      });
    }
    return out;
  }

  /** The fold's decision record: committed (with its totals), aborted, or none yet (open). */
  async decision(fold: FoldId): Promise<FoldDecision> {
    checkId('fold', fold);
    const key = this.ring.keys.decision(fold);
    const [v] = await this.exec(this.home(key), [{ kind: 'get', key }]);
    return v instanceof Buffer ? parseDecision(key, v.toString('latin1')) : { state: 'open' };
  }

  /** Whether the worker holding `lease` renewed it within the lease time. */
  async leaseAlive(lease: string): Promise<boolean> {
    checkId('lease', lease);
    const key = this.ring.keys.lease(lease);
    const [v] = await this.exec(this.home(key), [{ kind: 'get', key }]);
    return v instanceof Buffer;
  }

  /**
   * Moves a claim to `fold`, only if it is still exactly what `holder` saw
   * (`ms … C<cas>`). False if it changed meanwhile (someone else took it
   * over, or it expired): read the holder again.
   */
  async takeOver(unique: string, holder: ClaimHolder, fold: FoldId): Promise<boolean> {
    checkId('fold', fold);
    const key = this.ring.keys.job(unique);
    const [ok] = await this.exec(this.home(key), [{ kind: 'ms', key, value: this.claimValue(fold), ttl: this.ring.ttl, cas: holder.cas }]);
    return ok === true;
  }

  /**
   * One slice's fold list, each fold once (with the most events it
   * announced there), in the order they announced; from every server the
   * slice may be on while the pool changes. An entry that is not what
   * OffLog writes is refused with its key named.
   */
  async foldsOf(slice: SliceId): Promise<{ fold: FoldId; events: number }[]> {
    const key = this.ring.keys.foldList(slice);
    const found = await Promise.all(this.ring.placement.readers(shardOfSlice(slice)).map((s) => this.exec(s, [{ kind: 'get', key }]).then(([v]) => v)));
    const events = new Map<FoldId, number>();
    for (const v of found) {
      if (!(v instanceof Buffer)) continue;
      for (const token of v.toString('latin1').split(' ')) {
        if (token === '') continue;
        const m = /^([0-9a-f]{16}):(\d{1,15})$/.exec(token);
        if (!m) throw new ClaimsError(`${key} holds ${JSON.stringify(token.slice(0, 40))}, not a "fold:events" entry OffLog writes`);
        const n = Number(m[2]);
        events.set(m[1]!, Math.max(n, events.get(m[1]!) ?? 0));
      }
    }
    return [...events].map(([fold, n]) => ({ fold, events: n }));
  }

  /**
   * Resolves claims found held (claim()'s non-null answers) for `fold`:
   * - an older version's mark, or a fold of this worker still being stored,
   *   or a committed fold: the job is a duplicate;
   * - an aborted fold: the claim is taken over;
   * - an open fold whose lease is gone (a dead worker): aborted, then taken over
   *   (unless it committed just before: then a duplicate);
   * - an open fold whose lease is alive: if its id is larger, waited for,
   *   up to `waitMs`, then aborted and taken over (a live holder whose fold
   *   is aborted finds its commit refused); if smaller, this fold gives way
   *   (aborts itself, `yielded`), so two folds that each won some of the
   *   other's jobs never wait for each other (wait-die: waits only ever go
   *   from a smaller id to a larger one, so they cannot form a cycle).
   * The lease is renewed while waiting.
   */
  async settle(held: ReadonlyMap<string, ClaimHolder | null>, fold: FoldId, options: SettleOptions = {}): Promise<Settled> {
    const out: Settled = { taken: [], duplicates: [], unresolved: [], yielded: false };
    const deadline = options.deadline ?? Date.now() + (options.waitMs ?? 2 * this.leaseSeconds * 1000);
    for (const [unique, first] of held) {
      if (first === null) {
        out.taken.push(unique);
        continue;
      }
      let holder: ClaimHolder | null = first;
      for (let changes = 0, delay = 50; ; ) {
        if (changes === MAX_ROUNDS) throw new ClaimsError(`could not settle the claim of job ${unique}: it kept changing`);
        if (holder === null) {
          changes++;
          // Expired or evicted meanwhile: claim it afresh.
          const again = (await this.claim([unique], fold)).get(unique) ?? null;
          if (again === null) {
            out.taken.push(unique);
            break;
          }
          holder = again;
          continue;
        }
        if (holder.fold === fold) {
          out.taken.push(unique);
          break;
        }
        if (holder.fold === '' || options.inFlight?.has(holder.fold) === true) {
          out.duplicates.push(unique);
          break;
        }
        let d = await this.decision(holder.fold);
        if (d.state === 'open') {
          const waited = Date.now() >= deadline;
          if (!waited && holder.lease !== this.lease && (await this.leaseAlive(holder.lease))) {
            if (holder.fold < fold) {
              const d = await this.abort(fold);
              if (d.state !== 'aborted') throw new ClaimsError(`fold ${fold} was found ${d.state} while still claiming its jobs`);
              out.yielded = true;
              return out;
            }
            if (options.stopped?.() === true) {
              out.unresolved.push(unique);
              break;
            }
            await this.renewLease();
            await sleep(delay);
            delay = Math.min(1000, delay * 2);
            continue;
          }
          d = await this.abort(holder.fold);
        }
        if (d.state === 'committed') {
          out.duplicates.push(unique);
          break;
        }
        // Aborted: the claim is free to take, if nobody changed it since it was read.
        if (await this.takeOver(unique, holder, fold)) {
          out.taken.push(unique);
          break;
        }
        changes++;
        holder = (await this.holders([unique]))[0]!;
      }
    }
    return out;
  }

  /**
   * Claims `uniques` for a new fold and settles what was held (see settle),
   * starting again with a new fold whenever one gives way. In the common
   * case (nothing held) one round trip.
   */
  async claimFold(uniques: readonly string[], options: SettleOptions = {}): Promise<FoldClaims> {
    const deadline = options.deadline ?? Date.now() + (options.waitMs ?? 2 * this.leaseSeconds * 1000);
    for (let delay = 20; ; delay = Math.min(1000, delay * 2)) {
      const fold = this.newFold();
      const held = await this.claim(uniques, fold);
      if ([...held.values()].every((h) => h === null)) return { fold, duplicates: [], unresolved: [] };
      const s = await this.settle(held, fold, { ...options, deadline });
      if (!s.yielded) {
        if (s.unresolved.length > 0) await this.abort(fold);
        return { fold, duplicates: s.duplicates, unresolved: s.unresolved };
      }
      if (options.stopped?.() === true) return { fold, duplicates: [], unresolved: [...held.keys()] };
      // Jittered, so two folds giving way to each other's successors do not keep meeting.
      await sleep(delay / 2 + Math.random() * delay);
    }
  }

  // ── internals ──

  private claimValue(fold: FoldId): string {
    return `${fold} ${this.lease}`;
  }

  /** The current holders of these jobs' claims (null where there is none), by `mg … v c`. */
  private async holders(uniques: readonly string[]): Promise<(ClaimHolder | null)[]> {
    const replies = await this.perKey(uniques, (u) => ({ kind: 'mg', key: this.ring.keys.job(u) }));
    return replies.map((r, i) => (r === null ? null : parseHolder(this.ring.keys.job(uniques[i]!), r as CasValue)));
  }

  /** One op per unique, each on its key's server, all servers at once: the replies in the order of `uniques`. */
  private async perKey(uniques: readonly string[], op: (u: string) => MemcacheOp): Promise<MemcacheReply[]> {
    const replies = new Array<MemcacheReply>(uniques.length).fill(null);
    const byServer = new Map<number, { ops: MemcacheOp[]; at: number[] }>();
    uniques.forEach((u, i) => {
      const o = op(u);
      const home = this.home(o.key);
      let batch = byServer.get(home);
      if (!batch) byServer.set(home, (batch = { ops: [], at: [] }));
      batch.ops.push(o);
      batch.at.push(i);
    });
    await Promise.all([...byServer].map(async ([server, { ops, at }]) => {
      const r = await this.exec(server, ops);
      r.forEach((v, j) => (replies[at[j]!] = v));
    }));
    return replies;
  }

  /** Adds the decision record; if one exists, the decision that stands (made by an earlier attempt or by someone else). */
  private async decide(fold: FoldId, value: string): Promise<FoldDecision> {
    checkId('fold', fold);
    const key = this.ring.keys.decision(fold);
    for (let round = 0; round < MAX_ROUNDS; round++) {
      const [added] = await this.exec(this.home(key), [{ kind: 'add', key, value, ttl: this.ring.ttl }]);
      if (added === true) return parseDecision(key, value);
      const d = await this.decision(fold);
      if (d.state !== 'open') return d;
    }
    throw new ClaimsError(`could not write ${key}: it kept appearing and expiring`);
  }

  private home(key: string): number {
    return this.ring.placement.agreed(key);
  }

  private exec(server: number, ops: MemcacheOp[]): Promise<MemcacheReply[]> {
    this.ring.ops += ops.length;
    return this.ring.connections[server]!.exec(ops);
  }
}

function newId(): string {
  return randomBytes(8).toString('hex');
}

function checkId(what: string, id: string): void {
  if (!FOLD_ID.test(id)) throw new ClaimsError(`${what} id ${JSON.stringify(id)} is not 16 lowercase hex digits`);
}

/** A claim's value: "F lease", or an older version's "1" mark (a stored job). */
function parseHolder(key: string, r: CasValue): ClaimHolder {
  const text = r.value.toString('latin1');
  if (text === '1') return { fold: '', lease: '', cas: r.cas };
  const m = /^([0-9a-f]{16}) ([0-9a-f]{16})$/.exec(text);
  if (!m) throw new ClaimsError(`${key} holds ${JSON.stringify(text.slice(0, 40))}, not a claim OffLog writes`);
  return { fold: m[1]!, lease: m[2]!, cas: r.cas };
}

function parseDecision(key: string, text: string): FoldDecision {
  if (text === 'a') return { state: 'aborted' };
  if (text.startsWith('c ')) {
    const totals = new Map<SliceId, number>();
    for (const part of text.slice(2).split(',')) {
      if (part === '') continue;
      const m = /^(\d{1,15}):(\d{1,15})$/.exec(part);
      if (!m) throw new ClaimsError(`${key} holds ${JSON.stringify(text.slice(0, 60))}, not a decision OffLog writes`);
      totals.set(Number(m[1]) as SliceId, Number(m[2]));
    }
    return { state: 'committed', totals };
  }
  throw new ClaimsError(`${key} holds ${JSON.stringify(text.slice(0, 60))}, not a decision OffLog writes`);
}
