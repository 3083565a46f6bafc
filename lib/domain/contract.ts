/**
 * The contract: what an event is, how events travel, and what a bad job
 * becomes. Every rule of DESIGN.md's event table, the `offlog.batch` format,
 * the Gearman function names and the dead-letter record live here, once, and
 * OffLogClient, ingest and the worker all use them — so the client refuses
 * exactly what the worker would, with messages that name the field.
 */
// No zod here: the SDK's client entry (lib/client.ts) imports this module, and an app installing
// the client gets no dependency at all (docs/node-sdk.md).
import { InputError } from '../base/errors.ts';

/** Canonical decimal form of an unsigned 64-bit user id (no sign, no leading zeros). */
export type UserId = string;
/** 1…65535. */
export type ActionId = number;

export interface LogEvent {
  userId: UserId;
  actionId: ActionId;
  /** Summed per slice; 0 when absent. */
  value: number;
  /** Epoch milliseconds. */
  at: number;
  /** Metadata, kept only for watched events. */
  payload?: string;
  /** Sent with logWatchedAction / logWatchedUser: its raw record is kept whatever the watch lists say. */
  watched?: boolean;
}

/** Gearman functions: the PHP client's job, the SDK's batch, and where bad jobs are parked. */
export const FN_LOG_SIMPLE = 'logSimple';
export const FN_BATCH = 'offlog.batch';
export const FN_DEAD_LETTER = 'offlog.deadletter';
/** Raw records of watched events, on their way from the worker to MySQL and the bus. */
export const FN_WATCHED = 'offlog.watched';

/** A dead letter as it travels on the `offlog.deadletter` queue. */
export interface DeadLetterJob {
  fn: string;
  unique: string;
  handle: string;
  error: string;
  /** When the worker received the bad job (ISO-8601). */
  receivedAt: string;
  /** The job's payload, base64: it may not be valid UTF-8. */
  payload: string;
}

const DEAD_LETTER_FIELDS = ['fn', 'unique', 'handle', 'error', 'receivedAt', 'payload'] as const;
/** As the worker writes it: UTC, `Z`, optional fraction. */
const ISO_UTC = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The rule a dead letter's field breaks, or undefined. */
function deadLetterRule(field: (typeof DEAD_LETTER_FIELDS)[number], value: unknown): string | undefined {
  if (typeof value !== 'string') return `must be a string, got ${excerpt(value)}`;
  if (field === 'receivedAt') {
    const m = ISO_UTC.exec(value);
    const t = m ? new Date(value) : undefined;
    // Years a DATETIME holds, and a real date (no 2026-02-30): anything else is not a time our worker wrote.
    if (!m || !t || Number.isNaN(t.getTime()) || t.toISOString().slice(0, 10) !== value.slice(0, 10)) return `must be an ISO-8601 UTC time, got ${excerpt(value)}`;
    if (m[1]! < '1000') return 'must be a time in years 1000-9999';
  }
  if (field === 'payload' && !BASE64.test(value)) return `must be base64, got ${excerpt(value)}`;
  return undefined;
}

/**
 * Reads a dead letter off the `offlog.deadletter` queue. Anything not shaped
 * as the worker writes it (not JSON, a field missing or of the wrong type) is
 * an InputError naming the field: the queue is open to any Gearman client.
 */
export function decodeDeadLetter(data: Buffer): DeadLetterJob {
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    throw new InputError('dead letter', `is not JSON, got ${excerpt(data.toString('utf8'))}`);
  }
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) throw new InputError('dead letter', `must be a JSON object, got ${excerpt(raw)}`);
  const o = raw as Record<string, unknown>;
  for (const field of DEAD_LETTER_FIELDS) {
    const rule = deadLetterRule(field, o[field]);
    if (rule !== undefined) throw new InputError(`dead letter.${field}`, rule);
  }
  const { fn, unique, handle, error, receivedAt, payload } = o as unknown as DeadLetterJob;
  return { fn, unique, handle, error, receivedAt, payload };
}

export const MAX_U64 = 18_446_744_073_709_551_615n;
export const MAX_PAYLOAD_BYTES = 4096;
/** Timestamps outside 1970…2999 are typos, not clock skew. */
const MAX_AT_MS = Date.UTC(3000, 0, 1);
// A date alone is UTC midnight; a date-time must carry its zone, since "local time" on a server is a guess.
const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2}))?$/;
const EVENT_FIELDS = new Set(['userId', 'actionId', 'value', 'at', 'payload']);

export function parseUserId(raw: unknown, field = 'userId'): UserId {
  if (typeof raw === 'number') {
    if (Number.isSafeInteger(raw) && raw >= 0) return String(raw);
    if (Number.isInteger(raw) && raw > 0) {
      throw new InputError(field, 'is above 2^53-1 and lost precision as a JSON number; send it as a decimal string');
    }
  } else if (typeof raw === 'string') {
    if (/^\d{1,20}$/.test(raw)) {
      const canonical = raw.length < 16 ? String(Number(raw)) : BigInt(raw).toString();
      if (raw.length < 20 || BigInt(canonical) <= MAX_U64) return canonical;
    }
  } else if (raw === undefined) {
    throw new InputError(field, 'is required');
  }
  throw new InputError(field, `must be an unsigned 64-bit integer (number or decimal string), got ${excerpt(raw)}`);
}

export function parseActionId(raw: unknown, field = 'actionId'): ActionId {
  const n = typeof raw === 'string' && /^\d{1,5}$/.test(raw) ? Number(raw) : raw;
  if (typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 65_535) return n;
  if (raw === undefined) throw new InputError(field, 'is required');
  throw new InputError(field, `must be an integer from 1 to 65535, got ${excerpt(raw)}`);
}

export function parseValue(raw: unknown, field = 'value'): number {
  if (raw === undefined || raw === null) return 0;
  if (typeof raw === 'number' && Number.isSafeInteger(raw) && raw >= 0) return raw;
  throw new InputError(field, `must be an integer from 0 to 2^53-1, got ${excerpt(raw)}`);
}

function daysIn(year: number, month: number): number {
  return new Date(Date.UTC(year, month, 0)).getUTCDate();
}

/** `at` as epoch ms (a fractional number is floored); `acceptedAt` when absent. */
export function parseAt(raw: unknown, acceptedAt: number, field = 'at'): number {
  if (raw === undefined || raw === null) return acceptedAt;
  if (typeof raw === 'number' && Number.isFinite(raw) && raw >= 0 && raw < MAX_AT_MS) return Math.floor(raw);
  const iso = typeof raw === 'string' ? ISO_8601.exec(raw) : null;
  if (iso) {
    // Date.parse rolls 2026-02-30 over to March 2; a typo in a date must not move an event.
    const [year, month, day] = [Number(iso[1]), Number(iso[2]), Number(iso[3])];
    const ms = Date.parse(raw as string);
    if (month >= 1 && month <= 12 && day >= 1 && day <= daysIn(year, month) && Number.isFinite(ms) && ms >= 0 && ms < MAX_AT_MS) return ms;
  }
  throw new InputError(field, `must be epoch milliseconds or an ISO-8601 date-time between 1970 and 3000, got ${excerpt(raw)}`);
}

export function parsePayload(raw: unknown, field = 'payload'): string | undefined {
  if (raw === undefined || raw === null) return undefined;
  if (typeof raw !== 'string') throw new InputError(field, `must be a string, got ${excerpt(raw)}`);
  if (raw.length > MAX_PAYLOAD_BYTES / 4 && Buffer.byteLength(raw) > MAX_PAYLOAD_BYTES) {
    throw new InputError(field, `must be at most ${MAX_PAYLOAD_BYTES} bytes of UTF-8, got ${Buffer.byteLength(raw)}`);
  }
  return raw;
}

/** One event object as sent over HTTP or to the SDK. */
export function parseEvent(raw: unknown, acceptedAt: number, path = ''): LogEvent {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new InputError(path || 'event', `must be a JSON object, got ${excerpt(raw)}`);
  }
  const o = raw as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (!EVENT_FIELDS.has(key)) {
      throw new InputError(`${path}${path ? '.' : ''}${excerpt(key, 40)}`, 'is not a known field (userId, actionId, value, at, payload)');
    }
  }
  const p = path ? `${path}.` : '';
  const event: LogEvent = {
    userId: parseUserId(o.userId, `${p}userId`),
    actionId: parseActionId(o.actionId, `${p}actionId`),
    value: parseValue(o.value, `${p}value`),
    at: parseAt(o.at, acceptedAt, `${p}at`),
  };
  const payload = parsePayload(o.payload, `${p}payload`);
  if (payload !== undefined) event.payload = payload;
  return event;
}

/** An HTTP body: one event, or `{"events": [...]}`. All or nothing. */
export function parseBody(text: string, acceptedAt: number, maxEvents: number): LogEvent[] {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InputError('body', `is not valid JSON (${(err as Error).message})`);
  }
  if (typeof raw === 'object' && raw !== null && !Array.isArray(raw) && 'events' in raw) {
    const extra = Object.keys(raw).filter((k) => k !== 'events');
    if (extra.length > 0) throw new InputError(excerpt(extra[0], 40), 'is not allowed beside "events"');
    const list = (raw as { events: unknown }).events;
    if (!Array.isArray(list)) throw new InputError('events', `must be an array, got ${excerpt(list)}`);
    if (list.length === 0) throw new InputError('events', 'must not be empty');
    if (list.length > maxEvents) throw new InputError('events', `must hold at most ${maxEvents} events, got ${list.length}`);
    return list.map((e, i) => parseEvent(e, acceptedAt, `events[${i}]`));
  }
  return [parseEvent(raw, acceptedAt)];
}

/**
 * The original PHP client's job: `{"userid": 1, "actionId": 1, "payload": "…"}`.
 * It carries no time, so the worker's clock stamps it.
 */
export function parseLogSimple(data: Buffer, receivedAt: number): LogEvent {
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    throw new InputError('logSimple', `is not valid JSON: ${excerpt(data.toString('utf8'))}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new InputError('logSimple', `must be a JSON object, got ${excerpt(raw)}`);
  }
  const o = raw as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (key !== 'userid' && key !== 'actionId' && key !== 'payload') {
      throw new InputError(`logSimple.${excerpt(key, 40)}`, 'is not a known field (userid, actionId, payload)');
    }
  }
  const event: LogEvent = {
    userId: parseUserId(o.userid, 'logSimple.userid'),
    actionId: parseActionId(o.actionId, 'logSimple.actionId'),
    value: 0,
    at: receivedAt,
  };
  const payload = parsePayload(o.payload, 'logSimple.payload');
  if (payload !== undefined) event.payload = payload;
  return event;
}

/**
 * `offlog.batch`, version 1: `{"v":1,"e":[[userId, actionId, value, atMs(, payload)], …]}`.
 * Tuples keep jobs small and parsing cheap; user ids above 2^53-1 travel as strings.
 *
 * Version 2 is version 1 plus an optional sixth field, flags: `[u,a,v,at,payload|null,1]`
 * marks an event sent with logWatchedAction / logWatchedUser. Only a batch that
 * holds such an event is written as version 2, so every other batch stays
 * readable by workers that know only version 1 (deploy workers first).
 */
export const BATCH_VERSION = 1;
export const BATCH_VERSION_WATCHED = 2;
/** The sixth field of a version 2 tuple: the event was sent as watched. */
const FLAG_WATCHED = 1;

/** One event of a batch, from already-validated fields: `[u,a,v,at]`, `[u,a,v,at,"payload"]` or, watched, `[u,a,v,at,"payload"|null,1]`. */
export function encodeTuple(userId: UserId, actionId: ActionId, value: number, at: number, payload: string | undefined, watched = false): string {
  const u = userId.length < 16 ? userId : `"${userId}"`;
  if (watched) return `[${u},${actionId},${value},${at},${payload === undefined ? 'null' : JSON.stringify(payload)},${FLAG_WATCHED}]`;
  return payload === undefined ? `[${u},${actionId},${value},${at}]` : `[${u},${actionId},${value},${at},${JSON.stringify(payload)}]`;
}

/** A batch from encoded tuples; `watched`: some tuple carries the watched flag (version 2). */
export function batchOf(tuples: readonly string[], watched = false): string {
  return `{"v":${watched ? BATCH_VERSION_WATCHED : BATCH_VERSION},"e":[${tuples.join(',')}]}`;
}

export function encodeBatch(events: readonly LogEvent[]): string {
  return batchOf(
    events.map((e) => encodeTuple(e.userId, e.actionId, e.value, e.at, e.payload, e.watched === true)),
    events.some((e) => e.watched === true),
  );
}

export function decodeBatch(data: Buffer, receivedAt: number): LogEvent[] {
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    throw new InputError('offlog.batch', `is not valid JSON: ${excerpt(data.toString('utf8'))}`);
  }
  const o = raw as { v?: unknown; e?: unknown } | null;
  if (typeof o !== 'object' || o === null || Array.isArray(o)) {
    throw new InputError('offlog.batch', `must be a JSON object, got ${excerpt(raw)}`);
  }
  if (o.v !== BATCH_VERSION && o.v !== BATCH_VERSION_WATCHED) {
    throw new InputError('offlog.batch.v', `version ${excerpt(o.v)} is not supported (this worker reads versions ${BATCH_VERSION} and ${BATCH_VERSION_WATCHED})`);
  }
  if (!Array.isArray(o.e)) throw new InputError('offlog.batch.e', `must be an array, got ${excerpt(o.e)}`);
  const maxFields = o.v === BATCH_VERSION ? 5 : 6;
  const events = new Array<LogEvent>(o.e.length);
  for (let i = 0; i < o.e.length; i++) {
    const t = o.e[i] as unknown[];
    const at = `offlog.batch.e[${i}]`;
    if (!Array.isArray(t) || t.length < 4 || t.length > maxFields) {
      const shape = maxFields === 5 ? '[userId, actionId, value, atMs(, payload)]' : '[userId, actionId, value, atMs(, payload|null(, flags))]';
      throw new InputError(at, `must be ${shape}, got ${excerpt(t)}`);
    }
    const event: LogEvent = {
      userId: parseUserId(t[0], `${at}[0] userId`),
      actionId: parseActionId(t[1], `${at}[1] actionId`),
      value: parseValue(t[2], `${at}[2] value`),
      at: parseAt(t[3], receivedAt, `${at}[3] at`),
    };
    if (t.length >= 5) {
      const payload = parsePayload(t[4], `${at}[4] payload`);
      if (payload !== undefined) event.payload = payload;
    }
    if (t.length === 6) {
      if (t[5] !== 0 && t[5] !== FLAG_WATCHED) throw new InputError(`${at}[5] flags`, `must be 0 or ${FLAG_WATCHED} (watched), got ${excerpt(t[5])}`);
      if (t[5] === FLAG_WATCHED) event.watched = true;
    }
    events[i] = event;
  }
  return events;
}

/**
 * A decoded batch as columns rather than objects: row i is (user[i],
 * action[i], value[i], at[i]). The arrays may be longer than `length`: the
 * worker reuses one EventColumns from job to job, so decoding allocates nothing.
 */
export interface EventColumns {
  length: number;
  /** Exact user ids, below 2^53. */
  user: Float64Array;
  action: Uint16Array;
  value: Float64Array;
  /** Epoch ms. */
  at: Float64Array;
}

export function newEventColumns(capacity = 4096): EventColumns {
  return { length: 0, user: new Float64Array(capacity), action: new Uint16Array(capacity), value: new Float64Array(capacity), at: new Float64Array(capacity) };
}

function growColumns(cols: EventColumns): void {
  const capacity = cols.user.length * 2;
  const user = new Float64Array(capacity);
  const action = new Uint16Array(capacity);
  const value = new Float64Array(capacity);
  const at = new Float64Array(capacity);
  user.set(cols.user);
  action.set(cols.action);
  value.set(cols.value);
  at.set(cols.at);
  Object.assign(cols, { user, action, value, at });
}

const BATCH_HEAD = Buffer.from(`{"v":${BATCH_VERSION},"e":[`);
const [COMMA, OPEN, CLOSE, BRACE, ZERO, NINE] = [0x2c, 0x5b, 0x5d, 0x7d, 0x30, 0x39];

/**
 * The worker's fast path for `offlog.batch`: reads the bytes straight into
 * `cols`, with no JSON.parse and no object per event. It takes only the exact
 * shape OffLogClient and encodeBatch write — `{"v":1,"e":[[u,a,v,at],…]}`, no
 * spaces, no strings (so no payloads and no user ids of 16 digits or more),
 * plain integers of at most 15 digits — and checks each field against the
 * same rules as decodeBatch. Anything else returns false (with `cols` in an
 * unspecified state), and the caller falls back to decodeBatch, which accepts
 * what JSON allows and names the field of a bad event: so the fast path never
 * accepts an event decodeBatch would refuse, nor reads one differently.
 */
export function decodeBatchColumns(data: Buffer, cols: EventColumns): boolean {
  const end = data.length;
  if (end < BATCH_HEAD.length + 2 || data.compare(BATCH_HEAD, 0, BATCH_HEAD.length, 0, BATCH_HEAD.length) !== 0) return false;
  let pos = BATCH_HEAD.length;
  let n = 0;
  cols.length = 0;
  if (data[pos] === CLOSE) return pos + 2 === end && data[pos + 1] === BRACE;
  for (;;) {
    if (data[pos++] !== OPEN) return false;
    // Four unsigned integers, each at most 15 digits (exact in a double) with no leading zero, as JSON has it.
    let user = 0, action = 0, value = 0, at = 0;
    for (let field = 0; field < 4; field++) {
      const start = pos;
      let x = 0;
      let c = data[pos]!;
      while (c >= ZERO && c <= NINE && pos < end) {
        x = x * 10 + (c - ZERO);
        c = data[++pos]!;
      }
      const digits = pos - start;
      if (digits === 0 || digits > 15 || (digits > 1 && data[start] === ZERO)) return false;
      if (data[pos++] !== (field === 3 ? CLOSE : COMMA)) return false;
      if (field === 0) user = x;
      else if (field === 1) action = x;
      else if (field === 2) value = x;
      else at = x;
    }
    // The rules of parseActionId and parseAt; user ids and values below 10^15 are always valid.
    if (action < 1 || action > 65_535 || at >= MAX_AT_MS) return false;
    if (n === cols.user.length) growColumns(cols);
    cols.user[n] = user;
    cols.action[n] = action;
    cols.value[n] = value;
    cols.at[n] = at;
    n++;
    const next = data[pos++];
    if (next === COMMA) continue;
    if (next === CLOSE && data[pos] === BRACE && pos + 1 === end) break;
    return false;
  }
  cols.length = n;
  return true;
}

/** Why an event's raw record is kept: sent as watched, or its user or its action is on a watch list. */
export type WatchReason = 'explicit' | 'user' | 'action';
const WATCH_REASONS: readonly WatchReason[] = ['explicit', 'user', 'action'];

/** The raw record of a watched event, as the worker saw it. */
export interface WatchedRecord {
  /**
   * Stable across redeliveries: the Gearman unique of the job that carried the
   * event, '#', the event's index in that job. The watched-events table's key,
   * and the id subscribers deduplicate on.
   */
  id: string;
  /** Epoch ms: the event's own time (logSimple: when the worker received it). */
  at: number;
  userId: UserId;
  actionId: ActionId;
  value: number;
  payload?: string;
  reasons: WatchReason[];
}

export const MAX_WATCHED_ID_LENGTH = 200;

/** An `offlog.watched` job: `{"v":1,"r":[{id, at, userId, actionId, value, payload?, reasons}, …]}`. */
export function encodeWatchedJob(records: readonly WatchedRecord[]): string {
  return JSON.stringify({ v: 1, r: records });
}

export function decodeWatchedJob(data: Buffer): WatchedRecord[] {
  let raw: unknown;
  try {
    raw = JSON.parse(data.toString('utf8'));
  } catch {
    throw new InputError(FN_WATCHED, `is not valid JSON: ${excerpt(data.toString('utf8'))}`);
  }
  const o = raw as { v?: unknown; r?: unknown } | null;
  if (typeof o !== 'object' || o === null || o.v !== 1 || !Array.isArray(o.r)) {
    throw new InputError(FN_WATCHED, `must be {"v":1,"r":[…]}, got ${excerpt(raw)}`);
  }
  return o.r.map((item: unknown, i: number): WatchedRecord => {
    const at = `${FN_WATCHED}.r[${i}]`;
    const r = item as Record<string, unknown> | null;
    if (typeof r !== 'object' || r === null || Array.isArray(r)) throw new InputError(at, `must be an object, got ${excerpt(item)}`);
    if (typeof r.id !== 'string' || r.id === '' || r.id.length > MAX_WATCHED_ID_LENGTH) {
      throw new InputError(`${at}.id`, `must be a string of 1 to ${MAX_WATCHED_ID_LENGTH} characters, got ${excerpt(r.id)}`);
    }
    const reasons = r.reasons;
    if (!Array.isArray(reasons) || reasons.length === 0 || !reasons.every((x) => WATCH_REASONS.includes(x as WatchReason))) {
      throw new InputError(`${at}.reasons`, `must be a non-empty list of ${WATCH_REASONS.join(', ')}, got ${excerpt(reasons)}`);
    }
    const record: WatchedRecord = {
      id: r.id,
      at: parseAt(r.at, Number.NaN, `${at}.at`),
      userId: parseUserId(r.userId, `${at}.userId`),
      actionId: parseActionId(r.actionId, `${at}.actionId`),
      value: parseValue(r.value, `${at}.value`),
      reasons: reasons as WatchReason[],
    };
    if (Number.isNaN(record.at)) throw new InputError(`${at}.at`, 'is required');
    const payload = parsePayload(r.payload, `${at}.payload`);
    if (payload !== undefined) record.payload = payload;
    return record;
  });
}

/** A short, safe rendering of bad input for an error message or a log line. */
export function excerpt(value: unknown, max = 80): string {
  let s: string;
  try {
    s = value === undefined ? 'undefined' : JSON.stringify(value) ?? typeof value;
  } catch {
    // Too deep to stringify (or a cycle): never let describing bad input become a second failure.
    s = Array.isArray(value) ? `[array of ${value.length}]` : `[${typeof value}]`;
  }
  return s.length > max ? `${s.slice(0, max)}…` : s;
}
