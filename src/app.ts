import { randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import websocket from '@fastify/websocket'
import { TypeBoxValidatorCompiler } from '@fastify/type-provider-typebox'
import type { GatewayConfig } from '../config/index.js'
import authPlugin from '../plugins/auth.js'
import busPlugin from '../plugins/cluster.js'
import limitsPlugin from '../plugins/limits.js'
import metricsPlugin from '../plugins/metrics.js'
import securityPlugin from '../plugins/security.js'
import alertRoutes from '../routes/alerts.js'
import authRoutes from '../routes/auth.js'
import demoRoutes from '../routes/demo.js'
import healthRoutes from '../routes/health.js'
import metricsRoutes from '../routes/metrics.js'
import wsRoutes from '../routes/ws.js'
import { CloseCode } from '../protocol/close-codes.js'
import { Lifecycle } from './lib/lifecycle.js'
import { SessionRegistry } from './session/session-registry.js'
import { SpikeDetector } from './session/spike-detector.js'
import { UserClaims } from './session/user-claims.js'
import { clientErrorHandler, frameworkErrors, loggerOptions, notFoundHandler } from './logger.js'

export interface BuildOptions {
  /** A pino logger to use instead of one built from the configuration. */
  loggerInstance?: FastifyServerOptions['loggerInstance']
  /** Collect the default process metrics (off in tests that build many apps). */
  defaultMetrics?: boolean
  /** Prefix of Redis keys and channels (tests isolate runs with it). */
  redisPrefix?: string
}

/** Closes every session with 1001 and waits for them, at most `timeoutMs`. */
async function drain (app: FastifyInstance, timeoutMs: number): Promise<void> {
  const { lifecycle, sessions } = app
  lifecycle.phase = 'draining'
  if (sessions.size === 0) return
  app.log.info({ sessions: sessions.size }, 'draining sessions')
  sessions.closeAll(CloseCode.SHUTTING_DOWN)
  const deadline = Date.now() + timeoutMs
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (sessions.size === 0 || Date.now() >= deadline) {
        clearInterval(timer)
        resolve()
      }
    }, 20)
  })
  if (sessions.size > 0) {
    app.log.warn({ sessions: sessions.size }, 'terminating sessions that did not finish the close handshake')
    sessions.terminateAll()
  }
}

/** Builds the gateway: plugins, session registry, routes. Call listen() on it. */
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
  if (config.tls !== undefined) {
    serverOptions.https = {
      cert: readFileSync(config.tls.certFile),
      key: readFileSync(config.tls.keyFile),
      minVersion: 'TLSv1.2'
    }
  }
  const app = Fastify(serverOptions) as unknown as FastifyInstance
  app.setValidatorCompiler(TypeBoxValidatorCompiler)
  app.setNotFoundHandler(notFoundHandler)

  const instanceId = randomBytes(8).toString('hex')
  const lifecycle = new Lifecycle()
  app.decorate('gatewayConfig', config)
  app.decorate('lifecycle', lifecycle)
  app.decorate('instanceId', instanceId)

  await app.register(metricsPlugin, { defaultMetrics: options.defaultMetrics ?? true })
  await app.register(busPlugin, { redisUrl: config.redisUrl, instanceId, prefix: options.redisPrefix ?? 'gw:' })
  await app.register(authPlugin, {
    jwt: config.jwt,
    allowedOrigins: config.allowedOrigins,
    warnOpenOrigins: config.env === 'production',
    revokedBefore: (userId: string) => app.bus.revokedBefore(userId)
  })
  await app.register(limitsPlugin, { limits: config.limits, redis: app.redis, instanceId, keyPrefix: options.redisPrefix ?? 'gw:' })
  const sessions = new SessionRegistry({ ws: config.ws, metrics: app.metrics, log: app.log })
  const claims = new UserClaims(app.bus, sessions, config.ws.maxConnectionsPerUser)
  const spike = new SpikeDetector(config.spike, app.metrics.connectionSpike, app.log)
  app.decorate('sessions', sessions)
  app.decorate('claims', claims)
  app.decorate('spike', spike)
  app.bus.setHandlers({
    onBroadcast: (frame) => { sessions.broadcast(frame) },
    onUserEvent: (userId, event) => {
      if (event.type === 'alert') sessions.sendToUser(userId, event.frame)
      else if (event.type === 'claim') claims.onRemoteClaim(userId, event.generation)
      else claims.onLogout(userId, event.before)
    },
    onConnectedChange: (connected) => app.metrics.busConnected.set(connected ? 1 : 0)
  })
  app.metrics.busConnected.set(app.bus.connected ? 1 : 0)

  // Registered before @fastify/websocket, so it runs before the plugin stops
  // listening for upgrades: new upgrades get 503 while sessions drain.
  app.addHook('preClose', async () => {
    await drain(app, config.shutdownTimeoutMs)
    sessions.stop()
    spike.stop()
  })
  app.addHook('onReady', async () => {
    sessions.start()
    spike.start()
    lifecycle.phase = 'ready'
  })

  await app.register(websocket, {
    options: {
      maxPayload: config.ws.maxMessageBytes,
      perMessageDeflate: false,
      // The registry tracks sessions; ws's own client set would be a second copy.
      clientTracking: false
    },
    // Sessions drain in the preClose hook above.
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

declare module 'fastify' {
  interface FastifyInstance {
    gatewayConfig: GatewayConfig
    lifecycle: Lifecycle
    instanceId: string
    sessions: SessionRegistry
    claims: UserClaims
    spike: SpikeDetector
  }
}
