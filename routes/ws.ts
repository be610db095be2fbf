import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { CloseCode } from '../protocol/close-codes.js'
import { BadPositionError, BusUnavailableError, ClientGoneError, NotWebSocketError, OverloadedError, ShuttingDownError, TokenRevokedError } from '../src/lib/errors.js'
import { handleMessage, type MessageContext } from '../src/session/message-handler.js'
import type { Welcome } from '../protocol/frames.js'
import type { ConnectionResult } from '../src/lib/metric-names.js'
import { Session } from '../src/session/session.js'
import type { SessionSocket } from '../src/session/session-socket.js'
import { releaseUpgradeRequest } from '../src/session/upgrade-release.js'
import { HandshakeGate } from '../src/session/handshake-gate.js'
import { isRevoked } from '../src/lib/token-claims.js'
import type { ResumePlan } from '../src/delivery/delivery.js'
import { isWellFormedPosition } from '../protocol/position.js'

/**
 * What a request reserved before the upgrade; released if no session takes
 * it, else when the session closes. Plain data, no closures: it lives as
 * long as the session.
 */
interface Reservation {
  userId: string
  generation: number
  taken: boolean
  /** The address slot held (its key and member, copied: no object kept); key null when none. */
  slotKey: string | null
  slotMember: string
  /** The user's claim is held. */
  claimed: boolean
}

/** The sockets of /ws (the server's WebSocket class, see src/app.ts). */
type GatewaySocket = SessionSocket<Session, Reservation>

/** An upgrade's state between its hooks and the session (`request.upgrade`). */
interface UpgradeState {
  /** Counted in `lifecycle.pendingHandshakes` until settled. */
  pending: boolean
  /** Holds a turn of the handshake gate until settled. */
  gated: boolean
  /** 'close' listeners on the raw socket until the session takes over. */
  listeners: Array<() => void>
  reservation: Reservation | null
  /** The ServerResponse @fastify/websocket assigned to the raw socket. */
  response: ServerResponse | null
  /** Positions the client resumes from (`since_all`, `since_user`). */
  since: { all?: string, user?: string }
  /** What history gave for the session, read once the user is watched. */
  plan: ResumePlan | null
}

/** A `since_*` query value: absent, or a well-formed position (400 otherwise). */
function sinceParam (query: Record<string, unknown>, name: string): string | undefined {
  const value = query[name]
  if (value === undefined) return undefined
  if (typeof value !== 'string' || !isWellFormedPosition(value)) throw new BadPositionError(name)
  return value
}

const RESULT_BY_CODE: Record<string, ConnectionResult> = {
  WS_ORIGIN_REFUSED: 'forbidden_origin',
  WS_TOKEN_REVOKED: 'revoked',
  WS_SHUTTING_DOWN: 'shutting_down',
  WS_OVERLOADED: 'overloaded',
  WS_IP_LIMIT: 'rate_limited_ip'
}

function classify (error: FastifyError): ConnectionResult | undefined {
  const byCode = RESULT_BY_CODE[error.code]
  if (byCode !== undefined) return byCode
  if (error.statusCode === 401) return 'unauthorized'
  if (error.statusCode === 429) return 'rate_limited_user'
  return undefined
}

/** GET /ws: the authenticated WebSocket endpoint. */
export default async function wsRoutes (fastify: FastifyInstance) {
  fastify.decorateRequest('upgrade', null)
  const { gatewayConfig: config, sessions: registry, claims, delivery, lifecycle, metrics, limits, spike } = fastify
  const ctx: MessageContext = {
    ws: config.ws,
    registry,
    metrics,
    log: fastify.log,
    verifyToken: fastify.verifyToken,
    checkRevoked: fastify.checkRevoked
  }

  /** Frees what the reservation holds, once. */
  function release (reservation: Reservation): void {
    const key = reservation.slotKey
    reservation.slotKey = null
    if (key !== null) limits.releaseConnection(key, reservation.slotMember)
    if (!reservation.claimed) return
    reservation.claimed = false
    claims.release(reservation.userId)
  }

  const gate = new HandshakeGate(config.limits.handshakeConcurrency, (waiting) => { metrics.handshakesWaiting.set(waiting) })

  function ungate (state: UpgradeState): void {
    if (!state.gated) return
    state.gated = false
    gate.leave()
  }

  function settle (state: UpgradeState | null): void {
    if (state === null) return
    ungate(state)
    if (state.pending) {
      state.pending = false
      lifecycle.pendingHandshakes--
    }
  }

  async function admit (request: FastifyRequest): Promise<void> {
    if (!request.ws) return
    spike.record()
    if (!lifecycle.accepting) throw new ShuttingDownError()
    if (lifecycle.pendingHandshakes >= config.limits.maxPendingHandshakes) throw new OverloadedError()
    lifecycle.pendingHandshakes++
    const state: UpgradeState = { pending: true, gated: false, listeners: [], reservation: null, response: null, since: {}, plan: null }
    request.upgrade = state
    // onRequest runs in the same tick as the upgrade event: the socket is live.
    const socket = request.raw.socket as Socket | undefined
    const onClose = (): void => settle(state)
    state.listeners.push(onClose)
    socket?.once('close', onClose)
    const turn = gate.enter()
    if (turn !== null) {
      await turn
      // Its client may have given up, or the instance begun to drain, while
      // it waited: its turn passes on.
      const gone = socket?.destroyed === true
      if (gone || !lifecycle.accepting) {
        gate.leave()
        throw gone ? new ClientGoneError() : new ShuttingDownError()
      }
    }
    state.gated = true
  }

  /**
   * 401 for a bad token, 403 for a revoked one, then the per-user attempt
   * count: refused tokens do not use up the user's attempts, so a client
   * retrying with a revoked token cannot lock out the user's next login.
   */
  async function authorize (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    await fastify.checkRevoked(await fastify.verifyRequest(request))
    if (request.upgrade !== null) {
      // A malformed position is the client's fault: 400, before it uses up an attempt.
      const query = request.query as Record<string, unknown>
      request.upgrade.since = { all: sinceParam(query, 'since_all'), user: sinceParam(query, 'since_user') }
    }
    await limits.connectAttempt(request, reply)
  }

  async function reserve (request: FastifyRequest, reply: FastifyReply): Promise<void> {
    if (!request.ws) return
    const socket = request.raw.socket as Socket | undefined
    const gone = (): boolean => socket?.destroyed === true
    // The client may have gone during authentication (its 'close' was then
    // emitted before anyone listened): take nothing for it.
    if (gone()) throw new ClientGoneError()
    const userId = request.user.sub
    const reservation: Reservation = { userId, generation: 0, taken: false, slotKey: null, slotMember: '', claimed: false }
    // Set by admit(), which runs first on every upgrade.
    const state = request.upgrade as UpgradeState
    state.reservation = reservation
    state.response = reply.raw
    // The client may vanish before the upgrade completes: free what it held.
    const onClose = (): void => {
      if (!reservation.taken) release(reservation)
    }
    state.listeners.push(onClose)
    socket?.once('close', onClose)
    // Independent (another key, another connection): taken concurrently.
    // History is read once the user is watched, with the claim (the user's
    // stream in the claim's own step): every later alert reaches this
    // instance, so the session misses nothing between read and live.
    // (No closure made here may outlive the handshake: they share this
    // hook's context, which holds the upgrade request.)
    const since = state.since
    const userFrom = delivery.readFrom(since.user)
    const [slot, claim] = await Promise.allSettled([
      limits.acquireConnection(request, reply),
      claims.claim(userId, userFrom, () => delivery.resumeAll(since.all))
    ])
    if (slot.status === 'fulfilled') {
      reservation.slotKey = slot.value.key
      reservation.slotMember = slot.value.member
    }
    if (claim.status === 'fulfilled') {
      reservation.generation = claim.value.generation
      reservation.claimed = true
    }
    if (slot.status === 'rejected' || claim.status === 'rejected') {
      release(reservation)
      // The address limit (429) is the answer when both fail.
      if (slot.status === 'rejected') throw slot.reason
      request.log.warn({ err: (claim as PromiseRejectedResult).reason }, 'user claim or history read failed')
      throw new BusUnavailableError()
    }
    // Read after the subscription was in place: a logout that raced the
    // checks in onRequest is seen here, or arrives as an event (onConnection).
    if (isRevoked(request.user, claim.value.revokedBefore)) {
      release(reservation)
      throw new TokenRevokedError()
    }
    state.plan = delivery.plan(since, claim.value.read, userFrom, claim.value.user)
    if (gone()) {
      // Gone while we waited on Redis, possibly before the listener above.
      release(reservation)
      throw new ClientGoneError()
    }
    // The 101 and the welcome frame leave in one write (uncorked in
    // onConnection); a refused upgrade is sent with end(), which uncorks.
    socket?.cork()
  }

  /**
   * Replaces @fastify/websocket's per-socket error listener, which closes
   * over the request and reply. ws has already closed the socket with the
   * right code (1009, 1002, 1007...); terminating here would drop that frame.
   */
  function onSocketError (error: Error): void {
    if ((error as { code?: string }).code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') metrics.rejected('too_big')
    fastify.log.debug({ err: error.message }, 'websocket error')
  }

  // The listeners of every session's socket (`this`): one function each, no closure per socket.
  // (ws's types give listeners `this: WebSocket`; it is always a GatewaySocket here.)
  function onMessage (this: WebSocket, data: RawData, isBinary: boolean): void {
    handleMessage(ctx, (this as GatewaySocket).session as Session, data, isBinary)
  }

  function onPong (this: WebSocket): void {
    ((this as GatewaySocket).session as Session).alive = true
  }

  function onClose (this: WebSocket, code: number): void {
    const held = this as GatewaySocket
    const session = held.session as Session
    if (registry.remove(session)) {
      fastify.log.debug({ connectionId: session.id, userId: session.userId, code }, 'session closed')
    }
    release(held.reservation as Reservation)
  }

  function onConnection (socket: WebSocket, request: FastifyRequest): void {
    const state = request.upgrade as UpgradeState
    settle(state)
    for (const listener of state.listeners) request.raw.socket?.removeListener('close', listener)
    releaseUpgradeRequest(socket, state.response as ServerResponse, onSocketError)
    const reservation = state.reservation as Reservation
    request.upgrade = null
    const plan = state.plan
    state.plan = null
    const claimsOfToken = request.user
    const now = Date.now()
    const session = new Session({
      id: randomUUID(),
      userId: claimsOfToken.sub,
      socket,
      generation: reservation.generation,
      tokenExpMs: claimsOfToken.exp * 1000,
      tokenIatSec: typeof claimsOfToken.iat === 'number' ? claimsOfToken.iat : null,
      authAtMs: now,
      transport: request.raw.socket
    }, config.ws.messageBurst)
    reservation.taken = true

    // Listeners first, synchronously: frames may already be waiting.
    const held = socket as GatewaySocket
    held.session = session
    held.reservation = reservation
    held.on('message', onMessage)
    held.on('pong', onPong)
    held.on('close', onClose)

    // ws hands over only sockets that completed the handshake (open).
    metrics.connection('accepted')
    const welcome: Welcome = {
      type: 'welcome',
      connectionId: session.id,
      userId: session.userId,
      heartbeatMs: config.ws.heartbeatIntervalMs,
      reauthMs: config.ws.reauthIntervalMs,
      maxMessageBytes: config.ws.maxMessageBytes
    }
    // welcome, the replay and `resumed` go out before the session takes live alerts.
    delivery.attach(session, plan as ResumePlan, welcome)
    request.raw.socket?.uncork()

    if (claims.loggedOutSince(session.userId, session.tokenIatSec)) {
      session.close(CloseCode.LOGGED_OUT)
      return
    }
    if (claims.superseded(session.userId, session.generation)) {
      session.close(CloseCode.REPLACED)
      return
    }
    claims.announce(session.userId, session.generation).catch((err) => {
      fastify.log.warn({ err, userId: session.userId }, 'could not announce the session to the cluster')
    })
  }

  fastify.route({
    method: 'GET',
    url: '/ws',
    // One hook runs the upgrade's steps in order: each hook of its own cost
    // Fastify a promise, a turn of its runner and a microtask per upgrade.
    async onRequest (request: FastifyRequest, reply: FastifyReply): Promise<void> {
      await admit(request)
      fastify.checkOrigin(request)
      await authorize(request, reply)
      await reserve(request, reply)
    },
    onError (request: FastifyRequest, _reply: FastifyReply, error: FastifyError, done: () => void) {
      if (request.ws) {
        const result = classify(error)
        if (result !== undefined) metrics.connection(result)
      }
      done()
    },
    onSend: async (request: FastifyRequest) => { settle(request.upgrade) },
    handler: async () => { throw new NotWebSocketError() },
    wsHandler: onConnection,
    // Page headers (CSP, HSTS...) mean nothing on a 101, and building them
    // per upgrade is a measurable share of the handshake.
    helmet: false
  })
}

declare module 'fastify' {
  interface FastifyRequest {
    /** Set on upgrades by the /ws route's first hook; null once the session took over. */
    upgrade: UpgradeState | null
  }
}
