import type { GatewayConfig } from '../../config/index.js'
import type { Reauth } from '../../protocol/frames.js'
import type { GatewayMetrics } from '../lib/metrics.js'
import { CloseCode, type CloseCodeValue } from '../../protocol/close-codes.js'
import { DeadlineWheel } from './deadline-wheel.js'
import { Heartbeat } from './heartbeat.js'
import type { Session } from './session.js'
import type { Log } from '../lib/log.js'

const WHEEL_RESOLUTION_MS = 100
/** The position of an alert without history: above every floor. */
const NO_SEQ = Number.POSITIVE_INFINITY

export interface SessionRegistryOptions {
  ws: GatewayConfig['ws']
  metrics: GatewayMetrics
  log: Log
}

/**
 * The sessions of this instance: a dense array (heartbeat order, broadcast)
 * plus an index by user. Owns the two timers that serve every session: the
 * heartbeat and the deadline wheel for re-auth and token expiry.
 */
export class SessionRegistry {
  readonly #list: Session[] = []
  readonly #byUser = new Map<string, Session[]>()
  readonly #ws: GatewayConfig['ws']
  readonly #metrics: GatewayMetrics
  readonly #log: Log
  readonly #heartbeat: Heartbeat<Session>
  readonly #wheel: DeadlineWheel<Session>
  readonly #reauthFrame: Buffer
  /** The session whose first frames are being written (sendFirst), uncapped. */
  #writingFirst: Session | null = null
  /** Broadcast frames accepted but not yet written (see broadcast()), and their positions. */
  readonly #pending: Buffer[] = []
  readonly #pendingSeqs: number[] = []

  constructor (opts: SessionRegistryOptions) {
    this.#ws = opts.ws
    this.#metrics = opts.metrics
    this.#log = opts.log
    this.#heartbeat = new Heartbeat(opts.ws.heartbeatIntervalMs, () => this.#list)
    this.#wheel = new DeadlineWheel(WHEEL_RESOLUTION_MS, (session, now) => this.#onDeadline(session, now))
    const reauth: Reauth = { type: 'reauth', deadlineMs: opts.ws.reauthGraceMs }
    this.#reauthFrame = Buffer.from(JSON.stringify(reauth))
  }

  start (): void {
    this.#heartbeat.start()
    this.#wheel.start()
  }

  stop (): void {
    this.#heartbeat.stop()
    this.#wheel.stop()
  }

  get size (): number {
    return this.#list.length
  }

  sessionsOf (userId: string): readonly Session[] {
    return this.#byUser.get(userId) ?? []
  }

  /** Sessions (of the user, or all) that a frame would be written to now. */
  writableOf (userId: string | null): number {
    const sessions = userId === null ? this.#list : this.sessionsOf(userId)
    const cap = this.#ws.sendBufferMaxBytes
    let count = 0
    for (let i = 0; i < sessions.length; i++) {
      if (sessions[i].open && sessions[i].socket.bufferedAmount <= cap) count++
    }
    return count
  }

  list (): readonly Session[] {
    return this.#list
  }

  add (session: Session): void {
    this.#flush()
    session.index = this.#list.length
    this.#list.push(session)
    const mine = this.#byUser.get(session.userId)
    if (mine === undefined) this.#byUser.set(session.userId, [session])
    else mine.push(session)
    this.reschedule(session)
    this.#metrics.connectionsActive.inc()
  }

  /** Removes a closed session; returns false when it was not registered. */
  remove (session: Session): boolean {
    const index = session.index
    if (index === -1 || this.#list[index] !== session) return false
    const last = this.#list.pop() as Session
    if (last !== session) {
      this.#list[index] = last
      last.index = index
    }
    session.index = -1
    const mine = this.#byUser.get(session.userId)
    if (mine !== undefined) {
      const at = mine.indexOf(session)
      if (at !== -1) mine.splice(at, 1)
      if (mine.length === 0) this.#byUser.delete(session.userId)
    }
    this.#wheel.cancel(session)
    this.#metrics.connectionsActive.dec()
    this.#metrics.connectionDuration.observe((Date.now() - session.openedAt) / 1000)
    return true
  }

  /** Files the session's next re-auth or expiry deadline. */
  reschedule (session: Session): void {
    // Removed while its `auth` was checked: nothing left to file.
    if (session.index === -1) return
    const reauthAt = session.reauthDeadlineMs > 0
      ? session.reauthDeadlineMs
      : session.authAtMs + this.#ws.reauthIntervalMs
    this.#wheel.schedule(session, Math.min(session.tokenExpMs, reauthAt))
  }

  /**
   * Whether a frame may be written to the session now. A socket whose send
   * buffer is over the cap is a slow consumer: it is closed with 1013 rather
   * than allowed to grow memory.
   */
  #writable (session: Session): boolean {
    if (!session.open) return false
    if (session === this.#writingFirst) return true
    const buffered = session.socket.bufferedAmount
    if (buffered > this.#ws.sendBufferMaxBytes + session.sendAllowance) {
      this.#log.warn({ connectionId: session.id, userId: session.userId, buffered }, 'slow consumer closed')
      session.close(CloseCode.OVERLOADED)
      return false
    }
    if (session.sendAllowance !== 0 && buffered <= this.#ws.sendBufferMaxBytes) session.sendAllowance = 0
    return true
  }

  /**
   * Writes a session's first frames (`write`: welcome, replay, resumed,
   * what went by meanwhile) whatever they leave buffered: a replay of a
   * full history is the server's burst, not a slow client. The cap then
   * applies on top of what they left, until the buffer drains below it.
   */
  sendFirst (session: Session, write: () => void): void {
    this.#writingFirst = session
    try {
      write()
    } finally {
      this.#writingFirst = null
    }
    session.sendAllowance = session.socket.bufferedAmount
  }

  /** Writes an encoded frame to one session (counted in ws_messages_sent_total). */
  send (session: Session, frame: Buffer): boolean {
    if (!this.#writable(session)) return false
    session.socket.send(frame, { binary: false })
    this.#metrics.messagesSent.inc()
    return true
  }

  /**
   * Sends to every local session; returns how many will be written. The
   * frames are written at the end of this turn of the event loop, together
   * with every broadcast that arrives meanwhile: each socket then gets one
   * write for the batch (its transport corked around the frames) instead of
   * one per alert, and the write is most of a delivery's cost. Publishing
   * stays cheap while a batch goes out, so batches grow under load.
   */
  broadcast (frame: Buffer, seq = NO_SEQ): number {
    let delivered = 0
    // A slow consumer's close does not remove it synchronously, so plain
    // iteration over the live array is safe.
    for (let i = 0; i < this.#list.length; i++) {
      if (this.#writable(this.#list[i])) delivered++
    }
    if (delivered === 0) return 0
    this.#pending.push(frame)
    this.#pendingSeqs.push(seq)
    if (this.#pending.length === 1) setImmediate(this.#flush)
    this.#metrics.messagesSent.inc(delivered)
    return delivered
  }

  /**
   * Writes the pending broadcasts. Also called before anything that must
   * come after them: a per-user alert, a new session (which must not get
   * alerts published before it was registered), closing everything.
   */
  readonly #flush = (): void => {
    if (this.#pending.length === 0) return
    const frames = this.#pending.splice(0)
    const seqs = this.#pendingSeqs.splice(0)
    const last = seqs[seqs.length - 1]
    for (let i = 0; i < this.#list.length; i++) {
      const session = this.#list[i]
      // Closed since (a close frame is never followed by data).
      if (!session.open) continue
      session.transport?.cork()
      if (session.floorAll < seqs[0]) {
        for (let f = 0; f < frames.length; f++) session.socket.send(frames[f], { binary: false })
      /* c8 ignore start -- a session registered between two broadcasts of one batch with its floor inside it */
      } else if (session.floorAll < last) {
        // Resumed past some of them: write only the newer ones.
        for (let f = 0; f < frames.length; f++) {
          if (seqs[f] > session.floorAll) session.socket.send(frames[f], { binary: false })
        }
      }
      /* c8 ignore stop */
      session.transport?.uncork()
    }
  }

  sendToUser (userId: string, frame: Buffer, seq = NO_SEQ): number {
    const mine = this.#byUser.get(userId)
    if (mine === undefined) return 0
    this.#flush()
    let delivered = 0
    for (const session of mine) {
      if (session.floorUser < seq && this.send(session, frame)) delivered++
    }
    return delivered
  }

  /**
   * A session of `generation` was accepted somewhere in the cluster: close the
   * local sessions of the user that fall outside the newest
   * MAX_CONNECTIONS_PER_USER generations.
   */
  applyClaim (userId: string, generation: number): void {
    const mine = this.#byUser.get(userId)
    if (mine === undefined) return
    const oldestKept = generation - this.#ws.maxConnectionsPerUser + 1
    for (const session of [...mine]) {
      if (session.generation < oldestKept) session.close(CloseCode.REPLACED)
    }
  }

  /** The user logged out at `before`: close sessions whose token predates it. */
  applyLogout (userId: string, before: number): void {
    const mine = this.#byUser.get(userId)
    if (mine === undefined) return
    for (const session of [...mine]) {
      if (session.tokenIatSec === null || session.tokenIatSec <= before) session.close(CloseCode.LOGGED_OUT)
    }
  }

  /** The sessions registered now, in registration order (a copy). */
  snapshot (): Session[] {
    return [...this.#list]
  }

  /** Closes `batch` with `code`, after the frames still pending for them (as closeAll). */
  closeSome (batch: readonly Session[], code: CloseCodeValue): void {
    this.#flush()
    for (const session of batch) session.close(code)
  }

  closeAll (code: CloseCodeValue): void {
    this.#flush()
    for (const session of [...this.#list]) session.close(code)
  }

  terminateAll (): void {
    for (const session of [...this.#list]) session.terminate()
  }

  #onDeadline (session: Session, now: number): void {
    if (session.closing || session.index === -1) return
    if (now >= session.tokenExpMs) {
      session.close(CloseCode.TOKEN_EXPIRED)
      return
    }
    if (session.reauthDeadlineMs > 0) {
      if (now >= session.reauthDeadlineMs) {
        // Answered in time, still being checked (a slow revocation read):
        // the check's outcome keeps or closes the session; look again soon.
        if (session.authChecks > 0) {
          this.#wheel.schedule(session, now + WHEEL_RESOLUTION_MS)
          return
        }
        session.close(CloseCode.TOKEN_EXPIRED)
        return
      }
    } else if (now >= session.authAtMs + this.#ws.reauthIntervalMs) {
      session.reauthDeadlineMs = now + this.#ws.reauthGraceMs
      this.send(session, this.#reauthFrame)
    }
    this.reschedule(session)
  }
}
