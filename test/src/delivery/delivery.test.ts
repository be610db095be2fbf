import t from 'tap'
import pino from 'pino'
import { Writable } from 'node:stream'
import { ALL_TOPIC, type Broker, type BrokerHandlers } from '../../../src/cluster/broker.js'
import { Delivery, type ControlEvent } from '../../../src/delivery/delivery.js'
import type { SessionRegistry } from '../../../src/session/session-registry.js'

/** A broker that records what it is asked and lets the test play other instances. */
class RecordingBroker implements Broker {
  readonly connected = true
  readonly published: Array<[string, string]> = []
  readonly subscribed: string[] = []
  readonly unsubscribed: string[] = []
  handlers: BrokerHandlers | null = null
  failSubscribe: Error | null = null

  async ping (): Promise<boolean> { return true }
  setHandlers (handlers: BrokerHandlers): void { this.handlers = handlers }
  async publish (topic: string, message: Buffer): Promise<number> { this.published.push([topic, message.toString()]); return 0 }
  async subscribe (topic: string): Promise<void> {
    this.subscribed.push(topic)
    await new Promise((resolve) => setImmediate(resolve))
    if (this.failSubscribe !== null) throw this.failSubscribe
  }

  unsubscribe (topic: string): void { this.unsubscribed.push(topic) }
  async close (): Promise<void> {}
  /** A message another instance published. */
  receive (topic: string, message: string): void { this.handlers?.onMessage(topic, Buffer.from(message)) }
}

function setup (withControl = true): { delivery: Delivery, broker: RecordingBroker, local: string[], controls: Array<[string, ControlEvent]>, logs: string[] } {
  const local: string[] = []
  const sessions = {
    broadcast: (frame: Buffer) => { local.push(`all ${frame.toString()}`); return 3 },
    sendToUser: (userId: string, frame: Buffer) => { local.push(`${userId} ${frame.toString()}`); return 1 }
  } as unknown as SessionRegistry
  const logs: string[] = []
  const log = pino({ level: 'debug' }, new Writable({ write (c, _e, cb) { logs.push(c.toString()); cb() } }))
  const broker = new RecordingBroker()
  const delivery = new Delivery({ broker, sessions, log })
  const controls: Array<[string, ControlEvent]> = []
  if (withControl) delivery.setControlHandler((userId, event) => { controls.push([userId, event]) })
  return { delivery, broker, local, controls, logs }
}

t.test('an alert goes to the local sessions first, then to the other instances', async (t) => {
  const { delivery, broker, local } = setup()
  t.equal(await delivery.broadcast(Buffer.from('{"b":1}')), 3, 'the local sessions written')
  t.equal(await delivery.sendToUser('ann', Buffer.from('{"u":1}')), 1)
  t.same(local, ['all {"b":1}', 'ann {"u":1}'])
  t.same(broker.published, [[ALL_TOPIC, 'A{"b":1}'], ['user:{ann}', 'A{"u":1}']], 'one type byte, then the frame as written')
})

t.test('claims and logouts are applied here, then published', async (t) => {
  const { delivery, broker, controls } = setup()
  await delivery.control('ann', { type: 'claim', generation: 7 })
  await delivery.control('ann', { type: 'logout', before: 1700000000 })
  t.same(controls, [['ann', { type: 'claim', generation: 7 }], ['ann', { type: 'logout', before: 1700000000 }]])
  t.same(broker.published, [['user:{ann}', 'C7'], ['user:{ann}', 'L1700000000']])
})

t.test('what other instances publish reaches the sessions and the control handler', async (t) => {
  const { delivery, broker, local, controls } = setup()
  const states: boolean[] = []
  delivery.start((connected) => { states.push(connected) })
  t.same(broker.subscribed, [ALL_TOPIC], 'broadcasts subscribed at start')
  broker.receive(ALL_TOPIC, 'A{"b":2}')
  broker.receive(ALL_TOPIC, 'C9')
  broker.receive('user:{bob}', 'A{"u":2}')
  broker.receive('user:{bob}', 'C4')
  broker.receive('user:{bob}', 'L123')
  t.same(local, ['all {"b":2}', 'bob {"u":2}'], 'alerts to the sessions; anything else on `all` ignored')
  t.same(controls, [['bob', { type: 'claim', generation: 4 }], ['bob', { type: 'logout', before: 123 }]])
  broker.handlers?.onConnectedChange?.(false)
  t.same(states, [false], 'connectivity is reported')
})

t.test('one watcher count per user: the topic is subscribed once and released with the last watcher', async (t) => {
  const { delivery, broker } = setup()
  const first = delivery.watch('ann')
  t.ok(delivery.watching('ann'), 'watched as soon as asked (claims seen meanwhile count)')
  await Promise.all([first, delivery.watch('ann')])
  t.same(broker.subscribed, ['user:{ann}'], 'one subscription')
  delivery.unwatch('ann')
  t.ok(delivery.watching('ann'))
  delivery.unwatch('ann')
  delivery.unwatch('ann')
  delivery.unwatch('nobody')
  t.notOk(delivery.watching('ann'))
  t.same(broker.unsubscribed, ['user:{ann}'], 'unsubscribed once, with the last watcher')
})

t.test('a failed subscription is forgotten, so the next watcher tries again', async (t) => {
  const { delivery, broker, logs } = setup()
  broker.failSubscribe = new Error('bus down')
  delivery.start(() => {})
  await t.rejects(delivery.watch('ann'), /bus down/)
  t.notOk(delivery.watching('ann'))
  t.same(broker.unsubscribed, ['user:{ann}'])
  t.ok(logs.some((line) => line.includes('broadcast subscription waits for the bus')), 'a broadcast subscription that fails at start is logged')
  broker.failSubscribe = null
  await delivery.watch('ann')
  t.ok(delivery.watching('ann'))
})

t.test('without a control handler, claims and logouts are only carried', async (t) => {
  const { delivery, broker, controls } = setup(false)
  delivery.start(() => {})
  await delivery.control('ann', { type: 'claim', generation: 2 })
  broker.receive('user:{ann}', 'C3')
  broker.receive('user:{ann}', 'L5')
  t.same(controls, [])
  t.same(broker.published, [['user:{ann}', 'C2']])
})
