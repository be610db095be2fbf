import t from 'tap'
import { MemoryBus } from '../../../src/cluster/memory-bus.js'
import type { SessionRegistry } from '../../../src/session/session-registry.js'
import { UserClaims } from '../../../src/session/user-claims.js'

const registry = { applyClaim: () => {} } as unknown as SessionRegistry

t.test('a failed subscription or generation releases what was taken', async (t) => {
  const bus = new MemoryBus()
  let unwatched = 0
  bus.watchUser = async () => { throw new Error('subscriber down') }
  bus.unwatchUser = () => { unwatched++ }
  const claims = new UserClaims(bus, registry, 1)
  await t.rejects(claims.claim('u'), /subscriber down/)
  t.equal(unwatched, 0, 'nothing to unwatch when the subscription failed')

  const bus2 = new MemoryBus()
  bus2.nextGeneration = async () => { throw new Error('INCR failed') }
  bus2.unwatchUser = () => { unwatched++ }
  const claims2 = new UserClaims(bus2, registry, 1)
  await t.rejects(claims2.claim('u'), /INCR failed/)
  t.equal(unwatched, 1, 'the subscription is released when the generation fails')
  claims2.onRemoteClaim('u', 5)
  t.notOk(claims2.superseded('u', 1), 'and the user is no longer tracked')
})

t.test('claims seen before our own generation arrives supersede it', async (t) => {
  const claims = new UserClaims(new MemoryBus(), registry, 2)
  const { generation } = await claims.claim('u')
  claims.onRemoteClaim('u', generation + 1)
  t.notOk(claims.superseded('u', generation), 'two sessions allowed: still within the newest two')
  claims.onRemoteClaim('u', generation + 2)
  claims.onRemoteClaim('u', generation)
  t.ok(claims.superseded('u', generation), 'an older claim does not lower the newest')
  claims.release('u')
  claims.release('never-claimed')
  t.notOk(claims.superseded('never-claimed', 1), 'releasing an unknown user is harmless')
})

t.test('a logout seen while a connection completes is remembered until the claim is released', async (t) => {
  const closed: Array<[string, number]> = []
  const registry = { applyClaim: () => {}, applyLogout: (userId: string, before: number) => { closed.push([userId, before]) } } as unknown as SessionRegistry
  const bus = new MemoryBus()
  const claims = new UserClaims(bus, registry, 1)
  claims.onLogout('stranger', 100)
  t.notOk(claims.loggedOutSince('stranger', 50), 'a user not claimed here is not remembered')
  t.same(closed, [['stranger', 100]], 'but its open sessions are closed')

  await bus.revoke('u', 90, 60)
  const claim = await claims.claim('u')
  t.equal(claim.revokedBefore, 90, 'the claim reads the revocation after subscribing')
  t.notOk(claims.loggedOutSince('u', 50), 'nothing seen since the claim yet')
  claims.onLogout('u', 100)
  claims.onLogout('u', 95)
  t.ok(claims.loggedOutSince('u', 100), 'a token issued in the logout second is revoked')
  t.ok(claims.loggedOutSince('u', null), 'a token without iat is revoked')
  t.notOk(claims.loggedOutSince('u', 101), 'an older logout seen later does not lower it; a newer token is not revoked')
  claims.release('u')
  t.notOk(claims.loggedOutSince('u', 1), 'forgotten with the last claim')
})
