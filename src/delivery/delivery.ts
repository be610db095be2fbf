import type { Alert, Gap, Positions, Resumed, Welcome } from '../../protocol/frames.js'
import { formatPosition, parsePosition, type Position, type StreamName } from '../../protocol/position.js'
import { ALL_TOPIC, userOfTopic, userTopic, type Broker } from '../cluster/broker.js'
import { isNewerEpoch, readHistoryMessage, type AppendRecord, type HistoryEntry, type HistoryStore, type StreamOwner, type StreamRead } from '../cluster/history-store.js'
import type { ClaimStore } from '../cluster/claim-store.js'
import type { SessionCounts } from '../cluster/session-counts.js'
import type { Log } from '../lib/log.js'
import type { Session } from '../session/session.js'
import type { SessionRegistry } from '../session/session-registry.js'
import { StreamFollow, type FollowHooks } from './stream-follow.js'

/** An event for one user's sessions, other than an alert. */
export type ControlEvent =
  /** A session of generation `generation` was accepted: close older ones. */
  | { type: 'claim', generation: number }
  /** The user logged out at `before` (epoch seconds): close every session it revokes. */
  | { type: 'logout', before: number }

/** Where an alert goes (the `target` of POST /alerts). */
export type Target = { all: true } | { userId: string } | { userIds: string[] }

export interface PublishResult {
  /** Sessions it was handed to (see the contract of POST /alerts). */
  delivered: number
  /** Where a single-stream alert landed, when history is on. */
  stream?: StreamName
  pos?: string
}

/** What a session read from history before it registers (see plan()). */
export interface ResumePlan {
  /** The client asked to resume (`since_all` or `since_user`). */
  asked: boolean
  /** Null when history is off. */
  all: StreamPlan | null
  user: StreamPlan | null
}

interface StreamPlan {
  epoch: string
  top: number
  replay: HistoryEntry[]
  recovered: boolean
}

export interface DeliveryMetrics {
  published: (target: 'all' | 'user' | 'users') => void
  resumed: (recovered: boolean, replayed: number) => void
  caughtUp: (result: 'caught_up' | 'gap') => void
  probeFailed: () => void
}

const ignore = (): void => {}
const NO_METRICS: DeliveryMetrics = { published: ignore, resumed: ignore, caughtUp: ignore, probeFailed: ignore }

const ALERT = 0x41 // 'A'
const CLAIM = 0x43 // 'C'
const LOGOUT = 0x4c // 'L'

/** Frames kept per followed stream for sessions that register just after them. */
const RING_ALL = 256
const RING_USER = 8
/** Position given when history is off. */
const NO_POSITION = 'none:0'
/** The alerts of a resumed stream: frames with `"replay":true`. */
const REPLAY_TAIL = Buffer.from(',"replay":true}')
/** How often the session counts of the other instances are refreshed. */
const COUNT_PERIOD_MS = 5000
/** How long one read of the broadcast stream serves the sessions asking the same (see #readAll). */
const ALL_READ_MAX_AGE_MS = 100

export interface DeliveryOptions {
  broker: Broker
  sessions: SessionRegistry
  log: Log
  /** Null or absent: history off. */
  history?: HistoryStore | null
  sessionCounts?: SessionCounts
  metrics?: DeliveryMetrics
  /** Counts of the user's connections per instance (for `delivered`). */
  claims?: Pick<ClaimStore, 'othersHolding'> | null
  /**
   * How long one read of the broadcast stream serves the sessions that
   * start from the same position (or without `since_all`); 0: only while
   * it is in flight. Default 100 ms.
   */
  allReadMaxAgeMs?: number
}

/** A read of the broadcast stream shared by the sessions asking the same (see Delivery#readAll). */
interface SharedRead {
  read: Promise<StreamRead>
  /** performance.now() when it was sent. */
  at: number
  /** Its answer; null while it is out. */
  value: StreamRead | null
}

function encode (type: number, payload: Buffer): Buffer {
  const message = Buffer.allocUnsafe(1 + payload.length)
  message[0] = type
  payload.copy(message, 1)
  return message
}

/** A frame without history: encoded once, written as these bytes to every socket. */
function encodeFrame (alert: Alert): Buffer {
  return Buffer.from(JSON.stringify(alert))
}

function replayFrame (frame: Buffer): Buffer {
  return Buffer.concat([frame.subarray(0, frame.length - 1), REPLAY_TAIL])
}

/**
 * The one owner of delivery: every alert and every user event goes to this
 * instance's sessions and, through the broker, to the other instances, and
 * what they publish comes back in here. Callers never talk to the broker.
 * It also keeps the one count of who watches a user's topic here.
 *
 * With history on, an alert is appended to its stream's history and handed
 * to every instance following the stream, this one included, in one step;
 * each instance delivers a stream's alerts in position order, catches up
 * from history what an interrupted subscription missed, and says `gap` for
 * what history no longer has. With history off, an alert goes to the local
 * sessions at once and to the other instances through the broker.
 *
 * On the wire (the broker's payload) an event is one type byte and its
 * payload: alert frames travel encoded and are written to sockets as
 * received, never parsed.
 */
export class Delivery {
  readonly #broker: Broker
  readonly #sessions: SessionRegistry
  readonly #log: Log
  readonly #history: HistoryStore | null
  readonly #counts: SessionCounts | null
  readonly #metrics: DeliveryMetrics
  readonly #claims: Pick<ClaimStore, 'othersHolding'> | null
  readonly #watched = new Map<string, { refs: number, ready: Promise<void>, follow: StreamFollow | null }>()
  readonly #all: StreamFollow | null
  readonly #hooks: FollowHooks
  /** The broadcast stream's epoch as last read (see #allEpochOf). */
  #allEpoch = ''
  readonly #allReadMaxAgeMs: number
  /** Reads of the broadcast stream by position asked ('' for the head), cleared every max age. */
  readonly #allReads = new Map<string, SharedRead>()
  #allReadsSweptAt = 0
  #onControl: ((userId: string, event: ControlEvent) => void) | null = null
  #others = 0
  #countTimer: NodeJS.Timeout | null = null

  constructor (opts: DeliveryOptions) {
    this.#broker = opts.broker
    this.#sessions = opts.sessions
    this.#log = opts.log
    this.#history = opts.history ?? null
    this.#counts = opts.sessionCounts ?? null
    this.#metrics = opts.metrics ?? NO_METRICS
    this.#claims = opts.claims ?? null
    this.#allReadMaxAgeMs = opts.allReadMaxAgeMs ?? ALL_READ_MAX_AGE_MS
    this.#hooks = this.#followHooks()
    this.#all = this.#follow(null)
  }

  /** Where claims and logouts go, local or from other instances. */
  setControlHandler (handler: (userId: string, event: ControlEvent) => void): void {
    this.#onControl = handler
  }

  /** Subscribes to broadcasts (in place again after every reconnect). */
  start (onConnectedChange: (connected: boolean) => void): void {
    this.#broker.setHandlers({
      onMessage: (topic, message) => this.#receive(topic, message),
      onConnectedChange: (connected) => {
        onConnectedChange(connected)
        // Subscribed again: read what went by meanwhile; new sessions read
        // afresh.
        if (connected) {
          this.#allReads.clear()
          this.#catchUpAll()
        }
      },
      onProbeFailure: () => this.#metrics.probeFailed()
    })
    this.#broker.subscribe(ALL_TOPIC).catch((err: Error) => {
      this.#log.debug({ err: err.message }, 'broadcast subscription waits for the bus')
    })
    if (this.#counts !== null) {
      this.#reportCount()
      this.#countTimer = setInterval(() => this.#reportCount(), COUNT_PERIOD_MS)
      this.#countTimer.unref()
    }
  }

  stop (): void {
    if (this.#countTimer !== null) clearInterval(this.#countTimer)
    this.#countTimer = null
    this.#all?.close()
    this.#allReads.clear()
  }

  /**
   * Publishes an alert to its target; see PublishResult. `record` gives the
   * idempotency answer to store with a single-stream append (see
   * AppendRecord).
   */
  async publish (target: Target, alert: Alert, record?: (stream: StreamName) => AppendRecord | undefined): Promise<PublishResult> {
    if ('all' in target) {
      this.#metrics.published('all')
      if (this.#history === null) return { delivered: await this.broadcast(encodeFrame(alert)) + this.#others }
      const local = this.#sessions.writableOf(null)
      const { epoch, seq } = await this.#history.append(null, ...this.#parts(alert, 'all'), record?.('all'))
      return { delivered: local + this.#others, stream: 'all', pos: formatPosition(epoch, seq) }
    }
    if ('userId' in target) {
      this.#metrics.published('user')
      return await this.#toUser(target.userId, alert, record?.('user'))
    }
    this.#metrics.published('users')
    let delivered = 0
    if (this.#history === null) {
      const frame = encodeFrame(alert)
      for (const sent of await Promise.all(target.userIds.map((userId) => this.sendToUser(userId, frame)))) delivered += sent
      return { delivered }
    }
    // One append per batch of users (see HistoryStore.appendMany), the frame encoded once.
    const { userIds } = target
    const local = userIds.map((userId) => this.#sessions.writableOf(userId))
    const appended = await this.#history.appendMany(userIds, ...this.#parts(alert, 'user'))
    for (const [i, { receivers, others }] of appended.entries()) delivered += local[i] + this.#remoteOf(userIds[i], receivers, others)
    return { delivered }
  }

  /**
   * To the user's stream; `delivered` counts the sessions here plus the
   * user's connections on the other instances following the user.
   */
  async #toUser (userId: string, alert: Alert, record?: AppendRecord): Promise<PublishResult> {
    if (this.#history === null) return { delivered: await this.sendToUser(userId, encodeFrame(alert)) }
    const local = this.#sessions.writableOf(userId)
    const { epoch, seq, receivers, others } = await this.#history.append(userId, ...this.#parts(alert, 'user'), record)
    return { delivered: local + this.#remoteOf(userId, receivers, others), stream: 'user', pos: formatPosition(epoch, seq) }
  }

  /** The user's connections elsewhere after an append that reached `receivers` instances. */
  #remoteOf (userId: string, receivers: number, others: number | undefined): number {
    return this.#remote(receivers - (this.#watched.has(userId) ? 1 : 0), others)
  }

  /** The alert's frame around its position: `head + pos + tail`. */
  #parts (alert: Alert, stream: StreamName): [string, string] {
    const json = JSON.stringify(alert)
    return [`${json.slice(0, -1)},"stream":"${stream}","pos":"`, '"}']
  }

  /** Without history: to every session of the cluster; resolves to the local sessions written. */
  async broadcast (frame: Buffer): Promise<number> {
    const delivered = this.#sessions.broadcast(frame)
    await this.#broker.publish(ALL_TOPIC, encode(ALERT, frame))
    return delivered
  }

  /**
   * Without history: to every session of the user; resolves to the sessions
   * written here plus the user's connections on the other instances.
   */
  async sendToUser (userId: string, frame: Buffer): Promise<number> {
    const watchedHere = this.#watched.has(userId) ? 1 : 0
    const local = this.#sessions.sendToUser(userId, frame)
    const receivers = await this.#broker.publish(userTopic(userId), encode(ALERT, frame))
    const following = receivers - watchedHere
    const others = following > 0 && this.#claims !== null ? await this.#claims.othersHolding(userId).catch(() => undefined) : undefined
    return local + this.#remote(following, others)
  }

  /**
   * The user's connections elsewhere: none unless another instance follows
   * the user (a count left by an instance that died is not counted), else
   * their count, or one per following instance when it is not known.
   */
  #remote (following: number, others: number | undefined): number {
    if (following <= 0) return 0
    /* c8 ignore next -- others is unknown only when a count could not be read */
    return Math.max(following, others ?? 0)
  }

  /** Applies a claim or logout here, then on the instances watching the user. */
  async control (userId: string, event: ControlEvent): Promise<void> {
    this.#onControl?.(userId, event)
    const payload = Buffer.from(String(event.type === 'claim' ? event.generation : event.before))
    await this.#broker.publish(userTopic(userId), encode(event.type === 'claim' ? CLAIM : LOGOUT, payload))
  }

  /** Starts receiving the user's events here (counted); resolves once subscribed. */
  async watch (userId: string): Promise<void> {
    const entry = this.#watched.get(userId)
    if (entry !== undefined) {
      entry.refs++
      await entry.ready
      return
    }
    const created = { refs: 1, ready: this.#broker.subscribe(userTopic(userId)), follow: this.#follow(userId) }
    this.#watched.set(userId, created)
    try {
      await created.ready
    } catch (err) {
      // Let the next watcher retry the subscription.
      if (this.#watched.get(userId) === created) this.#unwatched(userId, created)
      throw err
    }
  }

  unwatch (userId: string): void {
    const entry = this.#watched.get(userId)
    if (entry === undefined) return
    if (--entry.refs > 0) return
    this.#unwatched(userId, entry)
  }

  #unwatched (userId: string, entry: { follow: StreamFollow | null }): void {
    this.#watched.delete(userId)
    entry.follow?.close()
    this.#broker.unsubscribe(userTopic(userId))
  }

  /** Whether anything here watches the user (a session or a claim in progress). */
  watching (userId: string): boolean {
    return this.#watched.has(userId)
  }

  /** History is on: alerts get positions, sessions resume. */
  get historyOn (): boolean {
    return this.#history !== null
  }

  /**
   * Where a session reads a stream from (the user's: in the claim's step,
   * UserClaims.claim): null for its head, else after the `since_*` position
   * given. Positions are well-formed; one this server never wrote reads as
   * another epoch: the newest entries, not recovered.
   */
  readFrom (since: string | undefined): Position | null {
    if (since === undefined) return null
    return parsePosition(since) ?? { epoch: '-', seq: 0 }
  }

  /**
   * Before a session registers: the broadcast stream's head and, with
   * `since_all`, what came after it (null when history is off).
   */
  async resumeAll (since: string | undefined): Promise<StreamPlan | null> {
    if (this.#history === null) return null
    const from = this.readFrom(since)
    const read = await this.#readAll(this.#history, from)
    return this.#planOf(from, read, this.#allEpochOf(read.epoch))
  }

  /**
   * A session's plan: the broadcast stream's (resumeAll()) and the user's,
   * read in the claim's step from `userFrom` (readFrom(since.user)) once the
   * user was watched (null when history is off).
   */
  plan (since: { all?: string, user?: string }, all: StreamPlan | null, userFrom: Position | null, user: StreamRead | null): ResumePlan {
    return {
      asked: since.all !== undefined || since.user !== undefined,
      all,
      user: user === null ? null : this.#planOf(userFrom, user, user.epoch)
    }
  }

  /** A stream's plan from its read from `from`; recovered when nothing after `from` is missing. */
  #planOf (from: Position | null, read: StreamRead, epoch: string): StreamPlan {
    const recovered = from === null || (from.epoch === read.epoch && from.seq <= read.top && read.entries.length === read.top - from.seq)
    return { epoch, top: read.top, replay: read.entries, recovered }
  }

  /**
   * The broadcast stream from `from` (null: its head) for a session that
   * starts now. One read serves every session asking the same while it is
   * out, and for ALL_READ_MAX_AGE_MS after it was sent as long as what went
   * by since is well at hand (#atHandSince): new sessions all ask
   * for the head, and after a deploy every moved client resumes from the
   * same position, the last broadcast it got. One script less per
   * handshake is 3 Redis commands and about 5 KB of garbage (bench README,
   * "The handshake alone"). An older read misses nothing: the
   * alerts that went by since reached this instance's follow of the stream,
   * and attach() writes them after the welcome (and the replay), as for a
   * read answered just before them.
   */
  #readAll (history: HistoryStore, from: Position | null): Promise<StreamRead> {
    const now = performance.now()
    if (now - this.#allReadsSweptAt > this.#allReadMaxAgeMs) {
      // Bounded by the positions asked for in one max age; reads still out stay shared.
      for (const [key, shared] of this.#allReads) if (shared.value !== null) this.#allReads.delete(key)
      this.#allReadsSweptAt = now
    }
    const key = from === null ? '' : formatPosition(from.epoch, from.seq)
    const shared = this.#allReads.get(key)
    if (shared !== undefined && (shared.value === null || (now - shared.at <= this.#allReadMaxAgeMs && this.#atHandSince(shared.value)))) return shared.read
    const read: SharedRead = { read: history.read(null, from), at: now, value: null }
    this.#allReads.set(key, read)
    read.read.then((value) => { read.value = value }, () => {
      // Its waiters see the error; the next session reads again. The reads
      // may have been dropped meanwhile (a reconnect, a gap) and a newer
      // one shared under the key: that one stays.
      if (this.#allReads.get(key) === read) this.#allReads.delete(key)
    })
    return read.read
  }

  /**
   * Whether what went by after an answered read of the broadcast stream is
   * well within what the follow keeps at hand: same epoch, fewer than half
   * its ring since. Past that a session would be told of a gap that a fresh
   * read does not have (a burst of broadcasts, a stream started over).
   */
  #atHandSince (read: StreamRead): boolean {
    const follow = this.#all as StreamFollow
    return follow.epoch === read.epoch && follow.seq - read.top < RING_ALL / 2
  }

  /**
   * The broadcast epoch as one string for every session that keeps it (its
   * floor), not a copy read per handshake.
   */
  #allEpochOf (epoch: string): string {
    if (epoch !== this.#allEpoch) this.#allEpoch = epoch
    return this.#allEpoch
  }

  /**
   * Registers a session after its upgrade: writes `welcome` (with the
   * streams' heads), then the replayed alerts and `resumed` when the client
   * asked, then the alerts that reached this instance since the plan was
   * read; from then on the session gets live alerts, none twice.
   */
  attach (session: Session, plan: ResumePlan, welcome: Welcome): void {
    this.#sessions.sendFirst(session, () => { this.#writeFirst(session, plan, welcome) })
    this.#sessions.add(session)
  }

  /** The session's first frames: welcome, the replay and `resumed`, what went by since the plan. */
  #writeFirst (session: Session, plan: ResumePlan, welcome: Welcome): void {
    const { all, user } = plan
    if (all !== null && user !== null) welcome.pos = { all: formatPosition(all.epoch, all.top), user: formatPosition(user.epoch, user.top) }
    this.#sessions.send(session, Buffer.from(JSON.stringify(welcome)))
    if (all === null || user === null) {
      if (plan.asked) {
        this.#metrics.resumed(false, 0)
        this.#sendFrame(session, { type: 'resumed', recovered: false, replayed: 0, pos: { all: NO_POSITION, user: NO_POSITION } })
      }
      return
    }
    if (plan.asked) {
      let replayed = 0
      for (const stream of [all, user]) {
        for (const entry of stream.replay) {
          if (this.#sessions.send(session, replayFrame(entry.frame))) replayed++
        }
      }
      const resumed: Resumed = { type: 'resumed', recovered: all.recovered && user.recovered, replayed, pos: welcome.pos as Positions }
      this.#metrics.resumed(resumed.recovered, replayed)
      this.#sendFrame(session, resumed)
    }
    const [floorAll, floorAllEpoch] = this.#fill(session, this.#all as StreamFollow, all, 'all')
    session.floorAll = floorAll
    session.floorAllEpoch = floorAllEpoch
    const follow = this.#watched.get(session.userId)?.follow
    // The session's claim watches its user: the follow exists while it lives.
    const [floorUser, floorUserEpoch] = this.#fill(session, follow as StreamFollow, user, 'user')
    session.floorUser = floorUser
    session.floorUserEpoch = floorUserEpoch
  }

  /**
   * Writes what the follow delivered after the plan was read; returns the
   * session's floor and its epoch.
   */
  #fill (session: Session, follow: StreamFollow, plan: StreamPlan, stream: StreamName): [number, string] {
    if (follow.epoch !== null && follow.epoch !== plan.epoch) {
      /* c8 ignore start -- a Redis reset seen by the plan's read before any alert of it reached this instance: the resume test forces the other order */
      if (!isNewerEpoch(follow.epoch, plan.epoch)) {
        // The plan read a newer epoch than this instance has seen: the follow
        // learns it by a catch-up and keeps this session's floor.
        follow.catchUp()
        return [plan.top, plan.epoch]
      }
      /* c8 ignore stop */
      // History was lost after the plan was read: what the plan promised
      // after its position is gone. Say so, then what the new epoch had.
      const fresh = follow.since(follow.epoch, 0)
      /* c8 ignore next 2 -- null only when more of the new epoch went by during one handshake than the ring keeps */
      this.#sendGap(session, [stream], fresh === null ? follow.position : formatPosition(follow.epoch, 0))
      for (const entry of fresh ?? []) this.#sessions.send(session, entry.frame)
      return [follow.seq, follow.epoch]
    }
    const missed = follow.since(plan.epoch, plan.top)
    if (missed === null) {
      // More went by during the handshake than is kept at hand: say so.
      this.#sendGap(session, [stream])
      return [follow.seq, plan.epoch]
    }
    for (const entry of missed) this.#sessions.send(session, entry.frame)
    // since() leaves the follow in the plan's epoch: its copy is one string
    // for the stream, not one per session.
    return [Math.max(plan.top, follow.seq), follow.epoch as string]
  }

  #follow (owner: StreamOwner): StreamFollow | null {
    if (this.#history === null) return null
    return new StreamFollow(owner === null ? RING_ALL : RING_USER, owner, this.#hooks)
  }

  /** What every follow of this instance asks of it (one object, no per-user closures). */
  #followHooks (): FollowHooks {
    return {
      read: (owner, from) => (this.#history as HistoryStore).read(owner, from),
      deliver: (owner, seq, frame) => {
        if (owner === null) this.#sessions.broadcast(frame, seq)
        else this.#sessions.sendToUser(owner, frame, seq)
      },
      gap: (owner, pos, newEpoch, rewoundTo) => {
        // Reads shared before it may name positions the stream no longer has.
        this.#allReads.clear()
        const sessions = owner === null ? this.#sessions.list() : this.#sessions.sessionsOf(owner)
        const stream: StreamName = owner === null ? 'all' : 'user'
        for (const session of [...sessions]) {
          if (rewoundTo !== undefined) {
            if (owner === null) session.floorAll = Math.min(session.floorAll, rewoundTo)
            else session.floorUser = Math.min(session.floorUser, rewoundTo)
          }
          if (newEpoch !== null) {
            // A session that resumed into the new epoch already has its floor there.
            /* c8 ignore next -- a session that resumed into the new epoch before this instance saw it */
            if ((owner === null ? session.floorAllEpoch : session.floorUserEpoch) === newEpoch) continue
            if (owner === null) {
              session.floorAll = 0
              session.floorAllEpoch = newEpoch
            } else {
              session.floorUser = 0
              session.floorUserEpoch = newEpoch
            }
          }
          this.#sendGap(session, [stream], pos)
        }
      },
      caughtUp: (result) => this.#metrics.caughtUp(result),
      log: this.#log
    }
  }

  /** `pos`: where the client stands afterwards in the gapped stream (default: the follow's position). */
  #sendGap (session: Session, streams: StreamName[], pos?: string): void {
    const user = this.#watched.get(session.userId)?.follow
    const gap: Gap = {
      type: 'gap',
      streams,
      /* c8 ignore next -- a session's user is watched while the session lives */
      pos: { all: (this.#all as StreamFollow).position, user: user?.position ?? NO_POSITION }
    }
    if (pos !== undefined) gap.pos[streams[0]] = pos
    this.#sendFrame(session, gap)
  }

  #sendFrame (session: Session, frame: Gap | Resumed): void {
    this.#sessions.send(session, Buffer.from(JSON.stringify(frame)))
  }

  #catchUpAll (): void {
    this.#all?.catchUp()
    for (const entry of this.#watched.values()) entry.follow?.catchUp()
  }

  #reportCount (): void {
    (this.#counts as SessionCounts).report(this.#sessions.size).then((others) => { this.#others = others }, (err: Error) => {
      this.#log.debug({ err: err.message }, 'session count not reported')
    })
  }

  #receive (topic: string, message: Buffer): void {
    const type = message[0]
    const history = readHistoryMessage(message)
    if (history !== null) {
      const follow = topic === ALL_TOPIC ? this.#all : this.#watched.get(userOfTopic(topic))?.follow
      // Not followed here (any more): nothing to deliver to.
      if (follow === undefined || follow === null) return
      const pos = parsePosition(history.pos)
      if (pos !== null) follow.receive(pos.epoch, pos.seq, history.frame)
      return
    }
    const payload = message.subarray(1)
    if (topic === ALL_TOPIC) {
      if (type === ALERT) this.#sessions.broadcast(payload)
      return
    }
    const userId = userOfTopic(topic)
    if (type === ALERT) this.#sessions.sendToUser(userId, payload)
    else if (type === CLAIM) this.#onControl?.(userId, { type: 'claim', generation: Number(payload.toString()) })
    else if (type === LOGOUT) this.#onControl?.(userId, { type: 'logout', before: Number(payload.toString()) })
  }
}
