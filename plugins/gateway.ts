import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { GatewayConfig } from '../config/index.js'
import { Delivery } from '../src/delivery/delivery.js'
import { Lifecycle } from '../src/lib/lifecycle.js'
import { drain } from '../src/session/drain.js'
import { SessionRegistry } from '../src/session/session-registry.js'
import { SpikeDetector } from '../src/session/spike-detector.js'
import { UserClaims } from '../src/session/user-claims.js'

export interface GatewayOptions {
  config: GatewayConfig
}

/**
 * Decorates the gateway's core: `gatewayConfig`, `lifecycle`, `sessions`
 * (this instance's sessions, heartbeat and deadlines), `delivery` (the one
 * owner of local and cluster fan-out), `claims` (newest connection wins,
 * logout races) and `spike`. Starts them when the app is ready and drains
 * the sessions on close: register it before @fastify/websocket, whose own
 * preClose stops taking upgrades, so new upgrades get 503 while sessions
 * drain.
 */
async function gatewayPlugin (fastify: FastifyInstance, opts: GatewayOptions) {
  const { config } = opts
  if (config === undefined) throw new Error('gateway: option config is required')
  const { cluster, metrics, log } = fastify
  const lifecycle = new Lifecycle()
  const sessions = new SessionRegistry({ ws: config.ws, metrics, log })
  const delivery = new Delivery({
    broker: cluster.broker,
    sessions,
    log,
    history: cluster.history,
    sessionCounts: cluster.sessionCounts,
    claims: cluster.claims,
    metrics: {
      published: (target) => metrics.alertsPublished.inc({ target }),
      resumed (recovered, replayed) {
        metrics.resumes.inc({ result: recovered ? 'recovered' : 'gap' })
        metrics.historyReplayed.inc(replayed)
      },
      caughtUp: (result) => metrics.busCatchups.inc({ result }),
      probeFailed: () => metrics.busProbeFailures.inc()
    }
  })
  const claims = new UserClaims({
    delivery,
    store: cluster.claims,
    registry: sessions,
    maxPerUser: config.ws.maxConnectionsPerUser
  })
  const spike = new SpikeDetector(config.spike, metrics.connectionSpike, log)
  fastify.decorate('gatewayConfig', config)
  fastify.decorate('lifecycle', lifecycle)
  fastify.decorate('sessions', sessions)
  fastify.decorate('delivery', delivery)
  fastify.decorate('claims', claims)
  fastify.decorate('spike', spike)

  // Broadcasts are subscribed before the connections start, so the broker
  // reports connected only once that subscription is in place.
  delivery.start((connected) => metrics.busConnected.set(connected ? 1 : 0))
  cluster.start()
  metrics.busConnected.set(cluster.broker.connected ? 1 : 0)

  fastify.addHook('onReady', async () => {
    sessions.start()
    spike.start()
    lifecycle.phase = 'ready'
  })
  fastify.addHook('preClose', async () => {
    await drain(sessions, lifecycle, log, config.shutdownTimeoutMs)
    sessions.stop()
    spike.stop()
    delivery.stop()
  })
}

export default fp(gatewayPlugin, { name: 'gateway', fastify: '5.x', dependencies: ['metrics', 'cluster'] })

declare module 'fastify' {
  interface FastifyInstance {
    gatewayConfig: GatewayConfig
    lifecycle: Lifecycle
    sessions: SessionRegistry
    delivery: Delivery
    claims: UserClaims
    spike: SpikeDetector
  }
}
