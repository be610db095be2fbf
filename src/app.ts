import Fastify, { type FastifyInstance, type FastifySchemaCompiler, type FastifyServerOptions } from 'fastify'
import websocket from '@fastify/websocket'
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox'
import type { TSchema } from 'typebox'
import type { GatewayConfig } from '../config/index.js'
import authPlugin from '../plugins/auth.js'
import clusterPlugin from '../plugins/cluster.js'
import gatewayPlugin from '../plugins/gateway.js'
import limitsPlugin from '../plugins/limits.js'
import metricsPlugin from '../plugins/metrics.js'
import securityPlugin from '../plugins/security.js'
import { SessionSocket } from './session/session-socket.js'
import alertRoutes from '../routes/alerts.js'
import authRoutes from '../routes/auth.js'
import demoRoutes from '../routes/demo.js'
import healthRoutes from '../routes/health.js'
import metricsRoutes from '../routes/metrics.js'
import wsRoutes from '../routes/ws.js'
import { tlsOptions } from './lib/tls.js'
import { clientErrorHandler, errorHandler, frameworkErrors, loggerOptions, notFoundHandler } from './logger.js'

export interface BuildOptions {
  /** A pino logger to use instead of one built from the configuration. */
  loggerInstance?: FastifyServerOptions['loggerInstance']
  /** Collect the default process metrics (off in tests that build many apps). */
  defaultMetrics?: boolean
  /** Prefix of Redis keys and channels (tests isolate runs with it). */
  redisPrefix?: string
}

/**
 * TypeBox's validator compiler (@fastify/type-provider-typebox), but a value
 * nested so deep that checking it overflows the stack is a 400 like any
 * other invalid value. TypeBox lists every error of a rejected value, and
 * some keywords walk each item whole (`uniqueItems` hashes it): an array of
 * thousands of nested arrays, well within the body limit, then throws a
 * RangeError, which Fastify would answer with 500 and V8's message.
 */
export const validatorCompiler: FastifySchemaCompiler<TSchema> = (route) => {
  const validate = TypeBoxValidatorCompiler(route)
  return (value) => {
    try {
      return validate(value)
    } catch (err) {
      if (!(err instanceof RangeError)) throw err
      // The shape of TypeBox's errors: Fastify formats it as `body must ...`.
      return { error: [{ keyword: 'depth', schemaPath: '#', instancePath: '', params: {}, message: 'must not be nested this deeply' }] }
    }
  }
}

/** Builds the gateway: registers the plugins, then the routes. Call listen() on it. */
export async function buildApp (config: GatewayConfig, options: BuildOptions = {}): Promise<FastifyInstance> {
  const serverOptions: FastifyServerOptions & { https?: object } = {
    // proxy-addr takes a hop count too; Fastify's types omit it.
    trustProxy: config.trustProxy as FastifyServerOptions['trustProxy'],
    // Requests during the drain reach the routes: /ready says 'draining' and
    // upgrades get the gateway's own 503 (counted as shutting_down).
    return503OnClosing: false,
    // The default (5 s) kills slow-loris handshakes; keep it explicit.
    requestTimeout: config.limits.handshakeTimeoutMs,
    // Fastify's own answers to unparsable requests and bad URLs log or echo
    // the raw request or its URL; these keep the query string out.
    clientErrorHandler,
    frameworkErrors,
    ...(options.loggerInstance !== undefined
      ? { loggerInstance: options.loggerInstance }
      : { logger: loggerOptions(config.logLevel) })
  }
  if (config.tls !== undefined) serverOptions.https = tlsOptions(config.tls)
  const app = Fastify(serverOptions) as unknown as FastifyInstance
  app.setValidatorCompiler(validatorCompiler)
  app.setNotFoundHandler(notFoundHandler)
  app.setErrorHandler(errorHandler)

  const prefix = options.redisPrefix ?? 'gw:'
  await app.register(metricsPlugin, { defaultMetrics: options.defaultMetrics ?? true })
  await app.register(clusterPlugin, {
    redis: config.redis,
    prefix,
    history: config.history,
    idempotencyWindowMs: config.idempotencyWindowMs,
    probeIntervalMs: config.busProbeIntervalMs
  })
  await app.register(authPlugin, {
    jwt: config.jwt,
    allowedOrigins: config.allowedOrigins,
    warnOpenOrigins: config.env === 'production'
  })
  await app.register(limitsPlugin, { limits: config.limits })
  // Before @fastify/websocket: its drain (preClose) runs while upgrades still get 503.
  await app.register(gatewayPlugin, { config })

  await app.register(websocket, {
    options: {
      maxPayload: config.ws.maxMessageBytes,
      perMessageDeflate: false,
      // The registry tracks sessions; ws's own client set would be a second copy.
      clientTracking: false,
      // Sockets that hold their session: shared listeners, no closures per
      // socket. (Typed by @fastify/websocket as the module's class with all
      // its statics, which a subclass does not restate.)
      WebSocket: SessionSocket as never
    },
    // Sessions drain in the gateway plugin's preClose hook.
    preClose: (done) => done()
    // Socket errors are handled per session (routes/ws.ts), so the upgrade
    // request is not retained by an error listener.
  })

  // After @fastify/websocket, so its refusals of upgrades (plain http behind
  // the proxy) are known as upgrades and their sockets are released.
  await app.register(securityPlugin, {
    production: config.env === 'production',
    secure: config.tls !== undefined || config.env === 'production',
    requireForwardedHttps: config.env === 'production' && config.tls === undefined && config.trustProxy !== false
  })

  await app.register(healthRoutes)
  await app.register(metricsRoutes)
  await app.register(authRoutes)
  await app.register(alertRoutes)
  await app.register(wsRoutes)
  // The demo page and its token endpoint exist only on the generated
  // development secret (never in production, never with a configured key).
  if (config.jwt.devSecret) await app.register(demoRoutes)
  return app
}
