import type { Redis } from 'ioredis'
import type { RedisTarget } from '../../config/index.js'
import type { Log } from '../lib/log.js'
import type { Broker } from './broker.js'
import { ALL_TOPIC, userTopic } from './broker.js'
import { MemoryClaimStore, RedisClaimStore, type ClaimStore } from './claim-store.js'
import type { HistoryLimits, HistoryStore } from './history-store.js'
import { MemoryIdempotencyStore, RedisIdempotencyStore, type IdempotencyStore } from './idempotency-store.js'
import { MemoryBroker } from './memory-broker.js'
import { MemoryHistoryStore } from './memory-history-store.js'
import { RedisBroker } from './redis-broker.js'
import { createRedisConnections } from './redis-connections.js'
import { RedisHistoryStore } from './redis-history-store.js'
import { MemoryRevocationStore, RedisRevocationStore, type RevocationStore } from './revocation-store.js'
import { MemorySessionCounts, RedisSessionCounts, type SessionCounts } from './session-counts.js'

/** How often each instance reports its session count (see SessionCounts). */
export const SESSION_COUNT_PERIOD_MS = 5000

/** What the instances share: a broker and the stores, memory or Redis. */
export interface Cluster {
  broker: Broker
  claims: ClaimStore
  revocations: RevocationStore
  /** Null when history is off (HISTORY_MAX_ENTRIES=0). */
  history: HistoryStore | null
  idempotency: IdempotencyStore
  sessionCounts: SessionCounts
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
  /** Unset (and no `redis`): one instance, everything in process. */
  redisUrl?: string
  /** Where Redis is (takes precedence over `redisUrl`). */
  redis?: RedisTarget | null
  /** Fixed-length id of this instance. */
  instanceId: string
  /** Prefix of every Redis key and channel. */
  prefix: string
  log: Log
  /** Bound on any one Redis command, so a stalled Redis never hangs a request. */
  commandTimeoutMs?: number
  /** maxEntries 0: no history. */
  history: HistoryLimits
  idempotencyWindowMs: number
  /** Subscription probe interval (Redis); 0 or absent: no probes. */
  probeIntervalMs?: number
}

const topicOf = (owner: string | null): string => owner === null ? ALL_TOPIC : userTopic(owner)

/**
 * The memory or Redis implementations, chosen by `redisUrl`. Never waits for
 * Redis: once started, the connections connect in the background and the
 * broker reports when it is up.
 */
export function createCluster (opts: ClusterOptions): Cluster {
  const target = opts.redis ?? (opts.redisUrl === undefined ? null : { kind: 'url' as const, url: opts.redisUrl })
  if (target === null) {
    const broker = new MemoryBroker()
    const revocations = new MemoryRevocationStore()
    const history = opts.history.maxEntries === 0 ? null : new MemoryHistoryStore(opts.history, (topic, message) => broker.loopback(topic, message))
    return {
      broker,
      claims: new MemoryClaimStore(revocations, history),
      revocations,
      history,
      idempotency: new MemoryIdempotencyStore(opts.idempotencyWindowMs),
      sessionCounts: new MemorySessionCounts(),
      redis: null,
      prefix: opts.prefix,
      start: () => {},
      close: () => broker.close()
    }
  }
  const connections = createRedisConnections(target, opts.commandTimeoutMs)
  const revocations = new RedisRevocationStore(connections.command, opts.prefix)
  const broker = new RedisBroker({ connections, instanceId: opts.instanceId, prefix: opts.prefix, log: opts.log, probeIntervalMs: opts.probeIntervalMs })
  const history: RedisHistoryStore | null = opts.history.maxEntries === 0
    ? null
    : new RedisHistoryStore({
      redis: connections.command,
      prefix: opts.prefix,
      limits: opts.history,
      channelOf: (topic) => broker.channelOf(topic),
      origin: broker.everyInstance,
      publishCommand: broker.publishCommand,
      held: { keyOf: (userId) => claims.heldKey(userId), instanceId: opts.instanceId },
      topicOf
    })
  // The claim reads the user's history stream in its own step.
  const claims: RedisClaimStore = new RedisClaimStore(connections.command, opts.prefix, revocations, opts.instanceId, history)
  return {
    broker,
    claims,
    revocations,
    history,
    idempotency: new RedisIdempotencyStore(connections.command, opts.prefix, opts.idempotencyWindowMs, history?.findRecord.bind(history)),
    sessionCounts: new RedisSessionCounts(connections.command, opts.prefix, opts.instanceId, SESSION_COUNT_PERIOD_MS),
    redis: connections.command,
    prefix: opts.prefix,
    start () {
      for (const client of [connections.command, connections.subscriber]) {
        client.connect().catch(() => { /* retried by ioredis; reported by the broker */ })
      }
      broker.startProbes()
    },
    close: () => broker.close()
  }
}
