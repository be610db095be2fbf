import t from 'tap'
import pino from 'pino'
import type { WebSocket } from 'ws'
import { testConfig } from '../../helpers/config.js'
import { handleMessage, type MessageContext } from '../../../src/session/message-handler.js'
import { Session } from '../../../src/session/session.js'
import type { SessionRegistry } from '../../../src/session/session-registry.js'
import type { GatewayMetrics } from '../../../src/lib/metrics.js'

// Internal failures must never escape a socket handler: they close with 1011.
function context (overrides: Partial<MessageContext> = {}): { ctx: MessageContext, closed: number[], session: Session } {
  const closed: number[] = []
  const socket = { readyState: 1, close: (code: number) => { closed.push(code) } } as unknown as WebSocket
  const session = new Session({ id: 'c', userId: 'u', socket, generation: 1, tokenExpMs: Date.now() + 60000, tokenIatSec: null, authAtMs: Date.now() }, 10)
  const ok = { inc () {} }
  const ctx: MessageContext = {
    ws: testConfig().ws,
    registry: { send: () => true, reschedule: () => { throw new Error('wheel broken') } } as unknown as SessionRegistry,
    metrics: { messagesReceived: ok, messagesSent: ok, rejected () {} } as unknown as GatewayMetrics,
    log: pino({ level: 'silent' }),
    verifyToken: async () => ({ sub: 'u', exp: Math.floor(Date.now() / 1000) + 60 }),
    checkRevoked: async () => {},
    ...overrides
  }
  return { ctx, closed, session }
}

t.test('an exception inside the handler closes with 1011', async (t) => {
  const { ctx, closed, session } = context({ metrics: { messagesReceived: { inc () { throw new Error('boom') } } } as unknown as GatewayMetrics })
  handleMessage(ctx, session, Buffer.from('{"type":"ping"}'), false)
  t.same(closed, [1011])
})

t.test('an exception while applying a re-auth closes with 1011', async (t) => {
  const { ctx, closed, session } = context()
  handleMessage(ctx, session, Buffer.from('{"type":"auth","token":"x.y.z"}'), false)
  await new Promise<void>((resolve) => {
    const check = setInterval(() => { if (closed.length > 0) { clearInterval(check); resolve() } }, 1)
  })
  t.same(closed, [1011])
})
