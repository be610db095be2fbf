import t from 'tap'
import { Redis } from 'ioredis'
import pino from 'pino'
import { Writable } from 'node:stream'
import { RedisBus } from '../../../src/cluster/redis-bus.js'
import type { UserEvent } from '../../../src/cluster/bus.js'
import { RedisServer } from '../../helpers/redis-server.js'

type T = Parameters<typeof RedisServer.start>[0]

async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

function bus (t: T, url: string, id: string, lines: string[] = []): RedisBus {
  const log = pino({ level: 'debug' }, new Writable({ write (c, _e, cb) { lines.push(c.toString()); cb() } }))
  const created = new RedisBus({ url, instanceId: id.padEnd(16, '0'), prefix: 'b:', log, commandTimeoutMs: 500 })
  t.teardown(() => created.close())
  return created
}

t.test('events between two buses', async (t) => {
  const redis = await RedisServer.start(t)
  const errors: string[] = []
  const a = bus(t, redis.url, 'a', errors)
  const b = bus(t, redis.url, 'b')
  const seen: Array<[string, UserEvent]> = []
  b.setHandlers({ onBroadcast: () => {}, onUserEvent: (userId, event) => { seen.push([userId, event]) } })
  a.setHandlers({ onBroadcast: () => { throw new Error('handler bug') }, onUserEvent: () => {} })
  await Promise.all([a.start(), b.start()])
  await until('both connected', () => a.connected && b.connected)

  await b.watchUser('u1')
  await b.watchUser('u1')
  b.unwatchUser('u1')
  b.unwatchUser('nobody')
  await a.publishUser('u1', { type: 'logout', before: 42 })
  await a.publishUser('u1', { type: 'claim', generation: 7 })
  await until('two events', () => seen.length === 2)
  t.same(seen, [['u1', { type: 'logout', before: 42 }], ['u1', { type: 'claim', generation: 7 }]], 'still watched after one of two unwatches')

  await b.publishBroadcast(Buffer.from('{}'))
  await until('the handler error is logged', () => errors.some((l) => l.includes('bus message handler failed')))
  t.pass('a throwing handler is logged, not fatal')

  b.unwatchUser('u1')
  await b.publishBroadcast(Buffer.from('{}')) // an ordering barrier on b's connections
  await a.publishUser('u1', { type: 'claim', generation: 8 })
  await a.publishBroadcast(Buffer.from('{}'))
  await new Promise((resolve) => setTimeout(resolve, 0))
  t.equal(seen.length, 2, 'after the last unwatch nothing arrives for the user')

  // A bus nobody gave handlers to ignores what it receives.
  const bare = bus(t, redis.url, 'd')
  await bare.start()
  await until('bare connected', () => bare.connected)
  await bare.watchUser('u4')
  await a.publishBroadcast(Buffer.from('{}'))
  await a.publishUser('u4', { type: 'alert', frame: Buffer.from('{}') })
  await bare.nextGeneration('barrier')
  t.pass('no handlers, no crash')

  t.equal(await a.nextGeneration('u2'), 1)
  t.equal(await b.nextGeneration('u2'), 2, 'generations are cluster-wide')
  await a.revoke('u2', 100, 60)
  t.equal(await b.revokedBefore('u2'), 100)
  t.equal(await b.revokedBefore('u3'), null)
})

t.test('user subscriptions asked for in one turn share one SUBSCRIBE', async (t) => {
  const redis = await RedisServer.start(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  const b = bus(t, redis.url, 'b')
  await b.start()
  await until('connected', () => b.connected)
  const subscribeCalls = async (): Promise<number> => {
    const match = /cmdstat_subscribe:calls=(\d+)/.exec(await admin.info('commandstats'))
    return match === null ? 0 : Number(match[1])
  }
  const subscribers = async (userId: string): Promise<number> =>
    Number((await admin.pubsub('NUMSUB', `b:user:{${userId}}`) as unknown[])[1])

  const before = await subscribeCalls()
  const users = Array.from({ length: 1500 }, (_, i) => `many-${i}`)
  await Promise.all(users.map((userId) => b.watchUser(userId)))
  t.equal(await subscribeCalls() - before, 2, '1,500 channels in two commands of at most 1,000')
  t.equal(await subscribers('many-0'), 1)
  t.equal(await subscribers('many-1499'), 1)

  // Watched and unwatched before the batch went out: never subscribed.
  const gone = b.watchUser('gone')
  b.unwatchUser('gone')
  // Watched, unwatched and watched again in one turn: subscribed once.
  const again = b.watchUser('again')
  b.unwatchUser('again')
  const againTwice = b.watchUser('again')
  await Promise.all([gone, again, againTwice])
  t.equal(await subscribers('gone'), 0, 'a channel unwatched before the flush is not subscribed')
  t.equal(await subscribers('again'), 1, 'watched again in the same turn: subscribed')

  // After the flush, unwatch unsubscribes at once.
  b.unwatchUser('again')
  await until('unsubscribed', async () => await subscribers('again') === 0)
  t.pass('unwatched after the flush: unsubscribed')
})

t.test('while Redis is down or hung', async (t) => {
  const redis = await RedisServer.start(t)
  const a = bus(t, redis.url, 'c')
  await a.start()
  await until('connected', () => a.connected)
  t.equal(await a.ping(), true)

  // A hung server: the ping times out, so /ready reports it.
  const other = new Redis(redis.url)
  t.teardown(() => other.disconnect())
  await other.call('CLIENT', 'PAUSE', '1500', 'ALL')
  t.equal(await a.ping(), false, 'a hung Redis is not ready')
  await until('awake', async () => await a.ping())

  await redis.stop()
  await until('disconnected', () => !a.connected)
  t.equal(await a.ping(), false)
  await t.rejects(a.watchUser('u'), 'no subscription without Redis')
  await t.rejects(a.nextGeneration('u'))
  await redis.start()
  await until('reconnected', () => a.connected)
  await a.watchUser('u')
  t.pass('a later watch subscribes again')
})
