import t from 'tap'
import { Redis } from 'ioredis'
import { MAX_REVOCATION_TTL_SEC } from '../../routes/auth.js'
import { build, type Built } from '../helpers/build.js'
import { waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { newUser, nowSec, signJwt, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

// Regressions of POST /auth/logout: a token with a fractional `exp` got 503
// on Redis (`SET ... EX 172801.5` is refused), a token dated a few seconds
// ahead survived its own logout (only `iat <= now` was revoked), and a
// second logout with a short-lived token cut the first one's revocation
// short. Contract: 204, and every token of the user issued until then (the
// one used included) is refused for as long as the token used lives.

const logout = (gw: Built, token: string): Promise<number> =>
  fetch(`${gw.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } }).then((r) => r.status)

/** 101, or the status that refused the upgrade. */
const upgrade = (gw: Built, token: string): Promise<number> =>
  TestClient.open(gw.wsUrl, { token }).then((client) => { client.ws.terminate(); return 101 }, (err: { status?: number }) => err.status ?? -1)

t.test('logout on Redis', async (t) => {
  const redis = await RedisServer.start(t)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.quit())
  const prefix = 'lo:'
  const gw = await build(t, { env: { REDIS_URL: redis.url, REVOCATION_TTL_SECONDS: '60' }, redisPrefix: prefix })
  // Its Redis connections are up (commands are refused until then, not queued).
  await waitForStatus(`${gw.url}/ready`, 200)

  t.test('a token with a fractional exp logs out (204), for its whole life', async (t) => {
    const user = newUser()
    const token = userToken(user, { exp: nowSec() + 172800.5 })
    t.equal(await logout(gw, token), 204)
    t.equal(await upgrade(gw, token), 403, 'the token is revoked')
    const ttl = await admin.ttl(`${prefix}revoked:{${user}}`)
    t.ok(ttl >= 172800 && ttl <= 172802, `kept as long as the token lives: ${ttl} s`)
  })

  t.test('a token that lives for ever is revoked for as long as Redis keeps an expiry', async (t) => {
    const user = newUser()
    const token = userToken(user, { exp: 1e13 })
    t.equal(await logout(gw, token), 204)
    t.equal(await admin.ttl(`${prefix}revoked:{${user}}`), MAX_REVOCATION_TTL_SEC)
    t.equal(await upgrade(gw, token), 403)
  })

  t.test('a token dated ahead of this clock is revoked by its own logout', async (t) => {
    const user = newUser()
    const ahead = userToken(user, { iat: nowSec() + 20 })
    t.equal(await upgrade(gw, ahead), 101, 'accepted: within the skew')
    t.equal(await logout(gw, ahead), 204)
    t.equal(await upgrade(gw, ahead), 403, 'refused after its logout')
  })

  t.test('a later logout with a short-lived token keeps the earlier revocation whole', async (t) => {
    const user = newUser()
    const long = userToken(user, { exp: nowSec() + 7200 })
    t.equal(await logout(gw, long), 204)
    const short = userToken(user, { iat: nowSec() + 1, exp: nowSec() + 61 })
    t.equal(await logout(gw, short), 204)
    t.ok(await admin.ttl(`${prefix}revoked:{${user}}`) > 7000, 'the revocation still lives as long as the long token')
    t.equal(await upgrade(gw, long), 403)
    t.equal(await upgrade(gw, short), 403)
  })
})

t.test('in memory: a token dated ahead of this clock is revoked by its own logout', async (t) => {
  const gw = await build(t)
  const ahead = userToken(newUser(), { iat: nowSec() + 20 })
  t.equal(await logout(gw, ahead), 204)
  t.equal(await upgrade(gw, ahead), 403)
})

t.test('in memory: a token without iat logs out up to now, and is refused after', async (t) => {
  const gw = await build(t)
  const user = newUser()
  const token = signJwt({ sub: user, exp: nowSec() + 3600 })
  const from = nowSec()
  t.equal(await logout(gw, token), 204)
  t.equal(await upgrade(gw, token), 403)
  const before = await gw.app.cluster.revocations.revokedBefore(user) as number
  t.ok(before >= from && before <= nowSec(), `revoked up to the logout's second: ${before}`)
})
