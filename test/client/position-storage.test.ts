import t from 'tap'
import type WebSocket from 'ws'
import { MemoryStorage, connect, tokenSubject, type PositionStorage } from '../../client/index.js'
import { defaultStorage } from '../../client/position-storage.js'
import { waitUntil } from '../helpers/timeout.js'
import { signJwt } from '../helpers/tokens.js'
import { Recorded, stubServer } from './harness.js'

/*
 * Storage that misbehaves, tokens that are not JWTs, frames with odd
 * positions: a scripted server plays the gateway, so each case is exact.
 */

const KEY = 'alert-gateway:positions:'
const HEADS = { all: 'e1:5', user: 'e2:7' }
const welcome = (userId: string, pos: unknown = HEADS): string => JSON.stringify({
  type: 'welcome', connectionId: 'c1', userId, heartbeatMs: 30000, reauthMs: 900000, maxMessageBytes: 10240, pos
})
const alert = (id: string, stream: unknown, pos: unknown): string => JSON.stringify({ type: 'alert', id, ts: Date.now(), severity: 'info', title: id, stream, pos })
const since = (url: string): Record<string, string> => Object.fromEntries([...new URL(url).searchParams].filter(([k]) => k.startsWith('since_')))

t.test('tokenSubject reads sub off a JWT without verifying it; anything else is null', async (t) => {
  t.equal(tokenSubject(signJwt({ sub: 'ana' })), 'ana')
  t.equal(tokenSubject(signJwt({ sub: 'zoë-✓' })), 'zoë-✓', 'UTF-8 in base64url')
  t.equal(tokenSubject('opaque-token'), null, 'not three parts')
  t.equal(tokenSubject('a.%%%.c'), null, 'not base64')
  t.equal(tokenSubject(`a.${Buffer.from('not json').toString('base64url')}.c`), null, 'not JSON')
  t.equal(tokenSubject(signJwt({ exp: 1 })), null, 'no sub')
  t.equal(tokenSubject(signJwt({ sub: '' })), null, 'empty sub')
  t.equal(tokenSubject(`a.${Buffer.from('null').toString('base64url')}.c`), null, 'a JSON null payload')
})

t.test('the default storage: sessionStorage where there is one, else memory', async (t) => {
  const fake: PositionStorage = { getItem: () => null, setItem: () => {} }
  const define = (descriptor: PropertyDescriptor): void => {
    Object.defineProperty(globalThis, 'sessionStorage', { configurable: true, ...descriptor })
  }
  const previous = Object.getOwnPropertyDescriptor(globalThis, 'sessionStorage')
  t.teardown(() => {
    if (previous === undefined) delete (globalThis as { sessionStorage?: unknown }).sessionStorage
    else Object.defineProperty(globalThis, 'sessionStorage', previous)
  })
  define({ value: fake })
  t.equal(defaultStorage(), fake, 'the browser\'s sessionStorage')
  define({ get: () => { throw new Error('SecurityError: storage is disabled') } })
  t.type(defaultStorage(), MemoryStorage, 'reading it throws (sandboxed frame): memory')
  define({ value: undefined })
  t.type(defaultStorage(), MemoryStorage, 'none (Node): memory')
})

t.test('connect() refuses a storage without getItem and setItem', async (t) => {
  const base = { url: 'ws://127.0.0.1:1/ws', getToken: () => 'x', WebSocket: class {} as never }
  t.throws(() => connect({ ...base, storage: {} as PositionStorage }), { name: 'TypeError', message: /option storage must have getItem and setItem/ })
  t.throws(() => connect({ ...base, storage: null as unknown as PositionStorage }), { message: /option storage/ })
})

t.test('stored values that are not positions are ignored, one stream at a time', async (t) => {
  const urls: string[] = []
  const stub = await stubServer(t, (socket: WebSocket) => { socket.send(welcome('u1')) })
  for (const [value, expected] of [
    ['not json', {}],
    ['5', {}],
    ['null', {}],
    [JSON.stringify({ all: 'bad position!', user: 'e2:3', other: 'x:1' }), { since_user: 'e2:3' }],
    [JSON.stringify({ all: 42, user: 'e2:3' }), { since_user: 'e2:3' }]
  ] as const) {
    const storage = new MemoryStorage()
    storage.setItem(`${KEY}u1`, value)
    const rec = new Recorded(t, { url: stub.url, getToken: () => signJwt({ sub: 'u1' }), storage })
    await rec.reached('open')
    urls.push(rec.urls[0])
    t.same(since(rec.urls[0]), expected, `stored ${value}`)
    t.same(rec.client.positions, { ...HEADS, ...(expected as { since_user?: string }).since_user === undefined ? {} : { user: 'e2:3' } }, 'the rest starts at the heads')
    rec.client.close()
  }
})

t.test('odd positions on alerts are ignored; alerts without a position leave it; nothing before the welcome is kept', async (t) => {
  const stub = await stubServer(t, (socket: WebSocket) => {
    socket.send(alert('early', 'user', 'e2:1'))
    socket.send(welcome('u1'))
    for (const frame of [alert('a1', 'other', 'x:1'), alert('a2', 'all', 'bad position!'), alert('a3', undefined, undefined), alert('a4', 'all', 'e1:9')]) socket.send(frame)
  })
  const storage = new MemoryStorage()
  const rec = new Recorded(t, { url: stub.url, getToken: () => 'opaque', storage })
  await rec.until(() => rec.alerts.length === 5, 'five alerts')
  t.same(rec.client.positions, { all: 'e1:9', user: 'e2:7' }, 'only well-formed positions of known streams count')
  t.same(JSON.parse(storage.getItem(`${KEY}u1`) as string), { all: 'e1:9', user: 'e2:7' })
})

t.test('an opaque token: the first connect starts at the heads, reconnects resume from memory', async (t) => {
  let sessions = 0
  const stub = await stubServer(t, (socket: WebSocket) => {
    sessions++
    socket.send(welcome('u1', sessions === 1 ? HEADS : { all: 'e1:6', user: 'e2:7' }))
    if (sessions === 1) {
      socket.send(alert('a1', 'all', 'e1:6'))
      socket.close(1013, 'overloaded')
    }
  })
  const storage = new MemoryStorage()
  storage.setItem(`${KEY}u1`, JSON.stringify({ all: 'e1:1', user: 'e2:1' }))
  const rec = new Recorded(t, { url: stub.url, getToken: () => 'opaque', storage, backoff: { baseMs: 10, capMs: 20 } })
  await rec.reached('open', 2)
  t.same(since(rec.urls[0]), {}, 'no user to look up: nothing stored is sent')
  t.same(since(rec.urls[1]), { since_all: 'e1:6', since_user: 'e2:7' }, 'the reconnect resumes where the client stood')
  t.same(JSON.parse(storage.getItem(`${KEY}u1`) as string), { all: 'e1:6', user: 'e2:7' }, 'stored under the welcome\'s user')
})

t.test('storage that throws: reported as storage errors, the client resumes from memory', async (t) => {
  let sessions = 0
  const stub = await stubServer(t, (socket: WebSocket) => {
    sessions++
    socket.send(welcome('u1'))
    if (sessions === 1) {
      socket.send(alert('a1', 'user', 'e2:8'))
      socket.close(1013, 'overloaded')
    }
  })
  let reads = 0
  const storage: PositionStorage = {
    getItem: () => {
      // Not an Error: anything can be thrown, and is still reported.
      const reason: unknown = 'storage is disabled'
      if (++reads > 1) throw reason
      return null
    },
    setItem: () => { throw new Error('QuotaExceededError') }
  }
  const rec = new Recorded(t, { url: stub.url, getToken: () => signJwt({ sub: 'u1' }), storage, backoff: { baseMs: 10, capMs: 20 } })
  await rec.reached('open', 2)
  t.same(since(rec.urls[1]), { since_all: 'e1:5', since_user: 'e2:8' }, 'the memory copy')
  t.match(rec.errors, [
    { kind: 'storage', message: 'could not store the positions: QuotaExceededError' },
    { kind: 'storage', message: 'could not store the positions: QuotaExceededError' },
    { kind: 'storage', message: 'could not read the positions: storage is disabled' }
  ])
})

t.test('async storage: read before the connect, one write at a time with the newest last, failures reported', async (t) => {
  const stub = await stubServer(t, (socket: WebSocket) => {
    socket.send(welcome('u1'))
    for (let i = 1; i <= 5; i++) socket.send(alert(`a${i}`, 'all', `e1:${5 + i}`))
  })
  const items = new Map<string, string>([[`${KEY}u1`, JSON.stringify({ all: 'e1:2', user: 'e2:2' })]])
  const writes: string[] = []
  let pending = 0
  let most = 0
  const storage: PositionStorage = {
    getItem: async (key) => items.get(key) ?? null,
    setItem: async (key, value) => {
      pending++
      most = Math.max(most, pending)
      await new Promise((resolve) => setTimeout(resolve, 5))
      pending--
      writes.push(value)
      if (writes.length === 1) throw new Error('disk full')
      items.set(key, value)
    }
  }
  const rec = new Recorded(t, { url: stub.url, getToken: async () => signJwt({ sub: 'u1' }), storage })
  await rec.until(() => rec.alerts.length === 5, 'five alerts')
  // Storage settles after the last event: polled.
  await waitUntil(() => pending === 0 && JSON.parse(items.get(`${KEY}u1`) as string).all === 'e1:10', 5000, 'the last position stored')
  t.same(since(rec.urls[0]), { since_all: 'e1:2', since_user: 'e2:2' })
  t.equal(most, 1, 'never two writes at once')
  t.ok(writes.length < 7, `writes coalesced while one was under way (${writes.length} for 6 changes)`)
  t.match(rec.errors, [{ kind: 'storage', message: 'could not store the positions: disk full' }])
})
