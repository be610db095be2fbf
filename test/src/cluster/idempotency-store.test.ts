import t from 'tap'
import { Redis } from 'ioredis'
import { MemoryIdempotencyStore, RedisIdempotencyStore } from '../../../src/cluster/idempotency-store.js'
import { RedisHistoryStore } from '../../../src/cluster/redis-history-store.js'
import { ALL_TOPIC, userTopic } from '../../../src/cluster/broker.js'
import { RedisServer } from '../../helpers/redis-server.js'

t.test('a key is taken once, answered, and a repeat reads the answer or the conflict', async (t) => {
  const redis = await RedisServer.start(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { client.disconnect() })
  for (const store of [new MemoryIdempotencyStore(60_000), new RedisIdempotencyStore(client, 'idem-test:', 60_000)]) {
    t.same(await store.begin('svc', 'k1', 'fp'), { state: 'new' })
    t.same(await store.begin('svc', 'k1', 'fp'), { state: 'pending', fingerprint: 'fp' }, 'taken: a repeat waits')
    t.same(await store.begin('other', 'k1', 'fp'), { state: 'new' }, 'scoped by service')
    await store.abandon('svc', 'k1', 'another')
    t.equal((await store.begin('svc', 'k1', 'fp')).state, 'pending', 'only the request that took it frees it')
    await store.abandon('svc', 'k1', 'fp')
    t.same(await store.begin('svc', 'k1', 'fp'), { state: 'new' }, 'freed after a failed publish')
    await store.complete('svc', 'k1', 'fp', '{"id":"a"}')
    await store.abandon('svc', 'k1', 'fp')
    t.same(await store.begin('svc', 'k1', 'fp2'), { state: 'done', fingerprint: 'fp', answer: '{"id":"a"}' }, 'an answer is never freed')
  }
})

// Regression: Redis ran the append, then died before replying; the publish
// was answered 503, the key freed nothing (Redis down), and the retry
// published a second alert once the pending mark expired.
t.test('the append stores the idempotency answer in its own step', async (t) => {
  const redis = await RedisServer.start(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { client.disconnect() })
  const idempotency = new RedisIdempotencyStore(client, 'rec:', 60_000)
  const history = new RedisHistoryStore({
    redis: client,
    prefix: 'rec:',
    limits: { maxEntries: 10, retentionMs: 60_000 },
    channelOf: (topic) => `rec:${topic}`,
    origin: Buffer.from('****************'),
    topicOf: (owner) => owner === null ? ALL_TOPIC : userTopic(owner)
  })
  t.same(await idempotency.begin('svc', 'k', 'fp'), { state: 'new' })
  const { epoch, seq } = await history.append('ann', '{"type":"alert","id":"x","pos":"', '"}', idempotency.record('svc', 'k', 'fp', '{"id":"x","delivered":0,"stream":"user","pos":"', 'ann'))
  // The reply is lost here: the request fails and tries to free the key.
  await idempotency.abandon('svc', 'k', 'fp')
  const repeat = await idempotency.begin('svc', 'k', 'fp', 'ann')
  t.equal(repeat.state, 'done', 'the retry finds the answer')
  t.same(JSON.parse((repeat as { answer: string }).answer), { id: 'x', delivered: 0, stream: 'user', pos: `${epoch}:${seq}` })
  t.ok(await client.pttl('rec:idem:{svc}:k') > 50_000, 'kept under the key for the window')
  t.equal((await idempotency.begin('svc', 'k', 'other', 'ann')).state, 'done', 'a repeat with another body sees the answer too (422)')
  t.ok(await client.exists('rec:idem-ans:{ann}:svc:k'), 'the append wrote it in the stream\'s slot')
})
