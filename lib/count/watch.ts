/**
 * Watch lists: users and actions whose events keep their raw record. Kept in
 * MySQL (`{p}watches`), managed with `offlog watch add|rm|list`.
 *
 * The worker reads them through a WatchList: a copy held in memory and
 * re-read in the background once it is older than its TTL, so the fold
 * never waits for MySQL. A change reaches a running worker within the TTL
 * (OFFLOG_WATCHLIST_TTL_SECONDS) plus one read; while MySQL is unreachable
 * the worker keeps the last copy it had (and says so), so counting goes on.
 */
import type { RowDataPacket } from 'mysql2/promise';
import type { Logger } from '../base/log.ts';
import { parseActionId, parseUserId, type ActionId, type EventColumns, type LogEvent, type UserId, type WatchedRecord, type WatchReason } from '../domain/contract.ts';
import type { Store } from '../flush/store.ts';

export type WatchKind = 'user' | 'action';

export interface Watch {
  kind: WatchKind;
  /** A user id (decimal text) or an action id. */
  id: string;
  addedAt: Date;
}

/** Checks `id` for its kind (the same rules as an event's fields) and returns it canonical. */
export function parseWatch(kind: WatchKind, id: unknown): string {
  return kind === 'user' ? parseUserId(id, '--user') : String(parseActionId(id, '--action'));
}

export async function addWatch(store: Store, kind: WatchKind, id: string): Promise<boolean> {
  const [r] = await store.pool.query<import('mysql2/promise').ResultSetHeader>(
    `INSERT IGNORE INTO \`${store.tables.watches}\` (kind, id, added_at) VALUES (?, ?, NOW(3))`,
    [kind, parseWatch(kind, id)],
  );
  return r.affectedRows === 1;
}

export async function removeWatch(store: Store, kind: WatchKind, id: string): Promise<boolean> {
  const [r] = await store.pool.query<import('mysql2/promise').ResultSetHeader>(`DELETE FROM \`${store.tables.watches}\` WHERE kind = ? AND id = ?`, [
    kind,
    parseWatch(kind, id),
  ]);
  return r.affectedRows === 1;
}

export async function listWatches(store: Store): Promise<Watch[]> {
  const [rows] = await store.pool.query<RowDataPacket[]>(`SELECT kind, id, added_at FROM \`${store.tables.watches}\` ORDER BY kind, id`);
  return rows.map((r) => ({ kind: r.kind as WatchKind, id: String(r.id), addedAt: r.added_at as Date }));
}

/** One reading of the watch lists, shaped for a lookup per event with no allocation. */
export class WatchSnapshot {
  /** Users below 2^53, as numbers (what the worker's fast decoder yields). */
  readonly users = new Set<number>();
  /** Users of 16 digits or more, as canonical text. */
  readonly bigUsers = new Set<string>();
  /** 1 at each watched action id. */
  readonly actions = new Uint8Array(65_536);
  readonly empty: boolean;

  constructor(watches: readonly Pick<Watch, 'kind' | 'id'>[], readonly loadedAt: number) {
    for (const w of watches) {
      if (w.kind === 'action') this.actions[Number(w.id)] = 1;
      else if (w.id.length < 16) this.users.add(Number(w.id));
      else this.bigUsers.add(w.id);
    }
    this.empty = watches.length === 0;
  }

  userWatched(userId: UserId): boolean {
    return userId.length < 16 ? this.users.has(Number(userId)) : this.bigUsers.has(userId);
  }

  actionWatched(actionId: ActionId): boolean {
    return this.actions[actionId] === 1;
  }
}

export interface WatchListOptions {
  load: () => Promise<Pick<Watch, 'kind' | 'id'>[]>;
  ttlMs: number;
  log: Logger;
  now?: () => number;
}

/** The worker's copy of the watch lists: never waits, refreshes itself in the background. */
export class WatchList {
  private snap = new WatchSnapshot([], 0);
  private loading: Promise<void> | null = null;
  /** When the last read started (successful or not): the next starts a TTL later. */
  private triedAt = -Infinity;
  private loaded = false;
  private failing = false;
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly options: WatchListOptions) {
    this.now = options.now ?? Date.now;
  }

  static fromStore(store: Store, ttlSeconds: number, log: Logger): WatchList {
    return new WatchList({ load: () => listWatches(store), ttlMs: ttlSeconds * 1000, log });
  }

  /** The lists as last read; starts a re-read (not awaited) when that is older than the TTL. */
  current(): WatchSnapshot {
    if (this.loading === null && this.now() - this.triedAt >= this.options.ttlMs) this.refresh();
    return this.snap;
  }

  /** When the lists in use were read (epoch ms), or null before the first reading. */
  get readAt(): number | null {
    return this.loaded ? this.snap.loadedAt : null;
  }

  /**
   * Waits for the first reading, at most `timeoutMs`: a worker starting up
   * gives MySQL that long before it counts without the lists (events of
   * watched users and actions are then counted, but their raw records are
   * not kept until the lists arrive). Returns whether they arrived.
   */
  async waitReady(timeoutMs: number): Promise<boolean> {
    if (this.loaded) return true;
    if (this.loading === null) this.refresh();
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.loading, new Promise((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
    return this.loaded;
  }

  /** No more readings (the store is closing). */
  close(): void {
    this.closed = true;
  }

  private refresh(): void {
    if (this.closed) return;
    const { log, load } = this.options;
    this.triedAt = this.now();
    this.loading = load().then(
      (watches) => {
        if (this.failing || !this.loaded) log.info({ watches: watches.length }, 'watch lists read');
        this.snap = new WatchSnapshot(watches, this.now());
        this.loaded = true;
        this.failing = false;
        this.loading = null;
      },
      (err: Error) => {
        // Keep the last copy; the next attempt comes a TTL later, not on every fold.
        if (!this.failing && !this.closed) log.warn({ err: err.message, readAt: this.readAt === null ? null : new Date(this.readAt).toISOString() }, 'could not read the watch lists; keeping the last copy');
        this.failing = true;
        this.loading = null;
      },
    );
  }
}

/**
 * The raw records a decoded batch (columns: no payloads, nothing sent as
 * watched) owes the watch lists, or null. `jobId` makes the ids stable.
 */
export function watchedOfColumns(cols: EventColumns, snap: WatchSnapshot, jobId: string): WatchedRecord[] | null {
  if (snap.empty) return null;
  let out: WatchedRecord[] | null = null;
  const { user, action, value, at, length } = cols;
  for (let i = 0; i < length; i++) {
    const byAction = snap.actions[action[i]!] === 1;
    const byUser = snap.users.has(user[i]!);
    if (!byAction && !byUser) continue;
    const reasons: WatchReason[] = byUser ? (byAction ? ['user', 'action'] : ['user']) : ['action'];
    (out ??= []).push({ id: `${jobId}#${i}`, at: at[i]!, userId: String(user[i]!), actionId: action[i]!, value: value[i]!, reasons });
  }
  return out;
}

/** The raw records of events sent as watched, or of a watched user or action; null when none. */
export function watchedOfEvents(events: readonly LogEvent[], snap: WatchSnapshot | null, jobId: string): WatchedRecord[] | null {
  let out: WatchedRecord[] | null = null;
  for (let i = 0; i < events.length; i++) {
    const e = events[i]!;
    const reasons: WatchReason[] = [];
    if (e.watched === true) reasons.push('explicit');
    if (snap !== null && !snap.empty) {
      if (snap.userWatched(e.userId)) reasons.push('user');
      if (snap.actionWatched(e.actionId)) reasons.push('action');
    }
    if (reasons.length === 0) continue;
    const record: WatchedRecord = { id: `${jobId}#${i}`, at: e.at, userId: e.userId, actionId: e.actionId, value: e.value, reasons };
    if (e.payload !== undefined) record.payload = e.payload;
    (out ??= []).push(record);
  }
  return out;
}
