import t from 'tap'
import { randomUUID } from 'node:crypto'
import { build } from '../helpers/build.js'
import { publish, waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

const CONNECTIONS = 1000
const PER_ADDRESS = 90
const BATCH = 50

t.test('1000 concurrent authenticated connections over two instances receive one broadcast exactly once', async (t) => {
  const redis = await RedisServer.start(t)
  const redisPrefix = `t${randomUUID().slice(0, 8)}:`
  const env = { REDIS_URL: redis.url }
  const a = await build(t, { env, redisPrefix })
  const b = await build(t, { env, redisPrefix })
  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)

  const clients: TestClient[] = []
  for (let start = 0; start < CONNECTIONS; start += BATCH) {
    const batch = await Promise.all(Array.from({ length: BATCH }, async (_, j) => {
      const i = start + j
      // 1000 distinct users, at most 90 per source address (the per-IP limit is 100).
      const localAddress = `127.0.${10 + Math.floor(i / PER_ADDRESS)}.1`
      const { client } = await TestClient.connect(i % 2 === 0 ? a.wsUrl : b.wsUrl, { token: userToken(`load-${i}`), localAddress, timeoutMs: 20000 })
      return client
    }))
    clients.push(...batch)
  }
  t.equal(a.app.sessions.size + b.app.sessions.size, CONNECTIONS, 'all 1000 are open')

  const res = await publish(a.url, serviceToken(), { target: { all: true }, severity: 'critical', title: 'everyone' })
  t.equal(res.status, 202)
  // A's own half, plus B's count as B last reported it (every 5 s).
  const delivered = Number(res.body.delivered)
  t.ok(delivered >= CONNECTIONS / 2 && delivered <= CONNECTIONS, `delivered ${delivered}: A's half and B's last report`)
  await Promise.all(clients.map((client) => client.next('alert', 20000)))
  const counts = clients.map((client) => client.received.filter((m) => m.type === 'alert').length)
  t.ok(counts.every((n) => n === 1), 'every client received the broadcast exactly once')

  await Promise.all(clients.map((client) => client.close()))
  for (const gateway of [a, b]) {
    // The server sees the closes a moment after the clients do: wait for it.
    const deadline = Date.now() + 10000
    let active = -1
    while (Date.now() < deadline) {
      const text = await (await fetch(`${gateway.url}/metrics`)).text()
      active = Number(/^ws_connections_active (\d+)/m.exec(text)?.[1])
      if (active === 0) break
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    t.equal(active, 0, 'ws_connections_active returns to 0')
  }
})
