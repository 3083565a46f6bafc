/**
 * Bench role: the client's memory bound (issue 3). Logs `events` events (10
 * million in a full run) with every Gearman server down — a port nobody
 * listens on — and a cap of `maxBufferedEvents`. The heap, measured after a
 * forced GC (run with --expose-gc), must stay below the heap before logging
 * plus what the cap allows plus a small constant; `dropped` must equal what
 * was logged minus what is still buffered.
 *
 * The loop yields every 10,000 calls so that the client's timers (linger,
 * reconnect backoff) run as they would in an application.
 */
import { createServer } from 'node:net';
import { OffLogClient } from '../../lib/send/client.ts';
import { logger, params, peakRssMb, runRole, send, waitForGo, yieldToLoop } from './common.ts';

export interface MemoryParams {
  events: number;
  maxBufferedEvents: number;
}

export interface MemoryResult {
  events: number;
  maxBufferedEvents: number;
  heapBeforeMb: number;
  /** Largest heap seen at the samples (after GC), and at the end. */
  heapMaxMb: number;
  heapEndMb: number;
  /** Bytes of heap per buffered event at the end, from (end − before) / buffered. */
  bytesPerBufferedEvent: number;
  buffered: number;
  dropped: number;
  droppedExact: boolean;
  peakRssMb: number;
  seconds: number;
}

const gc = (globalThis as { gc?: () => void }).gc;
const heapMb = (): number => {
  gc?.();
  return process.memoryUsage().heapUsed / (1024 * 1024);
};

/** A loopback port that refuses connections: bound, then closed. */
async function deadPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise<void>((r) => server.close(() => r()));
  return port;
}

runRole(async () => {
  const p = params<MemoryParams>();
  if (!gc) throw new Error('client-memory needs --expose-gc');
  const port = await deadPort();
  send({ type: 'ready' });
  await waitForGo();
  const client = new OffLogClient({ servers: [{ host: '127.0.0.1', port }], maxBufferedEvents: p.maxBufferedEvents, logger: logger('client-memory') });
  const before = heapMb();
  let heapMax = before;
  const started = performance.now();
  const sampleEvery = Math.max(10_000, Math.floor(p.events / 20));
  for (let i = 0; i < p.events; i++) {
    client.log(1 + (i % 100_000), 1 + (i % 20), { value: i % 7 });
    if (i % 10_000 === 9_999) await yieldToLoop();
    if (i % sampleEvery === sampleEvery - 1) {
      heapMax = Math.max(heapMax, heapMb());
      send({ type: 'progress', done: i + 1, total: p.events });
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const end = heapMb();
  const s = client.stats();
  const dropped = s.droppedBecause.memory;
  const result: MemoryResult = {
    events: p.events,
    maxBufferedEvents: p.maxBufferedEvents,
    heapBeforeMb: Math.round(before * 10) / 10,
    heapMaxMb: Math.round(Math.max(heapMax, end) * 10) / 10,
    heapEndMb: Math.round(end * 10) / 10,
    bytesPerBufferedEvent: s.buffered > 0 ? Math.round(((end - before) * 1024 * 1024) / s.buffered) : 0,
    buffered: s.buffered,
    dropped,
    droppedExact: dropped === p.events - s.buffered,
    peakRssMb: Math.round(peakRssMb()),
    seconds: Math.round(seconds * 10) / 10,
  };
  await client.close({ timeoutMs: 0 });
  return result as unknown as Record<string, unknown>;
});
