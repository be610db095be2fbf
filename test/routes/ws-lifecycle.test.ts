import { randomBytes, randomUUID } from 'node:crypto'
import { once } from 'node:events'
import { connect as netConnect, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import t, { type Test as Tap } from 'tap'
import WebSocket from 'ws'
import { build, type Built } from '../helpers/build.js'
import { RedisServer } from '../helpers/redis-server.js'
import { newUser, nowSec, serviceToken, signJwt, userToken } from '../helpers/tokens.js'
import { waitUntil, withTimeout } from '../helpers/timeout.js'
import { TestClient } from '../helpers/ws-client.js'

// Heartbeat, re-auth and expiry rounds run in real time: about 20 s alone, more on a busy machine.
t.setTimeout(120_000)

/** A client that never answers WebSocket pings (ws >= 8.16: autoPong). */
async function connectSilent (wsUrl: string, token: string): Promise<TestClient> {
  const ws = new WebSocket(TestClient.url(wsUrl, token), { autoPong: false, perMessageDeflate: false })
  const client = new TestClient(ws)
  await withTimeout(once(ws, 'open'), 5000, 'the upgrade')
  await client.next('welcome')
  return client
}

/** Counts WebSocket pings; the result resolves once `n` have arrived in total. */
function pings (client: TestClient): (n: number, ms: number) => Promise<void> {
  let count = 0
  const waiters: Array<{ n: number, wake: () => void }> = []
  client.ws.on('ping', () => {
    count++
    for (const waiter of waiters.filter((w) => count >= w.n)) {
      waiters.splice(waiters.indexOf(waiter), 1)
      waiter.wake()
    }
  })
  return async (n, ms) => {
    if (count >= n) return
    await withTimeout(new Promise<void>((resolve) => waiters.push({ n, wake: resolve })), ms, `${n} pings`)
  }
}

async function post (url: string, token: string, body?: unknown): Promise<{ status: number, body: string }> {
  const res = await fetch(url, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(5000)
  })
  return { status: res.status, body: await res.text() }
}

function upgradeRequest (port: number, token: string): string {
  return `GET /ws?token=${token} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n\r\n`
}

/**
 * A raw TCP client that completes the upgrade and then never answers
 * anything: not pings, not the server's close frame.
 */
async function connectStubborn (port: number, token: string): Promise<{ socket: Socket, ended: Promise<unknown> }> {
  const socket = netConnect(port, '127.0.0.1')
  socket.on('error', () => {})
  const ended = once(socket, 'close')
  let head = ''
  await withTimeout(new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      head += chunk.toString('latin1')
      if (head.includes('\r\n\r\n')) {
        if (head.startsWith('HTTP/1.1 101')) resolve()
        else reject(new Error(head.split('\r\n')[0]))
      }
    })
    socket.write(upgradeRequest(port, token))
  }), 5000, 'the upgrade')
  return { socket, ended }
}

t.test('a second connection of the same user closes the first with 4409', async (t) => {
  const { app, wsUrl } = await build(t)
  const sub = newUser()
  // Same exp: both sessions share a deadline bucket until the first leaves.
  const exp = nowSec() + 600
  const first = await TestClient.connect(wsUrl, { token: userToken(sub, { exp }) })
  const second = await TestClient.connect(wsUrl, { token: userToken(sub, { exp }) })
  t.equal((await first.client.waitClosed()).code, 4409, 'the older connection is replaced')
  t.same(await second.client.pingPong('after'), { type: 'pong', id: 'after' }, 'the newer one stays open')
  t.not(second.welcome.connectionId, first.welcome.connectionId)
  t.same(app.sessions.sessionsOf(sub).map((s) => s.id), [second.welcome.connectionId], 'the registry holds only the newer session')
  t.equal(app.sessions.size, 1, 'and nothing else')

  const other = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
  t.same(await second.client.pingPong('other-user'), { type: 'pong', id: 'other-user' }, 'another user does not replace it')
  await other.client.close()
  await second.client.close()
  await waitUntil(() => app.sessions.size === 0, 5000, 'the sessions to be removed')
  t.same(app.sessions.sessionsOf(sub), [], 'no session of the user is left')
})

t.test('MAX_CONNECTIONS_PER_USER=2: the third connection closes the first', async (t) => {
  const { wsUrl } = await build(t, { env: { MAX_CONNECTIONS_PER_USER: '2' } })
  const sub = newUser()
  const one = await TestClient.connect(wsUrl, { token: userToken(sub) })
  const two = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.same(await one.client.pingPong('a'), { type: 'pong', id: 'a' }, 'two connections are allowed')
  const three = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.equal((await one.client.waitClosed()).code, 4409, 'the oldest is replaced')
  t.same(await two.client.pingPong('b'), { type: 'pong', id: 'b' }, 'the second stays open')
  t.same(await three.client.pingPong('c'), { type: 'pong', id: 'c' }, 'the third stays open')
  await two.client.close()
  const four = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.same(await three.client.pingPong('d'), { type: 'pong', id: 'd' }, 'a closed connection frees its place')
  t.same(await four.client.pingPong('e'), { type: 'pong', id: 'e' })
  await three.client.close()
  await four.client.close()
})

t.test('while a replaced connection finishes closing, alerts for the user reach the new one only', async (t) => {
  const { url, port, wsUrl } = await build(t)
  const sub = newUser()
  const stubborn = await connectStubborn(port, userToken(sub))
  const { client } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  const published = await post(`${url}/alerts`, serviceToken(), { target: { userId: sub }, severity: 'info', title: 'hello' })
  t.equal(published.status, 202)
  t.equal(JSON.parse(published.body).delivered, 1, 'one socket written: the closing one is skipped')
  t.match(await client.next('alert'), { type: 'alert', title: 'hello' })

  const bystander = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
  const broadcast = await post(`${url}/alerts`, serviceToken(), { target: { all: true }, severity: 'warning', title: 'everyone' })
  t.equal(JSON.parse(broadcast.body).delivered, 2, 'a broadcast skips the closing socket too')
  t.match(await client.next('alert'), { type: 'alert', title: 'everyone' })
  t.match(await bystander.client.next('alert'), { type: 'alert', title: 'everyone' })
  const nobody = await post(`${url}/alerts`, serviceToken(), { target: { userId: newUser() }, severity: 'info', title: 'nobody' })
  t.equal(JSON.parse(nobody.body).delivered, 0, 'a user without sessions here')
  await bystander.client.close()
  stubborn.socket.destroy()
  await client.close()
})

t.test('heartbeat: a client that never answers pings is terminated, an answering one stays open', async (t) => {
  const interval = 200
  const { wsUrl } = await build(t, { env: { HEARTBEAT_INTERVAL_MS: String(interval) } })
  const answering = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
  const answeringPings = pings(answering.client)
  const openedAt = Date.now()
  const silent = await connectSilent(wsUrl, userToken(newUser()))
  const silentPings = pings(silent)

  await silentPings(1, interval * 2)
  const closed = await silent.waitClosed(interval * 2 + 500)
  t.equal(closed.code, 1006, 'terminated without a close frame')
  t.ok(Date.now() - openedAt <= interval * 2 + 500, `within two intervals (+ margin): ${Date.now() - openedAt} ms`)

  // Three pings to the answering client span two full intervals: each time
  // its previous ping had been answered, so it was not terminated.
  await answeringPings(3, interval * 4)
  t.equal(answering.client.ws.readyState, WebSocket.OPEN, 'the answering client is still open')
  t.same(await answering.client.pingPong('alive'), { type: 'pong', id: 'alive' })
  await answering.client.close()
})

t.test('re-authentication', async (t) => {
  const reauthMs = 300
  const graceMs = 300
  const { wsUrl } = await build(t, { env: { REAUTH_INTERVAL_MS: String(reauthMs), REAUTH_GRACE_MS: String(graceMs) } })

  t.test('answering with a fresh token of the same sub keeps the session', async (t) => {
    // A grace of its own, long: a turn of a loaded CI machine can take longer
    // than 300 ms, and a request comes only after the previous answer was taken.
    const longGraceMs = 5000
    const { wsUrl } = await build(t, { env: { REAUTH_INTERVAL_MS: String(reauthMs), REAUTH_GRACE_MS: String(longGraceMs) } })
    const sub = newUser()
    const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub) })
    t.equal(welcome.reauthMs, reauthMs)
    for (let round = 1; round <= 3; round++) {
      const request = await client.next('reauth', reauthMs * 4)
      t.same(request, { type: 'reauth', deadlineMs: longGraceMs }, `reauth request #${round}`)
      client.send({ type: 'auth', token: userToken(sub) })
    }
    t.same(await client.pingPong('still'), { type: 'pong', id: 'still' }, 'open after three rounds')
    await client.close()
  })

  t.test('not answering closes with 4401 after the grace period', async (t) => {
    const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
    await client.next('reauth', reauthMs * 4)
    const askedAt = Date.now()
    t.equal((await client.waitClosed(graceMs * 4)).code, 4401)
    t.ok(Date.now() - askedAt >= graceMs - 50, 'not before the grace period is over')
  })

  t.test('answering with a token of another sub closes with 4401', async (t) => {
    const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
    await client.next('reauth', reauthMs * 4)
    client.send({ type: 'auth', token: userToken(newUser()) })
    t.equal((await client.waitClosed()).code, 4401)
  })

  t.test('answering with an invalid token closes with 4401', async (t) => {
    const sub = newUser()
    const invalid: Array<[string, string]> = [
      ['wrong key', signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600 }, { key: 'another-secret-that-is-long-enough-too!!' })],
      ['alg none', signJwt({ sub, iat: nowSec(), exp: nowSec() + 3600 }, { alg: 'none' })],
      ['expired', userToken(sub, { iat: nowSec() - 7200, exp: nowSec() - 60 })],
      ['garbage', 'garbage']
    ]
    for (const [name, token] of invalid) {
      const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
      client.send({ type: 'auth', token })
      t.equal((await client.waitClosed()).code, 4401, name)
    }
  })

  t.test('auth may be sent at any time, and moves the next request', async (t) => {
    const sub = newUser()
    const { client } = await TestClient.connect(wsUrl, { token: userToken(sub) })
    // iat is optional in a token.
    client.send({ type: 'auth', token: signJwt({ sub, exp: nowSec() + 3600 }) })
    client.send({ type: 'ping', id: 'refreshed' })
    t.same(await client.next(), { type: 'pong', id: 'refreshed' }, 'no error, no reauth request in reply')
    const first = await client.next('reauth', reauthMs * 4)
    t.same(first, { type: 'reauth', deadlineMs: graceMs })
    client.send({ type: 'auth', token: userToken(sub) })
    await client.next('reauth', reauthMs * 4)
    client.send({ type: 'auth', token: userToken(sub) })
    t.same(await client.pingPong('ok'), { type: 'pong', id: 'ok' })
    await client.close()
  })

  // Regression: the re-auth deadline closed the session with 4401 while
  // the `auth` it answered in time was still being checked (a revocation
  // read stalled on Redis).
  t.test('an answer sent in time is waited for past the deadline while its check is out', async (t) => {
    const gw = await build(t, { env: { REAUTH_INTERVAL_MS: String(reauthMs), REAUTH_GRACE_MS: String(graceMs) } })
    const sub = newUser()
    const { client } = await TestClient.connect(gw.wsUrl, { token: userToken(sub) })
    const revocations = gw.app.cluster.revocations
    const read = revocations.revokedBefore.bind(revocations)
    let releaseCheck = (): void => {}
    const checking = new Promise<void>((resolve) => {
      revocations.revokedBefore = async (userId) => {
        resolve()
        await new Promise<void>((resolve) => { releaseCheck = resolve })
        return await read(userId)
      }
    })
    t.teardown(() => { revocations.revokedBefore = read; releaseCheck() })
    await client.next('reauth', reauthMs * 4)
    const deadline = Date.now() + graceMs
    client.send({ type: 'auth', token: userToken(sub) })
    await checking
    // Well past the deadline and a few turns of the deadline wheel (100 ms).
    await new Promise((resolve) => setTimeout(resolve, deadline - Date.now() + 400))
    t.equal(client.ws.readyState, client.ws.OPEN, 'not closed while its answer is checked')
    revocations.revokedBefore = read
    releaseCheck()
    t.same(await client.pingPong('kept'), { type: 'pong', id: 'kept' }, 'the check passed: the session stays')
    await client.close()
  })

  t.test('a frame that closes the socket while a re-auth is being checked wins', async (t) => {
    const sub = newUser()
    const { client } = await TestClient.connect(wsUrl, { token: userToken(sub) })
    const socket = (client.ws as unknown as { _socket: Socket })._socket
    socket.cork()
    client.send({ type: 'auth', token: userToken(sub) })
    client.ws.send(Buffer.from('x'), { binary: true })
    socket.uncork()
    t.equal((await client.waitClosed()).code, 1003)
  })
})

t.test('a token that expires closes its session with 4401 within a second of exp; a refresh keeps it open', async (t) => {
  const { wsUrl } = await build(t)
  const exp = nowSec() + 2
  const expiring = await TestClient.connect(wsUrl, { token: userToken(newUser(), { exp }) })
  const refreshedSub = newUser()
  const refreshed = await TestClient.connect(wsUrl, { token: userToken(refreshedSub, { exp }) })
  refreshed.client.send({ type: 'auth', token: userToken(refreshedSub) })
  t.same(await refreshed.client.pingPong('refreshed'), { type: 'pong', id: 'refreshed' })

  const closed = await expiring.client.waitClosed(5000)
  const closedAt = Date.now()
  t.equal(closed.code, 4401)
  t.ok(closedAt >= exp * 1000, 'not before exp')
  t.ok(closedAt <= exp * 1000 + 1000, `within a second of exp (${closedAt - exp * 1000} ms after)`)
  // Both sessions had the same deadline: the refreshed one is past it now.
  t.same(await refreshed.client.pingPong('after-exp'), { type: 'pong', id: 'after-exp' }, 'the refreshed session is still open')
  await refreshed.client.close()
})

t.test('a token accepted within the clock tolerance but already expired is closed at once', async (t) => {
  const { wsUrl } = await build(t, { env: { JWT_CLOCK_TOLERANCE_SECONDS: '5' } })
  const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser(), { exp: nowSec() - 2 }) })
  t.equal((await client.waitClosed(1000)).code, 4401)
})

t.test('logout', async (t) => {
  const { url, wsUrl } = await build(t, { env: { MAX_CONNECTIONS_PER_USER: '3' } })
  const sub = newUser()
  const old = userToken(sub)
  const withIat = await TestClient.connect(wsUrl, { token: old })
  const withoutIat = await TestClient.connect(wsUrl, { token: signJwt({ sub, exp: nowSec() + 3600 }) })
  const issuedLater = await TestClient.connect(wsUrl, { token: userToken(sub, { iat: nowSec() + 5 }) })
  const bystander = await TestClient.connect(wsUrl, { token: userToken(newUser()) })

  t.equal((await post(`${url}/auth/logout`, old)).status, 204)
  t.equal((await withIat.client.waitClosed()).code, 4403, 'the session of the token used to log out')
  t.equal((await withoutIat.client.waitClosed()).code, 4403, 'a session whose token has no iat')
  t.same(await issuedLater.client.pingPong('later'), { type: 'pong', id: 'later' }, 'a token issued after the logout second is not revoked')
  t.same(await bystander.client.pingPong('other'), { type: 'pong', id: 'other' }, 'other users are not affected')

  t.equal((await TestClient.refused(wsUrl, { token: old })).status, 403, 'the old token is refused at the handshake')
  t.equal((await post(`${url}/auth/logout`, old)).status, 403, 'and at the logout route')

  issuedLater.client.send({ type: 'auth', token: old })
  t.equal((await issuedLater.client.waitClosed()).code, 4403, 're-auth with a token issued before the logout')

  const fresh = await TestClient.connect(wsUrl, { token: userToken(sub, { iat: nowSec() + 1 }) })
  t.equal(fresh.welcome.userId, sub, 'a token with iat one second later is accepted')
  await fresh.client.close()
  await bystander.client.close()

  t.equal((await post(`${url}/auth/logout`, 'garbage')).status, 401, 'logout needs a valid token')
  const idle = newUser()
  t.equal((await post(`${url}/auth/logout`, userToken(idle))).status, 204, 'a user without open sessions can log out')
  t.equal((await TestClient.refused(wsUrl, { token: userToken(idle, { iat: nowSec() - 1 }) })).status, 403, 'and its earlier tokens are revoked')
})

t.test('a client that resets TCP mid-handshake does not crash the process or leak its place', async (t) => {
  const { url, port, wsUrl } = await build(t, { env: { MAX_CONNECTIONS_PER_IP: '1' } })
  const sub = newUser()

  const partial = netConnect(port, '127.0.0.1')
  await once(partial, 'connect')
  partial.write(upgradeRequest(port, userToken(sub)).slice(0, 40))
  partial.resetAndDestroy()

  const full = netConnect(port, '127.0.0.1')
  full.on('error', () => {})
  await once(full, 'connect')
  full.write(upgradeRequest(port, userToken(sub)))
  full.resetAndDestroy()

  const upgraded = await connectStubborn(port, userToken(sub))
  upgraded.socket.resetAndDestroy()
  await upgraded.ended

  const res = await fetch(`${url}/health`, { signal: AbortSignal.timeout(5000) })
  t.equal(res.status, 200, '/health answers')
  // MAX_CONNECTIONS_PER_IP=1: this succeeds only once every reset socket freed its slot.
  await waitUntil(async () => {
    const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) })).text()
    return /^ws_connections_active 0$/m.test(text)
  }, 5000, 'the reset sessions to be removed')
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.equal(welcome.userId, sub, 'the same user connects normally afterwards')
  t.same(await client.pingPong('x'), { type: 'pong', id: 'x' }, 'and is not replaced by a ghost of the reset handshakes')
  await client.close()
})

t.test('MAX_CONNECTIONS_PER_IP and MAX_CONNECT_ATTEMPTS_PER_MINUTE answer 429', async (t) => {
  const { app, url, wsUrl } = await build(t, { env: { MAX_CONNECTIONS_PER_IP: '1', MAX_CONNECT_ATTEMPTS_PER_MINUTE: '2' } })
  const sub = newUser()
  const first = await TestClient.connect(wsUrl, { token: userToken(sub) })
  const refusal = await TestClient.refused(wsUrl, { token: userToken(newUser()) })
  t.equal(refusal.status, 429, 'a second concurrent connection from the address')
  t.ok(Number(refusal.headers['retry-after']) > 0, 'with Retry-After')
  await first.client.close()
  await waitUntil(() => app.sessions.size === 0, 5000, 'the session to be removed')
  const second = await TestClient.connect(wsUrl, { token: userToken(sub) })
  await second.client.close()
  const third = await TestClient.refused(wsUrl, { token: userToken(sub) })
  t.equal(third.status, 429, 'a third attempt of the user within a minute')
  t.ok(Number(third.headers['retry-after']) > 0, 'with Retry-After')
  t.equal((await post(`${url}/auth/logout`, userToken(sub))).status, 204)
  const revoked = await TestClient.refused(wsUrl, { token: userToken(sub, { iat: nowSec() - 1 }) })
  t.equal(revoked.status, 403, 'a revoked token over the attempt limit: the revocation answers')
})

t.test('refused tokens do not use up the user\'s connect attempts', async (t) => {
  const { url, wsUrl } = await build(t, { env: { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '2' } })
  const sub = newUser()
  const old = userToken(sub, { iat: nowSec() - 1 })
  t.equal((await post(`${url}/auth/logout`, old)).status, 204)
  for (let i = 0; i < 3; i++) {
    t.equal((await TestClient.refused(wsUrl, { token: old })).status, 403, `revoked attempt ${i + 1}`)
    t.equal((await TestClient.refused(wsUrl, { token: signJwt({ sub, exp: nowSec() - 60 }) })).status, 401, `expired attempt ${i + 1}`)
  }
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub, { iat: nowSec() + 1 }) })
  t.equal(welcome.userId, sub, 'the next login connects')
  await client.close()
})

t.test('shutdown: open sessions get 1001, a client that does not close is terminated at the deadline', async (t) => {
  // REAUTH_INTERVAL_MS: the stubborn session's re-auth falls due while it is closing.
  const { app, port, wsUrl } = await build(t, { env: { SHUTDOWN_TIMEOUT_MS: '600', REAUTH_INTERVAL_MS: '300' } })
  const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
  const stubborn = await connectStubborn(port, userToken(newUser()))
  const startedAt = Date.now()
  const closing = app.close()
  t.equal((await client.waitClosed()).code, 1001, 'open sessions are told to go elsewhere')
  await withTimeout(closing, 3000, 'app.close()')
  await withTimeout(stubborn.ended, 1000, 'the stubborn socket to be terminated')
  t.ok(Date.now() - startedAt >= 600 - 50, 'the stubborn client had until SHUTDOWN_TIMEOUT_MS')
})

t.test('an upgrade arriving while sessions drain is refused 503, counted, and does not hold up the shutdown', async (t) => {
  const { app, port, wsUrl } = await build(t, { env: { SHUTDOWN_TIMEOUT_MS: '600' } })
  // Every server-side socket, so a failure here cannot hang the suite.
  const serverSockets = new Set<Socket>()
  app.server.on('connection', (socket: Socket) => serverSockets.add(socket))
  t.teardown(() => { for (const socket of serverSockets) socket.destroy() })

  const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
  const stubborn = await connectStubborn(port, userToken(newUser()))
  const closing = app.close()
  t.equal((await client.waitClosed()).code, 1001)

  const late = netConnect(port, '127.0.0.1')
  late.on('error', () => {})
  const lateClosed = once(late, 'close')
  let answer = ''
  late.on('data', (chunk: Buffer) => { answer += chunk.toString('latin1') })
  late.write(upgradeRequest(port, userToken(newUser())))
  await waitUntil(() => answer.includes('\r\n\r\n'), 5000, 'the answer to the late upgrade')
  t.match(answer, /^HTTP\/1\.1 503 /, '503 while draining')
  t.match(answer, /\r\nconnection: close\r\n/i, 'with Connection: close')
  await t.resolves(withTimeout(lateClosed, 1000, 'the server to close the refused socket'), 'the server closes the refused socket')
  late.destroy()

  await t.resolves(withTimeout(closing, 3000, 'app.close()'), 'close() finishes once the drain deadline passed')
  for (const socket of serverSockets) socket.destroy()
  await closing
  stubborn.socket.destroy()
  const shuttingDown = (await app.metrics.connectionsTotal.get()).values.find((v) => v.labels.result === 'shutting_down')
  t.equal(shuttingDown?.value, 1, 'counted as ws_connections_total{result="shutting_down"}')
})

t.test('a client that does not read is closed with 1013 when its send buffer is over the cap', async (t) => {
  const { url, wsUrl } = await build(t, { env: { SEND_BUFFER_MAX_BYTES: '1024', REST_RATE_LIMIT_PER_MINUTE: '100000' } })
  const sub = newUser()
  const { client } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  client.ws.pause()
  const alert = { target: { userId: sub }, severity: 'info', title: 'big', data: { blob: 'x'.repeat(60000) } }
  let status = 202
  let delivered = 1
  let sent = 0
  while (status === 202 && delivered === 1 && sent < 2000) {
    const res = await post(`${url}/alerts`, serviceToken(), alert)
    status = res.status
    if (status === 202) delivered = JSON.parse(res.body).delivered
    sent++
  }
  t.equal(status, 202)
  t.equal(delivered, 0, `the gateway stopped writing to the socket (after ${sent} alerts)`)
  client.ws.resume()
  t.equal((await client.waitClosed(10000)).code, 1013)
})

t.test('with Redis', async (t) => {
  const redis = await RedisServer.start(t)
  const admin = new Redis(redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 })
  admin.on('error', () => {})
  await admin.connect()
  t.teardown(() => { admin.disconnect() })

  async function buildClustered (t: Tap, env: Record<string, string> = {}, prefix = `t-${randomUUID()}:`, url = redis.url): Promise<Built> {
    const built = await build(t, { env: { REDIS_URL: url, ...env }, redisPrefix: prefix })
    await waitUntil(() => built.app.cluster.broker.connected, 5000, 'the bus to connect')
    return built
  }

  /**
   * Starts an upgrade that stays inside the handshake: Redis holds back write
   * commands (the attempt counter) until `release` is called.
   */
  async function stuckHandshake (app: FastifyInstance, port: number, token: string): Promise<{ socket: Socket, release: () => Promise<void> }> {
    await admin.call('CLIENT', 'PAUSE', '10000', 'WRITE')
    const socket = netConnect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.write(upgradeRequest(port, token))
    await waitUntil(() => app.lifecycle.pendingHandshakes === 1, 5000, 'the handshake to be pending')
    return { socket, release: async () => { await admin.call('CLIENT', 'UNPAUSE') } }
  }

  t.test('a client that resets TCP while its handshake waits on Redis leaves no slot or subscription behind', async (t) => {
    const prefix = `t-${randomUUID()}:`
    const { app, port, wsUrl } = await buildClustered(t, {}, prefix)
    const sub = newUser()
    const stuck = await stuckHandshake(app, port, userToken(sub))
    t.teardown(() => stuck.release())
    stuck.socket.resetAndDestroy()
    await waitUntil(() => app.lifecycle.pendingHandshakes === 0, 5000, 'the server to see the reset')
    await stuck.release()
    // This handshake's Redis commands queue behind the abandoned one's: once
    // it is through, so is the abandoned handshake.
    const { client } = await TestClient.connect(wsUrl, { token: userToken(sub) })
    t.same(await client.pingPong('x'), { type: 'pong', id: 'x' })
    await client.close()
    await waitUntil(() => app.sessions.size === 0, 5000, 'the session to be removed')

    const slotsHeld = async (): Promise<number> => {
      let n = 0
      for (const key of await admin.keys(`${prefix}ip:*`)) n += await admin.zcard(key)
      return n
    }
    const subscribers = async (): Promise<number> => {
      const [, count] = await admin.call('PUBSUB', 'NUMSUB', `${prefix}user:{${sub}}`) as [string, number]
      return count
    }
    await t.resolves(waitUntil(async () => await slotsHeld() === 0, 2000, 'every address slot to be released'), 'no address slot is held')
    await t.resolves(waitUntil(async () => await subscribers() === 0, 2000, 'the user channel to be unsubscribed'), 'the user channel is unsubscribed')
  })

  t.test('HANDSHAKE_CONCURRENCY: upgrades wait their turn, and one whose client left while it waited does no work', async (t) => {
    const prefix = `t-${randomUUID()}:`
    const { app, port, wsUrl } = await buildClustered(t, { HANDSHAKE_CONCURRENCY: '1' }, prefix)
    const stuck = await stuckHandshake(app, port, userToken(newUser()))
    t.teardown(() => stuck.release())
    // Behind the one turn: an upgrade whose client gives up, then one that waits.
    const leaver = newUser()
    const leaving = netConnect(port, '127.0.0.1')
    leaving.on('error', () => {})
    leaving.write(upgradeRequest(port, userToken(leaver)))
    await waitUntil(() => app.lifecycle.pendingHandshakes === 2, 5000, 'the second upgrade to be pending')
    const waiter = newUser()
    const third = TestClient.connect(wsUrl, { token: userToken(waiter) })
    await waitUntil(() => app.lifecycle.pendingHandshakes === 3, 5000, 'the third upgrade to be pending')
    const waiting = async (): Promise<number | undefined> => (await app.metrics.handshakesWaiting.get()).values[0]?.value
    t.equal(await waiting(), 2, 'ws_handshakes_waiting counts both')
    leaving.resetAndDestroy()
    await waitUntil(() => app.lifecycle.pendingHandshakes === 2, 5000, 'the server to see the reset')
    await stuck.release()
    const { client } = await third
    t.same(await client.pingPong('x'), { type: 'pong', id: 'x' }, 'the waiting upgrade was served once the turn came back')
    t.equal(await waiting(), 0, 'and none waits any more')
    // The attempt counter is the first write of a handshake: the upgrade
    // that left while it waited never got that far.
    const counted = await admin.keys(`${prefix}rl:*`)
    t.ok(counted.some((key) => key.endsWith(`:${waiter}`)), 'the served upgrade counted an attempt')
    t.notOk(counted.some((key) => key.endsWith(`:${leaver}`)), 'the one that left while waiting did not')
    stuck.socket.destroy()
    await client.close()
    await waitUntil(() => app.lifecycle.pendingHandshakes === 0, 5000, 'every handshake to settle')
  })

  t.test('an upgrade whose turn comes after the instance began to drain is 503', async (t) => {
    const { app, port, wsUrl } = await buildClustered(t, { HANDSHAKE_CONCURRENCY: '1' })
    const stuck = await stuckHandshake(app, port, userToken(newUser()))
    t.teardown(() => stuck.release())
    const refused = TestClient.refused(wsUrl, { token: userToken(newUser()) })
    await waitUntil(() => app.lifecycle.pendingHandshakes === 2, 5000, 'the second upgrade to wait its turn')
    // What a graceful shutdown does first (drain()).
    app.lifecycle.phase = 'draining'
    await stuck.release()
    t.equal((await refused).status, 503)
    const shuttingDown = (await app.metrics.connectionsTotal.get()).values.find((v) => v.labels.result === 'shutting_down')
    t.equal(shuttingDown?.value, 1, 'counted as shutting_down')
    stuck.socket.destroy()
    await waitUntil(() => app.lifecycle.pendingHandshakes === 0, 5000, 'every handshake to settle')
  })

  t.test('MAX_PENDING_HANDSHAKES: an upgrade over the limit is 503', async (t) => {
    const { app, port, wsUrl } = await buildClustered(t, { MAX_PENDING_HANDSHAKES: '1' })
    const stuck = await stuckHandshake(app, port, userToken(newUser()))
    t.teardown(() => stuck.release())
    t.equal((await TestClient.refused(wsUrl, { token: userToken(newUser()) })).status, 503)
    const overloaded = (await app.metrics.connectionsTotal.get()).values.find((v) => v.labels.result === 'overloaded')
    t.equal(overloaded?.value, 1, 'counted as ws_connections_total{result="overloaded"}')
    await stuck.release()
    stuck.socket.destroy()
    await waitUntil(() => app.lifecycle.pendingHandshakes === 0, 5000, 'the pending handshake to finish')
    const { client } = await TestClient.connect(wsUrl, { token: userToken(newUser()) })
    await client.close()
  })

  t.test('while Redis is down an open session survives re-auth, new handshakes are 503', async (t) => {
    const own = await RedisServer.start(t)
    const { wsUrl } = await buildClustered(t, { REAUTH_INTERVAL_MS: '300', REAUTH_GRACE_MS: '300' }, undefined, own.url)
    const sub = newUser()
    const { client } = await TestClient.connect(wsUrl, { token: userToken(sub) })
    await own.stop()
    await client.next('reauth', 2000)
    client.send({ type: 'auth', token: userToken(sub) })
    // Revocation fails closed: the new token is not taken, yet the session
    // is not closed for it; it is asked again one grace period later.
    t.match(await client.next('error', 2000), { type: 'error', code: 'auth_failed' }, 'the answer is refused: its revocation cannot be read')
    t.match(await client.next('reauth', 2000), { type: 'reauth' }, 'a second re-auth request came instead of a 4401')
    client.send({ type: 'auth', token: userToken(sub) })
    t.match(await client.next('error', 2000), { code: 'auth_failed' })
    t.same(await client.pingPong('up'), { type: 'pong', id: 'up' })
    t.equal((await TestClient.refused(wsUrl, { token: userToken(newUser()) })).status, 503, 'a new handshake needs the bus')
    await client.close()
  })

  t.test('an address slot that cannot be taken answers 503 (Redis gone after the revocation check)', async (t) => {
    const own = await RedisServer.start(t)
    const { app, wsUrl } = await buildClustered(t, {}, undefined, own.url)
    await own.stop()
    // The revocation read answered just before Redis went away.
    app.cluster.revocations.revokedBefore = async () => null
    t.equal((await TestClient.refused(wsUrl, { token: userToken(newUser()) })).status, 503)
  })
})
