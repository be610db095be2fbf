#!/usr/bin/env node
/**
 * What the bus probe costs Redis at the default interval. Two private
 * redis-servers, each with `--instances` idle gateway processes (no
 * connections): on one the instances run with the default
 * BUS_PROBE_INTERVAL_MS (2000: each instance PUBLISHes to its own channel
 * `gw:probe:{<instanceId>}` every 2 s and receives it back on its
 * subscriber), on the other with BUS_PROBE_INTERVAL_MS=86400000 (no probe
 * within the run). Everything else the idle instances send Redis is the
 * same on both, so the difference is the probes'. Both sets are measured over
 * the same windows, so a change in the box's load touches both alike.
 *
 *   node bench/probe-cost.mjs [--instances=10] [--windows=3] [--window-seconds=20]
 *     [--settle-seconds=10] [--limit-minutes=5] [--control] [--script=FILE]
 *     [--build|--no-build] [--out=FILE]
 *
 * `--control` starts both sets with probes off (an A/A run): the difference
 * it reports is the noise floor of comparing two redis-servers.
 *
 * Redis CPU: the redis-server main thread's on-CPU time from
 * /proc/<pid>/schedstat (nanoseconds; /proc/<pid>/stat counts 10 ms ticks,
 * too coarse for an idle server). Also per set: `INFO commandstats` deltas
 * (calls and Redis's own usec per command) and the gateways' CPU.
 * Reported: probe cost = probes on - probes off per window (median over the
 * windows), per instance, and extrapolated linearly to 100 instances.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { GATEWAY_SCRIPT, ROOT, arg, buildMode, ensureBuilt, flag, gatewayEnv, median, runMeta } from './lib/gateway.mjs'
import { freePort, inLanes, sleep, startRedis, startServer, stopOnExit } from './lib/processes.mjs'
import { commandStats, commandStatsDelta } from './lib/redis-cluster.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))
const instances = Number(arg('instances', 10))
const windows = Number(arg('windows', 3))
const windowSeconds = Number(arg('window-seconds', 20))
const settleSeconds = Number(arg('settle-seconds', 10))
const limitMinutes = Number(arg('limit-minutes', 5))
const script = path.resolve(arg('script', GATEWAY_SCRIPT))
const control = flag('control')
const OFF_MS = 86400000
const SETS = { on: 'probes on (default, 2000 ms)', off: `probes off (${OFF_MS} ms)` }

const log = (line) => process.stderr.write(`[probe-cost] ${line}\n`)
const { killAll } = stopOnExit(limitMinutes, log)
const sum = (values, pick) => values.reduce((total, v) => total + pick(v), 0)

async function startSet (name) {
  const redis = await startRedis()
  const servers = []
  await inLanes(instances, 2, async () => {
    const port = await freePort()
    const extra = name === 'off' || control ? { BUS_PROBE_INTERVAL_MS: String(OFF_MS) } : {}
    servers.push(await startServer({ name: `${name}:${port}`, script, port, cwd: ROOT, graceMs: 3000, env: gatewayEnv({ port, redisUrl: redis.url, extra }) }))
  })
  return { name, redis, servers }
}

async function sample (set) {
  return {
    redisUs: set.redis.cpuFineUs(),
    commands: await commandStats(set.redis.port),
    gatewayUs: sum(await Promise.all(set.servers.map((s) => s.stats())), (s) => s.cpuUs),
    at: performance.now()
  }
}

const sets = []
try {
  ensureBuilt(buildMode(), log)
  const meta = runMeta('probe-cost', { instances, windows, windowSeconds, control })
  process.stdout.write(`${instances} idle gateway instances per Redis, ${control ? 'CONTROL: probes off on both' : 'probes on / off'}, ${windows} windows of ${windowSeconds} s\n`)
  for (const name of ['on', 'off']) {
    sets.push(await startSet(name))
    log(`${name}: ${instances} instances ready`)
  }
  await sleep(settleSeconds * 1000)
  const measured = []
  for (let w = 1; w <= windows; w++) {
    const before = await Promise.all(sets.map(sample))
    await sleep(windowSeconds * 1000)
    const after = await Promise.all(sets.map(sample))
    const r = { window: w }
    for (const [i, set] of sets.entries()) {
      const seconds = (after[i].at - before[i].at) / 1000
      const commands = commandStatsDelta(before[i].commands, after[i].commands)
      delete commands.info // the bench's own INFO commandstats
      r[set.name] = {
        seconds,
        redisUsPerSec: (after[i].redisUs - before[i].redisUs) / seconds,
        gatewayUsPerSec: (after[i].gatewayUs - before[i].gatewayUs) / seconds,
        commands
      }
    }
    r.probeRedisUsPerSec = r.on.redisUsPerSec - r.off.redisUsPerSec
    r.probeGatewayUsPerSec = r.on.gatewayUsPerSec - r.off.gatewayUsPerSec
    measured.push(r)
    log(`window ${w}: Redis ${r.on.redisUsPerSec.toFixed(0)} us/s with probes, ${r.off.redisUsPerSec.toFixed(0)} us/s without; publish calls ${r.on.commands.publish?.calls ?? 0} / ${r.off.commands.publish?.calls ?? 0}`)
  }
  const probeRedis = median(measured.map((r) => r.probeRedisUsPerSec))
  const probeGateway = median(measured.map((r) => r.probeGatewayUsPerSec))
  const publish = measured.map((r) => (r.on.commands.publish?.calls ?? 0) - (r.off.commands.publish?.calls ?? 0))
  const publishUsec = measured.map((r) => (r.on.commands.publish?.usec ?? 0) - (r.off.commands.publish?.usec ?? 0))
  const probesPerSec = median(measured.map((r, i) => publish[i] / r.on.seconds))
  const f = (v, d = 0) => Number.isFinite(v) ? v.toFixed(d) : 'n/a'
  const pct = (usPerSec) => `${f(usPerSec / 10000, 3)} %`
  const lines = [
    '| per window (median) | ' + Object.values(SETS).join(' | ') + ' | probes (on - off) |',
    '| --- | --- | --- | --- |',
    `| Redis CPU (us/s, % of a core) | ${f(median(measured.map((r) => r.on.redisUsPerSec)))} (${pct(median(measured.map((r) => r.on.redisUsPerSec)))}) | ${f(median(measured.map((r) => r.off.redisUsPerSec)))} (${pct(median(measured.map((r) => r.off.redisUsPerSec)))}) | ${f(probeRedis)} (${pct(probeRedis)}) |`,
    `| gateway CPU, all ${instances} instances (us/s) | ${f(median(measured.map((r) => r.on.gatewayUsPerSec)))} | ${f(median(measured.map((r) => r.off.gatewayUsPerSec)))} | ${f(probeGateway)} |`,
    `| PUBLISH calls per s | ${f(median(measured.map((r) => (r.on.commands.publish?.calls ?? 0) / r.on.seconds)), 2)} | ${f(median(measured.map((r) => (r.off.commands.publish?.calls ?? 0) / r.off.seconds)), 2)} | ${f(probesPerSec, 2)} |`
  ]
  const perInstance = probeRedis / instances
  const perProbe = probeRedis / probesPerSec
  const commandUsPerProbe = median(publishUsec.map((u, i) => u / publish[i]))
  const summary = {
    probeRedisUsPerSec: probeRedis,
    probeRedisUsPerSecRange: [Math.min(...measured.map((r) => r.probeRedisUsPerSec)), Math.max(...measured.map((r) => r.probeRedisUsPerSec))],
    probeGatewayUsPerSec: probeGateway,
    probesPerSec,
    redisUsPerProbe: perProbe,
    redisCommandUsPerProbe: commandUsPerProbe,
    redisUsPerSecPerInstance: perInstance,
    redisPercentOfCoreAt100: perInstance * 100 / 10000
  }
  meta.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
  process.stdout.write(`\n${lines.join('\n')}\n\n` +
    `Probe cost on Redis: ${f(perProbe)} us of CPU per probe (of which ${f(commandUsPerProbe, 1)} us inside PUBLISH per INFO commandstats), ` +
    `${f(perInstance, 1)} us/s per instance (${pct(perInstance)} of a core); at 100 instances ${f(perInstance * 100)} us/s = ${pct(perInstance * 100)} of a core. ` +
    `Per-window range of the difference: ${f(summary.probeRedisUsPerSecRange[0])} to ${f(summary.probeRedisUsPerSecRange[1])} us/s.\n\nload average at end: ${meta.loadAverageAtEnd.join(' ')}\n`)
  const out = path.resolve(arg('out', path.join(BENCH, 'results', `probe-cost-${meta.date.replace(/[:.]/g, '-')}.json`)))
  mkdirSync(path.dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify({ meta, summary, measured }, null, 2))
} catch (err) {
  log(err?.stack ?? String(err))
  killAll()
  process.exit(1)
} finally {
  for (const set of sets) {
    await Promise.allSettled(set.servers.map((s) => s.stop()))
    await set.redis.stop()
  }
}
process.exit(0)
