import t from 'tap'
import { Redis } from 'ioredis'
import { twoInstances } from '../helpers/build.js'
import { waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { nowSec, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

// Regression: with Redis stalled (CLIENT PAUSE) the revocation read timed
// out, was skipped, and a revoked token got 101 once Redis answered again.
// Contract: when revocation cannot be checked, the token is refused (503 at
// the handshake; an `auth` message is not taken).

const PAUSE_MS = 2300

t.test('revocation fails closed while Redis stalls', async (t) => {
  const redis = await RedisServer.start(t)
  const [a, b] = await twoInstances(t, redis.url)
  const admin = new Redis(redis.url)
  t.teardown(() => admin.disconnect())

  const revoked = userToken('stalled', { iat: nowSec() - 5 })
  const logout = await fetch(`${a.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${revoked}` } })
  t.equal(logout.status, 204)
  t.equal((await TestClient.refused(b.wsUrl, { token: revoked })).status, 403, 'refused while Redis answers')
  // A token of a later login (issued after the logout second).
  const { client: session } = await TestClient.connect(a.wsUrl, { token: userToken('stalled', { iat: nowSec() + 1 }) })

  t.equal(await admin.call('CLIENT', 'PAUSE', String(PAUSE_MS), 'ALL'), 'OK')
  const [upgrade, answer] = await Promise.all([
    TestClient.open(b.wsUrl, { token: revoked, timeoutMs: PAUSE_MS + 5000 }).then(
      (client) => { client.ws.terminate(); return 101 },
      (err: { status?: number }) => err.status ?? -1
    ),
    (async () => {
      session.send({ type: 'auth', token: revoked })
      return await session.next('error', PAUSE_MS + 5000)
    })()
  ])
  t.equal(upgrade, 503, 'the upgrade with a revoked token is refused with 503, never accepted')
  t.equal(answer.code, 'auth_failed', 'the auth message with a revoked token is answered with an error')
  t.equal(session.ws.readyState, session.ws.OPEN, 'the session keeps its current token')

  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)
  t.equal((await TestClient.refused(b.wsUrl, { token: revoked })).status, 403, 'once Redis answers, the token is known revoked')
  session.send({ type: 'auth', token: revoked })
  t.equal((await session.waitClosed()).code, 4403, 'and the auth message with it closes the session with 4403')
})
