import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import type { Redis } from 'ioredis'
import { build, type Built } from '../helpers/build.js'
import { waitForStatus } from '../helpers/http.js'
import { RedisSentinelSetup } from '../helpers/redis-sentinel.js'
import { waitUntil } from '../helpers/timeout.js'
import { newUser, serviceToken, userToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'
import { ReadyWatch } from '../helpers/ready-watch.js'

type Frame = Record<string, unknown>
type Target = { all: true } | { userId: string }

const PROBE_MS = 300
/** /ready answers 503 this long after the master is lost, at the latest (probes, plus one poll). */
const READY_BOUND_MS = 3 * PROBE_MS + 250
const svc = serviceToken()

/**
 * Server bug (seen on every run): the Sentinels promote the replica
 * (REPLICAOF NO ONE) about a second before they announce +switch-master; in
 * between the instances go on appending to the old master, answer 202 and
 * deliver live. Those writes die with the old master's data, and the new
 * master hands out their positions again in the same epoch: sessions that
 * saw the lost alerts skip the new ones at those positions, without a gap.
 */
/**
 * Server bug (intermittent, about one SIGKILL run in five): ioredis's
 * failover detector closes the connector while a reconnect is asking a
 * Sentinel for the master; the connect fails with "Connection is closed" and
 * ioredis ends the connection for good (status `end`, no retry): /ready stays
 * 503 until the gateway is restarted.
 */
const CONNECTION_ENDED = 'server bug: a connection can end for good (ioredis status end) when +switch-master arrives during a reconnect'

/** An alert answered 202. */
interface Accepted {
  key: string
  target: Target
  id: string
  stream: 'all' | 'user'
  pos: string
  /** When the 202 came (ms since epoch). */
  at: number
}

const seqOf = (pos: string): number => Number(pos.slice(pos.lastIndexOf(':') + 1))
const epochOf = (pos: string): string => pos.slice(0, pos.lastIndexOf(':'))

/**
 * A service publishing about 100 alerts a second, broadcasts and per-user
 * alerts in turn, each under its own `Idempotency-Key` through the two
 * instances in turn, and retrying it with the same key and body on 503 or a
 * network error until it is answered 202. At most 100 are pending at once,
 * as a service with a bounded queue would.
 */
class PacedPublisher {
  readonly accepted: Accepted[] = []
  /** Answers that were retried: 503, or -1 for no answer. */
  readonly refusals: number[] = []
  readonly #pending = new Set<Promise<void>>()
  readonly #timer: NodeJS.Timeout
  readonly #failures: Error[] = []
  #n = 0
  #aborted = false

  constructor (urls: string[], users: string[], run: string) {
    this.#timer = setInterval(() => {
      if (this.#pending.size >= 100) return
      const n = this.#n++
      const target: Target = n % 2 === 0 ? { all: true } : { userId: users[(n >> 1) % users.length] }
      const pending = this.publish(urls[n % urls.length], `${run}-${n}`, target, `alert ${n}`)
        .then((accepted) => { this.accepted.push(accepted) }, (err: Error) => { this.#failures.push(err) })
        .finally(() => this.#pending.delete(pending))
      this.#pending.add(pending)
    }, 10)
  }

  /** One alert, retried until answered 202 (rejects on any other answer or after 30 s). */
  async publish (url: string, key: string, target: Target, title: string): Promise<Accepted> {
    const deadline = Date.now() + 30_000
    for (let attempt = 1; ; attempt++) {
      const res = await fetch(`${url}/alerts`, {
        method: 'POST',
        headers: { authorization: `Bearer ${svc}`, 'content-type': 'application/json', 'idempotency-key': key },
        body: JSON.stringify({ target, severity: 'info', title }),
        signal: AbortSignal.timeout(5000)
      }).catch(() => null)
      const body = res === null ? {} : await res.json().catch(() => ({})) as Record<string, string>
      if (res?.status === 202) return { key, target, id: body.id, stream: body.stream as Accepted['stream'], pos: body.pos, at: Date.now() }
      if (res !== null && res.status !== 503) throw new Error(`${key} answered ${res.status}: ${JSON.stringify(body)}`)
      this.refusals.push(res === null ? -1 : 503)
      if (this.#aborted) throw new Error(`${key} abandoned`)
      if (Date.now() > deadline) throw new Error(`${key} not accepted within 30 s`)
      // The service's own back-off between retries.
      await sleep(Math.min(25 * attempt, 200))
    }
  }

  acceptedAfter (at: number): number {
    return this.accepted.filter((p) => p.at > at).length
  }

  /** Stops at once, retries abandoned (teardown). */
  async abort (): Promise<void> {
    this.#aborted = true
    await this.stop()
  }

  async stop (): Promise<Error[]> {
    clearInterval(this.#timer)
    await Promise.all(this.#pending)
    return this.#failures
  }
}

/** Where an alert answered 202 stands in the new master's history. */
type Fate = 'kept' | 'absent' | 'replaced'

/**
 * Reads the history of the new master: `kept` when its position holds it,
 * `replaced` when its position holds another alert (written after the
 * failover), `absent` when nothing is there.
 */
async function fateOf (master: Redis, prefix: string, alert: Accepted): Promise<Fate> {
  const key = alert.stream === 'all' ? `${prefix}all-hist:{all}` : `${prefix}hist:{${(alert.target as { userId: string }).userId}}`
  const entry = `${seqOf(alert.pos)}-0`
  const epoch = await master.hget(alert.stream === 'all' ? `${prefix}all-hmeta:{all}` : `${prefix}hmeta:{${(alert.target as { userId: string }).userId}}`, 'e')
  const found = await master.xrange(key, entry, entry) as Array<[string, string[]]>
  if (found.length === 0 || epoch !== epochOf(alert.pos)) return 'absent'
  return found[0][1][1].includes(`"id":"${alert.id}"`) ? 'kept' : 'replaced'
}

/**
 * What is wrong with what `client` received on `stream` against `expected`
 * (alerts answered 202 for it): each id once, at its position, in position
 * order; `excused` ids may be missing. Empty lists when all is well.
 */
function deliveryProblems (client: TestClient, stream: 'all' | 'user', expected: Accepted[], excused: Set<string>): { missing: string[], wrong: string[] } {
  const got = client.received.filter((f) => f.type === 'alert' && f.stream === stream)
  const problems: string[] = []
  const missing: string[] = []
  const counts = new Map<string, number>()
  for (const frame of got) counts.set(frame.id as string, (counts.get(frame.id as string) ?? 0) + 1)
  const byId = new Map(expected.map((a) => [a.id, a]))
  for (const [id, n] of counts) {
    if (n > 1) problems.push(`${stream}: ${id} received ${n} times`)
    if (!byId.has(id)) problems.push(`${stream}: ${id} received, never answered 202 for this client`)
  }
  for (const alert of expected) {
    if (!counts.has(alert.id) && !excused.has(alert.id)) missing.push(`${stream}: ${alert.id} (${alert.key}) at ${alert.pos} missing`)
  }
  for (const frame of got) {
    const want = byId.get(frame.id as string)
    if (want !== undefined && want.pos !== frame.pos) problems.push(`${stream}: ${String(frame.id)} at ${String(frame.pos)}, answered at ${want.pos}`)
  }
  for (let i = 1; i < got.length; i++) {
    const [before, after] = [got[i - 1].pos as string, got[i].pos as string]
    if (epochOf(before) === epochOf(after) && seqOf(after) <= seqOf(before)) problems.push(`${stream}: ${after} after ${before}`)
  }
  return { missing, wrong: problems }
}

interface Scene {
  setup: RedisSentinelSetup
  prefix: string
  a: Built
  b: Built
  users: string[]
  clients: Map<string, TestClient>
  publisher: PacedPublisher
  watch: ReadyWatch
}

/** Sentinels, two instances on one prefix, four users over both, a publisher and a /ready watch running. */
async function startScene (t: Test): Promise<Scene> {
  const setup = await RedisSentinelSetup.start(t)
  const prefix = `sent-${randomUUID().slice(0, 8)}:`
  // Two sessions a user (one on each instance) for the logout check; history
  // long enough to hold every alert of the run, so the new master can be read.
  const env = { ...setup.env, BUS_PROBE_INTERVAL_MS: String(PROBE_MS), MAX_CONNECTIONS_PER_USER: '2', HISTORY_MAX_ENTRIES: '10000' }
  const a = await build(t, { env, redisPrefix: prefix })
  const b = await build(t, { env, redisPrefix: prefix })
  await waitForStatus(`${a.url}/ready`, 200)
  await waitForStatus(`${b.url}/ready`, 200)
  const run = randomUUID().slice(0, 8)
  const users = [0, 1, 2, 3].map((i) => `${run}-u${i}`)
  const clients = new Map<string, TestClient>()
  for (const [i, user] of users.entries()) clients.set(user, await TestClient.connectAs((i % 2 === 0 ? a : b).wsUrl, user))
  const watch = new ReadyWatch([a.url, b.url])
  const publisher = new PacedPublisher([a.url, b.url], users, run)
  t.teardown(async () => { await publisher.abort(); await watch.stop() })
  await waitUntil(() => publisher.accepted.length >= 100, 10_000, '100 alerts accepted before the failover')
  return { setup, prefix, a, b, users, clients, publisher, watch }
}

/**
 * Both instances are ready again and their connections are on `master`,
 * none left on `old`. False (a todo failure recorded) when an instance is
 * still not ready 10 s after the failover.
 */
async function followedTo (t: Test, scene: Scene, master: number, old: number | null): Promise<boolean> {
  const { setup, a, b } = scene
  for (const gateway of [a, b]) {
    const ready = await waitForStatus(`${gateway.url}/ready`, 200, 10_000).then(() => true, () => false)
    if (!ready) {
      t.fail(`${gateway.url} follows the new master (its command connection is ${gateway.app.cluster.redis?.status ?? 'gone'}; on the new master: ${(await setup.clientNames(master)).filter((n) => n.startsWith('gw-')).join(', ')})`, { todo: CONNECTION_ENDED })
      return false
    }
  }
  const gw = (names: string[]): string[] => names.filter((n) => n.startsWith('gw-')).sort()
  await waitUntil(async () => gw(await setup.clientNames(master)).join() === 'gw-command,gw-command,gw-subscriber,gw-subscriber', 10_000, `both instances' connections on ${master}`)
  t.same(gw(await setup.clientNames(master)), ['gw-command', 'gw-command', 'gw-subscriber', 'gw-subscriber'], 'CLIENT LIST on the new master: both instances, command and subscriber connections')
  if (old !== null) {
    await waitUntil(async () => gw(await setup.clientNames(old)).length === 0, 10_000, `no gateway connection left on ${old}`)
    t.pass('no gateway connection left on the old master')
  }
  return true
}

/**
 * Stops publishing, publishes a last broadcast and a last alert per user,
 * waits for them at every client, and checks every alert answered 202
 * against what each client received and what the new master's history holds.
 */
async function checkDelivery (t: Test, scene: Scene, master: number, failedAt: number, lossExcused: boolean): Promise<void> {
  const { setup, prefix, a, b, users, clients, publisher } = scene
  t.same(await publisher.stop(), [], 'every publish was answered 202 in the end')
  const last: Accepted[] = []
  for (const [i, target] of [{ all: true } as Target, ...users.map((userId) => ({ userId }))].entries()) {
    last.push(await publisher.publish(i % 2 === 0 ? a.url : b.url, `last-${randomUUID()}`, target, 'last'))
  }
  const accepted = [...publisher.accepted, ...last]
  t.ok(publisher.acceptedAfter(failedAt) >= 50, `publishing went on after the failover (${publisher.acceptedAfter(failedAt)} accepted after it)`)
  t.equal(new Set(accepted.map((p) => p.id)).size, accepted.length, 'each key published one alert')

  const redis = await setup.admin(master)
  const fates = new Map<string, Fate>()
  for (const alert of accepted) fates.set(alert.id, await fateOf(redis, prefix, alert))
  const notKept = accepted.filter((p) => fates.get(p.id) !== 'kept')
  const describe = (p: Accepted): string => `${p.key} ${p.stream} ${p.pos} ${fates.get(p.id) ?? ''} answered ${p.at - failedAt} ms after the failover began`
  if (notKept.length > 0) t.comment(`answered 202 but not in the new master's history:\n${notKept.map(describe).join('\n')}`)
  const lost = new Set(notKept.map((p) => p.id))
  // What is promised across a failover: Sentinel promotes the replica about
  // a second before it announces the new master, and what the old master
  // accepted meanwhile is not on the new one (README "Sentinel"). That loss
  // is never silent: the instances see the positions given again (or a
  // top below theirs) and announce a gap; everything the new master holds
  // arrives, each alert once.
  t.comment(`lost in the failover: ${lost.size} (loss is ${lossExcused ? 'expected (SIGKILL)' : 'possible (promotion window)'})`)

  for (const [user, client] of clients) {
    const mine = { all: accepted.filter((p) => p.stream === 'all'), user: accepted.filter((p) => p.stream === 'user' && (p.target as { userId: string }).userId === user) }
    // Per stream in position order: once the last ones are in, all before them are.
    await waitUntil(() => last.every((p) => p.stream === 'all' || (p.target as { userId: string }).userId !== user || client.received.some((f) => f.id === p.id)) &&
      client.received.some((f) => f.id === last[0].id), 10_000, `the last alerts at ${user}`).catch(() => {})
    const sorted = (list: Accepted[]): Accepted[] => [...list].sort((x, y) => seqOf(x.pos) - seqOf(y.pos))
    const [all, own] = [deliveryProblems(client, 'all', sorted(mine.all), lost), deliveryProblems(client, 'user', sorted(mine.user), lost)]
    const gaps = client.received.filter((f: Frame) => f.type === 'gap')
    const ids = client.received.filter((f: Frame) => f.type === 'alert').map((f: Frame) => f.id)
    t.equal(new Set(ids).size, ids.length, `${user}: no alert twice`)
    t.same([...all.missing, ...own.missing], [], `${user}: every alert answered 202 for it that the new master holds arrived`)
    if (lost.size === 0) {
      t.same([...all.wrong, ...own.wrong], [], `${user}: none at another position than answered, per stream in position order`)
      t.same(gaps, [], `${user}: nothing lost, no gap announced`)
    } else {
      const lostHere = [...mine.all, ...mine.user].filter((p) => lost.has(p.id))
      if (lostHere.length > 0 || all.wrong.length + own.wrong.length > 0) t.ok(gaps.length > 0, `${user}: the loss was announced with a gap`)
    }
    t.equal(client.ws.readyState, client.ws.OPEN, `${user}: still connected`)
    t.equal(client.received.filter((f) => f.type === 'welcome').length, 1, `${user}: never reconnected`)
  }
}

/** After the failover: a logout closes the user's sessions on both instances with 4403; attempts are still limited. */
async function limitsStillHold (t: Test, { a, b }: Scene): Promise<void> {
  const user = newUser('logout')
  const token = userToken(user)
  const onA = await TestClient.connectAs(a.wsUrl, user)
  const onB = (await TestClient.connect(b.wsUrl, { token })).client
  const res = await fetch(`${b.url}/auth/logout`, { method: 'POST', headers: { authorization: `Bearer ${token}` } })
  t.equal(res.status, 204, 'logout answered')
  t.equal((await onA.waitClosed()).code, 4403, 'the session on A closed with 4403')
  t.equal((await onB.waitClosed()).code, 4403, 'the session on B closed with 4403')
  t.equal((await TestClient.refused(a.wsUrl, { token })).status, 403, 'the revoked token is refused on A')
  t.equal((await TestClient.refused(b.wsUrl, { token })).status, 403, 'the revoked token is refused on B')

  const limited = newUser('limited')
  for (let i = 0; i < 5; i++) await (await TestClient.connectAs((i % 2 === 0 ? a : b).wsUrl, limited)).close()
  const refused = await TestClient.refused(b.wsUrl, { token: userToken(limited) })
  t.equal(refused.status, 429, 'the sixth connect attempt in a minute is refused, cluster-wide')
  t.ok(refused.headers['retry-after'], 'with Retry-After')
}

t.test('SENTINEL FAILOVER while ~100 alerts/s are published: both instances follow the new master without restart and every alert answered 202 arrives once, in order', { timeout: 45_000 }, async (t) => {
  const scene = await startScene(t)
  const failedAt = Date.now()
  const { from, to, namedAt } = await scene.setup.failover()
  t.comment(`failover ${from} -> ${to}: named by a Sentinel after ${namedAt - failedAt} ms, by all after ${Date.now() - failedAt} ms`)
  if (!await followedTo(t, scene, to, from)) return
  await waitUntil(() => scene.publisher.acceptedAfter(namedAt) >= 100, 10_000, 'publishes after the failover')
  const samples = await scene.watch.stop()
  t.same([...new Set(samples.map((s) => s.status))].filter((s) => s !== 200 && s !== 503), [], '/ready answered 200 or 503, never failed to answer')
  for (const url of [scene.a.url, scene.b.url]) t.equal(samples.filter((s) => s.url === url).at(-1)?.status, 200, `${url}: ready again`)
  t.comment(`/ready 503 answers: ${samples.filter((s) => s.status === 503).length} of ${samples.length}; retried publishes: ${scene.publisher.refusals.length}`)
  await checkDelivery(t, scene, to, failedAt, false)
  await limitsStillHold(t, scene)
})

t.test('master SIGKILLed while ~100 alerts/s are published: /ready 503 until the Sentinels promote the replica, then both instances follow it', { timeout: 45_000 }, async (t) => {
  const scene = await startScene(t)
  const killedAt = Date.now()
  const from = await scene.setup.killMaster()
  const { port: to, namedAt: promotedAt } = await scene.setup.waitMasterChange(from)
  t.comment(`master ${from} killed; ${to} named by a Sentinel after ${promotedAt - killedAt} ms, by all after ${Date.now() - killedAt} ms`)
  const samples = scene.watch.samples
  for (const url of [scene.a.url, scene.b.url]) {
    const own = samples.filter((s) => s.url === url)
    t.ok(own.some((s) => s.start >= killedAt && s.status === 503), `${url}: 503 while there was no master`)
    const dishonest = own.filter((s) => s.status === 200 && s.start > killedAt + READY_BOUND_MS && s.end < promotedAt)
    t.same(dishonest, [], `${url}: never 200 from ${READY_BOUND_MS} ms after the kill until the replica was promoted`)
  }
  if (!await followedTo(t, scene, to, null)) return
  await waitUntil(() => scene.publisher.acceptedAfter(promotedAt) >= 100, 10_000, 'publishes after the failover')
  await scene.watch.stop()
  t.same([...new Set(samples.map((s) => s.status))].filter((s) => s !== 200 && s !== 503), [], '/ready answered 200 or 503, never failed to answer')
  for (const url of [scene.a.url, scene.b.url]) t.equal(samples.filter((s) => s.url === url).at(-1)?.status, 200, `${url}: ready again`)
  t.ok(scene.publisher.refusals.length > 0, `publishes were refused while there was no master (${scene.publisher.refusals.length}) and retried`)
  await checkDelivery(t, scene, to, killedAt, true)
  await limitsStillHold(t, scene)
})
