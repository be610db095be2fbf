import t from 'tap'
import { randomUUID } from 'node:crypto'
import { twoInstances } from '../helpers/build.js'
import { postAlert } from '../helpers/publisher.js'
import { deliveryProblems, epochOf, waitForAlerts } from '../helpers/received.js'
import { RedisServer } from '../helpers/redis-server.js'
import { openResumed, readResume } from '../helpers/resume.js'
import { waitUntil } from '../helpers/timeout.js'
import { serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

const svc = serviceToken()
const USERS = 1000
const BATCH = 100

t.test('many users over two instances sharing one Redis', { timeout: 150_000 }, async (t) => {
  const redis = await RedisServer.start(t)
  const admin = await redis.admin(t)
  /** Waits until no instance listens for these users any more (their sessions are gone). */
  const unsubscribed = async (users: string[]): Promise<void> => {
    await waitUntil(async () => {
      const channels = await admin.call('PUBSUB', 'CHANNELS', '*') as string[]
      return users.every((user) => !channels.some((channel) => channel.endsWith(`{${user}}`)))
    }, 5000, `${users.join(', ')} unsubscribed everywhere`)
  }

  t.test('a userIds alert to 1,000 users reaches each once, with one id, and lands in each user\'s history', async (t) => {
    const [a, b] = await twoInstances(t, redis.url, { MAX_CONNECTIONS_PER_IP: String(2 * USERS), MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' })
    const run = randomUUID().slice(0, 8)
    const users = Array.from({ length: USERS }, (_, i) => `${run}-${i}`)
    const gatewayOf = (i: number): typeof a => i % 2 === 0 ? a : b
    const clients = new Map<string, TestClient>()
    const userPos = new Map<string, string>()
    for (let start = 0; start < USERS; start += BATCH) {
      await Promise.all(users.slice(start, start + BATCH).map(async (user, j) => {
        const { client, welcome } = await TestClient.connect(gatewayOf(start + j).wsUrl, { token: userToken(user), timeoutMs: 20_000 })
        clients.set(user, client)
        userPos.set(user, (welcome.pos as { user: string }).user)
      }))
    }
    t.equal(a.app.sessions.size + b.app.sessions.size, USERS, 'all 1,000 are connected, half on each instance')
    // Two users of each instance go offline before the alert.
    const offline = [users[10], users[11], users[500], users[999]]
    for (const user of offline) {
      await clients.get(user)?.close()
      clients.delete(user)
    }
    await unsubscribed(offline)

    const first = await postAlert(a.url, svc, { target: { userIds: users }, severity: 'critical', title: 'maintenance at 22:00' })
    t.equal(first.status, 202)
    t.same(Object.keys(first.body).sort(), ['delivered', 'id'], 'one id; no single stream or position')
    t.equal(first.body.delivered, USERS - offline.length, 'delivered: every session, on both instances')
    const firstFrames = await Promise.all([...clients.values()].map((client) => client.next('alert', 20_000)))
    t.ok(firstFrames.every((f) => f.id === first.body.id && f.stream === 'user' && typeof f.pos === 'string' && (f.pos as string).endsWith(':1')), 'each online user got it first on its own stream, at its position 1')
    t.equal(new Set(firstFrames.map((f) => f.pos)).size, clients.size, 'each in its own stream')

    const refused = {
      '1,001 ids': [...users, `${run}-one-too-many`],
      'a duplicate': [users[0], users[1], users[0]],
      'an empty list': []
    }
    for (const [name, userIds] of Object.entries(refused)) {
      const answer = await postAlert(b.url, svc, { target: { userIds }, severity: 'info', title: 'refused' })
      t.equal(answer.status, 400, `${name}: 400`)
    }

    const second = await postAlert(b.url, svc, { target: { userIds: users }, severity: 'info', title: 'maintenance done' })
    t.equal(second.status, 202)
    t.equal(second.body.delivered, USERS - offline.length)
    await Promise.all([...clients.values()].map(async (client) => waitForAlerts(client, [second.body.id as string], 20_000, 'the second alert')))
    const wrong: string[] = []
    for (const [user, client] of clients) {
      for (const problem of deliveryProblems(client, { all: [], user: [{ id: first.body.id as string }, { id: second.body.id as string }] })) wrong.push(`${user}: ${problem}`)
    }
    t.same(wrong, [], 'every online user: both alerts once, in order, nothing refused, nothing else')

    // History: the offline users (and a few online ones) resume from their welcome position on the other instance.
    const resuming = [...offline, users[0], users[1]]
    await clients.get(users[0])?.close()
    await clients.get(users[1])?.close()
    for (const user of resuming) {
      const i = users.indexOf(user)
      const client = await openResumed(gatewayOf(i + 1).wsUrl, user, { user: userPos.get(user) })
      const { replayed, resumed } = await readResume(client)
      t.match(resumed, { recovered: true, replayed: 2 }, `${user}: resumed without a gap`)
      t.same(replayed.map((f) => [f.id, f.stream, epochOf(f.pos as string) === epochOf(userPos.get(user) as string)]), [
        [first.body.id, 'user', true], [second.body.id, 'user', true]
      ], `${user}: both alerts are in its own history`)
      await client.close()
    }
  })

  t.test('delivered counts the sessions of the users on every instance', async (t) => {
    const [a, b] = await twoInstances(t, redis.url, { MAX_CONNECTIONS_PER_USER: '2' })
    const run = randomUUID().slice(0, 8)
    const [onA, onB, offline] = [`${run}-on-a`, `${run}-on-b`, `${run}-offline`]
    await TestClient.connectAs(a.wsUrl, onA)
    await TestClient.connectAs(b.wsUrl, onB)
    const delivered = async (url: string, target: unknown): Promise<unknown> => (await postAlert(url, svc, { target, severity: 'info', title: 'count' })).body.delivered
    t.equal(await delivered(a.url, { userId: onB }), 1, 'a user on the other instance')
    t.equal(await delivered(b.url, { userId: onB }), 1, 'a user on this instance')
    t.equal(await delivered(a.url, { userId: offline }), 0, 'an offline user')
    t.equal(await delivered(a.url, { userIds: [onA, onB, offline] }), 2, 'userIds, published on A')
    t.equal(await delivered(b.url, { userIds: [onA, onB, offline] }), 2, 'userIds, published on B')

    const both = `${run}-on-both`
    await TestClient.connectAs(a.wsUrl, both)
    await TestClient.connectAs(b.wsUrl, both)
    t.equal(await delivered(a.url, { userId: both }), 2, 'one session on each instance')
    t.equal(await delivered(a.url, { userIds: [both, onB] }), 3, 'userIds: every session of each user')

    // Regression: the other instance counted as one session, however many it held.
    const twiceOnB = `${run}-twice-on-b`
    await TestClient.connectAs(b.wsUrl, twiceOnB)
    await TestClient.connectAs(b.wsUrl, twiceOnB)
    t.equal(await delivered(b.url, { userId: twiceOnB }), 2, 'two sessions here')
    t.equal(await delivered(a.url, { userId: twiceOnB }), 2, 'two sessions on the other instance')
    t.equal(await delivered(a.url, { userIds: [twiceOnB, offline] }), 2, 'userIds: two sessions on the other instance')
  })

  t.test('history off: delivered still counts every session of the user on every instance', async (t) => {
    const [a, b] = await twoInstances(t, redis.url, { MAX_CONNECTIONS_PER_USER: '2', HISTORY_MAX_ENTRIES: '0' })
    const user = `${randomUUID().slice(0, 8)}-off`
    const delivered = async (url: string, target: unknown): Promise<unknown> => (await postAlert(url, svc, { target, severity: 'info', title: 'count' })).body.delivered
    t.equal(await delivered(a.url, { userId: user }), 0, 'offline')
    await TestClient.connectAs(b.wsUrl, user)
    await TestClient.connectAs(b.wsUrl, user)
    t.equal(await delivered(a.url, { userId: user }), 2, 'two sessions on the other instance')
    await TestClient.connectAs(a.wsUrl, user)
    await waitUntil(async () => await delivered(b.url, { userId: user }) === 2, 5000, 'the newest two sessions to remain')
  })
})
