#!/usr/bin/env node
/**
 * What one WebSocket upgrade and one close cost, alone, for the gateway and
 * the bare ws reference in one run: server CPU, Redis CPU, and the Redis
 * work behind them (commands as Redis counts them, scripts' own included;
 * scripts called; reads, i.e. the client's writes as Redis took them in).
 * The Redis counts do not depend on the box's load: they show a change to
 * the handshake's Redis steps exactly where CPU figures drown in noise.
 *
 *   node bench/handshake-cost.mjs [--systems=ws,memory,baseline,gateway] [--count=3000]
 *     [--concurrency=200] [--rounds=3] [--warmup=3000] [--alloc] [--prof=DIR] [--no-pin] [--script=FILE]
 *     [--baseline=FILE] [--build|--no-build] [--limit-minutes=5] [--out=FILE]
 *
 * Each system is one instance with its own redis-server on a free port.
 * With two or more CPUs the servers run pinned to the last one (taskset),
 * Redis and the clients on the others, so the clients' work does not land
 * on the measured core. After a warm-up of 3,000 upgrades and closes per
 * system, each round opens `count` connections of fresh users, at most
 * `concurrency` handshakes at a time (the client waits for the gateway's
 * welcome frame, for ws for the open), then closes them all; the systems'
 * order rotates from round to round. Server CPU is the process's own
 * process.cpuUsage (bench/probe.mjs), Redis CPU is read from /proc, the
 * Redis counts from INFO. A close is counted once Redis has been quiet for
 * 200 ms (releases are not awaited by the server). Reported: medians per
 * upgrade and per close over the rounds.
 *
 * `--alloc`: one more round per system with V8's sampling heap profiler on
 * during the upgrades (bench/probe.mjs): bytes allocated per upgrade, by
 * package. The sampling costs CPU, so that round is not in the CPU figures.
 * `--baseline=FILE`: another compiled gateway (an older commit), measured as
 * system `baseline` in the same rounds. System `memory` is the gateway
 * without Redis (the in-process bus): what the upgrade costs beyond bare ws
 * when no Redis step is taken. `--script=src/server.ts` runs the
 * gateway from source (tap's TypeScript loader), as the smoke test does.
 */
import { execFileSync } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { WebSocket } from 'ws'
import { GATEWAY_SCRIPT, ROOT, arg, buildMode, ensureBuilt, flag, gatewayEnv, median, runMeta, serverEnv } from './lib/gateway.mjs'
import { cpuProfArgs, freePort, inLanes, sleep, startRedis, startServer, stopOnExit } from './lib/processes.mjs'
import { commandStats, commandStatsDelta, redisCli } from './lib/redis-cluster.mjs'
import { userToken } from './lib/tokens.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))
const count = Number(arg('count', 3000))
const concurrency = Number(arg('concurrency', 200))
const rounds = Number(arg('rounds', 3))
const warmup = Number(arg('warmup', 3000))
const limitMinutes = Number(arg('limit-minutes', 5))
const systems = arg('systems', 'ws,gateway').split(',')
const script = path.resolve(arg('script', GATEWAY_SCRIPT))
/** A `.ts` script runs from source through tap's TypeScript loader (the smoke test: no build). */
const fromSource = script.endsWith('.ts')
const baseline = arg('baseline') === undefined ? undefined : path.resolve(arg('baseline'))
const alloc = flag('alloc')
const prof = arg('prof') === undefined ? undefined : path.resolve(arg('prof'))
const cpus = os.cpus().length
const pin = !flag('no-pin') && cpus >= 2
const LABELS = { ws: 'ws (bare)', memory: 'gateway, in-process bus', baseline: 'gateway, baseline build', gateway: 'gateway' }
for (const s of systems) if (!(s in LABELS)) throw new Error(`unknown system ${s}`)
if (systems.includes('baseline') !== (baseline !== undefined)) throw new Error('system baseline goes with --baseline=FILE')

const log = (line) => process.stderr.write(`[handshake-cost] ${line}\n`)
stopOnExit(limitMinutes, log)

/** Pins a process and all its threads to `cpuList` (taskset syntax); without taskset, says so once. */
let pinned = pin
function pinTo (pid, cpuList) {
  if (!pinned) return
  try {
    execFileSync('taskset', ['-a', '-p', '-c', cpuList, String(pid)], { stdio: 'ignore' })
  } catch (err) {
    pinned = false
    log(`not pinned (taskset: ${err.message})`)
  }
}

/** One numeric field of an INFO answer. */
function infoField (info, name) {
  return Number(new RegExp(`^${name}:(\\d+)`, 'm').exec(info)?.[1] ?? 0)
}

/** One field of `INFO stats` (redis-cli: a connection and an INFO of its own, taken out below). */
async function statsField (port, name) {
  return infoField(await redisCli(port, 'INFO', 'stats'), name)
}

/** What Redis has done so far: commands (scripts' own included), reads, calls by command. */
async function redisCounts (port) {
  const stats = await redisCli(port, 'INFO', 'stats')
  return { commands: infoField(stats, 'total_commands_processed'), reads: infoField(stats, 'total_reads_processed'), calls: await commandStats(port) }
}

/** Between two redisCounts() answers, per `n`; the INFO calls themselves are left out. */
function perOne (before, after, n) {
  const delta = commandStatsDelta(before.calls, after.calls)
  const infos = delta.info?.calls ?? 0
  const calls = {}
  for (const [name, { calls: c }] of Object.entries(delta)) if (name !== 'info') calls[name] = c / n
  return {
    commands: (after.commands - before.commands - infos) / n,
    scripts: ((delta.evalsha?.calls ?? 0) + (delta.eval?.calls ?? 0)) / n,
    reads: (after.reads - before.reads - infos) / n,
    calls
  }
}

/** `--prof=DIR`: a V8 CPU profile of each server, warm-up included (bench/profile-summary.mjs reads them). */
function profArgs (name) {
  return cpuProfArgs(prof, `${name}.cpuprofile`)
}

async function startSystem (name) {
  const redis = await startRedis()
  const port = await freePort()
  const server = name === 'ws'
    ? await startServer({ name, script: path.join(BENCH, 'references/ws-server.mjs'), nodeArgs: profArgs(name), graceMs: 8000, port, cwd: ROOT, env: { ...serverEnv({ port, redisUrl: redis.url, heartbeatMs: 30000 }), BENCH_EXIT_ON_SIGTERM: '1' } })
    : await startServer({
      name,
      script: name === 'baseline' ? baseline : script,
      nodeArgs: [...fromSource && name !== 'baseline' ? ['--import=@tapjs/typescript/import'] : [], ...profArgs(name)],
      port,
      cwd: ROOT,
      graceMs: 8000,
      // `memory`: the same build without REDIS_URL, its Redis left idle: what the upgrade costs without the Redis steps.
      env: { ...gatewayEnv({ port, redisUrl: name === 'memory' ? undefined : redis.url, heartbeatMs: 30000 }), ...(fromSource ? { TS_NODE_TRANSPILE_ONLY: '1' } : {}) }
    })
  pinTo(server.pid, String(cpus - 1))
  pinTo(redis.pid, `0-${cpus - 2}`)
  return { name, redis, server, url: `ws://127.0.0.1:${port}/ws`, gateway: name !== 'ws', nextUser: 0 }
}

/** Opens `n` connections of fresh users; resolves to the open sockets. */
async function connectAll (system, n) {
  const sockets = []
  const errors = {}
  await inLanes(n, concurrency, () => new Promise((resolve) => {
    const ws = new WebSocket(`${system.url}?token=${userToken(`hc-${system.nextUser++}`)}`)
    // The gateway's upgrade is complete with its welcome, which leaves with the 101.
    ws.once(system.gateway ? 'message' : 'open', () => { sockets.push(ws); resolve() })
    ws.once('error', (err) => {
      errors[err.message] = (errors[err.message] ?? 0) + 1
      resolve()
    })
  }))
  if (sockets.length !== n) throw new Error(`${system.name}: ${n - sockets.length} of ${n} connections failed: ${JSON.stringify(errors)}`)
  return sockets
}

/** Closes every socket, then waits until the server's Redis work for them is done. */
async function closeAll (system, sockets) {
  await Promise.all(sockets.map((ws) => new Promise((resolve) => {
    ws.once('close', resolve)
    ws.close()
  })))
  // Quiet: 200 ms apart, nothing but our own INFO.
  let last = -1
  const deadline = Date.now() + 5000
  for (;;) {
    const commands = await statsField(system.redis.port, 'total_commands_processed')
    if (commands === last + 1 || Date.now() > deadline) return
    last = commands
    await sleep(200)
  }
}

async function measure (system, n, sampleAllocations = false) {
  const stats = async () => ({ cpu: (await system.server.stats()).cpuUs, redisCpu: system.redis.cpuUs(), redis: await redisCounts(system.redis.port) })
  const before = await stats()
  if (sampleAllocations) await system.server.allocations('start')
  const sockets = await connectAll(system, n)
  const sampled = sampleAllocations ? await system.server.allocations('stop') : null
  const opened = await stats()
  await closeAll(system, sockets)
  const closed = await stats()
  return {
    system: system.name,
    upgrade: { serverUs: (opened.cpu - before.cpu) / n, redisUs: (opened.redisCpu - before.redisCpu) / n, ...perOne(before.redis, opened.redis, n) },
    close: { serverUs: (closed.cpu - opened.cpu) / n, redisUs: (closed.redisCpu - opened.redisCpu) / n, ...perOne(opened.redis, closed.redis, n) },
    allocated: sampled === null ? null : { bytes: sampled.bytes / n, byArea: Object.fromEntries(Object.entries(sampled.byArea).map(([k, v]) => [k, v / n])) }
  }
}

const fmt = (v, digits = 0) => Number.isFinite(v) ? v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits }) : 'n/a'

const started = []
try {
  if (systems.includes('gateway') && !fromSource) ensureBuilt(buildMode(), log)
  const meta = runMeta('handshake-cost', { count, concurrency, rounds, warmup, systems })
  pinTo(process.pid, `0-${cpus - 2}`)
  process.stdout.write(`${count} upgrades of fresh users and their closes per system and round, at most ${concurrency} at a time, ${rounds} rounds${pinned ? `; servers pinned to CPU ${cpus - 1}, Redis and clients on the others` : ''}\n`)
  for (const name of systems) started.push(await startSystem(name))
  for (const system of started) {
    for (let done = 0; done < warmup; done += count) {
      const n = Math.min(count, warmup - done)
      await closeAll(system, await connectAll(system, n))
    }
  }
  const results = []
  for (let round = 0; round < rounds; round++) {
    const order = started.map((_, k) => started[(k + round) % started.length])
    for (const system of order) {
      const r = await measure(system, count)
      results.push({ round, ...r })
      log(`round ${round + 1}: ${system.name}: ${fmt(r.upgrade.serverUs)} us per upgrade, ${fmt(r.close.serverUs)} us per close`)
    }
  }
  const allocations = {}
  if (alloc) for (const system of started) allocations[system.name] = (await measure(system, count, true)).allocated

  const of = (name, pick) => median(results.filter((r) => r.system === name).map(pick))
  const ws = systems.includes('ws')
  const rows = [
    ['server CPU per upgrade (us)', (r) => r.upgrade.serverUs, 0],
    ['server CPU per close (us)', (r) => r.close.serverUs, 0],
    ['Redis CPU per upgrade (us)', (r) => r.upgrade.redisUs, 0],
    ['Redis CPU per close (us)', (r) => r.close.redisUs, 0],
    ['Redis commands per upgrade (scripts\' own included)', (r) => r.upgrade.commands, 2],
    ['scripts per upgrade', (r) => r.upgrade.scripts, 2],
    ['Redis reads per upgrade (client writes taken in)', (r) => r.upgrade.reads, 2],
    ['Redis commands per close', (r) => r.close.commands, 2],
    ['scripts per close', (r) => r.close.scripts, 2],
    ['Redis reads per close', (r) => r.close.reads, 2]
  ]
  let table = `\n| median of ${rounds} | ${systems.map((s) => LABELS[s]).join(' | ')} |${ws ? systems.filter((s) => s !== 'ws').map((s) => ` ${s} / ws |`).join('') : ''}\n`
  table += `| --- |${systems.map(() => ' --- |').join('')}${ws ? systems.filter((s) => s !== 'ws').map(() => ' --- |').join('') : ''}\n`
  for (const [label, pick, digits] of rows) {
    const values = systems.map((s) => of(s, pick))
    const ratio = (s) => of(s, pick) / of('ws', pick)
    const ratios = systems.filter((s) => s !== 'ws' && ws).map((s) => digits === 0 && Number.isFinite(ratio(s)) && of('ws', pick) > 0 ? `${fmt(ratio(s), 2)}x` : '')
    table += `| ${label} | ${values.map((v) => fmt(v, digits)).join(' | ')} |${ratios.map((r) => ` ${r} |`).join('')}\n`
  }
  if (alloc) {
    table += `| bytes allocated per upgrade (KB, sampled) | ${systems.map((s) => fmt((allocations[s]?.bytes ?? NaN) / 1024, 1)).join(' | ')} |${ws ? systems.filter((s) => s !== 'ws').map((s) => ` ${fmt(allocations[s].bytes / allocations.ws.bytes, 2)}x |`).join('') : ''}\n`
  }
  process.stdout.write(table)
  for (const name of systems.filter((s) => s !== 'ws')) {
    const calls = {}
    for (const r of results.filter((x) => x.system === name)) for (const [k, v] of Object.entries(r.upgrade.calls)) (calls[k] ??= []).push(v)
    process.stdout.write('\n')
    if (name !== 'memory') process.stdout.write(`${LABELS[name]}, Redis commands per upgrade by name: ${Object.entries(calls).map(([k, v]) => `${k} ${fmt(median(v), 2)}`).join(', ')}\n`)
    if (alloc) {
      const areas = Object.entries(allocations[name].byArea).sort((a, b) => b[1] - a[1]).slice(0, 8)
      process.stdout.write(`${LABELS[name]}, bytes allocated per upgrade by package: ${areas.map(([k, v]) => `${k} ${fmt(v / 1024, 1)} KB`).join(', ')}\n`)
    }
  }
  const out = arg('out')
  if (out !== undefined) {
    mkdirSync(path.dirname(path.resolve(out)), { recursive: true })
    writeFileSync(out, JSON.stringify({ meta: { ...meta, pinned }, results, allocations }, null, 2))
  }
} finally {
  for (const system of started) {
    await system.server.stop()
    await system.redis.stop()
  }
}
