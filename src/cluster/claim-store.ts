import type { Redis } from 'ioredis'
import type { Position } from '../../protocol/position.js'
import type { HistoryStore, StreamRead } from './history-store.js'
import { READ_STEP, parseRead, type ReadReply, type RedisHistoryStore } from './redis-history-store.js'
import type { RedisRevocationStore, RevocationStore } from './revocation-store.js'
import { taggedKey } from './user-key.js'

/** Generations outlive any session; refreshed at every claim. */
const GENERATION_TTL_SEC = 30 * 24 * 3600
/** Connection counts outlive any instance that forgot to lower them by a day at most. */
const HELD_TTL_SEC = 24 * 3600

/** What a claim reads in its one step. */
export interface ClaimRead {
  /** The user's next generation, cluster-wide. */
  generation: number
  /** The user's revocation second (epoch s), or null. */
  revokedBefore: number | null
  /** The user's history stream as read from the position asked for; null when history is off. */
  user: StreamRead | null
}

/**
 * Cluster-wide, strictly increasing connection generations per user, and
 * how many of the user's connections each instance holds (what `delivered`
 * counts on the other instances).
 */
export interface ClaimStore {
  /** claim() reads the user's history stream (the store was given history: history is on). */
  readonly readsHistory: boolean
  /**
   * Takes the next generation, counts one more connection of the user held
   * here, reads the user's revocation and, with history on, the user's
   * stream from `from` (null: its head; see HistoryStore.read), in one step.
   */
  claim (userId: string, from: Position | null): Promise<ClaimRead>
  /** One connection of the user fewer here (after claim(), once). */
  released (userId: string): void
  /** Connections of the user held by the other instances. */
  othersHolding (userId: string): Promise<number>
  /** The user has no session being claimed here any more. */
  forget (userId: string): void
}

/** One instance: generations only order its own live sessions. */
export class MemoryClaimStore implements ClaimStore {
  readonly #generations = new Map<string, number>()
  readonly #revocations: RevocationStore
  readonly #history: HistoryStore | null

  constructor (revocations: RevocationStore, history: HistoryStore | null) {
    this.#revocations = revocations
    this.#history = history
  }

  get readsHistory (): boolean {
    return this.#history !== null
  }

  async claim (userId: string, from: Position | null): Promise<ClaimRead> {
    const generation = (this.#generations.get(userId) ?? 0) + 1
    this.#generations.set(userId, generation)
    const [revokedBefore, user] = await Promise.all([this.#revocations.revokedBefore(userId), this.#history?.read(userId, from) ?? null])
    return { generation, revokedBefore, user }
  }

  released (_userId: string): void {}

  async othersHolding (_userId: string): Promise<number> {
    return 0
  }

  // Forgotten with the user's last session, so the map cannot grow without bound.
  forget (userId: string): void {
    this.#generations.delete(userId)
  }
}

/**
 * The claim's step: KEYS generation, connections per instance, revocation
 * (one user's, one slot); ARGV instance id, generation TTL (s), count TTL
 * (s). Leaves the generation and the revocation second (false: none).
 */
const CLAIM_STEP = `
local generation = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
local revoked = redis.call('GET', KEYS[3])
`

/** CLAIM_STEP alone (history off). Returns the generation and the revocation second (nil: none). */
const CLAIM = `${CLAIM_STEP}
return {generation, revoked}
`

/**
 * CLAIM_STEP, then READ_STEP of the user's history stream: KEYS as
 * CLAIM_STEP's, then the stream and its meta; ARGV as CLAIM_STEP's, then
 * READ_STEP's after its keys. Returns the generation, the revocation second
 * (nil: none) and the read.
 */
const CLAIM_READ = `${READ_STEP}${CLAIM_STEP}
return {generation, revoked, read(KEYS[4], KEYS[5], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])}
`

/** Decrements this instance's count of the user's connections, dropping it at 0. */
const RELEASE = `
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
`

/** Sum of every instance's count but ARGV[1]'s. */
const OTHERS = `
local all = redis.call('HGETALL', KEYS[1])
local sum = 0
for i = 1, #all, 2 do
  if all[i] ~= ARGV[1] then sum = sum + tonumber(all[i + 1]) end
end
return sum
`

interface HeldCommands {
  gwClaim: (generation: string, held: string, revoked: string, instanceId: string, generationTtlSec: number, heldTtlSec: number) => Promise<[number, string | null]>
  gwClaimReadBuffer: (generation: string, held: string, revoked: string, ...args: Array<string | number>) => Promise<[number, Buffer | null, ReadReply]>
  gwHeldRelease: (key: string, instanceId: string) => Promise<unknown>
  gwHeldOthers: (key: string, instanceId: string) => Promise<number>
}

/**
 * `<prefix>gen:{<userId>}`: INCR, expiring a month after the last claim.
 * `<prefix>held:{<userId>}`: a hash of the user's connections per instance
 * (a day's TTL, refreshed at every claim). An instance that dies leaves its
 * count until then; `delivered` counts it only while some other instance
 * still follows the user.
 */
export class RedisClaimStore implements ClaimStore {
  readonly #generation: (userId: string) => string
  readonly #held: (userId: string) => string
  /** The revocation store's key of a user, read in the claim's step. */
  readonly #revoked: (userId: string) => string
  readonly #redis: Redis & HeldCommands
  readonly #instanceId: string
  /** Whose read of the user's stream the claim's step makes; null when history is off. */
  readonly #history: RedisHistoryStore | null
  /** Releases that failed (Redis unreachable), per user: sent again once it is back. */
  readonly #unreleased = new Map<string, number>()

  constructor (redis: Redis, prefix: string, revocations: RedisRevocationStore, instanceId: string, history: RedisHistoryStore | null) {
    this.#generation = taggedKey(prefix, 'gen')
    this.#held = taggedKey(prefix, 'held')
    this.#revoked = revocations.keyOf
    if ((redis as Partial<HeldCommands>).gwHeldRelease === undefined) {
      redis.defineCommand('gwClaim', { numberOfKeys: 3, lua: CLAIM })
      redis.defineCommand('gwClaimRead', { numberOfKeys: 5, lua: CLAIM_READ })
      redis.defineCommand('gwHeldRelease', { numberOfKeys: 1, lua: RELEASE })
      redis.defineCommand('gwHeldOthers', { numberOfKeys: 1, lua: OTHERS })
    }
    this.#redis = redis as Redis & HeldCommands
    this.#instanceId = instanceId
    this.#history = history
    redis.on('ready', () => { this.#releaseAgain() })
  }

  get readsHistory (): boolean {
    return this.#history !== null
  }

  async claim (userId: string, from: Position | null): Promise<ClaimRead> {
    if (this.#history === null) {
      const [generation, revoked] = await this.#redis.gwClaim(
        this.#generation(userId), this.#held(userId), this.#revoked(userId), this.#instanceId, GENERATION_TTL_SEC, HELD_TTL_SEC
      )
      return { generation, revokedBefore: revoked === null ? null : Number(revoked), user: null }
    }
    // The user's keys share one slot (`{<userId>}`): one script on a Cluster too.
    const [stream, meta, ...read] = this.#history.readStep(userId, from)
    const [generation, revoked, reply] = await this.#redis.gwClaimReadBuffer(
      this.#generation(userId), this.#held(userId), this.#revoked(userId), stream, meta,
      this.#instanceId, GENERATION_TTL_SEC, HELD_TTL_SEC, ...read
    )
    return { generation, revokedBefore: revoked === null ? null : Number(revoked.toString('latin1')), user: parseRead(reply) }
  }

  released (userId: string): void {
    this.#redis.gwHeldRelease(this.#held(userId), this.#instanceId).catch(() => {
      // Lost, the count would stay (and be added into `delivered`) for as
      // long as the user connects again within a day. One entry per user
      // whose claim here was taken: bounded by the sessions this instance held.
      this.#unreleased.set(userId, (this.#unreleased.get(userId) ?? 0) + 1)
    })
  }

  #releaseAgain (): void {
    const owed = [...this.#unreleased]
    this.#unreleased.clear()
    for (const [userId, times] of owed) {
      for (let i = 0; i < times; i++) this.released(userId)
    }
  }

  async othersHolding (userId: string): Promise<number> {
    return await this.#redis.gwHeldOthers(this.#held(userId), this.#instanceId)
  }

  /** The key counting the user's connections per instance (history scripts read it). */
  heldKey (userId: string): string {
    return this.#held(userId)
  }

  forget (_userId: string): void {}
}
