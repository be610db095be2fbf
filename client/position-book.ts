import { isWellFormedPosition, type Positions, type StreamName } from './protocol.js'
import type { PositionStorage } from './position-storage.js'

/** The positions a client resumes from: either stream may be unknown yet. */
export type Since = Partial<Positions>

export const STREAMS: readonly StreamName[] = ['all', 'user']

const isThenable = (value: unknown): value is PromiseLike<unknown> =>
  typeof (value as PromiseLike<unknown> | undefined)?.then === 'function'

/**
 * A stored value as positions. Anything else (another app's key, a hand
 * edit) is dropped: a malformed position would be refused with 400 at every
 * handshake, a reconnect loop.
 */
function parse (stored: string | null): Since | null {
  if (stored === null) return null
  let value: unknown
  try {
    value = JSON.parse(stored)
  } catch {
    return null
  }
  const since: Since = {}
  for (const stream of STREAMS) {
    const pos = (value as Record<string, unknown> | null)?.[stream]
    if (typeof pos === 'string' && isWellFormedPosition(pos)) since[stream] = pos
  }
  return since
}

/** What a connect attempt found in storage for `user` (see PositionBook.read). */
export interface StoredPositions {
  user: string | null
  /** Null: nothing usable stored, or storage could not be read. */
  since: Since | null
  /** Why storage could not be read; null when it could. */
  error: string | null
}

/**
 * Where one user stands in both streams, kept in memory and written to
 * storage (under `prefix + userId`) after every change. A connect resumes
 * from the stored copy (another tab sharing the storage may have moved it),
 * except while the memory copy has not reached storage (its last write
 * failed, or is still under way): then memory is newer and wins. The memory
 * copy also stands in when storage cannot be read. A stored copy that lags
 * behind anyway (a write storage dropped without saying so) only makes the
 * server replay alerts the client already has, which it drops by id: the
 * failure is a duplicate, never a loss.
 */
export class PositionBook {
  readonly #storage: PositionStorage
  readonly #prefix: string
  readonly #onError: (message: string) => void
  #user: string | null = null
  #pos: Since = {}
  /** An async write is under way; `#dirty`: write again when it ends. */
  #writing = false
  #dirty = false
  /** Memory holds positions storage may lack: the last write failed or has not ended. */
  #unsaved = false

  constructor (storage: PositionStorage, prefix: string, onError: (message: string) => void) {
    this.#storage = storage
    this.#prefix = prefix
    this.#onError = onError
  }

  /** A copy of the current positions. */
  get positions (): Since {
    return { ...this.#pos }
  }

  /**
   * Before a connect, step one: what storage holds for `user` (the token
   * says who; null: no user to look up). Changes nothing and reports
   * nothing, so an attempt given up on (a read that never ends) can drop a
   * late answer. Never rejects.
   */
  async read (user: string | null): Promise<StoredPositions> {
    if (user === null) return { user, since: null, error: null }
    try {
      return { user, since: parse(await this.#storage.getItem(this.#prefix + user)), error: null }
    } catch (err) {
      return { user, since: null, error: messageOf(err) }
    }
  }

  /**
   * Step two: the positions to resume from, given what read() found. A null
   * user (the token says no user) resumes from memory: the client serves
   * one user.
   */
  load ({ user, since, error }: StoredPositions): Since {
    if (error !== null) this.#onError(`could not read the positions: ${error}`)
    if (user !== null) {
      const same = user === this.#user
      const memory = same ? this.#pos : {}
      this.#user = user
      this.#pos = same && this.#unsaved ? memory : since ?? memory
    }
    return this.positions
  }

  /** The welcome names the user; its heads are where a client that knows nothing starts. */
  welcome (userId: string, heads: Positions | undefined): void {
    if (userId !== this.#user) {
      this.#user = userId
      this.#pos = {}
    }
    for (const stream of STREAMS) {
      if (this.#pos[stream] === undefined && heads !== undefined) this.#set(stream, heads[stream])
    }
    this.#persist()
  }

  /** An alert of `stream` at `pos`. */
  advance (stream: StreamName | undefined, pos: string | undefined): void {
    if (stream === undefined || pos === undefined) return
    this.#set(stream, pos)
    this.#persist()
  }

  /** `resumed` or `gap`: where the server says the client now stands. */
  moveTo (pos: Positions): void {
    for (const stream of STREAMS) this.#set(stream, pos[stream])
    this.#persist()
  }

  #set (stream: StreamName, pos: string): void {
    if (STREAMS.includes(stream) && isWellFormedPosition(pos)) this.#pos[stream] = pos
  }

  #persist (): void {
    // Nothing to key it by before the first welcome.
    if (this.#user === null) return
    this.#unsaved = true
    if (this.#writing) {
      this.#dirty = true
      return
    }
    let result: unknown
    try {
      result = this.#storage.setItem(this.#prefix + this.#user, JSON.stringify(this.#pos))
    } catch (err) {
      this.#onError(`could not store the positions: ${messageOf(err)}`)
      return
    }
    if (!isThenable(result)) {
      this.#unsaved = false
      return
    }
    // One write at a time, the newest last: async writes may land out of order.
    this.#writing = true
    result.then(() => {
      // Changes made meanwhile are still to be written.
      this.#unsaved = this.#dirty
    }, (err: unknown) => {
      this.#onError(`could not store the positions: ${messageOf(err)}`)
    }).then(() => {
      this.#writing = false
      if (this.#dirty) {
        this.#dirty = false
        this.#persist()
      }
    })
  }
}

const messageOf = (err: unknown): string => err instanceof Error ? err.message : String(err)
