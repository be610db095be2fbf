import { createServer, connect, type Server, type Socket } from 'node:net'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

interface Link {
  client: Socket
  upstream: Socket
  /** Set once the client sent `marker` (e.g. its Redis connection name). */
  marked: boolean
}

/**
 * A TCP proxy on a free port of 127.0.0.1 in front of `target`. It can go
 * silent for the connections that sent `marker`: their bytes are dropped in
 * both directions while both sockets stay open (a half-dead link that no
 * keepalive has noticed yet), until `heal()`.
 */
export class TcpProxy {
  readonly #server: Server
  readonly #links = new Set<Link>()
  readonly #marker: Buffer
  #silent = false
  port = 0

  private constructor (targetPort: number, marker: string) {
    this.#marker = Buffer.from(marker)
    this.#server = createServer((client) => {
      const upstream = connect(targetPort, '127.0.0.1')
      const link: Link = { client, upstream, marked: false }
      this.#links.add(link)
      const drop = (): void => {
        this.#links.delete(link)
        client.destroy()
        upstream.destroy()
      }
      client.on('error', drop).on('close', drop)
      upstream.on('error', drop).on('close', drop)
      client.on('data', (chunk: Buffer) => {
        if (chunk.includes(this.#marker)) link.marked = true
        if (!(this.#silent && link.marked)) upstream.write(chunk)
      })
      upstream.on('data', (chunk: Buffer) => {
        if (!(this.#silent && link.marked)) client.write(chunk)
      })
    })
  }

  static async start (t: Teardown, targetPort: number, marker: string): Promise<TcpProxy> {
    const proxy = new TcpProxy(targetPort, marker)
    await new Promise<void>((resolve) => proxy.#server.listen(0, '127.0.0.1', resolve))
    const address = proxy.#server.address()
    proxy.port = typeof address === 'object' && address !== null ? address.port : 0
    t.teardown(() => proxy.close())
    return proxy
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  /** Connections that sent the marker, open right now. */
  get marked (): number {
    let count = 0
    for (const link of this.#links) if (link.marked) count++
    return count
  }

  silence (): void {
    this.#silent = true
  }

  heal (): void {
    this.#silent = false
  }

  async close (): Promise<void> {
    for (const link of this.#links) {
      link.client.destroy()
      link.upstream.destroy()
    }
    await new Promise<void>((resolve) => this.#server.close(() => resolve()))
  }
}
