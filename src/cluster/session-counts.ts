import type { Redis } from 'ioredis'

/**
 * Sessions per instance, as last reported by each: what `delivered` of a
 * broadcast counts on the other instances. Each instance reports its own
 * count every few seconds; a count not refreshed for three periods is
 * dropped (its instance is gone).
 */
export interface SessionCounts {
  /** Reports this instance's count; resolves to the others' total. */
  report (local: number): Promise<number>
}

/** One instance: there are no others. */
export class MemorySessionCounts implements SessionCounts {
  async report (_local: number): Promise<number> {
    return 0
  }
}

/** One hash, `<prefix>sessions`: field instance id, value `<count>:<expires at ms>`. */
export class RedisSessionCounts implements SessionCounts {
  readonly #redis: Redis
  readonly #key: string
  readonly #instanceId: string
  readonly #ttlMs: number

  constructor (redis: Redis, prefix: string, instanceId: string, periodMs: number) {
    this.#redis = redis
    this.#key = `${prefix}sessions`
    this.#instanceId = instanceId
    this.#ttlMs = 3 * periodMs
  }

  async report (local: number): Promise<number> {
    const now = Date.now()
    const [, all] = await Promise.all([
      this.#redis.hset(this.#key, this.#instanceId, `${local}:${now + this.#ttlMs}`),
      this.#redis.hgetall(this.#key)
    ])
    let others = 0
    const stale: string[] = []
    for (const [instance, value] of Object.entries(all)) {
      if (instance === this.#instanceId) continue
      const [count, expiresAt] = value.split(':').map(Number)
      if (expiresAt > now) others += count
      else stale.push(instance)
    }
    if (stale.length > 0) await this.#redis.hdel(this.#key, ...stale)
    return others
  }
}
