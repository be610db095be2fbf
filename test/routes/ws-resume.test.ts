import t from 'tap'
import { build, twoInstances } from '../helpers/build.js'
import { publish } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { newUser, serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'

type Frame = Record<string, unknown>

const bearer = (sub: string): { headers: Record<string, string> } => ({ headers: { authorization: `Bearer ${userToken(sub)}` } })
const alertTo = (target: unknown, title: string): unknown => ({ target, severity: 'info', title })

function resumeUrl (wsUrl: string, since: { all?: string, user?: string }): string {
  const params = new URLSearchParams()
  if (since.all !== undefined) params.set('since_all', since.all)
  if (since.user !== undefined) params.set('since_user', since.user)
  return `${wsUrl}?${params.toString()}`
}

/** Frames up to and including `resumed`. */
async function untilResumed (client: TestClient): Promise<Frame[]> {
  const frames: Frame[] = []
  for (;;) {
    const frame = await client.next()
    frames.push(frame)
    if (frame.type === 'resumed') return frames
  }
}

for (const bus of ['memory', 'redis'] as const) {
  t.test(`${bus} bus: a reconnect with positions replays what was missed, in order, then goes live`, async (t) => {
    let urls: { url: string, wsUrl: string }
    let other: { url: string, wsUrl: string }
    if (bus === 'redis') {
      const redis = await RedisServer.start(t)
      const [a, b] = await twoInstances(t, redis.url)
      urls = a
      other = b
    } else {
      urls = await build(t, { env: { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' } })
      other = urls
    }
    const sub = newUser()
    const first = await TestClient.connect(urls.wsUrl, { token: userToken(sub) })
    const welcomePos = first.welcome.pos as { all: string, user: string }
    t.match(welcomePos, { all: /^[A-Za-z0-9_-]+:\d+$/, user: /^[A-Za-z0-9_-]+:\d+$/ }, 'welcome carries both heads')
    const seen = await publish(other.url, serviceToken(), alertTo({ userId: sub }, 'seen'))
    t.equal(seen.status, 202)
    t.equal(seen.body.stream, 'user')
    const live = await first.client.next('alert')
    t.match(live, { id: seen.body.id, stream: 'user', pos: seen.body.pos })
    t.notOk('replay' in live, 'a live alert is not marked replayed')
    const allPos = welcomePos.all
    await first.client.close()

    const missed: string[] = []
    for (let i = 0; i < 3; i++) {
      missed.push((await publish(other.url, serviceToken(), alertTo({ userId: sub }, `u${i}`))).body.id as string)
      missed.push((await publish(other.url, serviceToken(), alertTo({ all: true }, `a${i}`))).body.id as string)
    }
    const client = await TestClient.open(resumeUrl(urls.wsUrl, { all: allPos, user: live.pos as string }), bearer(sub))
    const frames = await untilResumed(client)
    t.equal(frames[0].type, 'welcome')
    const replayed = frames.filter((f) => f.type === 'alert')
    t.same(replayed.map((f) => f.id).sort(), [...missed].sort(), 'every missed alert, once')
    t.ok(replayed.every((f) => f.replay === true), 'marked replay')
    for (const stream of ['all', 'user']) {
      const titles = replayed.filter((f) => f.stream === stream).map((f) => f.title)
      t.same(titles, stream === 'all' ? ['a0', 'a1', 'a2'] : ['u0', 'u1', 'u2'], `${stream}: in position order`)
    }
    const resumed = frames[frames.length - 1]
    t.match(resumed, { type: 'resumed', recovered: true, replayed: 6 })
    t.same(resumed.pos, (frames[0] as Frame).pos, 'the client now stands at the heads')
    const after = await publish(other.url, serviceToken(), alertTo({ userId: sub }, 'after'))
    t.match(await client.next('alert'), { id: after.body.id, title: 'after' })
    t.notOk((await client.next('alert', 200).catch(() => null)), 'nothing twice')
    await client.close()

    const unknown = await TestClient.open(resumeUrl(urls.wsUrl, { all: 'other-epoch:1', user: 'gibberish' }), bearer(sub))
    const unknownFrames = await untilResumed(unknown)
    t.match(unknownFrames[unknownFrames.length - 1], { type: 'resumed', recovered: false }, 'positions never written here: not recovered')
    t.ok(unknownFrames.filter((f) => f.type === 'alert').length >= 7, 'the newest alerts it has are replayed')
    await unknown.close()

    const refused = await TestClient.refused(resumeUrl(urls.wsUrl, { all: 'bad position!' }), bearer(sub))
    t.equal(refused.status, 400, 'a malformed position is 400')
  })
}

// Regression: the replay is written in one batch, so it sat in the send
// buffer as a whole; past SEND_BUFFER_MAX_BYTES (1 MiB) the session was
// closed with 1013 partway through (251 of 300 alerts of 4 KB), although
// the client read as fast as it could.
t.test('a replay larger than the send buffer cap reaches a client that reads, then live alerts do', async (t) => {
  const gw = await build(t, { env: { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000', REST_RATE_LIMIT_PER_MINUTE: '100000' } })
  const sub = newUser()
  const first = await TestClient.connect(gw.wsUrl, { token: userToken(sub) })
  const since = (first.welcome.pos as { all: string, user: string }).user
  await first.client.close()
  for (let i = 0; i < 300; i++) {
    const res = await publish(gw.url, serviceToken(), { target: { userId: sub }, severity: 'info', title: `r${i}`, body: 'b'.repeat(4000) })
    t.equal(res.status, 202, `alert ${i}`, { diagnostic: res.status !== 202 })
  }
  const client = await TestClient.open(resumeUrl(gw.wsUrl, { user: since }), bearer(sub))
  t.equal((await client.next()).type, 'welcome')
  const frames = await untilResumed(client)
  t.equal(frames.filter((frame) => frame.type === 'alert').length, 300, 'the whole replay, more than 1 MiB')
  t.match(frames.at(-1), { type: 'resumed', recovered: true, replayed: 300 })
  const live = await publish(gw.url, serviceToken(), alertTo({ userId: sub }, 'live'))
  t.match(await client.next('alert'), { id: live.body.id, title: 'live' }, 'and it stays open for live alerts')
  await client.close()
})

t.test('history off: no positions, a resume is not recovered', async (t) => {
  const { url, wsUrl } = await build(t, { env: { HISTORY_MAX_ENTRIES: '0' } })
  const sub = newUser()
  const { client, welcome } = await TestClient.connect(wsUrl, { token: userToken(sub) })
  t.notOk('pos' in welcome)
  const answer = await publish(url, serviceToken(), alertTo({ userId: sub }, 'x'))
  t.same(Object.keys(answer.body).sort(), ['delivered', 'id'])
  t.match((await publish(url, serviceToken(), alertTo({ userIds: [sub, newUser()] }, 'many'))).body, { delivered: 1 }, 'userIds without history')
  t.same(Object.keys((await publish(url, serviceToken(), alertTo({ all: true }, 'everyone'))).body).sort(), ['delivered', 'id'], 'a broadcast without history has no position')
  const alert = await client.next('alert')
  t.notOk('pos' in alert)
  t.notOk('stream' in alert)
  await client.close()
  const again = await TestClient.open(resumeUrl(wsUrl, { user: 'x:1' }), bearer(sub))
  const frames = await untilResumed(again)
  t.match(frames[frames.length - 1], { type: 'resumed', recovered: false, replayed: 0 })
  await again.close()
})

t.test('history that cannot be read refuses the upgrade with 503', async (t) => {
  const { app, wsUrl } = await build(t)
  const history = app.cluster.history as NonNullable<typeof app.cluster.history>
  history.read = async () => { throw new Error('history gone') }
  const refused = await TestClient.refused(wsUrl, { token: userToken(newUser()) })
  t.equal(refused.status, 503)
  t.equal(app.sessions.size, 0, 'nothing registered')
})
