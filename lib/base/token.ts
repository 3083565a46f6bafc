/** Bearer tokens (ingest, reports), compared in constant time. */
import { createHash, timingSafeEqual } from 'node:crypto';

/** True when `header` is `Bearer <token>`. Both sides are hashed first, so neither the length nor a prefix leaks. */
export function tokenMatches(header: string | undefined, token: string): boolean {
  const given = /^Bearer (.+)$/.exec(header ?? '')?.[1] ?? '';
  const a = createHash('sha256').update(given).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b) && given.length > 0;
}
