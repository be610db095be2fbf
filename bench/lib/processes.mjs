import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import http from 'node:http'
import { connect, createServer } from 'node:net'
import { fileURLToPath } from 'node:url'
import { Histogram } from './histogram.mjs'
import { Rpc } from './ipc.mjs'

const PROBE = fileURLToPath(new URL('../probe.mjs', import.meta.url))
const CLOCK_TICK_US = 10000 // USER_HZ is 100 on Linux

/** Every process started here that is still running, for a last-resort kill. */
export const spawned = new Set()

function tracked (child) {
  spawned.add(child)
  child.once('exit', () => spawned.delete(child))
  return child
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort () {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** user+system CPU of any process, from /proc (10 ms resolution). */
export function procCpuUs (pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_US
  } catch {
    return NaN
  }
}

function getStatus (url) {
  return new Promise((resolve) => {
    const req = http.get(url, { agent: false }, (res) => {
      res.resume()
      resolve(res.statusCode)
    })
    req.on('error', () => resolve(0))
    req.setTimeout(2000, () => req.destroy())
  })
}

async function stopChild (child, exited, graceMs) {
  if (child.exitCode !== null || child.signalCode !== null) return
  if (graceMs > 0) {
    child.kill('SIGTERM')
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
    await exited
    clearTimeout(timer)
    return
  }
  child.kill('SIGKILL')
  await exited
}

/**
 * On-CPU time of a process's main thread in microseconds, from
 * /proc/<pid>/schedstat (nanosecond resolution; redis-server does its work
 * on its main thread). Falls back to /proc/<pid>/stat (10 ms ticks).
 */
export function procCpuFineUs (pid) {
  try {
    return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]) / 1000
  } catch {
    return procCpuUs(pid)
  }
}

/**
 * A private redis-server on a free port, nothing on disk. Never 6379.
 * `args` are added to the command line (e.g. cluster mode and its `--dir`).
 */
export async function startRedis ({ args = [] } = {}) {
  const port = await freePort()
  const child = tracked(spawn('redis-server', [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--protected-mode', 'no', '--loglevel', 'warning', '--maxclients', '10000', ...args
  ], { stdio: ['ignore', 'pipe', 'pipe'] }))
  const exited = once(child, 'exit')
  let output = ''
  child.stdout.on('data', (c) => { output = (output + c).slice(-4000) })
  child.stderr.on('data', (c) => { output = (output + c).slice(-4000) })
  const deadline = Date.now() + 10000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`redis-server exited: ${output}`)
    const ok = await new Promise((resolve) => {
      const socket = connect(port, '127.0.0.1')
      socket.setTimeout(1000, () => socket.destroy())
      socket.once('connect', () => socket.write('PING\r\n'))
      socket.once('data', (data) => {
        resolve(data.toString().startsWith('+PONG'))
        socket.destroy()
      })
      socket.once('error', () => resolve(false))
      socket.once('close', () => resolve(false))
    })
    if (ok) break
    if (Date.now() > deadline) throw new Error(`redis-server did not start: ${output}`)
    await sleep(50)
  }
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    pid: child.pid,
    cpuUs: () => procCpuUs(child.pid),
    cpuFineUs: () => procCpuFineUs(child.pid),
    stop: () => stopChild(child, exited, 0)
  }
}

/** Node flags that write a V8 CPU profile of the process to `dir/name` when it exits; none without a dir. */
export function cpuProfArgs (dir, name) {
  return dir === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}`]
}

/**
 * Spawns one server under test with the probe preloaded and an IPC channel,
 * and waits until `readyPath` answers 200.
 */
export async function startServer ({ name, nodeArgs = [], script, env, port, readyPath = '/ready', cwd, graceMs = 0 }) {
  const child = tracked(spawn(process.execPath, ['--expose-gc', `--import=${PROBE}`, ...nodeArgs, script], {
    cwd, env, stdio: ['ignore', 'pipe', 'pipe', 'ipc']
  }))
  const exited = once(child, 'exit')
  let output = ''
  const keep = (chunk) => { output = (output + chunk).slice(-16000) }
  child.stdout.on('data', keep)
  child.stderr.on('data', keep)
  const baseUrl = `http://127.0.0.1:${port}`
  const deadline = Date.now() + 60000
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`${name} exited before it was ready:\n${output}`)
    if (await getStatus(baseUrl + readyPath) === 200) break
    if (Date.now() > deadline) {
      child.kill('SIGKILL')
      throw new Error(`${name} was not ready within 60 s:\n${output}`)
    }
    await sleep(100)
  }
  const probe = new Rpc(child, 'probeId')
  return {
    name,
    pid: child.pid,
    baseUrl,
    output: () => output,
    /** CPU, memory and loop delay as the process sees itself; `gc` runs a full GC first. */
    stats: (opts = {}) => probe.call({ gc: opts.gc === true, resetLoop: opts.resetLoop === true }, 60000),
    heapSnapshot: (file) => probe.call({ heapSnapshot: file }, 300000),
    /** Allocation sampling: 'start', then 'stop' answers `{ bytes, byArea }` allocated in between. */
    allocations: (action) => probe.call({ alloc: action }, 60000),
    alive: () => child.exitCode === null && child.signalCode === null,
    stop: () => stopChild(child, exited, graceMs)
  }
}

/**
 * The last-resort exits of a bench script: on exit, SIGINT, SIGTERM and
 * after `limitMinutes`, every process it started (`spawned`, and `children`
 * added by the caller) is killed. Returns the set for the caller's children.
 */
export function stopOnExit (limitMinutes, log) {
  const children = new Set()
  const killAll = () => {
    for (const child of [...children, ...spawned]) {
      try { child.kill('SIGKILL') } catch {}
    }
  }
  process.once('exit', killAll)
  for (const signal of ['SIGINT', 'SIGTERM']) process.once(signal, () => { killAll(); process.exit(130) })
  setTimeout(() => {
    log(`time limit of ${limitMinutes} min reached: stopping`)
    killAll()
    process.exit(2)
  }, limitMinutes * 60000).unref()
  return { children, killAll }
}

/**
 * Runs `start(k)` for k = 0..count-1, at most `concurrency` at a time;
 * `done(result, k)` sees each result. Resolves when all have finished.
 */
export function inLanes (count, concurrency, start, done = () => {}) {
  let next = 0
  return Promise.all(Array.from({ length: Math.min(concurrency, count) }, async () => {
    while (next < count) {
      const k = next++
      done(await start(k), k)
    }
  }))
}

/** POSTs `body` (a JSON string) to `/alerts` with a service token; resolves on 202. */
export function postAlert (baseUrl, agent, token, body) {
  return new Promise((resolve, reject) => {
    const req = http.request(`${baseUrl}/alerts`, {
      method: 'POST',
      agent,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }
    }, (res) => {
      res.resume()
      res.on('end', () => res.statusCode === 202 ? resolve() : reject(new Error(`POST /alerts: status ${res.statusCode}`)))
    })
    req.on('error', reject)
    req.end(body)
  })
}

/**
 * Opens `count` connections with `open(k)` (resolving to `{ ok, ms }` or
 * `{ ok: false, error }`), at most `concurrency` at a time: how many
 * succeeded, the failures by error, the handshake times.
 */
export async function connectInLanes (count, concurrency, open) {
  const handshake = new Histogram()
  const errors = {}
  let ok = 0
  await inLanes(count, concurrency, open, (r) => {
    if (r.ok) {
      ok++
      handshake.record(r.ms)
    } else {
      errors[r.error] = (errors[r.error] ?? 0) + 1
    }
  })
  return { ok, failed: count - ok, errors, handshake: handshake.toJSON() }
}

/** Sums objects of counts by key (`{ '1006': 2 }` and `{ '1006': 1 }` give `{ '1006': 3 }`). */
export function sumCounts (list) {
  const total = {}
  for (const counts of list) for (const [key, n] of Object.entries(counts)) total[key] = (total[key] ?? 0) + n
  return total
}
