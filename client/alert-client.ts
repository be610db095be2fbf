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
  #socket: WebSocketLike | null = null
  #opening = false
  #disposed = false
  #attempt = 0
  #welcome: Welcome | null = null
  /** The positions the current socket resumes from. */
  #asked: Since = {}
  #retryTimer: ReturnType<typeof setTimeout> | undefined
  /** Next ping while idle; the pong deadline while a ping is unanswered; the welcome deadline before it. */
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
   * socket is open or connecting, or after close(); returns whether it did.
   */
  reconnect (): boolean {
    if (this.#disposed || this.#socket !== null || this.#opening) return false
    clearTimeout(this.#retryTimer)
    const wait = this.#limiter.waitMs(this.#o.now())
    if (wait > 0) this.#retryIn(wait, undefined)
    else this.#openSocket()
    return true
  }

  /** Stops for good: closes the socket, cancels every timer. */
  close (): void {
    if (this.#disposed) return
    this.#disposed = true
    clearTimeout(this.#retryTimer)
    const socket = this.#socket
    this.#release()
    if (socket !== null) discard(socket)
    this.#setState({ state: 'closed' })
  }

  #openSocket (): void {
    // Scheduled before close(), or queued by connect() while reconnect() already dials.
    if (this.#disposed || this.#opening) return
    this.#opening = true
    this.#setState({ state: 'connecting' })
    let token = ''
    Promise.resolve().then(() => this.#o.getToken()).then(checkToken).then(async (value) => {
      token = value
      // The user before any welcome: the token's own claim (see tokenSubject).
      return this.#book.load(tokenSubject(token))
    }).then((since) => {
      this.#opening = false
      if (!this.#disposed) this.#dial(token, since)
    }, (err: unknown) => {
      this.#opening = false
      if (this.#disposed) return
      this.#emitError({ kind: 'token', message: `getToken failed: ${messageOf(err)}` })
      this.#scheduleReconnect(undefined)
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
      this.#emitError({ kind: 'socket', message: `could not open the socket: ${messageOf(err)}` })
      this.#scheduleReconnect(undefined)
      return
    }
    this.#socket = socket
    socket.onmessage = (event) => this.#onMessage(socket, event.data)
    socket.onclose = (event) => this.#onClose(event.code)
    socket.onerror = noop // the close event follows with the code
    this.#linkTimer = setTimeout(() => this.#deadLink(socket, 'no welcome'), this.#o.connectTimeoutMs)
  }

  #onMessage (socket: WebSocketLike, data: unknown): void {
    let frame: ServerFrame
    try {
      frame = JSON.parse(String(data))
    } catch {
      this.#emitError({ kind: 'protocol', message: 'the server sent a frame that is not JSON' })
      return
    }
    switch (frame?.type) {
      case 'welcome':
        this.#welcome = frame
        this.#book.welcome(frame.userId, frame.pos)
        this.#attempt = 0
        this.#schedulePing(socket)
        this.#setState({ state: 'open' })
        break
      case 'alert':
        this.#onAlert(frame)
        break
      case 'resumed':
        this.#onResumed(frame)
        break
      case 'gap':
        this.#book.moveTo(frame.pos)
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

  #onAlert (alert: Alert): void {
    if (typeof alert.id !== 'string') {
      this.#emitError({ kind: 'protocol', message: 'the server sent an alert without an id' })
      return
    }
    // A duplicate still says where the stream stands.
    this.#book.advance(alert.stream, alert.pos)
    if (!this.#recent.add(alert.id)) return
    this.emit('alert', alert)
    if (this.#o.autoAck) this.ack(alert.id)
  }

  #onResumed (frame: Resumed): void {
    const asked = this.#asked
    this.#book.moveTo(frame.pos)
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
    this.#emitError({ kind: 'timeout', message: `${what} within the timeout: the link is dead` })
    this.#scheduleReconnect(CloseCode.ABNORMAL)
  }

  #onClose (code: number): void {
    // A socket we discarded never reaches here: its handlers are no-ops.
    this.#release()
    switch (closePolicy(code)) {
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
    this.#setState({ state: 'closed', code })
  }

  #scheduleReconnect (code: number | undefined): void {
    const delay = Math.max(backoffDelay(this.#attempt, this.#o.backoff, this.#o.random), this.#limiter.waitMs(this.#o.now()))
    this.#attempt++
    this.#retryIn(delay, code)
  }

  #retryIn (delay: number, code: number | undefined): void {
    this.#retryTimer = setTimeout(() => this.#openSocket(), delay)
    this.#setState({ state: 'reconnecting', code, retryInMs: delay })
  }

  /** Forgets the current socket and its timers. */
  #release (): void {
    clearTimeout(this.#linkTimer)
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
