/** Errors a user or operator can act on: each names what was wrong. */

/** A configuration variable has a bad value. Raised once, at start. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/**
 * An event (or a batch, or a job payload) broke a rule of DESIGN.md's event
 * table. A TypeError, because for the SDK's callers it is a programming error.
 */
export class InputError extends TypeError {
  override name = 'InputError';
  constructor(
    /** Where: `userId`, `events[3].actionId`, `body`… */
    readonly field: string,
    /** The rule it broke, phrased for the person who sent it. */
    readonly rule: string,
  ) {
    super(`${field}: ${rule}`);
  }
}

/** The input is larger than the configured limit (HTTP 413). */
export class TooLargeError extends Error {
  override name = 'TooLargeError';
}

/** No Gearman server took the job (HTTP 503). */
export class GearmanUnavailableError extends Error {
  override name = 'GearmanUnavailableError';
}

/** Another flush holds the lock; this one gave way. */
export class FlushBusyError extends Error {
  override name = 'FlushBusyError';
}

/** A flush was asked to run at a "now" it must not use without being forced. */
export class FlushClockError extends Error {
  override name = 'FlushClockError';
}
