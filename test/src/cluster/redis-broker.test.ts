import t from 'tap'
import { Redis } from 'ioredis'
import pino from 'pino'
import { once } from 'node:events'
import { Writable } from 'node:stream'
import { RedisClaimStore } from '../../../src/cluster/claim-store.js'
import { RedisBroker } from '../../../src/cluster/redis-broker.js'
import { createRedisConnections } from '../../../src/cluster/redis-connections.js'
import { RedisRevocationStore } from '../../../src/cluster/revocation-store.js'
import { RedisServer } from '../../helpers/redis-server.js'

type T = Parameters<typeof RedisServer.start>[0]

async function until (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 10000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

interface Started {
  broker: RedisBroker
  command: Redis
}

function broker (t: T, url: string, id: string, lines: string[] = []): Started {
  const log = pino({ level: 'debug' }, new Writable({ write (c, _e, cb) { lines.push(c.toString()); cb() } }))
  const connections = createRedisConnections(url, 500)
  const created = new RedisBroker({ connections, instanceId: id.padEnd(16, '0'), prefix: 'b:', log })
  for (const client of [connections.command, connections.subscriber]) client.connect().catch(() => {})
  t.teardown(() => created.close())
  return { broker: created, command: connections.command }
}

/** Subscribes `b` to `all` (as Delivery does) and waits until it is connected. */
async function connected (started: Started): Promise<void> {
  await started.broker.subscribe('all').catch(() => {})
  await until('connected', () => started.broker.connected)
}

t.test('messages between two brokers', async (t) => {
  const redis = await RedisServer.start(t)
  const errors: string[] = []
  const a = broker(t, redis.url, 'a', errors)
  const b = broker(t, redis.url, 'b')
  const seen: Array<[string, string]> = []
  b.broker.setHandlers({ onMessage: (topic, message) => { seen.push([topic, message.toString()]) } })
  a.broker.setHandlers({ onMessage: () => { throw new Error('handler bug') } })
  await Promise.all([connected(a), connected(b)])

  await a.broker.subscribe('user:{u1}')
  await b.broker.subscribe('user:{u1}')
  await b.broker.subscribe('user:{u1}')
  b.broker.unsubscribe('user:{nobody}')
  await a.broker.publish('user:{u1}', Buffer.from('L42'))
  await a.broker.publish('user:{u1}', Buffer.from('C7'))
  await until('two messages', () => seen.length === 2)
  t.same(seen, [['user:{u1}', 'L42'], ['user:{u1}', 'C7']], 'in order, with their topic, never back to the publisher')

  await b.broker.publish('all', Buffer.from('{}'))
  await until('the handler error is logged', () => errors.some((l) => l.includes('bus message handler failed')))
  t.pass('a throwing handler is logged, not fatal')

  b.broker.unsubscribe('user:{u1}')
  await b.broker.publish('all', Buffer.from('{}')) // an ordering barrier on b's connections
  await a.broker.publish('user:{u1}', Buffer.from('C8'))
  await a.broker.publish('all', Buffer.from('x'))
  await until('the broadcast after it', () => seen.length === 3)
  t.same(seen[2], ['all', 'x'], 'after the unsubscribe nothing arrives for the user')

  // A broker nobody gave handlers to ignores what it receives.
  const bare = broker(t, redis.url, 'd')
  await connected(bare)
  await bare.broker.subscribe('user:{u4}')
  await a.broker.publish('all', Buffer.from('{}'))
  await a.broker.publish('user:{u4}', Buffer.from('A{}'))
  await bare.command.ping()
  t.pass('no handlers, no crash')
})

t.test('claim and revocation stores on Redis', async (t) => {
  const redis = await RedisServer.start(t)
  const a = broker(t, redis.url, 'a')
  const b = broker(t, redis.url, 'b')
  await Promise.all([connected(a), connected(b)])
  const revocationsA = new RedisRevocationStore(a.command, 'b:')
  const revocationsB = new RedisRevocationStore(b.command, 'b:')
  const claimsA = new RedisClaimStore(a.command, 'b:', revocationsA, '', null)
  const claimsB = new RedisClaimStore(b.command, 'b:', revocationsB, '', null)
  t.same(await claimsA.claim('u2', null), { generation: 1, revokedBefore: null, user: null })
  t.same(await claimsB.claim('u2', null), { generation: 2, revokedBefore: null, user: null }, 'generations are cluster-wide')
  claimsA.forget('u2')
  t.equal((await claimsA.claim('u2', null)).generation, 3, 'Redis keeps them past a forget (they expire)')
  await revocationsA.revoke('u2', 100, 60)
  t.equal(await revocationsB.revokedBefore('u2'), 100)
  t.equal(await revocationsB.revokedBefore('u3'), null)
  t.same(await claimsB.claim('u2', null), { generation: 4, revokedBefore: 100, user: null }, 'a claim reads the revocation in its step')
  t.ok(await a.command.ttl('b:gen:{u2}') > 29 * 24 * 3600, 'the generation lives for a month')
  t.same(await a.command.hgetall('b:held:{u2}'), { '': '4' }, 'each claim counts a connection held by its instance')
  t.ok(await a.command.ttl('b:held:{u2}') > 23 * 3600, 'counts live for a day')
})

// Regression: a release that failed while Redis was unreachable was dropped,
// so the instance's count of the user stayed, and was added into the
// `delivered` of the user's alerts for as long as they connected daily.
t.test('a release that fails while Redis is unreachable is sent again once it is back', async (t) => {
  const redis = await RedisServer.start(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  const conn = new Redis(redis.url, { enableOfflineQueue: false, maxRetriesPerRequest: 1, lazyConnect: true })
  t.teardown(() => { conn.disconnect() })
  await conn.connect()
  const claims = new RedisClaimStore(conn, 'rel:', new RedisRevocationStore(conn, 'rel:'), 'i1', null)
  await claims.claim('u', null)
  await claims.claim('u', null)
  await claims.claim('v', null)
  t.same(await admin.hgetall('rel:held:{u}'), { i1: '2' })
  const ended = once(conn, 'end')
  conn.disconnect()
  claims.released('u')
  claims.released('u')
  claims.released('v')
  await ended
  await conn.connect()
  await until('the releases sent again', async () => (await admin.exists('rel:held:{u}', 'rel:held:{v}')) === 0)
  t.pass('both users\' counts are gone')
})

/** A connected broker 'b' on a Redis of its own, and a connection that watches it. */
async function watchedBroker (t: T): Promise<{ b: RedisBroker, admin: Redis, calls: (command: string) => Promise<number> }> {
  const redis = await RedisServer.start(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  const started = broker(t, redis.url, 'b')
  await connected(started)
  // Calls of `command` so far (INFO commandstats).
  const calls = async (command: string): Promise<number> =>
    Number(new RegExp(`cmdstat_${command}:calls=(\\d+)`).exec(await admin.info('commandstats'))?.[1] ?? 0)
  return { b: started.broker, admin, calls }
}

t.test('user subscriptions asked for in one turn share one SUBSCRIBE', async (t) => {
  const { b, admin, calls } = await watchedBroker(t)
  const subscribeCalls = async (): Promise<number> => await calls('subscribe')
  const subscribers = async (userId: string): Promise<number> =>
    Number((await admin.pubsub('NUMSUB', `b:user:{${userId}}`) as unknown[])[1])

  const before = await subscribeCalls()
  const users = Array.from({ length: 1500 }, (_, i) => `many-${i}`)
  await Promise.all(users.map((userId) => b.subscribe(`user:{${userId}}`)))
  t.equal(await subscribeCalls() - before, 2, '1,500 channels in two commands of at most 1,000')
  t.equal(await subscribers('many-0'), 1)
  t.equal(await subscribers('many-1499'), 1)

  // Watched and unwatched before the batch went out: never subscribed.
  const gone = b.subscribe('user:{gone}')
  b.unsubscribe('user:{gone}')
  // Subscribed, unsubscribed and subscribed again in one turn: subscribed once.
  const again = b.subscribe('user:{again}')
  b.unsubscribe('user:{again}')
  const againTwice = b.subscribe('user:{again}')
  await Promise.all([gone, again, againTwice])
  t.equal(await subscribers('gone'), 0, 'a channel unwatched before the flush is not subscribed')
  t.equal(await subscribers('again'), 1, 'watched again in the same turn: subscribed')

  // After the flush, unwatch unsubscribes with the next flush.
  b.unsubscribe('user:{again}')
  await until('unsubscribed', async () => await subscribers('again') === 0)
  t.pass('unwatched after the flush: unsubscribed')

  // Dropped, watched and dropped again in one turn, after a SUBSCRIBE went
  // out: unsubscribed all the same (no channel left behind in Redis).
  await b.subscribe('user:{flip}')
  b.unsubscribe('user:{flip}')
  const flip = b.subscribe('user:{flip}')
  b.unsubscribe('user:{flip}')
  await flip
  await until('flip unsubscribed', async () => await subscribers('flip') === 0)
  // Dropped and watched again in one turn: still subscribed once answered,
  // and no UNSUBSCRIBE sent for it.
  await b.subscribe('user:{back}')
  const unsubscribes = await calls('unsubscribe')
  b.unsubscribe('user:{back}')
  await b.subscribe('user:{back}')
  t.equal(await subscribers('back'), 1, 'dropped and watched again in one turn: subscribed')
  t.equal(await calls('unsubscribe'), unsubscribes, 'the drop was taken back before the flush')
})

t.test('user subscriptions dropped in one turn share one UNSUBSCRIBE', async (t) => {
  const { b, admin, calls } = await watchedBroker(t)
  const unsubscribeCalls = async (): Promise<number> => await calls('unsubscribe')
  const users = Array.from({ length: 1500 }, (_, i) => `left-${i}`)
  await Promise.all(users.map((userId) => b.subscribe(`user:{${userId}}`)))
  const before = await unsubscribeCalls()
  for (const userId of users) b.unsubscribe(`user:{${userId}}`)
  await until('all unsubscribed', async () => (await admin.pubsub('CHANNELS', 'b:user:*') as string[]).length === 0)
  t.equal(await unsubscribeCalls() - before, 2, '1,500 channels in two commands of at most 1,000')
  t.same(await admin.pubsub('CHANNELS', 'b:*'), ['b:all'], 'only the broadcast channel is left')
})

t.test('a SUBSCRIBE of a later turn is not overtaken by an earlier turn\'s UNSUBSCRIBE batches', async (t) => {
  // Bug: the batches of one turn went out one after the other's answer, so
  // a SUBSCRIBE sent in the next turn could reach Redis between two of them,
  // and the second UNSUBSCRIBE then dropped a channel still wanted: its
  // user's alerts, claims and logouts no longer reached this instance.
  const { b, admin } = await watchedBroker(t)
  const pauser = new Redis(admin.options)
  t.teardown(() => pauser.disconnect())
  const users = Array.from({ length: 1500 }, (_, i) => `back-${i}`)
  await Promise.all(users.map((userId) => b.subscribe(`user:{${userId}}`)))
  // While Redis holds every command, the first batch's answer cannot come
  // back before the next turn's SUBSCRIBE is written.
  await pauser.call('CLIENT', 'PAUSE', '300', 'ALL')
  for (const userId of users) b.unsubscribe(`user:{${userId}}`)
  const again = new Promise<void>((resolve, reject) => setImmediate(() => { b.subscribe('user:{back-1499}').then(resolve, reject) }))
  await again
  // Written after the UNSUBSCRIBE batches on the same connection: once it is answered, they all were.
  await b.subscribe('user:{barrier}')
  t.equal(Number((await admin.pubsub('NUMSUB', 'b:user:{back-1499}') as unknown[])[1]), 1, 'watched again: still subscribed')
  t.equal(Number((await admin.pubsub('NUMSUB', 'b:user:{back-0}') as unknown[])[1]), 0, 'the others are dropped')
})

t.test('while Redis is down or hung', async (t) => {
  const redis = await RedisServer.start(t)
  const started = broker(t, redis.url, 'c')
  const a = started.broker
  await connected(started)
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
  await t.rejects(a.subscribe('user:{u}'), 'no subscription without Redis')
  await t.rejects(new RedisClaimStore(started.command, 'b:', new RedisRevocationStore(started.command, 'b:'), '', null).claim('u', null))
  await redis.start()
  await until('reconnected', () => a.connected)
  await a.subscribe('user:{u}')
  t.pass('a later subscribe goes through')
})
