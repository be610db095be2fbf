import type { Redis } from 'ioredis'
import { taggedKey } from './user-key.js'

/** Concurrent connection slots per client address. */
export interface IpSlots {
  /** Takes a slot for `member`; false when `key` already holds `max`. */
  acquire (key: string, member: string, max: number): Promise<boolean>
  release (key: string, member: string): void
  close (): void
}

/** One instance: a count per address. */
export class MemoryIpSlots implements IpSlots {
  readonly #counts = new Map<string, number>()

  async acquire (key: string, _member: string, max: number): Promise<boolean> {
    const count = this.#counts.get(key) ?? 0
    if (count >= max) return false
    this.#counts.set(key, count + 1)
    return true
  }

  release (key: string, _member: string): void {
    const count = (this.#counts.get(key) ?? 0) - 1
    if (count > 0) this.#counts.set(key, count)
    else this.#counts.delete(key)
  }

  close (): void {
    this.#counts.clear()
  }
}

// Check-and-add in one step: drop expired members, count, add. Scores are
// expiry times from the Redis clock, so instances need no clock agreement.
const ACQUIRE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
`

// Pushes the expiry of this instance's live members forward, and puts them
// back after a Redis restart lost them. A released member is never re-added:
// it leaves the held set before its ZREM is sent on the same connection.
const REFRESH = `
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 1
`

type SlotCommands = Redis & {
  gwAcquireSlot: (key: string, member: string, max: number, ttl: number) => Promise<number>
  gwRefreshSlots: (key: string, ttl: number, ...members: string[]) => Promise<number>
}

/**
 * The cluster: a sorted set per address of connection ids scored by expiry.
 * Live instances refresh their members every third of the TTL, so the slots
 * of an instance that died expire within the TTL.
 */
export class RedisIpSlots implements IpSlots {
  readonly #redis: SlotCommands
  readonly #ttlMs: number
  /** `<prefix>ip:{<address key>}`. */
  readonly #key: (key: string) => string
  readonly #held = new Map<string, Set<string>>()
  readonly #timer: NodeJS.Timeout
  readonly #onError: (err: unknown) => void

  constructor (redis: Redis, ttlMs: number, prefix: string, onError: (err: unknown) => void) {
    redis.defineCommand('gwAcquireSlot', { numberOfKeys: 1, lua: ACQUIRE })
    redis.defineCommand('gwRefreshSlots', { numberOfKeys: 1, lua: REFRESH })
    this.#redis = redis as SlotCommands
    this.#ttlMs = ttlMs
    this.#key = taggedKey(prefix, 'ip')
    this.#onError = onError
    this.#timer = setInterval(() => this.refresh(), Math.max(100, Math.floor(ttlMs / 3)))
    this.#timer.unref()
  }

  async acquire (key: string, member: string, max: number): Promise<boolean> {
    const ok = await this.#redis.gwAcquireSlot(this.#key(key), member, max, this.#ttlMs)
    if (ok !== 1) return false
    let members = this.#held.get(key)
    if (members === undefined) {
      members = new Set()
      this.#held.set(key, members)
    }
    members.add(member)
    return true
  }

  release (key: string, member: string): void {
    const members = this.#held.get(key)
    if (members !== undefined) {
      members.delete(member)
      if (members.size === 0) this.#held.delete(key)
    }
    // If Redis is down the member simply expires.
    this.#redis.zrem(this.#key(key), member).catch(this.#onError)
  }

  refresh (): void {
    if (this.#held.size === 0 || this.#redis.status !== 'ready') return
    const pipeline = this.#redis.pipeline() as unknown as SlotCommands
    for (const [key, members] of this.#held) pipeline.gwRefreshSlots(this.#key(key), this.#ttlMs, ...members)
    ;(pipeline as unknown as ReturnType<Redis['pipeline']>).exec().catch(this.#onError)
  }

  close (): void {
    clearInterval(this.#timer)
    this.#held.clear()
  }
}
