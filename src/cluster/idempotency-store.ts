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
   * whose reply was lost may have stored its answer (see record()): a key
   * found pending looks there.
   */
  begin (scope: string, key: string, fingerprint: string, owner?: StreamOwner): Promise<KeyState>
  complete (scope: string, key: string, fingerprint: string, answer: string): Promise<void>
  /**
   * Frees a key still pending with `fingerprint` (never an answer stored
   * meanwhile), unless the append to `owner`'s stream stored its answer:
   * then that answer is the key's.
   */
  abandon (scope: string, key: string, fingerprint: string, owner?: StreamOwner): Promise<void>
  /**
   * The answer `answerHead + pos + '"}'` as the history's append stores it
   * with the entry, or undefined where it need not (memory: nothing
   * survives a crash anyway).
   */
  record (scope: string, key: string, fingerprint: string, answerHead: string): AppendRecord | undefined
}

/**
 * Finds the answer an append stored with an entry of `owner`'s stream
 * appended at `sinceMs` or later (see AppendRecord).
 */
export type RecordLookup = (owner: StreamOwner, id: string, sinceMs: number) => Promise<string | undefined>

/**
 * How long a taken key waits for its answer. A publish that takes longer
 * than this (its instance died mid-publish) lets a retry publish again.
 */
export const PENDING_TTL_MS = 30_000

/** Clock skew allowed between instances when looking for a stored answer. */
const CLOCK_SKEW_MS = 5_000

/**
 * A key pending this long whose append is not in its stream belongs to a
 * request that failed without freeing it (its instance died, or Redis did
 * not answer the abandon, as in a failover): a retry takes it over. Well
 * past a publish's Redis calls (2 s command timeout each).
 */
export const ABANDONED_AFTER_MS = 5_000

const PENDING = 'P'
const DONE = 'D'

function decode (value: string): Exclude<KeyState, { state: 'new' }> {
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

/**
 * Only while the key still holds ARGV[1]: deletes it (ARGV[2] empty) or
 * sets it to ARGV[2] for ARGV[3] ms. Returns 1 when it did.
 */
const SWAP = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
`

interface SwapCommand {
  gwIdempotencySwap: (key: string, expected: string, value: string, ttlMs: number) => Promise<number>
}

/**
 * `<prefix>idem:{<scope>}:<key>`, the tag ending at the scope's end: a scope
 * (a service's `sub`) with a `}` in it is written escaped under
 * `<prefix>idem~:`, else service `a` with key `x}:k` and service `a}:x`
 * with key `k` would share a key. SET NX while publishing, then the answer
 * for the window. The append stores its answer with the stream's entry (in
 * the stream's slot, on a Cluster too): a key left pending by a publish
 * whose reply was lost looks there, so the publish is answered, not
 * repeated.
 */
export class RedisIdempotencyStore implements IdempotencyStore {
  readonly #redis: Redis
  readonly #scopeKey: (scope: string) => string
  readonly #windowMs: number
  readonly #lookup: RecordLookup | undefined

  /** `lookup`: where appends store answers (none without history). */
  constructor (redis: Redis, prefix: string, windowMs: number, lookup?: RecordLookup) {
    if ((redis as Partial<SwapCommand>).gwIdempotencySwap === undefined) {
      redis.defineCommand('gwIdempotencySwap', { numberOfKeys: 1, lua: SWAP })
    }
    this.#redis = redis
    const plain = taggedKey(prefix, 'idem')
    const escaped = taggedKey(prefix, 'idem~')
    this.#scopeKey = (scope) => scope.includes('}') ? escaped(encodeURIComponent(scope)) : plain(scope)
    this.#windowMs = windowMs
    this.#lookup = lookup
  }

  #key (scope: string, key: string): string {
    return `${this.#scopeKey(scope)}:${key}`
  }

  async begin (scope: string, key: string, fingerprint: string, owner?: StreamOwner): Promise<KeyState> {
    const id = this.#key(scope, key)
    for (;;) {
      if (await this.#redis.set(id, PENDING + fingerprint, 'PX', PENDING_TTL_MS, 'NX') === 'OK') return { state: 'new' }
      const value = await this.#redis.get(id)
      // Expired between the commands: try to take it again.
      if (value === null) continue
      const known = decode(value)
      if (known.state === 'done' || owner === undefined || this.#lookup === undefined) return known
      const [stored, ttl] = await Promise.all([this.#stored(scope, key, owner), this.#redis.pttl(id)])
      if (stored !== undefined) return stored
      // Not appended: in progress, or abandoned by a request that failed.
      if (known.fingerprint !== fingerprint || PENDING_TTL_MS - ttl < ABANDONED_AFTER_MS) return known
      if (await this.#swap(id, value, PENDING + fingerprint, PENDING_TTL_MS)) return { state: 'new' }
    }
  }

  async complete (scope: string, key: string, fingerprint: string, answer: string): Promise<void> {
    await this.#redis.set(this.#key(scope, key), `${DONE}${fingerprint}\n${answer}`, 'PX', this.#windowMs)
  }

  async abandon (scope: string, key: string, fingerprint: string, owner?: StreamOwner): Promise<void> {
    // Where the append ran but its reply was lost, its answer stands.
    if (await this.#stored(scope, key, owner) !== undefined) return
    await this.#swap(this.#key(scope, key), PENDING + fingerprint, '', 0)
  }

  record (scope: string, key: string, fingerprint: string, answerHead: string): AppendRecord {
    return { id: `${scope}\n${key}`, value: `${DONE}${fingerprint}\n${answerHead}` }
  }

  /** See SWAP. */
  async #swap (id: string, expected: string, value: string, ttlMs: number): Promise<boolean> {
    return await (this.#redis as Redis & SwapCommand).gwIdempotencySwap(id, expected, value, ttlMs) === 1
  }

  /**
   * The answer an append of the last PENDING_TTL_MS stored for the key,
   * which then becomes the key's answer for the window. (A repeat that
   * finds it before the first request completed gets `delivered` 0.)
   */
  async #stored (scope: string, key: string, owner: StreamOwner | undefined): Promise<KeyState | undefined> {
    if (owner === undefined || this.#lookup === undefined) return undefined
    const answer = await this.#lookup(owner, `${scope}\n${key}`, Date.now() - PENDING_TTL_MS - CLOCK_SKEW_MS)
    if (answer === undefined) return undefined
    await this.#redis.set(this.#key(scope, key), answer, 'PX', this.#windowMs)
    return decode(answer)
  }
}
