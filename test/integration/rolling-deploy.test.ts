import t from 'tap'
import { randomUUID } from 'node:crypto'
import WebSocket from 'ws'
import { MemoryStorage, type WebSocketConstructor } from '../../client/index.js'
import { Recorded } from '../client/harness.js'
import { spawnGateway } from '../helpers/gateway-process.js'
import { waitForStatus } from '../helpers/http.js'
import { metricValue } from '../helpers/metrics.js'
import { nginxAvailable, tlsFront } from '../helpers/nginx.js'
import { PacedPublisher } from '../helpers/paced-publisher.js'
import type { Published } from '../helpers/publisher.js'
import { deliveryProblems, epochOf, inPositionOrder, type ExpectedAlert } from '../helpers/received.js'
import { waitUntil, withTimeout } from '../helpers/timeout.js'
import { serviceToken, userToken } from '../helpers/tokens.js'

const CLIENTS = 200
/** Source addresses the clients are spread over: 40 each, under the default per-IP limit (100). */
const ADDRESSES = 5
const RATE = 200
/** One alert in four is a broadcast (50/s to each of 200 clients), the rest per-user. */
const BROADCAST_EVERY = 4
const ALERT_MARK = Buffer.from('"type":"alert"')

type Gateway = ReturnType<typeof spawnGateway> & { port: number, url: string }

interface Teardown {
  teardown: (fn: () => unknown) => void
}

/** Starts src/server.ts on `port` and waits until it is ready; SIGKILLed at teardown if still running. */
async function launch (t: Teardown, port: number, env: Record<string, string>): Promise<Gateway> {
  const started = spawnGateway({ ...env, PORT: String(port) })
  t.teardown(async () => {
    if (started.child.exitCode === null && started.child.signalCode === null) {
      started.child.kill('SIGKILL')
      await started.exited
    }
  })
  const url = `http://127.0.0.1:${port}`
  await Promise.race([
    waitForStatus(`${url}/ready`, 200, 45_000),
    started.exited.then(() => { throw new Error(`gateway exited: ${started.output()}`) })
  ])
  return { ...started, port, url }
}

/** Alerts this instance accepted (POST /alerts routed to it by nginx). */
async function publishedOn (gateway: Gateway): Promise<number> {
  let sum = 0
  for (const target of ['all', 'user']) sum += await metricValue(gateway.url, `ws_alerts_published_total{target="${target}"}`)
  return sum
}

/**
 * The `ws` class trusting the throwaway CA, dialling from `localAddress`,
 * counting the alert frames that reach the socket (before the SDK drops
 * duplicates by id).
 */
function tlsWebSocket (ca: Buffer, localAddress: string, wire: { alerts: number }): WebSocketConstructor {
  return class extends WebSocket {
    constructor (url: string) {
      super(url, { ca, localAddress })
      this.on('message', (data) => {
        if (Buffer.isBuffer(data) && data.includes(ALERT_MARK)) wire.alerts++
      })
    }
  }
}

/** Session ends seen by a client: the close code of each `open` followed by `reconnecting`. */
function sessionEnds (rec: Recorded): Array<number | undefined> {
  return rec.states.flatMap((s, i) => s.state === 'reconnecting' && rec.states[i - 1]?.state === 'open' ? [s.code] : [])
}

t.test('rolling deploy behind nginx: SIGTERM and restart each instance under 200 alerts/s; 200 SDK clients get every alert once, in order, and every resume is recovered', {
  skip: nginxAvailable ? false : 'nginx is not installed (.ci/run installs it)',
  timeout: 150_000
}, async (t) => {
  const began = Date.now()
  const front = await tlsFront(t)
  const { certs } = front
  const { a: portA, b: portB, listen } = front.ports
  const env = {
    ...front.env,
    // Each client connects about three times in the run, plus any attempt refused meanwhile.
    MAX_CONNECT_ATTEMPTS_PER_MINUTE: '30',
    // Clients get 1001 at once; this bounds the wait for one that does not answer the close.
    SHUTDOWN_TIMEOUT_MS: '2000',
    // Every request would be logged at info, into a pipe the test drains.
    LOG_LEVEL: 'warn'
  }
  const [a, b] = await Promise.all([launch(t, portA, env), launch(t, portB, env)])
  const base = await front.proxy()

  const run = randomUUID().slice(0, 8)
  const users = Array.from({ length: CLIENTS }, (_, i) => `${run}-u${i}`)
  const storage = new MemoryStorage()
  const wire = users.map(() => ({ alerts: 0 }))
  const clients = users.map((user, i) => new Recorded(t, {
    url: `wss://127.0.0.1:${listen}/ws`,
    getToken: () => userToken(user),
    WebSocket: tlsWebSocket(certs.ca, `127.0.0.${51 + (i % ADDRESSES)}`, wire[i]),
    storage,
    // A reconnect refused while nginx still counts the restarted instance as
    // failed should come back within seconds, not the default 30 s cap.
    backoff: { baseMs: 500, capMs: 2000 },
    maxAttemptsPerMinute: 30
  }))
  const seen = clients.map((rec) => {
    const ids = new Set<string>()
    rec.client.on('alert', (alert) => { ids.add(alert.id) })
    return ids
  })
  const allOpen = (): boolean => clients.every((rec) => rec.client.state === 'open')
  await waitUntil(allOpen, 30_000, `${CLIENTS} clients open`)
  const [onA, onB] = await Promise.all([a, b].map(async (g) => metricValue(g.url, 'ws_connections_active')))
  t.equal(onA + onB, CLIENTS, 'every client has one session')
  t.ok(onA > 0 && onB > 0, `clients spread over both instances (${onA} + ${onB})`)
  const connected = Date.now()

  const publisher = new PacedPublisher({ baseUrl: base, ca: certs.ca, token: serviceToken(), rate: RATE, broadcastEvery: BROADCAST_EVERY, users, name: run })
  publisher.start()
  const publishing = async (more: number, what: string): Promise<void> => {
    const target = publisher.published.length + more
    await waitUntil(() => publisher.failure !== null || publisher.published.length >= target, 20_000, what)
    if (publisher.failure !== null) throw publisher.failure
  }
  await publishing(RATE, 'a second of alerts before the deploy')

  /**
   * One step of the deploy: SIGTERM, wait for the exit, start the new
   * version on the same port (nginx's upstream), and wait until nginx sends
   * it requests again (it counts a refused upstream as failed for
   * fail_timeout): only then is the next instance stopped.
   */
  const roll = async (name: string, old: Gateway): Promise<void> => {
    const stoppedAt = Date.now()
    old.child.kill('SIGTERM')
    const exit = await withTimeout(old.exited, 20_000, `${name} to exit after SIGTERM`)
    t.same(exit, { code: 0, signal: null }, `${name} exits 0 after SIGTERM`, { output: old.output() })
    const exitedAt = Date.now()
    const next = await launch(t, old.port, env)
    const readyAt = Date.now()
    await waitUntil(async () => await publishedOn(next) > 0, 20_000, `nginx to route publishes to the new ${name}`)
    await waitUntil(allOpen, 20_000, `every client open again after ${name} was replaced`)
    t.comment(`${name}: exited ${exitedAt - stoppedAt} ms after SIGTERM, ready ${readyAt - exitedAt} ms later, taking traffic ${Date.now() - readyAt} ms after that`)
    await publishing(RATE, `a second of alerts after ${name} was replaced`)
  }
  await roll('A', a)
  await roll('B', b)
  await publisher.stop()
  if (publisher.failure !== null) throw publisher.failure
  const publishedFor = Date.now() - connected

  const published = publisher.published
  const ids = published.map((p) => p.id)
  t.equal(new Set(ids).size, ids.length, 'each Idempotency-Key published one alert')
  const broadcasts = inPositionOrder(published.filter((p) => 'all' in p.target))
  t.equal(new Set(broadcasts.map((p) => epochOf(p.pos))).size, 1, 'one epoch for the broadcast stream: history was never lost')
  const own = new Map<string, Published[]>(users.map((user) => [user, []]))
  for (const p of published) if ('userId' in p.target) own.get(p.target.userId)?.push(p)
  const expected = new Map(users.map((user) => [user, { all: broadcasts as ExpectedAlert[], user: inPositionOrder(own.get(user) ?? []) }]))

  // Per stream, delivery is in position order: once a client has the last
  // alert of each of its streams, every earlier one has arrived or never will.
  const lastBroadcast = broadcasts[broadcasts.length - 1].id
  const lastOf = users.map((user) => [lastBroadcast, ...(expected.get(user)?.user.slice(-1) ?? []).map((p) => p.id)])
  const settled = await waitUntil(() => lastOf.every((last, i) => last.every((id) => seen[i].has(id))), 30_000, 'the last alerts at every client').then(() => null, (err: Error) => err)
  t.equal(settled, null, 'every client got the last alert of each of its streams')

  const problems: string[] = []
  let resumes = 0
  let replayed = 0
  let mostReplayed = 0
  const notRecovered: unknown[] = []
  const gaps: unknown[] = []
  const ends = new Map<string, number>()
  let wireDuplicates = 0
  for (const [i, rec] of clients.entries()) {
    const user = users[i]
    // What the application was handed: the SDK's alerts, after its dedupe.
    for (const line of deliveryProblems({ received: rec.alerts }, expected.get(user) ?? {})) problems.push(`${user}: ${line}`)
    resumes += rec.resumes.length
    for (const r of rec.resumes) {
      replayed += r.replayed
      mostReplayed = Math.max(mostReplayed, r.replayed)
    }
    notRecovered.push(...rec.resumes.filter((r) => !r.recovered).map((r) => ({ user, ...r })))
    gaps.push(...rec.gaps.map((g) => ({ user, ...g })))
    if (rec.resumes.length === 0) problems.push(`${user}: never resumed although its instance was stopped`)
    for (const code of sessionEnds(rec)) ends.set(String(code), (ends.get(String(code)) ?? 0) + 1)
    wireDuplicates += wire[i].alerts - rec.alerts.length
  }
  t.same(problems.slice(0, 20), [], `every client: every alert answered 202 for it, once, in position order (${problems.length} problems)`)
  t.same(notRecovered.slice(0, 10), [], `every resume said recovered: true (${resumes} resumes, ${notRecovered.length} not recovered)`)
  t.same(gaps.slice(0, 10), [], 'no gap announced')
  t.same([...ends.keys()], ['1001'], 'every session ended by the deploy was closed with 1001')
  t.equal(resumes, ends.get('1001'), 'every session after the first resumed')
  t.equal(wireDuplicates, 0, 'no alert reached a client twice on the wire (nothing left for the SDK to drop)')

  const refusals = new Map<number, number>()
  for (const status of publisher.refusals) refusals.set(status, (refusals.get(status) ?? 0) + 1)
  t.comment(`published ${published.length} alerts (${broadcasts.length} broadcasts) in ${(publishedFor / 1000).toFixed(1)} s at ${publisher.achievedRate.toFixed(0)}/s; retried: ${JSON.stringify(Object.fromEntries(refusals))} (-1: no answer)`)
  t.comment(`${CLIENTS} clients, ${resumes} resumes, ${replayed} alerts replayed (at most ${mostReplayed} in one resume, history keeps 300), session ends ${JSON.stringify(Object.fromEntries(ends))}, whole test ${((Date.now() - began) / 1000).toFixed(1)} s`)
})
