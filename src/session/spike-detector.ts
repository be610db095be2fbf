import type { Gauge } from 'prom-client'
import type { GatewayConfig } from '../../config/index.js'
import type { Log } from '../lib/log.js'

/**
 * Flags a connection spike (a possible DDoS): the connect attempts of the
 * current window are at least `minConnects` and more than `factor` times the
 * average of the previous `baselineWindows` windows. Sets the gauge to 1 and
 * logs one warning when it starts, back to 0 when a window ends below it.
 */
export class SpikeDetector {
  readonly #opts: GatewayConfig['spike']
  readonly #gauge: Gauge
  readonly #log: Log
  readonly #history: number[] = []
  #count = 0
  #active = false
  #timer: NodeJS.Timeout | null = null

  constructor (opts: GatewayConfig['spike'], gauge: Gauge, log: Log) {
    this.#opts = opts
    this.#gauge = gauge
    this.#log = log
    gauge.set(0)
  }

  get active (): boolean {
    return this.#active
  }

  start (): void {
    if (this.#timer !== null) return
    this.#timer = setInterval(() => this.roll(), this.#opts.windowMs)
    this.#timer.unref()
  }

  stop (): void {
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
  }

  /** One connect attempt; may switch the spike on at once. */
  record (): void {
    this.#count++
    if (!this.#active && this.#isSpike(this.#count)) {
      this.#active = true
      this.#gauge.set(1)
      this.#log.warn({ connects: this.#count, windowMs: this.#opts.windowMs, baseline: this.#baseline() }, 'connection spike: connect rate far above its baseline')
    }
  }

  /** Ends the current window; the spike ends with a window below the threshold. */
  roll (): void {
    const count = this.#count
    if (this.#active && !this.#isSpike(count)) {
      this.#active = false
      this.#gauge.set(0)
      this.#log.info({ connects: count }, 'connection spike over')
    }
    this.#history.push(count)
    if (this.#history.length > this.#opts.baselineWindows) this.#history.shift()
    this.#count = 0
  }

  #baseline (): number {
    if (this.#history.length === 0) return 0
    return this.#history.reduce((sum, n) => sum + n, 0) / this.#history.length
  }

  #isSpike (count: number): boolean {
    return count >= this.#opts.minConnects && count > this.#opts.factor * this.#baseline()
  }
}
