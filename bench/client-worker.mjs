/**
 * A client process: opens its share of the connections (from its own
 * 127.x source addresses), keeps them idle (answering heartbeats), and
 * records the latency of every alert it receives. Driven over IPC by
 * run.mjs. One `ws` client implementation speaks to all three systems; for
 * Socket.IO it speaks the Engine.IO 4 / Socket.IO 5 wire protocol directly
 * (open packet, CONNECT with `auth`, ping/pong, EVENT), so no system pays
 * for a heavier client library than the others.
 */
import { now, wallNow } from './lib/clock.mjs'
import WebSocket from 'ws'
import { Histogram } from './lib/histogram.mjs'
import { Timeline } from './lib/timeline.mjs'
import { serve } from './lib/ipc.mjs'
import { connectInLanes } from './lib/processes.mjs'
import { userToken } from './lib/tokens.mjs'

const TS_KEY = Buffer.from('"ts":')
const SCHED_KEY = Buffer.from('"bench_s":')
const WELCOME = Buffer.from('{"type":"welcome"')

/** Open sockets, for close(). */
const sockets = new Set()
/** Sockets this worker closed on purpose: their 'close' is expected. */
const dropped = new WeakSet()
let received = 0
let firstRecvAt = 0
let lastRecvAt = 0
let latencyTs = new Histogram()
let latencySched = new Histogram()
/** Worst latency (due time to receipt) per 250 ms of due time, from the first alert's due time since the last reset. */
let timeline = new Timeline()
let unexpectedClosed = 0
/** Close codes of the unexpected closes. */
const closeCodes = {}
let waiter = null

/** The number after `key` in a JSON text, without parsing the rest. */
function numberAfter (buf, key) {
  const at = buf.indexOf(key)
  if (at === -1) return NaN
  let end = at + key.length
  while (end < buf.length) {
    const c = buf[end]
    if ((c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x65 || c === 0x45 || c === 0x2b) end++
    else break
  }
  return Number(buf.toString('latin1', at + key.length, end))
}

function onAlert (buf) {
  const t = now()
  received++
  if (firstRecvAt === 0) firstRecvAt = t
  lastRecvAt = t
  const ts = numberAfter(buf, TS_KEY)
  // `ts` is the server's wall clock, `bench_s` the publisher's monotonic one.
  if (ts > 0) latencyTs.record(wallNow() - ts)
  const sched = numberAfter(buf, SCHED_KEY)
  if (sched > 0) {
    latencySched.record(t - sched)
    timeline.record(sched, t - sched)
  }
  if (waiter !== null && received >= waiter.count) {
    const w = waiter
    waiter = null
    clearTimeout(w.timer)
    w.resolve()
  }
}

function urlFor (system, base, token) {
  if (system === 'sio') return `${base}/socket.io/?EIO=4&transport=websocket`
  return `${base}/ws?token=${token}`
}

/** Opens one authenticated connection; resolves when the server can deliver to it. */
function open (system, base, userId, localAddress, timeoutMs) {
  const token = userToken(userId)
  const started = now()
  return new Promise((resolve) => {
    let ready = false
    let settled = false
    const ws = new WebSocket(urlFor(system, base, token), {
      localAddress, perMessageDeflate: false, handshakeTimeout: timeoutMs
    })
    const timer = setTimeout(() => finish(false, 'timeout'), timeoutMs)
    function finish (ok, error) {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (ok) {
        ready = true
        sockets.add(ws)
      } else {
        ws.terminate()
      }
      resolve({ ok, error, ms: now() - started })
    }
    ws.on('unexpected-response', (req, res) => {
      req.destroy()
      finish(false, `http ${res.statusCode}`)
    })
    ws.on('error', (err) => finish(false, err.code ?? err.message))
    ws.on('close', (code) => {
      sockets.delete(ws)
      if (ready && !dropped.has(ws)) {
        unexpectedClosed++
        closeCodes[code] = (closeCodes[code] ?? 0) + 1
      }
      finish(false, `closed ${code}`)
    })
    if (system === 'ws') {
      ws.on('open', () => finish(true))
      ws.on('message', onAlert)
    } else if (system === 'gateway') {
      ws.on('message', (data) => {
        if (ready) onAlert(data)
        else if (data.subarray(0, WELCOME.length).equals(WELCOME)) finish(true)
      })
    } else {
      ws.on('message', (data) => {
        const type = data[0]
        if (type === 0x32) { // '2' ping
          ws.send('3')
        } else if (type === 0x34) { // '4' message: Socket.IO packet follows
          const packet = data[1]
          if (packet === 0x32) onAlert(data) // '2' EVENT
          else if (packet === 0x30) finish(true) // '0' CONNECT accepted
          else if (packet === 0x34) finish(false, 'connect_error') // '4' CONNECT_ERROR
        } else if (type === 0x30) { // '0' Engine.IO open: connect the main namespace
          ws.send(`40${JSON.stringify({ token })}`)
        }
      })
    }
  })
}

async function connect ({ system, urls, from, count, addresses, concurrency, timeoutMs }) {
  const started = now()
  const result = await connectInLanes(count, concurrency, (k) => {
    const i = from + k
    const localAddress = addresses.length === 0 ? undefined : addresses[k % addresses.length]
    return open(system, urls[i % urls.length], `u${i}`, localAddress, timeoutMs)
  })
  return { ...result, ms: now() - started, startedAt: started }
}

function stats () {
  return {
    received,
    firstRecvAt,
    lastRecvAt,
    open: sockets.size,
    unexpectedClosed,
    closeCodes,
    latencyTs: latencyTs.toJSON(),
    latencySched: latencySched.toJSON(),
    timeline: timeline.toJSON(),
    cpuUs: process.cpuUsage().user + process.cpuUsage().system,
    rss: process.memoryUsage().rss
  }
}

serve({
  connect,
  stats: async () => stats(),
  reset: async () => {
    received = 0
    firstRecvAt = 0
    lastRecvAt = 0
    latencyTs = new Histogram()
    latencySched = new Histogram()
    timeline = new Timeline()
    return {}
  },
  /** Resolves once `count` alerts arrived since the last reset, or at the timeout. */
  await: async ({ count, timeoutMs }) => {
    if (received < count) {
      await new Promise((resolve) => {
        waiter = { count, resolve, timer: setTimeout(() => { waiter = null; resolve() }, timeoutMs) }
      })
    }
    return stats()
  },
  close: async () => {
    for (const ws of sockets) {
      dropped.add(ws)
      ws.terminate()
    }
    sockets.clear()
    return {}
  }
})
