import { WebSocket } from 'ws'

/**
 * The WebSocket class of the gateway's server (ws's `WebSocket` option): a
 * socket that knows its session and what its handshake reserved, so that
 * its 'message', 'pong' and 'close' listeners can be the same three
 * functions for every socket instead of three closures per session.
 * Both fields are set before any listener can run.
 */
export class SessionSocket<S = unknown, R = unknown> extends WebSocket {
  session: S | null = null
  reservation: R | null = null
}
