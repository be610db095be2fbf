import type { WebSocketConstructor, WebSocketLike } from '../../client/index.js'
import { withTimeout } from '../helpers/timeout.js'

/**
 * A WebSocket the test plays the server for, synchronously: `deliver()` a
 * frame, `serverClose()` with a code, exactly when the test says. The
 * client's timers stay real; what the socket does is not left to a network.
 */
export class FakeSocket implements WebSocketLike {
  readyState = 0
  readonly sent: unknown[] = []
  /** Set when the client gave up on the socket (close() or terminate()). */
  endedByClient = false
  onmessage: ((event: any) => void) | null = null
  onclose: ((event: any) => void) | null = null
  onerror: ((event: any) => void) | null = null

  constructor (readonly url: string) {}

  send (data: string): void {
    this.sent.push(JSON.parse(data))
  }

  close (): void {
    this.endedByClient = true
    this.readyState = 3
  }

  terminate (): void {
    this.close()
  }

  /** The server sends `frame` (JSON-encoded unless it is a string already). */
  deliver (frame: unknown): void {
    this.readyState = 1
    this.onmessage?.({ data: typeof frame === 'string' ? frame : JSON.stringify(frame) })
  }

  welcome (userId = 'u1', pos?: unknown): void {
    this.deliver({ type: 'welcome', connectionId: 'c1', userId, heartbeatMs: 30000, reauthMs: 900000, maxMessageBytes: 10240, pos })
  }

  /** The server (or the network) ends the session with `code`. */
  serverClose (code: number): void {
    this.readyState = 3
    this.onclose?.({ code })
  }

  /** The `since_*` parameters the client dialled with. */
  get since (): Record<string, string> {
    return Object.fromEntries([...new URL(this.url).searchParams].filter(([k]) => k.startsWith('since_')))
  }
}

/** Hands out FakeSockets as the client dials, and lets a test wait for the next one. */
export class FakeServer {
  readonly sockets: FakeSocket[] = []
  readonly WebSocket: WebSocketConstructor
  #wakers: Array<() => void> = []

  /** `refuse`: how many of the first sockets fail to be created (the constructor throws). */
  constructor ({ refuse = 0 } = {}) {
    const sockets = this.sockets
    const wake = (): void => { for (const w of this.#wakers.splice(0)) w() }
    let refused = 0
    this.WebSocket = class extends FakeSocket {
      constructor (url: string) {
        if (refused < refuse) {
          refused++
          throw new Error('blocked by policy')
        }
        super(url)
        sockets.push(this)
        wake()
      }
    }
  }

  /** The `n`th socket the client dialled (from 1), once it has; fails after `ms`. */
  async socket (n: number, ms = 5000): Promise<FakeSocket> {
    await withTimeout((async () => {
      while (this.sockets.length < n) await new Promise<void>((resolve) => this.#wakers.push(resolve))
    })(), ms, `socket #${n}`)
    return this.sockets[n - 1]
  }

  /** Sockets the client has not given up on: more than one would be a second connection. */
  get live (): FakeSocket[] {
    return this.sockets.filter((s) => !s.endedByClient && s.readyState !== 3)
  }
}

/** Lets every promise callback queued so far (and those they queue) run: a macrotask turn. */
export const settle = async (): Promise<void> => new Promise((resolve) => setImmediate(resolve))

/** A promise with its resolve and reject exposed: a getToken() or getItem() that settles when the test says. */
export function deferred<T> (): { promise: Promise<T>, resolve: (value: T) => void, reject: (err: unknown) => void } {
  const settlers: { resolve: (value: T) => void, reject: (err: unknown) => void } = { resolve: () => {}, reject: () => {} }
  const promise = new Promise<T>((resolve, reject) => {
    settlers.resolve = resolve
    settlers.reject = reject
  })
  return { promise, ...settlers }
}

/** An unsigned JWT with `sub`: the client reads the claim, the fake server checks nothing. */
export const jwt = (sub: string): string => `x.${Buffer.from(JSON.stringify({ sub })).toString('base64url')}.y`
