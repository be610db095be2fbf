import { randomUUID } from 'node:crypto'
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance } from 'fastify'
import pino from 'pino'
import authPlugin, { type AuthOptions } from '../../plugins/auth.js'
import clusterPlugin from '../../plugins/cluster.js'
import { buildApp } from '../../src/app.js'
import { loggerOptions } from '../../src/logger.js'
import { testConfig } from './config.js'
import { waitForStatus } from './http.js'

interface Teardown {
  teardown: (fn: () => unknown) => void
}

export interface Built {
  app: FastifyInstance
  /** http://127.0.0.1:port */
  url: string
  /** ws://127.0.0.1:port/ws */
  wsUrl: string
  port: number
  /** Every log line written so far (when built with captureLogs). */
  logs: string[]
}

export interface BuildTestOptions {
  env?: Record<string, string>
  /** Capture log lines at this level (e.g. 'debug') into `logs`. */
  captureLogs?: string
  redisPrefix?: string
  listen?: boolean
}

/** Builds a gateway, listens on a free port of 127.0.0.1, closes at teardown. */
export async function build (t: Teardown, opts: BuildTestOptions = {}): Promise<Built> {
  const config = testConfig(opts.env)
  const logs: string[] = []
  const loggerInstance = opts.captureLogs === undefined
    ? undefined
    : pino(loggerOptions(opts.captureLogs), new Writable({
      write (chunk, _enc, cb) {
        logs.push(chunk.toString())
        cb()
      }
    }))
  const app = await buildApp(config, { loggerInstance, defaultMetrics: false, redisPrefix: opts.redisPrefix })
  t.teardown(() => app.close())
  if (opts.listen === false) {
    await app.ready()
    return { app, url: '', wsUrl: '', port: 0, logs }
  }
  await app.listen({ host: '127.0.0.1', port: 0 })
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return { app, url: `http://127.0.0.1:${port}`, wsUrl: `ws://127.0.0.1:${port}/ws`, port, logs }
}

/**
 * Two instances sharing the Redis at `redisUrl` (under a prefix of their
 * own), both ready; connect attempts raised for tests that reconnect a lot.
 */
export async function twoInstances (t: Teardown, redisUrl: string, env: Record<string, string> = {}): Promise<[Built, Built]> {
  const redisPrefix = `t${randomUUID().slice(0, 8)}:`
  const settings = { REDIS_URL: redisUrl, MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000', ...env }
  const a = await build(t, { env: settings, redisPrefix })
  const b = await build(t, { env: settings, redisPrefix })
  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)
  return [a, b]
}

/**
 * The auth plugin on its own (with the in-process cluster it depends on),
 * its revocation lookup answered by `revokedBefore`. Not listening.
 */
export async function authOnly (t: Teardown, opts: AuthOptions, revokedBefore: (userId: string) => Promise<number | null> = async () => null): Promise<FastifyInstance> {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(clusterPlugin, { prefix: 'auth:' })
  app.cluster.revocations.revokedBefore = revokedBefore
  await app.register(authPlugin, opts)
  return app
}
