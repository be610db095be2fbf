import t from 'tap'
import { MemoryBus } from '../../plugins/bus/memory.js'
import type { SessionRegistry } from '../../src/session-registry.js'
import { UserClaims } from '../../src/user-claims.js'

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
  const generation = await claims.claim('u')
  claims.onRemoteClaim('u', generation + 1)
  t.notOk(claims.superseded('u', generation), 'two sessions allowed: still within the newest two')
  claims.onRemoteClaim('u', generation + 2)
  claims.onRemoteClaim('u', generation)
  t.ok(claims.superseded('u', generation), 'an older claim does not lower the newest')
  claims.release('u')
  claims.release('never-claimed')
  t.notOk(claims.superseded('never-claimed', 1), 'releasing an unknown user is harmless')
})
