import type { Redis } from 'ioredis'
import { UserKey } from './user-key.js'

/** Generations outlive any session; refreshed at every claim. */
const GENERATION_TTL_SEC = 30 * 24 * 3600

/** Cluster-wide, strictly increasing connection generations per user. */
export interface ClaimStore {
  nextGeneration (userId: string): Promise<number>
  /** The user has no session being claimed here any more. */
  forget (userId: string): void
}

/** One instance: generations only order its own live sessions. */
export class MemoryClaimStore implements ClaimStore {
  readonly #generations = new Map<string, number>()

  async nextGeneration (userId: string): Promise<number> {
    const next = (this.#generations.get(userId) ?? 0) + 1
    this.#generations.set(userId, next)
    return next
  }

  // Forgotten with the user's last session, so the map cannot grow without bound.
  forget (userId: string): void {
    this.#generations.delete(userId)
  }
}

/** `<prefix>gen:{<userId>}`: INCR, expiring a month after the last claim. */
export class RedisClaimStore implements ClaimStore {
  readonly #key: UserKey

  constructor (redis: Redis, prefix: string) {
    this.#key = new UserKey(redis, prefix, 'gen')
  }

  async nextGeneration (userId: string): Promise<number> {
    const { redis } = this.#key
    const key = this.#key.of(userId)
    // Both sent at once (one round trip); INCR is what must succeed.
    const [generation] = await Promise.all([redis.incr(key), redis.expire(key, GENERATION_TTL_SEC)])
    return generation
  }

  forget (_userId: string): void {}
}
