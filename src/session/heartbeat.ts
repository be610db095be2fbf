/** What the heartbeat needs of a socket holder. */
export interface Beating {
  alive: boolean
  ping (): void
  terminate (): void
}

/**
 * One timer that pings every socket once per `intervalMs`, spread evenly
 * over the interval in small slices: pinging all sockets in one loop stalls
 * the event loop at tens of thousands of sockets. A socket that has not
 * answered its previous ping by its next turn is terminated.
 */
export class Heartbeat<T extends Beating> {
  readonly #intervalMs: number
  readonly #tickMs: number
  readonly #list: () => readonly T[]
  #timer: NodeJS.Timeout | null = null
  #cycleStart = 0
  #cursor = 0

  constructor (intervalMs: number, list: () => readonly T[]) {
    this.#intervalMs = intervalMs
    // About 100 slices an interval, never more often than every 10 ms.
    this.#tickMs = Math.max(10, Math.min(100, Math.floor(intervalMs / 100)))
    this.#list = list
  }

  start (): void {
    if (this.#timer !== null) return
    this.#cycleStart = Date.now()
    this.#cursor = 0
    this.#timer = setInterval(() => this.tick(Date.now()), this.#tickMs)
    this.#timer.unref()
  }

  stop (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  /**
   * Visits the sockets due by `now`: the share of the list proportional to
   * the time elapsed in the current cycle. Removal swaps the last socket into
   * the freed place, so a socket is never visited twice in one cycle (one
   * moved behind the cursor waits for the next cycle).
   */
  tick (now: number): void {
    const elapsed = now - this.#cycleStart
    if (elapsed >= this.#intervalMs) {
      // Finish the cycle, and start the next one now: after a stall longer
      // than the interval, catching up on the clock would visit sockets
      // pinged a moment ago and terminate them before they could answer.
      this.#visit(this.#list().length)
      this.#cycleStart = now
      this.#cursor = 0
      return
    }
    const list = this.#list()
    this.#visit(Math.min(list.length, Math.floor(list.length * elapsed / this.#intervalMs)))
  }

  #visit (until: number): void {
    const list = this.#list()
    for (; this.#cursor < until && this.#cursor < list.length; this.#cursor++) {
      const entry = list[this.#cursor]
      if (entry.alive) {
        entry.alive = false
        entry.ping()
      } else {
        // Leaves the list on its 'close' event, not now.
        entry.terminate()
      }
    }
  }
}
