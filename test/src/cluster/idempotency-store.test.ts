import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import { ABANDONED_AFTER_MS, MemoryIdempotencyStore, PENDING_TTL_MS, RedisIdempotencyStore } from '../../../src/cluster/idempotency-store.js'
import { RedisHistoryStore } from '../../../src/cluster/redis-history-store.js'
import { ALL_TOPIC, userTopic } from '../../../src/cluster/broker.js'
import { RedisServer } from '../../helpers/redis-server.js'

/** A private Redis with a history and idempotency store over it, under `prefix`. */
async function storesOn (t: Test, prefix: string): Promise<{ client: Redis, history: RedisHistoryStore, store: RedisIdempotencyStore }> {
  const redis = await RedisServer.start(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { client.disconnect() })
  const history = new RedisHistoryStore({
    redis: client,
    prefix,
    limits: { maxEntries: 600, retentionMs: 60_000 },
    channelOf: (topic) => `${prefix}${topic}`,
    origin: Buffer.from('****************'),
    topicOf: (owner) => owner === null ? ALL_TOPIC : userTopic(owner)
  })
  return { client, history, store: new RedisIdempotencyStore(client, prefix, 60_000, history.findRecord.bind(history)) }
}

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

// Regression: the Redis key was `idem:{<scope>}:<key>` as is, so service
// `svc` with key `x}:k` and service `svc}:x` with key `k` shared one key: the
// second got the first one's answer as a replay and delivered nothing.
t.test('keys of two services never meet, whatever their sub holds', async (t) => {
  const redis = await RedisServer.start(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { client.disconnect() })
  for (const store of [new MemoryIdempotencyStore(60_000), new RedisIdempotencyStore(client, 'idem-test:', 60_000)]) {
    await store.complete('svc', 'x}:k', 'fp', '{"id":"a"}')
    t.same(await store.begin('svc}:x', 'k', 'fp'), { state: 'new' }, 'another service, its own key')
    await store.complete('svc}:x', 'k', 'fp', '{"id":"b"}')
    t.same(await store.begin('svc', 'x}:k', 'fp'), { state: 'done', fingerprint: 'fp', answer: '{"id":"a"}' })
    t.same(await store.begin('svc}:x', 'k', 'fp'), { state: 'done', fingerprint: 'fp', answer: '{"id":"b"}' })
  }
  t.same((await client.keys('idem-test:*')).sort(), ['idem-test:idem:{svc}:x}:k', 'idem-test:idem~:{svc%7D%3Ax}:k'], 'a scope without } is stored as before')
})

// Regression: Redis ran the append, then died before replying; the publish
// was answered 503, the key freed nothing (Redis down), and the retry
// published a second alert once the pending mark expired.
t.test('the append stores the idempotency answer in its own step', async (t) => {
  const { client, history, store: idempotency } = await storesOn(t, 'rec:')
  const head = (id: string, stream: string) => `{"id":"${id}","delivered":0,"stream":"${stream}","pos":"`
  t.same(await idempotency.begin('svc', 'k', 'fp', 'ann'), { state: 'new' })
  const { epoch, seq } = await history.append('ann', '{"type":"alert","id":"x","pos":"', '"}', idempotency.record('svc', 'k', 'fp', head('x', 'user')))
  // More alerts after it than one look at the stream covers (256).
  for (let i = 0; i < 300; i++) await history.append('ann', '{"type":"alert","pos":"', '"}', i % 2 === 0 ? undefined : idempotency.record('svc', `other-${i}`, 'fp', head(`o${i}`, 'user')))
  t.equal((await history.read('ann', { epoch, seq: 0 })).entries.length, 301, 'the answers do not change what is read')
  // The reply is lost here: the request fails and tries to free the key.
  await idempotency.abandon('svc', 'k', 'fp', 'ann')
  t.equal(await client.get('rec:idem:{svc}:k'), `Dfp\n{"id":"x","delivered":0,"stream":"user","pos":"${epoch}:${seq}"}`, 'not freed: the stored answer is the key\'s')
  const repeat = await idempotency.begin('svc', 'k', 'fp', 'ann')
  t.equal(repeat.state, 'done', 'the retry finds the answer')
  t.same(JSON.parse((repeat as { answer: string }).answer), { id: 'x', delivered: 0, stream: 'user', pos: `${epoch}:${seq}` })
  t.ok(await client.pttl('rec:idem:{svc}:k') > 50_000, 'kept under the key for the window')
  t.equal((await idempotency.begin('svc', 'k', 'other', 'ann')).state, 'done', 'a repeat with another body sees the answer too (422)')

  // Reply lost and the key could not be freed (Redis down): the retry finds it pending, then the answer.
  t.same(await idempotency.begin('svc', 'b', 'fp', null), { state: 'new' })
  const all = await history.append(null, '{"type":"alert","id":"y","pos":"', '"}', idempotency.record('svc', 'b', 'fp', head('y', 'all')))
  const pending = await idempotency.begin('svc', 'b', 'fp', null)
  t.same(pending.state === 'done' && JSON.parse(pending.answer), { id: 'y', delivered: 0, stream: 'all', pos: `${all.epoch}:${all.seq}` }, 'a pending key whose append ran is answered')
  t.same(await idempotency.begin('svc', 'b', 'fp', 'ann'), pending, 'then from the key itself')

  // Not appended: freed; still pending: waits; looked up in its own stream only.
  t.same(await idempotency.begin('svc', 'c', 'fp', 'ann'), { state: 'new' })
  t.same(await idempotency.begin('svc', 'c', 'fp', 'ann'), { state: 'pending', fingerprint: 'fp' }, 'nothing stored yet: a repeat waits')
  t.same(await idempotency.begin('svc', 'c', 'fp'), { state: 'pending', fingerprint: 'fp' }, 'userIds: no stream to look in')
  await idempotency.abandon('svc', 'c', 'fp', 'bob')
  t.same(await idempotency.begin('svc', 'c', 'fp', 'ann'), { state: 'new' }, 'freed: nothing was appended')

  // Only entries appended since the key could have been taken are looked at.
  await client.set('rec:idem:{svc}:old', 'Pfp', 'PX', PENDING_TTL_MS)
  await client.xadd('rec:hist:{carl}', '1-0', 'f', '{}', 't', Date.now() - 36_000, 'i', 'svc\nold', 'a', 'Dfp\n{}')
  t.same(await idempotency.begin('svc', 'old', 'fp', 'carl'), { state: 'pending', fingerprint: 'fp' }, 'an entry older than a pending key can be is not its answer')
})

t.test('a key that expires between taking and reading it is taken again', async (t) => {
  const redis = await RedisServer.start(t)
  const client = new Redis(redis.url, { maxRetriesPerRequest: 1 })
  t.teardown(() => { client.disconnect() })
  const store = new RedisIdempotencyStore(client, 'race:', 60_000)
  t.same(await store.begin('svc', 'k', 'fp'), { state: 'new' })
  // Stage the race: the pending mark expires right after SET NX failed.
  const get = client.get.bind(client)
  let staged = 0
  client.get = (async (key: string) => {
    if (staged++ === 0) await client.del(key)
    return await get(key)
  }) as typeof client.get
  t.same(await store.begin('svc', 'k', 'fp2'), { state: 'new' }, 'taken by the second request')
  t.equal(staged, 1)
  t.equal(await get('race:idem:{svc}:k'), 'Pfp2')
})

// Regression: a publish whose append was lost with a Cluster shard (its reply
// lost, its key left pending because Redis did not answer the abandon) made
// every retry wait out the 30 s mark, past the publisher's own deadline.
t.test('a key pending past ABANDONED_AFTER_MS whose append is not in its stream is taken over by a retry', async (t) => {
  const { client, history, store } = await storesOn(t, 'ab:')
  const pendingFor = async (key: string, ageMs: number): Promise<void> => {
    await client.set(`ab:idem:{svc}:${key}`, 'Pfp', 'PX', PENDING_TTL_MS - ageMs)
  }
  await pendingFor('young', ABANDONED_AFTER_MS - 1000)
  t.same(await store.begin('svc', 'young', 'fp', 'ann'), { state: 'pending', fingerprint: 'fp' }, 'younger: possibly in progress, the retry waits')
  await pendingFor('old', ABANDONED_AFTER_MS + 1000)
  t.same(await store.begin('svc', 'old', 'other', 'ann'), { state: 'pending', fingerprint: 'fp' }, 'another body is not let in (422)')
  t.same(await store.begin('svc', 'old', 'fp', null), { state: 'new' }, 'the same body takes it over')
  t.ok(await client.pttl('ab:idem:{svc}:old') > PENDING_TTL_MS - 1000, 'pending afresh, for the retry')
  t.same(await store.begin('svc', 'old', 'fp', null), { state: 'pending', fingerprint: 'fp' }, 'and only one retry does')
  await pendingFor('appended', ABANDONED_AFTER_MS + 1000)
  await history.append('ann', '{"type":"alert","id":"x","pos":"', '"}', store.record('svc', 'appended', 'fp', '{"id":"x","delivered":0,"stream":"user","pos":"'))
  t.equal((await store.begin('svc', 'appended', 'fp', 'ann')).state, 'done', 'appended: answered, never taken over')
  await pendingFor('ids', ABANDONED_AFTER_MS + 1000)
  t.equal((await store.begin('svc', 'ids', 'fp')).state, 'pending', 'userIds: no stream tells, it waits for the mark to expire')
})
