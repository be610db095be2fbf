/**
 * Where the client keeps its stream positions between page loads: the
 * `getItem`/`setItem` subset of the Web Storage API, so `sessionStorage` and
 * `localStorage` fit as they are, and so does an async store such as React
 * Native's AsyncStorage (either method may return a promise).
 */
export interface PositionStorage {
  getItem (key: string): string | null | Promise<string | null>
  setItem (key: string, value: string): void | Promise<void>
}

/** Positions kept for the life of the process (or page) only. */
export class MemoryStorage implements PositionStorage {
  readonly #items = new Map<string, string>()

  getItem (key: string): string | null {
    return this.#items.get(key) ?? null
  }

  setItem (key: string, value: string): void {
    this.#items.set(key, value)
  }
}

/**
 * The browser's `sessionStorage` (per tab, survives a reload), or memory
 * where there is none (Node) or where reading it throws (a sandboxed frame,
 * storage disabled).
 */
export function defaultStorage (): PositionStorage {
  try {
    const session = (globalThis as { sessionStorage?: PositionStorage }).sessionStorage
    if (session !== undefined) return session
  } catch {}
  return new MemoryStorage()
}
