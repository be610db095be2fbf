export interface BackoffOptions {
  /** Ceiling of the first delay, in milliseconds. */
  baseMs: number
  /** Largest ceiling, in milliseconds. */
  capMs: number
}

export const DEFAULT_BACKOFF: BackoffOptions = { baseMs: 500, capMs: 30_000 }

/**
 * Exponential backoff with full jitter: a uniform delay in
 * [0, min(cap, base * 2^attempt)). The jitter spreads a crowd of clients
 * that lost the same server, so they do not all come back at once.
 */
export function backoffDelay (attempt: number, options: BackoffOptions = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  // 2^31 already exceeds any sensible cap; a larger exponent would overflow.
  const ceiling = Math.min(options.capMs, options.baseMs * 2 ** Math.min(attempt, 31))
  return Math.floor(random() * ceiling)
}

/**
 * The gateway refuses more than MAX_CONNECT_ATTEMPTS_PER_MINUTE upgrades per
 * user in a fixed one-minute window. Keeping at most `max` attempts in any
 * rolling window of `windowMs` (a little over a minute, for clock and network
 * skew) means no server window can ever see more.
 */
export class AttemptLimiter {
  readonly #max: number
  readonly #windowMs: number
  readonly #times: number[] = []

  constructor (max: number, windowMs: number) {
    // max 0 (or a fraction) would make waitMs() NaN: a timer that fires at once, no limit at all.
    if (!Number.isSafeInteger(max) || max < 1) throw new RangeError(`AttemptLimiter: max must be a whole number of at least 1, not ${max}`)
    if (!(windowMs > 0)) throw new RangeError(`AttemptLimiter: windowMs must be a positive number, not ${windowMs}`)
    this.#max = max
    this.#windowMs = windowMs
  }

  /** Milliseconds to wait at `now` before one more attempt is allowed; 0 when allowed now. */
  waitMs (now: number): number {
    this.#prune(now)
    if (this.#times.length < this.#max) return 0
    return this.#times[this.#times.length - this.#max] + this.#windowMs - now
  }

  record (now: number): void {
    this.#prune(now)
    this.#times.push(now)
  }

  #prune (now: number): void {
    while (this.#times.length > 0 && now - this.#times[0] >= this.#windowMs) this.#times.shift()
  }
}
