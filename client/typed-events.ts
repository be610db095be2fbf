import type { Alert, Positions, StreamName } from './protocol.js'

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed' | 'logged-out'

export interface StateChange {
  /**
   * connecting: an attempt is under way; open: welcomed by the server;
   * reconnecting: waiting `retryInMs` before the next attempt; closed:
   * stopped (close(), or a close code that must not loop); logged-out: 4403,
   * for good (reconnect() is refused: connect() anew once the user logged in).
   */
  state: ConnectionState
  /** The close code that led here, when a session ended. */
  code?: number
  /** reconnecting: milliseconds until the next attempt. */
  retryInMs?: number
}

export interface ClientError {
  /**
   * token: getToken() failed; socket: the WebSocket could not be created;
   * timeout: getToken() or reading the positions did not finish within
   * connectTimeoutMs, or no welcome or no pong in time (the link is dead),
   * and the attempt is retried; closed: the
   * server ended the session with a code that stops the client; server: an
   * `error` frame; protocol: a frame the client cannot read; storage: the
   * positions could not be read or written (the client carries on with
   * those it holds in memory).
   */
  kind: 'token' | 'socket' | 'timeout' | 'closed' | 'server' | 'protocol' | 'storage'
  message: string
  /** The close code (kind closed) or the server's error code (kind server). */
  code?: number | string
}

/** A reconnect resumed from the client's positions (the server's `resumed` frame). */
export interface ResumeResult {
  /** True when nothing was missed; false when alerts may be missing (see `gaps`). */
  recovered: boolean
  /** Alerts the server replayed (marked `replay: true`), duplicates included. */
  replayed: number
  /**
   * Streams that may have lost alerts: empty when recovered. The server does
   * not say which stream it could not resume, so these are the streams the
   * client asked for whose position moved; one that did not move missed
   * nothing.
   */
  gaps: StreamName[]
  /** Where the client now stands. */
  pos: Positions
}

/** Alerts of `streams` may be missing up to `pos`, on a session that stayed open. */
export interface GapNotice {
  streams: StreamName[]
  pos: Positions
}

export interface ClientEvents {
  alert: Alert
  state: StateChange
  error: ClientError
  resumed: ResumeResult
  gap: GapNotice
}

export type Listener<T> = (value: T) => void

/**
 * A minimal typed event emitter (no EventTarget: the same code runs in
 * browsers and Node). A listener that throws does not stop the others: its
 * exception is rethrown on a microtask, where the host reports it.
 */
export class TypedEvents<E> {
  readonly #listeners = new Map<keyof E, Set<Listener<never>>>()

  /** Adds a listener; returns the function that removes it. */
  on<K extends keyof E> (event: K, listener: Listener<E[K]>): () => void {
    let set = this.#listeners.get(event)
    if (set === undefined) {
      set = new Set()
      this.#listeners.set(event, set)
    }
    set.add(listener)
    return () => { set.delete(listener) }
  }

  protected emit<K extends keyof E> (event: K, value: E[K]): void {
    for (const listener of [...this.#listeners.get(event) ?? []]) {
      try {
        (listener as Listener<E[K]>)(value)
      } catch (err) {
        queueMicrotask(() => { throw err })
      }
    }
  }
}
