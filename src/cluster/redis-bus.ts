import { Redis, type RedisOptions } from 'ioredis'
import type { Bus, BusHandlers, UserEvent } from './bus.js'
import type { Log } from '../lib/log.js'

const TYPE_ALERT = 0x41 // 'A'
const TYPE_CLAIM = 0x43 // 'C'
const TYPE_LOGOUT = 0x4c // 'L'
/** Generations outlive any session; refreshed at every claim. */
const GENERATION_TTL_SEC = 30 * 24 * 3600
/** Channels per SUBSCRIBE command. */
const SUBSCRIBE_BATCH = 1000

export interface RedisBusOptions {
  url: string
  /** Fixed-length id of this instance; messages it published are skipped. */
  instanceId: string
  /** Prefix of every key and channel, e.g. `gw:`. */
  prefix: string
  log: Log
  /** Bound on any one command, so a stalled Redis never hangs a request. */
  commandTimeoutMs?: number
}

/**
 * The cluster bus over Redis pub/sub, with two connections (a subscribed
 * connection cannot send other commands).
 *
 * Channel layout, chosen to work unchanged on Redis Cluster with sharded
 * pub/sub (SPUBLISH/SSUBSCRIBE hash the channel like a key):
 * - `<prefix>all`: broadcasts; every instance subscribes.
 * - `<prefix>user:{<userId>}`: one user's alerts, claims and logouts; only
 *   instances holding a session of that user subscribe, so a per-user alert
 *   wakes only them. The hash tag keeps the user's channel and keys
 *   (`<prefix>gen:{<userId>}`, `<prefix>revoked:{<userId>}`) in one slot.
 *
 * A message is `<instanceId><type byte><payload>`; an instance skips its own
 * (it already applied them locally). Alert frames travel encoded and are
 * written to sockets as received, never parsed.
 */
export class RedisBus implements Bus {
  readonly kind = 'redis'
  readonly #command: Redis
  readonly #subscriber: Redis
  readonly #origin: Buffer
  readonly #prefix: string
  readonly #allChannel: string
  readonly #userChannelPrefix: string
  readonly #log: Log
  readonly #watched = new Map<string, { refs: number, ready: Promise<unknown> }>()
  /** User channels to subscribe at the next flush; #pendingFlush settles with it. */
  readonly #pendingChannels = new Set<string>()
  #pendingFlush: Promise<void> | null = null
  #handlers: BusHandlers = { onBroadcast: () => {}, onUserEvent: () => {} }
  #connected = false
  /** The subscriber is ready and every channel is subscribed again. */
  #subscribed = false
  #closing = false

  constructor (opts: RedisBusOptions) {
    this.#origin = Buffer.from(opts.instanceId, 'latin1')
    this.#prefix = opts.prefix
    this.#allChannel = `${opts.prefix}all`
    this.#userChannelPrefix = `${opts.prefix}user:{`
    this.#log = opts.log
    const options: RedisOptions = {
      // Fail fast while disconnected instead of queueing without bound.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      commandTimeout: opts.commandTimeoutMs ?? 2000,
      connectTimeout: 2000,
      retryStrategy: (times) => Math.min(100 * times, 1000),
      lazyConnect: true
    }
    // Commands issued in the same tick (a connect storm's handshakes, a
    // burst of publishes) share one write.
    this.#command = new Redis(opts.url, { ...options, connectionName: 'gw-command', enableAutoPipelining: true })
    // Subscriptions are restored by #resubscribe, which also tells when they
    // are all in place again: only then is the bus reported connected.
    this.#subscriber = new Redis(opts.url, { ...options, connectionName: 'gw-subscriber', autoResubscribe: false })
    for (const client of [this.#command, this.#subscriber]) {
      // Without an 'error' listener ioredis errors would crash the process.
      client.on('error', (err) => this.#log.debug({ err: err.message }, 'redis connection error'))
      client.on('close', () => {
        if (client === this.#subscriber) this.#subscribed = false
        this.#updateConnected()
      })
    }
    this.#command.on('ready', () => this.#updateConnected())
    this.#subscriber.on('ready', () => { this.#resubscribe() })
    this.#subscriber.on('messageBuffer', (channel: Buffer, message: Buffer) => this.#onMessage(channel, message))
  }

  /** The command connection, shared with the cluster-wide limits. */
  get client (): Redis {
    return this.#command
  }

  get connected (): boolean {
    return this.#connected
  }

  /** Starts connecting; resolves at once, also when Redis is unreachable. */
  async start (): Promise<void> {
    for (const client of [this.#command, this.#subscriber]) {
      client.connect().catch(() => { /* retried by ioredis; reported via 'error' */ })
    }
  }

  setHandlers (handlers: BusHandlers): void {
    this.#handlers = handlers
  }

  #updateConnected (): void {
    const now = this.#command.status === 'ready' && this.#subscribed
    if (now === this.#connected) return
    this.#connected = now
    if (!this.#closing) this.#log[now ? 'info' : 'warn']('redis bus %s', now ? 'connected' : 'disconnected')
    this.#handlers.onConnectedChange?.(now)
  }

  /** After every (re)connect: the broadcast channel and every watched user. */
  async #resubscribe (): Promise<void> {
    const channels = [this.#allChannel, ...[...this.#watched.keys()].map((id) => this.#userChannel(id))]
    try {
      await this.#subscribeAll(channels)
    /* c8 ignore start -- the connection dropping again mid-resubscription is a race no test can order */
    } catch (err) {
      // The next 'ready' retries.
      this.#log.debug({ err }, 'resubscribe interrupted')
      return
    }
    /* c8 ignore stop */
    this.#subscribed = this.#subscriber.status === 'ready'
    this.#updateConnected()
  }

  async #subscribeAll (channels: string[]): Promise<void> {
    for (let i = 0; i < channels.length; i += SUBSCRIBE_BATCH) {
      await this.#subscriber.subscribe(...channels.slice(i, i + SUBSCRIBE_BATCH))
    }
  }

  /**
   * Subscribes at the end of this turn of the event loop, together with every
   * channel asked for in the same turn: a connect storm sends one SUBSCRIBE
   * per turn instead of one per handshake.
   */
  #subscribeSoon (channel: string): Promise<void> {
    this.#pendingChannels.add(channel)
    this.#pendingFlush ??= new Promise((resolve) => setImmediate(resolve)).then(() => {
      const channels = [...this.#pendingChannels]
      this.#pendingChannels.clear()
      this.#pendingFlush = null
      return this.#subscribeAll(channels)
    })
    return this.#pendingFlush
  }

  #userChannel (userId: string): string {
    return `${this.#userChannelPrefix}${userId}}`
  }

  /** The user of a channel: only `all` and user channels are ever subscribed. */
  #userIdOf (channel: string): string {
    return channel.slice(this.#userChannelPrefix.length, -1)
  }

  #frame (type: number, payload: Buffer): Buffer {
    const message = Buffer.allocUnsafe(this.#origin.length + 1 + payload.length)
    this.#origin.copy(message, 0)
    message[this.#origin.length] = type
    payload.copy(message, this.#origin.length + 1)
    return message
  }

  #onMessage (channelBuffer: Buffer, message: Buffer): void {
    const originLength = this.#origin.length
    if (message.length <= originLength || this.#origin.equals(message.subarray(0, originLength))) return
    const type = message[originLength]
    const payload = message.subarray(originLength + 1)
    try {
      const channel = channelBuffer.toString()
      if (channel === this.#allChannel) {
        if (type === TYPE_ALERT) this.#handlers.onBroadcast(payload)
        return
      }
      const userId = this.#userIdOf(channel)
      if (type === TYPE_ALERT) this.#handlers.onUserEvent(userId, { type: 'alert', frame: payload })
      else if (type === TYPE_CLAIM) this.#handlers.onUserEvent(userId, { type: 'claim', generation: Number(payload.toString()) })
      else this.#handlers.onUserEvent(userId, { type: 'logout', before: Number(payload.toString()) })
    } catch (err) {
      // An exception here would escape through ioredis's emit and crash.
      this.#log.error({ err }, 'bus message handler failed')
    }
  }

  async publishBroadcast (frame: Buffer): Promise<void> {
    await this.#command.publish(this.#allChannel, this.#frame(TYPE_ALERT, frame))
  }

  async publishUser (userId: string, event: UserEvent): Promise<void> {
    let message: Buffer
    if (event.type === 'alert') message = this.#frame(TYPE_ALERT, event.frame)
    else if (event.type === 'claim') message = this.#frame(TYPE_CLAIM, Buffer.from(String(event.generation)))
    else message = this.#frame(TYPE_LOGOUT, Buffer.from(String(event.before)))
    await this.#command.publish(this.#userChannel(userId), message)
  }

  async watchUser (userId: string): Promise<void> {
    const entry = this.#watched.get(userId)
    if (entry !== undefined) {
      entry.refs++
      await entry.ready
      return
    }
    const ready = this.#subscribeSoon(this.#userChannel(userId))
    const created = { refs: 1, ready }
    this.#watched.set(userId, created)
    try {
      await ready
    } catch (err) {
      // Let the next watcher retry the subscription.
      if (this.#watched.get(userId) === created) this.#watched.delete(userId)
      throw err
    }
  }

  unwatchUser (userId: string): void {
    const entry = this.#watched.get(userId)
    if (entry === undefined) return
    if (--entry.refs > 0) return
    this.#watched.delete(userId)
    const channel = this.#userChannel(userId)
    // Not sent yet: drop it from the batch. Otherwise unsubscribe now, on the
    // connection that carried the SUBSCRIBE, so the two stay in order. If
    // Redis is down the subscription is gone anyway and not restored.
    if (!this.#pendingChannels.delete(channel)) this.#subscriber.unsubscribe(channel).catch(() => {})
  }

  async nextGeneration (userId: string): Promise<number> {
    const key = `${this.#prefix}gen:{${userId}}`
    // Both sent at once (one round trip); INCR is what must succeed.
    const [generation] = await Promise.all([this.#command.incr(key), this.#command.expire(key, GENERATION_TTL_SEC)])
    return generation
  }

  async revoke (userId: string, before: number, ttlSec: number): Promise<void> {
    await this.#command.set(`${this.#prefix}revoked:{${userId}}`, String(before), 'EX', ttlSec)
    await this.publishUser(userId, { type: 'logout', before })
  }

  async revokedBefore (userId: string): Promise<number | null> {
    const value = await this.#command.get(`${this.#prefix}revoked:{${userId}}`)
    return value === null ? null : Number(value)
  }

  /** Readiness probe: a round trip on the command connection. */
  async ping (): Promise<boolean> {
    if (!this.#connected) return false
    // A hung Redis times out (commandTimeout) here: not ready either.
    return await this.#command.ping().catch((err: Error) => err.message) === 'PONG'
  }

  async close (): Promise<void> {
    this.#closing = true
    await Promise.allSettled([this.#subscriber.quit(), this.#command.quit()])
    this.#subscriber.disconnect()
    this.#command.disconnect()
  }
}
