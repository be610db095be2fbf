#!/usr/bin/env node
/**
 * Gateway CPU per `POST /alerts`, alone: one compiled gateway instance with
 * its own redis-server, a service token, alerts to a user with no session
 * (so only the publish path is measured, not a delivery).
 *
 *   node bench/publish-cost.mjs [--mode=open|closed] [--count=N] [--rate=R] [--script=FILE]
 *
 * - closed: 8 keep-alive connections, each POSTing as soon as the previous
 *   answer came: concurrent requests share event-loop turns and Redis writes.
 * - open: one POST every 1/rate s whatever the answers, as in the single-user
 *   phase of run.mjs: at low rates every request pays its own turns and writes.
 *
 * CPU is read from /proc for the gateway and Redis, after a warm-up of 3,000
 * closed-loop POSTs. Build the gateway first (`npm run bench` does, or
 * `tsc -p tsconfig.build.json --outDir node_modules/.cache/alert-gateway-bench/dist`).
 */
import http from 'node:http'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { freePort, sleep, spawned, startRedis, startServer } from './lib/processes.mjs'
import { BENCH_SECRET, serviceToken } from './lib/tokens.mjs'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const arg = (name, fallback) => process.argv.find((a) => a.startsWith(`--${name}=`))?.slice(name.length + 3) ?? fallback
const mode = arg('mode', 'open')
const count = Number(arg('count', mode === 'open' ? 5000 : 20000))
const rate = Number(arg('rate', 500))
const script = path.resolve(arg('script', path.join(root, 'node_modules/.cache/alert-gateway-bench/dist/src/server.js')))

const redis = await startRedis()
const port = await freePort()
const server = await startServer({
  name: 'gateway',
  script,
  port,
  env: {
    PATH: process.env.PATH,
    NODE_ENV: 'development',
    HOST: '127.0.0.1',
    PORT: String(port),
    JWT_SECRET: BENCH_SECRET,
    REDIS_URL: redis.url,
    LOG_LEVEL: 'warn',
    REST_RATE_LIMIT_PER_MINUTE: '100000000',
    PUBLISH_RATE_LIMIT_PER_MINUTE: '100000000'
  }
})
const agent = new http.Agent({ keepAlive: true, maxSockets: 8 })
const token = serviceToken()
const body = JSON.stringify({ target: { userId: 'nobody' }, severity: 'info', title: 'bench' })

function post () {
  return new Promise((resolve, reject) => {
    const req = http.request(`${server.baseUrl}/alerts`, {
      method: 'POST',
      agent,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
    }, (res) => {
      res.resume()
      res.on('end', () => res.statusCode === 202 ? resolve() : reject(new Error(`status ${res.statusCode}`)))
    })
    req.on('error', reject)
    req.end(body)
  })
}

async function closedLoop (n) {
  let started = 0
  await Promise.all(Array.from({ length: 8 }, async () => {
    while (started++ < n) await post()
  }))
}

async function openLoop (n, perSecond) {
  const start = performance.now()
  const pending = []
  for (let k = 0; k < n; k++) {
    const wait = start + k * 1000 / perSecond - performance.now()
    if (wait > 0) await sleep(wait)
    pending.push(post())
  }
  await Promise.all(pending)
}

try {
  await closedLoop(3000)
  const before = { gateway: (await server.stats()).cpuUs, redis: redis.cpuUs(), at: performance.now() }
  if (mode === 'open') await openLoop(count, rate)
  else await closedLoop(count)
  const seconds = (performance.now() - before.at) / 1000
  const gatewayUs = ((await server.stats()).cpuUs - before.gateway) / count
  const redisUs = (redis.cpuUs() - before.redis) / count
  console.log(`${mode} loop, ${count} POST /alerts in ${seconds.toFixed(1)} s (${(count / seconds).toFixed(0)}/s): ` +
    `gateway ${gatewayUs.toFixed(0)} us, Redis ${redisUs.toFixed(0)} us of CPU per alert`)
} finally {
  await Promise.all([...spawned].map((child) => child.kill('SIGKILL')))
  await server.stop()
  await redis.stop()
}
