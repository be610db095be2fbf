import { execFileSync } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import { connect, type Socket } from 'node:net'
import { request as httpRequest } from 'node:http'
import { request as httpsRequest } from 'node:https'
import { join } from 'node:path'
import Fastify from 'fastify'
import t from 'tap'
import metricsPlugin from '../../plugins/metrics.js'
import { buildApp } from '../../src/app.js'
import { build, type Built } from '../helpers/build.js'
import { testConfig } from '../helpers/config.js'
import { waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

const METRIC_NAMES = [
  'ws_connections_active',
  'ws_connections_total',
  'ws_messages_received_total',
  'ws_messages_sent_total',
  'ws_messages_rejected_total',
  'ws_connection_duration_seconds',
  'ws_bus_connected',
  'ws_connection_spike'
]
const RESULTS = ['accepted', 'unauthorized', 'forbidden_origin', 'revoked', 'rate_limited_user', 'rate_limited_ip', 'shutting_down', 'overloaded']

async function scrape (gw: Built): Promise<string> {
  const res = await fetch(`${gw.url}/metrics`)
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`)
  return res.text()
}

/** The value of one sample (`name{labels} value`) of a Prometheus text exposition. */
function sample (text: string, name: string, labels = ''): number | undefined {
  const prefix = `${name}${labels} `
  const line = text.split('\n').find((l) => l.startsWith(prefix))
  return line === undefined ? undefined : Number(line.slice(prefix.length))
}

const total = (text: string, result: string): number | undefined => sample(text, 'ws_connections_total', `{result="${result}"}`)

/** The sources of one CSP directive. */
function directive (csp: string | null, name: string): string[] | undefined {
  const found = (csp ?? '').split(';').map((d) => d.trim().split(/\s+/)).find(([n]) => n === name)
  return found?.slice(1)
}

/** Resolves once the server side of `userId`'s only session has closed (and left the registry). */
function serverClosed (gw: Built, userId: string): Promise<unknown> {
  const [session] = gw.app.sessions.sessionsOf(userId)
  if (session === undefined) throw new Error(`${userId} has no session`)
  return once(session.socket, 'close')
}

/** True when `promise` settles within `ms`. */
async function within (promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<boolean>((resolve) => { timer = setTimeout(() => resolve(false), ms) })
  return Promise.race([promise.then(() => true), timeout]).finally(() => clearTimeout(timer))
}

/**
 * Sends a WebSocket upgrade over a raw TCP socket and reads the status line
 * of the answer. The socket is left open, as a client that is slow to
 * hang up would leave it; `closed` resolves when the gateway closes it.
 */
async function rawUpgrade (port: number, path: string, headers: string[] = []): Promise<{ status: number, socket: Socket, closed: Promise<void> }> {
  const socket = connect(port, '127.0.0.1')
  const closed = once(socket, 'close').then(() => {})
  socket.on('error', () => {})
  await once(socket, 'connect')
  socket.write([
    `GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Connection: Upgrade', 'Upgrade: websocket',
    'Sec-WebSocket-Version: 13', 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', ...headers, '', ''
  ].join('\r\n'))
  let head = ''
  const status = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no answer to the upgrade: ${head}`)), 5000)
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString()
      const match = /^HTTP\/1\.1 (\d{3})/.exec(head)
      if (match !== null) {
        clearTimeout(timer)
        resolve(Number(match[1]))
      }
    })
  })
  return { status, socket, closed }
}

t.test('/health answers 200 while the process lives', async (t) => {
  const gw = await build(t)
  const res = await fetch(`${gw.url}/health`)
  t.equal(res.status, 200)
  t.same(await res.json(), { status: 'ok' })
})

t.test('/ready answers 200 once the app is ready', async (t) => {
  const gw = await build(t)
  const res = await fetch(`${gw.url}/ready`)
  t.equal(res.status, 200)
  t.same(await res.json(), { status: 'ready' })
})

t.test('while draining, /ready and new upgrades answer 503; the open socket gets 1001', async (t) => {
  const gw = await build(t, { env: { SHUTDOWN_TIMEOUT_MS: '10000' } })
  // The server side of every upgrade request, so the test can always end.
  const upgradeSockets: Socket[] = []
  gw.app.server.prependListener('upgrade', (_request: unknown, socket: Socket) => { upgradeSockets.push(socket) })
  const { client } = await TestClient.connect(gw.wsUrl, { token: userToken('alice') })
  // Stop reading: the client cannot answer the close handshake, so the
  // gateway stays in its drain phase until we resume.
  client.ws.pause()
  const closing = gw.app.close()
  await waitForStatus(`${gw.url}/ready`, 503)
  t.same(await (await fetch(`${gw.url}/ready`)).json(), { status: 'draining' }, '/ready says why')
  t.equal((await fetch(`${gw.url}/health`)).status, 200, '/health stays 200 while the process lives')
  const upgrade = await rawUpgrade(gw.port, `/ws?token=${userToken('bob')}`)
  t.equal(upgrade.status, 503, 'a new upgrade is refused with 503')
  t.equal(gw.app.sessions.size, 1, 'the old session is still draining')
  const metrics = await gw.app.metrics.registry.getSingleMetricAsString('ws_connections_total')
  t.equal(total(metrics, 'shutting_down'), 1, 'the refusal counts as shutting_down')
  // A well-behaved client hangs up after the refusal.
  upgrade.socket.end()
  t.ok(await within(upgrade.closed, 2000), 'the refused connection is closed')
  client.ws.resume()
  const closed = await client.waitClosed()
  t.equal(closed.code, 1001)
  t.equal(closed.reason, 'server shutting down')
  t.ok(await within(closing, 3000), 'close() completes once the session has closed')
  for (const socket of upgradeSockets) socket.destroy()
  await closing
  t.equal(gw.app.sessions.size, 0)
})

t.test('a session that never finishes the close handshake is terminated at the deadline', async (t) => {
  const gw = await build(t, { env: { SHUTDOWN_TIMEOUT_MS: '200' } })
  const { client } = await TestClient.connect(gw.wsUrl, { token: userToken('alice') })
  const cut = serverClosed(gw, 'alice')
  client.ws.pause()
  const started = Date.now()
  await gw.app.close()
  t.ok(Date.now() - started >= 190, 'close waited for the deadline')
  await cut
  t.equal(gw.app.sessions.size, 0, 'the session is gone')
  client.ws.resume()
  t.equal((await client.waitClosed()).code, 1001, 'the close frame sent before the cut still arrives')
})

t.test('with Redis, /ready tells whether the bus is up', async (t) => {
  const redis = await RedisServer.start(t)
  const gw = await build(t, { env: { REDIS_URL: redis.url }, redisPrefix: `health-${process.pid}:` })
  await waitForStatus(`${gw.url}/ready`, 200)
  t.equal(sample(await scrape(gw), 'ws_bus_connected'), 1, 'ws_bus_connected 1')
  await redis.stop()
  await waitForStatus(`${gw.url}/ready`, 503)
  const res = await fetch(`${gw.url}/ready`)
  t.same(await res.json(), { status: 'bus_unavailable' })
  t.equal(sample(await scrape(gw), 'ws_bus_connected'), 0, 'ws_bus_connected 0 during the outage')
  t.equal((await fetch(`${gw.url}/health`)).status, 200, '/health stays 200')
  await redis.start()
  await waitForStatus(`${gw.url}/ready`, 200)
  t.equal(sample(await scrape(gw), 'ws_bus_connected'), 1, 'back to 1')
})

t.test('with Redis unreachable from the start, /ready is 503', async (t) => {
  const redis = await RedisServer.start(t)
  await redis.stop()
  const gw = await build(t, { env: { REDIS_URL: redis.url } })
  const res = await fetch(`${gw.url}/ready`)
  t.equal(res.status, 503)
  t.same(await res.json(), { status: 'bus_unavailable' })
})

t.test('/metrics exposes every contract metric with values matching what happened', async (t) => {
  const gw = await build(t, {
    env: { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1', MAX_CONNECTIONS_PER_IP: '3', ALLOWED_ORIGINS: 'https://app.example' }
  })
  const res = await fetch(`${gw.url}/metrics`)
  t.equal(res.status, 200)
  t.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/)
  const initial = await res.text()
  for (const name of METRIC_NAMES) t.match(initial, new RegExp(`^# TYPE ${name} `, 'm'), `${name} is exposed`)
  t.match(initial, /^# TYPE ws_connection_duration_seconds histogram$/m)
  t.match(initial, /^# TYPE ws_connections_active gauge$/m)
  t.match(initial, /^# TYPE ws_connections_total counter$/m)
  for (const result of RESULTS) t.equal(total(initial, result), 0, `ws_connections_total{result="${result}"} starts at 0`)
  t.equal(sample(initial, 'ws_connections_active'), 0)
  t.equal(sample(initial, 'ws_bus_connected'), 1, 'the in-process bus is always connected')
  t.equal(sample(initial, 'ws_connection_spike'), 0)
  t.equal(sample(initial, 'ws_connection_duration_seconds_count'), 0)

  const clients: TestClient[] = []
  t.teardown(() => Promise.all(clients.map((c) => c.close())))
  for (const user of ['alice', 'bob', 'carol']) clients.push((await TestClient.connect(gw.wsUrl, { token: userToken(user) })).client)
  const [alice] = clients
  let m = await scrape(gw)
  t.equal(sample(m, 'ws_connections_active'), 3, 'active = open sockets')
  t.equal(total(m, 'accepted'), 3)
  t.equal(sample(m, 'ws_messages_sent_total'), 3, 'one welcome each')

  t.equal((await TestClient.refused(gw.wsUrl)).status, 401)
  t.equal((await TestClient.refused(gw.wsUrl, { token: 'garbage' })).status, 401)
  t.equal((await TestClient.refused(gw.wsUrl, { token: userToken('dave'), headers: { origin: 'https://evil.example' } })).status, 403)
  t.equal((await TestClient.refused(gw.wsUrl, { token: userToken('alice') })).status, 429, 'alice: second attempt this minute')
  t.equal((await TestClient.refused(gw.wsUrl, { token: userToken('dave') })).status, 429, 'dave: fourth socket of this address')
  m = await scrape(gw)
  t.equal(total(m, 'unauthorized'), 2, 'unauthorized counts the 401 handshakes')
  t.equal(total(m, 'forbidden_origin'), 1)
  t.equal(total(m, 'rate_limited_user'), 1)
  t.equal(total(m, 'rate_limited_ip'), 1)
  t.equal(total(m, 'accepted'), 3, 'refusals are not accepted')
  t.equal(sample(m, 'ws_connections_active'), 3)

  const carolToken = userToken('carol', { iat: Math.floor(Date.now() / 1000) - 5 })
  const carolGone = serverClosed(gw, 'carol')
  const logout = await fetch(`${gw.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${carolToken}` } })
  t.equal(logout.status, 204)
  t.equal((await clients[2].waitClosed()).code, 4403)
  await carolGone
  t.equal((await TestClient.refused(gw.wsUrl, { token: carolToken })).status, 403, 'a revoked token')
  m = await scrape(gw)
  t.equal(total(m, 'revoked'), 1)
  t.equal(sample(m, 'ws_connections_active'), 2, 'the closed socket left the gauge')
  t.equal(sample(m, 'ws_connection_duration_seconds_count'), 1, 'its lifetime was observed')
  t.equal(sample(m, 'ws_connection_duration_seconds_bucket', '{le="+Inf"}'), 1)

  alice.send({ type: 'ping', id: 1 })
  t.match(await alice.next('pong'), { id: 1 })
  alice.send('not json')
  t.match(await alice.next('error'), { code: 'invalid_json' })
  alice.send({ type: 'subscribe' })
  t.match(await alice.next('error'), { code: 'unknown_type' })
  const published = await fetch(`${gw.url}/alerts`, {
    method: 'POST',
    headers: { authorization: `Bearer ${serviceToken()}`, 'content-type': 'application/json' },
    body: JSON.stringify({ target: { all: true }, severity: 'info', title: 'hello' })
  })
  t.equal(published.status, 202)
  await alice.next('alert')
  m = await scrape(gw)
  t.equal(sample(m, 'ws_messages_received_total'), 3, 'every client frame is counted')
  t.equal(sample(m, 'ws_messages_rejected_total', '{reason="invalid_json"}'), 1)
  t.equal(sample(m, 'ws_messages_rejected_total', '{reason="unknown_type"}'), 1)
  t.equal(sample(m, 'ws_messages_rejected_total', '{reason="invalid_message"}'), 0)
  // 3 welcomes + 1 pong + 2 errors + the alert to alice and bob.
  t.equal(sample(m, 'ws_messages_sent_total'), 8)
  t.equal(sample(m, 'ws_connection_spike'), 0)
})

t.test('default process metrics are collected unless turned off', async (t) => {
  const app = await buildApp(testConfig())
  t.teardown(() => app.close())
  const res = await app.inject('/metrics')
  t.equal(res.statusCode, 200)
  t.match(res.body, /^process_cpu_user_seconds_total /m)
  t.match(res.body, /^ws_connections_active /m)
  const gw = await build(t)
  t.notMatch(await scrape(gw), /process_cpu_user_seconds_total/, 'off in the test builds')
})

t.test('the metrics plugin alone collects the default metrics', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(metricsPlugin)
  await app.ready()
  t.match(await app.metrics.registry.metrics(), /^process_cpu_user_seconds_total /m)
})

t.test('a Host header that is not a host never reaches the CSP', async (t) => {
  const gw = await build(t)
  for (const host of ["evil.example; script-src 'unsafe-inline'", 'a b', 'x/y']) {
    const csp = await new Promise<string>((resolve, reject) => {
      httpRequest({ host: '127.0.0.1', port: gw.port, path: '/health', headers: { host } }, (res) => {
        res.resume()
        resolve(String(res.headers['content-security-policy']))
      }).on('error', reject).end()
    })
    t.same([...new Set(directive(csp, 'connect-src'))], ["'self'"], `${JSON.stringify(host)}: only 'self'`)
    t.same(directive(csp, 'script-src'), ["'self'"], 'no injected directive')
  }
})

t.test('security headers', async (t) => {
  const gw = await build(t)
  for (const path of ['/health', '/metrics', '/nope']) {
    const res = await fetch(`${gw.url}${path}`)
    t.equal(res.headers.get('x-content-type-options'), 'nosniff', `${path}: nosniff`)
    const csp = res.headers.get('content-security-policy') ?? ''
    t.same(directive(csp, 'connect-src'), ["'self'", `ws://127.0.0.1:${gw.port}`], `${path}: CSP connect-src 'self' (and its own socket origin)`)
    t.match(csp, /(^|;)\s*default-src 'self'(;|$)/)
    t.match(csp, /(^|;)\s*frame-ancestors 'none'(;|$)/)
    t.match(csp, /(^|;)\s*object-src 'none'(;|$)/)
    t.equal(res.headers.get('x-powered-by'), null, `${path}: no X-Powered-By`)
    t.equal(res.headers.get('strict-transport-security'), null, `${path}: no HSTS outside production`)
  }
})

t.test('production behind a TLS-terminating proxy: requests forwarded as http are refused', async (t) => {
  const gw = await build(t, { env: { NODE_ENV: 'production', TRUST_PROXY: 'true', SINGLE_INSTANCE: 'true' } })
  const upgradeSockets: Socket[] = []
  gw.app.server.prependListener('upgrade', (_request: unknown, socket: Socket) => { upgradeSockets.push(socket) })
  const health = await fetch(`${gw.url}/health`)
  t.equal(health.status, 200, 'probes are reached directly')
  t.match(health.headers.get('strict-transport-security'), /max-age=31536000; includeSubDomains/, 'HSTS in production')
  t.same(directive(health.headers.get('content-security-policy'), 'connect-src'), ["'self'", `wss://127.0.0.1:${gw.port}`], 'wss only for https pages')
  t.equal((await fetch(`${gw.url}/ready`)).status, 200)
  t.equal((await fetch(`${gw.url}/metrics`)).status, 200)

  const alert = JSON.stringify({ target: { all: true }, severity: 'info', title: 'hi' })
  const post = (proto?: string) => fetch(`${gw.url}/alerts`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${serviceToken()}`,
      'content-type': 'application/json',
      ...(proto === undefined ? {} : { 'x-forwarded-proto': proto })
    },
    body: alert
  })
  t.equal((await post()).status, 403, 'no forwarded proto: plain http')
  t.equal((await post('http')).status, 403, 'forwarded as http')
  t.equal((await post('https')).status, 202, 'forwarded as https')
  t.equal((await fetch(`${gw.url}/nope`)).status, 403, 'an unknown path is not a probe')

  const { client, welcome } = await TestClient.connect(gw.wsUrl, { token: userToken('alice'), headers: { 'x-forwarded-proto': 'https' } })
  t.equal(welcome.userId, 'alice', 'wss through the proxy')
  await client.close()

  const upgrade = await rawUpgrade(gw.port, `/ws?token=${userToken('bob')}`, ['X-Forwarded-Proto: http'])
  t.equal(upgrade.status, 403, 'an upgrade forwarded as http -> 403')
  upgrade.socket.end()
  t.ok(await within(upgrade.closed, 2000), 'the refused upgrade connection is closed')
  const closing = gw.app.close()
  t.ok(await within(closing, 3000), 'and does not hold the shutdown')
  for (const socket of upgradeSockets) socket.destroy()
  await closing
})

t.test('TLS_CERT_FILE / TLS_KEY_FILE: HTTPS and wss served directly', async (t) => {
  const dir = t.testdir()
  const cert = join(dir, 'cert.pem')
  const key = join(dir, 'key.pem')
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1',
    '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', key, '-out', cert
  ], { stdio: 'ignore' })
  const gw = await build(t, { env: { NODE_ENV: 'production', TLS_CERT_FILE: cert, TLS_KEY_FILE: key, SINGLE_INSTANCE: 'true' } })
  const ca = readFileSync(cert)
  const answer = await new Promise<{ status?: number, hsts?: string | string[], csp: string | null, body: string }>((resolve, reject) => {
    const req = httpsRequest({ host: '127.0.0.1', port: gw.port, path: '/health', ca }, (res) => {
      let body = ''
      res.on('data', (c: Buffer) => { body += c.toString() })
      res.on('end', () => resolve({ status: res.statusCode, hsts: res.headers['strict-transport-security'], csp: String(res.headers['content-security-policy']), body }))
    })
    req.on('error', reject)
    req.end()
  })
  t.equal(answer.status, 200)
  t.same(JSON.parse(answer.body), { status: 'ok' })
  t.match(answer.hsts, /max-age=31536000/)
  t.same(directive(answer.csp, 'connect-src'), ["'self'", `wss://127.0.0.1:${gw.port}`], 'wss for the https page')
  const { client, welcome } = await TestClient.connect(`wss://127.0.0.1:${gw.port}/ws`, { token: userToken('alice'), ca })
  t.teardown(() => client.close())
  t.equal(welcome.userId, 'alice')
})
