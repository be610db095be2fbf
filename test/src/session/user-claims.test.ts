import t from 'tap'
import { MemoryBroker } from '../../../src/cluster/memory-broker.js'
import { MemoryClaimStore } from '../../../src/cluster/claim-store.js'
import type { HistoryStore } from '../../../src/cluster/history-store.js'
import { MemoryHistoryStore } from '../../../src/cluster/memory-history-store.js'
import { MemoryRevocationStore } from '../../../src/cluster/revocation-store.js'
import { Delivery } from '../../../src/delivery/delivery.js'
import type { SessionRegistry } from '../../../src/session/session-registry.js'
import { UserClaims } from '../../../src/session/user-claims.js'
import pino from 'pino'

const log = pino({ level: 'silent' })

function claimsWith (opts: { store?: MemoryClaimStore, broker?: MemoryBroker, history?: HistoryStore, maxPerUser?: number, registry?: Partial<SessionRegistry> } = {}): { claims: UserClaims, delivery: Delivery, revocations: MemoryRevocationStore } {
  const registry = { applyClaim: () => {}, applyLogout: () => {}, ...opts.registry } as unknown as SessionRegistry
  const delivery = new Delivery({ broker: opts.broker ?? new MemoryBroker(), sessions: registry, log, history: opts.history })
  const revocations = new MemoryRevocationStore()
  const claims = new UserClaims({ delivery, store: opts.store ?? new MemoryClaimStore(revocations, null), registry, maxPerUser: opts.maxPerUser ?? 1 })
  return { claims, delivery, revocations }
}

t.test('a failed subscription or generation releases what was taken', async (t) => {
  const broker = new MemoryBroker()
  broker.subscribe = async () => { throw new Error('subscriber down') }
  const counting = new MemoryClaimStore(new MemoryRevocationStore(), null)
  const claimOf = counting.claim.bind(counting)
  let claimed = 0
  counting.claim = async (userId, from) => {
    claimed++
    return await claimOf(userId, from)
  }
  const first = claimsWith({ broker, store: counting })
  let read = 0
  await t.rejects(first.claims.claim('u', null, async () => { read++ }), /subscriber down/)
  t.notOk(first.delivery.watching('u'), 'nothing watched when the subscription failed')
  t.equal(read, 0, 'nor read: its events would not all reach this instance')
  t.equal(claimed, 0, 'nor claimed: the claim reads the user\'s stream')

  const store = new MemoryClaimStore(new MemoryRevocationStore(), null)
  store.claim = async () => { throw new Error('INCR failed') }
  const released: string[] = []
  store.released = (userId) => { released.push(userId) }
  const second = claimsWith({ store })
  await t.rejects(second.claims.claim('u', null, async () => {}), /INCR failed/)
  t.notOk(second.delivery.watching('u'), 'the watch is released when the generation fails')
  t.same(released, [], 'a claim that failed holds nothing: no release is sent for it (it would be sent again after an outage)')
  second.claims.apply('u', { type: 'claim', generation: 5 })
  t.notOk(second.claims.superseded('u', 1), 'and the user is no longer tracked')

  const held = new MemoryClaimStore(new MemoryRevocationStore(), null)
  const releasedHeld: string[] = []
  held.released = (userId) => { releasedHeld.push(userId) }
  const third = claimsWith({ store: held })
  await t.rejects(third.claims.claim('u', null, async () => { throw new Error('history down') }), /history down/)
  t.notOk(third.delivery.watching('u'), 'the watch is released when the read fails')
  t.same(releasedHeld, ['u'], 'and the claim it made is given back')
})

t.test('the claim store and the delivery see history both, or neither', async (t) => {
  const history = new MemoryHistoryStore({ maxEntries: 10, retentionMs: 60_000 }, () => {})
  t.throws(() => claimsWith({ store: new MemoryClaimStore(new MemoryRevocationStore(), history) }), /the claim store reads history, the delivery has none/)
  t.throws(() => claimsWith({ history }), /the claim store does not read history, the delivery has it/)
  const { claims } = claimsWith({ history, store: new MemoryClaimStore(new MemoryRevocationStore(), history) })
  const claim = await claims.claim('u', null, async () => {})
  t.same({ top: claim.user?.top, entries: claim.user?.entries }, { top: 0, entries: [] }, 'with history, the claim gives the user\'s stream as read')
})

t.test('claims seen before our own generation arrives supersede it', async (t) => {
  const { claims } = claimsWith({ maxPerUser: 2 })
  const { generation, read } = await claims.claim('u', null, async () => 'plan')
  t.equal(read, 'plan', 'with what the read gave')
  claims.apply('u', { type: 'claim', generation: generation + 1 })
  t.notOk(claims.superseded('u', generation), 'two sessions allowed: still within the newest two')
  claims.apply('u', { type: 'claim', generation: generation + 2 })
  claims.apply('u', { type: 'claim', generation })
  t.ok(claims.superseded('u', generation), 'an older claim does not lower the newest')
  claims.release('u')
  claims.release('never-claimed')
  t.notOk(claims.superseded('never-claimed', 1), 'releasing an unknown user is harmless')
})

t.test('a logout seen while a connection completes is remembered until the claim is released', async (t) => {
  const closed: Array<[string, number]> = []
  const { claims, revocations } = claimsWith({ registry: { applyLogout: (userId: string, before: number) => { closed.push([userId, before]) } } })
  claims.apply('stranger', { type: 'logout', before: 100 })
  t.notOk(claims.loggedOutSince('stranger', 50), 'a user not claimed here is not remembered')
  t.same(closed, [['stranger', 100]], 'but its open sessions are closed')

  await revocations.revoke('u', 90, 60)
  const claim = await claims.claim('u', null, async () => {})
  t.equal(claim.revokedBefore, 90, 'the claim reads the revocation after subscribing')
  t.notOk(claims.loggedOutSince('u', 50), 'nothing seen since the claim yet')
  await claims.logout('u', 100)
  claims.apply('u', { type: 'logout', before: 95 })
  t.ok(claims.loggedOutSince('u', 100), 'a token issued in the logout second is revoked')
  t.ok(claims.loggedOutSince('u', null), 'a token without iat is revoked')
  t.notOk(claims.loggedOutSince('u', 101), 'an older logout seen later does not lower it; a newer token is not revoked')
  claims.release('u')
  t.notOk(claims.loggedOutSince('u', 1), 'forgotten with the last claim')
})

t.test('generations are forgotten with the last claim of a user (memory store)', async (t) => {
  const { claims } = claimsWith({ maxPerUser: 2 })
  t.equal((await claims.claim('u', null, async () => {})).generation, 1)
  t.equal((await claims.claim('u', null, async () => {})).generation, 2)
  claims.release('u')
  t.equal((await claims.claim('u', null, async () => {})).generation, 3, 'one claim still held: the count goes on')
  claims.release('u')
  claims.release('u')
  t.equal((await claims.claim('u', null, async () => {})).generation, 1, 'none held: started again')
})
