/**
 * The ids of the last `capacity` alerts seen, to drop duplicates in bounded
 * memory: a ring of ids plus a set for lookups. The oldest id leaves first.
 */
export class RecentIds {
  readonly #ring: Array<string | undefined>
  readonly #set = new Set<string>()
  #next = 0

  constructor (capacity: number) {
    if (!Number.isSafeInteger(capacity) || capacity < 1) throw new RangeError(`RecentIds: capacity must be a whole number of at least 1, not ${capacity}`)
    this.#ring = new Array<string | undefined>(capacity)
  }

  get size (): number {
    return this.#set.size
  }

  has (id: string): boolean {
    return this.#set.has(id)
  }

  /** Records `id`; false when it was already among the recent ids. */
  add (id: string): boolean {
    if (this.#set.has(id)) return false
    const evicted = this.#ring[this.#next]
    if (evicted !== undefined) this.#set.delete(evicted)
    this.#ring[this.#next] = id
    this.#next = (this.#next + 1) % this.#ring.length
    this.#set.add(id)
    return true
  }
}
