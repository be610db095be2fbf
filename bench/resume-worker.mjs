/**
 * A client process of resume-cost.mjs: connects its users to the gateway,
 * plainly or resuming with `since_all` / `since_user`, remembers where each
 * user stands (`welcome.pos`, then `resumed.pos`), and counts what was
 * replayed. Driven over IPC.
 *
 * A plain connection is done at `welcome`; a resuming one at `resumed`,
 * after its replayed alerts. The frames are parsed (this is the client's
 * CPU, not the server's).
 */
import { now } from './lib/clock.mjs'
import WebSocket from 'ws'
import { Histogram } from './lib/histogram.mjs'
import { serve } from './lib/ipc.mjs'
import { inLanes } from './lib/processes.mjs'
import { userToken } from './lib/tokens.mjs'

/** Open sockets, for close(). */
const sockets = new Set()
/** userId -> { all, user }: the newest positions the user was told. */
const positions = new Map()
const tokens = new Map()

function tokenOf (userId) {
  let token = tokens.get(userId)
  if (token === undefined) {
    token = userToken(userId)
    tokens.set(userId, token)
  }
  return token
}

/** Opens one connection; resolves once the server is done with the handshake (and the replay). */
function open (base, userId, resume, localAddress, timeoutMs) {
  const pos = positions.get(userId)
  let url = `${base}/ws?token=${tokenOf(userId)}`
  if (resume && pos !== undefined) url += `&since_all=${encodeURIComponent(pos.all)}&since_user=${encodeURIComponent(pos.user)}`
  const started = now()
  return new Promise((resolve) => {
    let settled = false
    let replayed = 0
    const ws = new WebSocket(url, { localAddress, perMessageDeflate: false, handshakeTimeout: timeoutMs })
    const timer = setTimeout(() => finish({ ok: false, error: 'timeout' }), timeoutMs)
    function finish (result) {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (result.ok) sockets.add(ws)
      else ws.terminate()
      resolve({ ...result, replayed, ms: now() - started })
    }
    ws.on('unexpected-response', (req, res) => {
      req.destroy()
      finish({ ok: false, error: `http ${res.statusCode}` })
    })
    ws.on('error', (err) => finish({ ok: false, error: err.code ?? err.message }))
    ws.on('close', (code) => {
      sockets.delete(ws)
      finish({ ok: false, error: `closed ${code}` })
    })
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString())
      if (frame.type === 'alert') {
        if (frame.replay === true) replayed++
      } else if (frame.type === 'welcome') {
        // History off: no positions, nothing to resume.
        if (frame.pos === undefined) return finish(resume ? { ok: false, error: 'welcome without pos' } : { ok: true, recovered: null })
        if (!resume || pos === undefined) {
          positions.set(userId, frame.pos)
          finish({ ok: true, recovered: null })
        }
      } else if (frame.type === 'resumed') {
        positions.set(userId, frame.pos)
        finish({ ok: true, recovered: frame.recovered, replayedReported: frame.replayed })
      }
    })
  })
}

async function connect ({ url, from, count, addresses, concurrency, timeoutMs, resume }) {
  const latency = new Histogram()
  const errors = {}
  const replayed = { sum: 0, min: Infinity, max: 0 }
  let ok = 0
  let notRecovered = 0
  await inLanes(count, concurrency, (k) => open(url, `u${from + k}`, resume, addresses[k % addresses.length], timeoutMs), (r) => {
    if (r.ok) {
      ok++
      latency.record(r.ms)
      replayed.sum += r.replayed
      replayed.min = Math.min(replayed.min, r.replayed)
      replayed.max = Math.max(replayed.max, r.replayed)
      if (r.recovered === false) notRecovered++
    } else {
      errors[r.error] = (errors[r.error] ?? 0) + 1
    }
  })
  return { ok, errors, notRecovered, latency: latency.toJSON(), replayed: { ...replayed, min: ok === 0 ? 0 : replayed.min } }
}

serve({
  connect,
  /** Closes every socket and waits until each is closed (at most 10 s). */
  close: async () => {
    const closing = [...sockets].map((ws) => new Promise((resolve) => {
      ws.once('close', resolve)
      ws.close(1000)
    }))
    await Promise.race([Promise.all(closing), new Promise((resolve) => setTimeout(resolve, 10000))])
    for (const ws of sockets) ws.terminate()
    sockets.clear()
    return {}
  }
})
