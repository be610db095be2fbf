import { readFileSync } from 'node:fs'
import t from 'tap'
import { runBench } from '../helpers/bench.js'

interface Phase { serverUs: number, commands: number, scripts: number, reads: number }
interface Result { system: string, upgrade: Phase, close: Phase }

// The gateway runs from source through tap's TypeScript loader (no build);
// the bench is not product code, so its coverage is not collected.
t.setTimeout(120_000)

t.test('the handshake cost bench runs end to end with tiny numbers', async (t) => {
  const { code, stdout, stderr, out } = await runBench(t, [
    'bench/handshake-cost.mjs', '--script=src/server.ts', '--systems=ws,memory,gateway', '--count=30', '--warmup=30', '--rounds=1', '--concurrency=8', '--alloc'
  ], 110_000)
  t.equal(code, 0, 'the bench exits cleanly', { stderr: stderr.slice(-4000) })
  t.match(stdout, /\| server CPU per upgrade \(us\) \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d.]+x \| [\d.]+x \|/, 'the table has the three systems and the ratios')
  t.match(stdout, /bytes allocated per upgrade by package: /, 'the allocations by package')

  const { results, allocations } = JSON.parse(readFileSync(out, 'utf8')) as { results: Result[], allocations: Record<string, { bytes: number }> }
  const gateway = results.find((r) => r.system === 'gateway') as Result
  t.ok(gateway.upgrade.serverUs > 0 && gateway.close.serverUs > 0, 'CPU per upgrade and per close measured')
  // The handshake's Redis scripts: the attempt count, the address slot, the
  // claim with the user's history read, and the broadcast head read that new
  // sessions share; the close's: the claim's release. More means a step was
  // added to every handshake: say why in bench/README.md.
  t.ok(gateway.upgrade.scripts >= 3 && gateway.upgrade.scripts <= 4, `three scripts per upgrade, and a shared one (${gateway.upgrade.scripts})`)
  t.equal(gateway.close.scripts, 1, 'one script per close')
  t.ok(gateway.upgrade.commands > 15, 'the scripts\' own commands are counted')
  const memory = results.find((r) => r.system === 'memory') as Result
  t.ok(memory.upgrade.serverUs > 0, 'the gateway on the in-process bus measured too')
  t.equal(memory.upgrade.scripts, 0, 'and it takes no Redis step')
  t.ok(allocations.gateway.bytes > 0 && allocations.memory.bytes > 0 && allocations.ws.bytes > 0, 'allocations sampled for every system')
})
