/**
 * The publisher process: POSTs alerts to the servers under test exactly as
 * a backend would (`POST /alerts`, service token, keep-alive connections),
 * round-robin over the instances.
 *
 * - broadcast: `count` alerts to everyone, at most `concurrency` in flight.
 * - single: open loop. Alert k is due at start + k/rate and carries that
 *   due time (`data.bench_s`); it is sent when due whatever happened to the
 *   earlier ones, and clients measure latency from the due time, so a stall
 *   anywhere (publisher, server, Redis) counts in full (no coordinated
 *   omission).
 */
import http from 'node:http'
import { now } from './lib/clock.mjs'
import { Histogram } from './lib/histogram.mjs'
import { serve } from './lib/ipc.mjs'

const agents = new Map()

function agentFor (url) {
  let agent = agents.get(url)
  if (agent === undefined) {
    agent = new http.Agent({ keepAlive: true, maxSockets: 128 })
    agents.set(url, agent)
  }
  return agent
}

/**
 * POSTs one alert; resolves to the status code, or an error name. A request
 * on a kept-alive socket the server closed meanwhile is retried once.
 */
async function post (baseUrl, token, alert) {
  const body = JSON.stringify(alert)
  const status = await attempt(baseUrl, token, body)
  return status === 'ECONNRESET' || status === 'EPIPE' ? attempt(baseUrl, token, body) : status
}

function attempt (baseUrl, token, body) {
  return new Promise((resolve) => {
    const req = http.request(`${baseUrl}/alerts`, {
      method: 'POST',
      agent: agentFor(baseUrl),
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
    }, (res) => {
      res.resume()
      res.on('end', () => resolve(String(res.statusCode)))
    })
    req.on('error', (err) => resolve(err.code ?? 'error'))
    req.end(body)
  })
}

function tally (statuses, status) {
  statuses[status] = (statuses[status] ?? 0) + 1
}

async function broadcast ({ urls, token, count, concurrency }) {
  const statuses = {}
  const firstSendAt = now()
  let next = 0
  async function lane () {
    while (next < count) {
      const n = next++
      tally(statuses, await post(urls[n % urls.length], token, {
        target: { all: true }, severity: 'info', title: 'bench broadcast', data: { bench_s: now(), n }
      }))
    }
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, lane))
  return { firstSendAt, lastAckAt: now(), statuses }
}

/** mulberry32: a small seeded generator, so runs target the same users. */
function random (seed) {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/**
 * `track`: also answer the numbers of the alerts answered 202 and their
 * users (`accepted`, `acceptedUsers`), so the caller can count the accepted
 * alerts no client received.
 */
async function single ({ urls, token, rate, seconds, users, userBase = 0, seed, track = false }) {
  const total = Math.round(rate * seconds)
  const period = 1000 / rate
  const pick = random(seed ?? 1)
  const statuses = {}
  const lateness = new Histogram()
  const inFlight = new Set()
  const accepted = []
  const acceptedUsers = []
  const start = now() + 20
  let k = 0
  await new Promise((resolve) => {
    function tick () {
      const t = now()
      while (k < total && start + k * period <= t) {
        const due = start + k * period
        lateness.record(t - due)
        const user = userBase + Math.floor(pick() * users)
        const userId = `u${user}`
        const n = k
        const sent = post(urls[k % urls.length], token, {
          target: { userId }, severity: 'warning', title: 'bench single', data: { bench_s: due, n }
        }).then((status) => {
          tally(statuses, status)
          if (track && status === '202') {
            accepted.push(n)
            acceptedUsers.push(user)
          }
          inFlight.delete(sent)
        })
        inFlight.add(sent)
        k++
      }
      if (k < total) setTimeout(tick, Math.max(0, Math.min(1, start + k * period - now())))
      else resolve()
    }
    tick()
  })
  const sentAt = now()
  await Promise.all(inFlight)
  return { sent: total, durationMs: sentAt - start, lastAckAt: now(), statuses, lateness: lateness.toJSON(), ...(track ? { accepted, acceptedUsers } : {}) }
}

serve({ broadcast, single })
