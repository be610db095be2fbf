import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort } from './free-port.js'
import { killRedis, spawnRedis, type RedisProcess } from './redis-process.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface RedisServerOptions {
  /**
   * Keep every write on disk (append-only file, fsync at every write, in a
   * temporary directory removed at teardown), so that data outlives a
   * SIGKILL and restart. Default: nothing kept on disk.
   */
  persistence?: boolean
}

/**
 * A private redis-server for one suite, on a free port. Never the shared
 * server on 6379.
 */
export class RedisServer {
  readonly port: number
  /** The data directory when persistent, else null. */
  readonly dir: string | null
  #process: RedisProcess | null = null

  private constructor (port: number, dir: string | null) {
    this.port = port
    this.dir = dir
  }

  get url (): string {
    return `redis://127.0.0.1:${this.port}`
  }

  static async start (t: Teardown, opts: RedisServerOptions = {}): Promise<RedisServer> {
    const dir = opts.persistence === true ? await mkdtemp(join(tmpdir(), 'gw-redis-')) : null
    const server = new RedisServer(await freePort(), dir)
    t.teardown(async () => {
      await server.stop()
      if (dir !== null) await rm(dir, { recursive: true, force: true })
    })
    await server.start()
    return server
  }

  /** (Re)starts the server on its port; resolves once it accepts connections. */
  async start (): Promise<void> {
    const storage = this.dir === null
      ? ['--appendonly', 'no']
      : ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', this.dir]
    this.#process = await spawnRedis(this.port, [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', ...storage,
      '--protected-mode', 'no', '--loglevel', 'notice'
    ], this.dir ?? tmpdir())
  }

  /** Kills the server (SIGKILL: an outage, not a clean shutdown). */
  async stop (): Promise<void> {
    const running = this.#process
    this.#process = null
    if (running !== null) await killRedis(running)
  }

  /**
   * Kills the server with SIGKILL and starts it again on the same port: a
   * crash. What it keeps depends on `persistence`.
   */
  async restart (): Promise<void> {
    await this.stop()
    await this.start()
  }

  /**
   * A connection of its own (an operator's, e.g. for CLIENT KILL), closed at
   * teardown. It does not retry while the server is down.
   */
  async admin (t: Teardown): Promise<Redis> {
    const redis = new Redis(this.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    t.teardown(() => redis.disconnect())
    await redis.connect()
    return redis
  }
}
