/**
 * The bus: OffLog's own events (`SliceFlushed`, `ActivityWatched`) put on
 * EventBridge with PutEvents. This module only sends: what to send, and
 * remembering what was sent, is the outbox's (outbox.ts, watched.ts), so a
 * failure here never loses an event, it only leaves it for the next attempt.
 *
 * PutEvents takes at most 10 entries and 256 KB per call (sizes counted the
 * way AWS counts them, see entrySize); entries are packed into calls within
 * both limits, in order. An entry that alone passes 256 KB can never be sent
 * and is refused with BusEntryTooLargeError. Entries AWS reports as failed
 * (FailedEntryCount) are retried a few times within the call, then left
 * failed for the caller's next run.
 */
// Types only: the SDK (~0.4 s to load) is imported on the first put, so the worker and the CLI's other commands never pay for it.
import type { EventBridgeClient, PutEventsRequestEntry } from '@aws-sdk/client-eventbridge';
import { sleep } from '../base/backoff.ts';
import type { Logger } from '../base/log.ts';

export const SOURCE = 'offlog';
export type DetailType = 'SliceFlushed' | 'ActivityWatched';

/** PutEvents limits: entries per call, and bytes per call as AWS counts them. */
export const MAX_ENTRIES_PER_CALL = 10;
export const MAX_CALL_BYTES = 256 * 1024;

export interface BusEntry {
  detailType: DetailType;
  /** The event's stable id (also inside `detail`): what its publisher records and its subscribers deduplicate on. */
  id: string;
  /** JSON text. */
  detail: string;
  time?: Date;
}

export interface PutResult {
  /** Ids of entries EventBridge accepted. */
  published: string[];
  /** Entries not accepted (after the retries), with the reason. */
  failed: { id: string; error: string }[];
}

export interface Bus {
  /** False when OFFLOG_EVENT_BUS is unset: nothing is ever published. */
  readonly enabled: boolean;
  put(entries: readonly BusEntry[]): Promise<PutResult>;
  close(): void;
}

/** An entry larger than one PutEvents call may carry: it can never be published as it is. */
export class BusEntryTooLargeError extends Error {
  override name = 'BusEntryTooLargeError';
  constructor(readonly id: string, readonly bytes: number) {
    super(`bus entry ${JSON.stringify(id)}: ${bytes} bytes, more than PutEvents takes in one call (${MAX_CALL_BYTES} bytes counting source, detail-type, detail and time)`);
  }
}

/**
 * An entry's size as AWS counts it against the 256 KB limit: 14 bytes for a
 * time, then the UTF-8 bytes of source, detail-type, detail and resources.
 */
export function entrySize(e: BusEntry): number {
  return (e.time ? 14 : 0) + Buffer.byteLength(SOURCE) + Buffer.byteLength(e.detailType) + Buffer.byteLength(e.detail);
}

/**
 * Packs entries, in order, into PutEvents calls of at most 10 entries and
 * 256 KB. Throws BusEntryTooLargeError, naming the entry, for one that fits
 * no call.
 */
export function packEntries(entries: readonly BusEntry[]): BusEntry[][] {
  const calls: BusEntry[][] = [];
  let call: BusEntry[] = [];
  let bytes = 0;
  for (const e of entries) {
    const size = entrySize(e);
    if (size > MAX_CALL_BYTES) throw new BusEntryTooLargeError(e.id, size);
    if (call.length === MAX_ENTRIES_PER_CALL || bytes + size > MAX_CALL_BYTES) {
      calls.push(call);
      call = [];
      bytes = 0;
    }
    call.push(e);
    bytes += size;
  }
  if (call.length > 0) calls.push(call);
  return calls;
}

export interface EventBridgeBusOptions {
  /** Bus name or ARN. */
  eventBus: string;
  /** An emulator's URL: requests then carry dummy credentials, so this is for local use only. */
  endpoint?: string;
  log: Logger;
  /** Attempts for entries EventBridge reports as failed (FailedEntryCount), within one put. */
  attempts?: number;
}

export class EventBridgeBus implements Bus {
  readonly enabled = true;
  /** PutEvents calls made (tests and logs). */
  calls = 0;
  private sdk: Promise<{ client: EventBridgeClient; PutEventsCommand: typeof import('@aws-sdk/client-eventbridge').PutEventsCommand }> | undefined;
  private readonly attempts: number;

  constructor(private readonly options: EventBridgeBusOptions) {
    this.attempts = options.attempts ?? 3;
  }

  private connect() {
    const { endpoint } = this.options;
    // An optional peer of the installed SDK package (a Lambda's runtime has it): loaded only when something is published.
    const sdk = import('@aws-sdk/client-eventbridge').catch((err: Error) => {
      throw new Error(`OFFLOG_EVENT_BUS is set but @aws-sdk/client-eventbridge cannot be loaded (${err.message}): npm install @aws-sdk/client-eventbridge`);
    });
    return (this.sdk ??= sdk.then(({ EventBridgeClient, PutEventsCommand }) => ({
      PutEventsCommand,
      client: new EventBridgeClient({
        // A bus outage must cost the flush seconds, not minutes: short timeouts, one SDK retry.
        maxAttempts: 2,
        requestHandler: { connectionTimeout: 2000, requestTimeout: 5000 },
        ...(endpoint === undefined ? {} : { endpoint, region: 'us-east-1', credentials: { accessKeyId: 'offlog-local', secretAccessKey: 'offlog-local' } }),
      }),
    })));
  }

  async put(entries: readonly BusEntry[]): Promise<PutResult> {
    const result: PutResult = { published: [], failed: [] };
    let pending: BusEntry[] = [];
    for (const e of entries) {
      const size = entrySize(e);
      if (size > MAX_CALL_BYTES) {
        const err = new BusEntryTooLargeError(e.id, size);
        this.options.log.error({ id: e.id, bytes: size }, err.message);
        result.failed.push({ id: e.id, error: err.message });
      } else pending.push(e);
    }
    for (let attempt = 1; pending.length > 0; attempt++) {
      const retry: { entry: BusEntry; error: string }[] = [];
      for (const call of packEntries(pending)) {
        let answer;
        try {
          this.calls++;
          const { client, PutEventsCommand } = await this.connect();
          answer = await client.send(new PutEventsCommand({ Entries: call.map((e) => this.toRequest(e)) }));
        } catch (err) {
          // The bus itself failed (unreachable, throttled past the SDK's retry, denied): the rest waits for the next run.
          const error = `PutEvents failed: ${(err as Error).message}`;
          const sent = new Set(result.published);
          for (const e of pending) if (!sent.has(e.id) && !retry.some((r) => r.entry === e)) result.failed.push({ id: e.id, error });
          for (const r of retry) result.failed.push({ id: r.entry.id, error: r.error });
          return result;
        }
        const answers = answer.Entries ?? [];
        call.forEach((e, i) => {
          const a = answers[i];
          if (a !== undefined && a.ErrorCode === undefined && a.EventId !== undefined) result.published.push(e.id);
          else retry.push({ entry: e, error: a === undefined ? 'no answer for this entry' : `${a.ErrorCode ?? '?'}: ${a.ErrorMessage ?? ''}` });
        });
      }
      if (retry.length === 0) break;
      if (attempt >= this.attempts) {
        for (const r of retry) result.failed.push({ id: r.entry.id, error: r.error });
        break;
      }
      this.options.log.warn({ failed: retry.length, attempt, first: retry[0]!.error }, 'PutEvents: entries failed (FailedEntryCount); retrying them');
      await sleep(100 * 2 ** attempt);
      pending = retry.map((r) => r.entry);
    }
    return result;
  }

  close(): void {
    void this.sdk?.then(({ client }) => client.destroy());
  }

  private toRequest(e: BusEntry): PutEventsRequestEntry {
    return { Source: SOURCE, DetailType: e.detailType, Detail: e.detail, EventBusName: this.options.eventBus, ...(e.time ? { Time: e.time } : {}) };
  }
}

/** OFFLOG_EVENT_BUS unset: nothing is published, and the log says so once per process. */
export class DisabledBus implements Bus {
  readonly enabled = false;
  private told = false;
  constructor(private readonly log: Logger) {}

  /** Says, once, that nothing is published; returns nothing published. */
  async put(entries: readonly BusEntry[]): Promise<PutResult> {
    this.noteDisabled();
    return { published: [], failed: entries.map((e) => ({ id: e.id, error: 'OFFLOG_EVENT_BUS is unset' })) };
  }

  noteDisabled(): void {
    if (this.told) return;
    this.told = true;
    this.log.info('OFFLOG_EVENT_BUS is unset: SliceFlushed and ActivityWatched events are not published (they stay unpublished in MySQL)');
  }

  close(): void {}
}

export function createBus(config: { eventBus: string | undefined; eventBridgeEndpoint: string | undefined }, log: Logger): Bus {
  if (config.eventBus === undefined) return new DisabledBus(log);
  return new EventBridgeBus({ eventBus: config.eventBus, ...(config.eventBridgeEndpoint === undefined ? {} : { endpoint: config.eventBridgeEndpoint }), log });
}
