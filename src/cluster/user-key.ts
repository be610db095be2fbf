import type { Redis } from 'ioredis'

/**
 * A per-user Redis key, `<prefix><kind>:{<userId>}`: the hash tag keeps all
 * of a user's keys and its topic in one slot (Redis Cluster).
 */
export class UserKey {
  readonly redis: Redis
  readonly #prefix: string

  constructor (redis: Redis, prefix: string, kind: string) {
    this.redis = redis
    this.#prefix = `${prefix}${kind}:{`
  }

  of (userId: string): string {
    return `${this.#prefix}${userId}}`
  }
}
