import { once } from 'node:events'
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net'
import WebSocket, { WebSocketServer } from 'ws'
import { withTimeout } from '../helpers/timeout.js'
import { connect, type AlertClient, type Alert, type ClientError, type ConnectOptions, type GapNotice, type ResumeResult, type StateChange, type WebSocketConstructor, type WebSocketLike } from '../../client/index.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export { withTimeout }

/** A `ws` class that counts the sockets the client creates (its connect attempts). */
export function countingWs (Base: WebSocketConstructor = WebSocket): { WebSocket: WebSocketConstructor, urls: string[] } {
  const urls: string[] = []
  // A plain function: `new` returns the object it returns.
  const Counted = function (url: string): WebSocketLike {
    const socket = new Base(url)
    urls.push(url)
    return socket
  } as unknown as WebSocketConstructor
  return { WebSocket: Counted, urls }
}

/**
 * An SDK client with every event recorded, so a test can wait for the
 * state, alert or error it expects, with a timeout that fails the test.
 */
export class Recorded {
  readonly client: AlertClient
  readonly states: StateChange[] = []
  readonly alerts: Alert[] = []
  readonly errors: ClientError[] = []
  readonly resumes: ResumeResult[] = []
  readonly gaps: GapNotice[] = []
  readonly urls: string[]
  tokenCalls = 0
  #wakers: Array<() => void> = []

  /** `options.WebSocket`, when given, gets counted too. */
  constructor (t: Teardown, options: ConnectOptions) {
    const counted = countingWs(options.WebSocket)
    this.urls = counted.urls
    const getToken = options.getToken
    this.client = connect({
      ...options,
      WebSocket: counted.WebSocket,
      getToken: () => {
        this.tokenCalls++
        this.#wake()
        return getToken()
      }
    })
    this.client.on('state', (s) => { this.states.push(s); this.#wake() })
    this.client.on('alert', (a) => { this.alerts.push(a); this.#wake() })
    this.client.on('error', (e) => { this.errors.push(e); this.#wake() })
    this.client.on('resumed', (r) => { this.resumes.push(r); this.#wake() })
    this.client.on('gap', (g) => { this.gaps.push(g); this.#wake() })
    t.teardown(() => this.client.close())
  }

  #wake (): void {
    for (const wake of this.#wakers.splice(0)) wake()
  }

  /** Resolves once `condition` holds (checked after every event), failing after `ms`. */
  async until (condition: () => boolean, what: string, ms = 5000): Promise<void> {
    await withTimeout((async () => {
      while (!condition()) await new Promise<void>((resolve) => this.#wakers.push(resolve))
    })(), ms, what)
  }

  /** Waits for the `n`th time the client reaches `state` (counting from the start). */
  async reached (state: StateChange['state'], n = 1, ms = 5000): Promise<StateChange> {
    await this.until(() => this.states.filter((s) => s.state === state).length >= n, `state ${state} #${n}`, ms)
    return this.states.filter((s) => s.state === state)[n - 1]
  }
}

/** Resolves after `ms` of real time: only to show that something did NOT happen within a bound the test derives. */
export const quietFor = async (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * A scripted WebSocket server for what the gateway never does on purpose
 * (send a duplicate alert, an unreadable frame): `onConnection` gets each
 * socket.
 */
export async function stubServer (t: Teardown, onConnection: (socket: WebSocket) => void): Promise<{ url: string, server: WebSocketServer }> {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  server.on('connection', onConnection)
  await once(server, 'listening')
  t.teardown(async () => {
    for (const client of server.clients) client.terminate()
    await new Promise((resolve) => server.close(resolve))
  })
  const address = server.address() as { port: number }
  return { url: `ws://127.0.0.1:${address.port}/ws`, server }
}

export const welcomeFrame = (userId = 'stub-user'): string => JSON.stringify({
  type: 'welcome', connectionId: 'c1', userId, heartbeatMs: 30000, reauthMs: 900000, maxMessageBytes: 10240
})

/**
 * A TCP proxy in front of a gateway. `blackhole()` stops forwarding on the
 * open connections without closing them: the link is dead and neither end
 * hears of it, like a NAT table entry that vanished.
 */
export class Proxy {
  readonly #server: Server
  readonly #pairs = new Set<[Socket, Socket]>()
  port = 0

  private constructor (targetPort: number) {
    this.#server = createServer((inbound) => {
      const outbound = netConnect(targetPort, '127.0.0.1')
      const pair: [Socket, Socket] = [inbound, outbound]
      this.#pairs.add(pair)
      inbound.pipe(outbound).pipe(inbound)
      const end = (): void => {
        this.#pairs.delete(pair)
        inbound.destroy()
        outbound.destroy()
      }
      inbound.on('error', end).on('close', end)
      outbound.on('error', end).on('close', end)
    })
  }

  static async start (t: Teardown, targetPort: number): Promise<Proxy> {
    const proxy = new Proxy(targetPort)
    proxy.#server.listen(0, '127.0.0.1')
    await once(proxy.#server, 'listening')
    proxy.port = (proxy.#server.address() as { port: number }).port
    t.teardown(() => proxy.close())
    return proxy
  }

  get connections (): number {
    return this.#pairs.size
  }

  blackhole (): void {
    for (const [inbound, outbound] of this.#pairs) {
      inbound.unpipe(outbound)
      outbound.unpipe(inbound)
      inbound.pause()
      outbound.pause()
    }
  }

  async close (): Promise<void> {
    for (const [inbound, outbound] of this.#pairs) {
      inbound.destroy()
      outbound.destroy()
    }
    await new Promise((resolve) => this.#server.close(resolve))
  }
}
