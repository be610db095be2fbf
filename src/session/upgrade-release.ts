import type { ServerResponse } from 'node:http'
import type { WebSocket } from 'ws'

/**
 * Lets an upgrade request be collected once its session holds what it needs.
 * Otherwise an idle socket keeps the Fastify Request and Reply, the
 * IncomingMessage (its URL carries the token), the ServerResponse and the
 * request logger alive for its whole life (about 5 KB each).
 *
 * @fastify/websocket 11 retains them in two places (index.js), for as long
 * as the socket lives:
 * - `onUpgrade` assigns a ServerResponse to the raw socket (`assignSocket`)
 *   that is never finished, since the reply is hijacked: detached here
 *   (`detachSocket`, the inverse of `assignSocket`);
 * - the route handler adds an 'error' listener to the WebSocket that closes
 *   over the request and reply: replaced here by `onError`.
 * test/routes/ws-memory.test.ts pins both: it fails when the plugin keeps
 * the request some other way, and when it stops doing either of these (the
 * workaround can then go).
 */
export function releaseUpgradeRequest (socket: WebSocket, response: ServerResponse, onError: (error: Error) => void): void {
  // Absent on requests injected with injectWS, which have no real socket.
  if (response.socket !== null) response.detachSocket(response.socket)
  socket.removeAllListeners('error')
  socket.on('error', onError)
}
