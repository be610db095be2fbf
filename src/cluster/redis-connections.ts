import { Cluster, Redis, type RedisOptions } from 'ioredis'
import type { RedisTarget } from '../../config/index.js'
import { APPEND_MANY_COMMAND } from './redis-history-store.js'

export interface RedisConnections {
  /** Commands (stores, limits, publish); auto-pipelined. */
  command: Redis
  /** Subscriptions only: a subscribed connection cannot send other commands. */
  subscriber: Redis
  /**
   * True on a Redis Cluster: `command` and `subscriber` are then one
   * ioredis Cluster (typed as Redis: the commands the gateway uses are the
   * same), pub/sub is sharded (SPUBLISH/SSUBSCRIBE) and its subscriber
   * connections, one per master, are ioredis's own.
   */
  sharded: boolean
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
  if (typeof target !== 'string' && target.kind === 'cluster') {
    const cluster = new Cluster(target.nodes, {
      lazyConnect: true,
      enableOfflineQueue: false,
      enableAutoPipelining: true,
      // ioredis auto-pipelines SSUBSCRIBE like any command: a batch of them
      // then goes out on a node's command connection instead of its sharded
      // subscriber, and the messages of those channels never reach us. For
      // APPEND_MANY_COMMAND, see there.
      autoPipeliningIgnoredCommands: ['ssubscribe', 'sunsubscribe', APPEND_MANY_COMMAND],
      shardedSubscribers: true,
      maxRedirections: 16,
      clusterRetryStrategy: (times) => Math.min(100 * times, 1000),
      // Reconnect to a node that dropped (a restarted replica, a master back
      // after a failover), not only on the next MOVED.
      redisOptions: {
        ...options,
        lazyConnect: false,
        connectionName: 'gw-cluster',
        username: target.username,
        password: target.password,
        ...(target.tls ? { tls: {} } : {})
      }
    })
    const shared = cluster as unknown as Redis
    return { command: shared, subscriber: shared, sharded: true }
  }
  const connect = (own: RedisOptions): Redis => {
    if (typeof target === 'string') return new Redis(target, { ...options, ...own })
    if (target.kind === 'url') return new Redis(target.url, { ...options, ...own })
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
    subscriber: connect({ connectionName: 'gw-subscriber', autoResubscribe: false }),
    sharded: false
  }
}
