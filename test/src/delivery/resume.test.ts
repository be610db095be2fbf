import t, { type Test } from 'tap'
import pino from 'pino'
import type { WebSocket } from 'ws'
import type { Alert, Welcome } from '../../../protocol/frames.js'
import type { Position } from '../../../protocol/position.js'
import type { ClaimStore } from '../../../src/cluster/claim-store.js'
import { createCluster, type Cluster } from '../../../src/cluster/cluster.js'
import type { AppendResult, HistoryStore, StreamOwner, StreamRead } from '../../../src/cluster/history-store.js'
import { Delivery, type ResumePlan } from '../../../src/delivery/delivery.js'
import type { GatewayMetrics } from '../../../src/lib/metrics.js'
import { SessionRegistry } from '../../../src/session/session-registry.js'
import { Session } from '../../../src/session/session.js'
import { testConfig } from '../../helpers/config.js'
import { RedisServer } from '../../helpers/redis-server.js'
import { waitUntil } from '../../helpers/timeout.js'

type Frame = Record<string, unknown>

const log = pino({ level: 'silent' })
const USER = 'ann'

/** A promise the test settles. */
class Gate {
  open!: () => void
  readonly opened = new Promise<void>((resolve) => { this.open = resolve })
}

/**
 * The cluster's history, except that the next reads asked for (a resume's)
 * wait at two gates: before the store computes them, and after.
 */
class HeldHistory implements HistoryStore {
  readonly #inner: HistoryStore
  #toHold = 0
  readonly before = new Gate()
  readonly after = new Gate()
  waiting = 0
  computed = 0
  /** Reads of the broadcast stream's head (no position), as asked of the store. */
  headReads = 0
  /** Reads of the broadcast stream from a position. */
  allReadsFrom = 0
  /** Fail the next head read. */
  failNextHead = false
  /** Held reads and claims fail once let through, instead of being computed. */
  failHeld = false

  constructor (inner: HistoryStore) {
    this.#inner = inner
  }

  holdNext (reads: number): void {
    this.#toHold = reads
  }

  append (owner: StreamOwner, head: string, tail: string): Promise<AppendResult> {
    return this.#inner.append(owner, head, tail)
  }

  appendMany (userIds: string[], head: string, tail: string): Promise<AppendResult[]> {
    return this.#inner.appendMany(userIds, head, tail)
  }

  async read (owner: StreamOwner, from: Position | null): Promise<StreamRead> {
    if (owner === null && from !== null) this.allReadsFrom++
    if (owner === null && from === null) {
      this.headReads++
      if (this.failNextHead) {
        this.failNextHead = false
        throw new Error('history unavailable')
      }
    }
    return await this.#held(() => this.#inner.read(owner, from))
  }

  /**
   * `store`'s claims, held like the reads: a claim reads the user's stream
   * in its own step (on Redis, in the claim script), as at a handshake.
   */
  claimsOf (store: ClaimStore): Pick<ClaimStore, 'claim'> {
    return { claim: (userId, from) => this.#held(() => store.claim(userId, from)) }
  }

  async #held<T> (compute: () => Promise<T>): Promise<T> {
    if (this.#toHold === 0) return await compute()
    this.#toHold--
    this.waiting++
    await this.before.opened
    if (this.failHeld) throw new Error('history unavailable')
    const value = await compute()
    this.computed++
    await this.after.opened
    return value
  }
}

interface Gateway {
  cluster: Cluster
  history: HeldHistory
  /** The cluster's claim store, its claims held with the history's reads. */
  claims: Pick<ClaimStore, 'claim'>
  delivery: Delivery
  registry: SessionRegistry
  /** Publishes `title` to `all` or to the user; resolves to its position. */
  publish: (stream: 'all' | 'user', title: string) => Promise<string>
}

/**
 * `allReadMaxAgeMs`: how long a read of the broadcast stream serves the
 * sessions asking the same. 0 by default here: these tests hold reads one by
 * one, so each resume reads itself (once the earlier read was answered).
 */
async function gateway (t: Test, redisUrl?: string, allReadMaxAgeMs = 0): Promise<Gateway> {
  const cluster = createCluster({
    redisUrl,
    instanceId: 'resume-test-inst',
    prefix: `rs${Math.random().toString(36).slice(2, 8)}:`,
    log,
    history: { maxEntries: 50, retentionMs: 60_000 },
    idempotencyWindowMs: 60_000
  })
  const counter = { inc () {}, dec () {}, observe () {} }
  const metrics = { connectionsActive: counter, connectionDuration: counter, messagesSent: counter } as unknown as GatewayMetrics
  const registry = new SessionRegistry({ ws: testConfig().ws, metrics, log })
  const history = new HeldHistory(cluster.history as HistoryStore)
  const delivery = new Delivery({ broker: cluster.broker, sessions: registry, log, history, allReadMaxAgeMs })
  delivery.start(() => {})
  cluster.start()
  t.teardown(async () => {
    delivery.stop()
    registry.closeAll(1001)
    await cluster.close()
  })
  await waitUntil(() => cluster.broker.connected, 5000, 'the bus')
  await delivery.watch(USER)
  let id = 0
  return {
    cluster,
    history,
    claims: history.claimsOf(cluster.claims),
    delivery,
    registry,
    publish: async (stream, title) => {
      const alert: Alert = { type: 'alert', id: `id-${++id}`, ts: Date.now(), severity: 'info', title }
      const result = await delivery.publish(stream === 'all' ? { all: true } : { userId: USER }, alert)
      return result.pos as string
    }
  }
}

/**
 * A session's plan as the /ws route makes it (UserClaims.claim, once the
 * user is watched): the claim, which reads the user's stream from
 * `since_user` in its own step, beside the broadcast stream's read.
 */
async function resume (gw: Gateway, since: { all?: string, user?: string }): Promise<ResumePlan> {
  const userFrom = gw.delivery.readFrom(since.user)
  const [claim, all] = await Promise.all([gw.claims.claim(USER, userFrom), gw.delivery.resumeAll(since.all)])
  return gw.delivery.plan(since, all, userFrom, claim.user)
}

/** A session on a socket that records what is written to it. */
function session (id: string): { session: Session, frames: Frame[] } {
  const frames: Frame[] = []
  const socket = {
    readyState: 1,
    bufferedAmount: 0,
    send: (frame: Buffer) => { frames.push(JSON.parse(frame.toString()) as Frame) },
    close: () => { socket.readyState = 3 }
  }
  const now = Date.now()
  return {
    session: new Session({ id, userId: USER, socket: socket as unknown as WebSocket, generation: 1, tokenExpMs: now + 600_000, tokenIatSec: null, authAtMs: now }, 10),
    frames
  }
}

function welcome (id: string): Welcome {
  return { type: 'welcome', connectionId: id, userId: USER, heartbeatMs: 30000, reauthMs: 600000, maxMessageBytes: 4096 }
}

/** A session of the user that follows everything live (it shows when an alert went through this instance). */
async function observer (gw: Gateway): Promise<Frame[]> {
  const { session: s, frames } = session('observer')
  gw.delivery.attach(s, await resume(gw, {}), welcome('observer'))
  return frames
}

function titles (frames: Frame[]): string[] {
  return frames.filter((f) => f.type === 'alert').map((f) => f.title as string)
}

async function received (frames: Frame[], title: string): Promise<void> {
  await waitUntil(() => titles(frames).includes(title), 5000, `alert ${title}`)
}

/** Publishes in order, waiting until each went through this instance. */
async function publishSeen (gw: Gateway, seen: Frame[], ...alerts: Array<['all' | 'user', string]>): Promise<string[]> {
  const positions: string[] = []
  for (const [stream, title] of alerts) {
    positions.push(await gw.publish(stream, title))
    await received(seen, title)
  }
  return positions
}

/** Per stream: the sequence numbers of the alerts the session got, in the order it got them. */
function seqsOf (frames: Frame[], stream: 'all' | 'user'): number[] {
  return frames.filter((f) => f.type === 'alert' && f.stream === stream).map((f) => Number(String(f.pos).split(':')[1]))
}

const seqRange = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_v, i) => from + i)

for (const bus of ['memory', 'redis'] as const) {
  const start = async (t: Test): Promise<Gateway> => {
    if (bus === 'memory') return await gateway(t)
    return await gateway(t, (await RedisServer.start(t)).url)
  }

  t.test(`${bus}: alerts arriving during a resume are delivered once each, in order, replayed ones first`, async (t) => {
    const gw = await start(t)
    const seen = await observer(gw)
    const [sinceAll, , sinceUser] = await publishSeen(gw, seen, ['all', 'a1'], ['all', 'a2'], ['user', 'u1'], ['user', 'u2'], ['all', 'a3'], ['user', 'u3'])

    gw.history.holdNext(2)
    await gw.delivery.watch(USER)
    const planned = resume(gw, { all: sinceAll, user: sinceUser })
    await waitUntil(() => gw.history.waiting === 2, 5000, 'both reads held')
    await publishSeen(gw, seen, ['all', 'a4'], ['user', 'u4'])
    gw.history.before.open()
    await waitUntil(() => gw.history.computed === 2, 5000, 'both reads computed')
    await publishSeen(gw, seen, ['user', 'u5'], ['all', 'a5'])
    gw.history.after.open()
    const plan = await planned
    await publishSeen(gw, seen, ['all', 'a6'], ['user', 'u6'])
    // Handed to this instance but not yet written to the observer either.
    const [, pos7] = await Promise.all([gw.publish('all', 'a7'), gw.publish('user', 'u7')])

    const { session: s, frames } = session('resumed')
    gw.delivery.attach(s, plan, welcome('resumed'))
    await publishSeen(gw, frames, ['all', 'a8'], ['user', 'u8'])
    await received(seen, 'a8')

    const epochs = { all: sinceAll.split(':')[0], user: sinceUser.split(':')[0] }
    t.same(frames.slice(0, 8).map((f) => [f.type, f.title, f.replay]), [
      ['welcome', undefined, undefined],
      ['alert', 'a2', true], ['alert', 'a3', true], ['alert', 'a4', true],
      ['alert', 'u2', true], ['alert', 'u3', true], ['alert', 'u4', true],
      ['resumed', undefined, undefined]
    ], 'the alerts in history at the read are replayed, then resumed')
    t.match(frames[0], { pos: { all: `${epochs.all}:4`, user: `${epochs.user}:4` } }, 'welcome gives the heads read')
    t.match(frames[7], { recovered: true, replayed: 6, pos: { all: `${epochs.all}:4`, user: `${epochs.user}:4` } })
    const after = frames.slice(8)
    t.ok(after.every((f) => f.type === 'alert' && f.replay === undefined), 'the rest are not replays')
    t.same(seqsOf(frames, 'all'), seqRange(2, 8), 'all: each alert after since_all once, in order')
    t.same(seqsOf(frames, 'user'), seqRange(2, 8), 'user: each alert after since_user once, in order')
    t.equal(pos7, `${epochs.user}:7`)
    t.same(titles(seen).sort(), ['a1', 'a2', 'a3', 'a4', 'a5', 'a6', 'a7', 'a8', 'u1', 'u2', 'u3', 'u4', 'u5', 'u6', 'u7', 'u8'].sort(),
      'the observer got everything once')
  })

  t.test(`${bus}: more user alerts during the resume than are kept at hand: gap, then live, none twice`, async (t) => {
    const gw = await start(t)
    const seen = await observer(gw)
    const [since] = await publishSeen(gw, seen, ['user', 'u1'])
    gw.history.holdNext(2)
    gw.history.before.open()
    await gw.delivery.watch(USER)
    const planned = resume(gw, { user: since })
    await waitUntil(() => gw.history.computed === 2, 5000, 'both reads computed')
    const during = []
    for (let i = 2; i <= 12; i++) during.push(['user', `u${i}`] as ['user', string])
    await publishSeen(gw, seen, ...during)
    gw.history.after.open()
    const { session: s, frames } = session('resumed')
    gw.delivery.attach(s, await planned, welcome('resumed'))
    await publishSeen(gw, frames, ['user', 'u13'])

    t.same(frames.map((f) => f.type), ['welcome', 'resumed', 'gap', 'alert'], 'nothing to replay; the ones missed meanwhile are announced')
    t.match(frames[1], { recovered: true, replayed: 0 })
    t.match(frames[2], { streams: ['user'], pos: { user: /:12$/ } }, 'gap up to the last delivered here')
    t.same(seqsOf(frames, 'user'), [13])
  })

  t.test(`${bus}: unknown positions replay the newest alerts, not recovered`, async (t) => {
    const gw = await start(t)
    const seen = await observer(gw)
    const [a1, a2] = await publishSeen(gw, seen, ['all', 'a1'], ['all', 'a2'])
    for (const since of ['other:1', 'well.formed-but:unknown', `${a1.split(':')[0]}:01`]) {
      const { session: s, frames } = session(since)
      gw.delivery.attach(s, await resume(gw, { all: since }), welcome(since))
      t.same(frames.map((f) => [f.type, f.title, f.replay]), [
        ['welcome', undefined, undefined], ['alert', 'a1', true], ['alert', 'a2', true], ['resumed', undefined, undefined]
      ], since)
      t.match(frames[3], { recovered: false, replayed: 2 })
      gw.registry.remove(s)
    }
    const { session: s, frames } = session('current')
    gw.delivery.attach(s, await resume(gw, { all: a2 }), welcome('current'))
    t.same(frames.map((f) => f.type), ['welcome', 'resumed'], 'the current position: nothing to replay')
    t.match(frames[1], { recovered: true, replayed: 0 })
  })
}

for (const bus of ['memory', 'redis'] as const) {
  t.test(`${bus}: new sessions share a read of the broadcast head, and miss nothing that went by after it`, async (t) => {
    const gw = await gateway(t, bus === 'memory' ? undefined : (await RedisServer.start(t)).url, 60_000)
    const seen = await observer(gw)
    t.equal(gw.history.headReads, 1, 'the first session read the head')
    // On Redis the follow of broadcasts reads on from the first session's
    // read: the bus connected before any position was known.
    const base = gw.history.allReadsFrom
    const [a1] = await publishSeen(gw, seen, ['all', 'a1'])

    // Within the age limit: the head read before a1 serves this session too.
    const { session: s, frames } = session('shared')
    gw.delivery.attach(s, await resume(gw, {}), welcome('shared'))
    t.equal(gw.history.headReads, 1, 'no read of its own')
    const head = (frames[0].pos as { all: string }).all
    t.equal(Number(head.split(':')[1]), Number(a1.split(':')[1]) - 1, 'its welcome has the head as read before a1')
    t.same(titles(frames), ['a1'], 'a1, which went by after that read, comes next, from this instance')
    t.notOk(frames.some((f) => f.replay === true || f.type === 'gap'), 'not a replay, no gap')
    await publishSeen(gw, frames, ['all', 'a2'])
    t.same(titles(frames), ['a1', 'a2'], 'then live, none twice')

    // Sessions starting together share one read; every session gets one plan.
    const plans = await Promise.all([resume(gw, {}), resume(gw, {})])
    t.equal(plans[0].all?.epoch, plans[1].all?.epoch)
    t.equal(gw.history.headReads, 1, 'still the one read')

    // Resumes from one position (a deploy's moved clients) share a read as
    // well, and each gets the replay, then what went by after the read.
    const [a3] = await publishSeen(gw, seen, ['all', 'a3'])
    const together = await Promise.all([resume(gw, { all: a1 }), resume(gw, { all: a1 })])
    t.equal(gw.history.allReadsFrom - base, 1, 'two resumes from a1: one read')
    await publishSeen(gw, seen, ['all', 'a4'])
    const later = await resume(gw, { all: a1 })
    t.equal(gw.history.allReadsFrom - base, 1, 'a third one, after a4: the same read')
    for (const [k, plan] of [...together, later].entries()) {
      const { session: r, frames: got } = session(`resumed-${k}`)
      gw.delivery.attach(r, plan, welcome(`resumed-${k}`))
      t.same(titles(got), ['a2', 'a3', 'a4'], `session ${k}: everything after a1, once`)
      t.match(got.find((f) => f.type === 'resumed'), { recovered: true, replayed: 2 }, `session ${k}: recovered`)
      t.notOk(got.find((f) => f.title === 'a4')?.replay, 'a4 went by after the read: live, not a replay')
      t.equal((got[0].pos as { all: string }).all, a3, 'its welcome has the position read')
    }
    await resume(gw, { all: a3 })
    t.equal(gw.history.allReadsFrom - base, 2, 'another position: a read of its own')

    // Once the follow has moved on by half its ring since the read, a new
    // session reads afresh (past the ring it would be told of a gap).
    const heads = gw.history.headReads
    for (let i = 0; i < 123; i++) await gw.publish('all', `burst-${i}`)
    await received(seen, 'burst-122')
    await resume(gw, {})
    t.equal(gw.history.headReads, heads, '127 broadcasts after the read (a1-a4 and 123): still shared')
    await publishSeen(gw, seen, ['all', 'burst-123'])
    const { session: late, frames: lateFrames } = session('late')
    gw.delivery.attach(late, await resume(gw, {}), welcome('late'))
    t.equal(gw.history.headReads, heads + 1, '128 after it: a read of its own')
    t.same(lateFrames.map((f) => f.type), ['welcome'], 'nothing to write after the welcome, no gap')
  })
}

t.test('memory: past its age limit a head read is not shared; while out it is; a failed one is not kept', async (t) => {
  const gw = await gateway(t)
  await resume(gw, {})
  await resume(gw, {})
  t.equal(gw.history.headReads, 2, 'answered reads are not shared (limit 0)')
  await Promise.all([resume(gw, {}), resume(gw, {}), resume(gw, { user: 'none:0' })])
  t.equal(gw.history.headReads, 3, 'three sessions starting together: one read')

  gw.history.failNextHead = true
  const failed = await Promise.allSettled([resume(gw, {}), resume(gw, {})])
  t.same(failed.map((r) => r.status), ['rejected', 'rejected'], 'the sessions waiting on a failed read fail with it')
  t.equal(gw.history.headReads, 4)
  const plan = await resume(gw, {})
  t.ok(plan.all !== null, 'the next session reads again, and gets its plan')
  t.equal(gw.history.headReads, 5)
})

t.test('redis: a read shared before the broadcast stream started over is not used after it', async (t) => {
  const redis = await RedisServer.start(t)
  const gw = await gateway(t, redis.url, 60_000)
  const seen = await observer(gw)
  await publishSeen(gw, seen, ['all', 'a1'])
  await (gw.cluster.redis as NonNullable<Cluster['redis']>).flushall()
  const [b1] = await publishSeen(gw, seen, ['all', 'b1'])
  const { session: s, frames } = session('after')
  gw.delivery.attach(s, await resume(gw, {}), welcome('after'))
  t.equal(gw.history.headReads, 2, 'the head is read afresh')
  t.equal((frames[0].pos as { all: string }).all, b1, 'its welcome has the new epoch\'s head')
  t.same(frames.map((f) => f.type), ['welcome'], 'no gap for a session that starts after it')
})

t.test('redis: a shared read that fails after the reads were dropped leaves the newer one shared', async (t) => {
  const redis = await RedisServer.start(t)
  const gw = await gateway(t, redis.url, 60_000)
  const seen = await observer(gw)
  const [a1] = await publishSeen(gw, seen, ['all', 'a1'])
  gw.history.holdNext(2)
  gw.history.failHeld = true
  await gw.delivery.watch(USER)
  const first = resume(gw, { all: a1 })
  await waitUntil(() => gw.history.waiting === 2, 5000, 'its claim and its read held')
  // The stream starts over: the follow's gap drops the shared reads, the one out included.
  await (gw.cluster.redis as NonNullable<Cluster['redis']>).flushall()
  await publishSeen(gw, seen, ['all', 'b1'])
  const reads = gw.history.allReadsFrom
  const second = await resume(gw, { all: a1 })
  t.equal(gw.history.allReadsFrom, reads + 1, 'the next resume from a1 reads afresh')
  gw.history.before.open()
  await t.rejects(first, /history unavailable/, 'the first read fails')
  const third = await resume(gw, { all: a1 })
  t.equal(gw.history.allReadsFrom, reads + 1, 'and a later one shares the second read: the failed one did not drop it')
  t.same(third.all, second.all, 'the same plan')
})

t.test('redis: history lost during a resume: the session is told, and gets the new epoch\'s alerts', async (t) => {
  // Bug: Delivery.#fill() with a plan of the old epoch and a follow already
  // on the new one: since() answers [] (another epoch), no gap is sent, and
  // the floor stays the plan's top (old epoch), which hides the new epoch's
  // alerts up to that number.
  const redis = await RedisServer.start(t)
  const gw = await gateway(t, redis.url)
  const seen = await observer(gw)
  const [since] = await publishSeen(gw, seen, ['all', 'a1'], ['all', 'a2'], ['all', 'a3'])
  gw.history.holdNext(2)
  gw.history.before.open()
  await gw.delivery.watch(USER)
  const planned = resume(gw, { all: since })
  await waitUntil(() => gw.history.computed === 2, 5000, 'both reads computed')
  await (gw.cluster.redis as NonNullable<Cluster['redis']>).flushall()
  await publishSeen(gw, seen, ['all', 'b1'], ['all', 'b2'])
  gw.history.after.open()
  const { session: s, frames } = session('resumed')
  gw.delivery.attach(s, await planned, welcome('resumed'))
  await publishSeen(gw, seen, ['all', 'b3'], ['all', 'b4'])
  await received(frames, 'b4')

  t.same(titles(frames).slice(0, 2), ['a2', 'a3'], 'replayed what the plan read')
  const told = frames.some((f) => f.type === 'gap') || titles(frames).includes('b1')
  t.ok(told, 'b1 and b2 are delivered or announced by a gap')
  t.same(titles(frames).slice(-2), ['b3', 'b4'], 'the new epoch\'s live alerts all arrive')
})
