import { AttemptLimiter, backoffDelay } from './backoff.js'
import { CloseCode, closePolicy, type Alert, type ClientFrame, type Resumed, type ServerFrame, type Welcome } from './protocol.js'
import { PositionBook, STREAMS, type Since } from './position-book.js'
import { RecentIds } from './recent-ids.js'
import { tokenSubject } from './token-subject.js'
import { TypedEvents, type ClientError, type ClientEvents, type StateChange } from './typed-events.js'
import { resolveOptions, type ConnectOptions, type ResolvedOptions, type WebSocketLike } from './options.js'

const noop = (): void => {}

/** Ends a socket we gave up on, without hearing from it again. */
function discard (socket: WebSocketLike): void {
  socket.onmessage = noop
  socket.onclose = noop
  // ws (Node) throws an 'error' event that has no listener: keep one.
  socket.onerror = noop
  if (typeof socket.terminate === 'function') socket.terminate()
  else socket.close(CloseCode.NORMAL)
}

const messageOf = (err: unknown): string => err instanceof Error ? err.message : String(err)

/** A token that cannot work is a getToken() failure, not a doomed connect attempt. */
function checkToken (token: unknown): string {
  if (typeof token !== 'string' || token === '') throw new TypeError(`resolved to ${token === '' ? 'an empty string' : typeof token}, not a token`)
  return token
}

/**
 * A connection to the gateway that stays up by itself: fresh token before
 * every connect, re-auth answered, reconnects with jittered backoff within
 * the server's attempt limit, dead links detected with application pings,
 * duplicate alerts dropped, and every reconnect (or page reload) resumed
 * from the stream positions it stored. Create it with `connect()`.
 */
export class AlertClient extends TypedEvents<ClientEvents> {
  readonly #o: ResolvedOptions
  readonly #recent: RecentIds
  readonly #book: PositionBook
  readonly #limiter: AttemptLimiter
  #state: StateChange['state'] = 'connecting'
  /** The one socket; events of any other are ignored. */
  #socket: WebSocketLike | null = null
  /** The attempt fetching a token and reading the positions, before it dials; any other's results are dropped. */
  #pending: object | null = null
  #disposed = false
  #attempt = 0
  #welcome: Welcome | null = null
  /** The positions the current socket resumes from. */
  #asked: Since = {}
  /** Armed only while nothing else is under way: no socket, no pending attempt. */
  #retryTimer: ReturnType<typeof setTimeout> | undefined
  /**
   * The token and positions deadline of a pending attempt; then the welcome
   * deadline; then the next ping while idle, or the pong deadline while a
   * ping is unanswered.
   */
  #linkTimer: ReturnType<typeof setTimeout> | undefined
  #pingId = 0
  #awaitedPong: number | null = null

  constructor (options: ConnectOptions) {
    super()
    this.#o = resolveOptions(options)
    this.#recent = new RecentIds(this.#o.dedupeCapacity)
    this.#book = new PositionBook(this.#o.storage, this.#o.storageKeyPrefix, (message) => this.#emitError({ kind: 'storage', message }))
    this.#limiter = new AttemptLimiter(this.#o.maxAttemptsPerMinute, this.#o.attemptWindowMs)
    if (options.onAlert !== undefined) this.on('alert', options.onAlert)
    if (options.onState !== undefined) this.on('state', options.onState)
    if (options.onError !== undefined) this.on('error', options.onError)
    if (options.onResumed !== undefined) this.on('resumed', options.onResumed)
    if (options.onGap !== undefined) this.on('gap', options.onGap)
    // Next microtask: listeners added right after connect() see 'connecting'.
    queueMicrotask(() => { this.#openSocket() })
  }

  get state (): StateChange['state'] {
    return this.#state
  }

  /** The current session's welcome frame; null while not connected. */
  get welcome (): Welcome | null {
    return this.#welcome
  }

  /** Where the client stands in each stream (what the next connect resumes from). */
  get positions (): Since {
    return this.#book.positions
  }

  /**
   * Tells the server the alert was shown. False when there is no open
   * session to tell (the alert is not lost: the server does not resend).
   */
  ack (alertId: string): boolean {
    return this.#send({ type: 'ack', alertId })
  }

  /**
   * Connects now (e.g. on the browser's `online` event, or to take over
   * again after 4409), within the attempt limit. Does nothing while a
   * socket is open or connecting, after a 4403 (logged out: once the user
   * logged in again, connect() a new client), or after close(); returns
   * whether it did.
   */
  reconnect (): boolean {
    if (this.#disposed || this.#state === 'logged-out' || this.#busy()) return false
    this.#cancelRetry()
    const wait = this.#limiter.waitMs(this.#o.now())
    if (wait > 0) this.#retryIn(wait, undefined)
    else this.#openSocket()
    return true
  }

  /** Stops for good: closes the socket, cancels every timer. */
  close (): void {
    if (this.#disposed) return
    this.#disposed = true
    this.#cancelRetry()
    const socket = this.#socket
    this.#release()
    if (socket !== null) discard(socket)
    this.#setState({ state: 'closed' })
  }

  #openSocket (): void {
    // Queued by connect() while reconnect() already dials: one attempt at a time.
    if (this.#disposed || this.#busy()) return
    const attempt = {}
    this.#pending = attempt
    this.#setState({ state: 'connecting' })
    // A state listener may have called close().
    if (this.#pending !== attempt) return
    let token = ''
    let awaited = 'getToken()'
    // Neither may hang the client: a promise that never settles is a failed attempt.
    this.#linkTimer = setTimeout(() => {
      this.#pending = null
      this.#retryAfter({ kind: 'timeout', message: `${awaited} did not finish within the timeout` }, undefined)
    }, this.#o.connectTimeoutMs)
    Promise.resolve().then(() => this.#o.getToken()).then(checkToken).then(async (value) => {
      token = value
      awaited = 'reading the stored positions'
      // The user before any welcome: the token's own claim (see tokenSubject).
      return this.#book.read(tokenSubject(token))
    }).then((stored) => {
      // Given up on (timed out, or close()): whatever it brings is dropped.
      if (this.#pending !== attempt) return
      clearTimeout(this.#linkTimer)
      // Reports a storage that cannot be read: an error listener may call close().
      const since = this.#book.load(stored)
      if (this.#pending !== attempt) return
      this.#pending = null
      this.#dial(token, since)
    }, (err: unknown) => {
      if (this.#pending !== attempt) return
      clearTimeout(this.#linkTimer)
      this.#pending = null
      this.#retryAfter({ kind: 'token', message: `getToken failed: ${messageOf(err)}` }, undefined)
    })
  }

  #dial (token: string, since: Since): void {
    const url = new URL(this.#o.url)
    url.searchParams.set('token', token)
    for (const stream of STREAMS) {
      const pos = since[stream]
      if (pos !== undefined) url.searchParams.set(`since_${stream}`, pos)
    }
    this.#asked = since
    this.#limiter.record(this.#o.now())
    let socket: WebSocketLike
    try {
      socket = new this.#o.WebSocket(url.toString())
    } catch (err) {
      this.#retryAfter({ kind: 'socket', message: `could not open the socket: ${messageOf(err)}` }, undefined)
      return
    }
    this.#socket = socket
    socket.onmessage = (event) => this.#onMessage(socket, event.data)
    socket.onclose = (event) => this.#onClose(socket, event.code)
    socket.onerror = noop // the close event follows with the code
    this.#linkTimer = setTimeout(() => this.#deadLink(socket, 'no welcome'), this.#o.connectTimeoutMs)
  }

  /*
   * Listeners run inside every emit, and may call close() (reconnect() is
   * refused while a socket is current): after each step that emits, the
   * socket must still be the current one before anything else is done.
   */

  #onMessage (socket: WebSocketLike, data: unknown): void {
    // A socket given up on, or one that did not stop at its close event.
    if (socket !== this.#socket) return
    let frame: ServerFrame
    try {
      frame = JSON.parse(String(data))
    } catch {
      this.#emitError({ kind: 'protocol', message: 'the server sent a frame that is not JSON' })
      return
    }
    switch (frame?.type) {
      case 'welcome':
        this.#book.welcome(frame.userId, frame.pos)
        if (socket !== this.#socket) return
        this.#welcome = frame
        this.#attempt = 0
        this.#schedulePing(socket)
        this.#setState({ state: 'open' })
        break
      case 'alert':
        this.#onAlert(socket, frame)
        break
      case 'resumed':
        this.#onResumed(socket, frame)
        break
      case 'gap':
        this.#book.moveTo(frame.pos)
        if (socket !== this.#socket) return
        this.emit('gap', { streams: frame.streams, pos: frame.pos })
        break
      case 'reauth':
        this.#reauth()
        break
      case 'pong':
        if (frame.id === this.#awaitedPong) {
          this.#awaitedPong = null
          this.#schedulePing(socket)
        }
        break
      case 'error':
        this.#emitError({ kind: 'server', code: frame.code, message: frame.message })
        break
      // Anything else is from a newer server: ignored.
    }
  }

  #onAlert (socket: WebSocketLike, alert: Alert): void {
    if (typeof alert.id !== 'string') {
      this.#emitError({ kind: 'protocol', message: 'the server sent an alert without an id' })
      return
    }
    // A duplicate still says where the stream stands.
    this.#book.advance(alert.stream, alert.pos)
    if (socket !== this.#socket || !this.#recent.add(alert.id)) return
    this.emit('alert', alert)
    if (this.#o.autoAck) this.ack(alert.id)
  }

  #onResumed (socket: WebSocketLike, frame: Resumed): void {
    const asked = this.#asked
    this.#book.moveTo(frame.pos)
    if (socket !== this.#socket) return
    // A stream whose position did not move missed nothing.
    const gaps = frame.recovered ? [] : STREAMS.filter((s) => asked[s] !== undefined && asked[s] !== frame.pos[s])
    this.emit('resumed', { recovered: frame.recovered, replayed: frame.replayed, gaps, pos: frame.pos })
  }

  #reauth (): void {
    Promise.resolve().then(() => this.#o.getToken()).then(checkToken).then((token) => {
      // Sent on whatever session is open by now: any session of the user takes it.
      this.#send({ type: 'auth', token })
    }, (err: unknown) => {
      // The server closes with 4401 at the deadline; the reconnect asks again.
      this.#emitError({ kind: 'token', message: `getToken failed for re-auth: ${messageOf(err)}` })
    })
  }

  #schedulePing (socket: WebSocketLike): void {
    clearTimeout(this.#linkTimer)
    this.#linkTimer = setTimeout(() => {
      this.#awaitedPong = ++this.#pingId
      this.#send({ type: 'ping', id: this.#awaitedPong })
      this.#linkTimer = setTimeout(() => this.#deadLink(socket, 'no pong'), this.#o.pongTimeoutMs)
    }, this.#o.pingIntervalMs)
  }

  /** The browser gives no signal for a link that died silently: give up on it. */
  #deadLink (socket: WebSocketLike, what: string): void {
    this.#release()
    discard(socket)
    this.#retryAfter({ kind: 'timeout', message: `${what} within the timeout: the link is dead` }, CloseCode.ABNORMAL)
  }

  #onClose (socket: WebSocketLike, code: number): void {
    // A socket we discarded has no-op handlers; this catches one that closes twice.
    if (socket !== this.#socket) return
    this.#release()
    switch (closePolicy(code)) {
      case 'reconnect-now':
        // The server restarts on purpose: no backoff, but never over the attempt limit.
        this.#retryIn(this.#limiter.waitMs(this.#o.now()), code)
        return
      case 'logged-out':
        this.#setState({ state: 'logged-out', code })
        return
      case 'replaced':
        if (this.#o.reconnectOnReplaced) break
        this.#halt(code, 'replaced by a newer connection of the same user (another tab or device)')
        return
      case 'stop':
        this.#halt(code, `closed by the server with ${code}: the client broke a rule, not reconnecting`)
        return
    }
    this.#scheduleReconnect(code)
  }

  #halt (code: number, message: string): void {
    this.#emitError({ kind: 'closed', code, message })
    // Unless an error listener already took over again (reconnect()) or closed.
    if (this.#idle()) this.#setState({ state: 'closed', code })
  }

  /** Reports why an attempt or a session failed, then retries. */
  #retryAfter (error: ClientError, code: number | undefined): void {
    this.#emitError(error)
    this.#scheduleReconnect(code)
  }

  #scheduleReconnect (code: number | undefined): void {
    // An error listener may have decided already: reconnect() dials (or waits), close() stops.
    if (!this.#idle()) return
    const delay = Math.max(backoffDelay(this.#attempt, this.#o.backoff, this.#o.random), this.#limiter.waitMs(this.#o.now()))
    this.#attempt++
    this.#retryIn(delay, code)
  }

  #retryIn (delay: number, code: number | undefined): void {
    this.#cancelRetry()
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined
      this.#openSocket()
    }, delay)
    this.#setState({ state: 'reconnecting', code, retryInMs: delay })
  }

  #cancelRetry (): void {
    clearTimeout(this.#retryTimer)
    this.#retryTimer = undefined
  }

  /** A socket, or an attempt on its way to one. */
  #busy (): boolean {
    return this.#socket !== null || this.#pending !== null
  }

  /** Nothing under way and nothing armed: the client may start the next step itself. */
  #idle (): boolean {
    return !this.#disposed && !this.#busy() && this.#retryTimer === undefined
  }

  /** Forgets the current socket (or pending attempt) and its timers. */
  #release (): void {
    clearTimeout(this.#linkTimer)
    this.#pending = null
    this.#socket = null
    this.#welcome = null
    this.#awaitedPong = null
  }

  #send (frame: ClientFrame): boolean {
    // Welcomed implies a socket, and one past CONNECTING: send() cannot throw.
    if (this.#welcome === null) return false
    const socket = this.#socket as WebSocketLike
    socket.send(JSON.stringify(frame))
    return true
  }

  #setState (change: StateChange): void {
    this.#state = change.state
    this.emit('state', change)
  }

  #emitError (error: ClientError): void {
    this.emit('error', error)
  }
}
