/** Operator tools for the Gearman queues OffLog owns. */
import type { HostPort } from '../base/config.ts';
import { FN_BATCH, FN_DEAD_LETTER, FN_LOG_SIMPLE, FN_WATCHED } from '../domain/contract.ts';
import { GearmanConnection } from '../wire/gearman.ts';

/** Completes every queued job of OffLog's functions without doing it (leftovers of an aborted run); returns how many. */
export async function purgeQueues(servers: readonly HostPort[]): Promise<number> {
  let purged = 0;
  for (const server of servers) {
    const conn = await GearmanConnection.connect(server);
    try {
      for (const fn of [FN_BATCH, FN_LOG_SIMPLE, FN_DEAD_LETTER, FN_WATCHED]) conn.canDo(fn);
      for (let job = await conn.grab(); job !== null; job = await conn.grab()) {
        conn.complete(job.handle);
        purged++;
      }
    } finally {
      conn.close();
    }
  }
  return purged;
}
