/**
 * The one clock of every bench process (runner, client workers, publisher).
 *
 * `process.hrtime` reads CLOCK_MONOTONIC, which on Linux is one clock for
 * the whole machine: a time taken in the publisher and one taken in a client
 * process can be subtracted. `performance.timeOrigin + performance.now()`,
 * used before, cannot: each process fixes its own `timeOrigin` at start, and
 * two processes' origins were off by about a millisecond (a bare ws median
 * latency of 0.0 ms).
 */
export const now = () => Number(process.hrtime.bigint()) / 1e6

/**
 * Wall-clock milliseconds, for comparing with an alert's `ts` (the
 * server's `Date.now()`): the same clock as the server's, at 1 ms resolution.
 */
export const wallNow = () => Date.now()
