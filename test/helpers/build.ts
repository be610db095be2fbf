import { Writable } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import pino from 'pino'
import { buildApp } from '../../src/app.js'
import { loggerOptions } from '../../src/logger.js'
import { testConfig } from './config.js'

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
