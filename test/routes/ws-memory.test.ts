import { randomUUID } from 'node:crypto'
import { ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import Fastify from 'fastify'
import websocket from '@fastify/websocket'
import { build } from '../helpers/build.js'
import { userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

// A full, synchronous garbage collection, without starting node with --expose-gc.
setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/** Collects until nothing more goes (WeakRefs are cleared between macrotasks). */
async function collect (): Promise<void> {
  for (let i = 0; i < 3; i++) {
    await new Promise((resolve) => setImmediate(resolve))
    gc()
  }
}

t.test('an open session does not keep its upgrade request alive', async (t) => {
  const { app, wsUrl } = await build(t)
  // The IncomingMessage is held by the Fastify Request, the ServerResponse
  // and the request logger's bindings: if any of them lived, so would it.
  const refs: Array<WeakRef<object>> = []
  app.server.prependListener('upgrade', (req) => { refs.push(new WeakRef(req)) })

  const clients: TestClient[] = []
  for (let i = 0; i < 5; i++) clients.push(await TestClient.open(wsUrl, { token: userToken(`mem-${randomUUID()}`) }))
  await collect()
  t.equal(refs.length, 5)
  t.equal(refs.filter((ref) => ref.deref() !== undefined).length, 0, 'every upgrade request was collected')

  // The sessions still work: a ping is answered and close frees them.
  for (const client of clients) {
    client.send({ type: 'ping', id: 1 })
    t.same(await client.next('pong'), { type: 'pong', id: 1 })
    await client.close()
  }
})

// An idle session's listeners are shared functions (SessionSocket), not
// closures made for each socket: they were about 320 B per connection.
t.test('every session\'s socket has the same message, pong and close listeners', async (t) => {
  const { app, wsUrl } = await build(t)
  const clients: TestClient[] = []
  for (let i = 0; i < 2; i++) clients.push(await TestClient.open(wsUrl, { token: userToken(`mem-${randomUUID()}`) }))
  const [a, b] = app.sessions.snapshot().map((session) => session.socket)
  for (const event of ['message', 'pong', 'close'] as const) {
    t.equal(a.listenerCount(event), 1, `one ${event} listener`)
    t.equal(a.listeners(event)[0], b.listeners(event)[0], `the same ${event} listener on both sockets`)
  }
  for (const client of clients) await client.close()
})

// Pins what @fastify/websocket retains (src/session/upgrade-release.ts):
// when this fails, the plugin changed and the workaround should go.
t.test('@fastify/websocket still retains the upgrade request in the two places the workaround undoes', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(websocket)
  const seen: Array<{ response: boolean, errorListeners: number }> = []
  app.get('/pin', { websocket: true }, (socket, request) => {
    const raw = request.raw.socket as unknown as { _httpMessage: unknown }
    seen.push({ response: raw._httpMessage instanceof ServerResponse, errorListeners: socket.listenerCount('error') })
    socket.close()
  })
  await app.listen({ host: '127.0.0.1', port: 0 })
  const { port } = app.server.address() as AddressInfo
  const client = await TestClient.open(`ws://127.0.0.1:${port}/pin`)
  await client.waitClosed()
  t.same(seen, [{ response: true, errorListeners: 1 }], 'a ServerResponse assigned to the raw socket, and one error listener (over request and reply)')
})
