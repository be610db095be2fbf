#!/usr/bin/env node
/**
 * Server CPU per `POST /alerts`, alone, for several systems in one run: the
 * gateway with history on (`gateway`), the same build again with history
 * off (`nohist`, HISTORY_MAX_ENTRIES=0) and the bare ws reference (`ws`).
 * Each system is one instance with its own redis-server on a free port;
 * alerts go to a user with no session (or to everyone, with nobody
 * connected), so only the publish path is measured, not a delivery.
 *
 *   node bench/publish-cost.mjs [--mode=open|closed] [--target=user|all|users]
 *     [--users=1000] [--systems=ws,nohist,gateway] [--rounds=3] [--count=N] [--rate=R]
 *     [--script=FILE] [--build|--no-build] [--limit-minutes=5] [--out=FILE] [--prof=DIR]
 *     [--baseline=FILE]
 *
 * - closed: 8 keep-alive connections, each POSTing as soon as the previous
 *   answer came: concurrent requests share event-loop turns and Redis writes.
 * - open: one POST every 1/rate s whatever the answers, as in the single-user
 *   phase of run.mjs: at low rates every request pays its own turns and writes.
 * - `--target=users`: each POST is one `userIds` alert to `--users` distinct
 *   users with no session (gateway systems only: the references have no
 *   userIds); reported per POST and per user.
 *
 * After a warm-up of 3,000 closed-loop POSTs per system, each round measures
 * `count` POSTs on every system, in an order rotated from round to round, so
 * a drift in the box's load touches all systems alike. Server CPU is the
 * process's own process.cpuUsage (bench/probe.mjs), Redis CPU is read from
 * /proc. Reported: the median per POST over the rounds, and the history's
 * cost = gateway - nohist of the same round (median over the rounds).
 */
import http from 'node:http'
import { mkdirSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { GATEWAY_SCRIPT, HISTORY_OFF, ROOT, gatewayCommit, ensureBuilt, gatewayEnv, median, serverEnv } from './lib/gateway.mjs'
import { cpuProfArgs, freePort, inLanes, postAlert, sleep, startRedis, startServer, stopOnExit } from './lib/processes.mjs'
import { serviceToken } from './lib/tokens.mjs'

const BENCH = fileURLToPath(new URL('.', import.meta.url))
const TARGET_US = 150
const arg = (name, fallback) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback
const flag = (name) => process.argv.includes(`--${name}`)
const mode = arg('mode', 'open')
const target = arg('target', 'user')
const users = Number(arg('users', 1000))
const many = target === 'users'
const count = Number(arg('count', many ? 100 : mode === 'open' ? 2500 : 10000))
const rate = Number(arg('rate', many ? 10 : 500))
const rounds = Number(arg('rounds', 3))
const limitMinutes = Number(arg('limit-minutes', 5))
const systems = arg('systems', many ? 'nohist,gateway' : 'ws,nohist,gateway').split(',')
const script = path.resolve(arg('script', GATEWAY_SCRIPT))
/** `--baseline=FILE`: another compiled gateway (an older commit), measured as system `baseline` in the same rounds. */
const baseline = arg('baseline') === undefined ? undefined : path.resolve(arg('baseline'))
/** `--prof=DIR`: a V8 CPU profile of every server, written when it stops (warm-up included). */
const profDir = arg('prof') === undefined ? undefined : path.resolve(arg('prof'))
if (!['open', 'closed'].includes(mode)) throw new Error('--mode is open or closed')
if (!['user', 'all', 'users'].includes(target)) throw new Error('--target is user, all or users')
if (many && systems.includes('ws')) throw new Error('--target=users: the bare ws reference has no userIds')
const LABELS = { ws: 'ws (bare)', nohist: 'gateway, history off', baseline: 'gateway, baseline build', gateway: 'gateway' }
for (const s of systems) if (!(s in LABELS)) throw new Error(`unknown system ${s}`)
if (systems.includes('baseline') !== (baseline !== undefined)) throw new Error('system baseline goes with --baseline=FILE')

const log = (line) => process.stderr.write(`[publish-cost] ${line}\n`)
stopOnExit(limitMinutes, log)

const token = serviceToken()
const body = JSON.stringify({
  target: target === 'all' ? { all: true } : many ? { userIds: Array.from({ length: users }, (_, i) => `nobody-${i}`) } : { userId: 'nobody' },
  severity: 'info',
  title: 'bench'
})

const post = (baseUrl, agent) => postAlert(baseUrl, agent, token, body)

const closedLoop = (system, n) => inLanes(n, 8, () => post(system.server.baseUrl, system.agent))

async function openLoop (system, n, perSecond) {
  const start = performance.now()
  const pending = []
  for (let k = 0; k < n; k++) {
    const wait = start + k * 1000 / perSecond - performance.now()
    if (wait > 0) await sleep(wait)
    pending.push(post(system.server.baseUrl, system.agent))
  }
  await Promise.all(pending)
}

async function startSystem (name) {
  const redis = await startRedis()
  const port = await freePort()
  const nodeArgs = cpuProfArgs(profDir, `${name}-${port}.cpuprofile`)
  const server = name === 'ws'
    ? await startServer({ name, nodeArgs, script: path.join(BENCH, 'references/ws-server.mjs'), port, cwd: ROOT, graceMs: profDir === undefined ? 0 : 5000, env: { ...serverEnv({ port, redisUrl: redis.url }), BENCH_EXIT_ON_SIGTERM: '1' } })
    : await startServer({ name, nodeArgs, script: name === 'baseline' ? baseline : script, port, cwd: ROOT, graceMs: profDir === undefined ? 3000 : 10000, env: gatewayEnv({ port, redisUrl: redis.url, extra: name === 'nohist' ? HISTORY_OFF : {} }) })
  return { name, redis, server, agent: new http.Agent({ keepAlive: true, maxSockets: 8 }) }
}

async function measure (system) {
  const before = { cpu: (await system.server.stats()).cpuUs, redis: system.redis.cpuUs(), at: performance.now() }
  if (mode === 'open') await openLoop(system, count, rate)
  else await closedLoop(system, count)
  const seconds = (performance.now() - before.at) / 1000
  return {
    system: system.name,
    perSecond: count / seconds,
    serverUs: ((await system.server.stats()).cpuUs - before.cpu) / count,
    redisUs: (system.redis.cpuUs() - before.redis) / count
  }
}

const started = []
try {
  if (profDir !== undefined) mkdirSync(profDir, { recursive: true })
  if (systems.some((s) => s !== 'ws')) ensureBuilt(flag('build') ? 'always' : flag('no-build') ? 'never' : 'auto', log)
  const meta = { date: new Date().toISOString(), node: process.version, cpus: os.cpus().length, cpuModel: os.cpus()[0]?.model ?? 'unknown', loadAverageAtStart: os.loadavg().map((l) => Math.round(l * 100) / 100), gatewayCommit: gatewayCommit(), mode, target, count, rate, rounds, systems }
  process.stdout.write(`publish-cost ${meta.date}: ${meta.cpus} x ${meta.cpuModel}, node ${meta.node}, load ${meta.loadAverageAtStart.join(' ')}; gateway ${meta.gatewayCommit}\n`)
  process.stdout.write(`${mode} loop${mode === 'open' ? ` at ${rate}/s` : ', 8 connections'}, ${count} POST /alerts per system and round (target ${target === 'all' ? 'all, nobody connected' : many ? `userIds of ${users} users with no session` : 'a user with no session'}), ${rounds} rounds\n`)
  for (const name of systems) started.push(await startSystem(name))
  for (const system of started) await closedLoop(system, many ? 30 : 3000)
  const measured = []
  for (let round = 1; round <= rounds; round++) {
    for (let i = 0; i < started.length; i++) {
      const system = started[(i + round - 1) % started.length]
      const r = { round, ...await measure(system) }
      measured.push(r)
      log(`round ${round} ${system.name}: ${r.serverUs.toFixed(0)} us server, ${r.redisUs.toFixed(0)} us Redis per POST (${r.perSecond.toFixed(0)}/s)`)
    }
  }
  const of = (name) => measured.filter((r) => r.system === name)
  const summary = {}
  for (const name of systems) {
    const runs = of(name)
    summary[name] = {
      serverUs: median(runs.map((r) => r.serverUs)),
      serverUsRange: [Math.min(...runs.map((r) => r.serverUs)), Math.max(...runs.map((r) => r.serverUs))],
      redisUs: median(runs.map((r) => r.redisUs)),
      perSecond: median(runs.map((r) => r.perSecond))
    }
  }
  const f = (v) => Number.isFinite(v) ? v.toFixed(0) : 'n/a'
  const lines = ['| system | server CPU per POST (us) | Redis CPU per POST (us) | POST/s |', '| --- | --- | --- | --- |']
  if (many) {
    lines[0] += ' server CPU per user (us) | server + Redis CPU per user (us) |'
    lines[1] += ' --- | --- |'
  }
  for (const name of systems) {
    const s = summary[name]
    const perUser = many ? ` ${(s.serverUs / users).toFixed(1)} | ${((s.serverUs + s.redisUs) / users).toFixed(1)} |` : ''
    lines.push(`| ${LABELS[name]} | ${f(s.serverUs)} (${f(s.serverUsRange[0])}-${f(s.serverUsRange[1])}) | ${f(s.redisUs)} | ${f(s.perSecond)} |${perUser}`)
  }
  if (summary.gateway !== undefined && summary.nohist !== undefined && !many) {
    const paired = (pick) => median(of('gateway').map((g) => pick(g) - pick(of('nohist').find((n) => n.round === g.round))))
    summary.historyCost = { serverUs: paired((r) => r.serverUs), redisUs: paired((r) => r.redisUs) }
    const { serverUs, redisUs } = summary.historyCost
    lines.push('', `history's cost per POST (gateway - history off, same round, median): ${f(serverUs)} us gateway CPU, ${f(redisUs)} us Redis CPU, ${f(serverUs + redisUs)} us together. ` +
      `Target <= ${TARGET_US} us: gateway ${serverUs <= TARGET_US ? 'met' : 'NOT met'}, with Redis ${serverUs + redisUs <= TARGET_US ? 'met' : 'NOT met'}`)
  }
  if (summary.gateway !== undefined && summary.ws !== undefined) {
    lines.push(`gateway / bare ws per POST: ${(summary.gateway.serverUs / summary.ws.serverUs).toFixed(2)}x server CPU`)
  }
  if (summary.gateway !== undefined && summary.baseline !== undefined) {
    lines.push(`gateway / baseline build per POST: ${(summary.gateway.serverUs / summary.baseline.serverUs).toFixed(2)}x server CPU, ${(summary.gateway.redisUs / summary.baseline.redisUs).toFixed(2)}x Redis CPU`)
  }
  meta.loadAverageAtEnd = os.loadavg().map((l) => Math.round(l * 100) / 100)
  process.stdout.write(`\n${lines.join('\n')}\n\nload average at end: ${meta.loadAverageAtEnd.join(' ')}\n`)
  const out = path.resolve(arg('out', path.join(BENCH, 'results', `publish-cost-${mode}-${target}-${meta.date.replace(/[:.]/g, '-')}.json`)))
  mkdirSync(path.dirname(out), { recursive: true })
  writeFileSync(out, JSON.stringify({ meta, summary, measured }, null, 2))
} finally {
  for (const system of started) system.agent.destroy()
  await Promise.allSettled(started.map((s) => s.server.stop()))
  await Promise.allSettled(started.map((s) => s.redis.stop()))
}
process.exit(0)
