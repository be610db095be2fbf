#!/usr/bin/env node
/**
 * Broadcast throughput, interleaved: the gateway with history on, the same
 * build with history off (HISTORY_MAX_ENTRIES=0) and bare ws, all running at
 * once with their connections open, measured in alternation. run.mjs
 * measures one system after the other; on a shared box whose load drifts
 * within a minute that puts the drift into the ratio. Here every round
 * measures each system once, in an order rotated from round to round, and
 * the ratios are taken within a round.
 *
 *   node bench/broadcast-ab.mjs [--systems=ws,nohist,gateway] [--connections=5000]
 *     [--instances=2] [--broadcasts=20] [--rounds=5] [--limit-minutes=6]
 *     [--script=FILE] [--build|--no-build] [--out=FILE]
 *
 * Each system: its own redis-server on a free port, `--instances` server
 * processes with bench/probe.mjs, its own client processes (client-worker.mjs,
 * at most 15,000 sockets each, at most 6,000 per 127.x source address) and
 * the same publisher process (publisher.mjs: `broadcasts` alerts, at most 4
 * POSTs in flight, round-robin over the instances). Deliveries/s =
 * deliveries / (last delivery - first POST); server CPU per delivery and
 * per POST /alerts from process.cpuUsage of every instance.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Histogram } from './lib/histogram.mjs'
import { forkWorker } from './lib/ipc.mjs'
import { GATEWAY_SCRIPT, HISTORY_OFF, ROOT, gatewayCommit, baseEnv, ensureBuilt, gatewayEnv, median, serverEnv } from './lib/gateway.mjs'
import { freePort, sleep, startRedis, startServer, stopOnExit } from './lib/processes.mjs'
import { serviceToken } from './lib/tokens.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))
const PER_WORKER = 15000
const PER_ADDRESS = 6000
const LABELS = { ws: 'ws (bare)', nohist: 'gateway, history off', gateway: 'gateway' }

const arg = (name, fallback) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback
const flag = (name) => process.argv.includes(`--${name}`)
const systems = arg('systems', 'ws,nohist,gateway').split(',')
const connections = Number(arg('connections', 5000))
const instances = Number(arg('instances', 2))
const broadcasts = Number(arg('broadcasts', 20))
const rounds = Number(arg('rounds', 5))
const limitMinutes = Number(arg('limit-minutes', 6))
const script = path.resolve(arg('script', GATEWAY_SCRIPT))
for (const s of systems) if (!(s in LABELS)) throw new Error(`unknown system ${s}`)
if (!systems.includes('gateway')) throw new Error('--systems must include gateway')

const log = (line) => process.stderr.write(`[broadcast-ab] ${line}\n`)
const { children, killAll } = stopOnExit(limitMinutes, log)

const sum = (values, pick) => values.reduce((total, v) => total + pick(v), 0)

async function startSystem (name, index) {
  const redis = await startRedis()
  const ports = await Promise.all(Array.from({ length: instances }, () => freePort()))
  const servers = await Promise.all(ports.map((port) => name === 'ws'
    ? startServer({ name: `ws:${port}`, script: path.join(BENCH, 'references/ws-server.mjs'), port, cwd: ROOT, env: { ...serverEnv({ port, redisUrl: redis.url, heartbeatMs: 30000 }), BENCH_EXIT_ON_SIGTERM: '1' } })
    : startServer({ name: `${name}:${port}`, script, port, cwd: ROOT, graceMs: 3000, env: gatewayEnv({ port, redisUrl: redis.url, heartbeatMs: 30000, extra: name === 'nohist' ? HISTORY_OFF : {} }) })))
  const workerCount = Math.max(1, Math.ceil(connections / PER_WORKER))
  const addressCount = Math.ceil(Math.max(workerCount, Math.ceil(connections / PER_ADDRESS)) / workerCount) * workerCount
  const workers = []
  let from = 0
  for (let w = 0; w < workerCount; w++) {
    const worker = forkWorker(path.join(BENCH, 'client-worker.mjs'), [], baseEnv())
    children.add(worker.child)
    const count = Math.floor(connections / workerCount) + (w < connections % workerCount ? 1 : 0)
    const addresses = []
    for (let a = w; a < addressCount; a += workerCount) addresses.push(`127.0.${220 + index}.${a + 1}`)
    workers.push({ ...worker, share: { from, count, addresses } })
    from += count
  }
  return { name, redis, servers, workers, urls: servers.map((s) => s.baseUrl), protocol: name === 'ws' ? 'ws' : 'gateway' }
}

async function main () {
  ensureBuilt(flag('build') ? 'always' : flag('no-build') ? 'never' : 'auto', log)
  const meta = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100), gatewayCommit: gatewayCommit(), systems, connections, instances, broadcasts, rounds }
  process.stdout.write(`broadcast-ab ${meta.date}: ${meta.cpus} x ${meta.cpuModel}, node ${meta.node}, load ${meta.loadAverageAtStart.join(' ')}; gateway ${meta.gatewayCommit}\n`)
  process.stdout.write(`${connections} connections over ${instances} instances per system, all systems up at once; ${broadcasts} broadcasts per system and round, ${rounds} rounds\n`)
  const started = []
  const publisher = forkWorker(path.join(BENCH, 'publisher.mjs'), [], baseEnv())
  children.add(publisher.child)
  const token = serviceToken()
  try {
    for (const [index, name] of systems.entries()) started.push(await startSystem(name, index))
    for (const system of started) {
      const results = await Promise.all(system.workers.map((w) => w.rpc.call({
        cmd: 'connect', system: system.protocol, urls: system.urls, ...w.share, concurrency: 100, timeoutMs: 60000
      }, 10 * 60000)))
      const ok = sum(results, (r) => r.ok)
      if (ok !== connections) throw new Error(`${system.name}: ${connections - ok} connections failed`)
      system.connected = ok
      // Warm-up: a few broadcasts, not measured.
      await publisher.rpc.call({ cmd: 'broadcast', urls: system.urls, token, count: 4, concurrency: 2 })
      await Promise.all(system.workers.map((w) => w.rpc.call({ cmd: 'await', count: 4 * w.share.count, timeoutMs: 30000 }, 90000)))
      log(`${system.name}: ${ok} connected`)
    }

    const measured = []
    for (let round = 1; round <= rounds; round++) {
      for (let i = 0; i < started.length; i++) {
        const system = started[(i + round - 1) % started.length]
        await Promise.all(system.workers.map((w) => w.rpc.call({ cmd: 'reset' })))
        await sleep(500)
        const before = await Promise.all(system.servers.map((s) => s.stats()))
        const sent = await publisher.rpc.call({ cmd: 'broadcast', urls: system.urls, token, count: broadcasts, concurrency: 4 }, 10 * 60000)
        const received = await Promise.all(system.workers.map((w) => w.rpc.call({ cmd: 'await', count: broadcasts * w.share.count, timeoutMs: 60000 }, 120000)))
        const after = await Promise.all(system.servers.map((s) => s.stats()))
        const deliveries = sum(received, (r) => r.received)
        const cpuUs = sum(after, (a) => a.cpuUs) - sum(before, (b) => b.cpuUs)
        const seconds = (Math.max(...received.map((r) => r.lastRecvAt)) - sent.firstSendAt) / 1000
        const latency = received.reduce((h, r) => h.merge(Histogram.fromJSON(r.latencyTs)), new Histogram()).summary()
        const r = {
          round,
          system: system.name,
          expected: broadcasts * system.connected,
          deliveries,
          seconds,
          deliveriesPerSec: deliveries / seconds,
          cpuUsPerDelivery: cpuUs / deliveries,
          cpuUsPerPost: cpuUs / broadcasts,
          latencyP50Ms: latency.p50,
          latencyP99Ms: latency.p99,
          statuses: sent.statuses
        }
        measured.push(r)
        if (deliveries !== r.expected) log(`${system.name}: ${deliveries}/${r.expected} deliveries`)
        log(`round ${round} ${system.name}: ${Math.round(r.deliveriesPerSec)} deliveries/s, ${r.cpuUsPerDelivery.toFixed(2)} us per delivery, ${Math.round(r.cpuUsPerPost)} us per POST`)
      }
    }

    const of = (name) => measured.filter((r) => r.system === name)
    const paired = (name, pick) => median(of('gateway').map((g) => pick(g) / pick(of(name).find((x) => x.round === g.round))))
    const f = (v, d = 0) => Number.isFinite(v) ? (Math.abs(v) >= 10000 ? Math.round(v).toLocaleString('en-US') : v.toFixed(d)) : 'n/a'
    const lines = ['| | deliveries/s | server CPU per delivery (us) | server CPU per POST /alerts (us) | latency p50 / p99 (ms) |', '| --- | --- | --- | --- | --- |']
    const summary = {}
    for (const name of systems) {
      const runs = of(name)
      summary[name] = {
        deliveriesPerSec: median(runs.map((r) => r.deliveriesPerSec)),
        deliveriesPerSecRange: [Math.min(...runs.map((r) => r.deliveriesPerSec)), Math.max(...runs.map((r) => r.deliveriesPerSec))],
        cpuUsPerDelivery: median(runs.map((r) => r.cpuUsPerDelivery)),
        cpuUsPerPost: median(runs.map((r) => r.cpuUsPerPost)),
        latencyP50Ms: median(runs.map((r) => r.latencyP50Ms)),
        latencyP99Ms: median(runs.map((r) => r.latencyP99Ms))
      }
      const s = summary[name]
      lines.push(`| ${LABELS[name]} | ${f(s.deliveriesPerSec)} (${f(s.deliveriesPerSecRange[0])}-${f(s.deliveriesPerSecRange[1])}) | ${f(s.cpuUsPerDelivery, 2)} | ${f(s.cpuUsPerPost)} | ${f(s.latencyP50Ms, 1)} / ${f(s.latencyP99Ms, 1)} |`)
    }
    lines.push('')
    for (const name of systems.filter((s) => s !== 'gateway')) {
      const throughput = paired(name, (r) => r.deliveriesPerSec)
      const cpu = paired(name, (r) => r.cpuUsPerDelivery)
      const postExtra = median(of('gateway').map((g) => g.cpuUsPerPost - of(name).find((x) => x.round === g.round).cpuUsPerPost))
      summary[`gatewayVs_${name}`] = { throughput, cpuPerDelivery: cpu, cpuPerPostExtraUs: postExtra }
      const target = name === 'nohist' ? ` (target >= 0.90x: ${throughput >= 0.9 ? 'met' : 'NOT met'})` : ''
      lines.push(`gateway / ${LABELS[name]}, same round (median of ${rounds}): deliveries/s ${throughput.toFixed(2)}x${target}, CPU per delivery ${cpu.toFixed(2)}x, CPU per POST ${postExtra >= 0 ? '+' : ''}${f(postExtra)} us`)
    }
    meta.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
    process.stdout.write(`\n${lines.join('\n')}\n\nload average at end: ${meta.loadAverageAtEnd.join(' ')}\n`)
    const out = path.resolve(arg('out', path.join(BENCH, 'results', `broadcast-ab-${meta.date.replace(/[:.]/g, '-')}.json`)))
    mkdirSync(path.dirname(out), { recursive: true })
    writeFileSync(out, JSON.stringify({ meta, summary, measured }, null, 2))
  } finally {
    for (const system of started) {
      await Promise.allSettled(system.workers.map((w) => w.rpc.call({ cmd: 'close' }, 30000)))
      for (const w of system.workers) w.child.kill('SIGKILL')
    }
    publisher.child.kill('SIGKILL')
    for (const system of started) {
      await Promise.allSettled(system.servers.map((s) => s.stop()))
      await system.redis.stop()
    }
  }
}

main().then(() => process.exit(0), (err) => {
  log(err?.stack ?? String(err))
  killAll()
  process.exit(1)
})
