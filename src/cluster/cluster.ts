import type { Redis } from 'ioredis'
import type { Log } from '../lib/log.js'
import type { Broker } from './broker.js'
import { MemoryClaimStore, RedisClaimStore, type ClaimStore } from './claim-store.js'
import { MemoryBroker } from './memory-broker.js'
import { RedisBroker } from './redis-broker.js'
import { createRedisConnections } from './redis-connections.js'
import { MemoryRevocationStore, RedisRevocationStore, type RevocationStore } from './revocation-store.js'

/** What the instances share: a broker and the stores, memory or Redis. */
export interface Cluster {
  broker: Broker
  claims: ClaimStore
  revocations: RevocationStore
  /** The Redis command connection (cluster-wide limits), or null on one instance. */
  redis: Redis | null
  /** Prefix of every Redis key and channel. */
  prefix: string
  /**
   * Starts connecting (Redis); returns at once. Call it after the standing
   * subscriptions were asked for, so the first connect already restores them.
   */
  start (): void
  close (): Promise<void>
}

export interface ClusterOptions {
  /** Unset: one instance, everything in process. Set: Redis. */
  redisUrl?: string
  /** Fixed-length id of this instance. */
  instanceId: string
  /** Prefix of every Redis key and channel. */
  prefix: string
  log: Log
  /** Bound on any one Redis command, so a stalled Redis never hangs a request. */
  commandTimeoutMs?: number
}

/**
 * The memory or Redis implementations, chosen by `redisUrl`. Never waits for
 * Redis: once started, the connections connect in the background and the
 * broker reports when it is up.
 */
export function createCluster (opts: ClusterOptions): Cluster {
  if (opts.redisUrl === undefined) {
    const broker = new MemoryBroker()
    return { broker, claims: new MemoryClaimStore(), revocations: new MemoryRevocationStore(), redis: null, prefix: opts.prefix, start: () => {}, close: () => broker.close() }
  }
  const connections = createRedisConnections(opts.redisUrl, opts.commandTimeoutMs)
  const broker = new RedisBroker({ connections, instanceId: opts.instanceId, prefix: opts.prefix, log: opts.log })
  return {
    broker,
    claims: new RedisClaimStore(connections.command, opts.prefix),
    revocations: new RedisRevocationStore(connections.command, opts.prefix),
    redis: connections.command,
    prefix: opts.prefix,
    start () {
      for (const client of [connections.command, connections.subscriber]) {
        client.connect().catch(() => { /* retried by ioredis; reported by the broker */ })
      }
    },
    close: () => broker.close()
  }
}
