import t from 'tap'
import { randomUUID } from 'node:crypto'
import { build, twoInstances, type Built } from '../helpers/build.js'
import { waitForStatus } from '../helpers/http.js'
import { metricValue } from '../helpers/metrics.js'
import { postAlert, PublishLoop, type Published } from '../helpers/publisher.js'
import { deliveryProblems, epochOf, inPositionOrder, UNPUBLISHED, waitForAlerts, type ExpectedAlert } from '../helpers/received.js'
import { RedisServer } from '../helpers/redis-server.js'
import { openResumed, readResume, type Since } from '../helpers/resume.js'
import { waitUntil } from '../helpers/timeout.js'
import { serviceToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

type Frame = Record<string, unknown>

const svc = serviceToken()

/** Users spread over two instances, each with one open session. */
async function connectUsers (placement: Array<[string, Built]>): Promise<Map<string, TestClient>> {
  const clients = new Map<string, TestClient>()
  for (const [user, gateway] of placement) clients.set(user, await TestClient.connectAs(gateway.wsUrl, user))
  return clients
}

/**
 * One last broadcast and one last alert per user, published after all else:
 * once a client has its two, every earlier alert of its streams has arrived
 * (per stream, delivery is in position order).
 */
async function publishLast (url: string, users: string[]): Promise<Published[]> {
  const last: Published[] = []
  for (const target of [{ all: true as const }, ...users.map((userId) => ({ userId }))]) {
    const answer = await postAlert(url, svc, { target, severity: 'info', title: 'last' })
    if (answer.status !== 202) throw new Error(`last alert answered ${answer.status}`)
    last.push({ target, id: answer.body.id as string, stream: answer.body.stream as string, pos: answer.body.pos as string, refused: [] })
  }
  return last
}

/** Per stream, what `user` must have received of `published`, in position order. */
function expectedFor (published: Published[], user: string): { all: ExpectedAlert[], user: ExpectedAlert[] } {
  return {
    all: inPositionOrder(published.filter((p) => 'all' in p.target)),
    user: inPositionOrder(published.filter((p) => 'userId' in p.target && p.target.userId === user))
  }
}

const gapsOf = (client: TestClient): Frame[] => client.received.filter((f) => f.type === 'gap')

t.test('Redis killed and restarted with persistence (AOF, fsync always) while alerts are published: no session loses, doubles or reorders one; refused publishes succeed on retry, once', { timeout: 120_000 }, async (t) => {
  const redis = await RedisServer.start(t, { persistence: true })
  // Logs kept to explain a failure: each refused publish logs its alert id and error.
  const redisPrefix = `t${randomUUID().slice(0, 8)}:`
  const env = { REDIS_URL: redis.url, MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' }
  const a = await build(t, { env, redisPrefix, captureLogs: 'warn' })
  const b = await build(t, { env, redisPrefix, captureLogs: 'warn' })
  for (const gateway of [a, b]) await waitForStatus(`${gateway.url}/ready`, 200)
  const run = randomUUID().slice(0, 8)
  const users = [0, 1, 2, 3, 4, 5].map((i) => `${run}-u${i}`)
  const clients = await connectUsers(users.map((user, i) => [user, i % 2 === 0 ? a : b]))

  const loops = [new PublishLoop(a.url, svc, users, `${run}-via-a`), new PublishLoop(b.url, svc, [...users].reverse(), `${run}-via-b`)]
  await waitUntil(() => loops.every((loop) => loop.published.length >= 10), 20_000, 'publishes before the crash')
  await redis.stop()
  await waitUntil(() => loops.every((loop) => loop.refusals.length > 0), 10_000, 'publishes refused during the outage')
  await waitForStatus(`${a.url}/ready`, 503)
  await waitForStatus(`${b.url}/ready`, 503)
  const beforeRestart = loops.map((loop) => loop.published.length)
  await redis.start()
  await waitForStatus(`${a.url}/ready`, 200, 15_000)
  await waitForStatus(`${b.url}/ready`, 200, 15_000)
  // Retries may wait for a key taken just before the crash (up to its 30 s expiry).
  await waitUntil(() => loops.every((loop, i) => loop.published.length >= beforeRestart[i] + 10), 60_000, 'publishes after the restart')
  await Promise.all(loops.map((loop) => loop.stop()))

  const refusals = loops.flatMap((loop) => loop.refusals)
  t.ok(refusals.length > 0, `publishes during the outage were refused (${refusals.length} times), then retried`)
  t.same([...new Set(refusals)], [503], 'refused with 503, never left unanswered')
  const published = [...loops.flatMap((loop) => loop.published), ...await publishLast(a.url, users)]
  const ids = published.map((p) => p.id)
  t.equal(new Set(ids).size, ids.length, 'each key published one alert')
  t.equal(new Set(published.map((p) => epochOf(p.pos))).size, users.length + 1, 'one epoch per stream: history survived the crash')

  for (const [user, client] of clients) {
    await waitForAlerts(client, published.filter((p) => 'all' in p.target || p.target.userId === user).map((p) => p.id).slice(-1), 20_000, `the last alerts at ${user}`)
    await waitForAlerts(client, [published[published.length - users.length - 1].id], 20_000, `the last broadcast at ${user}`)
    const problems = deliveryProblems(client, expectedFor(published, user))
    const unpublished = problems.filter((line) => line.includes(UNPUBLISHED))
    t.same(problems.filter((line) => !line.includes(UNPUBLISHED)), [], `${user}: every alert answered 202 for it, once, in position order`)
    // Regression: a publish whose append ran but whose answer was lost in
    // the crash was answered 503, and its retry published a second alert.
    // The append now stores the idempotency answer in the same step.
    const explained = {
      refusedPublishes: published.filter((p) => p.refused.length > 0),
      warnings: [...a.logs, ...b.logs].filter((line) => line.includes('not stored'))
    }
    t.same(unpublished, [], `${user}: nothing it received was refused to its publisher`, unpublished.length > 0 ? explained : {})
    t.equal(client.ws.readyState, client.ws.OPEN, `${user}: still connected`)
    t.same(gapsOf(client), [], `${user}: no gap announced`)
    t.equal(client.received.filter((f) => f.type === 'welcome').length, 1, `${user}: never reconnected`)
  }
})

t.test('Redis restarted without persistence: open sessions are told `gap` and go on; every resume from before is not recovered', { timeout: 60_000 }, async (t) => {
  const redis = await RedisServer.start(t)
  const [a, b] = await twoInstances(t, redis.url)
  const run = randomUUID().slice(0, 8)
  const stay = [`${run}-stay-a`, `${run}-stay-b`]
  const leaveBefore = `${run}-leave-before`
  const leaveDuring = `${run}-leave-during`
  const quiet = `${run}-quiet`
  const everyone = [...stay, leaveBefore, leaveDuring, quiet]
  const clients = await connectUsers([[stay[0], a], [stay[1], b], [leaveBefore, a], [leaveDuring, b], [quiet, a]])
  const welcomes = new Map([...clients].map(([user, client]) => [user, client.received[0]]))

  const publishEach = async (targets: Array<{ all: true } | { userId: string }>): Promise<Published[]> => {
    const out: Published[] = []
    for (const [i, target] of targets.entries()) {
      const answer = await postAlert(i % 2 === 0 ? a.url : b.url, svc, { target, severity: 'warning', title: `alert ${i}` })
      t.equal(answer.status, 202)
      out.push({ target, id: answer.body.id as string, stream: answer.body.stream as string, pos: answer.body.pos as string, refused: [] })
    }
    return out
  }
  // The quiet user gets broadcasts only: its own stream stays at seq 0.
  const before = await publishEach([{ all: true }, ...[...stay, leaveBefore, leaveDuring].map((userId) => ({ userId })), { all: true }])
  const lastSeen = new Map<string, Since>()
  for (const [user, client] of clients) {
    const own = before.filter((p) => 'all' in p.target || p.target.userId === user)
    await waitForAlerts(client, own.map((p) => p.id), 5000, `alerts before the restart at ${user}`)
    t.same(deliveryProblems(client, expectedFor(before, user)), [], `${user}: alerts before the restart`)
    const ownStream = own.filter((p) => p.stream === 'user')
    lastSeen.set(user, {
      all: own.filter((p) => p.stream === 'all').at(-1)?.pos,
      user: ownStream.at(-1)?.pos ?? (welcomes.get(user)?.pos as { user: string }).user
    })
  }
  const welcomePositions = [...welcomes.values()].flatMap((w) => Object.values(w.pos as Record<string, string>))
  const oldEpochs = new Set([...before.map((p) => p.pos), ...welcomePositions].map(epochOf))
  await clients.get(leaveBefore)?.close()
  await clients.get(quiet)?.close()

  await redis.stop()
  await waitForStatus(`${a.url}/ready`, 503)
  await clients.get(leaveDuring)?.close()
  await redis.start()
  await waitForStatus(`${a.url}/ready`, 200, 15_000)
  await waitForStatus(`${b.url}/ready`, 200, 15_000)

  for (const user of stay) {
    const client = clients.get(user) as TestClient
    await waitUntil(() => new Set(gapsOf(client).flatMap((g) => g.streams as string[])).size === 2, 10_000, `gap frames for both streams at ${user}`)
    t.equal(client.ws.readyState, client.ws.OPEN, `${user}: still connected`)
  }

  const after = await publishEach([{ all: true }, ...everyone.map((userId) => ({ userId })), { all: true }])
  t.ok(after.every((p) => !oldEpochs.has(epochOf(p.pos))), 'history started over in new epochs')
  for (const user of stay) {
    const client = clients.get(user) as TestClient
    await waitForAlerts(client, after.filter((p) => 'all' in p.target || p.target.userId === user).map((p) => p.id), 10_000, `alerts after the restart at ${user}`)
    const [expectedBefore, expectedAfter] = [expectedFor(before, user), expectedFor(after, user)]
    t.same(deliveryProblems(client, {
      all: [...expectedBefore.all, ...expectedAfter.all],
      user: [...expectedBefore.user, ...expectedAfter.user]
    }), [], `${user}: delivery goes on after the gap, every alert once`)
    for (const stream of ['all', 'user'] as const) {
      const gapAt = client.received.findIndex((f) => f.type === 'gap' && (f.streams as string[]).includes(stream))
      const firstNew = client.received.findIndex((f) => f.type === 'alert' && f.stream === stream && !oldEpochs.has(epochOf(f.pos as string)))
      t.ok(gapAt !== -1 && gapAt < firstNew, `${user}: the ${stream} gap is announced before the first alert of the new epoch`)
      const gap = client.received[gapAt] as { pos: Record<string, string> }
      t.equal(epochOf(gap.pos[stream]), epochOf(expectedAfter[stream][0].pos as string), `${user}: the gap names the new epoch of ${stream}`)
    }
  }

  // Everyone resumes from where it stood before the restart, on either instance.
  await clients.get(stay[0])?.close()
  for (const [i, user] of [stay[0], leaveBefore, leaveDuring, quiet].entries()) {
    const client = await openResumed((i % 2 === 0 ? b : a).wsUrl, user, lastSeen.get(user) as Since)
    const { replayed, resumed } = await readResume(client)
    t.match(resumed, { type: 'resumed', recovered: false }, `${user}: a position from before the restart is not recovered`)
    const { all, user: own } = expectedFor(after, user)
    t.same(replayed.map((f) => f.id), [...all, ...own].map((p) => p.id), `${user}: what history has now is replayed, in order`)
    const next = await postAlert(a.url, svc, { target: { userId: user }, severity: 'info', title: 'welcome back' })
    t.match(await client.next('alert'), { id: next.body.id, stream: 'user' }, `${user}: then live again`)
    await client.close()
  }
})

t.test('subscriber connections killed (CLIENT KILL TYPE pubsub) while B keeps publishing: every session gets every alert by catch-up, without reconnecting', { timeout: 60_000 }, async (t) => {
  const redis = await RedisServer.start(t)
  const [a, b] = await twoInstances(t, redis.url)
  const admin = await redis.admin(t)
  const run = randomUUID().slice(0, 8)
  const users = [0, 1, 2, 3, 4].map((i) => `${run}-u${i}`)
  const clients = await connectUsers(users.map((user, i) => [user, i < 3 ? a : b]))
  const caughtUp = async (url: string): Promise<number> => metricValue(url, 'ws_bus_catchup_total{result="caught_up"}')
  const caughtUpBefore = [await caughtUp(a.url), await caughtUp(b.url)]

  const loop = new PublishLoop(b.url, svc, users, `${run}-via-b`)
  await waitUntil(() => loop.published.length >= 10, 10_000, 'publishes before the kill')
  t.equal(await admin.call('CLIENT', 'KILL', 'TYPE', 'pubsub'), 2, 'both subscriber connections killed')
  const atKill = loop.published.length
  await waitUntil(async () => await caughtUp(a.url) > caughtUpBefore[0] && await caughtUp(b.url) > caughtUpBefore[1], 10_000, 'catch-up on both instances')
  await waitUntil(() => loop.published.length >= atKill + 20, 10_000, 'publishes after the kill')
  await loop.stop()
  t.same(loop.refusals, [], 'publishing never failed: commands were not interrupted')

  const published = [...loop.published, ...await publishLast(b.url, users)]
  for (const [user, client] of clients) {
    const lastOwn = published.filter((p) => 'userId' in p.target && p.target.userId === user).at(-1) as Published
    await waitForAlerts(client, [lastOwn.id, published[published.length - users.length - 1].id], 10_000, `the last alerts at ${user}`)
    t.same(deliveryProblems(client, expectedFor(published, user)), [], `${user}: every alert, once, in position order`)
    t.equal(client.ws.readyState, client.ws.OPEN, `${user}: still connected`)
    t.equal(client.received.filter((f) => f.type === 'welcome').length, 1, `${user}: never reconnected`)
    t.same(gapsOf(client), [], `${user}: nothing announced missing`)
  }
  for (const gateway of [a, b]) {
    t.equal(await metricValue(gateway.url, 'ws_bus_catchup_total{result="gap"}'), 0, 'no catch-up ended in a gap')
  }
  t.ok(await caughtUp(a.url) >= caughtUpBefore[0] + 4, 'A caught up its broadcast stream and the streams of its 3 users')
})
