import t from 'tap'
import pino from 'pino'
import type { WebSocket } from 'ws'
import { testConfig } from '../../helpers/config.js'
import { SessionRegistry } from '../../../src/session/session-registry.js'
import { Session } from '../../../src/session/session.js'
import type { GatewayMetrics } from '../../../src/lib/metrics.js'

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

t.test('broadcasts of one turn of the event loop leave in one write per socket', async (t) => {
  const counter = { inc () {}, dec () {}, observe () {} }
  const metrics = { connectionsActive: counter, connectionDuration: counter, messagesSent: counter } as unknown as GatewayMetrics
  const registry = new SessionRegistry({ ws: testConfig().ws, metrics, log: pino({ level: 'silent' }) })
  const events: string[] = []
  const sockets = new Map<string, { readyState: number }>()
  const session = (id: string, readyState = 1, transport = true): Session => {
    const socket = {
      readyState,
      bufferedAmount: 0,
      send: (frame: Buffer) => { events.push(`${id} ${frame.toString()}`) },
      close: () => { socket.readyState = 2 }
    }
    sockets.set(id, socket)
    return new Session({
      id,
      userId: `user-${id}`,
      socket: socket as unknown as WebSocket,
      generation: 1,
      tokenExpMs: Date.now() + 60000,
      tokenIatSec: null,
      authAtMs: Date.now(),
      transport: transport ? { cork: () => { events.push(`${id} cork`) }, uncork: () => { events.push(`${id} uncork`) } } : undefined
    }, 10)
  }
  const turn = (): Promise<unknown> => new Promise((resolve) => setImmediate(resolve))
  const all = [session('a'), session('b'), session('c', 3)]
  for (const s of all) registry.add(s)
  t.teardown(() => { for (const s of all) registry.remove(s) })

  t.equal(registry.broadcast(Buffer.from('1')), 2, 'the closed socket is not counted')
  t.equal(registry.broadcast(Buffer.from('2')), 2)
  t.same(events, [], 'nothing written within the turn')
  await turn()
  t.same(events, ['a cork', 'a 1', 'a 2', 'a uncork', 'b cork', 'b 1', 'b 2', 'b uncork'], 'one corked batch per socket')

  events.length = 0
  registry.broadcast(Buffer.from('3'))
  t.equal(registry.sendToUser('user-a', Buffer.from('4')), 1)
  t.same(events, ['a cork', 'a 3', 'a uncork', 'b cork', 'b 3', 'b uncork', 'a 4'], 'a per-user alert goes after the pending broadcasts')

  events.length = 0
  registry.broadcast(Buffer.from('5'))
  ;(sockets.get('b') as { readyState: number }).readyState = 2
  const late = session('d', 1, false)
  all.push(late)
  registry.add(late)
  t.same(events, ['a cork', 'a 5', 'a uncork'], 'flushed before a new session joins; a socket closed since is skipped')
  t.equal(registry.broadcast(Buffer.from('6')), 2, 'a and d')
  registry.closeAll(1001)
  t.same(events.slice(3), ['a cork', 'a 6', 'a uncork', 'd 6'], 'pending broadcasts are written before closing; no transport, no cork')
  await turn()
  t.equal(events.length, 7, 'nothing written twice')

  for (const id of ['a', 'd']) (sockets.get(id) as { readyState: number }).readyState = 3
  t.equal(registry.broadcast(Buffer.from('7')), 0, 'nobody open: nothing pending')
  await turn()
  t.equal(events.length, 7)
})

t.test('a session\'s first frames are not held against the send buffer cap; the cap then counts on top of them until drained', async (t) => {
  const counter = { inc () {}, dec () {}, observe () {} }
  const metrics = { connectionsActive: counter, connectionDuration: counter, messagesSent: counter } as unknown as GatewayMetrics
  const registry = new SessionRegistry({ ws: { ...testConfig().ws, sendBufferMaxBytes: 100 }, metrics, log: pino({ level: 'silent' }) })
  const closed: number[] = []
  const socket = {
    readyState: 1,
    bufferedAmount: 0,
    send: (frame: Buffer) => { socket.bufferedAmount += frame.length },
    close: (code: number) => { closed.push(code); socket.readyState = 2 }
  }
  const session = new Session({ id: 's', userId: 'u', socket: socket as unknown as WebSocket, generation: 1, tokenExpMs: Date.now() + 60000, tokenIatSec: null, authAtMs: Date.now() }, 10)
  const frame = Buffer.alloc(50)
  let written = 0
  registry.sendFirst(session, () => { for (let i = 0; i < 10; i++) if (registry.send(session, frame)) written++ })
  t.equal(written, 10, 'a replay far over the cap is written whole')
  t.equal(session.sendAllowance, 500, 'what it left buffered is allowed on top of the cap')
  t.ok(registry.send(session, frame), 'a live frame while it drains')
  socket.bufferedAmount = 80
  t.ok(registry.send(session, frame), 'drained below the cap')
  t.equal(session.sendAllowance, 0, 'the allowance is gone')
  t.notOk(registry.send(session, frame), 'over the cap again: a slow consumer')
  t.same(closed, [1013])
  t.notOk(registry.send(session, frame), 'closed: nothing more is written')
  registry.remove(session)
})

t.test('a session removed while its auth was being checked is not filed for a deadline again', async (t) => {
  const counter = { inc () {}, dec () {}, observe () {} }
  const metrics = { connectionsActive: counter, connectionDuration: counter, messagesSent: counter } as unknown as GatewayMetrics
  const registry = new SessionRegistry({ ws: testConfig().ws, metrics, log: pino({ level: 'silent' }) })
  const socket = { readyState: 1, bufferedAmount: 0, send () {}, close () {} } as unknown as WebSocket
  const session = new Session({ id: 's', userId: 'u', socket, generation: 1, tokenExpMs: Date.now() + 60000, tokenIatSec: null, authAtMs: Date.now() }, 10)
  registry.add(session)
  t.not(session.bucket, -1, 'filed while registered')
  registry.remove(session)
  registry.reschedule(session)
  t.equal(session.bucket, -1, 'not filed again once removed')
})
