import { Redis, type RedisOptions } from 'ioredis'
import type { RedisTarget } from '../../config/index.js'

export interface RedisConnections {
  /** Commands (stores, limits, publish); auto-pipelined. */
  command: Redis
  /** Subscriptions only: a subscribed connection cannot send other commands. */
  subscriber: Redis
}

/**
 * The two connections of an instance, to one server or to the master a
 * Sentinel names. Neither waits for Redis: an instance starts while Redis is
 * down and reports it through /ready.
 */
export function createRedisConnections (target: RedisTarget | string, commandTimeoutMs = 2000): RedisConnections {
  const options: RedisOptions = {
    // Fail fast while disconnected instead of queueing without bound.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 2000,
    retryStrategy: (times) => Math.min(100 * times, 1000),
    lazyConnect: true
  }
  const connect = (own: RedisOptions): Redis => {
    if (typeof target === 'string') return new Redis(target, { ...options, ...own })
    if (target.kind === 'url') return new Redis(target.url, { ...options, ...own })
    if (target.kind === 'cluster') throw new Error('createRedisConnections: a Cluster is connected by createClusterConnections')
    return new Redis({
      ...options,
      ...own,
      sentinels: target.sentinels,
      name: target.name,
      username: target.username,
      password: target.password,
      ...(target.tls ? { tls: {}, sentinelTLS: {}, enableTLSForSentinelMode: true } : {}),
      // Sentinel announces a failover (+switch-master): reconnect to the new
      // master at once instead of when the old one drops the connection.
      failoverDetector: true,
      sentinelRetryStrategy: (times) => Math.min(100 * times, 1000)
    })
  }
  return {
    // Commands issued in the same tick (a connect storm's handshakes, a
    // burst of publishes) share one write.
    command: connect({ connectionName: 'gw-command', enableAutoPipelining: true }),
    // Subscriptions are restored by the broker, which also tells when they
    // are all in place again: only then is it reported connected.
    subscriber: connect({ connectionName: 'gw-subscriber', autoResubscribe: false })
  }
}
