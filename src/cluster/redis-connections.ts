import { Redis, type RedisOptions } from 'ioredis'

export interface RedisConnections {
  /** Commands (stores, limits, publish); auto-pipelined. */
  command: Redis
  /** Subscriptions only: a subscribed connection cannot send other commands. */
  subscriber: Redis
}

/**
 * The two connections of an instance. Neither waits for Redis: an instance
 * starts while Redis is down and reports it through /ready.
 */
export function createRedisConnections (url: string, commandTimeoutMs = 2000): RedisConnections {
  const options: RedisOptions = {
    // Fail fast while disconnected instead of queueing without bound.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    commandTimeout: commandTimeoutMs,
    connectTimeout: 2000,
    retryStrategy: (times) => Math.min(100 * times, 1000),
    lazyConnect: true
  }
  return {
    // Commands issued in the same tick (a connect storm's handshakes, a
    // burst of publishes) share one write.
    command: new Redis(url, { ...options, connectionName: 'gw-command', enableAutoPipelining: true }),
    // Subscriptions are restored by the broker, which also tells when they
    // are all in place again: only then is it reported connected.
    subscriber: new Redis(url, { ...options, connectionName: 'gw-subscriber', autoResubscribe: false })
  }
}
