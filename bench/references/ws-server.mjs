/**
 * Reference 1, the practical limit: a bare `ws` server as a careful user
 * would write it from the ws README. HS256 verified with fast-jwt before the
 * upgrade, the README's heartbeat (one interval pinging every client), one
 * JSON.stringify (and one UTF-8 encoding) per alert, written as the same
 * buffer to every socket. Across instances: Redis pub/sub with one channel
 * for broadcasts and one shared channel for single-user alerts, so every
 * instance wakes for every alert and looks the user up in a Map.
 *
 * Environment: see referenceSettings() in alerts-endpoint.mjs.
 */
import { randomUUID } from 'node:crypto'
import { createServer } from 'node:http'
import { Redis } from 'ioredis'
import { WebSocket, WebSocketServer } from 'ws'
import { createTokenVerifier } from '../lib/verify.mjs'
import { createHttpHandler, referenceSettings } from './alerts-endpoint.mjs'

const {
  host: HOST, port: PORT, secret: SECRET, redisUrl: REDIS_URL, heartbeatMs: HEARTBEAT_MS, maxPayload: MAX_PAYLOAD
} = referenceSettings()

const ALL_CHANNEL = 'bench-ws:all'
const USER_CHANNEL = 'bench-ws:user'
const origin = Buffer.from(randomUUID())
const NEWLINE = 0x0a

const verify = createTokenVerifier(SECRET)
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: MAX_PAYLOAD })
/** Newest socket of each user. */
const users = new Map()

function deliverAll (frame) {
  let delivered = 0
  for (const ws of wss.clients) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(frame, { binary: false })
      delivered++
    }
  }
  return delivered
}

function deliverToUser (userId, frame) {
  const ws = users.get(userId)
  if (ws === undefined || ws.readyState !== WebSocket.OPEN) return 0
  ws.send(frame, { binary: false })
  return 1
}

let pub = null
let ready = REDIS_URL === undefined
if (REDIS_URL !== undefined) {
  pub = new Redis(REDIS_URL)
  const sub = new Redis(REDIS_URL)
  sub.subscribe(ALL_CHANNEL, USER_CHANNEL).then(() => { ready = true })
  sub.on('messageBuffer', (channel, message) => {
    if (origin.equals(message.subarray(0, origin.length))) return
    if (channel.toString() === ALL_CHANNEL) {
      deliverAll(message.subarray(origin.length))
    } else {
      const end = message.indexOf(NEWLINE, origin.length)
      deliverToUser(message.toString('utf8', origin.length, end), message.subarray(end + 1))
    }
  })
}

async function publish (alert, target) {
  const frame = Buffer.from(JSON.stringify(alert))
  if (target.all === true) {
    const delivered = deliverAll(frame)
    if (pub !== null) await pub.publish(ALL_CHANNEL, Buffer.concat([origin, frame]))
    return delivered
  }
  const delivered = deliverToUser(target.userId, frame)
  if (pub !== null) await pub.publish(USER_CHANNEL, Buffer.concat([origin, Buffer.from(`${target.userId}\n`), frame]))
  return delivered
}

function onPong () {
  this.isAlive = true
}

function onClose () {
  if (users.get(this.userId) === this) users.delete(this.userId)
}

function onError () {
  // ws closes the socket itself; without a listener the error would throw.
}

const server = createServer(createHttpHandler({ secret: SECRET, isReady: () => ready, publish }))
// Fastify's default, so publishers keep their connections as they do with the gateway.
server.keepAliveTimeout = 72000

server.on('upgrade', (req, socket, head) => {
  let claims
  try {
    const query = req.url.indexOf('?')
    claims = verify(new URLSearchParams(query === -1 ? '' : req.url.slice(query + 1)).get('token') ?? '')
  } catch {
    socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    return
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.isAlive = true
    ws.userId = claims.sub
    users.set(claims.sub, ws)
    ws.on('pong', onPong)
    ws.on('close', onClose)
    ws.on('error', onError)
  })
})

// The ws README heartbeat: every interval, ping every client at once.
setInterval(() => {
  for (const ws of wss.clients) {
    if (ws.isAlive === false) {
      ws.terminate()
      continue
    }
    ws.isAlive = false
    ws.ping()
  }
}, HEARTBEAT_MS).unref()

server.listen(PORT, HOST, () => {
  process.stdout.write(`ws reference listening on http://${HOST}:${server.address().port}\n`)
})
