import t from 'tap'
import type WebSocket from 'ws'
import { Recorded, stubServer, welcomeFrame } from './harness.js'

const alert = (id: string, title = id): string => JSON.stringify({ type: 'alert', id, ts: Date.now(), severity: 'warning', title })

/*
 * A scripted server plays what the gateway never does on purpose: the same
 * alert twice (a publisher retry through another path, a replay after a
 * reconnect), frames the client cannot read, a 1013 close.
 */

t.test('duplicate alerts are dropped, within one session and across a reconnect', async (t) => {
  let sessions = 0
  const stub = await stubServer(t, (socket: WebSocket) => {
    sessions++
    socket.send(welcomeFrame())
    if (sessions === 1) {
      for (const frame of [alert('a1', 'first'), alert('a1', 'first again'), alert('a2')]) socket.send(frame)
      // Overloaded: the client must come back, and must not show a1 or a2 twice.
      socket.close(1013, 'overloaded')
    } else {
      for (const frame of [alert('a2'), alert('a1'), alert('a3')]) socket.send(frame)
    }
  })
  const rec = new Recorded(t, { url: stub.url, getToken: () => 'token', backoff: { baseMs: 10, capMs: 40 } })
  await rec.until(() => rec.alerts.length === 3, 'three distinct alerts')
  t.same(rec.alerts.map((a) => a.id), ['a1', 'a2', 'a3'], 'each id once')
  t.equal(rec.alerts[0].title, 'first', 'the first copy wins')
  t.equal(rec.states.find((s) => s.state === 'reconnecting')?.code, 1013, '1013 -> backoff and reconnect')
  t.equal(rec.urls.length, 2)
  t.equal(rec.errors.length, 0)
})

t.test('frames the client cannot read are reported and skipped; error frames are reported', async (t) => {
  const stub = await stubServer(t, (socket: WebSocket) => {
    socket.send(welcomeFrame())
    socket.send('{not json')
    socket.send('null')
    socket.send(JSON.stringify({ type: 'alert', title: 'no id' }))
    socket.send(JSON.stringify({ type: 'from-the-future', x: 1 }))
    socket.send(JSON.stringify({ type: 'pong', id: 999 }))
    socket.send(JSON.stringify({ type: 'error', code: 'invalid_message', message: 'invalid ack message' }))
    socket.send(alert('last'))
  })
  const rec = new Recorded(t, { url: stub.url, getToken: () => 'token' })
  await rec.until(() => rec.alerts.length === 1, 'the last alert')
  t.match(rec.errors, [
    { kind: 'protocol', message: /not JSON/ },
    { kind: 'protocol', message: /alert without an id/ },
    { kind: 'server', code: 'invalid_message', message: 'invalid ack message' }
  ])
  t.equal(rec.errors.length, 3, 'null, an unknown type and an unexpected pong are ignored')
  t.equal(rec.client.state, 'open')
})

t.test('reauth: a token that cannot be fetched is reported; the session carries on until the server decides', async (t) => {
  const received: string[] = []
  const stub = await stubServer(t, (socket: WebSocket) => {
    socket.on('message', (data) => {
      received.push(data.toString())
      socket.send(JSON.stringify({ type: 'reauth', deadlineMs: 1000 }))
    })
    socket.send(welcomeFrame())
    socket.send(JSON.stringify({ type: 'reauth', deadlineMs: 1000 }))
  })
  let calls = 0
  const rec = new Recorded(t, {
    url: stub.url,
    getToken: async () => {
      calls++
      if (calls === 3) throw new Error('session expired at the identity provider')
      return `token-${calls}`
    }
  })
  await rec.until(() => rec.errors.length === 1, 'the failed re-auth')
  t.same(received.map((m) => JSON.parse(m)), [{ type: 'auth', token: 'token-2' }], 'the first request was answered with a fresh token')
  t.match(rec.errors, [{ kind: 'token', message: 'getToken failed for re-auth: session expired at the identity provider' }])
  t.equal(rec.client.state, 'open', 'still open: the gateway closes with 4401 at its deadline, then the client reconnects')
})
