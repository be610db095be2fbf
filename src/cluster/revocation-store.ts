import type { Redis } from 'ioredis'
import { UserKey } from './user-key.js'

/** Logouts: a user's tokens issued at or before a second are revoked. */
export interface RevocationStore {
  /**
   * Revokes the user's tokens issued at or before `before` (epoch s), for
   * at least `ttlSec` (a whole number of seconds). A revocation already
   * stored is never weakened: the later second and the longer life win,
   * whatever the order of two logouts (a short token's logout after a long
   * one's, an instance whose clock is behind).
   */
  revoke (userId: string, before: number, ttlSec: number): Promise<void>
  /** The user's revocation second (epoch s), or null; throws when unknown. */
  revokedBefore (userId: string): Promise<number | null>
}

export class MemoryRevocationStore implements RevocationStore {
  readonly #revocations = new Map<string, { before: number, expiresAt: number }>()

  async revoke (userId: string, before: number, ttlSec: number): Promise<void> {
    this.#sweep()
    const expiresAt = Date.now() + ttlSec * 1000
    const known = this.#revocations.get(userId)
    this.#revocations.set(userId, known === undefined
      ? { before, expiresAt }
      : { before: Math.max(before, known.before), expiresAt: Math.max(expiresAt, known.expiresAt) })
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

/** Stores a revocation unless a later one is there; keeps the longer of the two lives. */
const REVOKE = `
local before = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local known = redis.call('GET', KEYS[1])
if known then
  before = math.max(before, tonumber(known))
  ttl = math.max(ttl, redis.call('TTL', KEYS[1]))
end
redis.call('SET', KEYS[1], before, 'EX', ttl)
`

interface RevokeCommand {
  gwRevoke: (key: string, before: number, ttlSec: number) => Promise<unknown>
}

/** `<prefix>revoked:{<userId>}`, expiring with the revocation. */
export class RedisRevocationStore implements RevocationStore {
  readonly #key: UserKey

  constructor (redis: Redis, prefix: string) {
    if ((redis as Partial<RevokeCommand>).gwRevoke === undefined) redis.defineCommand('gwRevoke', { numberOfKeys: 1, lua: REVOKE })
    this.#key = new UserKey(redis, prefix, 'revoked')
  }

  /** The user's revocation key (the claim script reads it in its step). */
  get keyOf (): (userId: string) => string {
    return this.#key.of
  }

  async revoke (userId: string, before: number, ttlSec: number): Promise<void> {
    await (this.#key.redis as Redis & RevokeCommand).gwRevoke(this.#key.of(userId), before, ttlSec)
  }

  async revokedBefore (userId: string): Promise<number | null> {
    const value = await this.#key.redis.get(this.#key.of(userId))
    return value === null ? null : Number(value)
  }
}
