/**
 * The gateway's wire contract (README "Protocol" and "Close codes"), defined
 * here once: the server imports it, and the SDK ships without the server.
 */

export type Severity = 'info' | 'warning' | 'critical'

/** An alert pushed by the gateway. `ts` is epoch milliseconds. */
export interface Alert {
  type: 'alert'
  id: string
  ts: number
  severity: Severity
  title: string
  body?: string
  data?: Record<string, unknown>
}

/** The first frame of every session: the limits the client must respect. */
export interface Welcome {
  type: 'welcome'
  connectionId: string
  userId: string
  heartbeatMs: number
  reauthMs: number
  maxMessageBytes: number
}

export interface Reauth {
  type: 'reauth'
  deadlineMs: number
}

export interface Pong {
  type: 'pong'
  id?: string | number
}

export interface ServerError {
  type: 'error'
  code: string
  message: string
}

export type ServerFrame = Welcome | Alert | Reauth | Pong | ServerError

export type ClientFrame =
  | { type: 'auth', token: string }
  | { type: 'ping', id?: string | number }
  | { type: 'ack', alertId: string }

export const CloseCode = {
  NORMAL: 1000,
  SHUTTING_DOWN: 1001,
  PROTOCOL_ERROR: 1002,
  BINARY_FRAME: 1003,
  ABNORMAL: 1006,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  OVERLOADED: 1013,
  TOKEN_EXPIRED: 4401,
  LOGGED_OUT: 4403,
  REPLACED: 4409
} as const

/** What the client does after the server (or the network) ended a session. */
export type ClosePolicy = 'reconnect' | 'logged-out' | 'replaced' | 'stop'

/**
 * 4403: the user logged out, never reconnect. 4409: another tab or device
 * took over. Codes that say the client itself is at fault (its frames broke
 * a rule) stop, or the same fault would repeat in a loop. Everything else
 * (1001 shutdown, 1006 lost link, 1011, 1013 overload, 4401 stale token: the
 * next connect fetches a fresh one) reconnects with backoff.
 */
export function closePolicy (code: number): ClosePolicy {
  switch (code) {
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
