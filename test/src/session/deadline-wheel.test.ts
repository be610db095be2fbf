import t from 'tap'
import { DeadlineWheel, type WheelEntry } from '../../../src/session/deadline-wheel.js'

interface Entry extends WheelEntry {
  name: string
}

const RES = 100

/**
 * A wheel driven by hand: `at(ms)` is a time `ms` after a bucket boundary
 * the wheel has already reached, so bucket arithmetic is exact.
 */
function wheel (onDue?: (entry: Entry, now: number) => void) {
  const fired: Array<{ name: string, now: number }> = []
  const w = new DeadlineWheel<Entry>(RES, (entry, now) => {
    fired.push({ name: entry.name, now })
    onDue?.(entry, now)
  })
  const origin = Math.floor(Date.now() / RES) * RES
  w.tick(origin)
  const at = (ms: number): number => origin + ms
  const entry = (name: string): Entry => ({ name, bucket: -1 })
  const names = (): string[] => fired.map((f) => f.name)
  return { w, at, entry, fired, names }
}

t.test('an entry is due once its deadline has passed, never before', async (t) => {
  const { w, at, entry, fired, names } = wheel()
  const a = entry('a')
  w.schedule(a, at(250))
  t.equal(w.size, 1)
  t.not(a.bucket, -1, 'filed under a bucket')
  w.tick(at(250))
  w.tick(at(299))
  t.same(names(), [], 'not before the deadline rounded up to the resolution')
  w.tick(at(300))
  t.same(fired, [{ name: 'a', now: at(300) }], 'due at the next bucket boundary, with the tick time')
  t.equal(a.bucket, -1, 'no longer filed')
  t.equal(w.size, 0)
  w.tick(at(10_000))
  t.equal(fired.length, 1, 'due exactly once')
})

t.test('a deadline in the past is due at the next tick', async (t) => {
  const { w, at, entry, names } = wheel()
  w.schedule(entry('late'), at(-5000))
  w.schedule(entry('now'), at(0))
  w.tick(at(99))
  t.same(names(), [])
  w.tick(at(100))
  t.same(names().sort(), ['late', 'now'])
})

t.test('cancel', async (t) => {
  const { w, at, entry, names } = wheel()
  const a = entry('a')
  const b = entry('b')
  w.schedule(a, at(150))
  w.schedule(b, at(150))
  t.equal(w.size, 2, 'two entries share a bucket')
  w.cancel(a)
  t.equal(a.bucket, -1)
  t.equal(w.size, 1, 'the bucket keeps its other entry')
  w.cancel(a)
  t.equal(w.size, 1, 'cancelling twice is harmless')
  w.cancel(b)
  t.equal(w.size, 0, 'the emptied bucket is dropped')
  const stray = { name: 'stray', bucket: 123456789 }
  w.cancel(stray)
  t.equal(stray.bucket, -1, 'an entry filed under an unknown bucket is just marked unfiled')
  w.tick(at(10_000))
  t.same(names(), [], 'cancelled entries are never due')
})

t.test('schedule again moves the entry', async (t) => {
  const { w, at, entry, names } = wheel()
  const a = entry('a')
  w.schedule(a, at(250))
  w.schedule(a, at(650))
  t.equal(w.size, 1, 'filed once')
  w.tick(at(300))
  t.same(names(), [], 'not at the old deadline')
  w.tick(at(700))
  t.same(names(), ['a'], 'at the new one')
  w.schedule(a, at(800))
  w.schedule(a, at(200))
  w.tick(at(800))
  t.same(names(), ['a', 'a'], 'earlier too')
})

t.test('ticks walk the buckets one by one when the gap is small', async (t) => {
  const { w, at, entry, fired } = wheel()
  w.schedule(entry('b1'), at(100))
  w.schedule(entry('b3'), at(300))
  w.schedule(entry('b5'), at(500))
  // 3 buckets filed, the tick covers 3 buckets (one of them empty).
  w.tick(at(300))
  t.same(fired.map((f) => f.name), ['b1', 'b3'], 'due in deadline order, the empty bucket skipped')
  w.tick(at(500))
  t.same(fired.map((f) => f.name), ['b1', 'b3', 'b5'])
})

t.test('after a long pause only the filed buckets are walked, in order', async (t) => {
  const { w, at, entry, names } = wheel()
  w.schedule(entry('c'), at(900))
  w.schedule(entry('a'), at(200))
  w.schedule(entry('b'), at(500))
  w.schedule(entry('later'), at(3_600_000 + 100))
  w.tick(at(3_600_000))
  t.same(names(), ['a', 'b', 'c'], 'the due ones, oldest first; the later one waits')
  t.equal(w.size, 1)
  w.tick(at(3_600_000 + 100))
  t.same(names(), ['a', 'b', 'c', 'later'])
})

t.test('an entry scheduled again from onDue is not due twice in one tick', async (t) => {
  for (const pause of [RES, 3_600_000]) {
    let calls = 0
    const { w, at, entry, names } = wheel((e, now) => {
      if (++calls < 10) w.schedule(e, now)
    })
    w.schedule(entry('again'), at(0))
    w.tick(at(pause))
    t.same(names(), ['again'], `once in the tick after ${pause} ms`)
    t.equal(w.size, 1, 'filed again, for the next bucket')
    w.tick(at(pause + RES))
    t.same(names(), ['again', 'again'])
  }
})

t.test('start runs the wheel on a timer; stop ends it', async (t) => {
  const w = new DeadlineWheel<Entry>(10, (entry) => { due(entry.name) })
  let due: (name: string) => void = () => {}
  const fired = new Promise<string>((resolve) => { due = resolve })
  w.stop()
  w.start()
  w.start()
  t.teardown(() => w.stop())
  w.schedule({ name: 'timer', bucket: -1 }, Date.now() + 20)
  let timer: NodeJS.Timeout | undefined
  const name = await Promise.race([
    fired,
    new Promise<string>((_resolve, reject) => { timer = setTimeout(() => reject(new Error('the wheel timer never fired')), 2000) })
  ]).finally(() => clearTimeout(timer))
  t.equal(name, 'timer')
  w.stop()
  w.stop()
})
