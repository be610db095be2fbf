#!/usr/bin/env node
/**
 * Benchmarks the gateway against a bare `ws` server and Socket.IO 4 in one
 * run, with the same client processes, and prints the ratios.
 *
 *   node bench/run.mjs --quick   # ~1.5 min: 10k connections over 2 instances
 *   node bench/run.mjs --full    # 10k fan-out stage, then 100k over 6 instances
 *   node bench/run.mjs --smoke   # seconds; what the test suite runs
 *
 * Options (any stage field can be overridden): --systems=ws,sio,nohist,gateway
 * (nohist: the gateway again, with HISTORY_MAX_ENTRIES=0)
 * --connections=N --instances=K --workers=W --broadcasts=N --single-rate=R
 * --single-seconds=S --heartbeat-ms=MS --idle-ms=MS --stage=NAME
 * --gateway-runtime=dist|ts  --gateway-script=FILE (another compiled build,
 * for A/B runs)  --gateway-node-args="--flag=v ..." (node flags of the gateway's
 * processes only)  --gateway-env=NAME=value,... (added to the gateway's
 * environment)  --build (force tsc) --no-build
 * --prof=DIR (CPU profiles of every server)  --heap-snapshot=DIR (one
 * instance of each system, connections held)  --out=FILE (results JSON).
 *
 * Progress goes to stderr; stdout gets the machine line and one Markdown
 * table per stage. See bench/README.md for the method.
 */
import { spawnSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { now } from './lib/clock.mjs'
import { fileURLToPath } from 'node:url'
import { Histogram } from './lib/histogram.mjs'
import { mergeTimelines } from './lib/timeline.mjs'
import { forkWorker } from './lib/ipc.mjs'
import { GATEWAY_SCRIPT, HISTORY_OFF, ROOT, baseEnv, ensureBuilt, gatewayCommit, gatewayEnv, serverEnv } from './lib/gateway.mjs'
import { cpuProfArgs, freePort, sleep, spawned, startRedis, startServer, sumCounts } from './lib/processes.mjs'
import { serviceToken } from './lib/tokens.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))

/**
 * The systems a run can measure, in table order. `nohist` is the gateway
 * started a second time with history off (HISTORY_MAX_ENTRIES=0): the
 * history A/B in the same run, with the same build and client processes.
 */
const SYSTEMS = {
  ws: { label: 'ws (bare)', script: path.join(BENCH, 'references/ws-server.mjs') },
  sio: { label: 'Socket.IO 4', script: path.join(BENCH, 'references/socketio-server.mjs') },
  nohist: { label: 'gateway, history off', gateway: true, env: HISTORY_OFF },
  gateway: { label: 'gateway', gateway: true, env: {} }
}
/** The wire protocol the client workers speak to a system. */
const protocolOf = (system) => SYSTEMS[system].gateway === true ? 'gateway' : system

/** Connections opened and closed before measuring: JIT and lazy state warm up. */
const WARMUP_USER_BASE = 10_000_000
/** At most this many client connections from one 127.x source address. */
const PER_ADDRESS = 6000
/** At most this many connections per client process (20k descriptors each). */
const PER_WORKER = 15000
/**
 * At most this many storm clients per source address. The kernel searches a
 * free port for each connect among the sockets of its address: with 5,000
 * per address, or 20,000 on 127.0.0.1 alone, that search stalled the client
 * processes for seconds, and for over a minute at 100k.
 */
const STORM_PER_ADDRESS = 1000
/**
 * The second octet of every client source address of this run
 * (127.<run>.<set>.<n>). Closed connections sit in TIME_WAIT on their
 * source ports for a minute, and a run that reused the addresses of the run
 * before it made the kernel search for free ports on every connect: back to
 * back, the connect phases of alternate runs differed by a factor of two.
 */
const RUN_OCTET = 1 + (process.pid % 254)

const STAGE_DEFAULTS = {
  instances: 2,
  connections: 10000,
  workers: 2,
  warmup: 500,
  /** Pause after the warm-up's disconnects, before the baseline. */
  warmupSettleMs: 500,
  /**
   * Seconds of single-user alerts at 200/s to the warm-up users before they
   * leave (`--warmup-single-seconds`). More warms the publish path: 1,000
   * alerts in a trial shortened the slow start of the measured phase from
   * 3 s to 0.5 s. But they leave a larger heap and RSS after the warm-up,
   * the baseline of the memory per connection (bare ws's RSS per connection
   * fell from 6.6-7.4 to 5.2-5.7 KB), so the default stays small.
   */
  warmupSingleSeconds: 0.2,
  concurrency: 100,
  heartbeatMs: 5000,
  idleMs: 5000,
  settleMs: 1000,
  broadcasts: 20,
  broadcastConcurrency: 4,
  singleRate: 500,
  singleSeconds: 5,
  drainMs: 30000,
  connectTimeoutMs: 30000,
  /** Reconnect-storm stages (`storm: true`): SIGTERM one instance this long into the publishing. */
  stormAfterMs: 3000,
  /** ...which lasts this long in all (single-user alerts at `singleRate`). */
  stormSeconds: 20,
  /** Moved clients not resumed by then count as not resumed. */
  stormDeadlineMs: 60000
}

const PROFILES = {
  smoke: {
    limitMinutes: 3,
    stages: [{
      name: 'smoke',
      connections: 200,
      workers: 1,
      warmup: 20,
      warmupSettleMs: 100,
      concurrency: 50,
      heartbeatMs: 5000,
      idleMs: 500,
      settleMs: 100,
      broadcasts: 3,
      broadcastConcurrency: 2,
      singleRate: 100,
      singleSeconds: 0.5,
      drainMs: 5000
    }, {
      name: 'storm',
      storm: true,
      connections: 200,
      workers: 1,
      concurrency: 50,
      singleRate: 100,
      stormAfterMs: 1000,
      stormSeconds: 3,
      stormDeadlineMs: 20000,
      drainMs: 5000
    }]
  },
  quick: {
    // ~3 min on an idle box with four systems; 5 min at load 8-13.
    limitMinutes: 10,
    stages: [{ name: 'quick' }, { name: 'storm', storm: true, singleRate: 100, heartbeatMs: 30000 }]
  },
  full: {
    limitMinutes: 60,
    stages: [
      { name: 'fan-out', instances: 2, connections: 10000, heartbeatMs: 30000, idleMs: 0, broadcasts: 50, singleRate: 1000, singleSeconds: 10 },
      {
        name: 'hold',
        instances: 6,
        connections: 100000,
        workers: 7,
        warmup: 1000,
        heartbeatMs: 30000,
        idleMs: 31000,
        settleMs: 3000,
        broadcasts: 0,
        singleRate: 1000,
        singleSeconds: 40,
        connectTimeoutMs: 60000,
        // No broadcasts here: the history A/B is measured in the fan-out stage.
        skipSystems: ['nohist']
      },
      {
        name: 'storm-100k',
        storm: true,
        instances: 6,
        connections: 100000,
        workers: 7,
        heartbeatMs: 30000,
        singleRate: 100,
        stormAfterMs: 5000,
        stormSeconds: 40,
        connectTimeoutMs: 60000
      }
    ]
  }
}

function parseArgs (argv) {
  const opts = { profile: 'quick', overrides: {}, build: 'auto', gatewayRuntime: 'dist', systems: ['ws', 'sio', 'nohist', 'gateway'] }
  for (const arg of argv) {
    const [key, value] = arg.replace(/^--/, '').split('=')
    if (key in PROFILES) opts.profile = key
    else if (key === 'build') opts.build = 'always'
    else if (key === 'no-build') opts.build = 'never'
    else if (key === 'gateway-runtime') opts.gatewayRuntime = value
    else if (key === 'gateway-script') opts.gatewayScript = path.resolve(value)
    // Everything after the first '=': the flags themselves hold '='.
    else if (key === 'gateway-node-args') opts.gatewayNodeArgs = arg.slice(arg.indexOf('=') + 1).split(' ').filter(Boolean)
    // Variables added to the gateway's environment: --gateway-env=NAME=value,NAME=value
    else if (key === 'gateway-env') opts.gatewayEnv = Object.fromEntries(arg.slice(arg.indexOf('=') + 1).split(',').map((pair) => [pair.slice(0, pair.indexOf('=')), pair.slice(pair.indexOf('=') + 1)]))
    else if (key === 'systems') opts.systems = value.split(',')
    else if (key === 'prof') opts.prof = path.resolve(value)
    else if (key === 'heap-snapshot') opts.heapSnapshot = path.resolve(value)
    else if (key === 'out') opts.out = path.resolve(value)
    else if (key === 'stage') opts.stage = value
    else if (value !== undefined) {
      const field = key.replace(/-([a-z])/g, (_, c) => c.toUpperCase())
      if (!(field in STAGE_DEFAULTS)) throw new Error(`unknown option --${key}`)
      opts.overrides[field] = Number(value)
    } else {
      throw new Error(`unknown option ${arg}`)
    }
  }
  for (const system of opts.systems) if (!(system in SYSTEMS)) throw new Error(`unknown system ${system}`)
  if (!['dist', 'ts'].includes(opts.gatewayRuntime)) throw new Error('--gateway-runtime is dist or ts')
  return opts
}

const log = (...parts) => process.stderr.write(`[bench] ${parts.join(' ')}\n`)

// ---------------------------------------------------------------- processes

/** Every process this run started, killed on any way out. */
const children = new Set()
function track (child) {
  children.add(child)
  child.once('exit', () => children.delete(child))
  return child
}
function killAll () {
  for (const child of [...children, ...spawned]) {
    try { child.kill('SIGKILL') } catch {}
  }
}
process.once('exit', killAll)
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.once(signal, () => {
    log(`${signal}: stopping`)
    killAll()
    process.exit(130)
  })
}

function serverSpec (system, opts, stage, port, redisUrl, profDir) {
  const nodeArgs = cpuProfArgs(profDir, `${system}-${port}.cpuprofile`)
  const name = `${system}:${port}`
  if (SYSTEMS[system].gateway !== true) {
    const env = { ...serverEnv({ port, redisUrl, heartbeatMs: stage.heartbeatMs }), BENCH_EXIT_ON_SIGTERM: '1' }
    return { name, script: SYSTEMS[system].script, nodeArgs, env, graceMs: profDir === undefined ? 0 : 5000 }
  }
  const env = gatewayEnv({ port, redisUrl, heartbeatMs: stage.heartbeatMs, extra: { ...opts.gatewayEnv, ...SYSTEMS[system].env } })
  if (opts.gatewayRuntime === 'ts') {
    // tap's TypeScript loader: the smoke test runs without a build.
    return { name, script: path.join(ROOT, 'src/server.ts'), nodeArgs: [...nodeArgs, '--import=@tapjs/typescript/import'], env: { ...env, TS_NODE_TRANSPILE_ONLY: '1' }, graceMs: 8000 }
  }
  const script = opts.gatewayScript ?? GATEWAY_SCRIPT
  return { name, script, nodeArgs: [...nodeArgs, ...opts.gatewayNodeArgs ?? []], env, graceMs: profDir === undefined ? 3000 : 10000 }
}

// ---------------------------------------------------------------- measuring

const sum = (values, pick) => values.reduce((total, v) => total + pick(v), 0)
const statsAll = (servers, opts) => Promise.all(servers.map((s) => s.stats(opts)))
const cpuDelta = (before, after) => sum(after, (a) => a.cpuUs) - sum(before, (b) => b.cpuUs)
const merged = (results, key) => results.reduce((h, r) => h.merge(Histogram.fromJSON(r[key])), new Histogram())
const maxOf = (values, pick) => Math.max(...values.map(pick))

/** Spreads the stage's connections over client processes and source addresses. */
function plan (stage, stageIndex, systemIndex) {
  const workers = Math.max(stage.workers, Math.ceil(stage.connections / PER_WORKER))
  let addressCount = Math.max(workers, Math.ceil(stage.connections / PER_ADDRESS))
  addressCount = Math.ceil(addressCount / workers) * workers
  // A fresh address set per system and stage: the previous system's closed
  // connections sit in TIME_WAIT on their ports for a minute.
  const third = 1 + stageIndex * Object.keys(SYSTEMS).length + systemIndex
  const shares = []
  let from = 0
  for (let w = 0; w < workers; w++) {
    const count = Math.floor(stage.connections / workers) + (w < stage.connections % workers ? 1 : 0)
    const addresses = []
    for (let a = w; a < addressCount; a += workers) addresses.push(`127.${RUN_OCTET}.${third}.${a + 1}`)
    shares.push({ from, count, addresses })
    from += count
  }
  return { workers, addressCount, shares }
}

/**
 * The stage's instances of `system`, each ready, on free ports. `shutdownMs`:
 * the gateway's SHUTDOWN_TIMEOUT_MS as shipped instead of the bench's short
 * one, and the time it is given after SIGTERM.
 */
async function startInstances (system, stage, opts, redisUrl, shutdownMs) {
  const ports = await Promise.all(Array.from({ length: stage.instances }, () => freePort()))
  return Promise.all(ports.map((port) => {
    const spec = serverSpec(system, opts, stage, port, redisUrl, opts.prof)
    if (shutdownMs !== undefined) {
      spec.env.SHUTDOWN_TIMEOUT_MS = String(shutdownMs)
      spec.graceMs = Math.max(spec.graceMs, shutdownMs + 5000)
    }
    return startServer({ ...spec, port, cwd: ROOT })
  }))
}

/** Ends a system's run: clients closed, then every process it started. */
async function stopAll (workers, publisher, servers, redis) {
  await Promise.allSettled(workers.map((w) => w.rpc.call({ cmd: 'close' }, 30000)))
  // Disconnected, a worker exits by itself (and writes its CPU profile, if any).
  await Promise.allSettled(workers.map((w) => new Promise((resolve) => {
    if (w.child.exitCode !== null || w.child.signalCode !== null) return resolve()
    const timer = setTimeout(() => w.child.kill('SIGKILL'), 5000)
    w.child.once('exit', () => { clearTimeout(timer); resolve() })
    w.child.disconnect()
  })))
  publisher?.child.kill('SIGKILL')
  await Promise.allSettled(servers.map((s) => s.stop()))
  await redis.stop()
}

/** Measures one system through every phase of the stage, filling `result` as it goes. */
async function runSystem (result, stage, stageIndex, systemIndex, opts) {
  const { system } = result
  const say = (...parts) => log(`${stage.name} ${system}:`, ...parts)
  const redis = await startRedis()
  let servers = []
  const workers = []
  let publisher = null
  try {
    servers = await startInstances(system, stage, opts, redis.url)
    const urls = servers.map((s) => s.baseUrl)
    say(`${servers.length} instances ready`)

    const layout = plan(stage, stageIndex, systemIndex)
    for (let w = 0; w < layout.workers; w++) {
      const worker = forkWorker(path.join(BENCH, 'client-worker.mjs'), [], baseEnv())
      track(worker.child)
      workers.push(worker)
    }
    publisher = forkWorker(path.join(BENCH, 'publisher.mjs'), [], baseEnv())
    track(publisher.child)
    const token = serviceToken()
    const callAll = (message, timeoutMs) => Promise.all(workers.map((w) => w.rpc.call(message, timeoutMs)))
    /** Unexpected disconnects so far, by phase: where a system drops clients. */
    result.unexpectedClosesAfter = {}
    const noteCloses = async (phase) => {
      const closes = sum(await callAll({ cmd: 'stats' }), (s) => s.unexpectedClosed)
      result.unexpectedClosesAfter[phase] = closes
      if (closes > 0) say(`${closes} unexpected disconnects so far (after ${phase})`)
    }

    // Warm-up: connect, deliver a few alerts, disconnect.
    if (stage.warmup > 0) {
      const warm = await workers[0].rpc.call({
        cmd: 'connect', system: protocolOf(system), urls, from: WARMUP_USER_BASE, count: stage.warmup, addresses: [], concurrency: stage.concurrency, timeoutMs: stage.connectTimeoutMs
      }, 120000)
      if (warm.ok === 0) throw new Error(`warm-up: no connection succeeded: ${JSON.stringify(warm.errors)}`)
      await publisher.rpc.call({ cmd: 'broadcast', urls, token, count: 4, concurrency: 2 })
      await publisher.rpc.call({ cmd: 'single', urls, token, rate: 200, seconds: stage.warmupSingleSeconds, users: warm.ok, userBase: WARMUP_USER_BASE, seed: 7 })
      await workers[0].rpc.call({ cmd: 'close' })
      await callAll({ cmd: 'reset' })
      await sleep(stage.warmupSettleMs)
    }

    // Handshakes.
    const base = await statsAll(servers, { gc: true })
    const redisBefore = redis.cpuUs()
    const started = now()
    const connects = await Promise.all(workers.map((w, k) => w.rpc.call({
      cmd: 'connect', system: protocolOf(system), urls, ...layout.shares[k], concurrency: stage.concurrency, timeoutMs: stage.connectTimeoutMs
    }, 30 * 60000)))
    const connectMs = now() - started
    const afterConnect = await statsAll(servers)
    const redisAfter = redis.cpuUs()
    const connected = sum(connects, (c) => c.ok)
    const errors = sumCounts(connects.map((c) => c.errors))
    result.connect = {
      attempted: stage.connections,
      connected,
      failed: stage.connections - connected,
      errors,
      seconds: connectMs / 1000,
      handshakesPerSec: connected / (connectMs / 1000),
      serverCpuUsPerHandshake: cpuDelta(base, afterConnect) / connected,
      redisCpuUsPerHandshake: (redisAfter - redisBefore) / connected,
      latencyMs: merged(connects, 'handshake').summary(),
      sourceAddresses: layout.addressCount,
      clientProcesses: layout.workers
    }
    say(`${connected}/${stage.connections} connected in ${(connectMs / 1000).toFixed(1)} s`, Object.keys(errors).length > 0 ? JSON.stringify(errors) : '')
    if (connected === 0) throw new Error(`no connection succeeded: ${JSON.stringify(errors)}`)
    await noteCloses('connect')

    // Idle connections: memory after GC, then heartbeat CPU over a window.
    await sleep(stage.settleMs)
    const held = await statsAll(servers, { gc: true })
    result.memory = {
      rssPerConnectionKB: (sum(held, (h) => h.rss) - sum(base, (b) => b.rss)) / connected / 1024,
      heapPerConnectionKB: (sum(held, (h) => h.heapUsed) - sum(base, (b) => b.heapUsed)) / connected / 1024,
      // What V8 keeps reserved (heapUsed plus free pages and the young
      // generation, which grows under allocation-heavy phases and stays).
      heapTotalPerConnectionKB: (sum(held, (h) => h.heapTotal) - sum(base, (b) => b.heapTotal)) / connected / 1024,
      externalPerConnectionKB: (sum(held, (h) => h.external) - sum(base, (b) => b.external)) / connected / 1024,
      rssTotalMB: sum(held, (h) => h.rss) / 2 ** 20
    }
    if (opts.heapSnapshot !== undefined) {
      const { file } = await servers[0].heapSnapshot(path.join(opts.heapSnapshot, `${stage.name}-${system}.heapsnapshot`))
      say(`heap snapshot of one instance: ${file}`)
    }
    if (stage.idleMs > 0) {
      const idleStart = await statsAll(servers, { resetLoop: true })
      await sleep(stage.idleMs)
      const idleEnd = await statsAll(servers)
      const cpuUs = cpuDelta(idleStart, idleEnd)
      const pings = connected * stage.idleMs / stage.heartbeatMs
      result.idle = {
        heartbeatMs: stage.heartbeatMs,
        windowMs: stage.idleMs,
        cpuPercentOfCore: cpuUs / (stage.idleMs * 1000) * 100,
        cpuUsPerPing: cpuUs / pings,
        loopMaxMs: maxOf(idleEnd, (s) => s.loopMaxMs)
      }
    }
    say('memory and idle measured')
    await noteCloses('idle')

    // Broadcasts: deliveries per second, latency from the alert's `ts`.
    if (stage.broadcasts > 0) {
      await callAll({ cmd: 'reset' })
      const before = await statsAll(servers, { resetLoop: true })
      const sent = await publisher.rpc.call({ cmd: 'broadcast', urls, token, count: stage.broadcasts, concurrency: stage.broadcastConcurrency }, 10 * 60000)
      const received = await Promise.all(workers.map((w, k) => w.rpc.call({
        cmd: 'await', count: stage.broadcasts * connects[k].ok, timeoutMs: stage.drainMs
      }, stage.drainMs + 60000)))
      const after = await statsAll(servers)
      const deliveries = sum(received, (r) => r.received)
      const elapsedMs = maxOf(received, (r) => r.lastRecvAt) - sent.firstSendAt
      result.broadcast = {
        broadcasts: stage.broadcasts,
        expected: stage.broadcasts * connected,
        received: deliveries,
        seconds: elapsedMs / 1000,
        deliveriesPerSec: deliveries / (elapsedMs / 1000),
        serverCpuUsPerDelivery: cpuDelta(before, after) / deliveries,
        serverCpuUsPerAlert: cpuDelta(before, after) / stage.broadcasts,
        latencyMs: merged(received, 'latencyTs').summary(),
        statuses: sent.statuses,
        loopMaxMs: maxOf(after, (s) => s.loopMaxMs)
      }
      say(`broadcast: ${deliveries}/${stage.broadcasts * connected} deliveries in ${(elapsedMs / 1000).toFixed(2)} s`)
      await noteCloses('broadcast')
    }

    // Single-user alerts, open loop at a fixed rate.
    if (stage.singleRate > 0) {
      await callAll({ cmd: 'reset' })
      const before = await statsAll(servers, { resetLoop: true })
      const phaseStart = now()
      const sent = await publisher.rpc.call({
        cmd: 'single', urls, token, rate: stage.singleRate, seconds: stage.singleSeconds, users: stage.connections, seed: 42
      }, (stage.singleSeconds + 120) * 1000)
      const deadline = Date.now() + stage.drainMs
      let stats = await callAll({ cmd: 'stats' })
      while (sum(stats, (s) => s.received) < sent.sent && Date.now() < deadline) {
        await sleep(100)
        stats = await callAll({ cmd: 'stats' })
      }
      const after = await statsAll(servers)
      const phaseMs = now() - phaseStart
      const deliveries = sum(stats, (s) => s.received)
      result.single = {
        rate: stage.singleRate,
        seconds: stage.singleSeconds,
        sent: sent.sent,
        accepted: sent.statuses['202'] ?? 0,
        received: deliveries,
        lost: sent.sent - deliveries,
        latencyMs: merged(stats, 'latencySched').summary(),
        latencyFromTsMs: merged(stats, 'latencyTs').summary(),
        publisherLatenessMs: Histogram.fromJSON(sent.lateness).summary(),
        serverCpuPercentOfCore: cpuDelta(before, after) / (phaseMs * 1000) * 100,
        // Every POST with its delivery, plus the heartbeats of the phase
        // (the same for both gateway runs of a history A/B).
        serverCpuUsPerAlert: cpuDelta(before, after) / sent.sent,
        statuses: sent.statuses,
        loopMaxMs: maxOf(after, (s) => s.loopMaxMs),
        timeline: mergeTimelines(stats.map((s) => s.timeline))
      }
      say(`single-user: ${deliveries}/${sent.sent} delivered, p99 ${result.single.latencyMs.p99.toFixed(1)} ms`)
    }

    const final = await callAll({ cmd: 'stats' })
    result.unexpectedCloses = sum(final, (s) => s.unexpectedClosed)
    result.unexpectedCloseCodes = sumCounts(final.map((s) => s.closeCodes))
    if (result.unexpectedCloses > 0) say(`unexpected closes by code: ${JSON.stringify(result.unexpectedCloseCodes)}`)
    result.serversAlive = servers.every((s) => s.alive())
  } finally {
    await stopAll(workers, publisher, servers, redis)
  }
}

/**
 * The storm's client processes: user i is on instance i mod K, and the
 * users of the instance that leaves (the last) get processes of their own.
 * Real clients are separate devices: a client process busy reconnecting
 * the moved users must not delay the alerts of those that stayed.
 */
function stormPlan (stage, stageIndex) {
  const k = stage.instances
  const moved = []
  const stayed = []
  for (let i = 0; i < stage.connections; i++) (i % k === k - 1 ? moved : stayed).push(i)
  const split = (users, workers) => Array.from({ length: workers }, (_, w) => users.filter((_, j) => j % workers === w))
  const movedWorkers = Math.max(1, Math.ceil(moved.length / PER_WORKER))
  const stayedWorkers = Math.max(1, Math.ceil(stayed.length / PER_WORKER), stage.workers - movedWorkers)
  const users = [...split(stayed, stayedWorkers), ...split(moved, movedWorkers)]
  // Source addresses 127.<run>.<100 + stage>.<n>, at most STORM_PER_ADDRESS users each.
  let next = 1
  const shares = users.map((list) => {
    const addresses = Array.from({ length: Math.ceil(list.length / STORM_PER_ADDRESS) }, () => `127.${RUN_OCTET}.${100 + stageIndex}.${next++}`)
    return { users: list, addresses }
  })
  if (next > 255) throw new Error(`the storm needs ${next - 1} source addresses, more than 254`)
  return { workers: shares.length, shares, addressCount: next - 1 }
}

/**
 * A deploy's reconnect storm, the gateway only: every connection through the
 * SDK (storm-worker.mjs), single-user alerts published in open loop to the
 * instances that stay, then one instance leaves the rotation and gets
 * SIGTERM. Measured: how long until each of its clients is connected and
 * resumed elsewhere, alerts lost (accepted, never received), and the
 * latency of the clients that did not move while the others come back.
 */
async function runStorm (result, stage, stageIndex, systemIndex, opts) {
  const say = (...parts) => log(`${stage.name} gateway:`, ...parts)
  const redis = await startRedis()
  let servers = []
  const workers = []
  let publisher = null
  try {
    // The drain as shipped: it spreads its closes over up to half of it.
    servers = await startInstances('gateway', stage, opts, redis.url, 10000)
    const urls = servers.map((s) => s.baseUrl)
    say(`${servers.length} instances ready`)

    const layout = stormPlan(stage, stageIndex)
    const sdk = opts.gatewayRuntime === 'ts' ? path.join(ROOT, 'client/index.ts') : path.join(path.dirname(path.dirname(opts.gatewayScript ?? GATEWAY_SCRIPT)), 'client/index.js')
    const execArgv = opts.gatewayRuntime === 'ts' ? ['--import=@tapjs/typescript/import'] : []
    // --prof: the client processes too (their profile is written when stopAll disconnects them).
    if (opts.prof !== undefined) execArgv.push('--cpu-prof', `--cpu-prof-dir=${opts.prof}`)
    const env = { ...baseEnv(), STORM_SDK: sdk, ...(opts.gatewayRuntime === 'ts' ? { TS_NODE_TRANSPILE_ONLY: '1' } : {}) }
    for (let w = 0; w < layout.workers; w++) {
      const worker = forkWorker(path.join(BENCH, 'storm-worker.mjs'), [], env, execArgv)
      track(worker.child)
      workers.push(worker)
    }
    publisher = forkWorker(path.join(BENCH, 'publisher.mjs'), [], baseEnv())
    track(publisher.child)
    // A client process that does not answer is named, with what it wrote to stderr.
    const callAll = (message, timeoutMs) => Promise.all(workers.map((w, k) => w.rpc.call(message, timeoutMs).catch((err) => {
      throw new Error(`client process ${k + 1} of ${workers.length}: ${err.message}; stderr: ${w.stderr().slice(-2000)}`)
    })))

    const started = now()
    const connects = await Promise.all(workers.map((w, k) => w.rpc.call({
      cmd: 'connect', urls, ...layout.shares[k], concurrency: stage.concurrency, timeoutMs: stage.connectTimeoutMs
    }, 30 * 60000)))
    const connected = sum(connects, (c) => c.ok)
    result.connect = { attempted: stage.connections, connected, seconds: (now() - started) / 1000, errors: sumCounts(connects.map((c) => c.errors)) }
    say(`${connected}/${stage.connections} connected through the SDK in ${result.connect.seconds.toFixed(1)} s`)
    if (connected !== stage.connections) throw new Error(`only ${connected} of ${stage.connections} connected: ${JSON.stringify(result.connect.errors)}`)

    // The last instance leaves (see stormPlan); the publisher posts to the
    // others throughout, as a load balancer would route the backends' requests.
    const victim = servers.length - 1
    const stay = urls.filter((_, k) => k !== victim)
    const publishing = publisher.rpc.call({
      cmd: 'single', urls: stay, token: serviceToken(), rate: stage.singleRate, seconds: stage.stormSeconds, users: stage.connections, seed: 99, track: true
    }, (stage.stormSeconds + 120) * 1000)
    await sleep(stage.stormAfterMs)
    const before = await statsAll(servers.filter((_, k) => k !== victim), { resetLoop: true })
    const clientCpuBefore = await callAll({ cmd: 'cpu' })
    const redisBefore = redis.cpuUs()
    const stormAt = now()
    const marked = await callAll({ cmd: 'storm', url: urls[victim], at: stormAt })
    const moved = sum(marked, (m) => m.moved)
    const stopped = servers[victim].stop()
    say(`SIGTERM to instance ${victim + 1}: ${moved} clients move`)
    let status = await callAll({ cmd: 'status' })
    while (sum(status, (s) => s.resumed) < moved && now() - stormAt < stage.stormDeadlineMs) {
      await sleep(100)
      status = await callAll({ cmd: 'status' })
    }
    const stormMs = now() - stormAt
    await callAll({ cmd: 'over' })
    const after = await statsAll(servers.filter((_, k) => k !== victim))
    const redisAfter = redis.cpuUs()
    const clientCpuAfter = await callAll({ cmd: 'cpu' })
    await stopped
    // What the instances that stayed answered to upgrades, by result.
    const results = {}
    for (const url of stay) {
      const text = await fetch(`${url}/metrics`).then((res) => res.text(), () => '')
      for (const [, label, value] of text.matchAll(/^ws_connections_total\{result="([a-z_]+)"\} (\d+)/gm)) results[label] = (results[label] ?? 0) + Number(value)
    }
    const resumed = sum(status, (s) => s.resumed)
    say(`${resumed}/${moved} moved clients resumed in ${(stormMs / 1000).toFixed(1)} s`)

    const sent = await publishing
    const accepted = new Set(sent.accepted)
    const deadline = Date.now() + stage.drainMs
    let stats = await callAll({ cmd: 'stats' })
    while (sum(stats, (s) => s.received) < accepted.size && Date.now() < deadline) {
      await sleep(100)
      stats = await callAll({ cmd: 'stats' })
    }
    const numbers = await callAll({ cmd: 'receivedNumbers' })
    for (const { numbers: list } of numbers) for (const n of list) accepted.delete(n)
    // Not received: lost if its user has a session now; else it waits in
    // history for the user's next connect.
    const away = new Set(numbers.flatMap((r) => r.notOpen))
    const userOf = new Map(sent.accepted.map((n, j) => [n, sent.acceptedUsers[j]]))
    const waiting = [...accepted].filter((n) => away.has(userOf.get(n))).length
    const latency = (key) => stats.reduce((h, s) => h.merge(Histogram.fromJSON(s.latency[key])), new Histogram()).summary()
    result.storm = {
      moved,
      resumed,
      unrecovered: sum(status, (s) => s.unrecovered),
      stormSeconds: stormMs / 1000,
      resumeMs: status.reduce((h, s) => h.merge(Histogram.fromJSON(s.times)), new Histogram()).summary(),
      slowestResumeMs: maxOf(status, (s) => s.slowestMs),
      open: sum(status, (s) => s.open),
      sent: sent.sent,
      accepted: sent.accepted.length,
      statuses: sent.statuses,
      lost: accepted.size - waiting,
      waitingForUser: waiting,
      usersWithoutSession: away.size,
      duplicates: sum(stats, (s) => s.duplicates),
      // Worst unmoved latency (ms) per 250 ms since SIGTERM.
      unmovedTimeline: mergeTimelines(stats.map((s) => s.timeline)),
      latencyMs: { before: latency('before'), unmoved: latency('unmoved'), moved: latency('moved'), after: latency('after'), unmovedFromTs: latency('unmovedFromTs') },
      publisherLatenessMs: Histogram.fromJSON(sent.lateness).summary(),
      serverCpuPercentOfCore: cpuDelta(before, after) / (stormMs * 1000) * 100,
      serverCpuUsPerMovedClient: cpuDelta(before, after) / moved,
      loopMaxMs: maxOf(after, (s) => s.loopMaxMs),
      redisCpuPercentOfCore: (redisAfter - redisBefore) / (stormMs * 1000) * 100,
      clientCpuPercentOfCore: (sum(clientCpuAfter, (c) => c.cpuUs) - sum(clientCpuBefore, (c) => c.cpuUs)) / (stormMs * 1000) * 100,
      clientLoopMaxMs: maxOf(clientCpuAfter, (c) => c.loopMaxMs),
      upgradeResults: results,
      clientErrors: sumCounts(stats.map((s) => s.errors)),
      clientCloseCodes: sumCounts(stats.map((s) => s.closeCodes))
    }
    say(`lost ${accepted.size - waiting} of ${sent.accepted.length} accepted (${waiting} more wait for users not reconnected); unmoved p99 ${result.storm.latencyMs.unmoved.p99.toFixed(1)} ms during the storm`)
    result.serversAlive = servers.every((s, k) => k === victim || s.alive())
    // What the instances logged at warn and above (LOG_LEVEL=warn): by message.
    result.storm.serverLogs = {}
    for (const server of servers) {
      for (const line of server.output().split('\n')) {
        const msg = /"msg":"([^"]*)"/.exec(line)?.[1]
        if (msg !== undefined) result.storm.serverLogs[msg] = (result.storm.serverLogs[msg] ?? 0) + 1
      }
    }
  } finally {
    await stopAll(workers, publisher, servers, redis)
  }
}

// ---------------------------------------------------------------- reporting

const fmt = (value, digits = 1) => {
  if (value === undefined || value === null || Number.isNaN(value)) return 'n/a'
  if (Math.abs(value) >= 10000) return Math.round(value).toLocaleString('en-US')
  return value.toFixed(digits)
}
const ratio = (a, b) => (a === undefined || b === undefined || !Number.isFinite(a / b) ? 'n/a' : `${(a / b).toFixed(2)}x`)

function rows (stage) {
  const single = `single-user ${fmt(stage.singleRate, 0)}/s latency p50 / p99 / max (ms)`
  return [
    { name: 'connections held', get: (r) => r.connect?.connected, digits: 0 },
    { name: 'RSS per idle connection after GC (KB)', get: (r) => r.memory?.rssPerConnectionKB, target: { ws: ['<=', 1.3] } },
    { name: 'heap per idle connection after GC (KB)', get: (r) => r.memory?.heapPerConnectionKB },
    { name: `idle CPU, ${fmt(stage.heartbeatMs / 1000)} s heartbeat (% of a core)`, get: (r) => r.idle?.cpuPercentOfCore, skip: stage.idleMs === 0 },
    { name: 'heartbeat CPU per ping (us)', get: (r) => r.idle?.cpuUsPerPing, skip: stage.idleMs === 0 },
    { name: 'handshake: server CPU per upgrade (us)', get: (r) => r.connect?.serverCpuUsPerHandshake, target: { ws: ['<=', 1.5] } },
    { name: 'handshake: Redis CPU per upgrade (us)', get: (r) => r.connect?.redisCpuUsPerHandshake },
    { name: 'handshakes per second', get: (r) => r.connect?.handshakesPerSec, digits: 0 },
    { name: 'handshake latency p50 / p99 (ms)', get: (r) => r.connect?.latencyMs.p99, show: (r) => `${fmt(r.connect?.latencyMs.p50)} / ${fmt(r.connect?.latencyMs.p99)}` },
    { name: `broadcast deliveries per second (${stage.broadcasts} x ${stage.connections})`, get: (r) => r.broadcast?.deliveriesPerSec, digits: 0, target: { ws: ['>=', 1.2], sio: ['>=', 1.8], nohist: ['>=', 0.9] }, skip: stage.broadcasts === 0 },
    { name: 'broadcast server CPU per delivery (us)', get: (r) => r.broadcast?.serverCpuUsPerDelivery, digits: 2, skip: stage.broadcasts === 0 },
    { name: 'broadcast server CPU per POST /alerts (us)', get: (r) => r.broadcast?.serverCpuUsPerAlert, digits: 0, skip: stage.broadcasts === 0 },
    { name: 'broadcast latency p50 / p99 / max (ms)', get: (r) => r.broadcast?.latencyMs.p99, show: (r) => latencyCell(r.broadcast?.latencyMs), skip: stage.broadcasts === 0 },
    { name: single, get: (r) => r.single?.latencyMs.p99, show: (r) => latencyCell(r.single?.latencyMs), skip: stage.singleRate === 0, absolute: ['p99', 50, 'ms'] },
    { name: 'single-user server CPU per POST /alerts, heartbeats included (us)', get: (r) => r.single?.serverCpuUsPerAlert, digits: 0, target: { nohist: ['+', 150] }, skip: stage.singleRate === 0, absolute: ['', 250, 'us'] },
    { name: 'single-user alerts lost', get: (r) => r.single?.lost, digits: 0, skip: stage.singleRate === 0 },
    { name: 'unexpected disconnects', get: (r) => r.unexpectedCloses, digits: 0 }
  ].filter((row) => row.skip !== true)
}

function latencyCell (l) {
  if (l === undefined) return 'n/a'
  return `${fmt(l.p50)} / ${fmt(l.p99)} / ${fmt(l.max, 0)}`
}

/** Targets: `[op, bound]` on the ratio gateway / reference, or `['+', us]` on the difference. */
const TARGET_NAMES = { ws: 'ws', sio: 'sio', nohist: 'history off' }

function verdict (row, gw, refs) {
  const parts = []
  if (row.target !== undefined) {
    for (const [ref, [op, bound]] of Object.entries(row.target)) {
      if (op === '+') {
        const extra = gw - refs[ref]
        if (!Number.isFinite(extra)) continue
        parts.push(`<= ${TARGET_NAMES[ref]} + ${bound}: ${extra <= bound ? 'met' : 'NOT met'} (${extra >= 0 ? '+' : ''}${extra.toFixed(0)})`)
        continue
      }
      const value = gw / refs[ref]
      if (!Number.isFinite(value)) continue
      const ok = op === '<=' ? value <= bound : value >= bound
      parts.push(`${op} ${bound}x ${TARGET_NAMES[ref]}: ${ok ? 'met' : 'NOT met'}`)
    }
  }
  if (row.absolute !== undefined && Number.isFinite(gw)) {
    const [what, bound, unit] = row.absolute
    parts.push(`${what === '' ? '' : `${what} `}<= ${bound} ${unit}: ${gw <= bound ? 'met' : 'NOT met'}`)
  }
  return parts.join('; ')
}

function table (stageResult) {
  const { stage, systems } = stageResult
  const present = Object.keys(SYSTEMS).filter((s) => systems[s] !== undefined)
  const header = ['', ...present.map((s) => SYSTEMS[s].label)]
  const hasGw = systems.gateway !== undefined
  const against = hasGw ? [['ws', 'gateway / ws'], ['sio', 'gateway / Socket.IO'], ['nohist', 'history on / off']].filter(([s]) => systems[s] !== undefined) : []
  for (const [, title] of against) header.push(title)
  if (hasGw) header.push('target')
  const lines = [header, header.map(() => '---')]
  for (const row of rows(stage)) {
    const line = [row.name]
    for (const s of present) line.push(row.show ? row.show(systems[s]) : fmt(row.get(systems[s]), row.digits ?? 1))
    if (hasGw) {
      const gw = row.get(systems.gateway)
      const refs = {}
      for (const [s] of against) {
        refs[s] = row.get(systems[s])
        line.push(ratio(gw, refs[s]))
      }
      line.push(verdict(row, gw, refs))
    }
    lines.push(line)
  }
  if (present.some((s) => systems[s].error !== undefined)) {
    lines.push(['run failed', ...present.map((s) => (systems[s].error ?? '').split('\n')[0].slice(0, 80) || 'no')])
  }
  return lines.map((cells) => `| ${cells.join(' | ')} |`).join('\n')
}

/** The storm stage's table: the gateway alone, each figure against its target. */
function stormTable (r) {
  const st = r.storm
  const check = (ok) => (ok ? 'met' : 'NOT met')
  const lines = [['', 'gateway', 'target'], ['---', '---', '---']]
  if (st === undefined) {
    lines.push(['run failed', (r.error ?? '').split('\n')[0].slice(0, 120), ''])
  } else {
    const resumeMs = st.moved === st.resumed ? st.slowestResumeMs : Infinity
    lines.push(
      ['clients moved (the SIGTERMed instance\'s)', fmt(st.moved, 0), ''],
      ['moved clients resumed, not recovered', `${fmt(st.resumed, 0)}, ${fmt(st.unrecovered, 0)}`, `all, 0: ${check(st.moved === st.resumed && st.unrecovered === 0)}`],
      ['time from SIGTERM to resumed, p50 / p99 / max (s)', `${fmt(st.resumeMs.p50 / 1000, 2)} / ${fmt(st.resumeMs.p99 / 1000, 2)} / ${fmt(st.slowestResumeMs / 1000, 2)}`, `max <= 15 s: ${check(resumeMs <= 15000)}`],
      ['alerts accepted, lost, duplicates', `${fmt(st.accepted, 0)}, ${fmt(st.lost, 0)}, ${fmt(st.duplicates, 0)}`, `0 lost: ${check(st.lost === 0)}`],
      ['alerts not delivered yet: their user has no session at the end (they wait in history)', `${fmt(st.waitingForUser, 0)} (${fmt(st.usersWithoutSession, 0)} users)`, ''],
      ['all clients\' latency before the storm, p50 / p99 / max (ms)', latencyCell(st.latencyMs.before), ''],
      ['unmoved clients\' latency during the storm, p50 / p99 / max (ms)', latencyCell(st.latencyMs.unmoved), `p99 <= 100 ms: ${check(st.latencyMs.unmoved.p99 <= 100)}`],
      ['moved clients\' latency during the storm, replays included, p50 / p99 / max (ms)', latencyCell(st.latencyMs.moved), ''],
      ['servers that stayed: CPU during the storm (% of a core), per moved client (us)', `${fmt(st.serverCpuPercentOfCore)}, ${fmt(st.serverCpuUsPerMovedClient, 0)}`, ''],
      ['during the storm: Redis, client processes (% of a core)', `${fmt(st.redisCpuPercentOfCore)}, ${fmt(st.clientCpuPercentOfCore)}`, ''],
      ['during the storm: longest event-loop stall, servers that stayed, client processes (ms)', `${fmt(st.loopMaxMs, 0)}, ${fmt(st.clientLoopMaxMs, 0)}`, ''],
      ['publisher lateness p99 (ms)', fmt(st.publisherLatenessMs.p99), '']
    )
  }
  return lines.map((cells) => `| ${cells.join(' | ')} |`).join('\n')
}

function machine () {
  const limit = spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).stdout.trim()
  return {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    memoryGiB: Math.round(os.totalmem() / 2 ** 30 * 10) / 10,
    openFiles: limit,
    kernel: os.release(),
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    gatewayCommit: gatewayCommit()
  }
}

// ---------------------------------------------------------------- main

async function main () {
  const opts = parseArgs(process.argv.slice(2))
  const profile = PROFILES[opts.profile]
  const hardStop = setTimeout(() => {
    log(`time limit of ${profile.limitMinutes} min reached: stopping`)
    killAll()
    process.exit(2)
  }, profile.limitMinutes * 60000)
  hardStop.unref()

  if (opts.systems.some((s) => SYSTEMS[s].gateway === true) && opts.gatewayRuntime === 'dist' && opts.gatewayScript === undefined) ensureBuilt(opts.build)
  if (opts.prof !== undefined) mkdirSync(opts.prof, { recursive: true })
  if (opts.heapSnapshot !== undefined) mkdirSync(opts.heapSnapshot, { recursive: true })

  const meta = { ...machine(), profile: opts.profile, gatewayRuntime: opts.gatewayRuntime, argv: process.argv.slice(2) }
  process.stdout.write(`alert-gateway bench --${opts.profile}, ${meta.date}\n`)
  process.stdout.write(`machine: ${meta.cpus} x ${meta.cpuModel}, ${meta.memoryGiB} GiB, node ${meta.node}, ulimit -n ${meta.openFiles}, load ${meta.loadAverageAtStart.join(' ')}; gateway ${meta.gatewayCommit} (${opts.gatewayRuntime === 'ts' ? 'from source, tap loader' : 'compiled'})\n`)

  const out = opts.out ?? path.join(BENCH, 'results', `${opts.profile}-${meta.date.replace(/[:.]/g, '-')}.json`)
  mkdirSync(path.dirname(out), { recursive: true })
  const stages = []
  // Written after every system, so a long run that fails late keeps what it measured.
  const save = () => writeFileSync(out, JSON.stringify({ meta, stages }, null, 2))
  let failures = 0
  const selected = profile.stages.filter((s) => opts.stage === undefined || s.name === opts.stage)
  if (selected.length === 0) throw new Error(`no stage named ${opts.stage}`)
  for (const [stageIndex, partial] of selected.entries()) {
    const stage = { ...STAGE_DEFAULTS, ...partial, ...opts.overrides }
    const stageResult = { stage, systems: {} }
    stages.push(stageResult)
    for (const [systemIndex, system] of opts.systems.entries()) {
      if (stage.skipSystems?.includes(system)) continue
      // The storm is the gateway's own deploy: resume is what it measures.
      if (stage.storm === true && system !== 'gateway') continue
      const result = { system, label: SYSTEMS[system].label }
      stageResult.systems[system] = result
      try {
        await (stage.storm === true ? runStorm : runSystem)(result, stage, stageIndex, systemIndex, opts)
      } catch (err) {
        // One system failing does not lose the others' figures.
        failures++
        result.error = err?.message ?? String(err)
        log(`${stage.name} ${system} FAILED: ${err?.stack ?? err}`)
      }
      save()
    }
    const layout = plan(stage, stageIndex, 0)
    if (stage.storm === true) {
      if (stageResult.systems.gateway === undefined) continue
      process.stdout.write(`\n### ${stage.name}: reconnect storm, ${stage.connections.toLocaleString('en-US')} SDK clients over ${stage.instances} gateway instances, ` +
        `one instance SIGTERMed ${stage.stormAfterMs / 1000} s into ${stage.singleRate} single-user alerts/s for ${stage.stormSeconds} s\n\n`)
      process.stdout.write(stormTable(stageResult.systems.gateway) + '\n')
      continue
    }
    process.stdout.write(`\n### ${stage.name}: ${stage.connections.toLocaleString('en-US')} connections over ${stage.instances} instances of each system, ` +
      `${layout.workers} client processes, ${layout.addressCount} source addresses, heartbeat ${stage.heartbeatMs / 1000} s\n\n`)
    process.stdout.write(table(stageResult) + '\n')
  }
  meta.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
  process.stdout.write(`\nload average at end: ${meta.loadAverageAtEnd.join(' ')}\n`)
  save()
  log(`results written to ${path.relative(process.cwd(), out)}`)
  if (failures > 0) throw new Error(`${failures} system run(s) failed (see above)`)
  clearTimeout(hardStop)
}

main().then(() => process.exit(0), (err) => {
  log(err?.stack ?? String(err))
  killAll()
  process.exit(1)
})
