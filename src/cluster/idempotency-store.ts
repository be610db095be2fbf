import type { Redis } from 'ioredis'
import type { AppendRecord, StreamOwner } from './history-store.js'
import { taggedKey } from './user-key.js'

/**
 * What is known of an idempotency key: nothing yet (the caller now owns it
 * and publishes), a publish in progress elsewhere, or its answer.
 */
export type KeyState =
  | { state: 'new' }
  | { state: 'pending', fingerprint: string }
  | { state: 'done', fingerprint: string, answer: string }

/**
 * Idempotency keys of POST /alerts, scoped by the publishing service. A key
 * is taken (`begin`) before publishing, then completed with the answer, or
 * abandoned when the publish failed so that a retry may publish.
 */
export interface IdempotencyStore {
  /**
   * `owner`: the stream a single-stream publish appends to, where a publish
   * whose reply was lost may have stored its answer (see record()).
   */
  begin (scope: string, key: string, fingerprint: string, owner?: StreamOwner): Promise<KeyState>
  complete (scope: string, key: string, fingerprint: string, answer: string): Promise<void>
  /** Frees a key still pending with `fingerprint` (never an answer stored meanwhile). */
  abandon (scope: string, key: string, fingerprint: string): Promise<void>
  /**
   * The answer `answerHead + pos + '"}'` as the history's append to `owner`'s
   * stream stores it in its own step, or undefined where it need not
   * (memory: nothing survives a crash anyway).
   */
  record (scope: string, key: string, fingerprint: string, answerHead: string, owner: StreamOwner): AppendRecord | undefined
}

/**
 * How long a taken key waits for its answer. A publish that takes longer
 * than this (its instance died mid-publish) lets a retry publish again.
 */
export const PENDING_TTL_MS = 30_000

const PENDING = 'P'
const DONE = 'D'

function decode (value: string): KeyState {
  const newline = value.indexOf('\n')
  if (value[0] === DONE && newline !== -1) return { state: 'done', fingerprint: value.slice(1, newline), answer: value.slice(newline + 1) }
  return { state: 'pending', fingerprint: value.slice(1) }
}

interface Entry {
  value: string
  expiresAt: number
}

/** One instance: a map, swept of expired keys as it grows. */
export class MemoryIdempotencyStore implements IdempotencyStore {
  readonly #keys = new Map<string, Entry>()
  readonly #windowMs: number
  #sweepAt = 1024

  constructor (windowMs: number) {
    this.#windowMs = windowMs
  }

  async begin (scope: string, key: string, fingerprint: string): Promise<KeyState> {
    const now = Date.now()
    const id = `${scope}\n${key}`
    const entry = this.#keys.get(id)
    if (entry !== undefined && entry.expiresAt > now) return decode(entry.value)
    this.#set(id, PENDING + fingerprint, now + PENDING_TTL_MS)
    return { state: 'new' }
  }

  async complete (scope: string, key: string, fingerprint: string, answer: string): Promise<void> {
    this.#set(`${scope}\n${key}`, `${DONE}${fingerprint}\n${answer}`, Date.now() + this.#windowMs)
  }

  async abandon (scope: string, key: string, fingerprint: string): Promise<void> {
    const id = `${scope}\n${key}`
    if (this.#keys.get(id)?.value === PENDING + fingerprint) this.#keys.delete(id)
  }

  record (): AppendRecord | undefined {
    return undefined
  }

  #set (id: string, value: string, expiresAt: number): void {
    this.#keys.set(id, { value, expiresAt })
    if (this.#keys.size < this.#sweepAt) return
    const now = Date.now()
    for (const [k, entry] of this.#keys) if (entry.expiresAt <= now) this.#keys.delete(k)
    this.#sweepAt = Math.max(1024, this.#keys.size * 2)
  }
}

/** Deletes the key only while it still holds this request's pending mark. */
const ABANDON = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`

interface AbandonCommand {
  gwIdempotencyAbandon: (key: string, pending: string) => Promise<number>
}

/**
 * `<prefix>idem:{<scope>}:<key>`: SET NX while publishing, then the answer
 * for the window. The append stores its answer in the stream's own slot,
 * `<prefix>idem-ans:{<userId>|all}:<scope>:<key>` (a script touches one slot
 * only, on a Cluster too); taking a key looks there as well, so a publish
 * whose reply was lost is answered, not repeated.
 */
export class RedisIdempotencyStore implements IdempotencyStore {
  readonly #redis: Redis
  readonly #scopeKey: (scope: string) => string
  readonly #answerKey: (owner: string) => string
  readonly #windowMs: number

  constructor (redis: Redis, prefix: string, windowMs: number) {
    if ((redis as Partial<AbandonCommand>).gwIdempotencyAbandon === undefined) {
      redis.defineCommand('gwIdempotencyAbandon', { numberOfKeys: 1, lua: ABANDON })
    }
    this.#redis = redis
    this.#scopeKey = taggedKey(prefix, 'idem')
    this.#answerKey = taggedKey(prefix, 'idem-ans')
    this.#windowMs = windowMs
  }

  #key (scope: string, key: string): string {
    return `${this.#scopeKey(scope)}:${key}`
  }

  #recordKey (scope: string, key: string, owner: StreamOwner): string {
    return `${this.#answerKey(owner ?? 'all')}:${scope}:${key}`
  }

  async begin (scope: string, key: string, fingerprint: string, owner?: StreamOwner): Promise<KeyState> {
    const id = this.#key(scope, key)
    for (;;) {
      // Both at once: the answer an append stored lives in another slot.
      const [taken, recorded] = await Promise.all([
        this.#redis.set(id, PENDING + fingerprint, 'PX', PENDING_TTL_MS, 'NX'),
        owner === undefined ? null : this.#redis.get(this.#recordKey(scope, key, owner))
      ])
      if (recorded !== null) {
        // A publish whose reply was lost (or that is answering right now):
        // its answer stands, under the key too.
        await this.#redis.set(id, recorded, 'PX', this.#windowMs)
        return decode(recorded)
      }
      if (taken === 'OK') return { state: 'new' }
      const value = await this.#redis.get(id)
      // Expired between the two commands: try to take it again.
      if (value !== null) return decode(value)
    }
  }

  async complete (scope: string, key: string, fingerprint: string, answer: string): Promise<void> {
    await this.#redis.set(this.#key(scope, key), `${DONE}${fingerprint}\n${answer}`, 'PX', this.#windowMs)
  }

  async abandon (scope: string, key: string, fingerprint: string): Promise<void> {
    await (this.#redis as Redis & AbandonCommand).gwIdempotencyAbandon(this.#key(scope, key), PENDING + fingerprint)
  }

  record (scope: string, key: string, fingerprint: string, answerHead: string, owner: StreamOwner): AppendRecord {
    return { key: this.#recordKey(scope, key, owner), value: `${DONE}${fingerprint}\n${answerHead}`, ttlMs: this.#windowMs }
  }
}
