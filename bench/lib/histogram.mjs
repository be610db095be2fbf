/**
 * A mergeable latency histogram in milliseconds: log buckets 1% wide from
 * 1 us to ~20 min, so every percentile is within 1% of the truth. Client
 * processes record into their own and send the sparse counts to the
 * orchestrator, which merges them.
 */
const MIN_MS = 0.001
const GROWTH = Math.log(1.01)
const BUCKETS = 2200

export class Histogram {
  constructor () {
    this.counts = new Float64Array(BUCKETS)
    this.count = 0
    this.sum = 0
    this.max = 0
    this.min = Infinity
  }

  record (ms) {
    const value = ms > MIN_MS ? ms : MIN_MS
    let index = Math.ceil(Math.log(value / MIN_MS) / GROWTH)
    if (index >= BUCKETS) index = BUCKETS - 1
    this.counts[index]++
    this.count++
    this.sum += ms
    if (ms > this.max) this.max = ms
    if (ms < this.min) this.min = ms
  }

  /** The upper bound of the bucket holding the p-th percentile (0-100). */
  percentile (p) {
    if (this.count === 0) return NaN
    const rank = Math.max(1, Math.ceil(this.count * p / 100))
    let seen = 0
    for (let i = 0; i < BUCKETS; i++) {
      seen += this.counts[i]
      if (seen >= rank) return Math.min(MIN_MS * Math.exp(i * GROWTH), this.max)
    }
    return this.max
  }

  get mean () {
    return this.count === 0 ? NaN : this.sum / this.count
  }

  merge (other) {
    const counts = other instanceof Histogram ? other.counts : null
    if (counts !== null) {
      for (let i = 0; i < BUCKETS; i++) this.counts[i] += counts[i]
    } else {
      for (const [i, c] of other.sparse) this.counts[i] += c
    }
    this.count += other.count
    this.sum += other.sum
    if (other.max > this.max) this.max = other.max
    if (other.min < this.min) this.min = other.min
    return this
  }

  /** A compact form that survives JSON (IPC). */
  toJSON () {
    const sparse = []
    for (let i = 0; i < BUCKETS; i++) if (this.counts[i] !== 0) sparse.push([i, this.counts[i]])
    return { sparse, count: this.count, sum: this.sum, max: this.max, min: this.min === Infinity ? null : this.min }
  }

  static fromJSON (json) {
    const h = new Histogram()
    return h.merge({ ...json, min: json.min ?? Infinity })
  }

  summary () {
    return {
      count: this.count,
      p50: this.percentile(50),
      p99: this.percentile(99),
      p999: this.percentile(99.9),
      max: this.count === 0 ? NaN : this.max,
      mean: this.mean
    }
  }
}
