import { AlertClient } from './alert-client.js'
import type { ConnectOptions } from './options.js'

/**
 * Connects to the gateway and keeps the connection up; see README "Client".
 *
 *   const client = connect({ url: 'wss://alerts.example/ws', getToken, onAlert })
 */
export function connect (options: ConnectOptions): AlertClient {
  return new AlertClient(options)
}

export { AlertClient }
export { AttemptLimiter, DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from './backoff.js'
export { CloseCode, closePolicy, type Alert, type ClosePolicy, type Positions, type Severity, type StreamName, type Welcome } from './protocol.js'
export { MemoryStorage, type PositionStorage } from './position-storage.js'
export { RecentIds } from './recent-ids.js'
export { tokenSubject } from './token-subject.js'
export type { ConnectOptions, WebSocketConstructor, WebSocketLike } from './options.js'
export type { ClientError, ClientEvents, ConnectionState, GapNotice, Listener, ResumeResult, StateChange } from './typed-events.js'
