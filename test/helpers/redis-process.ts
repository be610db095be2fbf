import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { Redis } from 'ioredis'
import { waitUntil } from './timeout.js'

/** A redis-server (data node, cluster node or Sentinel) started by a test helper. */
export interface RedisProcess {
  port: number
  child: ChildProcess
}

/**
 * Spawns `redis-server` with `args` and resolves once it answers PING on
 * `port`. The process is SIGKILLed if the test process exits first (a tap
 * timeout), so nothing outlives the run.
 */
export async function spawnRedis (port: number, args: string[], cwd: string): Promise<RedisProcess> {
  const child = spawn('redis-server', args, { cwd, stdio: ['ignore', 'pipe', 'pipe'] })
  const kill = (): void => { child.kill('SIGKILL') }
  process.once('exit', kill)
  child.once('exit', () => process.removeListener('exit', kill))
  // Last lines only, for the error below; the pipes are drained so they never fill.
  let tail = ''
  const keep = (chunk: Buffer): void => { tail = (tail + chunk.toString()).slice(-2000) }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  probe.on('error', () => {})
  try {
    await waitUntil(async () => {
      if (child.exitCode !== null) throw new Error(`redis-server on ${port} exited with ${child.exitCode}: ${tail}`)
      if (probe.status !== 'ready') await probe.connect().catch(() => probe.disconnect())
      return probe.status === 'ready' && await probe.ping().catch(() => '') === 'PONG'
    }, 10_000, `redis-server on ${port}`)
  } finally {
    probe.disconnect()
  }
  return { port, child }
}

/** SIGKILLs the process (if it still runs) and resolves once it exited. */
export async function killRedis ({ child }: RedisProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = once(child, 'exit')
  child.kill('SIGKILL')
  await exited
}

/** Admin connections to the nodes of a test topology, all closed at its stop. */
export class AdminConnections {
  readonly #open = new Set<Redis>()

  /** A connection to the node on `port` that never retries (the node may be dead). */
  async open (port: number): Promise<Redis> {
    const redis = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
    redis.on('error', () => {})
    this.#open.add(redis)
    await redis.connect()
    return redis
  }

  close (redis: Redis): void {
    this.#open.delete(redis)
    redis.disconnect()
  }

  /** Runs `command` on a fresh connection to `port`, closed afterwards. */
  async call (port: number, ...command: Array<string | number>): Promise<unknown> {
    const redis = await this.open(port)
    try {
      return await redis.call(String(command[0]), ...command.slice(1))
    } finally {
      this.close(redis)
    }
  }

  closeAll (): void {
    for (const redis of this.#open) redis.disconnect()
    this.#open.clear()
  }
}
