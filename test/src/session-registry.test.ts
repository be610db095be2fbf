import t from 'tap'
import pino from 'pino'
import type { WebSocket } from 'ws'
import { testConfig } from '../helpers/config.js'
import { SessionRegistry } from '../../src/session-registry.js'
import { Session } from '../../src/session.js'
import type { GatewayMetrics } from '../../plugins/metrics.js'

t.test('removing a session that was never registered is a no-op', async (t) => {
  const counter = { inc () {}, dec () {}, observe () {} }
  const metrics = { connectionsActive: counter, connectionDuration: counter, messagesSent: counter } as unknown as GatewayMetrics
  const registry = new SessionRegistry({ ws: testConfig().ws, metrics, log: pino({ level: 'silent' }) })
  const socket = { readyState: 1 } as unknown as WebSocket
  const session = new Session({ id: 'x', userId: 'u', socket, generation: 1, tokenExpMs: Date.now() + 60000, tokenIatSec: null, authAtMs: Date.now() }, 10)
  t.equal(registry.remove(session), false)
  t.equal(registry.size, 0)
  t.same(registry.sessionsOf('u'), [])
})

t.test('alerts sent in one turn of the event loop leave in one write per socket', async (t) => {
  const counter = { inc () {}, dec () {}, observe () {} }
  const metrics = { connectionsActive: counter, connectionDuration: counter, messagesSent: counter } as unknown as GatewayMetrics
  const registry = new SessionRegistry({ ws: testConfig().ws, metrics, log: pino({ level: 'silent' }) })
  const events: string[] = []
  const session = (id: string, userId: string, readyState = 1): Session => {
    const socket = {
      readyState,
      bufferedAmount: 0,
      send: (frame: Buffer) => { events.push(`${id} send ${frame.toString()}`) }
    } as unknown as WebSocket
    const transport = { cork: () => { events.push(`${id} cork`) }, uncork: () => { events.push(`${id} uncork`) } }
    return new Session({ id, userId, socket, generation: 1, tokenExpMs: Date.now() + 60000, tokenIatSec: null, authAtMs: Date.now(), transport }, 10)
  }
  const a = session('a', 'ua')
  const b = session('b', 'ub')
  const closed = session('c', 'uc', 3)
  for (const s of [a, b, closed]) registry.add(s)
  t.teardown(() => { for (const s of [a, b, closed]) registry.remove(s) })

  t.equal(registry.broadcast(Buffer.from('1')), 2, 'the closed socket is skipped')
  t.equal(registry.sendToUser('ua', Buffer.from('2')), 1)
  t.equal(registry.broadcast(Buffer.from('3')), 2)
  t.same(events, ['a cork', 'a send 1', 'b cork', 'b send 1', 'a send 2', 'a send 3', 'b send 3'],
    'each socket corked once, frames written in order, nothing uncorked yet')
  events.length = 0
  await new Promise((resolve) => setImmediate(resolve))
  t.same(events, ['a uncork', 'b uncork'], 'uncorked once each at the end of the turn')

  events.length = 0
  registry.sendToUser('ub', Buffer.from('4'))
  await new Promise((resolve) => setImmediate(resolve))
  t.same(events, ['b cork', 'b send 4', 'b uncork'], 'the next turn corks again')
})
