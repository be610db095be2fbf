import fp from 'fastify-plugin'
import type { FastifyInstance } from 'fastify'
import type { Redis } from 'ioredis'
import { MemoryBus } from '../src/cluster/memory-bus.js'
import { RedisBus } from '../src/cluster/redis-bus.js'
import type { Bus } from '../src/cluster/bus.js'

export type { Bus, BusHandlers, UserEvent } from '../src/cluster/bus.js'

export interface BusOptions {
  /** Unset: one instance, in-process bus. Set: Redis bus. */
  redisUrl?: string
  /** Fixed-length id of this instance. */
  instanceId: string
  /** Prefix of every Redis key and channel. */
  prefix: string
}

/**
 * Decorates `fastify.bus` (memory or Redis, chosen by `redisUrl`) and
 * `fastify.redis` (the Redis command connection, or null). Registration never
 * waits for Redis: an instance starts while Redis is down and `/ready` says so.
 */
async function busPlugin (fastify: FastifyInstance, opts: BusOptions) {
  if (typeof opts.instanceId !== 'string' || opts.instanceId.length === 0) throw new Error('bus: option instanceId is required')
  let bus: Bus
  let redis: Redis | null = null
  if (opts.redisUrl === undefined) {
    bus = new MemoryBus()
  } else {
    const redisBus = new RedisBus({ url: opts.redisUrl, instanceId: opts.instanceId, prefix: opts.prefix, log: fastify.log })
    await redisBus.start()
    redis = redisBus.client
    bus = redisBus
  }
  fastify.decorate('bus', bus)
  fastify.decorate('redis', redis)
  fastify.addHook('onClose', async () => bus.close())
}

export default fp(busPlugin, { name: 'bus', fastify: '5.x' })

declare module 'fastify' {
  interface FastifyInstance {
    bus: Bus
    redis: Redis | null
  }
}
