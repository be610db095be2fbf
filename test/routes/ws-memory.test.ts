import { randomUUID } from 'node:crypto'
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
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
