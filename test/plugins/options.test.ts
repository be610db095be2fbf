import t from 'tap'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import clusterPlugin from '../../plugins/cluster.js'
import { MemoryRevocationStore } from '../../src/cluster/revocation-store.js'
import gatewayPlugin from '../../plugins/gateway.js'
import limitsPlugin from '../../plugins/limits.js'
import metricsPlugin from '../../plugins/metrics.js'
import { RedisIpSlots } from '../../src/cluster/ip-slots.js'
import { RedisServer } from '../helpers/redis-server.js'

t.test('plugins name the missing option', async (t) => {
  const app = Fastify()
  app.register(clusterPlugin, {} as never)
  await t.rejects(async () => app.ready(), /cluster: option prefix is required/)
  const other = Fastify()
  other.register(clusterPlugin, { prefix: 'o:' })
  other.register(limitsPlugin, {} as never)
  await t.rejects(async () => other.ready(), /limits: option limits is required/)
  const third = Fastify()
  third.register(metricsPlugin, { defaultMetrics: false })
  third.register(clusterPlugin, { prefix: 'o:' })
  third.register(gatewayPlugin, {} as never)
  await t.rejects(async () => third.ready(), /gateway: option config is required/)
})

t.test('memory revocations expire', async (t) => {
  const bus = new MemoryRevocationStore()
  await bus.revoke('u', 100, 60)
  await bus.revoke('v', 100, 1)
  t.equal(await bus.revokedBefore('u'), 100)
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  Date.now = () => realNow() + 61_000
  t.equal(await bus.revokedBefore('u'), null, 'gone after its TTL')
  await bus.revoke('w', 1, 60)
  t.equal(await bus.revokedBefore('v'), null, 'expired entries are swept')
})

t.test('live instances push their slots forward; a Redis restart gets them back', async (t) => {
  const server = await RedisServer.start(t)
  const redis = new Redis(server.url, { lazyConnect: true })
  t.teardown(() => redis.disconnect())
  const slots = new RedisIpSlots(redis, 60_000, 's:', () => {})
  t.teardown(() => slots.close())
  slots.refresh() // nothing held, not connected: nothing to do
  await redis.connect()
  t.equal(await slots.acquire('1.2.3.4', 'm1', 1), true)
  t.equal(await slots.acquire('1.2.3.4', 'm2', 1), false, 'full')
  const before = Number(await redis.zscore('s:ip:{1.2.3.4}', 'm1'))
  await redis.flushall()
  slots.refresh()
  // refresh() pipelines without waiting: a later command on the connection orders after it.
  const after = Number(await redis.zscore('s:ip:{1.2.3.4}', 'm1'))
  t.ok(after >= before, 'the slot is back with a fresh expiry')
  slots.release('1.2.3.4', 'm1')
  t.equal(await redis.zcard('s:ip:{1.2.3.4}'), 0, 'released at once')
})
