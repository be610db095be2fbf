/**
 * At most `limit` handshakes do their work (token, Redis, history) at once;
 * the others wait their turn, first come first served, at the cost of a
 * queued callback.
 *
 * Without it a reconnect storm (a deploy moving thousands of clients at
 * once) puts every upgrade's Redis commands and replies in the event loop
 * together: an alert for a session already open waits behind all of them,
 * for seconds, and so do the heartbeat's pongs. With it, what runs ahead of
 * an alert is bounded by `limit` handshakes, and a client that gave up
 * while waiting costs nothing more (its upgrade is dropped when its turn
 * comes).
 */
export class HandshakeGate {
  readonly #limit: number
  readonly #onWaiting: (waiting: number) => void
  #active = 0
  /** Waiting turns, oldest first; `#head` is the next to go. */
  #queue: Array<() => void> = []
  #head = 0

  /** `onWaiting` is told the number waiting each time it changes (a gauge). */
  constructor (limit: number, onWaiting: (waiting: number) => void = () => {}) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError('HandshakeGate: limit must be a positive integer')
    this.#limit = limit
    this.#onWaiting = onWaiting
  }

  /** Handshakes doing their work now. */
  get active (): number {
    return this.#active
  }

  /** Handshakes waiting for their turn. */
  get waiting (): number {
    return this.#queue.length - this.#head
  }

  /**
   * Takes a turn: null when one is free now, else a promise of it. Every
   * turn taken is given back with `leave()`, once.
   */
  enter (): Promise<void> | null {
    if (this.#active < this.#limit) {
      this.#active++
      return null
    }
    return new Promise((resolve) => {
      this.#queue.push(resolve)
      this.#onWaiting(this.waiting)
    })
  }

  /** Gives a turn back: to the oldest waiting handshake, if any. */
  leave (): void {
    if (this.#head < this.#queue.length) {
      const next = this.#queue[this.#head] as () => void
      this.#queue[this.#head++] = undefined as never
      // Compacted once drained, or once the consumed part outgrows the rest.
      if (this.#head === this.#queue.length) {
        this.#queue = []
        this.#head = 0
      } else if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
        this.#queue = this.#queue.slice(this.#head)
        this.#head = 0
      }
      this.#onWaiting(this.waiting)
      // The turn passes on: `#active` stays.
      next()
      return
    }
    this.#active--
  }
}
