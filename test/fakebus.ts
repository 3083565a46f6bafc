/**
 * A stand-in for EventBridge's PutEvents on a free loopback port, for the
 * tests that need what serverless-offline's mock cannot do: go down and come
 * back, fail chosen entries (FailedEntryCount), and show each call as it
 * arrived, so that limits and "published once" can be checked.
 * (The full local path, through the real plugin, is test/bus-offline.test.ts.)
 */
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type net from 'node:net';
import type { TestContext } from 'node:test';
import { freePort } from './daemons.ts';

export interface ReceivedEntry {
  Source: string;
  DetailType: string;
  Detail: string;
  EventBusName?: string;
  Time?: number;
}

export class FakeBus {
  /** Every PutEvents call that reached the server, with its entries. */
  readonly calls: { entries: ReceivedEntry[] }[] = [];
  /** detail.id → how many more times to answer that entry with an error. */
  readonly failing = new Map<string, number>();
  private server: http.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private constructor(readonly port: number) {}

  static async start(t: TestContext): Promise<FakeBus> {
    const bus = new FakeBus(await freePort());
    await bus.up();
    t.after(() => bus.down());
    return bus;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** Entries accepted (not failed), in order, optionally of one detail-type. */
  accepted(detailType?: string): { detailType: string; detail: Record<string, unknown>; bus: string | undefined }[] {
    return this.acceptedLog.filter((e) => detailType === undefined || e.detailType === detailType);
  }

  private readonly acceptedLog: { detailType: string; detail: Record<string, unknown>; bus: string | undefined }[] = [];

  async up(): Promise<void> {
    this.server = http.createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        if (req.headers['x-amz-target'] !== 'AWSEvents.PutEvents') {
          res.writeHead(400, { 'content-type': 'application/x-amz-json-1.1' }).end(JSON.stringify({ __type: 'UnknownOperationException' }));
          return;
        }
        const entries = (JSON.parse(body) as { Entries: ReceivedEntry[] }).Entries;
        this.calls.push({ entries });
        let failed = 0;
        const answers = entries.map((e) => {
          const detail = JSON.parse(e.Detail) as Record<string, unknown>;
          const id = String(detail.id);
          const left = this.failing.get(id) ?? 0;
          if (left > 0) {
            this.failing.set(id, left - 1);
            failed++;
            return { ErrorCode: 'InternalFailure', ErrorMessage: 'the fake bus was told to fail this entry' };
          }
          this.acceptedLog.push({ detailType: e.DetailType, detail, bus: e.EventBusName });
          return { EventId: randomUUID() };
        });
        res.writeHead(200, { 'content-type': 'application/x-amz-json-1.1' }).end(JSON.stringify({ FailedEntryCount: failed, Entries: answers }));
      });
    });
    this.server.on('connection', (s) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((r) => this.server!.listen(this.port, '127.0.0.1', r));
  }

  /** Refuses connections until up() (an outage). */
  async down(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => (server ? server.close(() => r()) : r()));
  }
}
