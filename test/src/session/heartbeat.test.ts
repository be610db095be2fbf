import t from 'tap'
import { Heartbeat, type Beating } from '../../../src/session/heartbeat.js'

/** A fake socket holder that records what the heartbeat did to it. */
class Fake implements Beating {
  alive = true
  pings: number[] = []
  terminated = 0
  readonly name: string
  readonly #clock: () => number
  onPing: () => void = () => {}

  constructor (name: string, clock: () => number) {
    this.name = name
    this.#clock = clock
  }

  ping (): void {
    this.pings.push(this.#clock())
    this.onPing()
  }

  terminate (): void {
    this.terminated++
  }

  pong (): void {
    this.alive = true
  }
}

/** A heartbeat over `n` fakes, driven by tick(now) with a hand-held clock. */
function setup (n: number, intervalMs = 1000) {
  let now = 0
  const clock = (): number => now
  const list: Fake[] = Array.from({ length: n }, (_, i) => new Fake(`s${i}`, clock))
  const hb = new Heartbeat<Fake>(intervalMs, () => list)
  const tick = (at: number): void => {
    now = at
    hb.tick(at)
  }
  /** Removes like the session registry does: the last entry takes the freed place. */
  const remove = (entry: Fake): void => {
    const index = list.indexOf(entry)
    const last = list.pop() as Fake
    if (last !== entry) list[index] = last
  }
  return { hb, list, tick, remove }
}

t.test('every socket is pinged exactly once per interval, spread over the ticks', async (t) => {
  const { list, tick } = setup(100)
  const perTick: number[] = []
  let before = 0
  for (let at = 0; at <= 1000; at += 10) {
    tick(at)
    const total = list.reduce((n, f) => n + f.pings.length, 0)
    perTick.push(total - before)
    before = total
  }
  t.same(list.map((f) => f.pings.length), new Array(100).fill(1), 'each once in the first interval')
  t.ok(Math.max(...perTick) <= 2, `never a burst: at most ${Math.max(...perTick)} pings in one tick`)
  t.equal(perTick[0], 0, 'nothing at the very start of the cycle')
  // Pings are spread: socket i is pinged about i% into the interval.
  for (const [i, f] of list.entries()) t.ok(Math.abs(f.pings[0] - i * 10) <= 10, `${f.name} pinged at ${f.pings[0]} ms`)
})

t.test('a socket that answered is pinged again; one that did not is terminated at its next turn', async (t) => {
  const { list, tick } = setup(10)
  for (let at = 0; at <= 1000; at += 50) tick(at)
  t.same(list.map((f) => f.pings.length), new Array(10).fill(1))
  for (const f of list.slice(0, 5)) f.pong()
  for (let at = 1050; at <= 2000; at += 50) tick(at)
  t.same(list.slice(0, 5).map((f) => [f.pings.length, f.terminated]), new Array(5).fill([2, 0]), 'answered: pinged once more')
  t.same(list.slice(5).map((f) => [f.pings.length, f.terminated]), new Array(5).fill([1, 1]), 'silent: terminated, not pinged')
  const ponged = list.slice(0, 5)
  for (const f of ponged) t.ok(f.pings[1] - f.pings[0] >= 950 && f.pings[1] - f.pings[0] <= 1050, `${f.name}: one interval apart`)
})

t.test('a socket is never visited twice in one cycle when the list changes', async (t) => {
  const { list, tick, remove } = setup(4)
  const [a, b, c, d] = list
  tick(500)
  t.same(list.map((f) => f.pings.length), [1, 1, 0, 0], 'the first half')
  remove(a)
  t.same(list.map((f) => f.name), ['s3', 's1', 's2'], 'the last socket moved behind the cursor')
  tick(999)
  tick(1000)
  t.same([a, b, c, d].map((f) => f.pings.length), [1, 1, 1, 0], 'the moved socket waits for the next cycle')
  for (const f of list) f.pong()
  tick(2000)
  t.same([b, c, d].map((f) => f.pings.length), [2, 2, 1], 'once each in the next cycle')
  t.equal(d.terminated, 0)
})

t.test('a list shorter than the cursor is harmless', async (t) => {
  const { list, tick } = setup(4)
  tick(750)
  t.equal(list.filter((f) => f.pings.length === 1).length, 3)
  list.splice(1, 3)
  tick(900)
  tick(1000)
  t.same(list.map((f) => f.pings.length), [1], 'nothing visited twice, nothing out of range')
  list[0].pong()
  tick(1999)
  t.same(list.map((f) => f.pings.length), [1])
  tick(2000)
  t.same(list.map((f) => f.pings.length), [2])
})

// Regression: after a stall, catching up on the clock in the same tick
// visited sockets pinged a moment before and terminated them.
t.test('after a pause longer than the interval the next cycle starts afresh', async (t) => {
  const { list, tick } = setup(10)
  tick(500)
  t.equal(list.filter((f) => f.pings.length === 1).length, 5)
  for (const f of list) f.pong()
  // The event loop was blocked for 2.4 s: the rest of the old cycle is visited.
  tick(2900)
  t.same(list.map((f) => f.pings.length), new Array(10).fill(1), 'each pinged once, none twice')
  t.same(list.map((f) => f.terminated), new Array(10).fill(0), 'nobody terminated for the pause')
  for (const f of list) f.pong()
  tick(3399)
  t.same(list.map((f) => f.pings.length), [2, 2, 2, 2, 1, 1, 1, 1, 1, 1], 'the new cycle runs from the end of the stall')
  tick(3900)
  t.same(list.map((f) => f.pings.length), new Array(10).fill(2))
  t.same(list.map((f) => f.terminated), new Array(10).fill(0))
})

t.test('an empty list', async (t) => {
  const { tick } = setup(0)
  tick(500)
  tick(1500)
  t.pass('no visit, no error')
})

t.test('start pings on a timer; stop ends it', async (t) => {
  let entry: Fake | undefined
  const pinged = new Promise<void>((resolve) => {
    entry = new Fake('timer', Date.now)
    entry.onPing = resolve
  })
  const hb = new Heartbeat<Fake>(50, () => [entry as Fake])
  hb.stop()
  hb.start()
  hb.start()
  t.teardown(() => hb.stop())
  let timer: NodeJS.Timeout | undefined
  await Promise.race([
    pinged,
    new Promise<void>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('the heartbeat timer never pinged')), 2000) })
  ]).finally(() => clearTimeout(timer))
  t.equal(entry?.pings.length, 1)
  hb.stop()
  hb.stop()
})
