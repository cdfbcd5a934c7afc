/** Reconnect backoff: exponential, capped, with jitter. */

/** How the client retries a dropped connection. */
export interface ReconnectOptions {
  /** Delay before the first retry, before jitter (ms). Default 500. */
  baseMs: number;
  /** Cap of the exponential delay (ms). Default 30 000. */
  maxMs: number;
  /** Growth per attempt. Default 2. */
  factor: number;
  /**
   * Share of the delay that is random, 0..1. Default 1 ("full jitter": uniform in [0, capped delay]), which
   * spreads a crowd of clients reconnecting to a restarted node. 0: no jitter.
   */
  jitter: number;
  /** Consecutive failed attempts before giving up (status `closed`). Default `Infinity`. */
  maxAttempts: number;
  /** A connection that stayed open this long (ms) resets the attempt counter. Default 5 000. */
  stableAfterMs: number;
}

export const DEFAULT_RECONNECT: ReconnectOptions = {
  baseMs: 500,
  maxMs: 30_000,
  factor: 2,
  jitter: 1,
  maxAttempts: Number.POSITIVE_INFINITY,
  stableAfterMs: 5_000,
};

/**
 * The delay before retry number `attempt` (1-based): `min(maxMs, baseMs * factor^(attempt-1))`, of which the
 * `jitter` share is drawn uniformly at random.
 */
export function backoffDelay(
  attempt: number,
  options: Pick<ReconnectOptions, 'baseMs' | 'maxMs' | 'factor' | 'jitter'>,
  random: () => number = Math.random,
): number {
  const exponent = Math.max(0, attempt - 1);
  const capped = Math.min(options.maxMs, options.baseMs * Math.pow(options.factor, exponent));
  const jitter = Math.min(1, Math.max(0, options.jitter));
  return Math.round(capped * (1 - jitter) + capped * jitter * random());
}
