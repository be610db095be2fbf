import { randomBytes } from 'node:crypto'
import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { RedisTarget } from '../config/index.js'
import { createCluster, type Cluster } from '../src/cluster/cluster.js'

export interface ClusterOptions {
  /** Unset: one instance, everything in process. Set: Redis. */
  redisUrl?: string
  /** Where Redis is: a server, a Sentinel-managed master or a Cluster (takes precedence over redisUrl). */
  redis?: RedisTarget | null
  /** Prefix of every Redis key and channel (tests isolate runs with it). */
  prefix: string
  /** Default: the contract's defaults (300 entries, 10 minutes). */
  history?: { maxEntries: number, retentionMs: number }
  /** Default: 10 minutes. */
  idempotencyWindowMs?: number
  /** Subscription probe interval; default 2000 ms. */
  probeIntervalMs?: number
}

/**
 * Decorates `fastify.cluster` (the broker and the stores the instances
 * share: memory, or Redis when `redisUrl` is set) and `fastify.instanceId`.
 * Registration never waits for Redis: an instance starts while Redis is
 * down and `/ready` says so. The connections close with the app.
 */
async function clusterPlugin (fastify: FastifyInstance, opts: ClusterOptions) {
  if (typeof opts.prefix !== 'string') throw new Error('cluster: option prefix is required')
  const instanceId = randomBytes(8).toString('hex')
  const cluster = createCluster({
    redisUrl: opts.redisUrl,
    redis: opts.redis,
    instanceId,
    prefix: opts.prefix,
    log: fastify.log,
    history: opts.history ?? { maxEntries: 300, retentionMs: 600_000 },
    idempotencyWindowMs: opts.idempotencyWindowMs ?? 600_000,
    probeIntervalMs: opts.probeIntervalMs ?? 2000
  })
  fastify.decorate('instanceId', instanceId)
  fastify.decorate('cluster', cluster)
  fastify.addHook('onClose', async () => cluster.close())
}

export default fp(clusterPlugin, { name: 'cluster', fastify: '5.x' })

declare module 'fastify' {
  interface FastifyInstance {
    cluster: Cluster
    /** Unique id of this instance (slot members, the broker's origin). */
    instanceId: string
  }
}
