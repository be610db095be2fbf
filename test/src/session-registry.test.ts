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
