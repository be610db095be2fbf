import type { IncomingHttpHeaders } from 'node:http'
import WebSocket from 'ws'
import { withTimeout } from './timeout.js'
import { newUser, userToken } from './tokens.js'

export interface OpenOptions {
  token?: string
  headers?: Record<string, string>
  localAddress?: string
  /** Milliseconds to wait for open or refusal. */
  timeoutMs?: number
  rejectUnauthorized?: boolean
  ca?: string | Buffer
}

export interface Refusal {
  status: number
  headers: IncomingHttpHeaders
  body: string
}

export interface Closed {
  code: number
  reason: string
}

/**
 * A real `ws` client that records every message, so a test can await the
 * next one (or the close) with a timeout that fails the test.
 */
export class TestClient {
  readonly ws: WebSocket
  readonly received: Array<Record<string, unknown>> = []
  readonly closed: Promise<Closed>
  #waiters: Array<() => void> = []
  #cursor = 0

  constructor (ws: WebSocket) {
    this.ws = ws
    ws.on('message', (data) => {
      this.received.push(JSON.parse(data.toString()))
      for (const wake of this.#waiters.splice(0)) wake()
    })
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        resolve({ code, reason: reason.toString() })
        for (const wake of this.#waiters.splice(0)) wake()
      })
    })
    ws.on('error', () => { /* surfaced through close */ })
  }

  static url (base: string, token?: string): string {
    return token === undefined ? base : `${base}?token=${encodeURIComponent(token)}`
  }

  /** Opens a connection; rejects with a Refusal when the upgrade is refused. */
  static async open (base: string, opts: OpenOptions = {}): Promise<TestClient> {
    const ws = new WebSocket(TestClient.url(base, opts.token), {
      headers: opts.headers,
      localAddress: opts.localAddress,
      perMessageDeflate: false,
      rejectUnauthorized: opts.rejectUnauthorized,
      ca: opts.ca
    })
    const client = new TestClient(ws)
    await withTimeout(new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve())
      ws.once('unexpected-response', (_req, res) => {
        let body = ''
        res.on('data', (c: Buffer) => { body += c.toString() })
        res.on('end', () => reject(Object.assign(new Error(`refused ${res.statusCode}`), { status: res.statusCode, headers: res.headers, body })))
        res.on('error', () => reject(Object.assign(new Error(`refused ${res.statusCode}`), { status: res.statusCode, headers: res.headers, body })))
      })
      ws.once('error', reject)
    }), opts.timeoutMs ?? 5000, 'the upgrade')
    return client
  }

  /** Opens and reads the welcome message. */
  static async connect (base: string, opts: OpenOptions = {}): Promise<{ client: TestClient, welcome: Record<string, unknown> }> {
    const client = await TestClient.open(base, opts)
    const welcome = await client.next('welcome')
    return { client, welcome }
  }

  /** Connects as `userId` (a fresh user by default), the welcome read. */
  static async connectAs (base: string, userId = newUser()): Promise<TestClient> {
    const { client } = await TestClient.connect(base, { token: userToken(userId) })
    return client
  }

  /** Expects the upgrade to be refused; resolves to the HTTP answer. */
  static async refused (base: string, opts: OpenOptions = {}): Promise<Refusal> {
    try {
      const client = await TestClient.open(base, opts)
      client.ws.terminate()
    } catch (err) {
      const refusal = err as Partial<Refusal>
      if (typeof refusal.status === 'number') return refusal as Refusal
      throw err
    }
    throw new Error('the upgrade was accepted')
  }

  /** Sends an application ping and resolves with its pong. */
  async pingPong (id: string): Promise<Record<string, unknown>> {
    this.send({ type: 'ping', id })
    return this.next('pong')
  }

  send (message: unknown): void {
    this.ws.send(typeof message === 'string' ? message : JSON.stringify(message))
  }

  /** The next message not yet consumed (of `type` when given). */
  async next (type?: string, timeoutMs = 5000): Promise<Record<string, unknown>> {
    let expired = false
    const find = async (): Promise<Record<string, unknown>> => {
      for (;;) {
        // A wait that timed out must not consume a message meant for a later one.
        if (expired) throw new Error('expired')
        while (this.#cursor < this.received.length) {
          const message = this.received[this.#cursor++]
          if (type === undefined || message.type === type) return message
        }
        if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`socket closed before a ${type ?? 'message'} arrived`)
        await new Promise<void>((resolve) => this.#waiters.push(resolve))
      }
    }
    try {
      return await withTimeout(find(), timeoutMs, `a ${type ?? 'message'} message`)
    } finally {
      expired = true
    }
  }

  /** Resolves with the close code and reason, failing after `timeoutMs`. */
  async waitClosed (timeoutMs = 5000): Promise<Closed> {
    return withTimeout(this.closed, timeoutMs, 'the close')
  }

  async close (): Promise<Closed> {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close()
    return this.waitClosed()
  }
}
