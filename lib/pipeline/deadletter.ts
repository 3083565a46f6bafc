/**
 * Dead letters: bad jobs the worker parked on the `offlog.deadletter` queue.
 * Moving them into MySQL (`ol_dead_letters`) makes them readable and keeps
 * them after the queue is drained.
 */
import type { HostPort } from '../base/config.ts';
import { FN_DEAD_LETTER, type DeadLetterJob } from '../domain/contract.ts';
import { GearmanConnection } from '../wire/gearman.ts';
import type { Store } from './store.ts';

/** Moves every queued dead letter into the store; returns how many moved. */
export async function drainDeadLetters(servers: HostPort[], store: Store): Promise<number> {
  let moved = 0;
  for (const server of servers) {
    const conn = await GearmanConnection.connect(server);
    try {
      conn.canDo(FN_DEAD_LETTER);
      for (let job = await conn.grab(); job !== null; job = await conn.grab()) {
        let letter: DeadLetterJob;
        try {
          letter = JSON.parse(job.data.toString('utf8')) as DeadLetterJob;
        } catch {
          letter = { fn: '?', unique: job.unique, handle: job.handle, error: 'unreadable dead letter', receivedAt: '', payload: job.data.toString('base64') };
        }
        await store.addDeadLetters([{ fn: letter.fn, unique: letter.unique, error: letter.error, payload: Buffer.from(letter.payload, 'base64') }]);
        conn.complete(job.handle);
        moved++;
      }
    } finally {
      conn.close();
    }
  }
  return moved;
}
