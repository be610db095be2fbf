import type { Log } from '../lib/log.js'
import { ALL_TOPIC, userOfTopic, userTopic, type Broker } from '../cluster/broker.js'
import type { SessionRegistry } from '../session/session-registry.js'

/** An event for one user's sessions, other than an alert. */
export type ControlEvent =
  /** A session of generation `generation` was accepted: close older ones. */
  | { type: 'claim', generation: number }
  /** The user logged out at `before` (epoch seconds): close every session it revokes. */
  | { type: 'logout', before: number }

const ALERT = 0x41 // 'A'
const CLAIM = 0x43 // 'C'
const LOGOUT = 0x4c // 'L'

export interface DeliveryOptions {
  broker: Broker
  sessions: SessionRegistry
  log: Log
}

function encode (type: number, payload: Buffer): Buffer {
  const message = Buffer.allocUnsafe(1 + payload.length)
  message[0] = type
  payload.copy(message, 1)
  return message
}

/**
 * The one owner of delivery: every alert and every user event goes to this
 * instance's sessions and, through the broker, to the other instances, and
 * what they publish comes back in here. Callers never talk to the broker.
 * It also keeps the one count of who watches a user's topic here.
 *
 * On the wire (the broker's payload) an event is one type byte and its
 * payload: alert frames travel encoded and are written to sockets as
 * received, never parsed.
 */
export class Delivery {
  readonly #broker: Broker
  readonly #sessions: SessionRegistry
  readonly #log: Log
  readonly #watched = new Map<string, { refs: number, ready: Promise<void> }>()
  #onControl: ((userId: string, event: ControlEvent) => void) | null = null

  constructor (opts: DeliveryOptions) {
    this.#broker = opts.broker
    this.#sessions = opts.sessions
    this.#log = opts.log
  }

  /** Where claims and logouts go, local or from other instances. */
  setControlHandler (handler: (userId: string, event: ControlEvent) => void): void {
    this.#onControl = handler
  }

  /** Subscribes to broadcasts (in place again after every reconnect). */
  start (onConnectedChange: (connected: boolean) => void): void {
    this.#broker.setHandlers({ onMessage: (topic, message) => this.#receive(topic, message), onConnectedChange })
    this.#broker.subscribe(ALL_TOPIC).catch((err: Error) => {
      this.#log.debug({ err: err.message }, 'broadcast subscription waits for the bus')
    })
  }

  /** To every session of the cluster; resolves to the local sessions written. */
  async broadcast (frame: Buffer): Promise<number> {
    const delivered = this.#sessions.broadcast(frame)
    await this.#broker.publish(ALL_TOPIC, encode(ALERT, frame))
    return delivered
  }

  /** To every session of the user; resolves to the local sessions written. */
  async sendToUser (userId: string, frame: Buffer): Promise<number> {
    const delivered = this.#sessions.sendToUser(userId, frame)
    await this.#broker.publish(userTopic(userId), encode(ALERT, frame))
    return delivered
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
    const created = { refs: 1, ready: this.#broker.subscribe(userTopic(userId)) }
    this.#watched.set(userId, created)
    try {
      await created.ready
    } catch (err) {
      // Let the next watcher retry the subscription.
      if (this.#watched.get(userId) === created) {
        this.#watched.delete(userId)
        this.#broker.unsubscribe(userTopic(userId))
      }
      throw err
    }
  }

  unwatch (userId: string): void {
    const entry = this.#watched.get(userId)
    if (entry === undefined) return
    if (--entry.refs > 0) return
    this.#watched.delete(userId)
    this.#broker.unsubscribe(userTopic(userId))
  }

  /** Whether anything here watches the user (a session or a claim in progress). */
  watching (userId: string): boolean {
    return this.#watched.has(userId)
  }

  #receive (topic: string, message: Buffer): void {
    const type = message[0]
    const payload = message.subarray(1)
    if (topic === ALL_TOPIC) {
      if (type === ALERT) this.#sessions.broadcast(payload)
      return
    }
    const userId = userOfTopic(topic)
    if (type === ALERT) this.#sessions.sendToUser(userId, payload)
    else if (type === CLAIM) this.#onControl?.(userId, { type: 'claim', generation: Number(payload.toString()) })
    else this.#onControl?.(userId, { type: 'logout', before: Number(payload.toString()) })
  }
}
