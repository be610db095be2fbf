import type { Socket } from 'node:net'
import t from 'tap'
import { buildApp } from '../../src/app.js'
import { build } from '../helpers/build.js'
import { testConfig } from '../helpers/config.js'
import { freePort } from '../helpers/free-port.js'
import { publish } from '../helpers/http.js'
import { newUser, nowSec, serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'
import { Proxy, Recorded, quietFor } from './harness.js'

/** A user id no other test uses: the gateway limits connect attempts per user. */
t.setTimeout(60_000)

/** Small delays so a wrong reconnect would show within QUIET_MS. */
const FAST = { baseMs: 10, capMs: 40 }
/** Ten times the backoff cap: long enough for any reconnect the client would make. */
const QUIET_MS = 400

t.test('4403 (logout): the client stops and reports logged-out; no further connect attempt', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), backoff: FAST })
  await rec.reached('open')
  const res = await fetch(`${gw.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${userToken(sub)}` } })
  t.equal(res.status, 204)
  t.equal((await rec.reached('logged-out')).code, 4403)
  t.equal(rec.client.state, 'logged-out')
  await quietFor(QUIET_MS)
  t.equal(rec.urls.length, 1, 'only the first connect was ever attempted')
  t.equal(rec.tokenCalls, 1, 'no token was fetched for a reconnect')
  t.notOk(rec.states.some((s) => s.state === 'reconnecting'), 'never reconnecting')
})

t.test('4409 (another tab took over): the client stops, unless told to reconnect', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), backoff: FAST })
  await rec.reached('open')
  const other = await TestClient.connect(gw.wsUrl, { token: userToken(sub) })
  t.teardown(() => other.client.close())
  t.equal((await rec.reached('closed')).code, 4409)
  t.match(rec.errors, [{ kind: 'closed', code: 4409, message: /replaced by a newer connection/ }])
  await quietFor(QUIET_MS)
  t.equal(rec.urls.length, 1, 'no reconnect: the newer connection keeps the session')

  t.ok(rec.client.reconnect(), 'reconnect() takes over again on purpose')
  await rec.reached('open', 2)
  t.equal((await other.client.waitClosed()).code, 4409, 'which replaces the other connection in turn')
})

t.test('4409 with reconnectOnReplaced: the client reconnects by itself', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), backoff: FAST, reconnectOnReplaced: true })
  await rec.reached('open')
  const other = await TestClient.connect(gw.wsUrl, { token: userToken(sub) })
  t.teardown(() => other.client.close())
  t.equal((await rec.reached('reconnecting')).code, 4409)
  await rec.reached('open', 2)
  t.equal((await other.client.waitClosed()).code, 4409)
  t.equal(rec.errors.length, 0, 'not reported as an error')
})

t.test('reauth is answered with a fresh token: the session lives on past several re-auth deadlines', async (t) => {
  // The grace is long: a turn of a loaded CI machine can take longer than a
  // short one, and the test does not need it short (see below).
  const gw = await build(t, { env: { REAUTH_INTERVAL_MS: '150', REAUTH_GRACE_MS: '5000' } })
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub) })
  await rec.reached('open')
  // The gateway asks again only after the previous answer was accepted;
  // an unanswered or refused request closes the socket with 4401 instead.
  // So three requests mean the first two answers were taken.
  await rec.until(() => rec.tokenCalls >= 4, 'three re-auth requests')
  t.equal(rec.urls.length, 1, 'one socket all along')
  t.same(rec.states.map((s) => s.state), ['connecting', 'open'], 'never closed')
  t.equal(gw.app.sessions.size, 1, 'the session is still registered')
})

t.test('4401 (token expired): the client fetches a fresh token, then reconnects', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  // The first token expires in a second or two; later ones live an hour.
  const tokens = [userToken(sub, { exp: nowSec() + 1 })]
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => tokens.shift() ?? userToken(sub), backoff: FAST })
  await rec.reached('open')
  const firstConnection = rec.client.welcome?.connectionId
  t.equal((await rec.reached('reconnecting', 1, 5000)).code, 4401)
  await rec.reached('open', 2)
  t.equal(rec.tokenCalls, 2, 'a fresh token for the reconnect')
  t.not(rec.urls[1], rec.urls[0], 'dialled with the new token')
  t.not(rec.client.welcome?.connectionId, firstConnection, 'a new session')
})

t.test('1001 (gateway shutting down): the client reconnects to the instance that takes its place', async (t) => {
  const port = await freePort()
  const first = await buildApp(testConfig(), { defaultMetrics: false })
  t.teardown(() => first.close())
  await first.listen({ host: '127.0.0.1', port })
  const second = await buildApp(testConfig(), { defaultMetrics: false })
  t.teardown(() => second.close())
  await second.ready()

  const sub = newUser('sdk')
  // Reconnects 150, 300, 500... ms after the 1001: after the old instance
  // stopped listening (see the test below for an attempt during the drain).
  const rec = new Recorded(t, {
    url: `ws://127.0.0.1:${port}/ws`,
    getToken: () => userToken(sub),
    backoff: { baseMs: 300, capMs: 1000 },
    random: () => 0.5
  })
  await rec.reached('open')
  await first.close()
  t.equal((await rec.reached('reconnecting')).code, 1001, 'told 1001 by the instance going away')
  await second.listen({ host: '127.0.0.1', port })
  await rec.reached('open', 2, 10000)
  t.equal(second.sessions.size, 1, 'connected to the new instance')

  const answer = await publish(`http://127.0.0.1:${port}`, serviceToken(), { target: { userId: sub }, severity: 'info', title: 'after the restart' })
  t.equal(answer.status, 202)
  await rec.until(() => rec.alerts.length === 1, 'the alert')
  t.equal(rec.alerts[0].title, 'after the restart')
})

t.test('1008 (message rate exceeded): reported, no reconnect loop', async (t) => {
  const gw = await build(t, { env: { MESSAGE_RATE_PER_SECOND: '1', MESSAGE_BURST: '1' } })
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), backoff: FAST })
  await rec.reached('open')
  for (let i = 0; i < 3; i++) rec.client.ack(`alert-${i}`)
  t.equal((await rec.reached('closed')).code, 1008)
  t.match(rec.errors, [{ kind: 'closed', code: 1008, message: /broke a rule, not reconnecting/ }])
  await quietFor(QUIET_MS)
  t.equal(rec.urls.length, 1, 'no reconnect')
})

t.test('1009 (message too big): reported, no reconnect loop', async (t) => {
  const gw = await build(t, { env: { WS_MAX_MESSAGE_BYTES: '64' } })
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), backoff: FAST })
  await rec.reached('open')
  t.ok(rec.client.ack('x'.repeat(100)), 'sent')
  t.equal((await rec.reached('closed')).code, 1009)
  t.match(rec.errors, [{ kind: 'closed', code: 1009 }])
  await quietFor(QUIET_MS)
  t.equal(rec.urls.length, 1, 'no reconnect')
})

// Regression: Fastify's 503-on-closing fast path runs no onResponse hook, so
// the upgrade socket was never destroyed and server.close() waited forever.
t.test('app.close() finishes when a client reconnects while the sessions drain', async (t) => {
  const port = await freePort()
  const app = await buildApp(testConfig({ SHUTDOWN_TIMEOUT_MS: '1000' }), { defaultMetrics: false })
  const sockets = new Set<Socket>()
  app.server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
  })
  await app.listen({ host: '127.0.0.1', port })
  // A session behind a dead link holds the drain open for SHUTDOWN_TIMEOUT_MS.
  const proxy = await Proxy.start(t, port)
  const holder = await TestClient.connect(`ws://127.0.0.1:${proxy.port}/ws`, { token: userToken(newUser('sdk')) })
  t.teardown(() => holder.client.ws.terminate())
  proxy.blackhole()

  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: `ws://127.0.0.1:${port}/ws`, getToken: () => userToken(sub), random: () => 0 })
  await rec.reached('open')
  const closing = app.close()
  t.equal((await rec.reached('reconnecting')).code, 1001)
  t.equal((await rec.reached('reconnecting', 2)).code, 1006, 'the reconnect during the drain is refused (503)')
  const outcome = await Promise.race([
    closing.then(() => 'closed'),
    new Promise((resolve) => setTimeout(resolve, 4000, 'still closing 3 s after SHUTDOWN_TIMEOUT_MS'))
  ])
  t.equal(outcome, 'closed', 'app.close() resolved')
  for (const socket of sockets) socket.destroy()
  await closing
})
