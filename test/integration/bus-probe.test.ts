import t from 'tap'
import { randomUUID } from 'node:crypto'
import { build } from '../helpers/build.js'
import { publish, waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { TcpProxy } from '../helpers/tcp-proxy.js'
import { waitUntil } from '../helpers/timeout.js'
import { newUser, serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

const PROBE_MS = 300

t.test('a subscriber connection that goes silent is noticed by the probe, rebuilt, and caught up', async (t) => {
  const redis = await RedisServer.start(t)
  // Only the subscriber connection names itself gw-subscriber.
  const proxy = await TcpProxy.start(t, redis.port, 'gw-subscriber')
  const prefix = `probe-${randomUUID().slice(0, 8)}:`
  const env = { BUS_PROBE_INTERVAL_MS: String(PROBE_MS), MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' }
  const a = await build(t, { env: { ...env, REDIS_URL: proxy.url }, redisPrefix: prefix })
  const b = await build(t, { env: { ...env, REDIS_URL: redis.url }, redisPrefix: prefix })
  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)
  await waitUntil(() => proxy.marked === 1, 5000, 'the subscriber connection to pass the proxy')

  const sub = newUser()
  const { client } = await TestClient.connect(a.wsUrl, { token: userToken(sub) })
  const published: Array<{ id: string, stream: string }> = []
  const before = await publish(b.url, serviceToken(), { target: { userId: sub }, severity: 'info', title: 'before' })
  published.push({ id: before.body.id as string, stream: 'user' })
  t.equal((await client.next('alert')).id, before.body.id, 'delivered through the subscription')

  proxy.silence()
  const silencedAt = Date.now()
  // Commands still pass (they use the other connection): only the probe can tell.
  await waitForStatus(`${a.url}/ready`, 503, 3 * PROBE_MS + 1000)
  const noticedAfter = Date.now() - silencedAt
  t.ok(noticedAfter <= 3 * PROBE_MS + 750, `/ready answered 503 ${noticedAfter} ms after the subscription went silent (bound ${3 * PROBE_MS} ms, plus polling and scheduling slack on a busy machine)`)
  const metrics = await (await fetch(`${a.url}/metrics`)).text()
  t.match(metrics, /ws_bus_connected 0/)
  t.match(metrics, /ws_bus_probe_failures_total [1-9]/)

  for (let i = 0; i < 5; i++) {
    const target = i % 2 === 0 ? { userId: sub } : { all: true }
    const res = await publish(b.url, serviceToken(), { target, severity: 'warning', title: `during ${i}` })
    t.equal(res.status, 202, 'the other instance publishes on')
    published.push({ id: res.body.id as string, stream: res.body.stream as string })
  }

  proxy.heal()
  await waitForStatus(`${a.url}/ready`, 200, 10 * PROBE_MS + 5000)
  const after = await publish(b.url, serviceToken(), { target: { userId: sub }, severity: 'info', title: 'after' })
  published.push({ id: after.body.id as string, stream: 'user' })
  await waitUntil(() => client.received.filter((m) => m.type === 'alert').length >= published.length, 5000, 'every alert')
  const alerts = client.received.filter((m) => m.type === 'alert')
  // Per stream in order; between streams no order is promised.
  for (const stream of ['all', 'user']) {
    t.same(alerts.filter((m) => m.stream === stream).map((m) => m.id), published.filter((p) => p.stream === stream).map((p) => p.id), `${stream}: every alert once, in order, the missed ones by catch-up`)
  }
  t.equal(alerts.length, published.length, 'nothing else')
  t.equal(client.ws.readyState, client.ws.OPEN, 'never disconnected')
  t.match(await (await fetch(`${a.url}/metrics`)).text(), /ws_bus_catchup_total\{result="caught_up"\} [1-9]/)
  await client.close()
})
