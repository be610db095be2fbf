import secureJson from 'secure-json-parse'
import type { RawData } from 'ws'
import type { GatewayConfig } from '../../config/index.js'
import type { TokenClaims } from '../lib/token-claims.js'
import type { GatewayMetrics } from '../lib/metrics.js'
import { CloseCode } from '../../protocol/close-codes.js'
import { Compile } from 'typebox/compile'
import { CLIENT_FRAME_TYPES, ClientFrameSchema, ErrorCode, type ClientFrame, type ErrorCodeValue, type ServerFrame } from '../../protocol/frames.js'
import type { RejectReason } from '../lib/metric-names.js'
import type { Session } from './session.js'
import type { SessionRegistry } from './session-registry.js'
import type { Log } from '../lib/log.js'

const MALFORMED_WINDOW_MS = 60_000

export interface MessageContext {
  ws: GatewayConfig['ws']
  registry: SessionRegistry
  metrics: GatewayMetrics
  log: Log
  verifyToken: (token: string) => Promise<TokenClaims>
  checkRevoked: (claims: TokenClaims) => Promise<void>
}

/** Compiled once at module load, never per message. */
const clientFrameValidator = Compile(ClientFrameSchema)

function reply (ctx: MessageContext, session: Session, message: ServerFrame): void {
  ctx.registry.send(session, Buffer.from(JSON.stringify(message)))
}

/** Token bucket: false when the client is over its message rate. */
function withinRate (ctx: MessageContext, session: Session, now: number): boolean {
  const { messageRatePerSecond, messageBurst } = ctx.ws
  session.tokens = Math.min(messageBurst, session.tokens + (now - session.tokensAt) * messageRatePerSecond / 1000)
  session.tokensAt = now
  if (session.tokens < 1) return false
  session.tokens -= 1
  return true
}

/** Answers a rejected message; past the per-minute allowance closes with 1008. */
function reject (ctx: MessageContext, session: Session, now: number, reason: RejectReason & ErrorCodeValue, message: string): void {
  ctx.metrics.rejected(reason)
  const times = session.malformed ?? (session.malformed = [])
  while (times.length > 0 && now - times[0] >= MALFORMED_WINDOW_MS) times.shift()
  times.push(now)
  reply(ctx, session, { type: 'error', code: reason, message })
  if (times.length > ctx.ws.maxMalformedPerMinute) session.close(CloseCode.POLICY_VIOLATION)
}

function parse (data: RawData): unknown {
  // Prototype-poisoning keys are an error, never silently merged.
  return secureJson.parse(data.toString(), undefined, { protoAction: 'error', constructorAction: 'error' })
}

async function reauthenticate (ctx: MessageContext, session: Session, token: string): Promise<void> {
  let claims: TokenClaims
  try {
    claims = await ctx.verifyToken(token)
  } catch {
    ctx.metrics.rejected('auth_failed')
    session.close(CloseCode.TOKEN_EXPIRED)
    return
  }
  if (claims.sub !== session.userId) {
    ctx.metrics.rejected('auth_failed')
    session.close(CloseCode.TOKEN_EXPIRED)
    return
  }
  try {
    await ctx.checkRevoked(claims)
  } catch (err) {
    ctx.metrics.rejected('auth_failed')
    if ((err as { statusCode?: number }).statusCode === 403) {
      session.close(CloseCode.LOGGED_OUT)
    } else {
      // Revocation unknown (the bus is down): the new token is not taken.
      // The session keeps its current one, whose exp still closes it; one
      // that was answering a re-auth request is asked again one grace
      // period from now, when the bus may be back.
      reply(ctx, session, { type: 'error', code: ErrorCode.AUTH_FAILED, message: 'token could not be checked, try again' })
      if (session.reauthDeadlineMs > 0) {
        session.reauthDeadlineMs = 0
        session.authAtMs = Date.now() + ctx.ws.reauthGraceMs - ctx.ws.reauthIntervalMs
        ctx.registry.reschedule(session)
      }
    }
    return
  }
  if (session.closing) return
  session.tokenExpMs = claims.exp * 1000
  session.tokenIatSec = typeof claims.iat === 'number' ? claims.iat : null
  session.authAtMs = Date.now()
  session.reauthDeadlineMs = 0
  ctx.registry.reschedule(session)
}

function dispatch (ctx: MessageContext, session: Session, message: ClientFrame): void {
  switch (message.type) {
    case 'ping':
      reply(ctx, session, message.id === undefined ? { type: 'pong' } : { type: 'pong', id: message.id })
      break
    case 'ack':
      ctx.log.debug({ connectionId: session.id, alertId: message.alertId }, 'alert acknowledged')
      break
    case 'auth':
      // Counted while checked: a re-auth deadline that passes meanwhile
      // waits for the outcome (see SessionRegistry).
      session.authChecks++
      reauthenticate(ctx, session, message.token).catch((err) => {
        ctx.log.error({ err, connectionId: session.id }, 're-auth failed internally')
        session.close(CloseCode.INTERNAL_ERROR)
      }).finally(() => { session.authChecks-- })
      break
  }
}

/**
 * Handles one client frame: binary -> 1003, over the message rate -> 1008,
 * malformed or unknown -> `error` reply (1008 past the allowance), valid ->
 * dispatched. Never throws: an internal error closes with 1011.
 */
export function handleMessage (ctx: MessageContext, session: Session, data: RawData, isBinary: boolean): void {
  if (session.closing) return
  try {
    ctx.metrics.messagesReceived.inc()
    // For the rate and the malformed window: a step of the wall clock must
    // neither drain the bucket nor keep old mistakes in the window.
    const now = performance.now()
    if (isBinary) {
      ctx.metrics.rejected('binary')
      session.close(CloseCode.BINARY_FRAME)
      return
    }
    if (!withinRate(ctx, session, now)) {
      ctx.metrics.rejected('rate_limited')
      ctx.log.warn({ connectionId: session.id, userId: session.userId }, 'message rate exceeded')
      session.close(CloseCode.POLICY_VIOLATION)
      return
    }
    let parsed: unknown
    try {
      parsed = parse(data)
    } catch {
      reject(ctx, session, now, 'invalid_json', 'message is not valid JSON')
      return
    }
    if (!clientFrameValidator.Check(parsed)) {
      const type = (parsed as { type?: unknown } | null)?.type
      if (typeof type === 'string' && CLIENT_FRAME_TYPES.has(type)) {
        reject(ctx, session, now, 'invalid_message', `invalid ${type} message`)
      } else {
        reject(ctx, session, now, 'unknown_type', 'unknown message type')
      }
      return
    }
    dispatch(ctx, session, parsed)
  } catch (err) {
    ctx.log.error({ err, connectionId: session.id }, 'message handler failed')
    session.close(CloseCode.INTERNAL_ERROR)
  }
}
