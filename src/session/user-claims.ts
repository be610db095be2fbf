import type { Position } from '../../protocol/position.js'
import type { ClaimStore } from '../cluster/claim-store.js'
import type { StreamRead } from '../cluster/history-store.js'
import type { ControlEvent, Delivery } from '../delivery/delivery.js'
import type { SessionRegistry } from './session-registry.js'

/** What a connection holds once it claimed its user. */
export interface Claim<T> {
  /** Cluster-wide, strictly increasing per user. */
  generation: number
  /** The user's revocation second read after subscribing, or null. */
  revokedBefore: number | null
  /** The user's history stream read in the claim's step; null when history is off. */
  user: StreamRead | null
  /** What the claim's `read` gave. */
  read: T
}

/**
 * Newest connection wins, cluster-wide. A connection claims its user before
 * the upgrade: watch the user's events first (Delivery), then take the next
 * generation (the claim store: Redis INCR). Any instance that sees a claim of generation g
 * closes its sessions of that user older than the newest
 * MAX_CONNECTIONS_PER_USER. Subscribing before taking the generation means
 * every later claim is seen; remembering the newest generation seen covers a
 * claim that arrives before our own INCR answer does.
 *
 * Logout races the same way: the revocation is read again after the
 * subscription is in place (a logout published before it was stored before
 * it, so the read sees it), and a logout event that arrives before the
 * session is registered is remembered until the session asks
 * (`loggedOutSince`). Either way a connection racing a logout is closed.
 */
export interface UserClaimsOptions {
  delivery: Delivery
  store: ClaimStore
  registry: SessionRegistry
  maxPerUser: number
}

export class UserClaims {
  readonly #delivery: Delivery
  readonly #store: ClaimStore
  readonly #registry: SessionRegistry
  readonly #maxPerUser: number
  readonly #newest = new Map<string, number>()
  readonly #logouts = new Map<string, number>()

  constructor (opts: UserClaimsOptions) {
    // The claim reads the user's stream for Delivery's plan: both see history, or neither.
    if (opts.store.readsHistory !== opts.delivery.historyOn) {
      throw new Error(`the claim store ${opts.store.readsHistory ? 'reads' : 'does not read'} history, the delivery has ${opts.delivery.historyOn ? 'it' : 'none'}: give both the same history store`)
    }
    this.#delivery = opts.delivery
    this.#store = opts.store
    this.#registry = opts.registry
    this.#maxPerUser = opts.maxPerUser
    this.#delivery.setControlHandler((userId, event) => this.apply(userId, event))
  }

  /**
   * Watches the user, then takes a generation and reads the revocation and
   * the user's history stream from `from` (one step), and `read` (more that
   * must be read once every later event of the user reaches this instance)
   * at the same time; call release() unless it throws.
   */
  async claim<T> (userId: string, from: Position | null, read: () => Promise<T>): Promise<Claim<T>> {
    await this.#delivery.watch(userId)
    // Both settle before a failure is answered: a claim made is released,
    // one that failed is not (it holds nothing to give back).
    const [claimed, value] = await Promise.allSettled([this.#store.claim(userId, from), read()])
    if (claimed.status === 'fulfilled' && value.status === 'fulfilled') {
      const { generation, revokedBefore, user } = claimed.value
      return { generation, revokedBefore, user, read: value.value }
    }
    this.release(userId, claimed.status === 'fulfilled')
    throw claimed.status === 'rejected' ? claimed.reason : (value as PromiseRejectedResult).reason
  }

  /** After the session of `generation` is registered: close the older ones, everywhere. */
  announce (userId: string, generation: number): Promise<void> {
    return this.#delivery.control(userId, { type: 'claim', generation })
  }

  /** The user logged out at `before`: close the sessions it revokes, everywhere. */
  logout (userId: string, before: number): Promise<void> {
    return this.#delivery.control(userId, { type: 'logout', before })
  }

  /** True when a newer claim already displaced `generation`. */
  superseded (userId: string, generation: number): boolean {
    return (this.#newest.get(userId) ?? 0) - generation >= this.#maxPerUser
  }

  /**
   * True when a logout seen since the claim revokes a token issued at
   * `iatSec` (null: no `iat`, revoked by any logout).
   */
  loggedOutSince (userId: string, iatSec: number | null): boolean {
    const before = this.#logouts.get(userId)
    return before !== undefined && (iatSec === null || iatSec <= before)
  }

  /** Gives back a claim of the user (`held`: false when the store's claim itself failed). */
  release (userId: string, held = true): void {
    if (held) this.#store.released(userId)
    this.#delivery.unwatch(userId)
    if (this.#delivery.watching(userId)) return
    this.#newest.delete(userId)
    this.#logouts.delete(userId)
    this.#store.forget(userId)
  }

  /**
   * A claim or logout, from here or another instance. What concerns a user
   * watched here is remembered, for connections still completing.
   */
  apply (userId: string, event: ControlEvent): void {
    const watched = this.#delivery.watching(userId)
    if (event.type === 'claim') {
      if (watched && event.generation > (this.#newest.get(userId) ?? 0)) this.#newest.set(userId, event.generation)
      this.#registry.applyClaim(userId, event.generation)
    } else {
      if (watched && event.before > (this.#logouts.get(userId) ?? -1)) this.#logouts.set(userId, event.before)
      this.#registry.applyLogout(userId, event.before)
    }
  }
}
