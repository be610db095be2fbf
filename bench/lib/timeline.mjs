/**
 * The worst latency per 250 ms, counted from an origin: when in a phase a
 * spike happened. Client processes record; the runner merges theirs.
 */
export const SLOT_MS = 250

export class Timeline {
  /** The origin (monotonic ms); 0 until set by start() or the first record(). */
  from = 0
  #worst = []

  start (at) {
    this.from = at
  }

  /** `value` (ms) at time `at` (monotonic ms, at or after the origin). */
  record (at, value) {
    if (this.from === 0) this.from = at
    const slot = Math.floor((at - this.from) / SLOT_MS)
    if (slot >= 0) this.#worst[slot] = Math.max(this.#worst[slot] ?? 0, Math.round(value))
  }

  toJSON () {
    return { from: this.from, worst: Array.from(this.#worst, (v) => v ?? 0) }
  }
}

/** Several processes' timelines (toJSON()) as one, slot by slot from the earliest origin. */
export function mergeTimelines (list) {
  const started = list.filter((t) => t.from > 0)
  if (started.length === 0) return []
  const from = Math.min(...started.map((t) => t.from))
  const out = []
  for (const t of started) {
    const shift = Math.round((t.from - from) / SLOT_MS)
    t.worst.forEach((v, i) => { out[i + shift] = Math.max(out[i + shift] ?? 0, v) })
  }
  return Array.from(out, (v) => v ?? 0)
}
