import calculateSlot from 'cluster-key-slot'
import type { Cluster, Redis } from 'ioredis'
import type { Log } from '../lib/log.js'
import type { Broker, BrokerHandlers } from './broker.js'
import type { RedisConnections } from './redis-connections.js'

/** Channels per SUBSCRIBE command. */
const SUBSCRIBE_BATCH = 1000

export interface RedisBrokerOptions {
  connections: RedisConnections
  /** Fixed-length id of this instance; messages it published are skipped. */
  instanceId: string
  /** Prefix of every channel, e.g. `gw:`: a topic `t` is channel `<prefix>t`. */
  prefix: string
  log: Log
  /** How often the subscription is proven with a probe (0: never). */
  probeIntervalMs?: number
}

/** Longest /ready waits for a Cluster's PING. */
const CLUSTER_PING_TIMEOUT_MS = 1000

/** Wait before reconnecting a connection ioredis gave up on. */
const REVIVE_DELAY_MS = 500

/** Probes missed in a row before the subscription counts as broken. */
const PROBES_MISSED_BROKEN = 2

/** First byte of a probe's topic: other channels are not looked at further. */
const PROBE_MARK = 'p'.charCodeAt(0)

/** Tags tried for one probe channel per master (thousands of masters). */
const PROBE_TAG_TRIES = 100_000

/**
 * The broker over Redis pub/sub: publishes on the command connection,
 * subscribes on the subscriber connection.
 *
 * Channel layout, chosen to work unchanged on Redis Cluster with sharded
 * pub/sub (SPUBLISH/SSUBSCRIBE hash the channel like a key):
 * - `<prefix>all`: broadcasts; every instance subscribes.
 * - `<prefix>user:{<userId>}`: one user's events; only instances holding a
 *   session of that user subscribe, so a per-user alert wakes only them.
 *
 * A message is `<instanceId><payload>`; an instance skips its own (it
 * already applied them locally). Payloads travel as bytes, never parsed.
 */
export class RedisBroker implements Broker {
  readonly #command: Redis
  readonly #subscriber: Redis
  readonly #origin: Buffer
  readonly #prefix: string
  readonly #log: Log
  /** Every subscribed topic, restored after each reconnect. */
  readonly #topics = new Set<string>()
  /** Channels to subscribe at the next flush; #pendingFlush settles with it. */
  readonly #pendingChannels = new Set<string>()
  /** Channels to unsubscribe at the next flush (disjoint from #pendingChannels). */
  readonly #pendingUnsubscribes = new Set<string>()
  #pendingFlush: Promise<void> | null = null
  #handlers: BrokerHandlers = { onMessage: () => {} }
  #connected = false
  /** The subscriber is ready and every channel is subscribed again. */
  #subscribed = false
  #closing = false
  /** Sharded pub/sub on a Redis Cluster (SPUBLISH/SSUBSCRIBE). */
  readonly #sharded: boolean
  #everSubscribed = false
  // The probe: a message to this instance's own channel every interval; on a
  // Cluster, one channel per master (see #probeTopics).
  readonly #probeTopic: string
  readonly #probeIntervalMs: number
  #probeTimer: NodeJS.Timeout | null = null
  /**
   * Probe channel: the last probe sent on it and the last seen back; probes
   * go out once it is subscribed.
   */
  readonly #probes = new Map<string, { sent: number, seen: number, subscribed: boolean }>()
  #probeSeq = 0
  #probesMissed = 0
  /** The last probe came back (or none was due yet). */
  #probeOk = true

  constructor (opts: RedisBrokerOptions) {
    this.#command = opts.connections.command
    this.#subscriber = opts.connections.subscriber
    this.#origin = Buffer.from(opts.instanceId, 'latin1')
    this.#prefix = opts.prefix
    this.#log = opts.log
    this.#probeIntervalMs = opts.probeIntervalMs ?? 0
    this.#probeTopic = `probe:{${opts.instanceId}`
    this.#sharded = opts.connections.sharded
    // Restored after every reconnect with the other channels.
    if (this.#probeIntervalMs > 0 && !this.#sharded) {
      this.#topics.add(`${this.#probeTopic}}`)
      this.#probes.set(`${opts.prefix}${this.#probeTopic}}`, { sent: 0, seen: 0, subscribed: true })
    }
    for (const client of this.#sharded ? [this.#command] : [this.#command, this.#subscriber]) {
      // Without an 'error' listener ioredis errors would crash the process.
      client.on('error', (err) => this.#log.debug({ err: err.message }, 'redis connection error'))
      client.on('close', () => {
        if (client === this.#subscriber) this.#subscribed = false
        this.#updateConnected()
      })
      client.on('end', () => this.#revive(client))
    }
    if (this.#sharded) {
      this.#listenSharded()
    } else {
      this.#command.on('ready', () => this.#updateConnected())
      this.#subscriber.on('ready', () => { this.#resubscribe() })
      this.#subscriber.on('messageBuffer', (channel: Buffer, message: Buffer) => this.#onMessage(channel, message))
    }
  }

  /**
   * On a Cluster, ioredis keeps one subscriber connection per master and
   * moves the channels itself when slots move or a shard fails over: the
   * subscriptions are ours to make once, and its subscriber events say when
   * they were interrupted and when they are all in place again (then the
   * delivery catches up).
   */
  #listenSharded (): void {
    const cluster = this.#command
    cluster.on('ready', () => {
      if (!this.#everSubscribed) {
        this.#resubscribe()
        return
      }
      /* c8 ignore next 2 -- the whole Cluster connecting again (every seed lost at once): not staged by the tests */
      this.#subscribed = true
      this.#updateConnected()
    })
    cluster.on('-subscriber', () => {
      this.#subscribed = false
      this.#updateConnected()
    })
    cluster.on('subscribersReady', () => {
      if (!this.#everSubscribed) return
      this.#subscribed = cluster.status === 'ready'
      this.#updateConnected()
    })
    cluster.on('smessageBuffer', (channel: Buffer, message: Buffer) => this.#onMessage(channel, message))
  }

  /**
   * ioredis gives up on a connection in some races (a Sentinel failover
   * announced while it was asking a Sentinel for the master leaves it
   * `end`, never retried): keep connecting until the broker closes.
   */
  #revive (client: Redis): void {
    if (this.#closing) return
    /* c8 ignore start -- the ioredis race it repairs (a failover announced mid-connect) is not reproducible on demand */
    setTimeout(() => {
      if (this.#closing || client.status !== 'end') return
      this.#log.warn('redis connection ended: connecting again')
      client.connect().catch(() => { /* another 'end' revives it again */ })
    }, REVIVE_DELAY_MS).unref()
  }
  /* c8 ignore stop */

  get connected (): boolean {
    return this.#connected
  }

  setHandlers (handlers: BrokerHandlers): void {
    this.#handlers = handlers
  }

  #updateConnected (): void {
    const now = this.#command.status === 'ready' && this.#subscribed && this.#probeOk
    if (now === this.#connected) return
    this.#connected = now
    if (!this.#closing) this.#log[now ? 'info' : 'warn']('redis bus %s', now ? 'connected' : 'disconnected')
    this.#handlers.onConnectedChange?.(now)
  }

  /** After every (re)connect: every subscribed topic. */
  async #resubscribe (): Promise<void> {
    const channels = [...this.#topics].map((topic) => this.#prefix + topic)
    try {
      await this.#subscribeAll(channels)
    /* c8 ignore start -- the connection dropping again mid-resubscription is a race no test can order */
    } catch (err) {
      // The next 'ready' retries.
      this.#log.debug({ err }, 'resubscribe interrupted')
      return
    }
    /* c8 ignore stop */
    this.#everSubscribed = true
    this.#subscribed = this.#subscriber.status === 'ready'
    this.#updateConnected()
  }

  /**
   * SUBSCRIBE (or UNSUBSCRIBE) `channels`, at most SUBSCRIBE_BATCH per
   * command; on a Cluster one command per channel (SSUBSCRIBE takes channels
   * of one slot). Every command leaves at once, in order on the connection:
   * a later turn's command for one of these channels cannot overtake a batch
   * that would otherwise wait for the answer to the one before it.
   */
  async #subscribeAll (channels: string[], subscribe = true): Promise<void> {
    const subscriber = this.#subscriber
    const size = this.#sharded ? 1 : SUBSCRIBE_BATCH
    const sent: Array<Promise<unknown>> = []
    for (let i = 0; i < channels.length; i += size) {
      const batch = channels.slice(i, i + size)
      if (this.#sharded) sent.push(subscribe ? subscriber.ssubscribe(...batch) : subscriber.sunsubscribe(...batch))
      else sent.push(subscribe ? subscriber.subscribe(...batch) : subscriber.unsubscribe(...batch))
    }
    await Promise.all(sent)
  }

  /**
   * At the end of this turn of the event loop: one UNSUBSCRIBE for every
   * topic dropped in the turn, then one SUBSCRIBE for every topic asked for
   * (the two sets are disjoint). A connect storm sends one SUBSCRIBE per
   * turn instead of one per handshake, a disconnect storm one UNSUBSCRIBE.
   * Both go out on the subscriber connection, in the order they were asked
   * for across turns. Settles when the SUBSCRIBE is answered.
   */
  #flushSoon (): Promise<void> {
    this.#pendingFlush ??= new Promise((resolve) => setImmediate(resolve)).then(() => {
      this.#pendingFlush = null
      if (this.#pendingUnsubscribes.size > 0) {
        const gone = [...this.#pendingUnsubscribes]
        this.#pendingUnsubscribes.clear()
        // If Redis is down the subscriptions are gone anyway, and not restored.
        this.#subscribeAll(gone, false).catch(() => {})
      }
      const channels = [...this.#pendingChannels]
      this.#pendingChannels.clear()
      return this.#subscribeAll(channels)
    })
    return this.#pendingFlush
  }

  subscribe (topic: string): Promise<void> {
    this.#topics.add(topic)
    const channel = this.#prefix + topic
    // Dropped earlier in this turn and still subscribed: the SUBSCRIBE is
    // then a no-op for Redis, and its answer still says the channel is live.
    this.#pendingUnsubscribes.delete(channel)
    this.#pendingChannels.add(channel)
    return this.#flushSoon()
  }

  unsubscribe (topic: string): void {
    if (!this.#topics.delete(topic)) return
    const channel = this.#prefix + topic
    this.#pendingChannels.delete(channel)
    // Unsubscribed even if it was only waiting for this turn's SUBSCRIBE: an
    // earlier one may have gone out (watched, dropped, watched again in one
    // turn), and unsubscribing a channel not subscribed costs Redis nothing.
    this.#pendingUnsubscribes.add(channel)
    if (this.#pendingFlush === null) this.#flushSoon().catch(() => { /* the subscribers of the flush see it */ })
  }

  /**
   * Starts proving the subscription: every interval a probe goes out on the
   * command connection to this instance's own channel and must come back on
   * the subscriber. Commands can succeed while a subscription is dead (a
   * half-open connection, a proxy that stopped forwarding): after
   * PROBES_MISSED_BROKEN probes missed in a row the bus counts as
   * disconnected and the subscriber connection is rebuilt, again every
   * PROBES_MISSED_BROKEN intervals until probes come back. On a Cluster a
   * probe goes through every master's subscriber connection.
   */
  startProbes (): void {
    if (this.#probeIntervalMs === 0 || this.#probeTimer !== null) return
    this.#probeTimer = setInterval(() => this.#probe(), this.#probeIntervalMs)
    this.#probeTimer.unref()
  }

  #probe (): void {
    if (this.#command.status !== 'ready') {
      // Reported through the command connection already; start afresh when it is back.
      this.#forgetProbes()
      this.#probesMissed = 0
      return
    }
    if (!this.#probesBack()) {
      this.#probesMissed++
      this.#handlers.onProbeFailure?.()
      if (this.#probesMissed >= PROBES_MISSED_BROKEN) {
        if (this.#probeOk) {
          this.#probeOk = false
          this.#log.warn({ missed: this.#probesMissed }, 'bus probes do not come back: rebuilding the subscriber connection')
          this.#updateConnected()
        }
        // On a Cluster the subscriber connections are ioredis's own, behind
        // the connection that carries every command: disconnecting that
        // would take the commands down too and can leave ioredis's
        // subscriber group stuck mid-reset. It re-subscribes by itself;
        // the bus stays reported broken until a probe comes back.
        if (!this.#sharded && this.#probesMissed % PROBES_MISSED_BROKEN === 0) {
          this.#forgetProbes()
          this.#subscriber.disconnect(true)
        }
      }
    } else {
      this.#probesMissed = 0
    }
    if (this.#sharded) this.#probeEveryMaster()
    const seq = ++this.#probeSeq
    for (const [channel, probe] of this.#probes) {
      if (!probe.subscribed) continue
      probe.sent = seq
      this.#publish(channel, String(seq)).catch(() => { /* counted as missed */ })
    }
  }

  #probesBack (): boolean {
    for (const probe of this.#probes.values()) if (probe.seen < probe.sent) return false
    return true
  }

  #forgetProbes (): void {
    for (const probe of this.#probes.values()) probe.seen = probe.sent
  }

  #addProbe (topic: string): void {
    const probe = { sent: 0, seen: 0, subscribed: false }
    this.#probes.set(this.#prefix + topic, probe)
    /* c8 ignore start -- the rejection: the Cluster dropping between its 'ready' and the SSUBSCRIBE, a race no test can order */
    const failed = (): void => {
      // Tried again at the next probe.
      if (this.#probes.get(this.#prefix + topic) === probe) this.#probes.delete(this.#prefix + topic)
    }
    /* c8 ignore stop */
    this.subscribe(topic).then(() => { probe.subscribed = true }, failed)
  }

  /**
   * Cluster: keeps one probe channel in a slot of each master, so a
   * subscriber connection that stops delivering is found whichever shard it
   * serves. Follows failovers and slot moves: a master without a channel
   * gets one, a channel whose master serves another channel already goes.
   */
  #probeEveryMaster (): void {
    const slots = (this.#command as unknown as Cluster).slots
    const owners = new Map<string, string>()
    for (const channel of this.#probes.keys()) {
      const master = slots[calculateSlot(channel)]?.[0]
      if (master === undefined || owners.has(master)) {
        this.#probes.delete(channel)
        this.unsubscribe(channel.slice(this.#prefix.length))
      } else {
        owners.set(master, channel)
      }
    }
    const masters = new Set<string>()
    for (const nodes of slots) if (nodes?.[0] !== undefined) masters.add(nodes[0])
    for (let n = 0; owners.size < masters.size && n < PROBE_TAG_TRIES; n++) {
      const topic = `${this.#probeTopic}.${n}}`
      const master = slots[calculateSlot(topic)]?.[0]
      if (master === undefined || owners.has(master)) continue
      owners.set(master, topic)
      this.#addProbe(topic)
    }
  }

  #onProbe (channel: string, message: Buffer): void {
    const probe = this.#probes.get(channel)
    /* c8 ignore next -- a probe still in flight on a channel dropped after a slot move: timing */
    if (probe === undefined) return
    const seq = Number(message.toString('latin1'))
    if (seq > probe.seen) probe.seen = seq
    if (!this.#probeOk && this.#probesBack()) {
      this.#probeOk = true
      this.#probesMissed = 0
      this.#updateConnected()
    }
  }

  #onMessage (channel: Buffer, message: Buffer): void {
    if (this.#probes.size > 0 && channel[this.#prefix.length] === PROBE_MARK) {
      const name = channel.toString('latin1')
      if (name.startsWith(this.#probeTopic, this.#prefix.length)) {
        this.#onProbe(name, message)
        return
      }
    }
    const originLength = this.#origin.length
    if (message.length <= originLength || this.#origin.equals(message.subarray(0, originLength))) return
    try {
      this.#handlers.onMessage(channel.toString().slice(this.#prefix.length), message.subarray(originLength))
    } catch (err) {
      // An exception here would escape through ioredis's emit and crash.
      this.#log.error({ err }, 'bus message handler failed')
    }
  }

  async publish (topic: string, payload: Buffer): Promise<number> {
    const message = Buffer.allocUnsafe(this.#origin.length + payload.length)
    this.#origin.copy(message, 0)
    payload.copy(message, this.#origin.length)
    return await this.#publish(this.#prefix + topic, message)
  }

  #publish (channel: string, message: Buffer | string): Promise<number> {
    return this.#sharded ? this.#command.spublish(channel, message) as Promise<number> : this.#command.publish(channel, message)
  }

  /** The command that publishes on this broker's channels (for scripts). */
  get publishCommand (): 'PUBLISH' | 'SPUBLISH' {
    return this.#sharded ? 'SPUBLISH' : 'PUBLISH'
  }

  /** The channel of a topic (for messages published by a script). */
  channelOf (topic: string): string {
    return this.#prefix + topic
  }

  /** An origin no instance skips: the message reaches this one too. */
  get everyInstance (): Buffer {
    return Buffer.alloc(this.#origin.length, '*')
  }

  /** Readiness probe: a round trip on the command connection. */
  async ping (): Promise<boolean> {
    if (!this.#connected) return false
    // A hung Redis times out (commandTimeout) here: not ready either. On a
    // Cluster a PING may go to a node that just died: bounded tighter.
    const answer = this.#command.ping().catch((err: Error) => err.message)
    if (!this.#sharded) return await answer === 'PONG'
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<string>((resolve) => { timer = setTimeout(() => resolve('late'), CLUSTER_PING_TIMEOUT_MS) })
    try {
      return await Promise.race([answer, late]) === 'PONG'
    } finally {
      clearTimeout(timer)
    }
  }

  async close (): Promise<void> {
    this.#closing = true
    if (this.#probeTimer !== null) clearInterval(this.#probeTimer)
    const clients = this.#sharded ? [this.#command] : [this.#subscriber, this.#command]
    await Promise.allSettled(clients.map((client) => client.quit()))
    for (const client of clients) client.disconnect()
  }
}
