import type { Redis } from 'ioredis'
import { UserKey } from './user-key.js'

/** Logouts: a user's tokens issued at or before a second are revoked. */
export interface RevocationStore {
  revoke (userId: string, before: number, ttlSec: number): Promise<void>
  /** The user's revocation second (epoch s), or null; throws when unknown. */
  revokedBefore (userId: string): Promise<number | null>
}

export class MemoryRevocationStore implements RevocationStore {
  readonly #revocations = new Map<string, { before: number, expiresAt: number }>()

  async revoke (userId: string, before: number, ttlSec: number): Promise<void> {
    this.#sweep()
    this.#revocations.set(userId, { before, expiresAt: Date.now() + ttlSec * 1000 })
  }

  async revokedBefore (userId: string): Promise<number | null> {
    const entry = this.#revocations.get(userId)
    if (entry === undefined) return null
    if (entry.expiresAt <= Date.now()) {
      this.#revocations.delete(userId)
      return null
    }
    return entry.before
  }

  #sweep (): void {
    const now = Date.now()
    for (const [userId, entry] of this.#revocations) {
      if (entry.expiresAt <= now) this.#revocations.delete(userId)
    }
  }
}

/** `<prefix>revoked:{<userId>}`, expiring with the revocation. */
export class RedisRevocationStore implements RevocationStore {
  readonly #key: UserKey

  constructor (redis: Redis, prefix: string) {
    this.#key = new UserKey(redis, prefix, 'revoked')
  }

  /** The user's revocation key (the claim script reads it in its step). */
  get keyOf (): (userId: string) => string {
    return this.#key.of
  }

  async revoke (userId: string, before: number, ttlSec: number): Promise<void> {
    await this.#key.redis.set(this.#key.of(userId), String(before), 'EX', ttlSec)
  }

  async revokedBefore (userId: string): Promise<number | null> {
    const value = await this.#key.redis.get(this.#key.of(userId))
    return value === null ? null : Number(value)
  }
}
