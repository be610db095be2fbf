import { setTimeout as sleep } from 'node:timers/promises'

export interface Answer {
  status: number
  body: Record<string, unknown>
  headers: Headers
}

export interface PostOptions {
  /** `Idempotency-Key` header (sent as given, even empty). */
  key?: string
  /** Abort after this long (a repeat may wait up to 30 s for a pending key). */
  timeoutMs?: number
}

/** POST /alerts with a service token; resolves to status, parsed body and headers. */
export async function postAlert (baseUrl: string, token: string, body: unknown, opts: PostOptions = {}): Promise<Answer> {
  const headers: Record<string, string> = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
  if (opts.key !== undefined) headers['idempotency-key'] = opts.key
  const res = await fetch(`${baseUrl}/alerts`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(opts.timeoutMs ?? 10000)
  })
  const text = await res.text()
  return { status: res.status, body: text === '' ? {} : JSON.parse(text), headers: res.headers }
}

/** A publish answered 202, with what the publisher asked. */
export interface Published {
  target: { all: true } | { userId: string }
  id: string
  stream: string
  pos: string
  /** Answers before the 202 (503 while Redis was away). */
  refused: number[]
}

/** Pause between retries of a refused publish: the publisher's own back-off. */
const RETRY_BACKOFF_MS = 50

/**
 * A publisher as a service would write one: each alert under its own
 * `Idempotency-Key`, retried with the same key and body on 503 (or a
 * connection error) until it is answered 202, within `deadlineMs`.
 */
export async function publishUntilAccepted (baseUrl: string, token: string, key: string, body: { target: Published['target'] } & Record<string, unknown>, onRefused: (status: number) => void = () => {}, deadlineMs = 45000): Promise<Published> {
  const deadline = Date.now() + deadlineMs
  const refused: number[] = []
  for (;;) {
    const answer = await postAlert(baseUrl, token, body, { key, timeoutMs: Math.max(1000, deadline - Date.now()) }).catch((err: Error) => err)
    if (!(answer instanceof Error) && answer.status === 202) {
      return { target: body.target, id: answer.body.id as string, stream: answer.body.stream as string, pos: answer.body.pos as string, refused }
    }
    if (!(answer instanceof Error) && answer.status !== 503) throw new Error(`publish ${key} answered ${answer.status}: ${JSON.stringify(answer.body)}`)
    refused.push(answer instanceof Error ? -1 : answer.status)
    onRefused(refused[refused.length - 1])
    if (Date.now() > deadline) throw new Error(`publish ${key} not accepted within ${deadlineMs} ms: ${refused.join(',')}`)
    await sleep(RETRY_BACKOFF_MS)
  }
}

/**
 * Publishes in a loop, alternating a broadcast and an alert to the next of
 * `users`, until stopped; keeps every 202 in order of completion.
 */
export class PublishLoop {
  readonly published: Published[] = []
  readonly done: Promise<void>
  /** Refused answers so far, each retried (-1: no answer at all). */
  readonly refusals: number[] = []
  #stopped = false

  constructor (baseUrl: string, token: string, users: string[], name: string) {
    this.done = (async () => {
      for (let n = 0; !this.#stopped; n++) {
        const target = n % 2 === 0 ? { all: true as const } : { userId: users[(n >> 1) % users.length] }
        const body = { target, severity: 'info', title: `${name} ${n}` }
        this.published.push(await publishUntilAccepted(baseUrl, token, `${name}-${n}`, body, (status) => this.refusals.push(status)))
      }
    })()
  }

  async stop (): Promise<void> {
    this.#stopped = true
    await this.done
  }
}
