#!/usr/bin/env node
/**
 * One Redis against a 3-master Redis Cluster, in the same run: the same
 * gateway build, `--instances` processes against a private redis-server
 * (`REDIS_URL`) and as many against a private cluster of 3 masters with one
 * replica each (`REDIS_CLUSTER_NODES`: sharded pub/sub, per-user hash tags),
 * both up at once with their connections open, measured in alternation.
 *
 *   node bench/cluster-ab.mjs [--connections=4000] [--instances=2]
 *     [--broadcasts=20] [--rate=200] [--seconds=5] [--rounds=4]
 *     [--connect-concurrency=1] [--limit-minutes=6] [--script=FILE]
 *     [--build|--no-build] [--out=FILE]
 *
 * Connections are opened one at a time by default: with the cluster, users
 * whose handshakes overlapped got subscribed on Redis but most of their
 * single-user alerts were never delivered (2026-12-01, see bench/README.md);
 * `--connect-concurrency=100` shows it (the lost alerts are logged and in
 * the table).
 *
 * Every round measures, for each system in an order rotated per round:
 * - broadcast: `broadcasts` alerts to everyone (at most 4 POSTs in flight,
 *   round-robin over the instances). Deliveries/s = deliveries / (last
 *   delivery - first POST); CPU per delivery = (gateway CPU of every
 *   instance + Redis CPU of every node) / deliveries.
 * - single-user: open loop at `rate`/s for `seconds`, each alert to a random
 *   connected user (seeded by the round, so both systems get the same
 *   users). CPU per alert = (gateway + Redis) CPU / alerts sent; latency from
 *   the alert's due time. Per master: `INFO commandstats` deltas (calls per
 *   command) and its CPU, so the spread of per-user traffic over the shards
 *   is visible. Replicas are counted in the Redis CPU (they replay the
 *   masters' writes and the sharded messages).
 *
 * Gateway CPU is each process's own process.cpuUsage (bench/probe.mjs),
 * Redis CPU the main thread's on-CPU time from /proc/<pid>/schedstat. Ratios
 * are cluster / single of the same round, then the median over the rounds.
 */
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Histogram } from './lib/histogram.mjs'
import { forkWorker } from './lib/ipc.mjs'
import { GATEWAY_SCRIPT, ROOT, arg, baseEnv, buildMode, ensureBuilt, gatewayEnv, median, runMeta } from './lib/gateway.mjs'
import { freePort, sleep, startRedis, startServer, stopOnExit } from './lib/processes.mjs'
import { commandStats, commandStatsDelta, startRedisCluster } from './lib/redis-cluster.mjs'
import { serviceToken } from './lib/tokens.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))
const PER_ADDRESS = 6000
const SYSTEMS = ['single', 'cluster']
const LABELS = { single: 'one Redis', cluster: 'Redis Cluster, 3 masters + 3 replicas' }

const connections = Number(arg('connections', 4000))
const instances = Number(arg('instances', 2))
const broadcasts = Number(arg('broadcasts', 20))
const rate = Number(arg('rate', 200))
const seconds = Number(arg('seconds', 5))
const rounds = Number(arg('rounds', 4))
const connectConcurrency = Number(arg('connect-concurrency', 1))
const limitMinutes = Number(arg('limit-minutes', 6))
const script = path.resolve(arg('script', GATEWAY_SCRIPT))
if (connections > 15000) throw new Error('--connections: at most 15,000 (one client process per system)')

const log = (line) => process.stderr.write(`[cluster-ab] ${line}\n`)
const { children, killAll } = stopOnExit(limitMinutes, log)

const sum = (values, pick) => values.reduce((total, v) => total + pick(v), 0)

async function startSystem (name, index) {
  let redisNodes, redisEnv, stopRedis, masters
  if (name === 'single') {
    const redis = await startRedis()
    redisNodes = [redis]
    masters = [redis]
    redisEnv = { url: redis.url }
    stopRedis = () => redis.stop()
  } else {
    const cluster = await startRedisCluster({ log })
    redisNodes = cluster.nodes
    masters = cluster.masters
    redisEnv = { extra: { REDIS_CLUSTER_NODES: cluster.seeds } }
    stopRedis = () => cluster.stop()
  }
  const ports = await Promise.all(Array.from({ length: instances }, () => freePort()))
  const servers = await Promise.all(ports.map((port) => {
    const env = gatewayEnv({ port, redisUrl: redisEnv.url, heartbeatMs: 30000, extra: redisEnv.extra })
    if (env.REDIS_URL === undefined) delete env.REDIS_URL
    return startServer({ name: `${name}:${port}`, script, port, cwd: ROOT, graceMs: 3000, env })
  }))
  const worker = forkWorker(path.join(BENCH, 'client-worker.mjs'), [], baseEnv())
  children.add(worker.child)
  const addresses = Array.from({ length: Math.ceil(connections / PER_ADDRESS) }, (_, a) => `127.0.${230 + index}.${a + 1}`)
  return {
    name,
    redisNodes,
    masters,
    stopRedis,
    servers,
    worker,
    addresses,
    urls: servers.map((s) => s.baseUrl),
    redisCpuUs: () => sum(redisNodes, (n) => n.cpuFineUs()),
    gatewayCpuUs: async () => sum(await Promise.all(servers.map((s) => s.stats())), (s) => s.cpuUs)
  }
}

/** Waits until the worker has received `count` alerts since its last reset (or the timeout). */
async function receivedAtLeast (system, count, timeoutMs) {
  return system.worker.rpc.call({ cmd: 'await', count, timeoutMs }, timeoutMs + 30000)
}

async function measureBroadcast (system, publisher, token, round) {
  await system.worker.rpc.call({ cmd: 'reset' })
  await sleep(500)
  const before = { gateway: await system.gatewayCpuUs(), redis: system.redisCpuUs() }
  const sent = await publisher.rpc.call({ cmd: 'broadcast', urls: system.urls, token, count: broadcasts, concurrency: 4 }, 10 * 60000)
  const received = await receivedAtLeast(system, broadcasts * connections, 60000)
  const gatewayUs = await system.gatewayCpuUs() - before.gateway
  const redisUs = system.redisCpuUs() - before.redis
  const deliveries = received.received
  const latency = Histogram.fromJSON(received.latencyTs).summary()
  return {
    round,
    system: system.name,
    expected: broadcasts * connections,
    deliveries,
    deliveriesPerSec: deliveries / ((received.lastRecvAt - sent.firstSendAt) / 1000),
    gatewayUsPerDelivery: gatewayUs / deliveries,
    redisUsPerDelivery: redisUs / deliveries,
    cpuUsPerDelivery: (gatewayUs + redisUs) / deliveries,
    redisUsPerBroadcast: redisUs / broadcasts,
    latencyP50Ms: latency.p50,
    latencyP99Ms: latency.p99,
    statuses: sent.statuses
  }
}

async function measureSingle (system, publisher, token, round) {
  await system.worker.rpc.call({ cmd: 'reset' })
  await sleep(500)
  const statsBefore = await Promise.all(system.masters.map((m) => commandStats(m.port)))
  const nodeCpuBefore = system.redisNodes.map((n) => n.cpuFineUs())
  const gatewayBefore = await system.gatewayCpuUs()
  const sent = await publisher.rpc.call({ cmd: 'single', urls: system.urls, token, rate, seconds, users: connections, seed: round }, 10 * 60000)
  const received = await receivedAtLeast(system, sent.sent, 30000)
  const gatewayUs = await system.gatewayCpuUs() - gatewayBefore
  const nodeCpu = system.redisNodes.map((n, i) => n.cpuFineUs() - nodeCpuBefore[i])
  const statsAfter = await Promise.all(system.masters.map((m) => commandStats(m.port)))
  const redisUs = sum(nodeCpu, (v) => v)
  const latency = Histogram.fromJSON(received.latencySched).summary()
  const shards = system.masters.map((m, i) => {
    const commands = commandStatsDelta(statsBefore[i], statsAfter[i])
    delete commands.info // the bench's own INFO commandstats
    return {
      port: m.port,
      slots: m.slots ?? '0-16383',
      cpuUs: nodeCpu[system.redisNodes.indexOf(m)],
      calls: sum(Object.values(commands), (c) => c.calls),
      commands
    }
  })
  return {
    round,
    system: system.name,
    sent: sent.sent,
    received: received.received,
    gatewayUsPerAlert: gatewayUs / sent.sent,
    redisUsPerAlert: redisUs / sent.sent,
    cpuUsPerAlert: (gatewayUs + redisUs) / sent.sent,
    latencyP50Ms: latency.p50,
    latencyP99Ms: latency.p99,
    nodeCpuUs: system.redisNodes.map((n, i) => ({ port: n.port, role: n.role ?? 'master', cpuUs: nodeCpu[i] })),
    shards,
    statuses: sent.statuses
  }
}

async function main () {
  ensureBuilt(buildMode(), log)
  const meta = runMeta('cluster-ab', { connections, instances, broadcasts, rate, seconds, rounds, connectConcurrency })
  process.stdout.write(`${connections} connections over ${instances} instances per system (${connectConcurrency} handshake(s) in flight), both up at once; per round and system ${broadcasts} broadcasts and ${rate}/s single-user alerts for ${seconds} s; ${rounds} rounds\n`)
  const started = []
  const publisher = forkWorker(path.join(BENCH, 'publisher.mjs'), [], baseEnv())
  children.add(publisher.child)
  const token = serviceToken()
  try {
    for (const [index, name] of SYSTEMS.entries()) started.push(await startSystem(name, index))
    for (const system of started) {
      const result = await system.worker.rpc.call({ cmd: 'connect', system: 'gateway', urls: system.urls, from: 0, count: connections, addresses: system.addresses, concurrency: connectConcurrency, timeoutMs: 60000 }, 10 * 60000)
      if (result.ok !== connections) throw new Error(`${system.name}: ${connections - result.ok} connections failed: ${JSON.stringify(result.errors)}`)
      // Warm-up, not measured: a few broadcasts and single-user alerts.
      await system.worker.rpc.call({ cmd: 'reset' })
      await publisher.rpc.call({ cmd: 'broadcast', urls: system.urls, token, count: 4, concurrency: 2 })
      await receivedAtLeast(system, 4 * connections, 30000)
      await system.worker.rpc.call({ cmd: 'reset' })
      const warm = await publisher.rpc.call({ cmd: 'single', urls: system.urls, token, rate, seconds: 2, users: connections, seed: 1000 })
      await receivedAtLeast(system, warm.sent, 30000)
      log(`${system.name}: ${result.ok} connected, warmed up`)
    }

    const measured = { broadcast: [], single: [] }
    for (let round = 1; round <= rounds; round++) {
      for (const [kind, measure] of [['broadcast', measureBroadcast], ['single', measureSingle]]) {
        for (let i = 0; i < started.length; i++) {
          const system = started[(i + round - 1) % started.length]
          const r = await measure(system, publisher, token, round)
          measured[kind].push(r)
          if (kind === 'broadcast') {
            if (r.deliveries !== r.expected) log(`${system.name}: ${r.deliveries}/${r.expected} deliveries`)
            log(`round ${round} broadcast ${system.name}: ${Math.round(r.deliveriesPerSec)} deliveries/s, ${r.gatewayUsPerDelivery.toFixed(2)} + ${r.redisUsPerDelivery.toFixed(3)} us per delivery (gateway + Redis)`)
          } else {
            if (r.received !== r.sent) log(`${system.name}: ${r.received}/${r.sent} single-user alerts received`)
            log(`round ${round} single ${system.name}: ${r.gatewayUsPerAlert.toFixed(0)} + ${r.redisUsPerAlert.toFixed(0)} us per alert (gateway + Redis), p99 ${r.latencyP99Ms.toFixed(1)} ms; calls per master ${r.shards.map((s) => s.calls).join(' / ')}`)
          }
        }
      }
    }

    const f = (v, d = 0) => Number.isFinite(v) ? (Math.abs(v) >= 10000 ? Math.round(v).toLocaleString('en-US') : v.toFixed(d)) : 'n/a'
    const of = (kind, name) => measured[kind].filter((r) => r.system === name)
    const med = (kind, name, pick) => median(of(kind, name).map(pick))
    const paired = (kind, pick) => median(of(kind, 'cluster').map((c) => pick(c) / pick(of(kind, 'single').find((s) => s.round === c.round))))
    const rows = [
      ['broadcast deliveries/s', 'broadcast', (r) => r.deliveriesPerSec, 0],
      ['broadcast CPU per delivery, gateway + Redis (us)', 'broadcast', (r) => r.cpuUsPerDelivery, 2],
      ['- of which gateway (us)', 'broadcast', (r) => r.gatewayUsPerDelivery, 2],
      ['- of which Redis, all nodes (us)', 'broadcast', (r) => r.redisUsPerDelivery, 3],
      ['broadcast Redis CPU per POST, all nodes (us)', 'broadcast', (r) => r.redisUsPerBroadcast, 0],
      ['broadcast latency p50 / p99 (ms)', 'broadcast', null],
      [`single-user CPU per alert at ${rate}/s, gateway + Redis (us)`, 'single', (r) => r.cpuUsPerAlert, 0],
      ['- of which gateway (us)', 'single', (r) => r.gatewayUsPerAlert, 0],
      ['- of which Redis, all nodes (us)', 'single', (r) => r.redisUsPerAlert, 0],
      ['single-user latency from due time p50 / p99 (ms)', 'single', null],
      ['single-user alerts received / sent, all rounds', 'single', 'received']
    ]
    const lines = [`| median of ${rounds} rounds | ${LABELS.single} | ${LABELS.cluster} | cluster / one Redis, same round |`, '| --- | --- | --- | --- |']
    const summary = {}
    for (const [label, kind, pick, digits] of rows) {
      if (pick === 'received') {
        const cell = (name) => `${sum(of(kind, name), (r) => r.received)} / ${sum(of(kind, name), (r) => r.sent)}`
        lines.push(`| ${label} | ${cell('single')} | ${cell('cluster')} | |`)
        continue
      }
      if (pick === null) {
        const cell = (name) => `${f(med(kind, name, (r) => r.latencyP50Ms), 1)} / ${f(med(kind, name, (r) => r.latencyP99Ms), 1)}`
        lines.push(`| ${label} | ${cell('single')} | ${cell('cluster')} | |`)
        continue
      }
      const single = med(kind, 'single', pick)
      const cluster = med(kind, 'cluster', pick)
      const ratio = paired(kind, pick)
      summary[label] = { single, cluster, ratio }
      lines.push(`| ${label} | ${f(single, digits)} | ${f(cluster, digits)} | ${f(ratio, 2)}x |`)
    }
    // Per master: share of the single-user phases' commands and CPU, summed over the rounds.
    const clusterRuns = of('single', 'cluster')
    const shardLines = ['| master (slots) | commands | share of commands | CPU (ms) | share of master CPU | main commands (calls) |', '| --- | --- | --- | --- | --- | --- |']
    const totals = clusterRuns[0].shards.map((s, i) => {
      const commands = {}
      for (const r of clusterRuns) {
        for (const [name, c] of Object.entries(r.shards[i].commands)) commands[name] = (commands[name] ?? 0) + c.calls
      }
      return { port: s.port, slots: s.slots, calls: sum(clusterRuns, (r) => r.shards[i].calls), cpuUs: sum(clusterRuns, (r) => r.shards[i].cpuUs), commands }
    })
    const allCalls = sum(totals, (t) => t.calls)
    const allCpu = sum(totals, (t) => t.cpuUs)
    for (const t of totals) {
      const main = Object.entries(t.commands).sort((a, b) => b[1] - a[1]).slice(0, 5).map(([name, calls]) => `${name} ${calls}`).join(', ')
      shardLines.push(`| ${t.port} (${t.slots}) | ${t.calls} | ${f(100 * t.calls / allCalls, 1)} % | ${f(t.cpuUs / 1000, 0)} | ${f(100 * t.cpuUs / allCpu, 1)} % | ${main} |`)
    }
    summary.shards = totals
    meta.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
    process.stdout.write(`\n${lines.join('\n')}\n\nPer-user traffic per master (single-user phases of all ${rounds} rounds, INFO commandstats deltas, the bench's INFO left out):\n\n${shardLines.join('\n')}\n\nload average at end: ${meta.loadAverageAtEnd.join(' ')}\n`)
    const out = path.resolve(arg('out', path.join(BENCH, 'results', `cluster-ab-${meta.date.replace(/[:.]/g, '-')}.json`)))
    mkdirSync(path.dirname(out), { recursive: true })
    writeFileSync(out, JSON.stringify({ meta, summary, measured }, null, 2))
  } finally {
    for (const system of started) {
      await system.worker.rpc.call({ cmd: 'close' }, 30000).catch(() => {})
      system.worker.child.kill('SIGKILL')
    }
    publisher.child.kill('SIGKILL')
    for (const system of started) {
      await Promise.allSettled(system.servers.map((s) => s.stop()))
      await system.stopRedis()
    }
  }
}

main().then(() => process.exit(0), (err) => {
  log(err?.stack ?? String(err))
  killAll()
  process.exit(1)
})
