import type { Bus, BusHandlers, UserEvent } from './bus.js'

/**
 * The in-process bus of a single instance: there is no other instance to
 * reach, so publishing is a no-op; generations and revocations live in maps.
 */
export class MemoryBus implements Bus {
  readonly kind = 'memory'
  readonly connected = true
  readonly #watched = new Map<string, number>()
  readonly #generations = new Map<string, number>()
  readonly #revocations = new Map<string, { before: number, expiresAt: number }>()

  async ping (): Promise<boolean> {
    return true
  }

  setHandlers (_handlers: BusHandlers): void {}

  async publishBroadcast (_frame: Buffer): Promise<void> {}

  async publishUser (_userId: string, _event: UserEvent): Promise<void> {}

  async watchUser (userId: string): Promise<void> {
    this.#watched.set(userId, (this.#watched.get(userId) ?? 0) + 1)
  }

  unwatchUser (userId: string): void {
    const refs = (this.#watched.get(userId) ?? 0) - 1
    if (refs > 0) {
      this.#watched.set(userId, refs)
      return
    }
    // Generations only order the live sessions of one instance: forget them
    // with the user's last session so the map cannot grow without bound.
    this.#watched.delete(userId)
    this.#generations.delete(userId)
  }

  async nextGeneration (userId: string): Promise<number> {
    const next = (this.#generations.get(userId) ?? 0) + 1
    this.#generations.set(userId, next)
    return next
  }

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

  async close (): Promise<void> {
    this.#watched.clear()
    this.#generations.clear()
  }

  #sweep (): void {
    const now = Date.now()
    for (const [userId, entry] of this.#revocations) {
      if (entry.expiresAt <= now) this.#revocations.delete(userId)
    }
  }
}
