import type { Writable } from 'node:stream'
import type { WebSocket } from 'ws'
import { CloseReason, type CloseCodeValue } from '../../protocol/close-codes.js'

const OPEN = 1

export interface SessionInit {
  id: string
  userId: string
  socket: WebSocket
  generation: number
  tokenExpMs: number
  /** `iat` of the current token in epoch seconds, or null when absent. */
  tokenIatSec: number | null
  authAtMs: number
  /** The TCP (or TLS) socket under `socket`, corked around a batch of frames. */
  transport?: Pick<Writable, 'cork' | 'uncork'>
}

/**
 * One authenticated WebSocket connection. Holds only what the hot paths need
 * (no reference to the upgrade request), so an idle session stays small.
 */
export class Session {
  readonly id: string
  readonly userId: string
  readonly socket: WebSocket
  readonly transport: Pick<Writable, 'cork' | 'uncork'> | null
  readonly openedAt: number
  generation: number
  tokenExpMs: number
  tokenIatSec: number | null
  authAtMs: number
  /** When the pending re-auth request expires; 0 when none is pending. */
  reauthDeadlineMs = 0
  /** Answered the last heartbeat ping. */
  alive = true
  closing = false
  /** Position in the registry's dense array (heartbeat order). */
  index = -1
  /** Deadline wheel bucket this session is filed under; -1 when none. */
  bucket = -1
  // Message rate: a token bucket refilled at the configured rate
  // (performance.now(): a step of the wall clock must not drain it).
  tokens: number
  tokensAt: number
  /** `auth` messages being checked (their token, then its revocation). */
  authChecks = 0
  /**
   * Unsent bytes allowed beyond SEND_BUFFER_MAX_BYTES: what the session's
   * first frames (welcome, replay, resumed) left buffered, written at once
   * by the server, not a sign of a slow client. Gone once the buffer has
   * drained below the cap.
   */
  sendAllowance = 0
  /**
   * Positions (sequence numbers in the stream's current epoch) up to which
   * the session already has the alerts of each stream, from its resume:
   * live alerts at or below them are not written again.
   */
  floorAll = 0
  floorUser = 0
  /** The epochs the floors count in. */
  floorAllEpoch: string | null = null
  floorUserEpoch: string | null = null
  /** Times of recent malformed messages, allocated on the first one. */
  malformed: number[] | null = null

  constructor (init: SessionInit, burst: number) {
    this.id = init.id
    this.userId = init.userId
    this.socket = init.socket
    this.transport = init.transport ?? null
    this.generation = init.generation
    this.tokenExpMs = init.tokenExpMs
    this.tokenIatSec = init.tokenIatSec
    this.authAtMs = init.authAtMs
    this.openedAt = Date.now()
    this.tokens = burst
    this.tokensAt = performance.now()
  }

  get open (): boolean {
    return !this.closing && this.socket.readyState === OPEN
  }

  /** Closes with a contract code. Idempotent: the first reason wins. */
  close (code: CloseCodeValue): void {
    if (this.closing) return
    this.closing = true
    // Sessions exist only for open sockets, so close() cannot throw here.
    this.socket.close(code, CloseReason[code])
  }

  ping (): void {
    if (this.socket.readyState === OPEN) this.socket.ping()
  }

  terminate (): void {
    this.closing = true
    this.socket.terminate()
  }
}
