import type { Redis } from 'ioredis'

/**
 * Builds `<prefix><kind>:{<id>}`: the hash tag keeps every key of one user
 * (or one client address) in one slot, ready for Redis Cluster.
 */
export function taggedKey (prefix: string, kind: string): (id: string) => string {
  const head = `${prefix}${kind}:{`
  return (id) => `${head}${id}}`
}

/** A per-user Redis key and the connection it lives on. */
export class UserKey {
  readonly redis: Redis
  readonly of: (userId: string) => string

  constructor (redis: Redis, prefix: string, kind: string) {
    this.redis = redis
    this.of = taggedKey(prefix, kind)
  }
}
