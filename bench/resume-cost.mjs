#!/usr/bin/env node
/**
 * Server CPU per resume: what a reconnect with `since_all` / `since_user`
 * costs the gateway when the client missed alerts, against plain reconnects
 * (no `since_*`) of the same clients on the same gateway in the same run.
 *
 *   node bench/resume-cost.mjs [--clients=1000] [--missed=100] [--rounds=3]
 *     [--modes=plain,none,user,all,off] [--concurrency=50] [--workers=W]
 *     [--limit-minutes=5] [--script=FILE] [--build|--no-build] [--out=FILE]
 *
 * One compiled gateway (history on, defaults) with a private redis-server
 * on a free port, and a second one with history off (HISTORY_MAX_ENTRIES=0,
 * its own redis-server) for the `off` baseline. Clients u0..u<N-1> connect
 * once to learn their positions and disconnect. Then, per round and per
 * mode, in an order rotated from round to round:
 *
 * - the alerts the clients miss are published while they are away (not
 *   measured): `user`/`plain`: `--missed` alerts to every client's own
 *   stream (`userIds`, 1,000 users per POST); `all`: `--missed` broadcasts;
 *   `none`, `off`: nothing;
 * - every client reconnects (measured): `plain` and `off` without `since_*`,
 *   done at `welcome`; `none`, `user`, `all` with both positions the client
 *   was last given, done at `resumed` after the replay;
 * - every client disconnects, and the gateway settles (not measured).
 *
 * Gateway CPU (process.cpuUsage through bench/probe.mjs) and Redis CPU
 * (/proc) over the reconnect phase, divided by the reconnects. The cost of
 * a resume is its mode minus `plain` of the same round; the median over the
 * rounds is reported. A warm-up round of every mode runs first. Loopback
 * only, at most 15,000 sockets per client process, a hard time limit.
 */
import http from 'node:http'
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { now } from './lib/clock.mjs'
import { fileURLToPath } from 'node:url'
import { Histogram } from './lib/histogram.mjs'
import { forkWorker } from './lib/ipc.mjs'
import { GATEWAY_SCRIPT, HISTORY_OFF, ROOT, gatewayCommit, baseEnv, ensureBuilt, gatewayEnv, median } from './lib/gateway.mjs'
import { freePort, inLanes, postAlert, sleep, startRedis, startServer, stopOnExit } from './lib/processes.mjs'
import { serviceToken } from './lib/tokens.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))
const PER_WORKER = 15000
const ADDRESSES_PER_WORKER = 8
const MODES = ['plain', 'none', 'user', 'all', 'off']
const TARGET_US = 2000

const arg = (name, fallback) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback
const flag = (name) => process.argv.includes(`--${name}`)
const clients = Number(arg('clients', 1000))
const missed = Number(arg('missed', 100))
const rounds = Number(arg('rounds', 3))
const concurrency = Number(arg('concurrency', 50))
const workerCount = Number(arg('workers', Math.max(1, Math.ceil(clients / PER_WORKER))))
const limitMinutes = Number(arg('limit-minutes', 5))
const modes = arg('modes', MODES.join(',')).split(',')
const script = path.resolve(arg('script', GATEWAY_SCRIPT))
const settleMs = Number(arg('settle-ms', 500))
for (const mode of modes) if (!MODES.includes(mode)) throw new Error(`unknown mode ${mode}`)
if (!modes.includes('plain')) throw new Error('--modes must include plain (the baseline)')
if (clients / workerCount > PER_WORKER) throw new Error(`at most ${PER_WORKER} clients per worker process`)
if (missed > 300) throw new Error('--missed above HISTORY_MAX_ENTRIES (300) is a gap, not a resume')

const log = (line) => process.stderr.write(`[resume-cost] ${line}\n`)

const { children, killAll } = stopOnExit(limitMinutes, log)

// ------------------------------------------------------------- publishing

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 })
const token = serviceToken()

const post = (baseUrl, alert) => postAlert(baseUrl, agent, token, JSON.stringify(alert))

/** What the clients miss while away, by mode (not measured). */
async function publishMissed (baseUrl, mode) {
  const jobs = []
  if (mode === 'all') {
    for (let n = 0; n < missed; n++) jobs.push(() => post(baseUrl, { target: { all: true }, severity: 'info', title: 'missed broadcast', data: { n } }))
  } else if (mode === 'user' || mode === 'plain') {
    for (let n = 0; n < missed; n++) {
      for (let from = 0; from < clients; from += 1000) {
        const userIds = Array.from({ length: Math.min(1000, clients - from) }, (_, i) => `u${from + i}`)
        jobs.push(() => post(baseUrl, { target: { userIds }, severity: 'warning', title: 'missed alert', data: { n } }))
      }
    }
  }
  await inLanes(jobs.length, 4, (k) => jobs[k]())
}

// ------------------------------------------------------------- main

async function main () {
  ensureBuilt(flag('build') ? 'always' : flag('no-build') ? 'never' : 'auto', log)
  const meta = {
    date: new Date().toISOString(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100),
    gatewayCommit: gatewayCommit(),
    clients,
    missed,
    rounds,
    modes,
    concurrency,
    workers: workerCount
  }
  process.stdout.write(`resume-cost ${meta.date}: ${meta.cpus} x ${meta.cpuModel}, node ${meta.node}, load ${meta.loadAverageAtStart.join(' ')}; gateway ${meta.gatewayCommit}\n`)
  process.stdout.write(`${clients} clients over ${workerCount} client process(es), ${missed} missed alerts, ${rounds} rounds, ${concurrency} handshakes in flight per process\n`)

  const start = async (name, extra) => {
    const redis = await startRedis()
    const port = await freePort()
    const server = await startServer({ name, script, port, cwd: ROOT, graceMs: 3000, env: gatewayEnv({ port, redisUrl: redis.url, heartbeatMs: 30000, extra }) })
    return { redis, server }
  }
  const on = await start('gateway', {})
  const off = modes.includes('off') ? await start('gateway, history off', HISTORY_OFF) : null
  const workers = []
  try {
    for (let w = 0; w < workerCount; w++) {
      const worker = forkWorker(path.join(BENCH, 'resume-worker.mjs'), [], baseEnv())
      children.add(worker.child)
      workers.push(worker)
    }
    const shares = workers.map((_, w) => {
      const from = Math.floor(clients * w / workerCount)
      const to = Math.floor(clients * (w + 1) / workerCount)
      const addresses = Array.from({ length: ADDRESSES_PER_WORKER }, (_, a) => `127.0.${200 + w}.${a + 1}`)
      return { from, count: to - from, addresses }
    })

    const reconnect = async (mode) => {
      const target = mode === 'off' ? off : on
      const before = { cpu: (await target.server.stats()).cpuUs, redis: target.redis.cpuUs(), at: now() }
      const results = await Promise.all(workers.map((w, k) => w.rpc.call({
        cmd: 'connect', url: target.server.baseUrl, ...shares[k], concurrency, timeoutMs: 30000, resume: !['plain', 'off'].includes(mode)
      }, 10 * 60000)))
      const after = { cpu: (await target.server.stats()).cpuUs, redis: target.redis.cpuUs(), at: now() }
      const ok = results.reduce((n, r) => n + r.ok, 0)
      const errors = {}
      for (const r of results) for (const [k, v] of Object.entries(r.errors)) errors[k] = (errors[k] ?? 0) + v
      const replayed = results.reduce((n, r) => n + r.replayed.sum, 0)
      return {
        mode,
        ok,
        errors,
        seconds: (after.at - before.at) / 1000,
        gatewayUs: (after.cpu - before.cpu) / ok,
        redisUs: (after.redis - before.redis) / ok,
        replayedPerClient: replayed / ok,
        replayedMin: Math.min(...results.map((r) => r.replayed.min)),
        replayedMax: Math.max(...results.map((r) => r.replayed.max)),
        notRecovered: results.reduce((n, r) => n + r.notRecovered, 0),
        latencyMs: results.reduce((h, r) => h.merge(Histogram.fromJSON(r.latency)), new Histogram()).summary()
      }
    }
    const closeAll = async () => {
      await Promise.all(workers.map((w) => w.rpc.call({ cmd: 'close' }, 60000)))
      await sleep(settleMs)
    }
    const check = (r) => {
      const expected = ['user', 'all'].includes(r.mode) ? missed : 0
      const problems = []
      if (r.ok !== clients) problems.push(`${clients - r.ok} failed ${JSON.stringify(r.errors)}`)
      if (r.replayedMin !== expected || r.replayedMax !== expected) problems.push(`replayed ${r.replayedMin}..${r.replayedMax}, expected ${expected}`)
      if (r.notRecovered > 0) problems.push(`${r.notRecovered} not recovered`)
      if (problems.length > 0) throw new Error(`${r.mode}: ${problems.join('; ')}`)
    }

    // Every client learns its positions (and connects once to the other gateway).
    const first = await reconnect('plain')
    check(first)
    await closeAll()
    log(`${clients} clients connected once in ${first.seconds.toFixed(1)} s`)
    if (off !== null) {
      check(await reconnect('off'))
      await closeAll()
    }

    const measured = []
    for (let round = 0; round <= rounds; round++) {
      // Round 0 is the warm-up; later rounds rotate the order of the modes.
      const order = modes.map((_, i) => modes[(i + round) % modes.length])
      for (const mode of order) {
        await publishMissed(on.server.baseUrl, mode)
        await sleep(settleMs)
        const r = await reconnect(mode)
        check(r)
        await closeAll()
        if (round > 0) measured.push({ round, ...r })
        log(`${round === 0 ? 'warm-up' : `round ${round}`} ${mode}: ${r.gatewayUs.toFixed(0)} us gateway, ${r.redisUs.toFixed(0)} us Redis per reconnect, ${r.replayedPerClient} replayed each, ${r.seconds.toFixed(1)} s`)
      }
    }

    // Per mode: medians over the rounds, and the extra over `plain` of the same round.
    const summary = {}
    for (const mode of modes) {
      const runs = measured.filter((r) => r.mode === mode)
      const extra = (pick) => median(runs.map((r) => pick(r) - pick(measured.find((p) => p.round === r.round && p.mode === 'plain'))))
      summary[mode] = {
        gatewayUs: median(runs.map((r) => r.gatewayUs)),
        gatewayUsRange: [Math.min(...runs.map((r) => r.gatewayUs)), Math.max(...runs.map((r) => r.gatewayUs))],
        redisUs: median(runs.map((r) => r.redisUs)),
        gatewayExtraUs: extra((r) => r.gatewayUs),
        redisExtraUs: extra((r) => r.redisUs),
        replayedPerClient: runs[0]?.replayedPerClient,
        latencyP50Ms: median(runs.map((r) => r.latencyMs.p50)),
        latencyP99Ms: median(runs.map((r) => r.latencyMs.p99))
      }
    }
    const label = {
      plain: 'plain reconnect (baseline)',
      none: 'resume, nothing missed',
      user: `resume, ${missed} missed in the user stream`,
      all: `resume, ${missed} missed broadcasts`,
      off: 'plain reconnect, history off (other gateway)'
    }
    const f = (v) => Number.isFinite(v) ? v.toFixed(0) : 'n/a'
    const lines = [
      '| reconnect | gateway CPU per reconnect (us) | extra over plain: gateway / gateway + Redis (us) | Redis CPU per reconnect (us) | replayed per client | latency p50 / p99 (ms) | target: resume <= 2 ms |',
      '| --- | --- | --- | --- | --- | --- | --- |'
    ]
    for (const mode of modes) {
      const s = summary[mode]
      const both = s.gatewayExtraUs + s.redisExtraUs
      const target = ['user', 'all'].includes(mode)
        ? `gateway: ${s.gatewayExtraUs <= TARGET_US ? 'met' : 'NOT met'}; with Redis: ${both <= TARGET_US ? 'met' : 'NOT met'}`
        : ''
      lines.push(`| ${label[mode]} | ${f(s.gatewayUs)} (${f(s.gatewayUsRange[0])}-${f(s.gatewayUsRange[1])}) | ${mode === 'plain' ? '' : `${f(s.gatewayExtraUs)} / ${f(both)}`} | ${f(s.redisUs)} | ${s.replayedPerClient} | ${s.latencyP50Ms.toFixed(1)} / ${s.latencyP99Ms.toFixed(1)} | ${target} |`)
    }
    meta.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
    process.stdout.write(`\n${lines.join('\n')}\n\nload average at end: ${meta.loadAverageAtEnd.join(' ')}\n`)
    const out = path.resolve(arg('out', path.join(BENCH, 'results', `resume-cost-${meta.date.replace(/[:.]/g, '-')}.json`)))
    mkdirSync(path.dirname(out), { recursive: true })
    writeFileSync(out, JSON.stringify({ meta, summary, measured }, null, 2))
    log(`results written to ${path.relative(process.cwd(), out)}`)
  } finally {
    await Promise.allSettled(workers.map((w) => w.rpc.call({ cmd: 'close' }, 15000)))
    for (const w of workers) w.child.kill('SIGKILL')
    for (const system of [on, off]) {
      if (system === null) continue
      await system.server.stop()
      await system.redis.stop()
    }
  }
}

main().then(() => process.exit(0), (err) => {
  log(err?.stack ?? String(err))
  killAll()
  process.exit(1)
})
