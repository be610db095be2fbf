import type { Bus } from '../cluster/bus.js'
import type { SessionRegistry } from './session-registry.js'

/** What a connection holds once it claimed its user. */
export interface Claim {
  /** Cluster-wide, strictly increasing per user. */
  generation: number
  /** The user's revocation second read after subscribing, or null. */
  revokedBefore: number | null
}

/**
 * Newest connection wins, cluster-wide. A connection claims its user before
 * the upgrade: subscribe to the user's events first, then take the next
 * generation (Redis INCR). Any instance that sees a claim of generation g
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
export class UserClaims {
  readonly #bus: Bus
  readonly #registry: SessionRegistry
  readonly #maxPerUser: number
  readonly #newest = new Map<string, number>()
  readonly #logouts = new Map<string, number>()
  readonly #watchers = new Map<string, number>()

  constructor (bus: Bus, registry: SessionRegistry, maxPerUser: number) {
    this.#bus = bus
    this.#registry = registry
    this.#maxPerUser = maxPerUser
  }

  /**
   * Subscribes, then takes a generation and reads the revocation (one round
   * trip); call release() unless it throws.
   */
  async claim (userId: string): Promise<Claim> {
    this.#watchers.set(userId, (this.#watchers.get(userId) ?? 0) + 1)
    try {
      await this.#bus.watchUser(userId)
    } catch (err) {
      this.#unref(userId)
      throw err
    }
    try {
      const [generation, revokedBefore] = await Promise.all([
        this.#bus.nextGeneration(userId),
        this.#bus.revokedBefore(userId)
      ])
      return { generation, revokedBefore }
    } catch (err) {
      this.release(userId)
      throw err
    }
  }

  /** After the session of `generation` is registered: close the older ones. */
  announce (userId: string, generation: number): Promise<void> {
    this.#seen(userId, generation)
    this.#registry.applyClaim(userId, generation)
    return this.#bus.publishUser(userId, { type: 'claim', generation })
  }

  /** True when a newer claim already displaced `generation`. */
  superseded (userId: string, generation: number): boolean {
    return (this.#newest.get(userId) ?? 0) - generation >= this.#maxPerUser
  }

  /** A claim published by another instance. */
  onRemoteClaim (userId: string, generation: number): void {
    this.#seen(userId, generation)
    this.#registry.applyClaim(userId, generation)
  }

  /**
   * The user logged out at `before` (here or on another instance): close the
   * sessions it revokes, and remember it for connections still completing.
   */
  onLogout (userId: string, before: number): void {
    if (this.#watchers.has(userId) && before > (this.#logouts.get(userId) ?? -1)) this.#logouts.set(userId, before)
    this.#registry.applyLogout(userId, before)
  }

  /**
   * True when a logout seen since the claim revokes a token issued at
   * `iatSec` (null: no `iat`, revoked by any logout).
   */
  loggedOutSince (userId: string, iatSec: number | null): boolean {
    const before = this.#logouts.get(userId)
    return before !== undefined && (iatSec === null || iatSec <= before)
  }

  release (userId: string): void {
    this.#bus.unwatchUser(userId)
    this.#unref(userId)
  }

  #unref (userId: string): void {
    const refs = (this.#watchers.get(userId) ?? 0) - 1
    if (refs > 0) {
      this.#watchers.set(userId, refs)
    } else {
      this.#watchers.delete(userId)
      this.#newest.delete(userId)
      this.#logouts.delete(userId)
    }
  }

  #seen (userId: string, generation: number): void {
    if (!this.#watchers.has(userId)) return
    if (generation > (this.#newest.get(userId) ?? 0)) this.#newest.set(userId, generation)
  }
}
