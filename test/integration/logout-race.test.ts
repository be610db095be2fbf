import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { build, twoInstances, type Built } from '../helpers/build.js'
import { RedisServer } from '../helpers/redis-server.js'
import { userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

// Regression: a connection made while its user logs out survived the logout
// (101 and 204, and the socket kept receiving the user's alerts), because
// the revocation was read before the claim and logout closed only sessions
// already registered. Contract: such a connection ends closed with 4403 or
// is refused, on every instance.

const ROUNDS = 30

type Outcome = 'refused' | 'closed 4403' | 'survived' | `closed ${number}`

/** Opens `/ws` on `upgradeOn` while logging out on `logoutOn`, at once. */
async function race (upgradeOn: Built, logoutOn: Built, user: string): Promise<{ outcome: Outcome, logout: number }> {
  const token = userToken(user)
  const [opened, logout] = await Promise.all([
    TestClient.open(upgradeOn.wsUrl, { token }).then((client) => client, (err: { status?: number }) => err),
    fetch(`${logoutOn.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  ])
  if (!(opened instanceof TestClient)) return { outcome: 'refused', logout: logout.status }
  // Every close code is a result; staying open past the deadline is the bug.
  const closed = await opened.waitClosed(3000).catch(() => null)
  if (closed === null) {
    opened.ws.terminate()
    return { outcome: 'survived', logout: logout.status }
  }
  return { outcome: closed.code === 4403 ? 'closed 4403' : `closed ${closed.code}`, logout: logout.status }
}

async function rounds (t: Test, upgradeOn: Built, logoutOn: Built): Promise<void> {
  const tally = new Map<Outcome, number>()
  for (let round = 0; round < ROUNDS; round++) {
    const { outcome, logout } = await race(upgradeOn, logoutOn, `racer-${randomUUID()}`)
    t.equal(logout, 204, `round ${round}: the logout succeeded`)
    tally.set(outcome, (tally.get(outcome) ?? 0) + 1)
  }
  t.equal(tally.get('survived') ?? 0, 0, `no connection survived the logout (${JSON.stringify(Object.fromEntries(tally))})`)
  t.same([...tally.keys()].filter((o) => o !== 'refused' && o !== 'closed 4403'), [], 'every connection was refused or closed with 4403')
}

function cluster (t: Test, redis: RedisServer): Promise<[Built, Built]> {
  return twoInstances(t, redis.url, { REST_RATE_LIMIT_PER_MINUTE: '10000' })
}

t.test('a connection that races a logout ends refused or closed with 4403', async (t) => {
  const redis = await RedisServer.start(t)

  t.test('Redis: upgrade and logout on the same instance', async (t) => {
    const [a] = await cluster(t, redis)
    await rounds(t, a, a)
  })

  t.test('Redis: upgrade on B, logout on A', async (t) => {
    const [a, b] = await cluster(t, redis)
    await rounds(t, b, a)
  })

  t.test('single instance (in-process bus)', async (t) => {
    const a = await build(t, { env: { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000', REST_RATE_LIMIT_PER_MINUTE: '10000' } })
    await rounds(t, a, a)
  })
})
