import { CloseCode } from '../../protocol/close-codes.js'
import type { Lifecycle } from '../lib/lifecycle.js'
import type { Log } from '../lib/log.js'
import type { SessionRegistry } from './session-registry.js'

/**
 * Sessions a draining instance closes per second. Each closed client
 * reconnects to another instance and resumes there: closed all at once, a
 * large instance's clients land on the others together, and for seconds the
 * alerts of the clients already there wait behind their handshakes. Spread
 * at this rate (over at most half the shutdown deadline), a few dozen
 * sessions still close at once and 5,000 over 5 s.
 */
export const DRAIN_CLOSES_PER_SECOND = 1000
/** How often a spread drain closes its next share of sessions. */
const DRAIN_TICK_MS = 20

/**
 * Graceful shutdown of the sessions: no new upgrades, every session closed
 * with 1001 (spread over up to half of `timeoutMs`, see
 * DRAIN_CLOSES_PER_SECOND), and those that did not finish the close
 * handshake within `timeoutMs` terminated.
 */
export async function drain (sessions: SessionRegistry, lifecycle: Lifecycle, log: Log, timeoutMs: number): Promise<void> {
  lifecycle.phase = 'draining'
  if (sessions.size === 0) return
  const deadline = Date.now() + timeoutMs
  const spreadMs = Math.min(timeoutMs / 2, sessions.size / DRAIN_CLOSES_PER_SECOND * 1000)
  log.info({ sessions: sessions.size, spreadMs: Math.round(spreadMs) }, 'draining sessions')
  if (spreadMs >= 2 * DRAIN_TICK_MS) await closeSpread(sessions, spreadMs)
  // Every session, those a handshake under way at the start added included.
  sessions.closeAll(CloseCode.SHUTTING_DOWN)
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (sessions.size === 0 || Date.now() >= deadline) {
        clearInterval(timer)
        resolve()
      }
    }, DRAIN_TICK_MS)
  })
  if (sessions.size > 0) {
    log.warn({ sessions: sessions.size }, 'terminating sessions that did not finish the close handshake')
    sessions.terminateAll()
  }
}

/** Closes the sessions open now with 1001, an even share every tick over `spreadMs`. */
async function closeSpread (sessions: SessionRegistry, spreadMs: number): Promise<void> {
  const open = sessions.snapshot()
  const started = Date.now()
  let closed = 0
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      // By elapsed time, so a late tick catches up.
      const due = Math.min(open.length, Math.ceil(open.length * (Date.now() - started) / spreadMs))
      sessions.closeSome(open.slice(closed, due), CloseCode.SHUTTING_DOWN)
      closed = due
      if (closed === open.length) {
        clearInterval(timer)
        resolve()
      }
    }, DRAIN_TICK_MS)
  })
}
