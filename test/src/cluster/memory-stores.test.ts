import t from 'tap'
import { MemoryBroker } from '../../../src/cluster/memory-broker.js'
import { MemoryClaimStore } from '../../../src/cluster/claim-store.js'
import { MemoryRevocationStore } from '../../../src/cluster/revocation-store.js'
import { MemoryIdempotencyStore } from '../../../src/cluster/idempotency-store.js'
import { MemoryHistoryStore } from '../../../src/cluster/memory-history-store.js'
import { STREAM_META_TTL_MS } from '../../../src/cluster/history-store.js'
import { createRedisConnections } from '../../../src/cluster/redis-connections.js'

t.test('the in-process stores of a single instance', async (t) => {
  const broker = new MemoryBroker()
  broker.loopback('all', Buffer.from('x'))
  t.equal(await broker.publish('all', Buffer.from('x')), 0, 'no other instance to reach')
  await broker.subscribe('all')
  broker.unsubscribe('all')
  t.equal(await broker.ping(), true)
  await broker.close()
  const revocations = new MemoryRevocationStore()
  const claims = new MemoryClaimStore(revocations, null)
  t.equal(await claims.othersHolding('ann'), 0, 'no other instance holds anyone')
  await revocations.revoke('ann', 100, 60)
  t.same(await claims.claim('ann', null), { generation: 1, revokedBefore: 100, user: null }, 'a claim reads the revocation; no history, no stream read')
  t.equal(new MemoryIdempotencyStore(60_000).record(), undefined, 'nothing to store with an append: a crash loses it all anyway')
})

t.test('a revocation is never weakened by a later one: the later second and the longer life win', async (t) => {
  const revocations = new MemoryRevocationStore()
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  await revocations.revoke('ann', 200, 7200)
  await revocations.revoke('ann', 100, 60)
  t.equal(await revocations.revokedBefore('ann'), 200, 'an earlier second does not lower it')
  Date.now = () => realNow() + 61_000
  t.equal(await revocations.revokedBefore('ann'), 200, 'a shorter life does not cut it short')
  await revocations.revoke('ann', 300, 60)
  t.equal(await revocations.revokedBefore('ann'), 300, 'a later second raises it')
  Date.now = () => realNow() + 7201_000
  t.equal(await revocations.revokedBefore('ann'), null, 'it ends with the longest life given')
})

t.test('expired idempotency keys are swept as the map grows', async (t) => {
  const store = new MemoryIdempotencyStore(1000)
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  for (let i = 0; i < 1023; i++) await store.complete('svc', `k${i}`, 'fp', '{}')
  Date.now = () => realNow() + 5000
  await store.complete('svc', 'fresh', 'fp', '{}')
  t.equal((await store.begin('svc', 'fresh', 'fp2')).state, 'done', 'the sweep keeps a key still in its window')
  t.same(await store.begin('svc', 'k1', 'fp'), { state: 'new' }, 'an expired key is free again')
  t.same(await store.begin('svc', 'k1', 'fp'), { state: 'pending', fingerprint: 'fp' })
})

t.test('streams quiet for longer than an epoch is kept are forgotten', async (t) => {
  const delivered: string[] = []
  const store = new MemoryHistoryStore({ maxEntries: 10, retentionMs: 60_000 }, (topic) => { delivered.push(topic) })
  const realNow = Date.now
  t.teardown(() => { Date.now = realNow })
  await store.append('ann', '{"pos":"', '"}')
  const before = await store.read('ann', null)
  t.equal(before.top, 1)
  Date.now = () => realNow() + STREAM_META_TTL_MS + 120_000
  await store.append('bob', '{"pos":"', '"}')
  const after = await store.read('ann', null)
  t.equal(after.top, 0, 'ann\'s stream was swept: it starts again')
  // Regression: it started again in the same epoch, so a resume from a
  // position given out before the sweep was answered recovered, with the
  // new alerts under those numbers taken as already seen.
  t.not(after.epoch, before.epoch, 'in an epoch of its own')
  const again = await store.append('ann', '{"pos":"', '"}')
  t.equal(again.epoch, after.epoch)
  t.equal(again.seq, 1)
  const resumed = await store.read('ann', { epoch: before.epoch, seq: 1 })
  t.same(resumed.entries.map((entry) => entry.seq), [1], 'a position of the old epoch reads the new stream from its start')
  t.equal((await store.read('bob', null)).epoch, after.epoch, 'a stream created after the sweep counts in the new epoch')
})

t.test('TLS reaches every connection of a Sentinel or Cluster setup', async (t) => {
  const sentinel = createRedisConnections({ kind: 'sentinel', sentinels: [{ host: '127.0.0.1', port: 1 }], name: 'm', tls: true })
  t.same(sentinel.command.options.tls, {})
  t.equal(sentinel.command.options.enableTLSForSentinelMode, true)
  t.equal(sentinel.command.options.sentinelRetryStrategy?.(3), 300, 'Sentinels are asked again with backoff')
  sentinel.command.disconnect()
  sentinel.subscriber.disconnect()
  const cluster = createRedisConnections({ kind: 'cluster', nodes: [{ host: '127.0.0.1', port: 1 }], tls: true })
  t.equal(cluster.sharded, true)
  t.equal((cluster.command as unknown as { options: { clusterRetryStrategy: (n: number) => number } }).options.clusterRetryStrategy(20), 1000, 'reconnects with backoff, capped')
  t.same((cluster.command as unknown as { options: { redisOptions: { tls: object } } }).options.redisOptions.tls, {})
  cluster.command.disconnect()
})
