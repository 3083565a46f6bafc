/**
 * Retry with capped exponential backoff and jitter, while the error is one
 * worth retrying (`retryable`, default: every error), until it works or
 * `stopped()` says give up (then the last error is thrown).
 */
export async function retry<T>(
  fn: () => Promise<T>,
  opts: {
    stopped: () => boolean;
    onError: (err: Error, attempt: number, delayMs: number) => void;
    retryable?: (err: Error) => boolean;
    baseMs?: number;
    maxMs?: number;
  },
): Promise<T> {
  const base = opts.baseMs ?? 100;
  const max = opts.maxMs ?? 5000;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (opts.stopped() || (opts.retryable && !opts.retryable(err as Error))) throw err;
      const delay = Math.min(max, base * 2 ** Math.min(attempt - 1, 16)) * (0.5 + Math.random() / 2);
      opts.onError(err as Error, attempt, Math.round(delay));
      // Sleep in short steps, so that a stop is heard within 100 ms.
      for (const until = Date.now() + delay; Date.now() < until; ) {
        if (opts.stopped()) throw err;
        await sleep(Math.min(100, until - Date.now()));
      }
    }
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
