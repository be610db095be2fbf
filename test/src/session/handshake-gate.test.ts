import t from 'tap'
import { HandshakeGate } from '../../../src/session/handshake-gate.js'

t.test('turns are free up to the limit, then taken oldest first as they are given back', async (t) => {
  const told: number[] = []
  const gate = new HandshakeGate(2, (waiting) => { told.push(waiting) })
  t.equal(gate.enter(), null)
  t.equal(gate.enter(), null)
  t.equal(gate.active, 2)
  const order: number[] = []
  const waits = [1, 2, 3].map((n) => (gate.enter() as Promise<void>).then(() => { order.push(n) }))
  t.equal(gate.waiting, 3)
  gate.leave()
  await waits[0]
  t.same(order, [1], 'the oldest waiting turn goes first')
  t.equal(gate.active, 2, 'a turn passed on is still taken')
  gate.leave()
  gate.leave()
  await Promise.all(waits)
  t.same(order, [1, 2, 3])
  t.equal(gate.waiting, 0)
  gate.leave()
  gate.leave()
  t.equal(gate.active, 0, 'every turn given back')
  t.equal(gate.enter(), null, 'and free again')
  t.same(told, [1, 2, 3, 2, 1, 0], 'the number waiting is told each time it changes, and only then')
})

t.test('a long queue keeps its order while the part already served is dropped', async (t) => {
  const gate = new HandshakeGate(1)
  t.equal(gate.enter(), null)
  const served: number[] = []
  const waits = Array.from({ length: 3000 }, (_, n) => (gate.enter() as Promise<void>).then(() => { served.push(n) }))
  for (let n = 0; n < 2000; n++) gate.leave()
  await Promise.all(waits.slice(0, 2000))
  t.equal(gate.waiting, 1000)
  for (let n = 0; n < 1000; n++) gate.leave()
  await Promise.all(waits)
  t.same(served, Array.from({ length: 3000 }, (_, n) => n), 'served in arrival order')
  t.equal(gate.waiting, 0)
  t.equal(gate.active, 1, 'the last one holds the turn')
})

t.test('the limit is a positive integer', async (t) => {
  t.throws(() => new HandshakeGate(0), RangeError)
  t.throws(() => new HandshakeGate(1.5), RangeError)
})
