import { randomUUID } from 'node:crypto'
import t from 'tap'
import { CloseCode } from '../../protocol/close-codes.js'
import { MemoryStorage, type Positions } from '../../client/index.js'
import { build } from '../helpers/build.js'
import { publish, waitForStatus } from '../helpers/http.js'
import { RedisServer } from '../helpers/redis-server.js'
import { newUser, serviceToken, userToken } from '../helpers/tokens.js'
import { waitUntil } from '../helpers/timeout.js'
import { Recorded } from './harness.js'

t.setTimeout(90_000)

const KEY = 'alert-gateway:positions:'
const FAST = { baseMs: 10, capMs: 40 }
const MANY_ATTEMPTS = { MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000' }
const alertTo = (target: unknown, title: string): unknown => ({ target, severity: 'info', title })

/** The positions a connect URL resumes from. */
function sinceOf (url: string): Partial<Positions> {
  const params = new URL(url).searchParams
  const since: Partial<Positions> = {}
  for (const stream of ['all', 'user'] as const) {
    const pos = params.get(`since_${stream}`)
    if (pos !== null) since[stream] = pos
  }
  return since
}

const stored = (storage: MemoryStorage, sub: string): unknown => JSON.parse(storage.getItem(KEY + sub) ?? 'null')

/** getToken for `sub` that can be held (the client waits, disconnected) and released. */
function gatedToken (sub: string): { getToken: () => Promise<string>, hold: () => void, release: () => void } {
  let gate: Promise<void> | null = null
  let open = (): void => {}
  return {
    getToken: async () => {
      if (gate !== null) await gate
      return userToken(sub)
    },
    hold: () => { gate = new Promise((resolve) => { open = resolve }) },
    release: () => {
      gate = null
      open()
    }
  }
}

/** Publishes one alert to `sub` and one to everybody; returns both answers. */
async function publishPair (url: string, sub: string, tag: string): Promise<{ user: Record<string, unknown>, all: Record<string, unknown> }> {
  const user = await publish(url, serviceToken(), alertTo({ userId: sub }, `u-${tag}`))
  const all = await publish(url, serviceToken(), alertTo({ all: true }, `a-${tag}`))
  return { user: user.body, all: all.body }
}

t.test('positions are stored per user after every frame, and a reconnect resumes from them', async (t) => {
  const gw = await build(t, { env: MANY_ATTEMPTS })
  const sub = newUser('sdk')
  const storage = new MemoryStorage()
  const token = gatedToken(sub)
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: token.getToken, storage, backoff: FAST })
  await rec.reached('open')
  t.same(sinceOf(rec.urls[0]), {}, 'nothing to resume from at first')
  t.same(stored(storage, sub), rec.client.welcome?.pos, 'a fresh client starts at the heads, stored under its user')

  const seen = await publishPair(gw.url, sub, 'seen')
  await rec.until(() => rec.alerts.length === 2, 'two live alerts')
  const standing = { all: seen.all.pos, user: seen.user.pos }
  t.same(stored(storage, sub), standing, 'each alert moved its stream\'s stored position')
  t.same(rec.client.positions, standing)
  t.ok(rec.alerts.every((a) => a.replay === undefined), 'live alerts are not marked replayed')

  token.hold()
  gw.app.sessions.closeAll(CloseCode.SHUTTING_DOWN)
  await rec.until(() => rec.tokenCalls === 2, 'the reconnect')
  const missed = await publishPair(gw.url, sub, 'missed')
  token.release()
  await rec.until(() => rec.resumes.length === 1, 'the resumed event')
  t.same(sinceOf(rec.urls[1]), standing, 'the reconnect names the stored positions')
  const heads = { all: missed.all.pos, user: missed.user.pos }
  t.same(rec.resumes[0], { recovered: true, replayed: 2, gaps: [], pos: heads })
  const replayed = rec.alerts.slice(2)
  t.same(replayed.map((a) => a.id).sort(), [missed.all.id, missed.user.id].sort(), 'what was missed, once')
  t.ok(replayed.every((a) => a.replay === true), 'marked replayed')
  t.same(stored(storage, sub), heads)

  const live = await publish(gw.url, serviceToken(), alertTo({ userId: sub }, 'live'))
  await rec.until(() => rec.alerts.length === 5, 'the live alert')
  t.match(rec.alerts[4], { id: live.body.id, title: 'live' })
  t.notOk('replay' in rec.alerts[4])
  t.same(rec.errors, [])
})

t.test('a new client on the same storage (a page reload) resumes where the last one stood; another user starts afresh', async (t) => {
  const gw = await build(t, { env: MANY_ATTEMPTS })
  const sub = newUser('sdk')
  const storage = new MemoryStorage()
  const first = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage })
  await first.reached('open')
  const seen = await publishPair(gw.url, sub, 'seen')
  await first.until(() => first.alerts.length === 2, 'two live alerts')
  first.client.close()
  await waitUntil(() => gw.app.sessions.size === 0, 5000, 'the first session to end')
  const missed = await publishPair(gw.url, sub, 'missed')

  const reloaded = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage })
  await reloaded.until(() => reloaded.resumes.length === 1, 'the resumed event')
  t.same(sinceOf(reloaded.urls[0]), { all: seen.all.pos, user: seen.user.pos }, 'the first connect already resumes: the user is read off the token')
  t.match(reloaded.resumes[0], { recovered: true, replayed: 2, gaps: [] })
  t.same(reloaded.alerts.map((a) => [a.id, a.replay]).sort(), [[missed.all.id, true], [missed.user.id, true]].sort())

  const other = newUser('sdk')
  const stranger = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(other), storage })
  await stranger.reached('open')
  t.same(sinceOf(stranger.urls[0]), {}, 'positions are kept per user')
  t.same(stranger.resumes, [])
  // Not always the welcome's heads: a session without positions may get a
  // broadcast head read for another session up to 100 ms earlier, and then
  // what came after it (see Delivery); what is stored follows the client.
  t.same(stored(storage, other), stranger.client.positions)
})

t.test('a replay overlapping alerts already shown (stored positions that lag) is dropped by id', async (t) => {
  const gw = await build(t, { env: MANY_ATTEMPTS })
  const sub = newUser('sdk')
  /** Writes are lost once `frozen`: a full quota, or an async write still under way at the reconnect. */
  class Freezable extends MemoryStorage {
    frozen = false
    override setItem (key: string, value: string): void {
      if (!this.frozen) super.setItem(key, value)
    }
  }
  const storage = new Freezable()
  const rec = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage, backoff: FAST })
  await rec.reached('open')
  const heads = rec.client.welcome?.pos
  storage.frozen = true
  await publishPair(gw.url, sub, 'shown')
  await rec.until(() => rec.alerts.length === 2, 'two live alerts')
  gw.app.sessions.closeAll(CloseCode.SHUTTING_DOWN)
  await rec.until(() => rec.resumes.length === 1, 'the resumed event')
  t.same(sinceOf(rec.urls[1]), heads, 'resumed from the stored positions, before the two alerts')
  t.match(rec.resumes[0], { recovered: true, replayed: 2 }, 'the server replayed both')
  const after = await publish(gw.url, serviceToken(), alertTo({ all: true }, 'after'))
  await rec.until(() => rec.alerts.length === 3, 'the next alert')
  t.equal(rec.alerts[2].id, after.body.id, 'the replayed copies never reached the application')
  t.ok(rec.alerts.every((a) => a.replay === undefined))
})

t.test('recovered false names the streams that may have gaps', async (t) => {
  const gw = await build(t, { env: { ...MANY_ATTEMPTS, HISTORY_MAX_ENTRIES: '2' } })
  const sub = newUser('sdk')
  const storage = new MemoryStorage()
  const first = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage })
  await first.reached('open')
  const heads = first.client.welcome?.pos as Positions
  first.client.close()
  await waitUntil(() => gw.app.sessions.size === 0, 5000, 'the first session to end')
  const missed: string[] = []
  for (let i = 0; i < 3; i++) missed.push((await publish(gw.url, serviceToken(), alertTo({ userId: sub }, `u${i}`))).body.id as string)

  const trimmed = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage })
  await trimmed.until(() => trimmed.resumes.length === 1, 'the resumed event')
  t.match(trimmed.resumes[0], { recovered: false, replayed: 2, gaps: ['user'] }, 'three missed, two kept: the user stream; the broadcasts did not move')
  t.equal(trimmed.resumes[0].pos.all, heads.all)
  t.same(trimmed.alerts.map((a) => a.id), missed.slice(1), 'the newest alerts it has are replayed')
  trimmed.client.close()
  await waitUntil(() => gw.app.sessions.size === 0, 5000, 'the session to end')

  // Positions of another epoch (history lost since): both streams.
  storage.setItem(KEY + sub, JSON.stringify({ all: 'other-epoch:1', user: 'other-epoch:1' }))
  const unknown = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage })
  await unknown.until(() => unknown.resumes.length === 1, 'the resumed event')
  t.match(unknown.resumes[0], { recovered: false, gaps: ['all', 'user'] })
  unknown.client.close()
  await waitUntil(() => gw.app.sessions.size === 0, 5000, 'the session to end')

  // Only one stream asked for: the other starts at its head and cannot have a gap.
  storage.setItem(KEY + sub, JSON.stringify({ user: 'other-epoch:1' }))
  const one = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(sub), storage })
  await one.until(() => one.resumes.length === 1, 'the resumed event')
  t.same(sinceOf(one.urls[0]), { user: 'other-epoch:1' })
  t.match(one.resumes[0], { recovered: false, gaps: ['user'] })
  t.same(one.client.positions, one.resumes[0].pos)
})

t.test('a Redis restart without persistence: open sessions get a gap event, a resume afterwards is not recovered', async (t) => {
  const redis = await RedisServer.start(t)
  const gw = await build(t, { env: { ...MANY_ATTEMPTS, REDIS_URL: redis.url }, redisPrefix: `t${randomUUID().slice(0, 8)}:` })
  await waitForStatus(`${gw.url}/ready`, 200)
  const sub = newUser('sdk')
  const away = newUser('sdk')
  const storage = new MemoryStorage()
  const byOption: string[] = []
  const rec = new Recorded(t, {
    url: gw.wsUrl,
    getToken: () => userToken(sub),
    storage,
    backoff: FAST,
    onGap: (gap) => byOption.push(`gap ${gap.streams.join()}`),
    onResumed: (result) => byOption.push(`resumed ${result.recovered}`)
  })
  await rec.reached('open')
  const offline = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(away), storage })
  await offline.reached('open')
  await publishPair(gw.url, sub, 'before')
  await rec.until(() => rec.alerts.length === 2, 'two live alerts')
  offline.client.close()
  await waitUntil(() => gw.app.sessions.size === 1, 5000, 'the other session to end')
  const before = rec.client.positions

  await redis.stop()
  await redis.start()
  const covered = (): Set<string> => new Set(rec.gaps.flatMap((g) => g.streams))
  await rec.until(() => covered().size === 2, 'gap events for both streams', 30_000)
  t.equal(rec.client.state, 'open', 'the session stayed open')
  const last = rec.gaps[rec.gaps.length - 1]
  t.same(rec.client.positions, last.pos, 'the client stands where the gap frame says')
  t.not(last.pos.all, before.all)
  t.not(last.pos.user, before.user)
  t.same(stored(storage, sub), last.pos)

  await waitForStatus(`${gw.url}/ready`, 200)
  const after = await publish(gw.url, serviceToken(), alertTo({ userId: sub }, 'after'))
  t.equal(after.status, 202)
  await rec.until(() => rec.alerts.length === 3, 'the alert after the restart')
  t.match(rec.alerts[2], { id: after.body.id, replay: undefined })

  const back = new Recorded(t, { url: gw.wsUrl, getToken: () => userToken(away), storage })
  await back.until(() => back.resumes.length === 1, 'the resumed event')
  t.match(back.resumes[0], { recovered: false, gaps: ['all', 'user'] }, 'its positions belong to the lost history')

  gw.app.sessions.closeAll(CloseCode.SHUTTING_DOWN)
  await rec.until(() => rec.resumes.length === 1, 'the reconnect\'s resumed event')
  t.match(rec.resumes[0], { recovered: true, replayed: 0, gaps: [] }, 'the connected client lost nothing it was not told about')
  t.same(byOption, [...rec.gaps.map((g) => `gap ${g.streams.join()}`), 'resumed true'], 'onGap and onResumed got them too')
})
