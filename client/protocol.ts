/**
 * The gateway's wire contract as the SDK sees it: the frames and close codes
 * of protocol/ (shared with the server, imported as types and constants
 * only, so the SDK has no runtime dependency), and what the client does
 * after each close code.
 */

import { CloseCode } from '../protocol/close-codes.js'

export { CloseCode }
export { isWellFormedPosition, type StreamName } from '../protocol/position.js'
export type { Alert, ClientFrame, Gap, Pong, Positions, Reauth, Resumed, ServerError, ServerFrame, Severity, Welcome } from '../protocol/frames.js'

/** What the client does after the server (or the network) ended a session. */
export type ClosePolicy = 'reconnect' | 'reconnect-now' | 'logged-out' | 'replaced' | 'stop'

/**
 * 4403: the user logged out, never reconnect. 4409: another tab or device
 * took over. Codes that say the client itself is at fault (its frames broke
 * a rule) stop, or the same fault would repeat in a loop. 1012 (service
 * restart) reconnects at once, without the backoff delay (still within the
 * attempt limit). Everything else (1001 shutdown, 1006 lost link, 1011,
 * 1013 overload, 4401 stale token: the next connect fetches a fresh one)
 * reconnects with backoff.
 */
export function closePolicy (code: number): ClosePolicy {
  switch (code) {
    case CloseCode.SERVICE_RESTART: return 'reconnect-now'
    case CloseCode.LOGGED_OUT: return 'logged-out'
    case CloseCode.REPLACED: return 'replaced'
    case CloseCode.PROTOCOL_ERROR:
    case CloseCode.BINARY_FRAME:
    case CloseCode.INVALID_PAYLOAD:
    case CloseCode.POLICY_VIOLATION:
    case CloseCode.MESSAGE_TOO_BIG:
      return 'stop'
    default: return 'reconnect'
  }
}
