import { readFileSync } from 'node:fs'
import t from 'tap'
import { runBench } from '../helpers/bench.js'

const SYSTEMS = ['ws', 'sio', 'nohist', 'gateway'] as const

interface SystemResult {
  connect: { attempted: number, connected: number, serverCpuUsPerHandshake: number }
  memory: { heapPerConnectionKB: number }
  broadcast: { expected: number, received: number, deliveriesPerSec: number }
  single: { sent: number, accepted: number, lost: number }
  serversAlive: boolean
}

interface StormResult {
  moved: number
  resumed: number
  unrecovered: number
  sent: number
  accepted: number
  lost: number
  waitingForUser: number
  duplicates: number
  latencyMs: { unmoved: { count: number } }
}

// The whole bench (three systems, the gateway again with history off, Redis,
// client and publisher processes) in seconds. The gateway runs from source
// through tap's TypeScript loader, so no build is needed; the bench and the
// servers it starts are not product code, so their coverage is not collected.
t.setTimeout(170_000)

t.test('the short bench runs end to end with tiny numbers and prints the ratio table', async (t) => {
  const { code, stdout, stderr, out } = await runBench(t, ['bench/run.mjs', '--smoke', '--gateway-runtime=ts'], 160_000)
  t.equal(code, 0, 'the bench exits cleanly', { stderr: stderr.slice(-4000) })
  t.match(stdout, /\| connections held \| 200 \| 200 \| 200 \| 200 \| 1\.00x \| 1\.00x \| 1\.00x \|/, 'the table has the three systems, and the gateway with history off, side by side')
  t.match(stdout, /history on \/ off/, 'the history A/B has its column')
  t.match(stdout, /broadcast deliveries per second/)
  t.match(stdout, /handshake: server CPU per upgrade/)

  const results = JSON.parse(readFileSync(out, 'utf8')) as { stages: Array<{ systems: Record<string, SystemResult & { storm: StormResult }> }> }
  for (const name of SYSTEMS) {
    const r = results.stages[0].systems[name]
    t.equal(r.connect.connected, r.connect.attempted, `${name}: every connection opened`)
    t.ok(r.connect.serverCpuUsPerHandshake > 0, `${name}: handshake CPU measured`)
    t.ok(r.memory.heapPerConnectionKB > 0, `${name}: memory measured`)
    t.equal(r.broadcast.received, r.broadcast.expected, `${name}: every broadcast reached every client`)
    t.ok(r.broadcast.deliveriesPerSec > 0, `${name}: broadcast throughput measured`)
    t.equal(r.single.accepted, r.single.sent, `${name}: every single-user alert was accepted`)
    t.equal(r.single.lost, 0, `${name}: no single-user alert lost`)
    t.ok(r.serversAlive, `${name}: the servers survived`)
  }

  // The reconnect storm: one of two instances SIGTERMed under publishing;
  // its SDK clients come back on the other one, resumed, missing nothing.
  t.match(stdout, /### storm: reconnect storm, 200 SDK clients over 2 gateway instances/, 'the storm stage has its table')
  t.same(Object.keys(results.stages[1].systems), ['gateway'], 'the storm measures the gateway alone')
  const storm = results.stages[1].systems.gateway.storm
  t.ok(storm.moved > 0 && storm.moved < 200, 'the SIGTERMed instance\'s clients moved, the others stayed')
  t.equal(storm.resumed, storm.moved, 'every moved client resumed')
  t.equal(storm.unrecovered, 0, 'every resume recovered what was missed')
  t.equal(storm.accepted, storm.sent, 'every alert was accepted')
  t.equal(storm.lost, 0, 'no accepted alert was lost')
  t.equal(storm.waitingForUser, 0, 'none waits for a user that did not come back')
  t.equal(storm.duplicates, 0, 'none arrived twice')
  t.ok(storm.latencyMs.unmoved.count > 0, 'the unmoved clients\' latency during the storm was measured')
})
