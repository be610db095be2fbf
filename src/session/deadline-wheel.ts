/** Something filed under one bucket of the wheel at a time. */
export interface WheelEntry {
  bucket: number
}

/**
 * One timer for any number of deadlines (re-auth requests, token expiry):
 * entries are filed in buckets of `resolutionMs` and handed to `onDue` once
 * their bucket has passed. A timer per socket would cost memory and timer
 * churn at 100k sockets; this costs a map lookup per tick.
 */
export class DeadlineWheel<T extends WheelEntry> {
  readonly #buckets = new Map<number, Set<T>>()
  readonly #resolutionMs: number
  readonly #onDue: (entry: T, now: number) => void
  #timer: NodeJS.Timeout | null = null
  #lastBucket: number

  constructor (resolutionMs: number, onDue: (entry: T, now: number) => void) {
    this.#resolutionMs = resolutionMs
    this.#onDue = onDue
    this.#lastBucket = Math.floor(Date.now() / resolutionMs)
  }

  start (): void {
    if (this.#timer !== null) return
    this.#lastBucket = Math.floor(Date.now() / this.#resolutionMs)
    this.#timer = setInterval(() => this.tick(Date.now()), this.#resolutionMs)
    this.#timer.unref()
  }

  stop (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  get size (): number {
    let n = 0
    for (const set of this.#buckets.values()) n += set.size
    return n
  }

  /** Files `entry` to be due at `atMs` (rounded up to the resolution). */
  schedule (entry: T, atMs: number): void {
    this.cancel(entry)
    let bucket = Math.ceil(atMs / this.#resolutionMs)
    // Never file into a bucket the wheel has already passed.
    if (bucket <= this.#lastBucket) bucket = this.#lastBucket + 1
    let set = this.#buckets.get(bucket)
    if (set === undefined) {
      set = new Set()
      this.#buckets.set(bucket, set)
    }
    set.add(entry)
    entry.bucket = bucket
  }

  cancel (entry: T): void {
    if (entry.bucket === -1) return
    const set = this.#buckets.get(entry.bucket)
    if (set !== undefined) {
      set.delete(entry)
      if (set.size === 0) this.#buckets.delete(entry.bucket)
    }
    entry.bucket = -1
  }

  tick (now: number): void {
    const current = Math.floor(now / this.#resolutionMs)
    if (current - this.#lastBucket > this.#buckets.size) {
      // A long pause (or few buckets): walk the filed buckets, not the gap.
      const due = [...this.#buckets.keys()].filter((b) => b <= current).sort((a, b) => a - b)
      this.#lastBucket = current
      for (const bucket of due) this.#fire(bucket, now)
      return
    }
    while (this.#lastBucket < current) {
      this.#lastBucket++
      this.#fire(this.#lastBucket, now)
    }
  }

  #fire (bucket: number, now: number): void {
    const set = this.#buckets.get(bucket)
    if (set === undefined) return
    this.#buckets.delete(bucket)
    for (const entry of set) {
      entry.bucket = -1
      this.#onDue(entry, now)
    }
  }
}
