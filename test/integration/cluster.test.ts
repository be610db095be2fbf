import t from 'tap'
import { randomUUID } from 'node:crypto'
import { build, twoInstances as twoInstancesOf, type Built } from '../helpers/build.js'
import { publish, waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { nowSec, serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

const svc = serviceToken()

function twoInstances (t: Parameters<typeof build>[0], redis: RedisServer): Promise<[Built, Built]> {
  return twoInstancesOf(t, redis.url)
}

t.test('two instances sharing one Redis', async (t) => {
  const redis = await RedisServer.start(t)

  t.test('a broadcast published on A reaches clients on A and B, once each', async (t) => {
    const [a, b] = await twoInstances(t, redis)
    const { client: onA } = await TestClient.connect(a.wsUrl, { token: userToken('ann') })
    const { client: onB } = await TestClient.connect(b.wsUrl, { token: userToken('bob') })
    const first = await publish(a.url, svc, { target: { all: true }, severity: 'info', title: 'one' })
    t.equal(first.status, 202)
    t.equal(first.body.delivered, 1, 'delivered counts sockets on the receiving instance')
    const second = await publish(b.url, svc, { target: { all: true }, severity: 'warning', title: 'two' })
    t.equal(second.body.delivered, 1)
    for (const client of [onA, onB]) {
      t.equal((await client.next('alert')).title, 'one')
      t.equal((await client.next('alert')).title, 'two')
    }
    // A third alert proves nothing else (no echo duplicate) came in between.
    await publish(a.url, svc, { target: { all: true }, severity: 'info', title: 'three' })
    for (const client of [onA, onB]) {
      t.equal((await client.next('alert')).title, 'three')
      t.equal(client.received.filter((m) => m.type === 'alert').length, 3, 'no duplicates')
    }
  })

  t.test('a per-user alert published on A reaches only that user on B', async (t) => {
    const [a, b] = await twoInstances(t, redis)
    const { client: carol } = await TestClient.connect(b.wsUrl, { token: userToken('carol') })
    const { client: dave } = await TestClient.connect(b.wsUrl, { token: userToken('dave') })
    const res = await publish(a.url, svc, { target: { userId: 'carol' }, severity: 'critical', title: 'for carol' })
    t.equal(res.status, 202)
    t.equal(res.body.delivered, 1, 'carol is on B: counted cluster-wide')
    const alert = await carol.next('alert')
    t.equal(alert.title, 'for carol')
    t.equal(alert.id, res.body.id)
    await publish(a.url, svc, { target: { all: true }, severity: 'info', title: 'everyone' })
    t.equal((await dave.next('alert')).title, 'everyone', 'dave got the broadcast but not carol\'s alert first')
    t.equal((await carol.next('alert')).title, 'everyone')
  })

  t.test('the same user on A then B: A closes with 4409, B stays', async (t) => {
    const [a, b] = await twoInstances(t, redis)
    const { client: first } = await TestClient.connect(a.wsUrl, { token: userToken('erin') })
    const { client: second } = await TestClient.connect(b.wsUrl, { token: userToken('erin') })
    t.equal((await first.waitClosed()).code, 4409)
    await publish(a.url, svc, { target: { userId: 'erin' }, severity: 'info', title: 'still here' })
    t.equal((await second.next('alert')).title, 'still here')
  })

  t.test('simultaneous connects of one user on both instances: exactly one survives', async (t) => {
    const [a, b] = await twoInstances(t, redis)
    for (let round = 0; round < 10; round++) {
      const user = `frank-${round}`
      const [x, y] = await Promise.all([
        TestClient.connect(a.wsUrl, { token: userToken(user) }),
        TestClient.connect(b.wsUrl, { token: userToken(user) })
      ])
      const closed = await Promise.race([x.client.waitClosed(), y.client.waitClosed()])
      t.equal(closed.code, 4409, `round ${round}: one closed with 4409`)
      const survivor = x.client.ws.readyState === x.client.ws.OPEN ? x.client : y.client
      await publish(a.url, svc, { target: { userId: user }, severity: 'info', title: 'ping' })
      t.equal((await survivor.next('alert')).title, 'ping', `round ${round}: the survivor receives`)
      t.equal(a.app.sessions.sessionsOf(user).length + b.app.sessions.sessionsOf(user).length, 1)
      await survivor.close()
    }
  })

  t.test('logout on B closes the socket on A with 4403 and the token is refused on both', async (t) => {
    const [a, b] = await twoInstances(t, redis)
    const token = userToken('gina', { iat: nowSec() - 5 })
    const { client } = await TestClient.connect(a.wsUrl, { token })
    const res = await fetch(`${b.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
    t.equal(res.status, 204)
    t.equal((await client.waitClosed()).code, 4403)
    t.equal((await TestClient.refused(a.wsUrl, { token })).status, 403)
    t.equal((await TestClient.refused(b.wsUrl, { token })).status, 403)
    const fresh = userToken('gina', { iat: nowSec() + 1 })
    const { client: again } = await TestClient.connect(b.wsUrl, { token: fresh })
    t.equal(again.ws.readyState, again.ws.OPEN, 'a token minted after the logout second is accepted')
  })
})

t.test('Redis outage and recovery', async (t) => {
  const redis = await RedisServer.start(t)
  const [a, b] = await twoInstances(t, redis)
  const { client: onA } = await TestClient.connect(a.wsUrl, { token: userToken('hana') })
  const { client: onB } = await TestClient.connect(b.wsUrl, { token: userToken('ivan') })

  await redis.stop()
  await waitForStatus(`${a.url}/ready`, 503)
  await waitForStatus(`${b.url}/ready`, 503)
  t.equal((await fetch(`${a.url}/health`)).status, 200, 'instances stay up')

  const started = Date.now()
  const during = await publish(a.url, svc, { target: { all: true }, severity: 'warning', title: 'during outage' })
  t.equal(during.status, 503, 'POST /alerts reports the bus is unreachable')
  t.ok(Date.now() - started < 5000, 'and answers within the bound')
  t.equal(onA.ws.readyState, onA.ws.OPEN, 'open sockets survive the outage')
  t.equal(onB.ws.readyState, onB.ws.OPEN)
  t.equal((await TestClient.refused(a.wsUrl, { token: userToken('new') })).status, 503, 'new upgrades cannot be coordinated')
  const logout = await fetch(`${a.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${userToken('hana')}` } })
  t.equal(logout.status, 503, 'a logout that cannot be stored cluster-wide is refused, not half done')
  t.equal(onA.ws.readyState, onA.ws.OPEN, 'and closes nothing')

  await redis.start()
  await waitForStatus(`${a.url}/ready`, 200, 15000)
  await waitForStatus(`${b.url}/ready`, 200, 15000)
  const after = await publish(a.url, svc, { target: { all: true }, severity: 'info', title: 'after outage' })
  t.equal(after.status, 202)
  t.equal((await onB.next('alert')).title, 'after outage', 'cross-instance delivery resumes by itself')
  t.equal((await onA.next('alert')).title, 'after outage')
  const perUser = await publish(b.url, svc, { target: { userId: 'hana' }, severity: 'info', title: 'hana again' })
  t.equal(perUser.status, 202)
  t.equal((await onA.next('alert')).title, 'hana again', 'per-user channels are subscribed again')
})

t.test('an instance starts while Redis is unreachable and becomes ready when it appears', async (t) => {
  const redis = await RedisServer.start(t)
  await redis.stop()
  const gateway = await build(t, { env: { REDIS_URL: redis.url }, redisPrefix: `t${randomUUID().slice(0, 8)}:` })
  t.equal((await fetch(`${gateway.url}/ready`)).status, 503)
  t.equal((await fetch(`${gateway.url}/health`)).status, 200)
  await redis.start()
  await waitForStatus(`${gateway.url}/ready`, 200, 15000)
  const { welcome } = await TestClient.connect(gateway.wsUrl, { token: userToken('late') })
  t.equal(welcome.userId, 'late')
})
