/** Retry with capped exponential backoff and jitter, until it works or `stopped()` says give up. */
export async function retry<T>(
  fn: () => Promise<T>,
  opts: { stopped: () => boolean; onError: (err: Error, attempt: number, delayMs: number) => void; baseMs?: number; maxMs?: number },
): Promise<T> {
  const base = opts.baseMs ?? 100;
  const max = opts.maxMs ?? 5000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (opts.stopped()) throw err;
      const delay = Math.min(max, base * 2 ** Math.min(attempt - 1, 16)) * (0.5 + Math.random() / 2);
      opts.onError(err as Error, attempt, Math.round(delay));
      await sleep(delay);
    }
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
