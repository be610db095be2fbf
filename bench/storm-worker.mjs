/**
 * A client process of the reconnect-storm stage. Its users connect with the
 * project's own client SDK, as shipped (`client/`: reconnect with full-jitter
 * backoff within the attempt limit, resume from the stored positions,
 * duplicates dropped), over `ws`. Driven over IPC by run.mjs.
 *
 * Each socket is bound to one of this process's source addresses, at most
 * 1,000 users on each (run.mjs's STORM_PER_ADDRESS): the kernel searches a
 * free port for a connect among the sockets of its address, and with 5,000
 * per address that search stalled these processes for seconds in a storm.
 *
 * A deploy takes one instance out of rotation and SIGTERMs it: `storm` tells
 * this process which instance left, as a load balancer would stop routing to
 * it. The SDK's reconnects to that instance's address are then routed to the
 * instances still in rotation (round robin), as a load balancer would.
 *
 * Every alert carries `data.n` (its number) and `data.bench_s` (when it was
 * due, on the bench's one clock): lost = accepted numbers never received.
 * Latency is recorded apart for clients that stayed (unmoved) and for those
 * that moved, before, during and after the storm.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks'
import WebSocket from 'ws'
import { now, wallNow } from './lib/clock.mjs'
import { Histogram } from './lib/histogram.mjs'
import { Timeline } from './lib/timeline.mjs'
import { serve } from './lib/ipc.mjs'
import { connectInLanes } from './lib/processes.mjs'
import { userToken } from './lib/tokens.mjs'

// client/index.js of the bench's build, or client/index.ts under tap's loader (smoke).
const sdk = await import(process.env.STORM_SDK)

/** Instances out of rotation (host:port), and those in it. */
const out = new Set()
let rotation = []
let turn = 0

/** The address a dial goes to: its own, unless that instance left the rotation. */
function route (url) {
  const parsed = new URL(url)
  if (!out.has(parsed.host) || rotation.length === 0) return url
  parsed.host = rotation[turn++ % rotation.length]
  return parsed.toString()
}

/** A WebSocket class for the SDK: `ws`, from one source address, routed. */
function socketClass (localAddress) {
  return class RoutedSocket extends WebSocket {
    constructor (url) {
      super(route(url), { localAddress, perMessageDeflate: false })
    }
  }
}

/** { client, host, moved, resumedMs, recovered } per user of this process. */
const users = []
/** Numbers of the alerts received (each targets one user: one receipt each). */
let received = new Set()
let duplicates = 0
let stormAt = null
let stormOver = false
const latency = { before: new Histogram(), unmoved: new Histogram(), moved: new Histogram(), after: new Histogram(), unmovedFromTs: new Histogram() }
/** Worst unmoved latency per 250 ms of the storm (index: time since SIGTERM), to see when a spike happened. */
const timeline = new Timeline()
const errors = {}
const loop = monitorEventLoopDelay({ resolution: 10 })
loop.enable()
const closeCodes = {}

function onAlert (user, alert) {
  const t = now()
  const n = alert.data?.n
  if (typeof n !== 'number') return
  if (received.has(n)) duplicates++
  else received.add(n)
  const due = alert.data.bench_s
  if (typeof due !== 'number') return
  if (stormAt === null) latency.before.record(t - due)
  else if (stormOver) latency.after.record(t - due)
  else if (user.moved) latency.moved.record(t - due)
  else {
    latency.unmoved.record(t - due)
    timeline.record(t, t - due)
    // From the alert's `ts` (set when the server took the POST): the part
    // after the publish request was handled.
    latency.unmovedFromTs.record(wallNow() - alert.ts)
  }
}

function onResumed (user, result) {
  if (!user.moved || user.resumedMs !== null || stormAt === null) return
  user.resumedMs = now() - stormAt
  user.recovered = result.recovered
}

/** Starts one user's client; resolves at its first welcome, or false at the timeout. */
function start (userId, url, SocketClass, timeoutMs) {
  const user = { id: userId, client: null, host: new URL(url).host, moved: false, resumedMs: null, recovered: null }
  users.push(user)
  const started = now()
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve({ ok: false, error: 'timeout' }), timeoutMs)
    user.client = sdk.connect({
      url,
      getToken: () => userToken(userId),
      WebSocket: SocketClass,
      onAlert: (alert) => onAlert(user, alert),
      onResumed: (result) => onResumed(user, result),
      onError: (error) => { errors[error.kind] = (errors[error.kind] ?? 0) + 1 },
      onState: (change) => {
        if (change.state === 'open') {
          clearTimeout(timer)
          resolve({ ok: true, ms: now() - started })
        } else if (change.code !== undefined && change.state !== 'open') {
          closeCodes[change.code] = (closeCodes[change.code] ?? 0) + 1
        }
      }
    })
  })
}

/** Connects `users` (numbers: user `u<i>` on instance i mod K), spread over `addresses`. */
async function connect ({ urls, users: ids, addresses, concurrency, timeoutMs }) {
  rotation = urls.map((u) => new URL(u).host)
  const classes = addresses.map(socketClass)
  return connectInLanes(ids.length, concurrency, (k) => {
    const i = ids[k]
    const url = `${urls[i % urls.length].replace(/^http/, 'ws')}/ws`
    return start(`u${i}`, url, classes[k % classes.length], timeoutMs)
  })
}

/** The instance `url` leaves the rotation now; its users are the moved ones. */
function storm ({ url, at }) {
  const host = new URL(url).host
  out.add(host)
  rotation = rotation.filter((h) => h !== host)
  stormAt = at
  timeline.start(at)
  let moved = 0
  for (const user of users) {
    if (user.host !== host) continue
    user.moved = true
    moved++
  }
  return { moved }
}

function status () {
  let moved = 0
  let resumed = 0
  let unrecovered = 0
  const times = new Histogram()
  let slowestMs = 0
  for (const user of users) {
    if (!user.moved) continue
    moved++
    if (user.resumedMs === null) continue
    resumed++
    if (user.recovered !== true) unrecovered++
    times.record(user.resumedMs)
    slowestMs = Math.max(slowestMs, user.resumedMs)
  }
  const open = users.filter((u) => u.client.state === 'open').length
  return { moved, resumed, unrecovered, slowestMs, open, users: users.length, times: times.toJSON() }
}

serve({
  connect,
  storm: async (msg) => storm(msg),
  status: async () => status(),
  /** CPU so far, and the longest event-loop stall since the last call (a late alert may be this process's). */
  cpu: async () => {
    const { user, system } = process.cpuUsage()
    const loopMaxMs = loop.max / 1e6
    loop.reset()
    return { cpuUs: user + system, loopMaxMs }
  },
  /** Latency recorded from now on counts as after the storm. */
  over: async () => {
    stormOver = true
    return {}
  },
  stats: async () => ({
    received: received.size,
    duplicates,
    errors,
    closeCodes,
    timeline: timeline.toJSON(),
    latency: Object.fromEntries(Object.entries(latency).map(([k, h]) => [k, h.toJSON()]))
  }),
  /** The numbers of the alerts received, and the users without an open session, for the loss count. */
  receivedNumbers: async () => ({
    numbers: [...received],
    notOpen: users.filter((u) => u.client.state !== 'open').map((u) => Number(u.id.slice(1)))
  }),
  reset: async () => {
    received = new Set()
    duplicates = 0
    return {}
  },
  close: async () => {
    for (const user of users) user.client.close()
    return {}
  }
})
