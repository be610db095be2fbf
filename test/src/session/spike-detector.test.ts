import t from 'tap'
import { Writable } from 'node:stream'
import pino from 'pino'
import { Gauge, Registry } from 'prom-client'
import { SpikeDetector } from '../../../src/session/spike-detector.js'

function setup (opts = { windowMs: 1000, baselineWindows: 3, factor: 5, minConnects: 10 }): { detector: SpikeDetector, gauge: Gauge, lines: string[] } {
  const lines: string[] = []
  const log = pino({ level: 'info' }, new Writable({ write (chunk, _e, cb) { lines.push(chunk.toString()); cb() } }))
  const gauge = new Gauge({ name: 'spike', help: 'h', registers: [new Registry()] })
  return { detector: new SpikeDetector(opts, gauge, log), gauge, lines }
}

const value = async (gauge: Gauge): Promise<number> => (await gauge.get()).values[0].value

t.test('a burst far above the baseline turns the spike on once, a quiet window turns it off', async (t) => {
  const { detector, gauge, lines } = setup()
  for (let window = 0; window < 3; window++) {
    for (let i = 0; i < 4; i++) detector.record()
    detector.roll()
  }
  t.equal(await value(gauge), 0, 'a steady rate is no spike')
  for (let i = 0; i < 20; i++) detector.record()
  t.notOk(detector.active, '20 is not above 5 x 4')
  for (let i = 0; i < 30; i++) detector.record()
  t.ok(detector.active, '50 connects against a baseline of 4')
  t.equal(await value(gauge), 1)
  t.equal(lines.filter((l) => l.includes('connection spike:')).length, 1, 'one warning')
  detector.roll()
  t.ok(detector.active, 'the spike window itself ended above the threshold')
  detector.roll()
  t.notOk(detector.active, 'a quiet window ends it')
  t.equal(await value(gauge), 0)
  t.ok(lines.some((l) => l.includes('connection spike over')))
})

t.test('without history, minConnects alone decides', async (t) => {
  const { detector } = setup()
  for (let i = 0; i < 9; i++) detector.record()
  t.notOk(detector.active)
  detector.record()
  t.ok(detector.active)
})

t.test('the window timer rolls by itself and stops', async (t) => {
  const { detector } = setup({ windowMs: 20, baselineWindows: 2, factor: 2, minConnects: 1 })
  detector.start()
  detector.start()
  detector.record()
  t.ok(detector.active)
  await new Promise<void>((resolve) => {
    const check = setInterval(() => { if (!detector.active) { clearInterval(check); resolve() } }, 5)
  })
  t.notOk(detector.active, 'ended by the timer')
  detector.stop()
  detector.stop()
})
