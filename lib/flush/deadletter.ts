/**
 * Dead letters: bad jobs the worker parked on the `offlog.deadletter` queue.
 * Moving them into MySQL (`ol_dead_letters`) makes them readable and keeps
 * them after the queue is drained.
 */
import type { HostPort } from '../base/config.ts';
import { decodeDeadLetter, FN_DEAD_LETTER } from '../domain/contract.ts';
import { GearmanConnection } from '../wire/gearman.ts';
import type { DeadLetter, Store } from './store.ts';

/** Moves every queued dead letter into the store; returns how many moved. */
export async function drainDeadLetters(servers: HostPort[], store: Store): Promise<number> {
  let moved = 0;
  for (const server of servers) {
    const conn = await GearmanConnection.connect(server);
    try {
      conn.canDo(FN_DEAD_LETTER);
      for (let job = await conn.grab(); job !== null; job = await conn.grab()) {
        await store.addDeadLetters([toStored(job.data, job.unique)]);
        conn.complete(job.handle);
        moved++;
      }
    } finally {
      conn.close();
    }
  }
  return moved;
}

/**
 * A dead letter as stored: the bad job, with the time the worker received it.
 * One that cannot be read is kept whole, byte for byte, under an error that
 * says why, so that it can neither stop a drain nor be lost by one; its
 * receive time is unknown, so it gets the drain's.
 */
function toStored(data: Buffer, unique: string): DeadLetter {
  try {
    const letter = decodeDeadLetter(data);
    return { fn: letter.fn, unique: letter.unique, error: letter.error, receivedAt: new Date(letter.receivedAt), payload: Buffer.from(letter.payload, 'base64') };
  } catch (err) {
    return { fn: '?', unique, error: `unreadable dead letter (${(err as Error).message}); payload is the dead letter as queued`, receivedAt: new Date(), payload: data };
  }
}
