import t from 'tap'
import { randomUUID } from 'node:crypto'
import { connect as netConnect } from 'node:net'
import { build, type Built } from '../helpers/build.js'
import { startGateway } from '../helpers/gateway-process.js'
import { publish, waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

type T = Parameters<typeof build>[0]

async function cluster (t: T, redis: RedisServer, env: Record<string, string> = {}, redisPrefix = `t${randomUUID().slice(0, 8)}:`): Promise<[Built, Built]> {
  const full = { REDIS_URL: redis.url, ...env }
  const a = await build(t, { env: full, redisPrefix })
  const b = await build(t, { env: full, redisPrefix })
  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)
  return [a, b]
}

/** Sends raw bytes and resolves with the status line of the answer (or '' when the server just closes). */
async function rawRequest (port: number, request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = netConnect(port, '127.0.0.1')
    let answer = ''
    socket.on('data', (chunk) => { answer += chunk.toString('latin1') })
    socket.on('error', () => resolve(answer.split('\r\n')[0]))
    socket.on('close', () => resolve(answer.split('\r\n')[0]))
    socket.setTimeout(10000, () => reject(new Error('no answer in 10 s')))
    socket.write(request)
  })
}

t.test('connect attempts per user, cluster-wide', async (t) => {
  const redis = await RedisServer.start(t)
  const [a, b] = await cluster(t, redis)
  const token = userToken('attempts')
  for (let i = 0; i < 5; i++) {
    const { client } = await TestClient.connect(i % 2 === 0 ? a.wsUrl : b.wsUrl, { token })
    await client.close()
  }
  const refused = await TestClient.refused(b.wsUrl, { token })
  t.equal(refused.status, 429, 'the 6th attempt in a minute is refused, attempts alternating between instances')
  t.ok(Number(refused.headers['retry-after']) > 0, 'with Retry-After')
  t.equal((await TestClient.refused(a.wsUrl, { token })).status, 429, 'on either instance')
  const { client: other } = await TestClient.connect(a.wsUrl, { token: userToken('someone-else') })
  t.ok(other, 'other users are not affected')
  const metrics = await (await fetch(`${b.url}/metrics`)).text()
  t.match(metrics, /ws_connections_total\{result="rate_limited_user"\} [1-9]/)
})

t.test('connect attempts per user on a single instance', async (t) => {
  const { wsUrl } = await build(t, { env: { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '2' } })
  const token = userToken('solo')
  await (await TestClient.connect(wsUrl, { token })).client.close()
  await (await TestClient.connect(wsUrl, { token })).client.close()
  const refused = await TestClient.refused(wsUrl, { token })
  t.equal(refused.status, 429)
  t.ok(refused.headers['retry-after'])
})

t.test('concurrent connections per address, cluster-wide', async (t) => {
  const redis = await RedisServer.start(t)
  const [a, b] = await cluster(t, redis, { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' })
  const clients: TestClient[] = []
  for (let i = 0; i < 100; i++) {
    const { client } = await TestClient.connect(i % 2 === 0 ? a.wsUrl : b.wsUrl, { token: userToken(`ip-${i}`), localAddress: '127.0.0.1' })
    clients.push(client)
  }
  const refused = await TestClient.refused(a.wsUrl, { token: userToken('ip-101'), localAddress: '127.0.0.1' })
  t.equal(refused.status, 429, 'the 101st socket from 127.0.0.1 is refused')
  t.ok(Number(refused.headers['retry-after']) > 0, 'with Retry-After')
  t.equal((await TestClient.refused(b.wsUrl, { token: userToken('ip-102'), localAddress: '127.0.0.1' })).status, 429, 'on either instance')
  const { client: elsewhere } = await TestClient.connect(b.wsUrl, { token: userToken('ip-other'), localAddress: '127.0.0.2' })
  t.ok(elsewhere, 'a socket from 127.0.0.2 is accepted')

  await clients[0].close()
  // The slot is freed when the server sees the close: wait for that, not a guess.
  while (a.app.sessions.size + b.app.sessions.size > 100) await new Promise((resolve) => setImmediate(resolve))
  const { client: again } = await TestClient.connect(a.wsUrl, { token: userToken('ip-again'), localAddress: '127.0.0.1' })
  t.ok(again, 'closing one frees its slot at once')
  const metrics = await (await fetch(`${a.url}/metrics`)).text()
  t.match(metrics, /ws_connections_total\{result="rate_limited_ip"\} [1-9]/)
})

t.test('an instance killed with SIGKILL leaves no stale slots after the expiry bound', async (t) => {
  const redis = await RedisServer.start(t)
  const env = { REDIS_URL: redis.url, MAX_CONNECTIONS_PER_IP: '3', IP_SLOT_TTL_MS: '2000', MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' }
  const doomed = await startGateway(t, env)
  const survivor = await build(t, { env, redisPrefix: 'gw:' })
  await waitForStatus(`${doomed.url}/ready`, 200)
  await waitForStatus(`${survivor.url}/ready`, 200)
  for (let i = 0; i < 3; i++) await TestClient.connect(doomed.wsUrl, { token: userToken(`doomed-${i}`), localAddress: '127.0.0.3' })
  t.equal((await TestClient.refused(survivor.wsUrl, { token: userToken('blocked'), localAddress: '127.0.0.3' })).status, 429)

  const killedAt = Date.now()
  doomed.child.kill('SIGKILL')
  await doomed.exited
  let accepted: TestClient | null = null
  for (let attempt = 0; accepted === null; attempt++) {
    try {
      accepted = (await TestClient.connect(survivor.wsUrl, { token: userToken(`after-${attempt}`), localAddress: '127.0.0.3' })).client
    } catch (err) {
      t.equal((err as { status?: number }).status, 429, 'refused only by the limit while the slots live')
      if (Date.now() - killedAt > 2000 + 3000) throw new Error('stale slots outlived the expiry bound')
      await new Promise((resolve) => setTimeout(resolve, 200))
    }
  }
  t.ok(Date.now() - killedAt <= 5000, 'slots of the dead instance expired within the bound')
})

t.test('message flood closes with 1008', async (t) => {
  const { wsUrl } = await build(t)
  const { client } = await TestClient.connect(wsUrl, { token: userToken('flooder') })
  for (let i = 0; i < 100; i++) client.send({ type: 'ping', id: i })
  t.equal((await client.waitClosed()).code, 1008)
})

t.test('a client that stops reading is closed with 1013; the others receive everything', async (t) => {
  const { app, url, wsUrl } = await build(t, { env: { SEND_BUFFER_MAX_BYTES: '65536', REST_RATE_LIMIT_PER_MINUTE: '100000' } })
  const { client: slow } = await TestClient.connect(wsUrl, { token: userToken('slow') })
  const { client: fast } = await TestClient.connect(wsUrl, { token: userToken('fast') })
  const rawSocket = (slow.ws as unknown as { _socket: { pause: () => void, resume: () => void } })._socket
  rawSocket.pause()
  const data: Record<string, string> = {}
  for (let i = 0; i < 50; i++) data[`k${i}`] = 'x'.repeat(1000)
  const svc = serviceToken()
  let published = 0
  const slowSession = app.sessions.sessionsOf('slow')[0]
  while (!slowSession.closing) {
    if (published >= 2000) throw new Error('the slow consumer was never closed')
    const res = await publish(url, svc, { target: { all: true }, severity: 'info', title: `n${published}`, data })
    t.equal(res.status, 202, `alert ${published}`, { diagnostic: false })
    published++
    // Keep the fast client drained as it would be in real life.
    t.equal((await fast.next('alert')).title, `n${published - 1}`, 'the fast client keeps up', { diagnostic: false })
  }
  rawSocket.resume()
  t.equal((await slow.waitClosed(10000)).code, 1013, 'the slow consumer is closed with 1013')
  const more = await publish(url, svc, { target: { all: true }, severity: 'info', title: 'after' })
  t.equal(more.body.delivered, 1, 'only the fast client is still there')
  t.equal((await fast.next('alert')).title, 'after')
  const titles = fast.received.filter((m) => m.type === 'alert').map((m) => m.title)
  t.equal(titles.length, published + 1, 'the fast client received every alert, once')
})

t.test('oversized headers are answered without a crash', async (t) => {
  const { port, url } = await build(t)
  const headers = Array.from({ length: 2000 }, (_, i) => `x-h${i}: v\r\n`).join('')
  // Headers first, Sec-WebSocket-* last: past Node's 2,000-header cap they are
  // dropped, the request shape that crashed ws before 8.17.1 (CVE-2024-37890).
  const status = await rawRequest(port, `GET /ws?token=${userToken('headers')} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers}Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n`)
  t.match(status, /^HTTP\/1\.1 (400|431)|^$/, '2,000 headers: refused or dropped')
  const unauthenticated = await rawRequest(port, `GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n${headers}\r\n`)
  t.match(unauthenticated, /^HTTP\/1\.1 (401|431)|^$/, '2,000 headers without a token: 401, 431 or dropped')
  const protocol = Array.from({ length: 3000 }, (_, i) => `p${i}`).join(', ')
  const status2 = await rawRequest(port, `GET /ws?token=${userToken('proto')} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: ${protocol}\r\n\r\n`)
  t.match(status2, /^HTTP\/1\.1 (101|400|431)/, 'a long Sec-WebSocket-Protocol gets an answer')
  t.equal((await fetch(`${url}/health`)).status, 200, 'the process lives on')
})
