import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { freePort } from './free-port.js'

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
  #child: ChildProcess | null = null

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
    const child = spawn('redis-server', [
      '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', ...storage,
      '--protected-mode', 'no', '--loglevel', 'notice'
    ], { stdio: ['ignore', 'pipe', 'pipe'] })
    this.#child = child
    // Never outlive the test process, even when it ends without teardown
    // (a tap timeout): a leftover server would hold its port and memory.
    const reap = (): void => { child.kill('SIGKILL') }
    process.once('exit', reap)
    child.once('exit', () => process.removeListener('exit', reap))
    let output = ''
    await new Promise<void>((resolve, reject) => {
      const onData = (chunk: Buffer): void => {
        output += chunk.toString()
        if (output.includes('Ready to accept connections')) resolve()
      }
      child.stdout?.on('data', onData)
      child.stderr?.on('data', onData)
      child.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${output}`)))
      child.once('error', reject)
    })
    // Keep draining output so the pipe never fills.
    child.stdout?.resume()
    child.stderr?.resume()
  }

  /** Kills the server (SIGKILL: an outage, not a clean shutdown). */
  async stop (): Promise<void> {
    const child = this.#child
    this.#child = null
    if (child === null || child.exitCode !== null || child.signalCode !== null) return
    const exited = once(child, 'exit')
    child.kill('SIGKILL')
    await exited
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
