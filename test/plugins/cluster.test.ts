import t from 'tap'
import Fastify from 'fastify'
import fastifyRedis from '@fastify/redis'
import { Redis } from 'ioredis'
import { build } from '../helpers/build.js'
import { freePort } from '../helpers/free-port.js'

// Why the cluster plugin makes its two Redis connections itself
// (src/cluster/redis-connections.ts) instead of through @fastify/redis: the
// contract has an instance start while Redis is down (/health 200, /ready
// 503), and @fastify/redis 9 holds the app's boot until its client is
// ready, even for a client passed in. If this test starts failing, the
// plugin no longer blocks and can carry the connections.
t.test('@fastify/redis holds the boot while Redis is down', async (t) => {
  const url = `redis://127.0.0.1:${await freePort()}`
  const client = new Redis(url, { lazyConnect: true, enableOfflineQueue: false, retryStrategy: () => 100 })
  client.on('error', () => {})
  // @fastify/redis's own 'end' listener calls quit() on the closed client,
  // whose rejection nobody handles: it is removed before the disconnect.
  t.teardown(() => {
    client.removeAllListeners('end')
    client.disconnect()
  })
  const app = Fastify({ pluginTimeout: 1000 })
  t.teardown(() => app.close().catch(() => {}))
  app.register(fastifyRedis, { client, namespace: 'command' })
  await t.rejects(async () => { await app.ready() }, { code: 'FST_ERR_PLUGIN_TIMEOUT' })
})

t.test('the gateway starts while Redis is down and says so on /ready', async (t) => {
  const { url } = await build(t, { env: { REDIS_URL: `redis://127.0.0.1:${await freePort()}` } })
  t.equal((await fetch(`${url}/health`)).status, 200)
  t.equal((await fetch(`${url}/ready`)).status, 503)
})
