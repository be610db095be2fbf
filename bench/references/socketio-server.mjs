/**
 * Reference 2, the peer users pick: Socket.IO 4 with @socket.io/redis-adapter,
 * websocket transport only. The token travels in the Socket.IO handshake
 * (`auth: { token }`) and is verified (HS256, fast-jwt) in a namespace
 * middleware; each socket joins its user's room. Broadcasts are `io.emit`,
 * single-user alerts `io.to('user:<id>').emit`; the adapter carries both to
 * the other instances.
 *
 * Environment: see referenceSettings() in alerts-endpoint.mjs (the
 * heartbeat interval is Socket.IO's pingInterval).
 */
import { createServer } from 'node:http'
import { createAdapter } from '@socket.io/redis-adapter'
import { Redis } from 'ioredis'
import { Server } from 'socket.io'
import { createTokenVerifier } from '../lib/verify.mjs'
import { createHttpHandler, referenceSettings } from './alerts-endpoint.mjs'

const {
  host: HOST, port: PORT, secret: SECRET, redisUrl: REDIS_URL, heartbeatMs: HEARTBEAT_MS, maxPayload: MAX_PAYLOAD
} = referenceSettings()

const verify = createTokenVerifier(SECRET)
const roomOf = (userId) => `user:${userId}`

let io = null
let ready = REDIS_URL === undefined

async function publish (alert, target) {
  if (target.all === true) {
    io.emit('alert', alert)
    return io.of('/').sockets.size
  }
  const room = roomOf(target.userId)
  io.to(room).emit('alert', alert)
  return io.of('/').adapter.rooms.get(room)?.size ?? 0
}

const server = createServer(createHttpHandler({ secret: SECRET, isReady: () => ready, publish }))
// Fastify's default, so publishers keep their connections as they do with the gateway.
server.keepAliveTimeout = 72000

io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  pingInterval: HEARTBEAT_MS,
  pingTimeout: 20000,
  maxHttpBufferSize: MAX_PAYLOAD
})

if (REDIS_URL !== undefined) {
  const pubClient = new Redis(REDIS_URL)
  const subClient = pubClient.duplicate()
  let up = 0
  for (const client of [pubClient, subClient]) {
    client.once('ready', () => { ready = ++up === 2 })
  }
  io.adapter(createAdapter(pubClient, subClient))
}

io.use((socket, next) => {
  try {
    socket.data.userId = verify(String(socket.handshake.auth?.token ?? '')).sub
    next()
  } catch {
    next(new Error('unauthorized'))
  }
})

io.on('connection', (socket) => {
  socket.join(roomOf(socket.data.userId))
})

server.listen(PORT, HOST, () => {
  process.stdout.write(`socket.io reference listening on http://${HOST}:${server.address().port}\n`)
})
