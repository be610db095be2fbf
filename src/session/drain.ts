import { CloseCode } from '../../protocol/close-codes.js'
import type { Lifecycle } from '../lib/lifecycle.js'
import type { Log } from '../lib/log.js'
import type { SessionRegistry } from './session-registry.js'

/**
 * Graceful shutdown of the sessions: no new upgrades, every session closed
 * with 1001, and those that did not finish the close handshake within
 * `timeoutMs` terminated.
 */
export async function drain (sessions: SessionRegistry, lifecycle: Lifecycle, log: Log, timeoutMs: number): Promise<void> {
  lifecycle.phase = 'draining'
  if (sessions.size === 0) return
  log.info({ sessions: sessions.size }, 'draining sessions')
  sessions.closeAll(CloseCode.SHUTTING_DOWN)
  const deadline = Date.now() + timeoutMs
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      if (sessions.size === 0 || Date.now() >= deadline) {
        clearInterval(timer)
        resolve()
      }
    }, 20)
  })
  if (sessions.size > 0) {
    log.warn({ sessions: sessions.size }, 'terminating sessions that did not finish the close handshake')
    sessions.terminateAll()
  }
}
