import { once } from 'node:events'
import { createServer, type Socket } from 'node:net'
import t from 'tap'
import WebSocket from 'ws'
import { build } from '../helpers/build.js'
import { publish } from '../helpers/http.js'
import { newUser, serviceToken, userToken } from '../helpers/tokens.js'
import { Proxy, Recorded, quietFor } from './harness.js'
import { waitUntil } from '../helpers/timeout.js'

t.setTimeout(60_000)

async function metric (url: string, line: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text()
  const found = text.split('\n').find((l) => l.startsWith(line + ' '))
  return found === undefined ? 0 : Number(found.split(' ')[1])
}

t.test('alerts arrive as typed events; ack() reaches the gateway', async (t) => {
  const gw = await build(t, { captureLogs: 'debug' })
  const sub = newUser('sdk')
  const seenByOption: string[] = []
  const states: string[] = []
  const rec = new Recorded(t, {
    url: gw.wsUrl,
    getToken: async () => userToken(sub),
    onAlert: (alert) => seenByOption.push(alert.title),
    onState: (change) => states.push(change.state),
    onError: () => t.fail('no error expected')
  })
  t.notOk(rec.client.ack('early'), 'ack() before the session is open: false, nothing sent')
  t.equal(rec.client.welcome, null)
  await rec.reached('open')
  t.match(rec.client.welcome, { type: 'welcome', userId: sub })
  t.same(states, ['connecting', 'open'], 'onState got the changes too')

  const answer = await publish(gw.url, serviceToken(), { target: { userId: sub }, severity: 'critical', title: 'Disk full', body: 'db-1', data: { host: 'db-1' } })
  await rec.until(() => rec.alerts.length === 1, 'the alert')
  t.match(rec.alerts[0], { type: 'alert', id: answer.body.id, severity: 'critical', title: 'Disk full', body: 'db-1', data: { host: 'db-1' } })
  t.same(seenByOption, ['Disk full'], 'onAlert got it too')

  t.ok(rec.client.ack(rec.alerts[0].id), 'ack() on an open session: true')
  await waitUntil(() => gw.logs.some((l) => l.includes('alert acknowledged') && l.includes(String(answer.body.id))), 5000, 'the ack in the gateway log')
  rec.client.close()
  t.notOk(rec.client.ack(rec.alerts[0].id), 'ack() after close(): false')
})

t.test('autoAck acknowledges every alert once the listeners ran', async (t) => {
  const gw = await build(t, { captureLogs: 'debug' })
  const sub = newUser('sdk')
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), autoAck: true })
  await rec.reached('open')
  const answer = await publish(gw.url, serviceToken(), { target: { all: true }, severity: 'info', title: 'hello' })
  await waitUntil(() => gw.logs.some((l) => l.includes('alert acknowledged') && l.includes(String(answer.body.id))), 5000, 'the ack in the gateway log')
  t.equal(rec.alerts.length, 1)
})

t.test('never more than 5 connect attempts in a minute, even when every attempt fails fast', async (t) => {
  const gw = await build(t)
  // An invalid token: the gateway answers 401, the client sees 1006 at once.
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => 'not-a-jwt', backoff: { baseMs: 5, capMs: 20 } })
  await rec.until(() => rec.urls.length === 5, 'five attempts')
  const waiting = await rec.reached('reconnecting', 5)
  t.equal(waiting.code, 1006)
  t.ok((waiting.retryInMs as number) > 55_000, `the sixth attempt is scheduled a minute after the first (in ${waiting.retryInMs} ms)`)
  t.ok(rec.client.reconnect(), 'reconnect() is accepted...')
  const deferred = rec.states[rec.states.length - 1]
  t.equal(deferred.state, 'reconnecting')
  t.ok((deferred.retryInMs as number) > 55_000, '...but waits for the attempt limit too')
  await quietFor(500) // 25 times the backoff cap
  t.equal(rec.urls.length, 5, 'no sixth attempt was made')
  t.equal(await metric(gw.url, 'ws_connections_total{result="unauthorized"}'), 5, 'the gateway saw exactly five')
  t.equal(await metric(gw.url, 'ws_connections_total{result="rate_limited_user"}'), 0, 'and never had to refuse one for the rate')
})

t.test('a dead link (no pong) is detected and replaced by a new connection', async (t) => {
  const gw = await build(t)
  const proxy = await Proxy.start(t, gw.port)
  const sub = newUser('sdk')
  const rec = new Recorded(t, {
    url: `ws://127.0.0.1:${proxy.port}/ws`,
    getToken: () => userToken(sub),
    pingIntervalMs: 50,
    pongTimeoutMs: 300,
    backoff: { baseMs: 10, capMs: 40 }
  })
  await rec.reached('open')
  const firstConnection = rec.client.welcome?.connectionId
  // Pongs keep the link alive: several ping rounds pass without a reconnect.
  await quietFor(400)
  t.equal(rec.urls.length, 1, 'answered pings keep the session')

  proxy.blackhole()
  await rec.until(() => rec.errors.some((e) => e.kind === 'timeout'), 'the dead link')
  t.match(rec.errors, [{ kind: 'timeout', message: /no pong within the timeout/ }])
  t.equal((await rec.reached('reconnecting')).code, 1006)
  await rec.reached('open', 2)
  t.not(rec.client.welcome?.connectionId, firstConnection, 'a new session')
  t.equal(rec.urls.length, 2)
})

t.test('no welcome in time: the attempt is abandoned and retried', async (t) => {
  // Accepts TCP connections and never answers: a hung load balancer.
  const sockets: Socket[] = []
  const silent = createServer((socket) => { sockets.push(socket) })
  silent.listen(0, '127.0.0.1')
  await once(silent, 'listening')
  t.teardown(() => {
    for (const s of sockets) s.destroy()
    silent.close()
  })
  const port = (silent.address() as { port: number }).port
  const rec = new Recorded(t, { url: `ws://127.0.0.1:${port}/ws`, getToken: () => 'x', connectTimeoutMs: 100, backoff: { baseMs: 10, capMs: 20 } })
  await rec.until(() => rec.urls.length === 2, 'the second attempt')
  t.match(rec.errors[0], { kind: 'timeout', message: /no welcome within the timeout/ })
  t.equal(rec.states.find((s) => s.state === 'reconnecting')?.code, 1006)
})

t.test('never a second socket while one is open or connecting', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const rec = new Recorded(t, {
    url: gw.wsUrl,
    getToken: async () => {
      await gate
      return userToken(sub)
    }
  })
  t.ok(rec.client.reconnect(), 'reconnect() before the first attempt starts it')
  t.notOk(rec.client.reconnect(), 'not while the token is on its way')
  release()
  await rec.until(() => rec.urls.length === 1, 'the socket')
  t.notOk(rec.client.reconnect(), 'not while connecting')
  await rec.reached('open')
  t.notOk(rec.client.reconnect(), 'not while open')
  t.equal(rec.urls.length, 1, 'one socket')
  t.equal(rec.tokenCalls, 1, 'one token')
  t.equal(gw.app.sessions.size, 1)
  t.equal(rec.states.filter((s) => s.state === 'connecting').length, 1, 'one attempt')
})

t.test('getToken() failing, or a WebSocket that cannot be created: reported, then retried', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  let calls = 0
  let sockets = 0
  class FailsOnce extends WebSocket {
    constructor (url: string) {
      // Not an Error: anything can be thrown, and is still reported.
      const reason: unknown = 'blocked by policy'
      if (++sockets === 1) throw reason
      super(url)
    }
  }
  const rec = new Recorded(t, {
    url: gw.wsUrl,
    WebSocket: FailsOnce,
    getToken: () => {
      calls++
      if (calls === 1) throw new Error('identity provider down')
      if (calls === 2) return undefined as unknown as string
      if (calls === 3) return ''
      return userToken(sub)
    },
    backoff: { baseMs: 10, capMs: 40 }
  })
  await rec.reached('open')
  t.match(rec.errors, [
    { kind: 'token', message: 'getToken failed: identity provider down' },
    { kind: 'token', message: 'getToken failed: resolved to undefined, not a token' },
    { kind: 'token', message: 'getToken failed: resolved to an empty string, not a token' },
    { kind: 'socket', message: 'could not open the socket: blocked by policy' }
  ])
  t.same(rec.states.map((s) => s.state), [...Array(4).fill(['connecting', 'reconnecting']).flat(), 'connecting', 'open'])
})

t.test('close() stops for good: while the token is on its way, right after connect(), or when open', async (t) => {
  const gw = await build(t)
  const sub = newUser('sdk')
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => { release = resolve })
  const pending = new Recorded(t, { url: gw.wsUrl, getToken: async () => { await gate; return userToken(sub) } })
  await pending.reached('connecting')
  pending.client.close()
  release()
  await gate
  let refuse: () => void = () => {}
  const refusal = new Promise<void>((resolve) => { refuse = resolve })
  const failing = new Recorded(t, { url: gw.wsUrl, getToken: async () => { await refusal; throw new Error('late') } })
  await failing.reached('connecting')
  failing.client.close()
  refuse()

  const immediate = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub) })
  immediate.client.close()
  immediate.client.close()

  // A socket without terminate(), like the browser's: close() ends it with a close handshake.
  class BrowserLike extends WebSocket {
    terminate = undefined as unknown as () => void
  }
  const open = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), WebSocket: BrowserLike })
  await open.reached('open')
  open.client.close()
  await waitUntil(() => gw.app.sessions.size === 0, 5000, 'the session to end at the gateway')

  await quietFor(100)
  t.equal(pending.urls.length, 0, 'no socket once the token arrived after close()')
  t.same(failing.errors, [], 'a token failure after close() is not reported')
  t.same(immediate.states.map((s) => s.state), ['closed'], 'closed before the first attempt: no attempt; closing twice is harmless')
  t.equal(immediate.tokenCalls, 0)
  t.equal(open.client.state, 'closed')
  t.equal(open.urls.length, 1)
})
