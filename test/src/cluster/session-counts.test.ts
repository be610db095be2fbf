import t from 'tap'
import { Redis } from 'ioredis'
import { RedisSessionCounts } from '../../../src/cluster/session-counts.js'
import { RedisServer } from '../../helpers/redis-server.js'

t.test('each instance counts the others\' fresh reports and drops the stale ones', async (t) => {
  const redis = await RedisServer.start(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { client.disconnect() })
  const a = new RedisSessionCounts(client, 'sc:', 'a', 5_000)
  const b = new RedisSessionCounts(client, 'sc:', 'b', 5_000)
  t.equal(await a.report(3), 0, 'alone so far')
  t.equal(await b.report(4), 3, 'b sees a')
  t.equal(await a.report(5), 4, 'a sees b, not itself')
  // An instance that stopped reporting 20 s ago (three periods are 15 s).
  await client.hset('sc:sessions', 'gone', `7:${Date.now() - 20_000}`)
  t.equal(await a.report(5), 4, 'a stale count is not counted')
  t.same(Object.keys(await client.hgetall('sc:sessions')).sort(), ['a', 'b'], 'and is dropped')
})
