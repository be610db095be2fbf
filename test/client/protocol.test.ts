import t from 'tap'
import WebSocket from 'ws'
import { CloseCode as ServerCloseCode } from '../../protocol/close-codes.js'
import type { Alert as AlertFrame, Welcome as WelcomeFrame } from '../../protocol/frames.js'
import { CloseCode, closePolicy, connect, type Alert, type ClientError, type WebSocketConstructor, type Welcome } from '../../client/index.js'
import { TypedEvents } from '../../client/typed-events.js'

// Compile-time: the server's frames are what the client reads (tsc --noEmit checks this file).
const alertFromServer = (frame: AlertFrame): Alert => frame
const welcomeFromServer = (frame: WelcomeFrame): Welcome => frame
// Compile-time: the ws package's class fits the WebSocket option without a cast.
const wsFits: WebSocketConstructor = WebSocket

t.test('the client knows every close code of the server contract, with the same numbers', async (t) => {
  t.equal(typeof alertFromServer, 'function', 'the frame types are compatible (checked by tsc)')
  t.equal(typeof welcomeFromServer, 'function')
  for (const [name, code] of Object.entries(ServerCloseCode)) {
    t.equal((CloseCode as Record<string, number>)[name], code, `${name} = ${code}`)
  }
})

t.test('close policy: what the client does after each code', async (t) => {
  const expected: Array<[number, string]> = [
    [1000, 'reconnect'], [1001, 'reconnect'], [1006, 'reconnect'], [1011, 'reconnect'], [1013, 'reconnect'],
    [4401, 'reconnect'],
    [1012, 'reconnect-now'],
    [4403, 'logged-out'],
    [4409, 'replaced'],
    [1002, 'stop'], [1003, 'stop'], [1007, 'stop'], [1008, 'stop'], [1009, 'stop']
  ]
  for (const [code, policy] of expected) t.equal(closePolicy(code), policy, `${code} -> ${policy}`)
})

t.test('connect() refuses bad options with a TypeError naming the option', async (t) => {
  const base = { url: 'ws://127.0.0.1:1/ws', getToken: () => 'x', WebSocket: wsFits }
  t.throws(() => connect({ ...base, getToken: 'token' as unknown as () => string }), { name: 'TypeError', message: /option getToken/ })
  t.throws(() => connect({ ...base, url: 'ftp://example.com/ws' }), { name: 'TypeError', message: /option url must be a ws\(s\) or http\(s\) URL, not ftp:/ })
  t.throws(() => connect({ ...base, url: 'not a url' }), { name: 'TypeError' })
  t.throws(() => connect({ ...base, backoff: { baseMs: 0 } }), { message: /option backoff\.baseMs must be a positive number/ })
  t.throws(() => connect({ ...base, backoff: { capMs: Number.NaN } }), { message: /option backoff\.capMs/ })
  t.throws(() => connect({ ...base, maxAttemptsPerMinute: -1 }), { message: /option maxAttemptsPerMinute/ })
  t.throws(() => connect({ ...base, pingIntervalMs: Infinity }), { message: /option pingIntervalMs/ })
  t.throws(() => connect({ ...base, pongTimeoutMs: 0 }), { message: /option pongTimeoutMs/ })
  t.throws(() => connect({ ...base, connectTimeoutMs: 0 }), { message: /option connectTimeoutMs/ })
  t.throws(() => connect({ ...base, dedupeCapacity: 0 }), { message: /option dedupeCapacity/ })
})

t.test('count options must be whole numbers: a fraction would round down to 0 (no attempt limit, no dedupe memory)', async (t) => {
  const base = { url: 'ws://127.0.0.1:1/ws', getToken: () => 'x', WebSocket: wsFits }
  for (const value of [0.5, 2.5, 0, -3, Infinity, Number.NaN]) {
    t.throws(() => connect({ ...base, maxAttemptsPerMinute: value }), { name: 'TypeError', message: 'connect: option maxAttemptsPerMinute must be a whole number of at least 1' }, `maxAttemptsPerMinute ${value}`)
    t.throws(() => connect({ ...base, dedupeCapacity: value }), { name: 'TypeError', message: 'connect: option dedupeCapacity must be a whole number of at least 1' }, `dedupeCapacity ${value}`)
  }
  const fine = connect({ ...base, maxAttemptsPerMinute: 1, dedupeCapacity: 1 })
  t.equal(fine.state, 'connecting', '1 is fine')
  fine.close()
})

t.test('without a WebSocket option the global one is used, and its absence is a clear error', async (t) => {
  const original = (globalThis as { WebSocket?: unknown }).WebSocket
  t.teardown(() => { (globalThis as { WebSocket?: unknown }).WebSocket = original })

  ;(globalThis as { WebSocket?: unknown }).WebSocket = undefined
  t.throws(() => connect({ url: 'ws://127.0.0.1:1/ws', getToken: () => 'x' }), { name: 'TypeError', message: /no global WebSocket here \(Node 20\): pass option WebSocket/ })

  const made: string[] = []
  ;(globalThis as { WebSocket?: unknown }).WebSocket = class extends WebSocket {
    constructor (url: string) {
      super(url)
      made.push(url)
    }
  }
  // http(s) URLs are turned into ws(s) ones (a page can pass new URL('/ws', location.href)).
  const client = connect({ url: new URL('http://127.0.0.1:1/ws?x=1'), getToken: () => 'tok en' })
  t.teardown(() => client.close())
  await new Promise<void>((resolve) => client.on('state', (s) => { if (s.state === 'reconnecting') resolve() }))
  t.same(made, ['ws://127.0.0.1:1/ws?x=1&token=tok+en'], 'the global class dialled the ws URL with the token as a query parameter')
  const secure = connect({ url: 'https://example.invalid/ws', getToken: () => 'x', WebSocket: wsFits })
  secure.close()
  t.equal(secure.state, 'closed')
})

t.test('a listener that throws does not stop the other listeners; its error reaches the host', async (t) => {
  class Emitter extends TypedEvents<{ error: ClientError }> {
    fire (value: ClientError): void { this.emit('error', value) }
  }
  const emitter = new Emitter()
  const seen: string[] = []
  const offBuggy = emitter.on('error', () => { throw new Error('listener bug') })
  const off = emitter.on('error', (e) => seen.push(e.message))

  // tap reports uncaught exceptions as failures: catch this one expected error ourselves.
  const previous = process.listeners('uncaughtException')
  process.removeAllListeners('uncaughtException')
  const rethrown = new Promise<Error>((resolve) => process.once('uncaughtException', resolve))
  emitter.fire({ kind: 'server', message: 'first' })
  const error = await rethrown
  for (const listener of previous) process.on('uncaughtException', listener)
  t.equal(error.message, 'listener bug', 'rethrown on a microtask')
  t.same(seen, ['first'], 'the second listener still ran')
  off()
  offBuggy()
  emitter.fire({ kind: 'server', message: 'second' })
  t.same(seen, ['first'], 'on() returns the function that removes the listener')
})
