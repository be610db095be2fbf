import { Agent, request } from 'node:https'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Published } from './publisher.js'

export interface PacedPublisherOptions {
  /** https://host:port of the proxy (POST /alerts is appended). */
  baseUrl: string
  /** The CA that signed the proxy's certificate. */
  ca: Buffer
  token: string
  /** Alerts started per second. */
  rate: number
  /** Every `broadcastEvery`th alert goes to everybody; the others to the next of `users`. */
  broadcastEvery: number
  users: string[]
  /** Prefix of titles and Idempotency-Keys. */
  name: string
  /** Publishes under way at most: past it the loop falls behind `rate` rather than pile up. */
  maxInFlight?: number
  /** Give up on one alert (and fail the run) when it is not answered 202 within this. */
  deadlineMs?: number
}

/** Statuses a publisher behind a proxy retries: the instance was away (502, 504) or refused for now (503). */
const RETRIED = new Set([502, 503, 504])
const RETRY_BACKOFF_MS = 50

interface Answer {
  status: number
  body: Record<string, unknown>
}

/**
 * A service publishing at a steady rate through a TLS proxy, as one would
 * write it: each alert under its own `Idempotency-Key`, retried with the same
 * key and body on 502/503/504 or a network error until answered 202. Keeps
 * every 202 in order of completion; `failure` holds the first alert that
 * could not be published (any other status, or past the deadline).
 */
export class PacedPublisher {
  readonly published: Published[] = []
  /** Answers that were retried (-1: no answer at all). */
  readonly refusals: number[] = []
  /** Alerts started so far. */
  started = 0
  failure: Error | null = null
  readonly #o: Required<PacedPublisherOptions>
  readonly #agent: Agent
  readonly #inFlight = new Set<Promise<void>>()
  #userTurn = 0
  #timer: NodeJS.Timeout | undefined
  #startedAt = 0
  #stoppedAt = 0

  constructor (options: PacedPublisherOptions) {
    this.#o = { maxInFlight: 128, deadlineMs: 30_000, ...options }
    this.#agent = new Agent({ keepAlive: true, ca: options.ca, maxSockets: this.#o.maxInFlight })
  }

  start (): void {
    this.#startedAt = performance.now()
    this.#tick()
  }

  /** Stops starting alerts and waits for those under way. */
  async stop (): Promise<void> {
    clearTimeout(this.#timer)
    this.#stoppedAt = performance.now()
    while (this.#inFlight.size > 0) await Promise.all(this.#inFlight)
    this.#agent.destroy()
  }

  /** Alerts started per second, from start() to stop(). */
  get achievedRate (): number {
    return this.started / ((this.#stoppedAt - this.#startedAt) / 1000)
  }

  #tick (): void {
    const due = Math.floor((performance.now() - this.#startedAt) * this.#o.rate / 1000) + 1
    while (this.started < due && this.#inFlight.size < this.#o.maxInFlight) {
      const run = this.#publish(this.started++).catch((err: Error) => { this.failure ??= err })
      this.#inFlight.add(run)
      run.finally(() => this.#inFlight.delete(run))
    }
    this.#timer = setTimeout(() => this.#tick(), 5)
  }

  async #publish (n: number): Promise<void> {
    const { users, name } = this.#o
    const target = n % this.#o.broadcastEvery === 0 ? { all: true as const } : { userId: users[this.#userTurn++ % users.length] }
    const body = JSON.stringify({ target, severity: 'info', title: `${name} ${n}` })
    const key = `${name}-${n}`
    const deadline = Date.now() + this.#o.deadlineMs
    const refused: number[] = []
    for (;;) {
      const answer = await this.#post(body, key).catch(() => null)
      if (answer?.status === 202) {
        this.published.push({ target, id: answer.body.id as string, stream: answer.body.stream as string, pos: answer.body.pos as string, refused })
        return
      }
      if (answer !== null && !RETRIED.has(answer.status)) throw new Error(`publish ${key} answered ${answer.status}: ${JSON.stringify(answer.body)}`)
      refused.push(answer?.status ?? -1)
      this.refusals.push(answer?.status ?? -1)
      if (Date.now() > deadline) throw new Error(`publish ${key} not accepted within ${this.#o.deadlineMs} ms: ${refused.join(',')}`)
      await sleep(RETRY_BACKOFF_MS)
    }
  }

  async #post (body: string, key: string): Promise<Answer> {
    return new Promise((resolve, reject) => {
      const req = request(`${this.#o.baseUrl}/alerts`, {
        method: 'POST',
        agent: this.#agent,
        timeout: 10_000,
        headers: {
          authorization: `Bearer ${this.#o.token}`,
          'content-type': 'application/json',
          'idempotency-key': key
        }
      }, (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => { text += chunk })
        res.on('end', () => {
          let parsed: Record<string, unknown> = {}
          try {
            parsed = text === '' ? {} : JSON.parse(text)
          } catch {
            // nginx's own error pages are HTML: the status says enough.
          }
          resolve({ status: res.statusCode ?? 0, body: parsed })
        })
        res.on('error', reject)
      })
      req.on('timeout', () => req.destroy(new Error('timed out')))
      req.on('error', reject)
      req.end(body)
    })
  }
}
