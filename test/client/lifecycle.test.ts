import t, { type Test } from 'tap'
import type { ConnectOptions, PositionStorage } from '../../client/index.js'
import { FakeServer, deferred, jwt, settle } from './fake-socket.js'
import { Recorded, quietFor } from './harness.js'

/*
 * What listeners may do in the middle of the client's own steps (call
 * reconnect() or close() from an `error` or `state` listener), attempts that
 * hang before they dial, and sockets that speak after they were replaced:
 * a fake socket plays the server, so each step happens exactly when the
 * test says.
 */

/** Backoff delays of at most 40 ms: anything the client would retry shows within QUIET_MS. */
const FAST = { baseMs: 40, capMs: 40 }
/** Ten times the backoff cap (and the connect timeouts below). */
const QUIET_MS = 400

function client (t: Test, server: FakeServer, options: Partial<ConnectOptions> = {}): Recorded {
  return new Recorded(t, { url: 'ws://gateway.test/ws', getToken: () => jwt('u1'), WebSocket: server.WebSocket, backoff: FAST, random: () => 0.99, ...options })
}

const states = (rec: Recorded): string[] => rec.states.map((s) => s.state)

t.test('reconnect() from an error listener opens one socket, not a second one from the retry timer', async (t) => {
  const failing = (): () => string => {
    let calls = 0
    return () => {
      if (++calls === 1) throw new Error('idp blip')
      return jwt('u1')
    }
  }
  // What fails first, and which socket the listener's reconnect() dials.
  const failures: Array<[string, Partial<ConnectOptions>, number]> = [
    ['getToken() failed', { getToken: failing() }, 1],
    ['no welcome in time', { connectTimeoutMs: 30 }, 2],
    ['the socket could not be created', {}, 1]
  ]
  for (const [what, options, n] of failures) {
    const server = new FakeServer({ refuse: what === 'the socket could not be created' ? 1 : 0 })
    const rec = client(t, server, options)
    rec.client.on('error', () => { if (rec.errors.length === 1) t.ok(rec.client.reconnect(), `${what}: reconnect() accepted`) })
    await rec.until(() => rec.errors.length === 1, `${what}: the error`)
    t.same(states(rec), ['connecting', 'connecting'], `${what}: the listener's attempt, and no retry armed behind it`)
    const socket = await server.socket(n)
    socket.welcome()
    await quietFor(QUIET_MS)
    t.equal(server.live.length, 1, `${what}: one socket`)
    t.equal(server.sockets.length, n, `${what}: none dialled after it`)
    t.same(states(rec), ['connecting', 'connecting', 'open'])
    rec.client.close()
  }
})

t.test('close() from an error listener stops: state closed, no retry timer left behind', async (t) => {
  for (const [what, options] of [
    ['getToken() failed', { getToken: () => { throw new Error('logged out at the identity provider') } }],
    ['no welcome in time', { connectTimeoutMs: 30 }]
  ] as Array<[string, Partial<ConnectOptions>]>) {
    const server = new FakeServer()
    const rec = client(t, server, options)
    rec.client.on('error', () => rec.client.close())
    await rec.until(() => rec.errors.length === 1, `${what}: the error`)
    t.equal(rec.client.state, 'closed', `${what}: closed`)
    t.same(states(rec), ['connecting', 'closed'], `${what}: never reconnecting`)
    await quietFor(QUIET_MS)
    t.equal(rec.tokenCalls, 1, `${what}: no further attempt`)
    t.equal(server.live.length, 0)
  }
})

t.test('events of a socket that is no longer the current one are ignored', async (t) => {
  const server = new FakeServer()
  const rec = client(t, server)
  const first = await server.socket(1)
  first.welcome()
  first.serverClose(1013)
  t.same(states(rec), ['connecting', 'open', 'reconnecting'])
  // A WebSocket that keeps speaking after its close event.
  first.serverClose(1006)
  first.deliver({ type: 'alert', id: 'late', ts: 1, severity: 'info', title: 'after the close' })
  t.same(states(rec), ['connecting', 'open', 'reconnecting'], 'one close, one retry')
  const second = await server.socket(2)
  second.welcome('u1', { all: 'e1:5', user: 'e2:7' })
  first.welcome()
  first.deliver({ type: 'alert', id: 'late', ts: 1, severity: 'info', title: 'after the close', stream: 'all', pos: 'e1:90' })
  first.deliver({ type: 'gap', streams: ['all'], pos: { all: 'e9:1', user: 'e9:1' } })
  first.deliver({ type: 'error', code: 'invalid_message', message: 'from the old session' })
  first.deliver({ type: 'reauth', deadlineMs: 1000 })
  first.serverClose(1011)
  await settle()
  t.same(rec.alerts, [], 'nothing of the old socket reaches the application')
  t.same(rec.gaps, [])
  t.same(rec.errors, [])
  t.same(rec.client.positions, { all: 'e1:5', user: 'e2:7' }, 'nor moves the positions')
  t.equal(rec.tokenCalls, 2, 'nor asks for a token')
  t.same(second.sent, [], 'nor sends anything')
  t.same(states(rec), ['connecting', 'open', 'reconnecting', 'connecting', 'open'], 'the current session is untouched')
  await quietFor(QUIET_MS)
  t.equal(server.sockets.length, 2, 'no third socket')
})

t.test('a getToken() that never settles: the attempt times out, is reported and retried; its late answer is dropped', async (t) => {
  const server = new FakeServer()
  const hung = deferred<string>()
  let calls = 0
  const rec = client(t, server, { connectTimeoutMs: 30, getToken: async () => ++calls === 1 ? hung.promise : jwt('u1') })
  await rec.until(() => rec.errors.length === 1, 'the timeout')
  t.match(rec.errors, [{ kind: 'timeout', message: 'getToken() did not finish within the timeout' }])
  t.match(rec.states[1], { state: 'reconnecting' }, 'retried with backoff')
  const socket = await server.socket(1)
  socket.welcome()
  t.equal(rec.client.state, 'open')
  hung.resolve(jwt('u1'))
  await settle()
  t.equal(server.sockets.length, 1, 'the abandoned attempt does not dial when its token arrives')
  t.equal(rec.client.state, 'open')
  t.equal(rec.errors.length, 1)

  // A late failure is not reported either.
  const server2 = new FakeServer()
  const hung2 = deferred<string>()
  const rec2 = client(t, server2, { connectTimeoutMs: 30, getToken: async () => hung2.promise })
  await rec2.until(() => rec2.errors.length === 1, 'the timeout')
  hung2.reject(new Error('too late'))
  await settle()
  t.equal(rec2.errors.length, 1, 'one error: the timeout')
})

t.test('a storage read that never settles: the attempt times out, is retried; the late read does not move the positions', async (t) => {
  const server = new FakeServer()
  const hung = deferred<string | null>()
  let reads = 0
  const storage: PositionStorage = {
    getItem: async () => ++reads === 1 ? hung.promise : JSON.stringify({ all: 'e1:2', user: 'e2:2' }),
    setItem: async () => {}
  }
  const rec = client(t, server, { connectTimeoutMs: 30, storage })
  await rec.until(() => rec.errors.length === 1, 'the timeout')
  t.match(rec.errors, [{ kind: 'timeout', message: 'reading the stored positions did not finish within the timeout' }])
  const socket = await server.socket(1)
  t.same(socket.since, { since_all: 'e1:2', since_user: 'e2:2' }, 'the retry read the positions')
  socket.welcome()
  hung.resolve(JSON.stringify({ all: 'e1:1', user: 'e2:1' }))
  await settle()
  t.same(rec.client.positions, { all: 'e1:2', user: 'e2:2' }, 'the abandoned read changed nothing')
  t.equal(server.sockets.length, 1)
  t.equal(rec.errors.length, 1)
})

t.test('reconnect() after 4403 (logged out) is refused: no new token, no socket', async (t) => {
  const server = new FakeServer()
  const rec = client(t, server)
  const socket = await server.socket(1)
  socket.welcome()
  socket.serverClose(4403)
  t.match(rec.states.at(-1), { state: 'logged-out', code: 4403 })
  t.notOk(rec.client.reconnect(), 'refused')
  t.equal(rec.client.state, 'logged-out')
  await settle()
  t.equal(rec.tokenCalls, 1)
  t.equal(server.sockets.length, 1)
  rec.client.close()
  t.equal(rec.client.state, 'closed', 'close() still ends it')
})

t.test('1012 (service restart): reconnects at once, with positions, still within the attempt limit', async (t) => {
  const server = new FakeServer()
  // Backoff that would wait almost a minute: 1012 must not use it.
  const rec = client(t, server, { backoff: { baseMs: 60_000, capMs: 60_000 }, maxAttemptsPerMinute: 2, now: () => 1_000_000 })
  const first = await server.socket(1)
  first.welcome('u1', { all: 'e1:5', user: 'e2:7' })
  first.deliver({ type: 'alert', id: 'a1', ts: 1, severity: 'info', title: 'a1', stream: 'user', pos: 'e2:8' })
  first.serverClose(1012)
  t.match(rec.states.at(-1), { state: 'reconnecting', code: 1012, retryInMs: 0 })
  const second = await server.socket(2)
  t.same(second.since, { since_all: 'e1:5', since_user: 'e2:8' }, 'resumes where it stood')
  second.welcome()
  second.serverClose(1012)
  t.match(rec.states.at(-1), { state: 'reconnecting', code: 1012, retryInMs: 61_000 }, 'a third attempt within the minute waits for the limit')
  t.equal(server.sockets.length, 2)
})

t.test('an error listener that calls reconnect() on 4409 takes over: the client does not report closed after it', async (t) => {
  const server = new FakeServer()
  const rec = client(t, server)
  rec.client.on('error', (e) => { if (e.code === 4409) rec.client.reconnect() })
  const first = await server.socket(1)
  first.welcome()
  first.serverClose(4409)
  t.match(rec.errors, [{ kind: 'closed', code: 4409 }])
  t.same(states(rec), ['connecting', 'open', 'connecting'])
  ;(await server.socket(2)).welcome()
  t.equal(rec.client.state, 'open')
})

t.test('listeners that close() in the middle of a step stop the client there', async (t) => {
  await t.test('a state listener, as an attempt starts: no token is fetched', async (t) => {
    const server = new FakeServer()
    const rec = client(t, server)
    rec.client.on('state', (s) => { if (s.state === 'connecting') rec.client.close() })
    await rec.reached('closed')
    await settle()
    t.equal(rec.tokenCalls, 0)
    t.equal(server.sockets.length, 0)
  })

  await t.test('an error listener, on a storage that cannot be read: no socket', async (t) => {
    const server = new FakeServer()
    const storage: PositionStorage = { getItem: () => { throw new Error('storage is disabled') }, setItem: () => {} }
    const rec = client(t, server, { storage })
    rec.client.on('error', () => rec.client.close())
    await rec.reached('closed')
    await settle()
    t.match(rec.errors, [{ kind: 'storage', message: 'could not read the positions: storage is disabled' }])
    t.equal(server.sockets.length, 0)
  })

  // A storage that cannot be written reports an error while a frame is handled.
  const frames: Array<[string, unknown, (rec: Recorded) => unknown[]]> = [
    ['welcome', null, (rec) => rec.client.welcome === null ? [] : [rec.client.welcome]],
    ['alert', { type: 'alert', id: 'a1', ts: 1, severity: 'info', title: 'a1', stream: 'all', pos: 'e1:6' }, (rec) => rec.alerts],
    ['resumed', { type: 'resumed', recovered: true, replayed: 0, pos: { all: 'e1:6', user: 'e2:8' } }, (rec) => rec.resumes],
    ['gap', { type: 'gap', streams: ['all'], pos: { all: 'e9:1', user: 'e2:8' } }, (rec) => rec.gaps]
  ]
  for (const [type, frame, seen] of frames) {
    await t.test(`an error listener, during a ${type} frame: nothing after it`, async (t) => {
      const server = new FakeServer()
      let failing = type === 'welcome'
      const storage: PositionStorage = { getItem: () => null, setItem: () => { if (failing) throw new Error('QuotaExceededError') } }
      const rec = client(t, server, { storage, getToken: () => jwt('u1'), autoAck: true })
      rec.client.on('error', (e) => { if (e.kind === 'storage') rec.client.close() })
      const socket = await server.socket(1)
      socket.welcome('u1', { all: 'e1:5', user: 'e2:7' })
      failing = true
      if (frame !== null) socket.deliver(frame)
      t.equal(rec.client.state, 'closed')
      t.notOk(states(rec).slice(states(rec).indexOf('closed')).includes('open'), 'never open after closed')
      t.same(seen(rec), [], `no ${type} reached the application after close()`)
      t.same(socket.sent, [], 'nothing sent')
      t.ok(socket.endedByClient, 'the socket was ended')
    })
  }
})
