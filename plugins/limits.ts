import fp from 'fastify-plugin'
import rateLimit from '@fastify/rate-limit'
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestAsyncHookHandler } from 'fastify'
import type { GatewayConfig } from '../config/index.js'
import { addressKey } from '../src/lib/client-address.js'
import { BusUnavailableError, IpLimitError } from '../src/lib/errors.js'
import { MemoryIpSlots, RedisIpSlots, type IpSlots } from '../src/cluster/ip-slots.js'

/** Seconds a client refused by the per-address limit is told to wait. */
const IP_RETRY_AFTER_SEC = 5

export interface LimitsOptions {
  limits: GatewayConfig['limits']
}

/** A check that needs nothing but the request (authentication). */
export type RequestCheck = (request: FastifyRequest) => Promise<unknown>

/** A per-address connection slot: the address's key and this connection's member. */
export interface ConnectionSlot {
  key: string
  member: string
}

export interface Limits {
  /**
   * Counts a connect attempt of the authenticated user (`request.user`);
   * throws 429 past the per-user limit.
   */
  connectAttempt: (request: FastifyRequest, reply: FastifyReply) => Promise<void>
  /**
   * An onRequest hook for a REST route: the per-address limit and `check`
   * run at once, so their Redis commands leave in one write, and a limited
   * client's body is never read. The limit answers first (429).
   */
  rest: (check: RequestCheck) => onRequestAsyncHookHandler
  /**
   * An onRequest hook for POST /alerts: `check` authenticates the publisher;
   * a valid one is limited by its identity (`request.user.sub`), a request
   * refused for its token (401/403, revoked included) by the per-address
   * limit, never against the identity: a leaked, revoked token cannot use up
   * the budget of the service's new one. Either way a limited client's body
   * is never read.
   */
  publish: (check: RequestCheck) => onRequestAsyncHookHandler
  /**
   * Takes a per-address connection slot; resolves to what releases it, plain
   * data, since a session keeps it for its whole life.
   */
  acquireConnection: (request: FastifyRequest, reply: FastifyReply) => Promise<ConnectionSlot>
  /** Frees a slot taken by acquireConnection (its key and member); call it once per slot. */
  releaseConnection: (key: string, member: string) => void
}

/**
 * Decorates `fastify.limits`: per-user connect attempts (@fastify/rate-limit,
 * Redis store when clustered), concurrent connections per client address
 * (exact under concurrency: a Lua check-and-add on Redis), REST limits per
 * client address, publish limits per publishing service.
 */
async function limitsPlugin (fastify: FastifyInstance, opts: LimitsOptions) {
  const { limits } = opts
  if (limits === undefined) throw new Error('limits: option limits is required')
  // Cluster-wide on Redis (the command connection); in process on one instance.
  const { redis, prefix: keyPrefix } = fastify.cluster
  const { instanceId } = fastify

  await fastify.register(rateLimit, {
    global: false,
    redis: redis ?? undefined,
    nameSpace: `${keyPrefix}rl:`,
    // With Redis down the handshake fails on the bus anyway; REST stays usable.
    skipOnError: true
  })

  const slots: IpSlots = redis === null
    ? new MemoryIpSlots()
    : new RedisIpSlots(redis, limits.ipSlotTtlMs, keyPrefix, (err) => fastify.log.warn({ err }, 'ip slot update failed'))
  fastify.addHook('onClose', async () => slots.close())

  let sequence = 0
  async function acquireConnection (request: FastifyRequest, reply: FastifyReply): Promise<ConnectionSlot> {
    const key = addressKey(request.ip)
    const member = `${instanceId}:${++sequence}`
    let ok: boolean
    try {
      ok = await slots.acquire(key, member, limits.maxConnectionsPerIp)
    } catch (err) {
      request.log.warn({ err }, 'ip slot check failed')
      throw new BusUnavailableError()
    }
    if (!ok) {
      reply.header('retry-after', IP_RETRY_AFTER_SEC)
      throw new IpLimitError()
    }
    return { key, member }
  }

  const attempts = fastify.rateLimit({
    max: limits.maxConnectAttemptsPerMinute,
    timeWindow: 60_000,
    // Runs after authentication: the key is the verified user id.
    keyGenerator: (request) => `ws:${request.user.sub}`
  })
  // The default key: the client address, IPv6 by its /64, an IPv4-mapped
  // address as its IPv4 address (as addressKey does for the slots).
  const restLimit = fastify.rateLimit({
    max: limits.restRateLimitPerMinute,
    timeWindow: 60_000
  })

  const publishLimit = fastify.rateLimit({
    max: limits.publishRateLimitPerMinute,
    timeWindow: 60_000,
    // Runs after authentication: the key is the verified service id.
    keyGenerator: (request) => `pub:${request.user.sub}`
  })

  const decorated: Limits = {
    connectAttempt: async (request, reply) => { await attempts.call(fastify, request, reply) },
    rest: (check) => async function limitedRequest (request, reply) {
      const [limit, checked] = await Promise.allSettled([restLimit.call(fastify, request, reply), check(request)])
      if (limit.status === 'rejected') throw limit.reason
      if (checked.status === 'rejected') throw checked.reason
    },
    publish: (check) => async function limitedPublish (request, reply) {
      try {
        await check(request)
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode
        if (status === 401 || status === 403) await restLimit.call(fastify, request, reply)
        throw err
      }
      // Counted only now: @fastify/rate-limit runs one limiter per request,
      // so the address limit above could not count a refusal after this.
      await publishLimit.call(fastify, request, reply)
    },
    acquireConnection,
    releaseConnection: (key, member) => { slots.release(key, member) }
  }
  fastify.decorate('limits', decorated)
}

export default fp(limitsPlugin, { name: 'limits', fastify: '5.x', dependencies: ['cluster'] })

declare module 'fastify' {
  interface FastifyInstance {
    limits: Limits
  }
}
