import t, { type Test } from 'tap'
import { randomUUID } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'
import { build, type Built } from '../helpers/build.js'
import { waitForStatus } from '../helpers/http.js'
import { postAlert, publishUntilAccepted, type Published } from '../helpers/publisher.js'
import { deliveryProblems, inPositionOrder, type ExpectedAlert } from '../helpers/received.js'
import { RedisCluster, slotOf, type CommandStats } from '../helpers/redis-cluster.js'
import { waitUntil } from '../helpers/timeout.js'
import { serviceToken } from '../helpers/tokens.js'
import { TestClient } from '../helpers/ws-client.js'
import { ReadyWatch } from '../helpers/ready-watch.js'
import { metricValue } from '../helpers/metrics.js'

const PROBE_MS = 300
/** Allowed beyond 3 probe intervals for timers and scrapes on a loaded machine. */
const STALL_SLACK_MS = 1000

// Regressions in (d): two missed probes made the broker disconnect its
// subscriber, which on a Cluster is the ioredis Cluster carrying every
// command; the instance never recovered (its subscriber group stuck
// mid-reset). And /ready took over 3 s while a PING waited on the dead node.
const svc = serviceToken()
const run = randomUUID().slice(0, 8)
const prefix = `rc-${run}:`
const userChannel = (userId: string): string => `${prefix}user:{${userId}}`
const broadcastChannel = `${prefix}all:{all}`

/** Every alert answered 202 so far, per stream: what each client must have received. */
const ledger = { all: [] as ExpectedAlert[], user: new Map<string, ExpectedAlert[]>() }

function record (published: Published): void {
  const entry = { id: published.id, pos: published.pos }
  if ('all' in published.target) ledger.all.push(entry)
  else ledger.user.get(published.target.userId)?.push(entry)
}

/** What is wrong with what `client` of `user` received against the ledger (empty: every alert once, in position order). */
function problemsOf (client: TestClient, user: string): string[] {
  return deliveryProblems(client, { all: inPositionOrder(ledger.all as Required<ExpectedAlert>[]), user: inPositionOrder((ledger.user.get(user) ?? []) as Required<ExpectedAlert>[]) })
}

/**
 * A service publishing without pause but one alert at a time through one
 * instance, broadcasts and alerts to `users` in turn, each under its own
 * `Idempotency-Key` and retried with it on 503 until answered 202.
 */
class Publisher {
  readonly published: Published[] = []
  readonly refusals: number[] = []
  /** Alerts never answered 202 within the deadline. */
  readonly failures: Error[] = []
  readonly done: Promise<void>
  #stopped = false

  constructor (url: string, users: string[], name: string) {
    this.done = (async () => {
      for (let n = 0; !this.#stopped; n++) {
        const target = n % 2 === 0 ? { all: true as const } : { userId: users[(n >> 1) % users.length] }
        const published = await publishUntilAccepted(url, svc, `${run}-${name}-${n}`, { target, severity: 'info', title: `${name} ${n}` }, (status) => this.refusals.push(status), 30_000).catch((err: Error) => err)
        if (published instanceof Error) {
          this.failures.push(published)
          return
        }
        this.published.push(published)
        // The service's own pace: about 100 alerts a second.
        await sleep(10)
      }
    })()
  }

  /** Stops after the alert in flight; every 202 goes into the ledger. */
  async stop (): Promise<void> {
    this.#stopped = true
    await this.done
    for (const published of this.published) record(published)
  }
}

/** The distinct warnings an instance logged since `since` (ms), oldest first, for a failure's report. */
function warningsSince (instance: Built, since: number): string[] {
  const lines = instance.logs.map((line) => JSON.parse(line) as { time: number, msg: string }).filter((l) => l.time >= since)
  return [...new Set(lines.map((l) => l.msg))].map((msg) => `${msg} (first at +${(lines.find((l) => l.msg === msg)?.time ?? since) - since} ms)`)
}

/** Per master: calls of `command` between two commandstats snapshots. */
function deltas (before: Map<number, CommandStats>, after: Map<number, CommandStats>, command: string): Map<number, number> {
  return new Map([...after].map(([port, stats]) => [port, (stats[command] ?? 0) - (before.get(port)?.[command] ?? 0)]))
}

const cluster = await RedisCluster.start(t)
const env = { ...cluster.env, BUS_PROBE_INTERVAL_MS: String(PROBE_MS), MAX_CONNECT_ATTEMPTS_PER_MINUTE: '1000', HISTORY_MAX_ENTRIES: '10000' }
const a = await build(t, { env, redisPrefix: prefix, captureLogs: 'warn' })
const b = await build(t, { env, redisPrefix: prefix, captureLogs: 'warn' })
await waitForStatus(`${a.url}/ready`, 200)
await waitForStatus(`${b.url}/ready`, 200)
const instances: Built[] = [a, b]

/** One user whose channel (and history) lives on each master, in the order of `cluster.masters()`. */
const masters = await cluster.masters()
const users: string[] = []
for (const master of masters) {
  for (let i = 0; ; i++) {
    const candidate = `${run}-m${master}-${i}`
    if (await cluster.nodeForKey(userChannel(candidate)) === master) {
      users.push(candidate)
      break
    }
  }
}
for (const user of users) ledger.user.set(user, [])
/** Each user's client, spread over both instances. */
const clients = new Map<string, TestClient>()
for (const [i, user] of users.entries()) clients.set(user, await TestClient.connectAs(instances[i % 2].wsUrl, user))
t.teardown(async () => { for (const client of clients.values()) await client.close().catch(() => {}) })
t.comment(`masters ${masters.join(', ')}; broadcast channel on ${await cluster.nodeForKey(broadcastChannel)}; users ${users.map((u, i) => `${u} on ${masters[i]} via ${instances[i % 2].port}`).join(', ')}`)

t.test('broadcast, per-user and userIds alerts through either instance reach the right clients exactly once', async (t) => {
  for (const [i, target] of [{ all: true as const }, ...users.map((userId) => ({ userId })), { all: true as const }].entries()) {
    record(await publishUntilAccepted(instances[i % 2].url, svc, `${run}-a-${i}`, { target, severity: 'info', title: `a ${i}` }))
  }
  const many = await postAlert(b.url, svc, { target: { userIds: users }, severity: 'warning', title: 'to all three' }, { key: `${run}-a-ids` })
  t.equal(many.status, 202, 'userIds alert accepted')
  t.equal(many.body.delivered, users.length, 'userIds: delivered to each user\'s one session')
  const id = many.body.id as string
  for (const [user, client] of clients) {
    await waitUntil(() => client.received.some((f) => f.id === id), 5000, `the userIds alert at ${user}`)
    // A userIds answer names no position: it is where this user's stream put it.
    ledger.user.get(user)?.push({ id, pos: client.received.find((f) => f.id === id)?.pos as string })
    await waitUntil(() => ledger.all.every((p) => client.received.some((f) => f.id === p.id)), 5000, `the broadcasts at ${user}`)
  }
  for (const [user, client] of clients) t.same(problemsOf(client, user), [], `${user}: every broadcast and its own alerts once, in position order, nobody else's`)
})

// Regression: ioredis auto-pipelined SSUBSCRIBE, so users connecting in the
// same turn were subscribed on a node's command connection and got nothing.
t.test('users connecting at the same moment each get their own alerts', async (t) => {
  const crowd = Array.from({ length: 40 }, (_, i) => `${run}-crowd-${i}`)
  const crowdClients = await Promise.all(crowd.map((user, i) => TestClient.connectAs(instances[i % 2].wsUrl, user)))
  t.teardown(async () => { for (const client of crowdClients) await client.close().catch(() => {}) })
  const ids = await Promise.all(crowd.map(async (user, i) => (await postAlert(instances[(i + 1) % 2].url, svc, { target: { userId: user }, severity: 'info', title: 'crowd' })).body.id as string))
  for (const [i, client] of crowdClients.entries()) {
    await waitUntil(() => client.received.some((f) => f.id === ids[i]), 5000, `the alert of ${crowd[i]}`)
  }
  t.equal(crowdClients.filter((client, i) => client.received.filter((f) => f.type === 'alert').map((f) => f.id).join() === ids[i]).length, crowd.length, 'each user got exactly its own alert')
})

t.test('INFO commandstats: a per-user alert runs on the shard of its user only, a broadcast on the shard of {all}', async (t) => {
  const N = 40
  const allOwner = await cluster.nodeForKey(broadcastChannel)
  // A user on another master than the broadcasts, so the two windows show apart.
  const index = masters.findIndex((m) => m !== allOwner)
  const [user, owner] = [users[index], masters[index]]
  t.equal(slotOf(userChannel(user)), slotOf(`${prefix}hist:{${user}}`), 'the user\'s channel and history share a slot')

  const snapshot = async (): Promise<Map<number, CommandStats>> => new Map(await Promise.all(masters.map(async (port) => [port, await cluster.commandstats(port)] as const)))
  const window = async (target: { all: true } | { userId: string }, name: string): Promise<{ xadd: Map<number, number>, spublish: Map<number, number>, evalsha: Map<number, number> }> => {
    const before = await snapshot()
    for (let i = 0; i < N; i++) record(await publishUntilAccepted(instances[i % 2].url, svc, `${run}-${name}-${i}`, { target, severity: 'info', title: `${name} ${i}` }))
    const after = await snapshot()
    return { xadd: deltas(before, after, 'xadd'), spublish: deltas(before, after, 'spublish'), evalsha: deltas(before, after, 'evalsha') }
  }
  const own = await window({ userId: user }, 'b-user')
  const all = await window({ all: true }, 'b-all')
  t.comment(`per-user window: xadd ${JSON.stringify([...own.xadd])} spublish ${JSON.stringify([...own.spublish])} evalsha ${JSON.stringify([...own.evalsha])}`)
  t.comment(`broadcast window: xadd ${JSON.stringify([...all.xadd])} spublish ${JSON.stringify([...all.spublish])} evalsha ${JSON.stringify([...all.evalsha])}`)
  for (const port of masters) {
    t.equal(own.xadd.get(port), port === owner ? N : 0, `per-user alerts: XADD ${port === owner ? N : 0} on ${port}${port === owner ? ' (the user\'s shard)' : ''}`)
    t.equal(all.xadd.get(port), port === allOwner ? N : 0, `broadcasts: XADD ${port === allOwner ? N : 0} on ${port}${port === allOwner ? ' (the shard of {all})' : ''}`)
    // Besides the alerts, only the instances' probes are SPUBLISHed (a few per window).
    if (port === owner) t.ok((own.spublish.get(port) ?? 0) >= N, `per-user alerts: SPUBLISH on the user's shard ${port}`)
    else t.ok((own.spublish.get(port) ?? 0) < N / 2, `per-user alerts: no alert SPUBLISHed on ${port} (${own.spublish.get(port) ?? 0} probes)`)
    if (port === allOwner) t.ok((all.spublish.get(port) ?? 0) >= N, `broadcasts: SPUBLISH on the shard of {all} ${port}`)
    else t.ok((all.spublish.get(port) ?? 0) < N / 2, `broadcasts: no alert SPUBLISHed on ${port} (${all.spublish.get(port) ?? 0} probes)`)
    // Per request the same other scripts run in both windows (the publish
    // rate limit): only the append script moves from one shard to the other.
    const expected = (port === owner ? N : 0) - (port === allOwner ? N : 0)
    t.ok(Math.abs((own.evalsha.get(port) ?? 0) - (all.evalsha.get(port) ?? 0) - expected) <= N / 4, `EVALSHA per-user window minus broadcast window on ${port}: about ${expected}`)
  }
  for (const [name, client] of clients) {
    await waitUntil(() => ledger.all.every((p) => client.received.some((f) => f.id === p.id)), 5000, `the broadcasts at ${name}`)
  }
  await waitUntil(() => (ledger.user.get(user) ?? []).every((p) => clients.get(user)?.received.some((f) => f.id === p.id)), 5000, `the per-user alerts at ${user}`)
  for (const [name, client] of clients) t.same(problemsOf(client, name), [], `${name}: every alert once, in position order`)
})

/** Publishes a last broadcast and a last alert per user, then waits (up to 10 s) until every client has them. */
async function lastAlerts (t: Test, name: string, todo: { todo?: string } = {}): Promise<void> {
  const last: Published[] = []
  for (const [i, target] of [{ all: true as const }, ...users.map((userId) => ({ userId }))].entries()) {
    last.push(await publishUntilAccepted(instances[i % 2].url, svc, `${run}-${name}-last-${i}`, { target, severity: 'info', title: `${name} last` }))
  }
  for (const published of last) record(published)
  const arrived = await Promise.all([...clients].map(([user, client]) => {
    const mine = last.filter((p) => 'all' in p.target || p.target.userId === user)
    return waitUntil(() => mine.every((p) => client.received.some((f) => f.id === p.id)), 10_000, `the last alerts at ${user}`).then(() => true, () => false)
  }))
  for (const [i, user] of users.entries()) t.ok(arrived[i], `${user}: the last broadcast and its last alert arrived`, todo)
}

t.test('moving the slot of a connected user\'s channel to another master while publishing: the user keeps receiving every alert', async (t) => {
  // Not the user next to the broadcasts: the next test kills that shard with both on it.
  const allOwner = await cluster.nodeForKey(broadcastChannel)
  const user = users[masters.findIndex((m) => m !== allOwner)]
  const slot = slotOf(userChannel(user))
  const from = await cluster.masterOfSlot(slot)
  const to = masters.find((m) => m !== from) as number
  const publishers = instances.map((instance, i) => new Publisher(instance.url, [user], `c${i}`))
  const count = (): number => publishers.reduce((n, p) => n + p.published.length, 0)
  await waitUntil(() => count() >= 40, 10_000, '40 alerts before the move')
  const movedAt = Date.now()
  // Alerts for the user are published in each step of the move.
  const some = async (step: string): Promise<void> => {
    const before = count()
    await waitUntil(() => count() >= before + 20, 10_000, `20 alerts while ${step}`)
  }
  await cluster.moveSlot(slot, to, { migrating: () => some('the slot is migrating'), keysMoved: () => some('the keys are on the target, the slot not yet') })
  const afterMove = count()
  t.comment(`slot ${slot} of ${user} moved ${from} -> ${to} in ${Date.now() - movedAt} ms, ${afterMove} alerts accepted so far`)
  t.equal(await cluster.nodeForKey(userChannel(user)), to, 'the user\'s channel is on the new master')
  await waitUntil(() => count() >= afterMove + 40, 10_000, '40 alerts after the move')
  for (const publisher of publishers) await publisher.stop()
  t.comment(`retried publishes: ${publishers.flatMap((p) => p.refusals).length}`)
  await lastAlerts(t, 'c')
  for (const [name, client] of clients) {
    t.same(problemsOf(client, name), [], `${name}: every alert answered 202 once, in position order`)
    t.equal(client.ws.readyState, client.ws.OPEN, `${name}: still connected`)
  }
})

// Regression: the probe went through the shard of one channel only, so a
// master whose pub/sub stopped delivering went unnoticed by every instance
// whose probe channel lived elsewhere.
/** Per master: the probe channels subscribed there (`PUBSUB SHARDCHANNELS`). */
async function probeChannels (): Promise<Map<number, string[]>> {
  return new Map(await Promise.all((await cluster.masters()).map(async (port) => {
    const admin = await cluster.admin(port)
    try {
      return [port, (await admin.call('PUBSUB', 'SHARDCHANNELS', `${prefix}probe:*`) as string[]).sort()] as const
    } finally {
      admin.disconnect()
    }
  })))
}

/** Every master has exactly one probe channel of each instance. */
function oneProbePerMaster (channels: Map<number, string[]>): boolean {
  const instanceOf = (channel: string): string => channel.slice(channel.indexOf('{') + 1, channel.lastIndexOf('.'))
  return [...channels.values()].every((list) => list.length === instances.length && new Set(list.map(instanceOf)).size === instances.length)
}

t.test('a master whose pub/sub stalls, whichever it is: every instance reports the bus down within 3 probe intervals, then recovers by itself', async (t) => {
  let channels = await probeChannels()
  const spread = async (): Promise<boolean> => await waitUntil(async () => oneProbePerMaster(channels = await probeChannels()), 5000, 'one probe channel of each instance on each master').then(() => true, () => false)
  t.ok(await spread(), `a probe channel of each instance on each master: ${JSON.stringify([...channels])}`)
  // A slot move puts two of an instance's probe channels on one master and none on another: rearranged.
  const [from, [moved]] = [...channels][0]
  const to = masters.find((m) => m !== from) as number
  await cluster.moveSlot(slotOf(moved), to)
  t.ok(await spread(), `one per instance on each master again after ${moved} moved ${from} -> ${to}: ${JSON.stringify([...channels])}`)
  for (const stalled of masters) {
    const failures = await Promise.all(instances.map((i) => metricValue(i.url, 'ws_bus_probe_failures_total')))
    const admin = await cluster.admin(stalled)
    // Nothing that master is sent runs for 3 s: no SPUBLISH, so no probe through it comes back.
    await admin.call('CLIENT', 'PAUSE', 3000, 'ALL')
    const pausedAt = Date.now()
    admin.disconnect()
    const down = await Promise.all(instances.map((i) => waitUntil(async () => await metricValue(i.url, 'ws_bus_connected') === 0, 3 * PROBE_MS + STALL_SLACK_MS, 'the bus down').then(() => Date.now() - pausedAt, () => null)))
    for (const [n, instance] of instances.entries()) {
      t.ok(down[n] !== null, `${instance.url}: ws_bus_connected 0 within 3 intervals of ${stalled} stalling (${down[n] ?? 'not'} ms)`)
      t.ok(await metricValue(instance.url, 'ws_bus_probe_failures_total') > failures[n], `${instance.url}: probe failures counted`)
    }
    for (const instance of instances) await waitForStatus(`${instance.url}/ready`, 200, 10_000)
  }
  await lastAlerts(t, 'p')
  for (const [name, client] of clients) t.same(problemsOf(client, name), [], `${name}: every alert answered 202 once, in position order`)
})

t.test('SIGKILL of the master holding the broadcast channel and a user\'s channel: after the promotion delivery resumes and every alert answered 202 arrives', async (t) => {
  const victim = await cluster.nodeForKey(broadcastChannel)
  const holders = []
  for (const user of users) if (await cluster.nodeForKey(userChannel(user)) === victim) holders.push(user)
  t.ok(holders.length > 0, `a connected user's channel is on ${victim} too (${holders.join(', ')})`)
  const watch = new ReadyWatch(instances.map((i) => i.url))
  const publishers = instances.map((instance, i) => new Publisher(instance.url, users, `d${i}`))
  const count = (): number => publishers.reduce((n, p) => n + p.published.length, 0)
  t.teardown(async () => { await watch.stop() })
  await waitUntil(() => count() >= 40, 10_000, '40 alerts before the kill')
  const killedAt = Date.now()
  const promoted = await cluster.killMaster(victim)
  const promotedAt = Date.now()
  t.comment(`master ${victim} killed; replica ${promoted} promoted and cluster_state:ok after ${promotedAt - killedAt} ms`)
  t.equal(await cluster.nodeForKey(broadcastChannel), promoted, 'the broadcast channel is on the promoted replica')
  const ready = await Promise.all(instances.map((instance) => waitForStatus(`${instance.url}/ready`, 200, 10_000).then(() => true, () => false)))
  for (const [i, instance] of instances.entries()) t.ok(ready[i], `${instance.url}: /ready 200 again within 10 s of the promotion`)
  const afterPromotion = count()
  const failed = (): boolean => publishers.some((p) => p.failures.length > 0)
  await waitUntil(() => count() >= afterPromotion + 40 || failed(), 20_000, '40 alerts after the promotion')
  for (const publisher of publishers) await publisher.stop()
  const samples = await watch.stop()
  const failures = publishers.flatMap((p) => p.failures.map((err) => err.message))
  t.same(failures, [], 'every alert was answered 202 within 30 s of retries')
  for (const instance of instances) {
    if (!ready[instances.indexOf(instance)] || failures.length > 0) t.comment(`${instance.url} warnings since the kill:\n${warningsSince(instance, killedAt).join('\n')}`)
  }
  t.same(samples.filter((s) => s.status !== 200 && s.status !== 503).map((s) => `${s.url} at +${s.start - killedAt} ms: ${s.error ?? s.status} after ${s.end - s.start} ms`), [], '/ready answered 200 or 503 within 3 s, never failed to answer')
  for (const instance of instances) t.equal(samples.filter((s) => s.url === instance.url).at(-1)?.status, 200, `${instance.url}: ready at the end`)
  t.comment(`/ready 503 answers: ${samples.filter((s) => s.status === 503 && s.start >= killedAt).length} of ${samples.filter((s) => s.start >= killedAt).length} after the kill; retried publishes: ${publishers.flatMap((p) => p.refusals).length}`)
  await lastAlerts(t, 'd')
  for (const [name, client] of clients) {
    const problems = problemsOf(client, name)
    if (problems.length > 0) t.comment(`${name}: ${problems.length} delivery problems, e.g. ${problems.slice(0, 3).join('; ')}`)
    t.same(problems, [], `${name}: every alert answered 202 once, in position order`)
    t.same(client.received.filter((f) => f.type === 'gap'), [], `${name}: no gap announced`)
    t.equal(client.ws.readyState, client.ws.OPEN, `${name}: still connected`)
  }
})
